"""Audio embedders for evaluation: the contract, weight-file helpers and ``mel-stats``.

An embedder turns mono audio at its own sample rate into one vector per clip (for Frechet
distances), and optionally into classifier logits (KL, Inception Score) or text embeddings in the
same space (CLAP score). Registered through the ``register_embedders`` hook, each one is a factory
returning an object that satisfies :class:`Embedder`.

Adding a published model (PANNs, PaSST, OpenL3, LAION-CLAP) follows :mod:`soundctm.eval.vggish`:
write the architecture in torch with the state-dict keys of its public weight file, describe the
file with a :class:`soundctm.eval.weights.WeightSpec` (pinned SHA-256, source, variable) and find
it with :func:`soundctm.eval.weights.fetch_weights` (argument > ``SOUNDCTM_*_WEIGHTS`` > cache >
download), read it with :func:`load_weight_file` (``weights_only=True`` or safetensors), set
``checksum`` to its SHA-256 and ``weights`` to its :func:`soundctm.eval.weights.record` (the
report names each file and hash), and add ``logits`` (PANNs, PaSST) or ``embed_text`` (CLAP)
when the model has them.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from soundctm.engine.audio import resample_soxr
from soundctm.engine.dsp import mel_filterbank
from soundctm.errors import InvalidArgumentError
from soundctm.eval.weights import WeightsFileError, WeightsNotFoundError


@runtime_checkable
class Embedder(Protocol):
    """What an evaluation embedder provides.

    Required: ``name`` (registry name), ``sample_rate`` (Hz of the audio ``embed`` expects),
    ``dim`` (embedding size), ``checksum`` (SHA-256 of the weight file, or ``"none"`` for a
    model without weights) and ``embed(audio [B, n] float32 mono at sample_rate) -> [B, dim]``,
    one vector per clip.

    Optional, the capability protocols :class:`FrameEmbedder`, :class:`Classifier` and
    :class:`TextAudioEmbedder` (checked with :func:`has_frames`, :func:`has_logits`,
    :func:`has_text`):

    - ``embed_frames(audio [B, n]) -> list of [n_i, dim]``: one vector per analysis window (FAD
      implementations fit their Gaussians to these per-window embeddings of all clips);
    - ``logits(audio [B, n]) -> [B, classes]``: classifier outputs for KL and IS;
    - ``embed_text(texts: list[str]) -> [B, dim]``: the text tower of a text-audio model, in
      the space of ``embed``, for the CLAP score.
    """

    name: str
    sample_rate: int
    dim: int
    checksum: str

    def embed(self, audio: Tensor) -> Tensor:
        """Audio ``[B, n]`` at ``sample_rate`` to embeddings ``[B, dim]``."""


@runtime_checkable
class FrameEmbedder(Protocol):
    """An embedder with per-window embeddings (FAD fits its Gaussians to these)."""

    def embed_frames(self, audio: Tensor) -> list[Tensor]:
        """Audio ``[B, n]`` to one ``[n_i, dim]`` array of window embeddings per clip."""


@runtime_checkable
class Classifier(Protocol):
    """An embedder that is also a classifier (KL divergence, Inception Score)."""

    def logits(self, audio: Tensor) -> Tensor:
        """Audio ``[B, n]`` to label logits ``[B, classes]``."""


@runtime_checkable
class TextAudioEmbedder(Protocol):
    """A text-audio embedder: a text tower in the space of ``embed`` (CLAP score)."""

    def embed_text(self, texts: list[str]) -> Tensor:
        """Texts to embeddings ``[B, dim]``."""


def has_frames(embedder: object) -> bool:
    """True when ``embedder`` has ``embed_frames`` (:class:`FrameEmbedder`)."""
    return isinstance(embedder, FrameEmbedder)


def has_logits(embedder: object) -> bool:
    """True when ``embedder`` is also a classifier (:class:`Classifier`)."""
    return isinstance(embedder, Classifier)


def has_text(embedder: object) -> bool:
    """True when ``embedder`` has a text tower (:class:`TextAudioEmbedder`)."""
    return isinstance(embedder, TextAudioEmbedder)


def resample_for(embedder: Embedder, audio: Tensor, sample_rate: int) -> Tensor:
    """``audio`` ``[..., n]`` at ``sample_rate`` resampled to ``embedder.sample_rate`` with
    :func:`resample_hq` (soxr, as the reference tools do); unchanged when the rates agree."""
    return resample_hq(audio, int(sample_rate), int(embedder.sample_rate))


def resample_hq(audio: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """``audio`` ``[..., n]`` resampled with soxr's "HQ" quality, what ``librosa.load(sr=...)``
    does (``res_type="soxr_hq"``, librosa's default), in float32, on ``audio``'s device. The
    evaluation references (stable-audio-metrics, hear21passt, openl3) load audio with librosa,
    so every embedder gets its rate this way (:func:`soundctm.engine.audio.resample_soxr`)."""
    if int(orig_sr) == int(new_sr):
        return audio
    return resample_soxr(audio.detach().to("cpu", torch.float32), orig_sr, new_sr).to(audio.device)


def peak_normalise(audio: Tensor, target_db: float = -1.0) -> Tensor:
    """``pyloudnorm.normalize.peak`` as the references call it: each clip (the last axis)
    scaled so that its largest absolute sample is ``10^(target_db / 20)``; silent clips stay
    silent (pyloudnorm would divide by zero)."""
    peak = audio.abs().amax(dim=-1, keepdim=True)
    gain = 10.0 ** (target_db / 20.0) / peak.clamp_min(1e-12)
    return torch.where(peak > 0, audio * gain, audio)


# -- weight files -------------------------------------------------------------------------------


def resolve_weights(path: str | os.PathLike | None, env_var: str, hint: str) -> Path:
    """The weight file given by ``path``, else by the environment variable ``env_var`` (no cache,
    no download: for files without a :class:`~soundctm.eval.weights.WeightSpec`).

    Raises :class:`WeightsNotFoundError` (one line: the path looked at, then ``hint``, which says
    where to get the file and how to pass it) when neither names an existing file.
    """
    chosen = path if path is not None and str(path) else os.environ.get(env_var) or None
    if chosen is None:
        raise WeightsNotFoundError(f"no weight file given (argument or {env_var}); {hint}")
    p = Path(chosen).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"weights not found at {p}; {hint}")
    return p


def _numpy_safe_globals() -> list[Any]:
    """The numpy names a pickled float array needs, for ``torch.load(weights_only=True)``: array
    reconstruction and dtypes only (under numpy 1 and numpy 2 module names). An object array
    would still have to unpickle its elements through the same restricted unpickler."""
    from numpy._core.multiarray import _reconstruct

    dtypes = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
    return [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *(type(np.dtype(code)) for code in dtypes),
    ]


def state_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``own``: the
    first missing keys, else the first unexpected ones, else the first shape mismatches (for a
    one-line error); ``None`` when it fits."""
    missing = sorted(set(own) - set(state))
    if missing:
        return f"missing {missing[:3]}"
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        return f"unexpected {unexpected[:3]}"
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    return f"shape mismatch at {wrong[:3]}" if wrong else None


def load_weight_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` state dict from a ``.safetensors`` file or a torch pickle
    (``.pth``/``.pt``/``.bin``, read with ``torch.load(weights_only=True)``: only tensors,
    numeric numpy arrays and plain containers are accepted, never code or objects). Numeric numpy
    arrays become tensors. Raises :class:`WeightsFileError` naming the file otherwise."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p), device="cpu")
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                state = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsFileError(
            f"cannot read weight file {p} ({reason[:200]}); it must be a plain state dict of "
            "tensors (torch.save of a state_dict, or .safetensors)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(
            f"weight file {p} holds a {type(state).__name__}, not a state dict of tensors"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise WeightsFileError(
                f"weight file {p} has a non-tensor entry {key!r} ({type(value).__name__}); "
                "it must be a plain state dict of tensors"
            )
        out[key] = value
    return out


# -- mel-stats: deterministic features, no weights -------------------------------------------


class MelStatsEmbedder(nn.Module):
    """``mel-stats``: hand-made, deterministic audio statistics; no weights, no download.

    This is NOT VGGish or any learned model, and distances computed on it are not FAD values
    comparable with papers: call them "FD (mel-stats)". It exists so that Frechet distances work
    offline and in tests, and it separates sounds that differ in spectrum, dynamics or
    rhythm.

    Front end: 25 ms periodic-Hann frames every 10 ms (no centre padding; FFT size the next
    power of two), power spectrum, ``n_mels`` Slaney mel bands from 0 Hz to Nyquist
    (:func:`soundctm.engine.dsp.mel_filterbank`), ``log10(mel power + 1e-10)``.

    Over the frames of a clip (``embed``) or of each ``window_s`` window (``embed_frames``) it
    returns ``dim = 3 * n_mels + 8`` values (200 with the defaults):

    - per band: mean and standard deviation of the log-mel, standard deviation of its frame-to-
      frame difference (``3 * n_mels``);
    - mean and standard deviation over frames of ``log2(spectral centroid / 1 kHz)``, of
      ``log10(spectral flatness)`` (geometric over arithmetic mean of the power spectrum), of
      ``log10(frame RMS + 1e-5)``; the mean spectral flux (mean over bands of the rectified
      log-mel increase) and the onset rate (local maxima of the flux above its mean plus one
      standard deviation, per second, divided by 10).

    Audio shorter than one frame is zero-padded to one frame.
    """

    name = "mel-stats"
    checksum = "none"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, window_s: float = 0.96) -> None:
        super().__init__()
        if sample_rate < 1000 or n_mels < 2 or window_s <= 0:
            raise InvalidArgumentError(
                f"mel-stats needs sample_rate >= 1000, n_mels >= 2 and window_s > 0, got "
                f"{sample_rate}, {n_mels}, {window_s}"
            )
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.window_s = float(window_s)
        self.win_length = round(0.025 * self.sample_rate)
        self.hop_length = round(0.010 * self.sample_rate)
        self.n_fft = 2 ** math.ceil(math.log2(self.win_length))
        self.dim = 3 * self.n_mels + 8
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels)
        self.register_buffer("filterbank", fb, persistent=False)
        window = torch.hann_window(self.win_length, periodic=True)
        self.register_buffer("window", window, persistent=False)
        freqs = torch.linspace(0, self.sample_rate / 2, self.n_fft // 2 + 1)
        self.register_buffer("freqs", freqs, persistent=False)

    def __repr__(self) -> str:
        return (
            f"MelStatsEmbedder(sample_rate={self.sample_rate}, n_mels={self.n_mels}, "
            f"window_s={self.window_s}, dim={self.dim})"
        )

    def frames(self, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log10 mel power [B, T, n_mels], power spectrum [B, T, F], frame RMS [B, T])``."""
        if audio.dim() != 2:
            raise InvalidArgumentError(f"expected audio [B, n], got shape {tuple(audio.shape)}")
        x = audio.to(device=self.window.device, dtype=torch.float32)
        if x.shape[-1] < self.win_length:
            x = nn.functional.pad(x, (0, self.win_length - x.shape[-1]))
        frames = x.unfold(-1, self.win_length, self.hop_length)
        rms = frames.pow(2).mean(-1).sqrt()
        spec = torch.fft.rfft(frames * self.window, n=self.n_fft)
        power = spec.real.pow(2) + spec.imag.pow(2)
        log_mel = torch.log10(power @ self.filterbank.T + 1e-10)
        return log_mel, power, rms

    def _stats(self, log_mel: Tensor, power: Tensor, rms: Tensor) -> Tensor:
        """The ``dim`` statistics over the frames (axis 1) of ``[S, T, ...]`` segments."""
        t = log_mel.shape[1]
        delta = log_mel.diff(dim=1) if t > 1 else torch.zeros_like(log_mel)
        band_mean = log_mel.mean(1)
        band_std = log_mel.std(1, unbiased=False)
        delta_std = delta.std(1, unbiased=False)
        p = power + 1e-12
        centroid = (p * self.freqs).sum(-1) / p.sum(-1)
        log_centroid = torch.log2(centroid.clamp_min(1.0) / 1000.0)
        flatness = torch.log(p).mean(-1) - torch.log(p.mean(-1))  # ln(geometric / arithmetic)
        log_flatness = flatness / math.log(10.0)
        level = torch.log10(rms + 1e-5)
        flux = delta.clamp_min(0.0).mean(-1)  # [S, T - 1] (or [S, T] of zeros)
        onset_rate = self._onset_rate(flux, t)
        scalars = [
            log_centroid.mean(1),
            log_centroid.std(1, unbiased=False),
            log_flatness.mean(1),
            log_flatness.std(1, unbiased=False),
            level.mean(1),
            level.std(1, unbiased=False),
            flux.mean(1),
            onset_rate,
        ]
        return torch.cat([band_mean, band_std, delta_std, torch.stack(scalars, dim=1)], dim=1)

    def _onset_rate(self, flux: Tensor, frames: int) -> Tensor:
        """Local maxima of ``flux`` above ``mean + std``, per second, divided by 10."""
        if flux.shape[1] < 3:
            return torch.zeros(flux.shape[0], dtype=flux.dtype, device=flux.device)
        threshold = flux.mean(1, keepdim=True) + flux.std(1, unbiased=False, keepdim=True)
        mid = flux[:, 1:-1]
        peaks = (mid > flux[:, :-2]) & (mid >= flux[:, 2:]) & (mid > threshold)
        seconds = frames * self.hop_length / self.sample_rate
        return peaks.sum(1).to(flux.dtype) / seconds / 10.0

    @torch.no_grad()
    def embed(self, audio: Tensor) -> Tensor:
        """Audio ``[B, n]`` at ``sample_rate`` to statistics ``[B, dim]`` over the whole clip."""
        return self._stats(*self.frames(audio)).float()

    @torch.no_grad()
    def embed_frames(self, audio: Tensor) -> list[Tensor]:
        """Statistics of consecutive ``window_s`` windows (the last partial window is dropped,
        except that a clip shorter than one window gives one): a list of ``[n_i, dim]``."""
        log_mel, power, rms = self.frames(audio)
        total = log_mel.shape[1]
        per = max(1, round(self.window_s * self.sample_rate / self.hop_length))
        count = max(1, total // per)
        per = min(per, total)
        used = count * per

        def split(x: Tensor) -> Tensor:
            return x[:, :used].reshape(x.shape[0] * count, per, *x.shape[2:])

        stats = self._stats(split(log_mel), split(power), split(rms)).float()
        return list(stats.reshape(audio.shape[0], count, self.dim).unbind(0))

    def forward(self, audio: Tensor) -> Tensor:
        return self.embed(audio)
