"""OpenL3 (Cramer et al. 2019, "Look, Listen and Learn More"), the embedding network of the
"FD openl3" in stable-audio-metrics and the SoundCTM-DiT paper, in pure torch.

The audio network for the ``mel256`` input with 512-d embeddings, written with the state-dict
names of the torchopenl3 port (``torchopenl3_mel256_{env,music}_512.pth.tar``, torchopenl3/
torchopenl3-models): ``batch_normalization_1..8``, ``conv2d_1..7``, ``audio_embedding_layer``
and the port's front-end buffers ``speclayer.*``. The port needs nnAudio, julius, resampy and
librosa, the ``openl3`` package TensorFlow and kapre, so neither is used: both front ends are
rewritten here (:func:`openl3_mel`).
The file is found, or downloaded into the cache, by
:func:`soundctm.eval.weights.fetch_weights` with :data:`OPENL3_ENV` / :data:`OPENL3_MUSIC`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundctm.engine.dsp import mel_filterbank
from soundctm.errors import InvalidArgumentError
from soundctm.eval.embedders import load_weight_file, peak_normalise, state_mismatch
from soundctm.eval.weights import (
    WeightFileUser,
    WeightsFileError,
    WeightSpec,
    fetch_weights,
)

SAMPLE_RATE = 48000
N_FFT = 2048
HOP_LENGTH = 242
N_MELS = 256
AMIN = 1e-10
DYNAMIC_RANGE = 80.0
#: The network's input: 1 s at 48 kHz, 199 STFT frames.
FRAME_SAMPLES = SAMPLE_RATE
N_FRAMES = math.ceil(FRAME_SAMPLES / HOP_LENGTH)

CONTENT_TYPES = ("env", "music")
FRONTENDS = ("openl3-0.4", "torchopenl3")


#: The Git object ids of the two files in github.com/torchopenl3/torchopenl3-models (master): no
#: SHA-256 is published, but the repository's tree pins each file's content by this id.
GIT_BLOBS = {
    "env": "a37a08222ebf9d8a88a84beeae76ad909dac0bc6",
    "music": "54df87b6bfe9747d001991da436b3d1ac768b2a6",
}


def _spec(content_type: str) -> WeightSpec:
    filename = f"torchopenl3_mel256_{content_type}_512.pth.tar"
    return WeightSpec(
        name=f"torchopenl3-mel256-{content_type}-512",
        filename=filename,
        sha256="",  # none published: the Git object id pins the file, reports add its SHA-256
        git_blob=GIT_BLOBS[content_type],
        size=None,
        size_hint="about 37 MB",
        source=f"https://github.com/torchopenl3/torchopenl3-models/raw/master/{filename}",
        env="SOUNDCTM_OPENL3_WEIGHTS" if content_type == "env" else "SOUNDCTM_OPENL3_MUSIC_WEIGHTS",
        description=(
            f"OpenL3 audio model, mel256 input, {content_type} content, 512-d (torchopenl3 port "
            "of the openl3 Keras weights)"
        ),
    )


#: The torchopenl3 weight files (state dicts with the port's ``speclayer.*`` buffers).
OPENL3_ENV = _spec("env")
OPENL3_MUSIC = _spec("music")
SPECS = {"env": OPENL3_ENV, "music": OPENL3_MUSIC}
#: The environment variable naming the weight file of each content type.
WEIGHTS_ENV = {k: v.env for k, v in SPECS.items()}


#: The convolutions in order; ``batch_normalization_{i + 2}`` follows the i-th (0-based) one
#: except the last, and ``batch_normalization_1`` normalises the input.
CONVS = (*(f"conv2d_{i}" for i in range(1, 8)), "audio_embedding_layer")
#: 2x2 max pooling after these convolutions.
POOL_AFTER = ("conv2d_2", "conv2d_4", "conv2d_6")
DEFAULT_WIDTHS = (64, 64, 128, 128, 256, 256, 512, 512)


# -- front end ----------------------------------------------------------------------------------


def htk_mel_area(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> Tensor:
    """kapre 0.1.4's mel matrix for OpenL3 (``htk=True, norm=1`` in librosa 0.5's sense):
    ``[n_mels, n_fft // 2 + 1]`` triangles on the HTK mel scale ``2595 log10(1 + f / 700)``
    from 0 Hz to Nyquist, each scaled by ``2 / (f_{m+1} - f_{m-1})`` (area normalisation).
    Used by the ``torchopenl3`` front end when the weight file carries no ``mel_basis``."""

    def mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def hz(m: Tensor) -> Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = float(mel(torch.tensor(sample_rate / 2, dtype=torch.float64)))
    mel_f = hz(torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64))
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    return (weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]).to(torch.float32)


def kapre_decibel(x: Tensor) -> Tensor:
    """kapre 0.1.4's ``amplitude_to_decibel`` (kept by openl3 0.4 as
    ``kapre_v0_1_4_magnitude_to_decibel``): ``10 log10(max(x, 1e-10))`` minus its maximum over
    each example, floored at -80 dB. Note the factor 10 on a magnitude."""
    db = 10.0 * torch.log10(torch.clamp(x, min=AMIN))
    db = db - db.amax(dim=tuple(range(1, db.dim())), keepdim=True)
    return torch.clamp(db, min=-DYNAMIC_RANGE)


def openl3_mel(frames: Tensor, frontend: str, mel_basis: Tensor, window: Tensor) -> Tensor:
    """Log-mel input ``[N, 1, 256, 199]`` of 1 s frames ``[N, 48000]`` (docs/eval.md, OpenL3).

    ``"openl3-0.4"`` (openl3 0.4.x, kapre 0.3 ``get_melspectrogram_layer`` as stable-audio-
    metrics runs it): no left padding, zeros at the end up to 199 frames (``pad_end``),
    2048-point periodic-Hann STFT every 242 samples, magnitude ``|X|``, ``mel_basis`` (Slaney
    mel scale and area norm), :func:`kapre_decibel`.

    ``"torchopenl3"`` (the torch port = openl3 <= 0.3.1 with kapre 0.1.4, the front end OpenL3
    was trained with): Keras ``same`` padding (982 zeros each side), the same STFT, power
    ``|X|^2``, ``mel_basis``, square root, :func:`kapre_decibel`.
    """
    x = frames.to(torch.float32)
    n = x.shape[-1]
    if frontend == "torchopenl3":
        total = max(N_FFT - (HOP_LENGTH if n % HOP_LENGTH == 0 else n % HOP_LENGTH), 0)
        x = F.pad(x, (total // 2, total - total // 2))
    else:
        count = math.ceil(n / HOP_LENGTH)
        x = F.pad(x, (0, (count - 1) * HOP_LENGTH + N_FFT - n))
    spec = torch.fft.rfft(x.unfold(-1, N_FFT, HOP_LENGTH) * window, n=N_FFT)  # [N, T, 1025]
    power = spec.real.square() + spec.imag.square()
    if frontend == "torchopenl3":
        mel = torch.sqrt(power @ mel_basis.T)
    else:
        mel = torch.sqrt(power) @ mel_basis.T
    return kapre_decibel(mel.transpose(1, 2)[:, None])  # [N, 1, mels, T]


def frame_audio(audio: Tensor, hop_s: float, center: bool = True) -> Tensor:
    """openl3's ``_preprocess_audio_batch`` framing of 48 kHz audio ``[B, n]``: with ``center``,
    24000 zeros before the clip; zeros after it so that every sample is in a frame (at least
    one 1 s frame); 1 s frames every ``int(hop_s * 48000)`` samples: ``[B, frames, 48000]``."""
    hop = int(hop_s * SAMPLE_RATE)
    x = audio
    if center:
        x = F.pad(x, (FRAME_SAMPLES // 2, 0))
    n = x.shape[-1]
    if n < FRAME_SAMPLES:
        pad = FRAME_SAMPLES - n
    else:
        pad = math.ceil((n - FRAME_SAMPLES) / hop) * hop - (n - FRAME_SAMPLES)
    x = F.pad(x, (0, pad))
    return x.unfold(-1, FRAME_SAMPLES, hop)


# -- network ------------------------------------------------------------------------------------


class OpenL3(nn.Module):
    """OpenL3's audio network (mel256, 512-d): log-mel ``[N, 1, 256, 199]`` to ``[N, 512]``.

    Batch norm of the input, then four blocks of two 3x3 convolutions (zero padding 1), each
    followed by batch norm (eps 1e-3, Keras' default) and ReLU; 2x2 max pooling after the first
    three blocks; the last block's second convolution is ``audio_embedding_layer`` (no norm, no
    ReLU); max pooling over the whole remaining 32 x 24 map gives the 512-d embedding (the
    torchopenl3 / openl3 pooling of (32, 24) for 512-d). Widths are read from the weights
    (:meth:`from_state_dict`): 64, 64, 128, 128, 256, 256, 512, 512 in the released models.
    """

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, init_weights: bool = True):
        super().__init__()
        if len(widths) != len(CONVS):
            raise InvalidArgumentError(f"OpenL3 needs {len(CONVS)} widths, got {len(widths)}")
        with torch.device("cpu" if init_weights else "meta"):
            self.batch_normalization_1 = nn.BatchNorm2d(1, eps=1e-3)
            channels = 1
            for i, (name, width) in enumerate(zip(CONVS, widths, strict=True)):
                setattr(self, name, nn.Conv2d(channels, width, kernel_size=3, padding=1))
                if name != "audio_embedding_layer":
                    setattr(self, f"batch_normalization_{i + 2}", nn.BatchNorm2d(width, eps=1e-3))
                channels = width
        self.dim = int(widths[-1])

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], source: str = "the weight file") -> OpenL3:
        """An OpenL3 sized and filled by a torchopenl3 state dict (``speclayer.*`` buffers are
        not part of the network: :class:`OpenL3Embedder` reads them). Raises
        :class:`WeightsFileError` naming ``source`` when keys or shapes do not fit."""
        hint = "pass a torchopenl3_mel256_*_512.pth.tar file of torchopenl3/torchopenl3-models"
        try:
            widths = tuple(int(state[f"{n}.weight"].shape[0]) for n in CONVS)
        except KeyError as exc:
            raise WeightsFileError(
                f"{source} is not an OpenL3 state dict (no {exc}); {hint}"
            ) from exc
        model = cls(widths, init_weights=False)
        net = {k: v for k, v in state.items() if not k.startswith("speclayer.")}
        detail = state_mismatch(model.state_dict(), net)
        if detail is not None:
            raise WeightsFileError(f"{source} is not an OpenL3 state dict ({detail}); {hint}")
        fixed = {k: (v if k.endswith("num_batches_tracked") else v.float()) for k, v in net.items()}
        model.load_state_dict(fixed, assign=True)
        return model

    def forward(self, mel: Tensor) -> Tensor:
        x = self.batch_normalization_1(mel)
        for i, name in enumerate(CONVS):
            x = getattr(self, name)(x)
            if name == "audio_embedding_layer":
                break
            x = F.relu(getattr(self, f"batch_normalization_{i + 2}")(x))
            if name in POOL_AFTER:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
        return x.amax(dim=(2, 3))


class OpenL3Embedder(WeightFileUser):
    """The ``openl3`` embedder: OpenL3 mel256 / 512-d with the user's torchopenl3 weights.

    ``weights``: path to ``torchopenl3_mel256_{content_type}_512.pth.tar`` (a torch pickle of
    the state dict, read with ``weights_only=True``) or the same tensors as ``.safetensors``;
    default: ``SOUNDCTM_OPENL3_WEIGHTS`` (env) / ``SOUNDCTM_OPENL3_MUSIC_WEIGHTS`` (music), else
    the cache, else a download (:func:`~soundctm.eval.weights.fetch_weights` with
    :data:`OPENL3_ENV` / :data:`OPENL3_MUSIC`); ``weights`` holds its record.
    ``content_type`` only names the file to ask for (both models have one architecture).
    Audio: ``[B, n]`` float32 mono at 48 kHz.

    Defaults follow stable-audio-metrics' ``openl3_fd`` (openl3 0.4.2): each clip peak-normalised
    to ``peak_db`` = -1 dBFS (``None``: untouched), centred 1 s frames every ``hop_s`` = 0.5 s
    (:func:`frame_audio`), the ``frontend`` ``"openl3-0.4"``; ``"torchopenl3"`` reproduces the
    torch port instead (with the file's own ``speclayer.mel_basis`` when it has one).
    ``embed_frames`` gives one 512-d vector per frame (what FD fits its Gaussians to);
    ``embed`` their mean per clip.
    """

    name = "openl3"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        content_type: str = "env",
        hop_s: float = 0.5,
        frontend: str = "openl3-0.4",
        peak_db: float | None = -1.0,
        center: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        if content_type not in CONTENT_TYPES:
            raise InvalidArgumentError(
                f"openl3 content_type must be one of {', '.join(CONTENT_TYPES)}, got "
                f"{content_type!r}"
            )
        if frontend not in FRONTENDS:
            raise InvalidArgumentError(
                f"openl3 frontend must be one of {', '.join(FRONTENDS)}, got {frontend!r}"
            )
        if not hop_s > 0 or int(hop_s * SAMPLE_RATE) < 1:
            raise InvalidArgumentError(f"openl3 hop_s must be positive, got {hop_s}")
        spec = SPECS[content_type]
        path = self.use_weight_file(spec, fetch_weights(spec, weights))
        state = load_weight_file(path)
        self.model = OpenL3.from_state_dict(state, source=f"weight file {path}")
        # channels-last convolutions: about 20% faster on CPU, same numbers
        self.model.eval().to(device, memory_format=torch.channels_last)
        self.dim = self.model.dim
        self.content_type = content_type
        self.frontend = frontend
        self.hop_s = float(hop_s)
        self.peak_db = None if peak_db is None else float(peak_db)
        self.center = bool(center)
        self.batch_size = max(1, int(batch_size))
        file_basis = state.get("speclayer.mel_basis")
        if frontend == "torchopenl3" and file_basis is not None:
            if tuple(file_basis.shape) != (N_MELS, N_FFT // 2 + 1):
                raise WeightsFileError(
                    f"weight file {path}: speclayer.mel_basis has shape "
                    f"{tuple(file_basis.shape)}, expected ({N_MELS}, {N_FFT // 2 + 1})"
                )
            basis = file_basis.float()
        elif frontend == "torchopenl3":
            basis = htk_mel_area()
        else:
            basis = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS)
        self.mel_basis = basis.to(device)
        self.window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64).float()
        self.window = self.window.to(device)
        #: What else the cache must key on (the same file with other settings differs).
        self.variant = f"{content_type}-{frontend}-hop{self.hop_s:g}-peak{self.peak_db}" + (
            "" if self.center else "-nocenter"
        )

    def __repr__(self) -> str:
        return (
            f"OpenL3Embedder({str(self.weights_path)!r}, content_type={self.content_type!r}, "
            f"frontend={self.frontend!r}, hop_s={self.hop_s:g}, checksum={self.checksum[:12]}...)"
        )

    def to(self, device: str | torch.device) -> OpenL3Embedder:
        self.model.to(device)
        self.mel_basis = self.mel_basis.to(device)
        self.window = self.window.to(device)
        return self

    def eval(self) -> OpenL3Embedder:
        self.model.eval()
        return self

    def frames(self, audio: Tensor) -> Tensor:
        """The 1 s network inputs of ``[B, n]``: ``[B, frames, 48000]`` (peak-normalised,
        framed)."""
        if audio.dim() != 2:
            raise InvalidArgumentError(f"expected audio [B, n], got shape {tuple(audio.shape)}")
        x = audio.to(torch.float32)
        if self.peak_db is not None:
            x = peak_normalise(x, self.peak_db)
        return frame_audio(x, self.hop_s, self.center)

    @torch.no_grad()
    def embed_frames(self, audio: Tensor) -> list[Tensor]:
        """One 512-d embedding per frame: a list of ``[frames, 512]``."""
        frames = self.frames(audio)
        b, count = frames.shape[:2]
        flat = frames.reshape(b * count, -1)
        out = []
        for i in range(0, flat.shape[0], self.batch_size):
            chunk = flat[i : i + self.batch_size].to(self.window.device)
            mel = openl3_mel(chunk, self.frontend, self.mel_basis, self.window)
            out.append(self.model(mel.contiguous(memory_format=torch.channels_last)).float().cpu())
        return list(torch.cat(out).reshape(b, count, -1).unbind(0))

    def embed(self, audio: Tensor) -> Tensor:
        """Clip embeddings ``[B, 512]``: the mean over each clip's frames."""
        return torch.stack([f.mean(0) for f in self.embed_frames(audio)])


__all__ = [
    "CONTENT_TYPES",
    "FRONTENDS",
    "OPENL3_ENV",
    "OPENL3_MUSIC",
    "SPECS",
    "WEIGHTS_ENV",
    "OpenL3",
    "OpenL3Embedder",
    "frame_audio",
    "htk_mel_area",
    "kapre_decibel",
    "openl3_mel",
]
