"""Fast Griffin-Lim on the host with numpy and a native FFT, for exported Griffin-Lim decoders
(docs/onnx.md, "Griffin-Lim on the host").

An exported model whose decoder ends in Griffin-Lim carries, beside the self-contained
``decoder.onnx``, a graph ``decoder_magnitude.onnx`` (latents -> magnitude spectrogram) and the
settings of the iteration in ``export.json`` (``phase_retrieval``). This module runs that
iteration: the algorithm of :meth:`soundctm.builtin.mel.MelAutoencoder.griffin_lim` (Perraudin,
Balazs & Sondergaard 2013, eq. 4-5; method.md, "The mel codec"), the same STFT conventions
(periodic Hann window, ``center=True``, reflection padding, zero initial phase, phase 1 below
the phase floor). onnxruntime's ``DFT`` operator is several times slower than a native FFT, so
this is the fast way to run such a decoder in Python; other runtimes use ``decoder.onnx``.

numpy for the arithmetic (its in-place complex operations beat torch eager's here); the FFTs are
torch's when torch is installed (zero-copy on numpy arrays, faster than scipy's pocketfft), else
scipy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``export.json phase_retrieval.algorithm`` of the iteration implemented here.
ALGORITHM = "fast-griffin-lim"


@dataclass(frozen=True)
class GriffinLimSettings:
    """What ``export.json phase_retrieval`` says about the iteration."""

    n_fft: int
    hop_length: int
    iterations: int
    momentum: float
    phase_floor: float

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> GriffinLimSettings:
        """Read and check the settings; raises ``ValueError`` naming what is wrong."""
        if spec.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm must be {ALGORITHM!r}, got {spec.get('algorithm')!r}")
        if spec.get("window") != "hann" or spec.get("center") is not True:
            raise ValueError("only a periodic Hann window with center=True is supported")
        out = cls(
            n_fft=int(spec["n_fft"]),
            hop_length=int(spec["hop_length"]),
            iterations=int(spec["iterations"]),
            momentum=float(spec["momentum"]),
            phase_floor=float(spec["phase_floor"]),
        )
        if not (1 <= out.hop_length <= out.n_fft and out.n_fft % out.hop_length == 0):
            raise ValueError(
                f"hop_length must divide n_fft, got n_fft={out.n_fft}, hop={out.hop_length}"
            )
        if out.iterations < 0 or not 0 <= out.momentum < 1 or out.phase_floor < 0:
            raise ValueError("need iterations >= 0, 0 <= momentum < 1 and phase_floor >= 0")
        return out


def hann(n: int) -> np.ndarray:
    """The periodic Hann window ``0.5 - 0.5 cos(2 pi k / n)`` (``torch.hann_window``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def overlap_add(frames: np.ndarray, hop: int, start: int, length: int) -> np.ndarray:
    """Samples ``start`` to ``start + length`` of the overlap-add of frames ``[B, T, N]`` placed
    ``hop`` apart (``hop`` divides ``N``): :func:`soundctm.engine.dsp.overlap_add`."""
    b, count, size = frames.shape
    r = size // hop
    if r == 2 and start == hop and length == (count - 1) * hop:
        return (frames[:, 1:, :hop] + frames[:, :-1, hop:]).reshape(b, length)
    out = np.zeros((b, count + r - 1, hop), dtype=frames.dtype)
    for i in range(r):
        out[:, i : i + count] += frames[:, :, i * hop : (i + 1) * hop]
    return out.reshape(b, -1)[:, start : start + length]


def _pad(audio: np.ndarray, half: int) -> np.ndarray:
    """``center=True`` padding: reflection when the signal is longer than ``half``, else zeros."""
    if audio.shape[-1] > half:
        left, right = audio[:, half:0:-1], audio[:, -2 : -half - 2 : -1]
        return np.concatenate([left, audio, right], axis=1)
    return np.pad(audio, ((0, 0), (half, half)))


def _windowed_frames(padded: np.ndarray, window: np.ndarray, hop: int) -> np.ndarray:
    """Frames ``[B, T, N]`` of ``padded`` placed ``hop`` apart, times the window."""
    n = window.shape[0]
    if n != 2 * hop or padded.shape[-1] % hop:
        from numpy.lib.stride_tricks import sliding_window_view

        return sliding_window_view(padded, n, axis=-1)[:, ::hop] * window
    blocks = padded.reshape(padded.shape[0], -1, hop)  # frame k = blocks k and k + 1
    out = np.empty((blocks.shape[0], blocks.shape[1] - 1, n), dtype=np.float32)
    np.multiply(blocks[:, :-1], window[:hop], out=out[:, :, :hop])
    np.multiply(blocks[:, 1:], window[hop:], out=out[:, :, hop:])
    return out


#: At most this many STFT samples (clips x frames x n_fft) per pass: a few clips at a time keep the
#: working set in the CPU caches (every clip is computed alone anyway).
CHUNK = 1 << 18


def griffin_lim(magnitude: np.ndarray, settings: GriffinLimSettings) -> np.ndarray:
    """Audio ``[B, (frames - 1) * hop]`` (float32) whose STFT magnitude approximates
    ``magnitude [B, frames, n_fft // 2 + 1]`` (fast Griffin-Lim, eq. 4-5 of Perraudin et al.
    2013, with ``c_n = t_n - alpha / (1 + alpha) t_{n-1}``)."""
    magnitude = np.ascontiguousarray(magnitude, dtype=np.float32)
    if magnitude.ndim != 3:
        raise ValueError(f"the magnitude must be [B, frames, bins], got {magnitude.shape}")
    rows = max(1, CHUNK // (magnitude.shape[1] * settings.n_fft))
    if magnitude.shape[0] > rows:
        parts = [
            _griffin_lim(magnitude[i : i + rows], settings) for i in range(0, len(magnitude), rows)
        ]
        return np.concatenate(parts)
    return _griffin_lim(magnitude, settings)


def _ffts() -> tuple[Any, Any]:
    """``(rfft, irfft)`` over the last axis of numpy arrays: torch's FFT when torch is installed
    (soundctm's own runtime: zero-copy, and MKL's FFT is about 1.6x scipy's pocketfft on 1024
    points), else scipy's."""
    try:
        import torch
    except ImportError:  # pragma: no cover - soundctm depends on torch
        from scipy import fft

        return (
            lambda x: fft.rfft(x, axis=-1),
            lambda x, n: fft.irfft(x, n=n, axis=-1),
        )
    return (
        lambda x: torch.fft.rfft(torch.from_numpy(x)).numpy(),
        lambda x, n: torch.fft.irfft(torch.from_numpy(x), n=n).numpy(),
    )


def _griffin_lim(magnitude: np.ndarray, settings: GriffinLimSettings) -> np.ndarray:
    rfft, irfft = _ffts()

    _, count, bins = magnitude.shape
    n, hop = settings.n_fft, settings.hop_length
    if bins != n // 2 + 1:
        raise ValueError(f"the magnitude has {bins} bins, n_fft {n} needs {n // 2 + 1}")
    half, length = n // 2, (count - 1) * hop
    window = hann(n)
    win_sq = np.broadcast_to(window * window, (1, count, n))
    envelope = np.maximum(overlap_add(np.ascontiguousarray(win_sq), hop, half, length), 1e-11)
    beta = np.float32(settings.momentum / (1 + settings.momentum))
    floor = np.float32(settings.phase_floor)

    def synthesis(spec: np.ndarray) -> np.ndarray:
        frames = irfft(spec, n)
        frames *= window
        audio = overlap_add(frames, hop, half, length)
        audio /= envelope
        return audio

    spec = magnitude.astype(np.complex64)  # zero phase
    prev: np.ndarray | None = None
    for _ in range(settings.iterations):
        padded = _pad(synthesis(spec), half)
        frames = _windowed_frames(padded, window, hop)
        current = rfft(frames)
        if prev is None:
            c = current.copy()
        else:  # c = t_n - beta t_{n-1}, in the buffer of t_{n-1}
            prev *= -beta
            prev += current
            c = prev
        norm = np.abs(c)
        small = norm < floor
        # spec = magnitude * c / |c|, and the magnitude itself (phase 0) where |c| < floor
        if small.any():
            np.divide(magnitude, norm, out=norm, where=~small)
            norm[small] = 0.0
            c *= norm
            c += small * magnitude
        else:
            np.divide(magnitude, norm, out=norm)
            c *= norm
        spec = c
        prev = current
    return synthesis(spec).astype(np.float32, copy=False)


__all__ = ["ALGORITHM", "GriffinLimSettings", "griffin_lim", "hann", "overlap_add"]
