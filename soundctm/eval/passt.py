"""PaSST (Koutini et al. 2022, "Efficient Training of Audio Transformers with Patchout"), the
AudioSet classifier whose logits give KL and IS in the AudioLDM / SoundCTM protocol and the
"KL passt" of stable-audio-metrics, in pure torch.

The network reproduces ``hear21passt``'s ``passt_s_swa_p16_128_ap476`` (a DeiT-B with separate
frequency and time positional embeddings, class and distillation tokens) key for key, so the
released ``passt-s-f128-p16-s10-ap.476-swa.pt`` (kkoutini/PaSST releases) loads unchanged. The
``hear21passt`` package itself needs torchaudio, so it is not used; its mel front end
(``AugmentMelSTFT`` in evaluation mode) is rewritten here. The file is found, or downloaded into the
cache, by :func:`soundctm.eval.weights.fetch_weights` with the spec :data:`PASST`.
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundctm.errors import InvalidArgumentError
from soundctm.eval.embedders import load_weight_file, peak_normalise, state_mismatch
from soundctm.eval.weights import (
    WeightFileUser,
    WeightsFileError,
    WeightSpec,
    fetch_weights,
)

# hear21passt.base.get_basic_model: AugmentMelSTFT(n_mels=128, sr=32000, win_length=800,
# hopsize=320, n_fft=1024, fmin=0, fmax=None -> sr // 2 - fmax_aug_range // 2 = 15000)
SAMPLE_RATE = 32000
N_FFT = 1024
WIN_LENGTH = 800
HOP_LENGTH = 320
N_MELS = 128
F_MIN = 0.0
F_MAX = 15000.0
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NUM_CLASSES = 527
EMBED_DIM = 768
#: PaSST's receptive field: the positional embeddings cover 10 s (99 time patches).
WINDOW_SECONDS = 10.0
#: The shortest input PaSST takes: 16 mel frames (one patch) after pre-emphasis.
MIN_SAMPLES = 15 * HOP_LENGTH + 1

PROTOCOLS = ("audioldm", "stable-audio")
COLLECTS = ("mean", "max")

WEIGHTS_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
#: hear21passt's ``passt_s_swa_p16_128_ap476`` weights. The release page lists no hash; the
#: SHA-256 and size are the ones several independent projects pin for this release asset (they
#: agree with each other); a download that differs is refused.
PASST = WeightSpec(
    name="passt-s-swa-p16-128-ap476",
    filename=WEIGHTS_FILE,
    sha256="302903fa8c4aee817b11dc982da0b29aaf8d11a3e722420476d0a12c9db70c2c",
    size=344_665_734,
    size_hint="345 MB",
    source=f"https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/{WEIGHTS_FILE}",
    env="SOUNDCTM_PASST_WEIGHTS",
    description="PaSST-S AudioSet classifier, mAP .476, SWA (kkoutini/PaSST release v0.0.1)",
)
#: The environment variable naming the weight file when no path is passed.
WEIGHTS_ENV = PASST.env


# -- front end ----------------------------------------------------------------------------------


def kaldi_mel_banks(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> Tensor:
    """Kaldi's triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (no VTLN warping), as
    ``torchaudio.compliance.kaldi.get_mel_banks`` with a zero column appended for the Nyquist
    bin, which is what hear21passt multiplies the power spectrum with (docs/eval.md, PaSST).

    Mel scale ``1127 ln(1 + f / 700)``; band edges evenly spaced in mel between ``f_min`` and
    ``f_max`` (``n_mels + 2`` points); FFT bin ``k`` sits at ``k * sample_rate / n_fft``; weight
    ``max(0, min(rising, falling))`` of the triangle, peak 1, no area normalisation."""
    n_bins = n_fft // 2

    def mel(f: Tensor) -> Tensor:
        return 1127.0 * torch.log1p(f / 700.0)

    lo = float(mel(torch.tensor(float(f_min), dtype=torch.float64)))
    hi = float(mel(torch.tensor(float(f_max), dtype=torch.float64)))
    delta = (hi - lo) / (n_mels + 1)
    left = lo + torch.arange(n_mels, dtype=torch.float64)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    bins = mel(torch.arange(n_bins, dtype=torch.float64) * (sample_rate / n_fft))[None, :]
    rising = (bins - left) / (center - left)
    falling = (right - bins) / (right - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(weights, (0, 1)).to(torch.float32)


class PaSSTMel(nn.Module):
    """hear21passt's ``AugmentMelSTFT`` in evaluation mode (no masking, no band augmentation).

    32 kHz audio ``[B, n]``: pre-emphasis ``y[t] = x[t + 1] - 0.97 x[t]`` (``n - 1`` samples),
    centred STFT (reflect padding of 512) with a 1024-point FFT of 800-sample symmetric
    (``periodic=False``) Hann windows every 320 samples, power ``|X|^2``, 128 Kaldi mel bands
    from 0 to 15 kHz (:func:`kaldi_mel_banks`), ``ln(mel + 1e-5)``, then ``(x + 4.5) / 5``.
    Output ``[B, 128, 1 + (n - 1) // 320]``.
    """

    def __init__(self) -> None:
        super().__init__()
        window = torch.hann_window(WIN_LENGTH, periodic=False, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        x = audio.to(torch.float32)
        x = x[..., 1:] - PREEMPHASIS * x[..., :-1]
        spec = torch.stft(
            x,
            N_FFT,
            hop_length=HOP_LENGTH,
            win_length=WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_banks, power)
        return (torch.log(mel + LOG_OFFSET) + 4.5) / 5.0


# -- network ------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (timm / hear21passt names)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, exact GELU)."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class PaSST(nn.Module):
    """The PaSST-S network: mel ``[B, 1, 128, T]`` to ``(logits [B, classes], features [B, dim])``.

    Patches of 16 x 16 every 10 bins/frames (a convolution); a learned frequency embedding
    ``[1, dim, F', 1]`` and time embedding ``[1, dim, 1, T']`` are added (the time one cut to
    the input's length; longer inputs than the model's 10 s are refused); the grid is flattened
    frequency-major, the class and distillation tokens (each plus its ``new_pos_embed`` row) are
    prepended; ``depth`` pre-norm blocks, a final LayerNorm; ``features`` is the mean of the two
    tokens' outputs, ``logits = head(features)`` (LayerNorm then Linear). The distillation head
    ``head_dist`` is loaded but unused at inference, as in hear21passt.

    The defaults are ``passt_s_swa_p16_128_ap476``; :meth:`from_state_dict` reads every size
    from a state dict except the number of heads (``dim // 64``) and the patch stride (10).
    """

    def __init__(
        self,
        *,
        embed_dim: int = EMBED_DIM,
        depth: int = 12,
        num_heads: int = 12,
        mlp_hidden: int = 4 * EMBED_DIM,
        num_classes: int = NUM_CLASSES,
        grid: tuple[int, int] = (12, 99),
        patch: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (10, 10),
        distilled: bool = True,
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise InvalidArgumentError(
                f"PaSST embed_dim {embed_dim} is not divisible by num_heads {num_heads}"
            )
        with torch.device("cpu" if init_weights else "meta"):
            self.patch_embed = PatchEmbed(embed_dim, patch, stride)
            tokens = 2 if distilled else 1
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
            self.new_pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dim))
            self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid[0], 1))
            self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, grid[1]))
            self.blocks = nn.Sequential(
                *(Block(embed_dim, num_heads, mlp_hidden) for _ in range(depth))
            )
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
            self.head_dist = nn.Linear(embed_dim, num_classes) if distilled else None
        if init_weights:
            for p in (self.cls_token, self.new_pos_embed, self.freq_new_pos_embed):
                nn.init.trunc_normal_(p, std=0.02)
            nn.init.trunc_normal_(self.time_new_pos_embed, std=0.02)
            if self.dist_token is not None:
                nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.stride = stride

    @staticmethod
    def config_from_state_dict(state: dict[str, Tensor]) -> dict[str, object]:
        """The constructor arguments a state dict implies (``KeyError`` when a key is missing)."""
        dim = int(state["cls_token"].shape[-1])
        depth = 1 + max(
            (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
        )
        proj = state["patch_embed.proj.weight"]
        patch = (
            (int(proj.shape[-2]), int(proj.shape[-1]))
            if proj.dim() == 4
            else (math.isqrt(int(proj.shape[1])),) * 2
        )
        return {
            "embed_dim": dim,
            "depth": depth,
            "num_heads": max(1, dim // 64),
            "mlp_hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]) if depth else 4 * dim,
            "num_classes": int(state["head.1.weight"].shape[0]),
            "grid": (
                int(state["freq_new_pos_embed"].shape[2]),
                int(state["time_new_pos_embed"].shape[3]),
            ),
            "patch": patch,
            "distilled": "dist_token" in state,
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Tensor],
        *,
        num_heads: int | None = None,
        stride: tuple[int, int] = (10, 10),
        source: str = "the weight file",
    ) -> PaSST:
        """A PaSST sized by ``state`` (see :meth:`config_from_state_dict`) holding its weights.

        Accepts hear21passt's older layout with a flattened patch projection ``[dim, 256]``.
        Raises :class:`WeightsFileError` naming ``source`` when the keys or shapes do not fit."""
        state = dict(state)
        try:
            config = cls.config_from_state_dict(state)
        except (KeyError, IndexError) as exc:
            raise WeightsFileError(
                f"{source} is not a PaSST state dict (no {exc}); pass {WEIGHTS_FILE} of the "
                "kkoutini/PaSST releases"
            ) from exc
        if num_heads is not None:
            config["num_heads"] = int(num_heads)
        model = cls(**config, stride=stride, init_weights=False)  # type: ignore[arg-type]
        proj = state["patch_embed.proj.weight"]
        if proj.dim() == 2:
            state["patch_embed.proj.weight"] = proj.reshape(proj.shape[0], 1, *config["patch"])  # type: ignore[misc]
        detail = state_mismatch(model.state_dict(), state)
        if detail is not None:
            raise WeightsFileError(
                f"{source} is not a PaSST state dict ({detail}); pass {WEIGHTS_FILE} of the "
                "kkoutini/PaSST releases"
            )
        model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
        return model

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Mel ``[B, 1, F, T]`` (:class:`PaSSTMel` output with a channel axis) to
        ``(logits [B, classes], features [B, dim])``."""
        x = self.patch_embed(mel)  # [B, E, F', T']
        b, _, fp, tp = x.shape
        if tp > self.time_new_pos_embed.shape[-1] or fp != self.freq_new_pos_embed.shape[2]:
            raise InvalidArgumentError(
                f"PaSST input of {fp} x {tp} patches does not fit its positional embeddings "
                f"({self.freq_new_pos_embed.shape[2]} x {self.time_new_pos_embed.shape[-1]}); "
                f"windows must be at most {WINDOW_SECONDS:g} s"
            )
        x = x + self.time_new_pos_embed[..., :tp] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)  # [B, F' T', E], frequency-major
        tokens = [self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:2])
        x = torch.cat([*tokens, x], dim=1)
        x = self.norm(self.blocks(x))
        features = (x[:, 0] + x[:, 1]) / 2 if self.dist_token is not None else x[:, 0]
        return self.head(features), features


# -- protocols ----------------------------------------------------------------------------------


def audioldm_window(audio: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """AudioLDM-eval's PaSST input (its ``passt`` branch): each clip ``[B, n]`` minus its mean,
    zero-padded to at least 1 s, then cut or zero-padded to exactly 10 s: ``[B, 10 sr]``."""
    x = audio - audio.mean(dim=-1, keepdim=True)
    n = round(WINDOW_SECONDS * sample_rate)
    if x.shape[-1] >= n:
        return x[..., :n]
    return F.pad(x, (0, n - x.shape[-1]))


def stable_audio_windows(
    n: int, sample_rate: int = SAMPLE_RATE, window_s: float = 10.0, overlap_s: float = 5.0
) -> list[tuple[int, int, int]]:
    """stable-audio-metrics' ``return_probabilities`` windows for a clip of ``n`` samples:
    ``(start, stop, padded_length)`` for starts ``0, step, 2 step, ...`` below
    ``max(step, n - step)`` (step = window - overlap = 5 s). A window shorter than 10 s is
    zero-padded to 10 s when it holds more than 15% of it, else it is used as it is."""
    win = int(window_s * sample_rate)
    step = int((window_s - overlap_s) * sample_rate)
    out = []
    for start in range(0, max(step, n - step), step):
        stop = min(start + win, n)
        length = stop - start
        out.append((start, stop, win if win > length > int(win * 0.15) else length))
    return out


class PaSSTEmbedder(WeightFileUser):
    """The ``passt`` embedder/classifier: PaSST-S with the user's hear21passt weights.

    ``weights``: path to ``passt-s-f128-p16-s10-ap.476-swa.pt`` (a torch pickle of the state
    dict, read with ``weights_only=True``) or the same tensors as ``.safetensors``; default: the
    environment variable ``SOUNDCTM_PASST_WEIGHTS``, else the cache, else a download
    (:func:`~soundctm.eval.weights.fetch_weights` with :data:`PASST`). ``checksum`` is the
    file's SHA-256, ``weights`` its :class:`~soundctm.eval.weights.WeightRecord`.
    Audio: ``[B, n]`` float32 mono at 32 kHz.

    ``protocol`` chooses how a clip becomes PaSST input (docs/eval.md):

    - ``"audioldm"`` (default; audioldm_eval's PaSST branch, the SoundCTM-UNet paper): remove the
      clip's mean, pad to >= 1 s, cut/pad to one 10 s window (:func:`audioldm_window`);
    - ``"stable-audio"`` (stable-audio-metrics' ``passt_kld``, the SoundCTM-DiT paper): peak-
      normalise to -1 dBFS, 10 s windows every 5 s (:func:`stable_audio_windows`), the logits
      of the windows pooled by ``collect`` (``"mean"`` or ``"max"``).

    ``logits`` returns the 527 AudioSet logits (the KL / IS metrics apply softmax or sigmoid);
    ``embed`` the 768-d features (mean of the class and distillation tokens, before the head),
    averaged over windows; ``embed_frames`` the features of each window.
    """

    name = "passt"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        protocol: str = "audioldm",
        collect: str = "mean",
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise InvalidArgumentError(
                f"passt protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
            )
        if collect not in COLLECTS:
            raise InvalidArgumentError(
                f"passt collect must be one of {', '.join(COLLECTS)}, got {collect!r}"
            )
        path = self.use_weight_file(PASST, fetch_weights(PASST, weights))
        self.protocol = protocol
        self.collect = collect
        self.model = PaSST.from_state_dict(load_weight_file(path), source=f"weight file {path}")
        self.model.eval().to(device)
        self.mel = PaSSTMel().to(device)
        self.dim = self.model.embed_dim
        self.num_classes = self.model.num_classes
        self.batch_size = max(1, int(batch_size))

    def __repr__(self) -> str:
        return (
            f"PaSSTEmbedder({str(self.weights_path)!r}, protocol={self.protocol!r}, "
            f"checksum={self.checksum[:12]}...)"
        )

    @property
    def variant(self) -> str:
        """What else the cache keys on: the same file under another protocol gives other
        numbers."""
        return self.protocol if self.protocol == "audioldm" else f"{self.protocol}-{self.collect}"

    @property
    def device(self) -> torch.device:
        return self.mel.window.device

    def to(self, device: str | torch.device) -> PaSSTEmbedder:
        self.model.to(device)
        self.mel.to(device)
        return self

    def eval(self) -> PaSSTEmbedder:
        self.model.eval()
        return self

    @torch.no_grad()
    def _run(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """Audio windows ``[N, m]`` to ``(logits [N, C], features [N, dim])`` in batches."""
        logits, feats = [], []
        for i in range(0, windows.shape[0], self.batch_size):
            mel = self.mel(windows[i : i + self.batch_size].to(self.device))
            lo, fe = self.model(mel[:, None])
            logits.append(lo.float().cpu())
            feats.append(fe.float().cpu())
        return torch.cat(logits), torch.cat(feats)

    def windows(self, audio: Tensor) -> list[Tensor]:
        """The PaSST inputs of a batch ``[B, n]`` under the protocol: one ``[B, m]`` tensor per
        window position (every clip's window there)."""
        if audio.dim() != 2:
            raise InvalidArgumentError(f"expected audio [B, n], got shape {tuple(audio.shape)}")
        x = audio.to(torch.float32)
        if self.protocol == "audioldm":
            return [audioldm_window(x)]
        x = peak_normalise(x)
        groups = []
        for start, stop, length in stable_audio_windows(x.shape[-1]):
            # PaSST needs one 16-frame patch: a clip under 0.15 s is zero-padded to that
            length = max(length, MIN_SAMPLES)
            groups.append(F.pad(x[:, start:stop], (0, length - (stop - start))))
        return groups

    def _per_window(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B, W, C], features [B, W, dim])`` over the protocol's W windows."""
        outs = [self._run(g) for g in self.windows(audio)]
        return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)

    def logits(self, audio: Tensor) -> Tensor:
        """AudioSet logits ``[B, 527]`` (pooled over windows by ``collect`` under
        ``stable-audio``)."""
        logits, _ = self._per_window(audio)
        if self.collect == "max":
            return logits.amax(dim=1)
        return logits.mean(dim=1)

    def embed_frames(self, audio: Tensor) -> list[Tensor]:
        """The 768-d features of each window: a list of ``[windows, 768]``."""
        _, feats = self._per_window(audio)
        return list(feats.unbind(0))

    def embed(self, audio: Tensor) -> Tensor:
        """Features ``[B, 768]``: the mean over each clip's windows."""
        _, feats = self._per_window(audio)
        return feats.mean(dim=1)


__all__ = [
    "PASST",
    "WEIGHTS_ENV",
    "WEIGHTS_FILE",
    "PaSST",
    "PaSSTEmbedder",
    "PaSSTMel",
    "audioldm_window",
    "kaldi_mel_banks",
    "peak_normalise",
    "stable_audio_windows",
]
