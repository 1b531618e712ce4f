"""SynthCaps: determinism, caption phrasing per split, detector accuracy, dataset and writer."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from soundctm.builtin.synthcaps import (
    SOURCES,
    SynthCapsDataset,
    attribute_accuracy,
    captions,
    detect,
    detectors,
    generate,
    synth,
    write_folder,
)
from soundctm.builtin.synthcaps.generator import ATTRIBUTE_VALUES
from soundctm.errors import InvalidArgumentError

SR = 16000
SECONDS = 3.0
N_DETECT = 160


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


@pytest.fixture(scope="module")
def test_items():
    return [generate("test", i, 0, SR, SECONDS) for i in range(N_DETECT)]


@pytest.fixture(scope="module")
def caption_sets():
    return {
        split: [generate(split, i, 0, 8000, 1.0) for i in range(300)]
        for split in ("train", "valid", "test")
    }


# --------------------------------------------------------------------------- determinism


def test_same_call_is_bit_identical_and_index_seed_split_matter():
    a = generate("train", 7, seed=3)
    b = generate("train", 7, seed=3)
    assert a.audio.dtype == np.float32 and a.audio.shape == (round(SR * SECONDS),)
    assert a.audio.tobytes() == b.audio.tobytes()
    assert (a.caption, a.attributes) == (b.caption, b.attributes)
    for other in (generate("train", 8, seed=3), generate("train", 7, seed=4)):
        assert not np.array_equal(a.audio, other.audio)
    assert not np.array_equal(a.audio, generate("valid", 7, seed=3).audio)


def test_attributes_and_caption_do_not_depend_on_audio_format():
    a = generate("test", 11, 0, 16000, 3.0)
    b = generate("test", 11, 0, 8000, 1.5)
    assert (a.caption, a.attributes) == (b.caption, b.attributes)
    assert b.audio.shape == (12000,)


def test_bit_identical_in_a_fresh_interpreter_with_another_hash_seed():
    code = (
        "import hashlib;"
        "from soundctm.builtin.synthcaps import generate;"
        "it = generate('valid', 5, 2);"
        "print(hashlib.sha256(it.audio.tobytes()).hexdigest(), it.caption)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    item = generate("valid", 5, 2)
    assert out == f"{hashlib.sha256(item.audio.tobytes()).hexdigest()} {item.caption}"


@pytest.mark.parametrize(("sample_rate", "seconds"), [(8000, 1.0), (44100, 2.5), (16000, 10.0)])
def test_other_formats_have_the_right_length_and_stay_in_range(sample_rate, seconds):
    for index in range(13):
        audio = generate("train", index, 1, sample_rate, seconds).audio
        assert audio.shape == (round(sample_rate * seconds),)
        assert np.isfinite(audio).all() and np.abs(audio).max() < 1.0
        assert np.abs(audio).max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "dev"}, "split"),
        ({"sample_rate": 4000}, "sample_rate"),
        ({"seconds": 0.5}, "seconds|s, got"),
        ({"seconds": 11.0}, "s, got"),
        ({"index": -1}, "index"),
    ],
)
def test_bad_arguments_raise_user_errors(kwargs, match):
    args = {"split": "train", "index": 0, "seed": 0, "sample_rate": SR, "seconds": SECONDS}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=match):
        generate(**args)


# --------------------------------------------------------------------------- sources, levels


def test_every_source_occurs_with_sound_and_levels_are_separated():
    seen: dict[str, int] = {}
    levels: dict[str, list[float]] = {"quiet": [], "loud": []}
    for i in range(260):
        item = generate("train", i, 0, 8000, 1.0)
        seen[item.attributes["source"]] = seen.get(item.attributes["source"], 0) + 1
        if "loudness" in item.attributes:
            levels[item.attributes["loudness"]].append(synth.level_db(item.audio, 8000))
    assert set(seen) == set(SOURCES) and len(SOURCES) >= 12
    assert max(levels["quiet"]) < min(levels["loud"]) - 20.0


# --------------------------------------------------------------------------- captions


def _literals(template: str) -> list[str]:
    parts = (p.strip(" ,()") for p in re.split(r"\{\w+\}", template))
    return [p for p in parts if p]


def test_phrase_tables_of_train_and_test_are_disjoint():
    assert not set(captions.TEMPLATES["train"]) & set(captions.TEMPLATES["test"])
    assert not captions.all_phrases("train") & captions.all_phrases("test")
    assert all(_literals(t) for t in captions.TEMPLATES["test"])


def test_test_phrasing_never_occurs_in_train_or_valid_captions(caption_sets):
    test_words = captions.all_phrases("test")
    test_frames = {lit for t in captions.TEMPLATES["test"] for lit in _literals(t)}
    for split in ("train", "valid"):
        for item in caption_sets[split]:
            hits = [p for p in test_words | test_frames if _contains(item.caption, p)]
            assert not hits, (split, item.caption, hits)
    train_frames = {lit for t in captions.TEMPLATES["train"] for lit in _literals(t)}
    for item in caption_sets["test"]:
        assert any(_contains(item.caption, f) for f in test_frames), item.caption
        assert not any(_contains(item.caption, f) for f in train_frames), item.caption
    train_captions = {i.caption for i in caption_sets["train"]}
    assert not train_captions & {i.caption for i in caption_sets["test"]}
    assert len(train_captions) > 250  # many templates and synonyms, few repeats


EXCLUSIVE = ("count", "tempo", "envelope", "direction")


def test_captions_state_every_attribute(caption_sets):
    for split, items in caption_sets.items():
        for item in items:
            phrases = captions.attribute_phrases(item.attributes, split)
            for name, options in phrases.items():
                assert any(_contains(item.caption, p) for p in options), (item.caption, name)
            for name in EXCLUSIVE:  # and no phrase of another value of the same attribute
                if name not in item.attributes:
                    continue
                for value in ATTRIBUTE_VALUES[name]:
                    if value == item.attributes[name]:
                        continue
                    others = captions.attribute_phrases({"source": "beep", name: value}, split)
                    clash = [p for p in others[name] if _contains(item.caption, p)]
                    assert not clash, (item.caption, name, clash)


def test_attribute_mix_covers_every_value(caption_sets):
    for name, values in ATTRIBUTE_VALUES.items():
        found = {i.attributes.get(name) for i in caption_sets["train"]}
        assert set(values) <= found, (name, set(values) - found)


# --------------------------------------------------------------------------- detectors


def test_detectors_read_test_clips_at_least_95_percent(test_items):
    result = attribute_accuracy(
        [it.attributes for it in test_items], [it.audio for it in test_items], SR
    )
    assert set(result["per_attribute"]) == set(detectors.DETECTED)
    for name, acc in result["per_attribute"].items():
        assert acc >= 0.95, (name, acc, result["n"][name])
        assert result["n"][name] >= 8, (name, result["n"])
    assert result["n"]["texture"] == N_DETECT
    assert result["chance"]["count"] == pytest.approx(1 / 5)
    assert result["chance"]["pitch"] == pytest.approx(1 / 3)
    total = sum(result["n"].values())
    weighted = sum(result["per_attribute"][k] * result["n"][k] for k in result["n"])
    assert result["overall"] == pytest.approx(weighted / total)


def test_detectors_reject_wrong_requests(test_items):
    """A detector that answered anything would pass the test above; wrong labels must fail."""
    wrong = []
    for item in test_items:
        attrs = dict(item.attributes)
        for name, values in ATTRIBUTE_VALUES.items():
            if name in attrs and name in detectors.DETECTED:
                attrs[name] = values[(values.index(attrs[name]) + 1) % len(values)]
        wrong.append(attrs)
    half = len(wrong) // 2
    result = attribute_accuracy(wrong[:half], [it.audio for it in test_items[:half]], SR)
    for name, acc in result["per_attribute"].items():
        if name != "texture":  # texture follows the (unchanged) source
            assert acc <= 0.05, (name, acc)


def test_detectors_on_plain_signals():
    t = np.arange(SR * 2) / SR
    low = detect(0.3 * np.sin(2 * np.pi * 150 * t), SR)
    assert (low["texture"], low["pitch"], low["count"]) == ("tonal", "low", "once")
    high = detect(torch.tensor(0.3 * np.sin(2 * np.pi * 1300 * t)), SR)
    assert high["pitch"] == "high"
    noise = detect(np.random.default_rng(0).standard_normal(SR * 2) * 0.1, SR)
    assert noise["texture"] == "noisy" and noise["envelope"] == "steady"
    fading = detect(0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(1, 0, t.size), SR)
    assert (fading["envelope"], fading["pitch"]) == ("fading out", "medium")
    sweep = 0.3 * np.sin(2 * np.pi * 300 * (np.exp(t) - 1))  # 300 Hz rising exponentially
    assert detect(sweep, SR)["direction"] == "rising"
    assert detect(sweep[::-1].copy(), SR)["direction"] == "falling"
    assert detect(np.zeros(SR), SR)["count"] == "none"


def test_event_counts_and_tempo_of_pulse_trains():
    def pulses(times: list[float]) -> np.ndarray:
        x = np.zeros(SR * 3)
        for start in times:
            i = int(start * SR)
            x[i : i + 800] = np.sin(2 * np.pi * 500 * np.arange(800) / SR)
        return x

    assert detectors.detect_count_tempo(pulses([0.5, 1.1, 1.7]), SR) == ("three times", "slow")
    fast = pulses(list(np.arange(0.1, 2.9, 0.13)))
    assert detectors.detect_count_tempo(fast, SR) == ("repeatedly", "fast")


def test_attribute_accuracy_checks_its_inputs():
    with pytest.raises(InvalidArgumentError, match="one per clip"):
        attribute_accuracy([{"source": "beep"}], [], SR)
    empty = attribute_accuracy([{"caption_only": "x"}], [np.zeros(SR)], SR)
    assert empty["n"] == {} and np.isnan(empty["overall"])


# --------------------------------------------------------------------------- dataset, writer


def test_dataset_items():
    data = SynthCapsDataset(split="valid", size=4, sample_rate=8000, seconds=1.5, seed=2)
    assert (len(data), data.sample_rate, data.seconds) == (4, 8000, 1.5)
    item = data[3]
    assert isinstance(item["audio"], torch.Tensor) and item["audio"].dtype == torch.float32
    assert item["audio"].shape == (12000,)
    reference = generate("valid", 3, 2, 8000, 1.5)
    assert np.array_equal(item["audio"].numpy(), reference.audio)
    assert item["caption"] == reference.caption and item["attributes"] == reference.attributes
    assert item["id"] == "synthcaps-valid-s2-000003"
    assert data[-1]["id"] == item["id"]
    with pytest.raises(IndexError):
        data[4]
    with pytest.raises(InvalidArgumentError):
        SynthCapsDataset(size=0)


def test_dataset_builds_from_a_module_attr_target():
    from soundctm.plugins.hookspecs import hookimpl
    from soundctm.plugins.registry import get_registry, register_plugin

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register("synthcaps-copy", "soundctm.builtin.synthcaps.dataset:SynthCapsDataset")

    register_plugin(Plugin(), name="synthcaps-copy-plugin")
    data = get_registry().build("dataset", "synthcaps-copy", split="test", size=2)
    assert len(data) == 2 and data[0]["audio"].shape == (48000,)


def test_write_folder(tmp_path):
    events = []
    wavs = write_folder(
        tmp_path / "refs", "test", 3, sample_rate=8000, seconds=1.0, start=5, callback=events.append
    )
    assert [w.name for w in wavs] == [f"synthcaps-test-s0-{i:06d}.wav" for i in (5, 6, 7)]
    rows = [json.loads(line) for line in (tmp_path / "refs" / "synthcaps.jsonl").open()]
    for wav, row, index in zip(wavs, rows, (5, 6, 7), strict=True):
        audio, sr = sf.read(wav, dtype="float32")
        item = generate("test", index, 0, 8000, 1.0)
        assert sr == 8000 and audio.shape == item.audio.shape
        assert np.abs(audio - item.audio).max() < 1e-4  # 16-bit PCM
        assert wav.with_suffix(".txt").read_text().strip() == item.caption
        assert row == {"file": wav.name, "caption": item.caption, "attributes": item.attributes}
    assert [e.done for e in events] == [1, 2, 3]
    assert not [p for p in (tmp_path / "refs").iterdir() if p.name.startswith(".")]
