"""The SynthCaps generator: (split, index, seed) -> (waveform, caption, attributes).

Three independent PCG64 streams, each seeded from a SHA-256 of (seed, split, index, stream name),
draw the attributes, the caption wording and the audio details. So the attributes and caption of
an item do not depend on the sample rate or duration, and the same call gives the same clip on
every machine with the same numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from soundctm.builtin.synthcaps import synth
from soundctm.builtin.synthcaps.captions import make_caption
from soundctm.errors import InvalidArgumentError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MIN_SAMPLE_RATE = 8000
SECONDS_RANGE: tuple[float, float] = (1.0, 10.0)


@dataclass(frozen=True)
class Source:
    """A sound source: its texture and the attributes it can carry."""

    texture: str  # "tonal" or "noisy"
    attributes: tuple[str, ...]
    events: bool  # made of discrete events (count / tempo) rather than one continuous sound
    background_ok: bool  # may play over a background source
    length_frac: float = 0.5  # fraction of its window an event lasts


_EVENT = ("pitch", "count", "tempo", "loudness")
_CONT = ("envelope", "loudness")
SOURCES: dict[str, Source] = {
    "beep": Source("tonal", _EVENT, True, True, 0.5),
    "buzzer": Source("tonal", _EVENT, True, True, 0.5),
    "bell": Source("tonal", _EVENT, True, True, 0.9),
    "pluck": Source("tonal", _EVENT, True, True, 0.9),
    "knock": Source("noisy", ("count", "tempo", "loudness"), True, True, 0.9),
    "chirp": Source("tonal", ("direction", "count", "loudness"), True, True, 0.6),
    "ticking": Source("noisy", ("tempo", "loudness"), True, True, 0.0),
    "whistle": Source("tonal", ("pitch", *_CONT), False, True),
    "siren": Source("tonal", ("pitch", *_CONT), False, True),
    "hiss": Source("noisy", _CONT, False, False),
    "rumble": Source("noisy", _CONT, False, False),
    "rain": Source("noisy", _CONT, False, False),
    "wind": Source("noisy", _CONT, False, False),
}
BACKGROUNDS: tuple[str, ...] = ("rumble", "wind", "rain", "hiss")
#: Probability that a caption states an applicable attribute (chirps always state direction).
STATE_PROBABILITY: dict[str, float] = {
    "pitch": 0.85,
    "count": 0.9,
    "tempo": 0.9,
    "loudness": 0.4,
    "envelope": 0.75,
    "direction": 1.0,
    "background": 0.3,
}
#: The values each attribute can take in a caption.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "pitch": synth.PITCHES,
    "count": synth.COUNTS,
    "tempo": synth.TEMPOS,
    "loudness": synth.LOUDNESSES,
    "envelope": synth.ENVELOPES,
    "direction": synth.DIRECTIONS,
    "background": BACKGROUNDS,
}
TICK_SECONDS = 0.005


class Item(NamedTuple):
    """One SynthCaps clip: float32 mono waveform, its caption and its attributes."""

    audio: np.ndarray
    caption: str
    attributes: dict[str, str]


def _choice(rng: np.random.Generator, values: tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def sample_attributes(rng: np.random.Generator) -> tuple[dict[str, str], dict[str, str]]:
    """Draw an item: ``(stated, full)``. ``stated`` holds the attributes the caption states;
    ``full`` also holds the values the synthesiser uses for unstated ones (an unstated count
    or pitch is still drawn from its classes; unstated loudness is the default level and an
    unstated envelope is steady)."""
    names = tuple(SOURCES)
    source = _choice(rng, names)
    spec = SOURCES[source]
    full: dict[str, str] = {"source": source}
    stated: dict[str, str] = {"source": source}

    def draw(name: str, values: tuple[str, ...], default: str | None = None) -> None:
        value = _choice(rng, values)
        say = rng.random() < STATE_PROBABILITY[name]
        if say:
            stated[name] = full[name] = value
        elif default is None:
            full[name] = value
        else:
            full[name] = default

    if "pitch" in spec.attributes:
        draw("pitch", synth.PITCHES)
    if "count" in spec.attributes:
        draw("count", synth.COUNTS[:4] if source == "chirp" else synth.COUNTS)
    if "tempo" in spec.attributes and full.get("count", "repeatedly") == "repeatedly":
        draw("tempo", synth.TEMPOS)
        if "count" in spec.attributes and "count" not in stated:
            stated.pop("tempo", None)  # "a beep, quickly" would hide that it repeats
    if "loudness" in spec.attributes:
        draw("loudness", synth.LOUDNESSES, default="default")
    if "envelope" in spec.attributes:
        draw("envelope", synth.ENVELOPES, default="steady")
    if "direction" in spec.attributes:
        draw("direction", synth.DIRECTIONS)
    if spec.background_ok and rng.random() < STATE_PROBABILITY["background"]:
        stated["background"] = full["background"] = _choice(
            rng, tuple(b for b in BACKGROUNDS if b != source)
        )
    return stated, full


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _event_wave(
    source: str, full: dict[str, str], n: int, sr: int, rng: np.random.Generator
) -> np.ndarray:
    if source == "ticking":
        return synth.click_event(n, sr, rng)
    if source == "knock":
        return synth.knock_event(n, sr, rng.uniform(150.0, 500.0), rng)
    if source == "chirp":
        ratio = rng.uniform(2.5, 4.0)
        if full["direction"] == "rising":
            start = rng.uniform(250.0, 600.0)
            return synth.chirp_event(n, sr, start, start * ratio, rng)
        start = rng.uniform(900.0, 2400.0)
        return synth.chirp_event(n, sr, start, start / ratio, rng)
    f0 = _log_uniform(rng, *synth.PITCH_RANGES[full["pitch"]])
    make = {"beep": synth.beep_event, "buzzer": synth.buzzer_event, "bell": synth.bell_event}
    return make.get(source, synth.pluck_event)(n, sr, f0, rng)


def render_source(
    full: dict[str, str], sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """The foreground sound of ``full`` (float32, not level-normalised)."""
    n = round(sample_rate * seconds)
    source = full["source"]
    spec = SOURCES[source]
    if spec.events:
        count = full.get("count", "repeatedly")
        onsets, window = synth.event_times(count, full.get("tempo"), seconds, spec.length_frac, rng)
        if source == "ticking":
            length = round(TICK_SECONDS * sample_rate)
            gains = np.where(np.arange(onsets.size) % 2 == 0, 1.0, 0.85)
        else:
            length = max(16, round(spec.length_frac * window * sample_rate))
            gains = 10.0 ** (rng.uniform(-1.0, 1.0, size=onsets.size) / 20.0)
        event = _event_wave(source, full, length, sample_rate, rng)
        return synth.place_events(n, event, onsets, gains, sample_rate)
    if source in ("whistle", "siren"):
        f0 = _log_uniform(rng, *synth.PITCH_RANGES[full["pitch"]])
        tone = synth.whistle if source == "whistle" else synth.siren
        x = tone(n, sample_rate, f0, rng)
    else:
        noise = {"hiss": synth.hiss, "rumble": synth.rumble, "rain": synth.rain}
        x = noise.get(source, synth.wind)(n, sample_rate, rng)
    return x * synth.envelope_curve(full.get("envelope", "steady"), n, rng)


def render(
    full: dict[str, str], sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """The finished clip: foreground at its level (``LEVEL_DB``), an optional background
    ``BACKGROUND_DB`` below it, and a soft limiter against clipping. Where the limiter lowers
    the level of a loud, spiky clip (clicks), gain and limiter are applied again, up to three
    times, so that loud clips reach their level; float32."""
    target = synth.LEVEL_DB[full.get("loudness", "default")]
    x = synth.set_level(render_source(full, sample_rate, seconds, rng), sample_rate, target)
    background = full.get("background")
    if background is not None:
        bg = render_source({"source": background}, sample_rate, seconds, rng)
        x = x + synth.set_level(bg, sample_rate, target + synth.BACKGROUND_DB)
    for _ in range(3):
        x = synth.soft_limit(synth.set_level(x, sample_rate, target))
        if synth.level_db(x, sample_rate) > target - 1.0:
            break
    return x.astype(np.float32)


def check_args(split: str, sample_rate: int, seconds: float) -> None:
    """Raise :class:`InvalidArgumentError` for an unknown split or unsupported audio format."""
    if split not in SPLITS:
        raise InvalidArgumentError(
            f"unknown SynthCaps split {split!r}; use one of {', '.join(SPLITS)}"
        )
    if int(sample_rate) != sample_rate or sample_rate < MIN_SAMPLE_RATE:
        raise InvalidArgumentError(
            f"SynthCaps sample_rate must be an integer >= {MIN_SAMPLE_RATE} Hz, got {sample_rate}"
        )
    lo, hi = SECONDS_RANGE
    if not lo <= seconds <= hi:
        raise InvalidArgumentError(
            f"SynthCaps clips last {lo:g}-{hi:g} s, got {seconds}; choose a length within it"
        )


def generate(
    split: str, index: int, seed: int = 0, sample_rate: int = 16000, seconds: float = 3.0
) -> Item:
    """SynthCaps item ``index`` of ``split``: a deterministic function of its arguments."""
    check_args(split, sample_rate, seconds)
    if index < 0:
        raise InvalidArgumentError(f"SynthCaps index must be >= 0, got {index}")
    stated, full = sample_attributes(synth.stable_rng(seed, split, index, "attributes"))
    caption = make_caption(stated, split, synth.stable_rng(seed, split, index, "caption"))
    audio_rng = synth.stable_rng(seed, split, index, "audio")
    audio = render(full, int(sample_rate), float(seconds), audio_rng)
    return Item(audio, caption, stated)
