"""Signal helpers shared by components, evaluation and export: the mel scale and filterbank,
STFT framing, the Griffin-Lim phase projection, spectral convergence and token-state padding.

Pure functions of tensors; nothing here knows a concrete component.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from soundctm.engine.conditioning import Conditioning
from soundctm.errors import InvalidArgumentError


def hz_to_mel_slaney(f: Tensor) -> Tensor:
    """Slaney's mel scale (Auditory Toolbox; librosa's default ``htk=False``): linear below
    1 kHz (``f / (200/3)``), logarithmic above (``15 + ln(f / 1000) / (ln(6.4) / 27)``)."""
    f = f.to(torch.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_mel + torch.log(torch.clamp(f, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, lin)


def mel_to_hz_slaney(m: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel_slaney`."""
    m = m.to(torch.float64)
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    lin = f_sp * m
    log = min_log_hz * torch.exp(logstep * (m - min_log_mel))
    return torch.where(m >= min_log_mel, log, lin)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` on the Slaney mel scale with Slaney
    ("area") normalisation: each triangle is scaled by ``2 / (f_{m+1} - f_{m-1})`` so that it has
    roughly constant energy. This is ``librosa.filters.mel(htk=False, norm="slaney")``, the
    filterbank of AudioLDM and HiFi-GAN."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise InvalidArgumentError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}"
        )
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = hz_to_mel_slaney(torch.tensor(f_min)), hz_to_mel_slaney(torch.tensor(f_max))
    mel_f = mel_to_hz_slaney(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).to(torch.float32)


def spectral_convergence(reference: Tensor, estimate: Tensor) -> Tensor:
    """``||S_ref - S_est||_F / ||S_ref||_F`` over the last two axes (Arik et al. 2019, eq. 3)."""
    num = torch.linalg.vector_norm(reference - estimate, dim=(-2, -1))
    return num / torch.linalg.vector_norm(reference, dim=(-2, -1)).clamp_min(1e-12)


def frame_signal(x: Tensor, size: int, hop: int) -> Tensor:
    """Overlapping frames ``[B, 1 + (n - size) // hop, size]`` of ``[B, n]``: ``x.unfold(-1,
    size, hop)``. When ``hop`` divides ``size`` the frames are built from ``size // hop`` shifted
    views of one reshape, which exports to ONNX as slices and a concat instead of a large
    Gather (measured: the Gathers took 16% of the exported default decoder's time). Run
    eagerly it is the ``unfold`` view (no copy)."""
    n = x.shape[-1]
    if size % hop or n < size or not torch.compiler.is_compiling():
        return x.unfold(-1, size, hop)  # eager: a view
    count = 1 + (n - size) // hop
    r = size // hop
    chunks = x[..., : (count + r - 1) * hop].reshape(*x.shape[:-1], count + r - 1, hop)
    return torch.cat([chunks[..., i : i + count, :] for i in range(r)], dim=-1)


#: Above this many overlapping frames per sample, :func:`overlap_add` uses ``fold`` (one kernel)
#: rather than one shifted add per overlap.
MAX_SHIFTED_ADDS = 16


def overlap_add(frames: Tensor, hop: int, start: int = 0, length: int | None = None) -> Tensor:
    """The overlap-add ``y[k hop + j] += frames[k, j]`` of frames ``[B, T, N]`` placed ``hop``
    apart (the sum in Griffin & Lim 1984, eq. 6), samples ``start`` to ``start + length`` of
    the ``(T - 1) * hop + N`` (all by default).

    When ``hop`` divides ``N`` (``r = N / hop`` overlaps, 2 for the default codec) it is ``r``
    shifted adds of ``[B, T + r - 1, hop]`` blocks, several times faster than
    ``nn.functional.fold`` (col2im) on the CPU, exported to ONNX as pads and adds; with
    ``r = 2``, ``start = hop`` and ``length = (T - 1) * hop`` (an inverse STFT with
    ``center=True`` and ``N = 2 hop``) a single add. Otherwise ``fold``."""
    b, count, size = frames.shape
    total = (count - 1) * hop + size
    length = total - start if length is None else length
    r = size // hop
    if size % hop or r > MAX_SHIFTED_ADDS:
        out = torch.nn.functional.fold(
            frames.transpose(1, 2), output_size=(1, total), kernel_size=(1, size), stride=(1, hop)
        )
        return out[:, 0, 0, start : start + length]
    parts = frames.reshape(b, count, r, hop)
    if r == 2 and start == hop and length == (count - 1) * hop:
        return (parts[:, 1:, 0] + parts[:, :-1, 1]).reshape(b, length)
    out = torch.nn.functional.pad(parts[:, :, 0], (0, 0, 0, r - 1))
    for i in range(1, r):
        out = out + torch.nn.functional.pad(parts[:, :, i], (0, 0, i, r - 1 - i))
    return out.reshape(b, (count + r - 1) * hop)[:, start : start + length]


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """``nn.functional.pad(x, (pad, pad), mode="reflect")`` for ``[B, n]`` with ``pad < n``,
    as two flipped slices and a concat (the same values; torch's reflection kernel is several
    times slower on the CPU)."""
    n = x.shape[-1]
    return torch.cat([x[:, 1 : pad + 1].flip(-1), x, x[:, n - pad - 1 : n - 1].flip(-1)], dim=-1)


PHASE_FLOOR = 1e-6  # |STFT| below this has no meaningful phase (audio peaks are O(1))


def unit_phase(real: Tensor, imag: Tensor, floor: float = PHASE_FLOOR) -> tuple[Tensor, Tensor]:
    """``(real, imag) / |real + i imag|``, the phase projection of Griffin-Lim (eq. 4 of Perraudin
    et al. 2013), with phase 0 wherever the magnitude is below ``floor``.

    Near-silent bins have no meaningful phase: their direction is rounding noise, which differs
    between runtimes (onnxruntime returns exact zeros where torch returns 1e-9) and would be
    amplified by the following iterations. A fixed choice there keeps torch and exported decoders
    in step."""
    phase = unit_phase_planes(torch.stack([real, imag]), floor)
    return phase[0], phase[1]


def unit_phase_planes(
    pair: Tensor, floor: float = PHASE_FLOOR, unit: Tensor | None = None
) -> Tensor:
    """:func:`unit_phase` of ``pair = [real, imag]`` stacked on the first axis (``[2, ...]``):
    ``pair / sqrt(real^2 + imag^2)``, ``(1, 0)`` where that magnitude is below ``floor``. (The
    division by a near-zero magnitude is computed and then discarded.) ``unit``: the ``(1, 0)``
    pair shaped ``[2, 1, ...]`` (made here when not given; a loop passes its own)."""
    square = pair * pair
    norm = torch.sqrt(square[0] + square[1])
    if unit is None:
        unit = torch.tensor([1.0, 0.0], dtype=pair.dtype, device=pair.device)
        unit = unit.reshape(2, *[1] * norm.dim())
    return torch.where(norm < floor, unit, pair / norm)


def pad_token_states(states: Sequence[Tensor], dim: int) -> Conditioning:
    """Right-pad per-prompt token states ``[L_i, dim]`` into ``tokens [B, max L_i, dim]`` (zeros
    after each prompt's end) and ``mask [B, max L_i]`` (True on real tokens)."""
    length = max((s.shape[0] for s in states), default=1)
    tokens = torch.zeros(len(states), length, dim, dtype=torch.float32)
    mask = torch.zeros(len(states), length, dtype=torch.bool)
    for row, s in enumerate(states):
        tokens[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = True
    return Conditioning(tokens, mask)


def check_rank(x: object, dim: int, what: str) -> Tensor:
    """``x`` if it is a tensor with ``dim`` axes, else a one-line error naming ``what`` was
    expected (e.g. ``"audio [B, n]"``) and what came."""
    if not isinstance(x, Tensor) or x.dim() != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InvalidArgumentError(f"expected {what}, got {shape}")
    return x
