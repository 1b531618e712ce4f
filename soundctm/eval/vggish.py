"""VGGish (Hershey et al. 2017, "CNN Architectures for Large-Scale Audio Classification"), the
embedding network of the Frechet Audio Distance (Kilgour et al. 2019) and of the 16 kHz FAD in
the AudioLDM and SoundCTM papers, in pure torch.

The module reproduces the torchvggish port (github.com/harritaylor/torchvggish) key for key, so
its released state dict (``vggish-10086976.pth``: ``features.{0,3,6,8,11,13}.{weight,bias}``,
``embeddings.{0,2,4}.{weight,bias}``) loads unchanged; the file is found (or downloaded into the
cache, hash-checked) by :func:`soundctm.eval.weights.fetch_weights` with the spec
:data:`soundctm.eval.weights.VGGISH`. The front end is AudioSet's ``vggish_input.py`` /
``mel_features.py`` rewritten in torch.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from soundctm.errors import InvalidArgumentError
from soundctm.eval.embedders import load_weight_file, state_mismatch
from soundctm.eval.weights import (
    VGGISH,
    VGGISH_PCA,
    WeightFileUser,
    WeightsFileError,
    WeightsNotFoundError,
    fetch_weights,
    record,
)

# vggish_params.py
SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96
EMBEDDING_SIZE = 128
QUANTIZE_MIN_VAL = -2.0
QUANTIZE_MAX_VAL = 2.0

#: The environment variable naming the weight file when no path is passed.
WEIGHTS_ENV = VGGISH.env


def hertz_to_mel_htk(f: Tensor) -> Tensor:
    """HTK mel scale, ``1127 ln(1 + f / 700)`` (``mel_features.hertz_to_mel``)."""
    return 1127.0 * torch.log1p(f / 700.0)


def vggish_mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = 257,
    sample_rate: int = SAMPLE_RATE,
    lower_edge_hz: float = MEL_MIN_HZ,
    upper_edge_hz: float = MEL_MAX_HZ,
) -> Tensor:
    """``mel_features.spectrogram_to_mel_matrix``: ``[num_spectrogram_bins, num_mel_bins]``
    triangles, linear in HTK mel, peak 1 (no area normalisation), band edges evenly spaced in mel
    between ``lower_edge_hz`` and ``upper_edge_hz``; the DC bin always gets 0."""
    bins_mel = hertz_to_mel_htk(
        torch.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins, dtype=torch.float64)
    )
    edges = torch.linspace(
        float(hertz_to_mel_htk(torch.tensor(lower_edge_hz, dtype=torch.float64))),
        float(hertz_to_mel_htk(torch.tensor(upper_edge_hz, dtype=torch.float64))),
        num_mel_bins + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(lower_slope, upper_slope), min=0.0)
    weights[0, :] = 0.0
    return weights


def make_features() -> nn.Sequential:
    """torchvggish's ``make_layers()``: 3x3 convs (padding 1) 64, pool, 128, pool, 256, 256,
    pool, 512, 512, pool, each conv followed by ReLU; module indices match its state dict."""
    layers: list[nn.Module] = []
    channels = 1
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(v)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """VGGish: log-mel examples ``[N, 1, 96, 64]`` to 128-d embeddings.

    Front end (:meth:`examples`, AudioSet ``vggish_input.waveform_to_examples``): 16 kHz mono,
    25 ms (400 samples) periodic-Hann frames every 10 ms without padding, 512-point FFT
    magnitude, 64 HTK-mel bands from 125 to 7500 Hz (:func:`vggish_mel_matrix`),
    ``log(mel + 0.01)``, cut into non-overlapping examples of 96 frames (0.96 s); a trailing
    partial example is dropped. A clip shorter than one example (15600 samples) is zero-padded to
    one (torchvggish would return no example at all).

    Network (torchvggish ``VGG``): ``features`` (see :func:`make_features`), the ``[N, 512, 6, 4]``
    map flattened in TensorFlow's NHWC order, then ``embeddings``: Linear 12288 -> 4096, ReLU,
    4096 -> 4096, ReLU, 4096 -> 128. torchvggish ends with one more ReLU; the FAD
    implementations used by AudioLDM/SoundCTM (``audioldm_eval``, ``frechet_audio_distance``:
    ``use_activation=False``) remove it, and so does ``final_relu=False`` (the default).

    Postprocessing (``postprocess=True``; off in those FAD implementations, ``use_pca=False``):
    AudioSet's PCA whitening ``pca_eigen_vectors @ (e - pca_means)``, clipping to [-2, 2] and
    8-bit quantisation to [0, 255]. It needs the PCA parameters (``vggish_pca_params`` file or
    keys ``pca_eigen_vectors`` / ``pca_means`` in the weight file).
    """

    def __init__(
        self, *, final_relu: bool = False, postprocess: bool = False, init_weights: bool = True
    ) -> None:
        super().__init__()
        # init_weights=False: layers on the meta device (no memory, no random init, 1 s saved);
        # :meth:`load_weights` must then fill them.
        with torch.device("cpu" if init_weights else "meta"):
            self.features = make_features()
            self.embeddings = nn.Sequential(
                nn.Linear(512 * 4 * 6, 4096),
                nn.ReLU(),
                nn.Linear(4096, 4096),
                nn.ReLU(),
                nn.Linear(4096, EMBEDDING_SIZE),
            )
        self.final_relu = bool(final_relu)
        self.postprocess = bool(postprocess)
        self.register_buffer("pca_eigen_vectors", torch.eye(EMBEDDING_SIZE), persistent=False)
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_SIZE, 1), persistent=False)
        self.has_pca = False
        self.window_length = round(SAMPLE_RATE * STFT_WINDOW_SECONDS)
        self.hop_length = round(SAMPLE_RATE * STFT_HOP_SECONDS)
        self.fft_length = 2 ** math.ceil(math.log2(self.window_length))
        mel = vggish_mel_matrix(num_spectrogram_bins=self.fft_length // 2 + 1)
        self.register_buffer("mel_matrix", mel.float(), persistent=False)
        window = torch.hann_window(self.window_length, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)
        self.example_frames = round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_SECONDS)
        self.example_hop = round(EXAMPLE_HOP_SECONDS / STFT_HOP_SECONDS)

    # -- weights ------------------------------------------------------------------------------
    def load_weights(self, state: dict[str, Tensor], source: str = "the weight file") -> None:
        """Load a torchvggish state dict (all ``features.*`` and ``embeddings.*`` keys, with
        these shapes; nothing else except optional PCA parameters ``pca_eigen_vectors`` /
        ``pca_means``, also under torchvggish's ``pproc.`` prefix or as ``pca_matrix``)."""
        state = dict(state)
        pca: dict[str, Tensor] = {}
        for key in list(state):
            short = key.removeprefix("pproc.")
            if short in ("pca_eigen_vectors", "pca_matrix", "pca_means"):
                pca["pca_means" if short == "pca_means" else "pca_eigen_vectors"] = state.pop(key)
        detail = state_mismatch(self.state_dict(), state)
        if detail is not None:
            raise WeightsFileError(
                f"{source} is not a torchvggish VGGish state dict ({detail}); pass the "
                "vggish-10086976.pth file of the torchvggish release"
            )
        self.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
        if pca:
            self.load_pca(pca, source)

    def load_pca(self, pca: dict[str, Tensor], source: str = "the PCA file") -> None:
        """Set the PCA parameters (``pca_eigen_vectors`` [128, 128], ``pca_means`` [128] or
        [128, 1], as in ``vggish_pca_params-970ea276.pth``)."""
        try:
            vectors = pca["pca_eigen_vectors"].to(torch.float32).reshape(128, 128)
            means = pca["pca_means"].to(torch.float32).reshape(128, 1)
        except (KeyError, RuntimeError) as exc:
            raise WeightsFileError(
                f"{source} lacks usable PCA parameters (pca_eigen_vectors [128, 128], "
                "pca_means [128]); pass vggish_pca_params-970ea276.pth or drop postprocessing"
            ) from exc
        self.pca_eigen_vectors.copy_(vectors)
        self.pca_means.copy_(means)
        self.has_pca = True

    # -- front end ----------------------------------------------------------------------------
    def log_mel(self, audio: Tensor) -> Tensor:
        """``log(mel + 0.01)`` frames ``[B, T, 64]`` of 16 kHz audio ``[B, n]``
        (``mel_features.log_mel_spectrogram``), ``T = 1 + (n - 400) // 160``."""
        x = audio.to(torch.float32)
        frames = x.unfold(-1, self.window_length, self.hop_length) * self.window
        magnitude = torch.fft.rfft(frames, n=self.fft_length).abs()
        return torch.log(magnitude @ self.mel_matrix + LOG_OFFSET)

    def examples(self, audio: Tensor) -> tuple[Tensor, list[int]]:
        """Log-mel examples ``[N, 1, 96, 64]`` of a batch ``[B, n]`` and the number of examples
        of each clip (``N = sum``), as ``vggish_input.waveform_to_examples``."""
        if audio.dim() != 2:
            raise InvalidArgumentError(f"expected audio [B, n], got shape {tuple(audio.shape)}")
        need = self.window_length + (self.example_frames - 1) * self.hop_length
        if audio.shape[-1] < need:
            audio = nn.functional.pad(audio, (0, need - audio.shape[-1]))
        log_mel = self.log_mel(audio)  # [B, T, 64]
        ex = log_mel.unfold(1, self.example_frames, self.example_hop)  # [B, K, 64, 96]
        count = ex.shape[1]
        ex = ex.transpose(2, 3).reshape(-1, 1, self.example_frames, NUM_MEL_BINS)
        return ex, [count] * audio.shape[0]

    # -- network ------------------------------------------------------------------------------
    def forward(self, examples: Tensor) -> Tensor:
        """Examples ``[N, 1, 96, 64]`` to embeddings ``[N, 128]`` (postprocessed if asked)."""
        x = self.features(examples)
        # NCHW -> NHWC before flattening, as torchvggish does for the TensorFlow weights.
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2).contiguous()
        x = self.embeddings(x.reshape(x.shape[0], -1))
        if self.final_relu:
            x = torch.relu(x)
        if self.postprocess:
            x = self.pca_quantise(x)
        return x

    def pca_quantise(self, embeddings: Tensor) -> Tensor:
        """AudioSet postprocessing: PCA, clip to [-2, 2], quantise to 0..255 (as floats)."""
        if not self.has_pca:
            raise WeightsNotFoundError(
                "VGGish postprocessing needs PCA parameters; pass vggish_pca_params-970ea276.pth "
                "(torchvggish release) as pca=..., or turn postprocessing off"
            )
        pca = (self.pca_eigen_vectors @ (embeddings.T - self.pca_means)).T
        clipped = pca.clamp(QUANTIZE_MIN_VAL, QUANTIZE_MAX_VAL)
        scale = 255.0 / (QUANTIZE_MAX_VAL - QUANTIZE_MIN_VAL)
        return torch.round((clipped - QUANTIZE_MIN_VAL) * scale)

    @torch.no_grad()
    def embed_frames(self, audio: Tensor, batch_size: int = 64) -> list[Tensor]:
        """One 128-d embedding per 0.96 s example of each clip of ``[B, n]`` (16 kHz): a list
        of ``[n_i, 128]``. FAD (Kilgour et al. 2019; ``audioldm_eval``) fits its Gaussians to
        these per-example embeddings of all clips."""
        ex, counts = self.examples(audio.to(self.window.device))
        out = torch.cat([self(ex[i : i + batch_size]) for i in range(0, ex.shape[0], batch_size)])
        return list(out.float().cpu().split(counts))

    @torch.no_grad()
    def embed(self, audio: Tensor) -> Tensor:
        """The mean of the per-example embeddings of each clip: ``[B, 128]``. Use
        :meth:`embed_frames` to reproduce the published FAD numbers."""
        return torch.stack([f.mean(0) for f in self.embed_frames(audio)])


class VGGishEmbedder(WeightFileUser):
    """The ``vggish`` embedder: :class:`VGGish` with the user's torchvggish weights.

    ``weights``: path to ``vggish-10086976.pth`` (a torch pickle of the state dict, read with
    ``weights_only=True``) or the same tensors as ``.safetensors``; default: the environment
    variable ``SOUNDCTM_VGGISH_WEIGHTS``, else the cache, else a download
    (:func:`~soundctm.eval.weights.fetch_weights`). A missing file raises
    :class:`WeightsNotFoundError`. ``pca``: optional ``vggish_pca_params-970ea276.pth`` (fetched
    the same way when ``postprocess`` is on); ``postprocess`` applies PCA and quantisation (off
    by default, as in the FAD implementations); ``final_relu`` keeps torchvggish's last ReLU
    (off by default, likewise). ``checksum`` is the SHA-256 of the weight file, ``weights`` the
    :class:`~soundctm.eval.weights.WeightRecord` of every file loaded. Audio: ``[B, n]`` float32
    mono at 16 kHz (see :func:`soundctm.eval.embedders.resample_for`; torchvggish resamples with
    resampy instead).
    """

    name = "vggish"
    sample_rate = SAMPLE_RATE
    dim = EMBEDDING_SIZE

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        pca: str | os.PathLike | None = None,
        postprocess: bool = False,
        final_relu: bool = False,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        path = self.use_weight_file(VGGISH, fetch_weights(VGGISH, weights))
        state = load_weight_file(path)
        self.model = VGGish(final_relu=final_relu, postprocess=postprocess, init_weights=False)
        self.model.load_weights(state, source=f"weight file {path}")
        if pca is not None or (postprocess and not self.model.has_pca):
            pca_path = fetch_weights(VGGISH_PCA, pca)
            self.model.load_pca(load_weight_file(pca_path), source=f"PCA file {pca_path}")
            self.weights.append(record(VGGISH_PCA, pca_path))
        if postprocess and not self.model.has_pca:
            raise WeightsNotFoundError(
                f"VGGish postprocessing needs PCA parameters, which {path} does not hold; pass "
                "vggish_pca_params-970ea276.pth (torchvggish release) as pca=..."
            )
        self.model.eval().to(device)
        self.batch_size = int(batch_size)
        # settings that change the embeddings of the same weights keep their own cache folder
        # (the PCA file's hash too: postprocessing applies it)
        flags = ["relu"] * final_relu + [f"pca{self.weights[-1].sha256[:8]}"] * postprocess
        self.variant = "-".join(flags)

    def __repr__(self) -> str:
        return f"VGGishEmbedder({str(self.weights_path)!r}, checksum={self.checksum[:12]}...)"

    def embed_frames(self, audio: Tensor) -> list[Tensor]:
        """Per-example (0.96 s) embeddings: a list of ``[n_i, 128]`` (what FAD uses)."""
        return self.model.embed_frames(audio, batch_size=self.batch_size)

    def embed(self, audio: Tensor) -> Tensor:
        """Clip embeddings ``[B, 128]``: the mean over each clip's examples."""
        return torch.stack([f.mean(0) for f in self.embed_frames(audio)])
