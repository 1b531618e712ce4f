"""SynthCaps captions: templates and synonyms, with separate phrasings for the test split.

The train and valid splits share one set of templates and synonyms; the test split uses another
set that never occurs in train captions (no shared template, no shared synonym), so a model's
prompt following is measured on phrasings it has never seen. Every caption states every
attribute of its item.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np


class Noun(NamedTuple):
    """A name for a source: singular, plural, and whether it is a mass noun (no article)."""

    singular: str
    plural: str
    mass: bool = False


def _n(singular: str, plural: str | None = None, mass: bool = False) -> Noun:
    return Noun(singular, plural or singular + "s", mass)


Table = dict[str, list]

TRAIN: dict[str, Table] = {
    "noun": {
        "beep": [_n("beep"), _n("bleep"), _n("electronic beep")],
        "buzzer": [
            _n("buzzer"),
            _n("buzz", "buzzes"),
            _n("square-wave buzz", "square-wave buzzes"),
        ],
        "bell": [_n("bell"), _n("chime"), _n("bell strike")],
        "pluck": [_n("plucked string"), _n("guitar pluck"), _n("string pluck")],
        "knock": [_n("knock"), _n("drum hit"), _n("thud")],
        "chirp": [_n("chirp"), _n("sweep"), _n("tone sweep")],
        "whistle": [_n("whistle"), _n("whistling tone")],
        "siren": [_n("siren"), _n("alarm siren")],
        "ticking": [_n("clock"), _n("ticking clock"), _n("ticking sound")],
        "hiss": [_n("hiss", "hisses"), _n("white noise", mass=True), _n("hissing noise")],
        "rumble": [_n("rumble"), _n("rumbling", mass=True), _n("low rumble")],
        "rain": [_n("rain", mass=True), _n("rainfall", mass=True), _n("rain shower")],
        "wind": [_n("wind", mass=True), _n("gusty wind", mass=True)],
    },
    "verb": {  # (third person singular, base form)
        "beep": [("beeps", "beep"), ("sounds", "sound")],
        "buzzer": [("buzzes", "buzz"), ("sounds", "sound")],
        "bell": [("rings", "ring"), ("chimes", "chime")],
        "pluck": [("is plucked", "be plucked"), ("sounds", "sound")],
        "knock": [("sounds", "sound"), ("is heard", "be heard")],
        "chirp": [("sounds", "sound"), ("sweeps", "sweep")],
        "whistle": [("blows", "blow"), ("sounds", "sound")],
        "siren": [("wails", "wail"), ("sounds", "sound")],
        "ticking": [("ticks", "tick")],
        "hiss": [("hisses", "hiss"), ("sounds", "sound")],
        "rumble": [("rumbles", "rumble"), ("sounds", "sound")],
        "rain": [("falls", "fall"), ("pours", "pour")],
        "wind": [("blows", "blow"), ("gusts", "gust")],
    },
    "pitch": {
        "low": ["low", "low-pitched", "deep"],
        "medium": ["medium-pitched", "mid-pitched"],
        "high": ["high", "high-pitched"],
    },
    "loudness": {"quiet": ["quiet", "soft", "faint"], "loud": ["loud", "powerful"]},
    "count": {
        "once": ["once", "one time"],
        "twice": ["twice"],
        "three times": ["three times"],
        "four times": ["four times"],
        "repeatedly": ["repeatedly", "again and again"],
    },
    "quantity": {
        "once": ["a single", "one"],
        "twice": ["two"],
        "three times": ["three"],
        "four times": ["four"],
        "repeatedly": ["repeated", "many"],
    },
    "tempo": {
        "slow": ["slowly", "at a slow pace"],
        "fast": ["quickly", "rapidly", "in quick succession"],
    },
    "envelope": {
        "fading in": ["fading in", "growing louder", "getting louder"],
        "fading out": ["fading out", "dying away", "getting quieter"],
        "steady": ["at a steady level", "holding steady", "at constant volume"],
    },
    "direction": {"rising": ["rising", "upward"], "falling": ["falling", "downward"]},
    "background": {
        "rumble": ["over a low rumble", "with a rumble in the background"],
        "wind": ["while wind blows", "with wind in the background"],
        "rain": ["while rain falls", "with rain in the background"],
        "hiss": ["over a soft hiss", "with hiss in the background"],
    },
}

TEST: dict[str, Table] = {
    "noun": {
        "beep": [_n("pip"), _n("electronic tone")],
        "buzzer": [_n("rasping alarm"), _n("electric drone")],
        "bell": [_n("gong"), _n("ding")],
        "pluck": [_n("harp note"), _n("twanged string")],
        "knock": [_n("thump"), _n("rap on wood", "raps on wood")],
        "chirp": [_n("glide"), _n("swoop")],
        "whistle": [_n("piping note"), _n("flute-like tone")],
        "siren": [_n("klaxon"), _n("wailing alarm")],
        "ticking": [_n("metronome"), _n("clockwork mechanism")],
        "hiss": [_n("static", mass=True), _n("radio static", mass=True)],
        "rumble": [_n("droning growl"), _n("distant thunder", mass=True)],
        "rain": [_n("drizzle", mass=True), _n("downpour")],
        "wind": [_n("breeze"), _n("gale")],
    },
    "verb": {
        "beep": [("goes off", "go off"), ("plays", "play")],
        "buzzer": [("drones", "drone"), ("goes off", "go off")],
        "bell": [("tolls", "toll"), ("resounds", "resound")],
        "pluck": [("twangs", "twang"), ("resounds", "resound")],
        "knock": [("thumps", "thump"), ("lands", "land")],
        "chirp": [("glides", "glide"), ("plays", "play")],
        "whistle": [("pipes", "pipe"), ("plays", "play")],
        "siren": [("howls", "howl"), ("cries out", "cry out")],
        "ticking": [("clicks", "click"), ("taps", "tap")],
        "hiss": [("crackles", "crackle"), ("plays", "play")],
        "rumble": [("growls", "growl"), ("drones", "drone")],
        "rain": [("patters", "patter"), ("comes down", "come down")],
        "wind": [("howls", "howl"), ("whooshes", "whoosh")],
    },
    "pitch": {
        "low": ["bass", "low-toned"],
        "medium": ["middle-pitched", "mid-range"],
        "high": ["shrill", "treble"],
    },
    "loudness": {"quiet": ["hushed", "muted"], "loud": ["blaring", "deafening"]},
    "count": {
        "once": ["a single time"],
        "twice": ["two times"],
        "three times": ["thrice", "3 times"],
        "four times": ["4 times"],
        "repeatedly": ["over and over", "continually"],
    },
    "quantity": {
        "once": ["a lone", "just one"],
        "twice": ["2", "a pair of"],
        "three times": ["3", "a trio of"],
        "four times": ["4", "a set of four"],
        "repeatedly": ["countless", "a long series of"],
    },
    "tempo": {
        "slow": ["unhurriedly", "at a leisurely tempo"],
        "fast": ["briskly", "at a rapid clip"],
    },
    "envelope": {
        "fading in": ["swelling", "building up"],
        "fading out": ["trailing off", "dwindling away"],
        "steady": ["at an unchanging level", "without any change in volume"],
    },
    "direction": {"rising": ["ascending", "climbing"], "falling": ["descending", "dropping"]},
    "background": {
        "rumble": ["on top of a droning growl", "against distant thunder"],
        "wind": ["as a breeze howls", "amid gusts of air"],
        "rain": ["amid a drizzle", "as a downpour patters"],
        "hiss": ["against radio static", "amid crackling static"],
    },
}

#: Slots: {np} article + adjectives + noun, {q} the count as a quantity ("three loud beeps"; {np}
#: when no count is stated), {verb}/{verb_base} a verb, {count} a count adverb (empty when the
#: template uses {q}), {tempo}, {env}, {bg}, {bare} the noun without article, {attrs} every
#: attribute phrase, comma-separated.
TEMPLATES: dict[str, list[str]] = {
    "train": [
        "{np} {verb} {count} {tempo} {env} {bg}",
        "the sound of {np} that {verb} {count} {tempo} {env} {bg}",
        "{q} {tempo} {env} {bg}",
        "sound of {q} {tempo} {env} {bg}",
        "{bare}, {attrs}",
    ],
    "test": [
        "you can hear {np} {verb_base} {count} {tempo} {env} {bg}",
        "in this recording, {np} {verb} {count} {tempo} {env} {bg}",
        "{q} can be heard {tempo} {env} {bg}",
        "a clip of {q} {tempo} {env} {bg}",
        "audio of {bare} ({attrs})",
    ],
}

PHRASES: dict[str, dict[str, Table]] = {"train": TRAIN, "test": TEST}
#: Which phrasing each split uses: valid shares train's, test has its own.
SPLIT_PHRASING: dict[str, str] = {"train": "train", "valid": "train", "test": "test"}
#: The attribute keys a caption states through a synonym table of the same name.
STATED = ("pitch", "loudness", "count", "tempo", "envelope", "direction", "background")


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    return ("an " if words[:1] in "aeiou" else "a ") + words


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return text.strip(" ,")


def make_caption(attributes: dict[str, str], split: str, rng: np.random.Generator) -> str:
    """A caption that states every attribute in ``attributes``, phrased for ``split``."""
    group = SPLIT_PHRASING[split]
    table = PHRASES[group]
    source = attributes["source"]
    noun: Noun = _pick(rng, table["noun"][source])  # type: ignore[assignment]
    verb, verb_base = _pick(rng, table["verb"][source])  # type: ignore[misc]
    said = {k: str(_pick(rng, table[k][attributes[k]])) for k in STATED if k in attributes}
    template = str(_pick(rng, TEMPLATES[group]))

    adjs = " ".join(said[k] for k in ("loudness", "pitch", "direction") if k in said)
    bare_sg = f"{adjs} {noun.singular}".strip()
    np_phrase = bare_sg if noun.mass else _article(bare_sg)
    count = attributes.get("count")
    if count is None:
        quantity = np_phrase
    else:
        det = str(_pick(rng, table["quantity"][count]))
        plural = noun.singular if count == "once" else noun.plural
        quantity = f"{det} {adjs} {plural}"
    uses_quantity = "{q}" in template
    plural_bare = count is not None and count != "once"
    attrs = ", ".join(
        said[k]
        for k in ("pitch", "loudness", "direction", "count", "tempo", "envelope", "background")
        if k in said
    )
    text = template.format(
        np=np_phrase,
        q=quantity,
        verb=verb,
        verb_base=verb_base,
        count="" if uses_quantity else said.get("count", ""),
        tempo=said.get("tempo", ""),
        env=said.get("envelope", ""),
        bg=said.get("background", ""),
        bare=noun.plural if plural_bare else noun.singular,
        attrs=attrs,
    )
    return _tidy(text)


def attribute_phrases(attributes: dict[str, str], split: str) -> dict[str, list[str]]:
    """Every phrase that may express each attribute of ``attributes`` in a ``split`` caption
    (for checking that a caption states its attributes)."""
    table = PHRASES[SPLIT_PHRASING[split]]
    out: dict[str, list[str]] = {
        "source": [w for n in table["noun"][attributes["source"]] for w in (n.singular, n.plural)]
    }
    for key in STATED:
        if key in attributes:
            out[key] = list(table[key][attributes[key]])
            if key == "count":
                out[key] += table["quantity"][attributes[key]]
    return out


def all_phrases(group: str) -> set[str]:
    """Every synonym (nouns, verbs, attribute words) of a phrasing group."""
    table = PHRASES[group]
    out: set[str] = set()
    for category, values in table.items():
        for options in values.values():
            for option in options:
                if category == "noun":
                    out.update((option.singular, option.plural))
                elif category == "verb":
                    out.update(option)
                else:
                    out.add(option)
    return out
