"""Output levels: one gain per clip so that written files are neither clipped nor inaudible
(method.md §9). Pure functions, no state.

Modes:

- ``peak`` (the CLI default): a clip whose peak exceeds ``ceiling_db`` (-1 dBFS) is scaled down
  to it, so nothing clips; a clip whose peak lies below ``floor_db`` (-20 dBFS) is raised to
  it; a clip between the two is left alone (gain 0 dB). A clip whose peak lies below
  ``silence_db`` (-90 dBFS, under one 16-bit step) is silence: it is left alone and a warning
  says so.
- ``loudness``: the integrated loudness of ITU-R BS.1770-4 (pyloudnorm) is brought to
  ``target_lufs`` (-23 LUFS, EBU R128), then, if that would push the peak above
  ``ceiling_db``, the gain is lowered until it does not (the warning names the loudness
  reached). A clip quieter than BS.1770's -70 LUFS absolute gate has no integrated loudness:
  it is levelled as in ``peak`` mode, with a warning; silence is left alone with a warning.
- ``none``: the model's output as it is (the file writer still clips to [-1, 1]).

The gain applied is returned (and recorded in each sidecar), so the model's raw output is
``audio * 10 ** (-gain_db / 20)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from soundctm.errors import InvalidArgumentError

#: The normalisation modes, the first being the CLI's default.
MODES = ("peak", "loudness", "none")
CEILING_DB = -1.0
FLOOR_DB = -20.0
SILENCE_DB = -90.0
TARGET_LUFS = -23.0
#: BS.1770's gating block (s); a shorter clip is measured as one block of its own length.
BLOCK_SECONDS = 0.4


class Leveled(NamedTuple):
    """The result of :func:`normalize`: the scaled audio, the gain applied (dB) and a warning
    (``None`` when all went well)."""

    audio: Tensor
    gain_db: float
    warning: str | None


def db_to_gain(db: float) -> float:
    """``10 ** (db / 20)``."""
    return 10.0 ** (db / 20.0)


def peak_dbfs(audio: Tensor) -> float:
    """The peak of ``audio`` in dBFS (``-inf`` for all zeros or an empty clip)."""
    peak = float(audio.detach().abs().max()) if audio.numel() else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def peak_gain_db(
    peak_db: float,
    *,
    ceiling_db: float = CEILING_DB,
    floor_db: float = FLOOR_DB,
) -> float:
    """The ``peak`` mode's gain for a clip peaking at ``peak_db`` (method.md §9):
    ``ceiling - peak`` above the ceiling, ``floor - peak`` below the floor, else 0."""
    if peak_db > ceiling_db:
        return ceiling_db - peak_db
    if peak_db < floor_db:
        return floor_db - peak_db
    return 0.0


def loudness_lufs(audio: Tensor, sample_rate: int) -> float:
    """The integrated loudness (LUFS, ITU-R BS.1770-4 with its gates) of a mono clip ``[n]``;
    ``-inf`` for a clip below the -70 LUFS absolute gate. A clip shorter than the 400 ms
    gating block is measured as one block of its own length."""
    import pyloudnorm

    x = audio.detach().reshape(-1).double().cpu().numpy()
    if x.size < 2:
        return -math.inf
    block = min(BLOCK_SECONDS, x.size / sample_rate)
    meter = pyloudnorm.Meter(int(sample_rate), block_size=block)
    with np.errstate(divide="ignore"):
        value = float(meter.integrated_loudness(x))
    return value if math.isfinite(value) else -math.inf


def normalize(
    audio: Tensor,
    sample_rate: int,
    mode: str = "peak",
    *,
    ceiling_db: float = CEILING_DB,
    floor_db: float = FLOOR_DB,
    silence_db: float = SILENCE_DB,
    target_lufs: float = TARGET_LUFS,
) -> Leveled:
    """One clip ``[n]`` (or any shape, levelled as a whole) at the level ``mode`` asks for
    (see the module docstring and method.md §9). Returns ``(audio, gain_db, warning)``."""
    check_mode(mode)
    if not ceiling_db <= 0.0 or not floor_db <= ceiling_db:
        raise InvalidArgumentError(
            f"need floor_db <= ceiling_db <= 0, got {floor_db:g} and {ceiling_db:g}"
        )
    if mode == "none":
        return Leveled(audio, 0.0, None)
    peak = peak_dbfs(audio)
    if mode == "peak":
        if peak < silence_db:
            return Leveled(audio, 0.0, f"the output is silent (peak {_db(peak)} dBFS); kept as is")
        gain = peak_gain_db(peak, ceiling_db=ceiling_db, floor_db=floor_db)
        return Leveled(_scaled(audio, gain), gain, None)
    if peak < silence_db:
        return Leveled(audio, 0.0, f"the output is silent (peak {_db(peak)} dBFS); kept as is")
    lufs = loudness_lufs(audio, sample_rate)
    if not math.isfinite(lufs):  # every block below the -70 LUFS gate: level it by its peak
        gain = peak_gain_db(peak, ceiling_db=ceiling_db, floor_db=floor_db)
        note = "below the -70 LUFS gate of BS.1770, so levelled by its peak"
        return Leveled(_scaled(audio, gain), gain, f"the output is {note} ({gain:+.1f} dB)")
    gain = target_lufs - lufs
    warning = None
    if peak + gain > ceiling_db:
        gain = ceiling_db - peak
        warning = (
            f"reached {lufs + gain:.1f} LUFS, not {target_lufs:g}: more would clip "
            f"(peak held at {ceiling_db:g} dBFS)"
        )
    return Leveled(_scaled(audio, gain), gain, warning)


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a one-line error."""
    if mode not in MODES:
        raise InvalidArgumentError(f"normalize must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _scaled(audio: Tensor, gain_db: float) -> Tensor:
    if gain_db == 0.0:
        return audio
    return (audio.to(torch.float64) * db_to_gain(gain_db)).to(audio.dtype)


def _db(value: float) -> str:
    return "-inf" if not math.isfinite(value) else f"{value:.1f}"


__all__ = [
    "CEILING_DB",
    "FLOOR_DB",
    "MODES",
    "SILENCE_DB",
    "TARGET_LUFS",
    "Leveled",
    "check_mode",
    "db_to_gain",
    "loudness_lufs",
    "normalize",
    "peak_dbfs",
    "peak_gain_db",
]
