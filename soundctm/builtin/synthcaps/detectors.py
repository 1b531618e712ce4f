"""Analytic attribute detectors: read SynthCaps attributes back from audio (numpy only).

- texture (tonal / noisy): spectral flatness (geometric over arithmetic mean of the power
  spectrum) in a four-octave band around each loud frame's spectral peak; lower quartile over
  the loud frames.
- pitch (low / medium / high): median spectral-peak frequency of the loud frames.
- count (once ... four times, repeatedly) and tempo (slow / fast): onsets on the short-term
  energy envelope (hysteresis thresholds between the noise floor and the peak); tempo from the
  median inter-onset interval.
- loudness (quiet / medium / loud): the peak short-term RMS in dBFS (the generator's level).
- envelope (fading in / fading out / steady): energy of the last third minus the first third.
- direction (rising / falling): median slope of the log spectral-peak frequency over loud frames.

Thresholds sit between the generator's well-separated classes (see :mod:`.synth`).
:func:`attribute_accuracy` compares requested attributes with detected ones: the
prompt-following score of generated audio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from soundctm.builtin.synthcaps import synth
from soundctm.builtin.synthcaps.generator import ATTRIBUTE_VALUES, SOURCES
from soundctm.errors import InvalidArgumentError

FLATNESS_SPLIT = 0.035  # below: tonal (clean clips: tonal < 0.007, noisy > 0.059)
ENVELOPE_SPLIT_DB = 6.0
ACTIVE_DB = 10.0  # frames within this many dB of the loudest frame are "loud frames"
COUNT_NAMES = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
#: The attributes the detectors read (texture is derived from an item's source).
DETECTED: tuple[str, ...] = (
    "texture",
    "pitch",
    "count",
    "tempo",
    "loudness",
    "envelope",
    "direction",
)
CLASSES: dict[str, tuple[str, ...]] = {
    "texture": ("tonal", "noisy"),
    **{k: v for k, v in ATTRIBUTE_VALUES.items() if k in DETECTED},
}


def _fft_size(sample_rate: int, seconds: float) -> int:
    return 1 << max(6, round(math.log2(seconds * sample_rate)))


def power_frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Power spectra [frames, n_fft//2+1] of Hann-windowed frames."""
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft)
    return np.abs(np.fft.rfft(frames * window, axis=1)) ** 2


def _active(power: np.ndarray) -> np.ndarray:
    energy = 10.0 * np.log10(power.sum(axis=1) + 1e-20)
    return energy >= energy.max() - ACTIVE_DB


def peak_frequencies(power: np.ndarray, sample_rate: int, n_fft: int) -> np.ndarray:
    """Spectral-peak frequency (Hz) of each frame between 70 Hz and 0.45 fs, refined by
    parabolic interpolation of the log power around the peak bin."""
    lo = max(1, math.ceil(70.0 * n_fft / sample_rate))
    hi = min(power.shape[1] - 2, int(0.45 * n_fft))
    band = np.log(power[:, lo : hi + 1] + 1e-30)
    k = np.argmax(band, axis=1)
    rows = np.arange(band.shape[0])
    left = band[rows, np.maximum(k - 1, 0)]
    right = band[rows, np.minimum(k + 1, band.shape[1] - 1)]
    mid = band[rows, k]
    denom = left - 2.0 * mid + right
    shift = np.where(
        np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0
    )
    return (lo + k + np.clip(shift, -0.5, 0.5)) * sample_rate / n_fft


def spectral_flatness(power: np.ndarray, sample_rate: int, n_fft: int) -> np.ndarray:
    """Per frame: geometric / arithmetic mean of the power spectrum over the band from a
    quarter to four times the spectral-peak frequency (Wiener entropy; 0 tonal, ~0.56 white)."""
    peaks = peak_frequencies(power, sample_rate, n_fft)
    bins = power.shape[1]
    lo = np.maximum(1, (np.maximum(30.0, peaks / 4.0) * n_fft / sample_rate).astype(int))
    hi = np.minimum(bins, (np.minimum(0.48 * sample_rate, 4.0 * peaks) * n_fft / sample_rate) + 1)
    hi = np.maximum(hi.astype(int), lo + 1)
    p = power + 1e-30
    zeros = np.zeros((p.shape[0], 1))
    sum_p = np.concatenate([zeros, np.cumsum(p, axis=1)], axis=1)
    sum_log = np.concatenate([zeros, np.cumsum(np.log(p), axis=1)], axis=1)
    rows = np.arange(p.shape[0])
    width = hi - lo
    mean_log = (sum_log[rows, hi] - sum_log[rows, lo]) / width
    mean_p = (sum_p[rows, hi] - sum_p[rows, lo]) / width
    return np.exp(mean_log) / mean_p


def detect_texture_pitch(x: np.ndarray, sample_rate: int) -> tuple[str, str, float, float]:
    """(texture, pitch class, flatness, peak frequency) from the loud 64 ms frames: the lower
    quartile of the per-frame flatness (frames holding an event's onset look noisier than the
    sound is) and the median spectral-peak frequency."""
    n_fft = _fft_size(sample_rate, 0.064)
    power = power_frames(x, n_fft, n_fft // 4)
    active = _active(power)
    flat = float(np.percentile(spectral_flatness(power[active], sample_rate, n_fft), 25))
    f0 = float(np.median(peak_frequencies(power[active], sample_rate, n_fft)))
    low_split, high_split = synth.PITCH_SPLITS
    pitch = "low" if f0 < low_split else "medium" if f0 < high_split else "high"
    return ("tonal" if flat < FLATNESS_SPLIT else "noisy"), pitch, flat, f0


def detect_direction(x: np.ndarray, sample_rate: int) -> str:
    """ "rising" or "falling" from the median frame-to-frame change of the log peak frequency
    over consecutive loud 32 ms frames (jumps over 0.2 nepers, between events, are ignored);
    "flat" if there is no change."""
    n_fft = _fft_size(sample_rate, 0.032)
    power = power_frames(x, n_fft, n_fft // 4)
    active = _active(power)
    logf = np.log(peak_frequencies(power, sample_rate, n_fft))
    step = np.diff(logf)
    ok = active[1:] & active[:-1] & (np.abs(step) < 0.2)
    if not ok.any():
        return "flat"
    slope = float(np.median(step[ok]))
    if abs(slope) < 1e-3:
        return "flat"
    return "rising" if slope > 0 else "falling"


def onset_times(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onsets (s): upward crossings of the 20 ms RMS envelope (5 ms hop, dB) through
    ``floor + 0.5 (peak - floor)``, re-armed only after it falls below ``floor + 0.3 (peak -
    floor)``; the floor is the 10th percentile, at most 50 dB below the peak. A sound without
    6 dB of dynamics is one event at time 0; digital silence has none."""
    win = max(1, round(0.020 * sample_rate))
    hop = max(1, round(0.005 * sample_rate))
    xx = np.asarray(x, dtype=np.float64)
    if xx.size < win:
        xx = np.pad(xx, (0, win - xx.size))
    cs = np.concatenate([[0.0], np.cumsum(xx * xx)])
    starts = np.arange(0, xx.size - win + 1, hop)
    env = 10.0 * np.log10(np.maximum((cs[starts + win] - cs[starts]) / win, 1e-16))
    top = env.max()
    floor = max(float(np.percentile(env, 10)), top - 50.0)
    if top - floor < 6.0:  # one sound throughout, or silence
        return np.zeros(1 if top > -100.0 else 0)
    on, off = floor + 0.5 * (top - floor), floor + 0.3 * (top - floor)
    state = np.where(env > on, 1.0, np.where(env < off, 0.0, np.nan))
    state[0] = 0.0 if np.isnan(state[0]) else state[0]
    idx = np.where(np.isnan(state), 0, np.arange(state.size))
    state = state[np.maximum.accumulate(idx)]  # forward fill: hysteresis
    rising = np.flatnonzero(np.diff(state) > 0) + 1
    if state[0] == 1.0:
        rising = np.concatenate([[0], rising])
    return starts[rising] / sample_rate


def detect_count_tempo(x: np.ndarray, sample_rate: int) -> tuple[str, str | None]:
    """(count word, tempo or None): 1-4 onsets name the count, 5 or more are "repeatedly";
    the median inter-onset interval above ``TEMPO_SPLIT * time_scale`` is "slow"."""
    onsets = onset_times(x, sample_rate)
    n = onsets.size
    count = "none" if n == 0 else COUNT_NAMES.get(n, "repeatedly")
    if n < 2:
        return count, None
    scale = synth.time_scale(x.size / sample_rate)
    tempo = "slow" if float(np.median(np.diff(onsets))) > synth.TEMPO_SPLIT * scale else "fast"
    return count, tempo


def detect_loudness(x: np.ndarray, sample_rate: int) -> str:
    """ "quiet", "medium" or "loud" from the peak short-term RMS (dBFS)."""
    level = synth.level_db(x, sample_rate)
    quiet, loud = synth.LOUDNESS_SPLITS
    return "quiet" if level < quiet else "loud" if level > loud else "medium"


def detect_envelope(x: np.ndarray, sample_rate: int) -> str:
    """Energy (dB) of the last third minus the first third of the clip (5 % trimmed at each
    end): above +6 dB "fading in", below -6 dB "fading out", else "steady"."""
    xx = np.asarray(x, dtype=np.float64)
    n = xx.size
    a, b = round(0.05 * n), round(0.95 * n)
    third = max(1, (b - a) // 3)
    first = float(np.mean(xx[a : a + third] ** 2)) + 1e-16
    last = float(np.mean(xx[b - third : b] ** 2)) + 1e-16
    change = 10.0 * math.log10(last / first)
    if change > ENVELOPE_SPLIT_DB:
        return "fading in"
    if change < -ENVELOPE_SPLIT_DB:
        return "fading out"
    return "steady"


def _as_array(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().float().cpu().numpy()
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim > 1:
        x = x.reshape(-1, x.shape[-1]).mean(axis=0)
    return np.nan_to_num(x)


def detect(audio: np.ndarray, sample_rate: int) -> dict[str, str]:
    """Every attribute the detectors can read from ``audio`` (mono, or channels averaged).

    Keys: texture, pitch, count, loudness, envelope, direction, and tempo when there are at
    least two onsets. Each detector answers even where its attribute does not apply (the pitch
    of hiss); compare only the attributes an item claims.
    """
    x = _as_array(audio)
    if x.size == 0 or not np.any(x):
        return {"texture": "noisy", "count": "none", "loudness": "quiet", "envelope": "steady"}
    texture, pitch, _, _ = detect_texture_pitch(x, sample_rate)
    count, tempo = detect_count_tempo(x, sample_rate)
    out = {
        "texture": texture,
        "pitch": pitch,
        "count": count,
        "loudness": detect_loudness(x, sample_rate),
        "envelope": detect_envelope(x, sample_rate),
        "direction": detect_direction(x, sample_rate),
    }
    if tempo is not None:
        out["tempo"] = tempo
    return out


def expected_attributes(requested: dict[str, str]) -> dict[str, str]:
    """The detectable attributes an item claims; texture follows from a known source."""
    out = {k: v for k, v in requested.items() if k in DETECTED}
    source = SOURCES.get(requested.get("source", ""))
    if source is not None and "texture" not in out:
        out["texture"] = source.texture
    return out


def attribute_accuracy(
    requested: Sequence[dict[str, str]], audios: Iterable[Any], sample_rate: int
) -> dict[str, Any]:
    """How often the detectors read back what was requested.

    Returns ``{"per_attribute": {name: accuracy}, "overall": accuracy over all checks,
    "n": {name: checks}, "chance": {name: 1 / number of classes}}``; attributes no item
    requested are absent, and ``overall`` is NaN when there was nothing to check.
    """
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    audios = list(audios)
    if len(audios) != len(requested):
        raise InvalidArgumentError(
            f"{len(requested)} attribute dicts but {len(audios)} audio clips; pass one per clip"
        )
    for want, audio in zip(requested, audios, strict=True):
        expected = expected_attributes(want)
        if not expected:
            continue
        got = detect(audio, sample_rate)
        for name, value in expected.items():
            total[name] = total.get(name, 0) + 1
            correct[name] = correct.get(name, 0) + int(got.get(name) == value)
    names = [k for k in DETECTED if k in total]
    n_all = sum(total.values())
    return {
        "per_attribute": {k: correct[k] / total[k] for k in names},
        "overall": sum(correct.values()) / n_all if n_all else float("nan"),
        "n": {k: total[k] for k in names},
        "chance": {k: 1.0 / len(CLASSES[k]) for k in names},
    }
