"""SynthCaps synthesisers: small numpy sound generators and the constants that make attributes
separable.

Every function here is pure: it takes its parameters and a ``numpy.random.Generator`` and returns
a float32 mono signal (phases are kept in float64 turns, reduced exactly, then the sine is taken
in float32 -- several times faster than float64 here, which keeps a 3 s clip at a few ms).
Timings scale with :func:`time_scale` so that short clips still fit their events; level, pitch
and timing classes are spaced far apart so that the analytic detectors in :mod:`.detectors` can
read them back (the ``synthcaps-attributes`` metric of ``metric.py``).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable

import numpy as np

F32 = np.float32

#: Fundamental-frequency ranges (Hz) of the pitch classes; the detector splits at
#: :data:`PITCH_SPLITS`, the geometric means of neighbouring range edges.
PITCH_RANGES: dict[str, tuple[float, float]] = {
    "low": (110.0, 190.0),
    "medium": (330.0, 560.0),
    "high": (1000.0, 1800.0),
}
PITCH_SPLITS: tuple[float, float] = (250.0, 750.0)

#: Count words and the number of events each one means ("repeatedly": at least 6 in 3 s).
COUNT_EVENTS: dict[str, int] = {"once": 1, "twice": 2, "three times": 3, "four times": 4}
COUNTS: tuple[str, ...] = (*COUNT_EVENTS, "repeatedly")
#: Inter-onset interval (s, at 3 s or longer) of counted events and of the two tempos.
COUNT_IOI: tuple[float, float] = (0.45, 0.70)
ONCE_WINDOW: tuple[float, float] = (0.6, 1.2)
TEMPO_IOI: dict[str, tuple[float, float]] = {"slow": (0.38, 0.46), "fast": (0.12, 0.15)}
#: The detector calls a median inter-onset interval above this (times time_scale) slow.
TEMPO_SPLIT = 0.25

#: Clip level: the peak short-term (20 ms) RMS in dBFS; unmarked clips sit at "default".
LEVEL_DB: dict[str, float] = {"quiet": -36.0, "default": -22.0, "loud": -10.0}
LOUDNESS_SPLITS: tuple[float, float] = (-29.0, -16.0)
#: A background source sits this many dB below the foreground (same level measure).
BACKGROUND_DB = -24.0

ENVELOPES: tuple[str, ...] = ("fading in", "fading out", "steady")
DIRECTIONS: tuple[str, ...] = ("rising", "falling")
TEMPOS: tuple[str, ...] = ("slow", "fast")
PITCHES: tuple[str, ...] = tuple(PITCH_RANGES)
LOUDNESSES: tuple[str, ...] = ("quiet", "loud")

LEVEL_HOP = 0.010  # s; the level measure uses windows of two hops (20 ms)

BELL_RATIOS = np.array([1.0, 2.32, 4.25, 6.63])
BELL_AMPS = np.array([1.0, 0.45, 0.28, 0.18])


def time_scale(seconds: float) -> float:
    """Factor applied to every event timing: 1 for clips of 3 s or more, ``seconds / 3`` below."""
    return min(1.0, seconds / 3.0)


def stable_rng(*key: object) -> np.random.Generator:
    """A PCG64 generator seeded from a SHA-256 of ``key`` (never Python's salted ``hash``)."""
    text = "|".join(str(k) for k in ("synthcaps", *key))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


@functools.lru_cache(maxsize=8)
def times(n: int, sample_rate: int) -> np.ndarray:
    """The time axis ``arange(n) / sample_rate`` in seconds (cached, read-only)."""
    t = np.arange(n, dtype=np.float64) * (1.0 / sample_rate)
    t.flags.writeable = False
    return t


# --------------------------------------------------------------------------- level and shaping


def short_term_rms_db(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS in dBFS of 20 ms windows every 10 ms (floor -160 dB), from the energies of 10 ms
    blocks summed in pairs."""
    hop = max(1, round(LEVEL_HOP * sample_rate))
    blocks = max(2, -(-len(x) // hop))
    xx = np.zeros(blocks * hop, dtype=F32)
    xx[: len(x)] = x
    energy = np.square(xx).reshape(blocks, hop).sum(axis=1, dtype=np.float64)
    power = np.maximum((energy[1:] + energy[:-1]) / (2 * hop), 1e-16)
    return 10.0 * np.log10(power)


def level_db(x: np.ndarray, sample_rate: int) -> float:
    """The clip level: the peak short-term RMS (dBFS) -- a crest-factor-robust "peak level"."""
    return float(short_term_rms_db(x, sample_rate).max())


def set_level(x: np.ndarray, sample_rate: int, target_db: float) -> np.ndarray:
    """Scale ``x`` so that :func:`level_db` equals ``target_db`` (silence stays silent)."""
    current = level_db(x, sample_rate)
    if current <= -150.0:
        return x
    return x * 10.0 ** ((target_db - current) / 20.0)


def soft_limit(x: np.ndarray, knee: float = 0.7, ceiling: float = 0.99) -> np.ndarray:
    """Identity below ``knee``; above it a tanh knee that never exceeds ``ceiling``."""
    mag = np.abs(x)
    if mag.max(initial=0.0) <= knee:
        return x
    room = ceiling - knee
    limited = knee + room * np.tanh((mag - knee) / room)
    return np.where(mag > knee, np.sign(x) * limited, x)


def fade(n: int, sample_rate: int, ramp: float = 0.005) -> np.ndarray:
    """A flat window with raised-cosine ramps of ``ramp`` seconds at both ends (float32)."""
    w = np.ones(n, dtype=F32)
    r = min(n // 2, max(1, round(ramp * sample_rate)))
    edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)
    w[:r] = edge
    w[n - r :] = edge[::-1]
    return w


def envelope_curve(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Gain over the clip: a ramp ``t^p`` (p = 1, 1.5 or 2) from near 0 to 1 ("fading in"),
    its mirror image ("fading out"), or 1 ("steady")."""
    if kind == "steady":
        return np.ones(n, dtype=F32)
    ramp = np.linspace(0.0, 1.0, n, dtype=F32)
    ramp = (ramp, ramp * np.sqrt(ramp), ramp * ramp)[int(rng.integers(3))]
    ramp = np.maximum(ramp, F32(0.01))
    return ramp if kind == "fading in" else ramp[::-1].copy()


def sin_turns(turns: np.ndarray | float) -> np.ndarray:
    """``sin(2 pi turns)``: the phase is given in turns (cycles) as float64, reduced to [0, 1)
    exactly, and the sine is taken in float32 (numpy's fast vectorised path)."""
    turns = np.asarray(turns, dtype=np.float64)
    frac = (turns - np.floor(turns)).astype(F32)
    return np.sin(F32(2.0 * np.pi) * frac)


def white(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples of unit-variance white noise (uniform in +-sqrt(3), float32; uniform
    draws are several times cheaper than Gaussian ones, and filtering makes it Gaussian)."""
    return (rng.random(n, dtype=F32) - F32(0.5)) * F32(2.0 * math.sqrt(3.0))


def random_phase(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Unit complex numbers with uniformly random phase (complex64)."""
    turns = rng.random(shape, dtype=F32)
    return sin_turns(turns + F32(0.25)) + 1j * sin_turns(turns)


def shaped_noise(
    rng: np.random.Generator, n: int, sample_rate: int, gain_fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Noise with magnitude response ``gain_fn(freqs_hz)``, made directly in the frequency
    domain: random-phase bins, one inverse FFT (unit variance for unit gain)."""
    gain = gain_fn(np.fft.rfftfreq(n, 1.0 / sample_rate)).astype(F32) * F32(math.sqrt(n))
    return np.fft.irfft(random_phase(rng, n // 2 + 1) * gain, n=n)


def spectral_shape(
    x: np.ndarray, sample_rate: int, gain_fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Filter ``x`` by a zero-phase magnitude response ``gain_fn(freqs_hz)`` (circular, FFT)."""
    spec = np.fft.rfft(x)
    gain = gain_fn(np.fft.rfftfreq(x.size, 1.0 / sample_rate)).astype(F32)
    return np.fft.irfft(spec * gain, n=x.size)


def bandpass_gain(freqs: np.ndarray, centre: float, q: float) -> np.ndarray:
    """Magnitude of a 2nd-order band-pass: ``1 / sqrt(1 + Q^2 (f/fc - fc/f)^2)``."""
    f = np.maximum(freqs, 1e-3)
    return 1.0 / np.sqrt(1.0 + q * q * (f / centre - centre / f) ** 2)


def stft_noise(rng: np.random.Generator, n: int, gains: np.ndarray, frame: int) -> np.ndarray:
    """Noise with a time-varying spectrum: random-phase frames of magnitude ``gains``
    [frames, frame//2+1], overlap-added at hop frame/2 with a sqrt-Hann window (constant
    power). Returns ``n`` samples; ``gains`` must have ``ceil(n / hop) + 1`` rows."""
    hop = frame // 2
    rows, bins = gains.shape
    frames = np.fft.irfft(random_phase(rng, (rows, bins)) * gains.astype(F32), n=frame, axis=1)
    window = np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(frame) + 0.5) / frame))
    frames *= window.astype(F32)
    out = np.zeros((rows + 1) * hop, dtype=F32)
    out[: rows * hop] += frames[:, :hop].reshape(-1)
    out[hop : (rows + 1) * hop] += frames[:, hop:].reshape(-1)
    return out[hop : hop + n]


# --------------------------------------------------------------------------- event synthesisers


def beep_event(n: int, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """A sine beep of ``n`` samples with 8 ms ramps."""
    turns = f0 * times(n, sample_rate) + rng.uniform()
    return sin_turns(turns) * fade(n, sample_rate, 0.008)


def square_wave(turns: np.ndarray, f0: float, sample_rate: int, max_odd: int = 15) -> np.ndarray:
    """Band-limited square wave ``sum_k sin(k x) / k`` over odd ``k`` with ``k f0 < 0.45 fs``,
    using the recurrence ``sin((k+2)x) = 2 cos(2x) sin(kx) - sin((k-2)x)``."""
    s_k = sin_turns(turns)
    s_prev = -s_k
    out = s_k.copy()
    c2 = F32(2.0) * sin_turns(2.0 * turns + 0.25)
    k = 1
    while k + 2 <= max_odd and (k + 2) * f0 < 0.45 * sample_rate:
        s_prev, s_k = s_k, c2 * s_k - s_prev
        k += 2
        out += s_k / F32(k)
    return out


def buzzer_event(n: int, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """A square-wave buzz of ``n`` samples with 8 ms ramps."""
    turns = f0 * times(n, sample_rate) + rng.uniform()
    return square_wave(turns, f0, sample_rate) * fade(n, sample_rate, 0.008)


def chirp_event(
    n: int, sample_rate: int, f_start: float, f_end: float, rng: np.random.Generator
) -> np.ndarray:
    """An exponential sweep from ``f_start`` to ``f_end`` Hz over ``n`` samples:
    ``phase(t) = f_start d / ln r * (r^(t/d) - 1)`` turns with ``r = f_end / f_start``."""
    d = n / sample_rate
    t = times(n, sample_rate)
    log_r = math.log(f_end / f_start)
    turns = f_start * d / log_r * np.expm1(log_r * t / d) + rng.uniform()
    return sin_turns(turns) * fade(n, sample_rate, 0.01)


def bell_event(n: int, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """Inharmonic partials (ratios 1, 2.32, 4.25, 6.63) with exponential decays, the higher
    partials decaying faster; the fundamental has decayed by 30 dB after ``n`` samples."""
    t = times(n, sample_rate)
    t32 = t.astype(F32)
    tau = n / sample_rate / 3.5
    out = np.zeros(n, dtype=F32)
    for ratio, amp in zip(BELL_RATIOS, BELL_AMPS, strict=True):
        f = f0 * ratio
        if f >= 0.45 * sample_rate:
            break
        a = F32(amp * rng.uniform(0.8, 1.0))
        decay = np.exp(t32 * F32(-1.0 / (tau * ratio**-0.6)))
        out += a * decay * sin_turns(f * t + rng.uniform())
    return out * fade(n, sample_rate, 0.004)


def pluck_event(n: int, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong plucked string (Karplus & Strong 1983), solved in the frequency domain.

    The string loop ``y[n] = x[n] + g * avg(y[n-P], y[n-P-1])`` has the response
    ``H(w) = 1 / (1 - g cos(w/2) e^{-i w L})`` with loop length ``L = fs / f0`` (the two-point
    average's half-sample delay folded into ``L``, which may be fractional). ``g`` makes the
    loop lose 30 dB over the event, so the circular FFT wrap-around stays 30 dB down. The
    excitation is a triangular pluck shape (harmonics fall as 1/k^2) plus a little noise.
    """
    loop = sample_rate / f0
    p = max(2, round(loop))
    pos = rng.uniform(0.2, 0.4)
    shape = np.minimum(np.arange(p) / (pos * p), (p - np.arange(p)) / ((1.0 - pos) * p))
    excitation = np.zeros(n, dtype=F32)
    excitation[:p] = shape - shape.mean() + 0.1 * white(rng, p)
    g = 10.0 ** (-30.0 / 20.0 / max(1.0, n / loop))
    w = 2.0 * np.pi * np.fft.rfftfreq(n)
    turns = np.fft.rfftfreq(n) * loop
    loop_gain = g * np.cos(w / 2.0) * (sin_turns(turns + 0.25) - 1j * sin_turns(turns))
    response = (1.0 / (1.0 - loop_gain)).astype(np.complex64)
    out = np.fft.irfft(np.fft.rfft(excitation) * response, n=n)
    return out * fade(n, sample_rate, 0.004)


def knock_event(n: int, sample_rate: int, centre: float, rng: np.random.Generator) -> np.ndarray:
    """A knock / drum hit: noise through a broad band-pass at ``centre`` Hz with a fast
    exponential decay (filtered first, so no filter ringing wraps around the event)."""
    t = times(n, sample_rate).astype(F32)
    tau = min(rng.uniform(0.012, 0.03), n / sample_rate / 6.0)
    q = rng.uniform(1.0, 2.0)
    noise = shaped_noise(rng, n, sample_rate, lambda f: bandpass_gain(f, centre, q))
    return noise * np.exp(t * F32(-1.0 / tau)) * fade(n, sample_rate, 0.001)


def click_event(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A tick: high-passed noise decaying with a 0.6 ms time constant."""
    t = times(n, sample_rate).astype(F32)
    noise = shaped_noise(rng, n, sample_rate, lambda f: f / np.sqrt(f * f + 1500.0**2))
    return noise * np.exp(t * F32(-1.0 / 0.0006))


def place_events(
    n: int, event: np.ndarray, onsets: np.ndarray, gains: np.ndarray, sample_rate: int
) -> np.ndarray:
    """Add ``event`` into ``n`` samples of silence at each onset time (s) with its gain."""
    out = np.zeros(n, dtype=F32)
    for onset, gain in zip(onsets, gains, strict=True):
        start = round(onset * sample_rate)
        if start >= n:
            break
        stop = min(n, start + event.size)
        out[start:stop] += F32(gain) * event[: stop - start]
    return out


def event_times(
    count: str, tempo: str | None, seconds: float, length_frac: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Onset times (s) and the window each event may use.

    Counted events sit :data:`COUNT_IOI` apart (a single event gets :data:`ONCE_WINDOW`);
    "repeatedly" fills the clip at the tempo's interval (at least 6 events in 3 s, slow).
    Each event lasts ``length_frac`` of the window, so neighbours never overlap.
    """
    f = time_scale(seconds)
    if count == "repeatedly":
        ioi = rng.uniform(*TEMPO_IOI[tempo or "fast"]) * f
        t0 = rng.uniform(0.03, 0.1) * f
        n_events = int((seconds - t0 - length_frac * ioi - 0.02) // ioi) + 1
        return t0 + ioi * np.arange(max(1, n_events)), ioi
    n_events = COUNT_EVENTS[count]
    window = rng.uniform(*(ONCE_WINDOW if n_events == 1 else COUNT_IOI)) * f
    span = (n_events - 1) * window + length_frac * window
    margin = 0.05 * f
    t0 = rng.uniform(margin, max(margin, seconds - span - margin))
    return t0 + window * np.arange(n_events), window


# --------------------------------------------------------------------------- continuous sources


def whistle(n: int, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """A whistle: a sine with 4.5-7 Hz vibrato of +-2-3 % (the phase, in turns, is the integral
    ``f0 (t - d / (2 pi fv) cos(2 pi fv t + phi))`` of ``f0 (1 + d sin(2 pi fv t + phi))``)
    and a faint second harmonic."""
    t = times(n, sample_rate)
    fv, depth, phi = rng.uniform(4.5, 7.0), rng.uniform(0.02, 0.03), rng.uniform()
    vibrato = sin_turns(fv * t + phi + 0.25).astype(np.float64)
    turns = f0 * (t - depth / (2.0 * np.pi * fv) * vibrato)
    out = sin_turns(turns)
    if 2.0 * f0 < 0.45 * sample_rate:
        out += F32(0.08) * sin_turns(2.0 * turns)
    return out * fade(n, sample_rate, 0.05)


def siren(n: int, sample_rate: int, centre: float, rng: np.random.Generator) -> np.ndarray:
    """A siren: slow (0.25-0.6 Hz) sinusoidal sweeps of +-0.2 octave around ``centre`` Hz,
    with weak 2nd and 3rd harmonics; phase (turns) is the running sum of the frequency / fs."""
    t = times(n, sample_rate)
    rate, phi = rng.uniform(0.25, 0.6), rng.uniform()
    freq = centre * np.exp2(F32(0.2) * sin_turns(rate * t + phi)).astype(np.float64)
    turns = np.cumsum(freq) / sample_rate
    out = sin_turns(turns)
    for k, amp in ((2, 0.25), (3, 0.12)):
        if k * centre * 1.15 < 0.45 * sample_rate:
            out += F32(amp) * sin_turns(k * turns)
    return out * fade(n, sample_rate, 0.05)


def hiss(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """White noise."""
    return white(rng, n) * fade(n, sample_rate, 0.02)


def rumble(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Brown (1/f amplitude) noise band-limited to about 40-200 Hz, slowly swelling +-15 %."""
    lo, hi = rng.uniform(35.0, 45.0), rng.uniform(160.0, 240.0)

    def gain(f: np.ndarray) -> np.ndarray:
        f = np.maximum(f, 1.0)
        return (1.0 / f) / np.sqrt(1.0 + (lo / f) ** 4) / np.sqrt(1.0 + (f / hi) ** 4)

    x = shaped_noise(rng, n, sample_rate, gain)
    t = times(n, sample_rate)
    swell = F32(1.0) + F32(0.15) * sin_turns(rng.uniform(0.3, 1.0) * t + rng.uniform())
    return x * swell * fade(n, sample_rate, 0.02)


def rain(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Rain: dense random droplets (Poisson, 40-120 per second; each a 1.5 ms decaying burst
    of random sign and size) over band-passed noise centred at 2-3.5 kHz."""
    centre = min(rng.uniform(2000.0, 3500.0), 0.3 * sample_rate)
    x = shaped_noise(rng, n, sample_rate, lambda f: bandpass_gain(f, centre, 0.7))
    length = max(4, round(0.0015 * sample_rate))
    kernel = white(rng, length) * np.exp(np.linspace(0.0, -5.0, length, dtype=F32))
    k = int(rng.poisson(rng.uniform(40.0, 120.0) * n / sample_rate))
    where = rng.integers(0, n - length, size=k)
    amps = rng.uniform(1.0, 3.0, size=k) * rng.choice([-1.0, 1.0], size=k)
    index = (where[:, None] + np.arange(length)[None, :]).reshape(-1)
    drops = np.bincount(index, weights=(amps[:, None] * kernel[None, :]).reshape(-1), minlength=n)
    return (x + drops.astype(F32)) * fade(n, sample_rate, 0.02)


def wind(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Wind: noise through a band-pass (Gaussian in log frequency, 1 octave standard
    deviation) whose centre wanders +-0.6 octave at 0.15-0.4 Hz, with gusts of +-20 %
    amplitude at 0.4-1.2 Hz."""
    frame = 1 << max(6, round(math.log2(0.032 * sample_rate)))
    hop = frame // 2
    rows = -(-n // hop) + 1
    t_rows = np.arange(rows) * hop / sample_rate
    base = rng.uniform(300.0, 700.0)
    wander = rng.uniform(0.15, 0.4)
    centre = base * np.exp2(0.6 * sin_turns(wander * t_rows + rng.uniform()))
    freqs = np.maximum(np.fft.rfftfreq(frame, 1.0 / sample_rate), 1.0).astype(F32)
    octaves = np.log2(freqs[None, :] / centre[:, None])
    gains = np.exp(F32(-0.5) * octaves * octaves)
    x = stft_noise(rng, n, gains, frame)
    t = times(n, sample_rate)
    gust = F32(1.0) + F32(0.2) * sin_turns(rng.uniform(0.4, 1.2) * t + rng.uniform())
    return x * gust * fade(n, sample_rate, 0.02)
