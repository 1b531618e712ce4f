"""The default model's wording diagnostic (docs/default-model/phrasing_check.py): its re-worded
captions must state the same attributes as the evaluation's, in train words only, or the
comparison in MODEL_CARD.md would measure something else."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from soundctm.builtin.synthcaps import captions
from soundctm.eval.prompts import synthcaps_prompts

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "default-model" / "phrasing_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("phrasing_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def test_train_worded_captions_state_the_same_attributes_in_train_words():
    prompts = synthcaps_prompts(60, 16000, 1.0, split="test")
    worded = _load_script().train_worded(prompts.attributes)
    test_only = captions.all_phrases("test") - captions.all_phrases("train")
    assert len(worded) == 60
    assert not set(worded) & set(prompts.captions)
    for caption, attributes in zip(worded, prompts.attributes, strict=True):
        for name, options in captions.attribute_phrases(attributes, "train").items():
            assert any(_contains(caption, p) for p in options), (caption, name)
        leaked = [p for p in test_only if len(p) > 2 and _contains(caption, p)]
        assert not leaked, (caption, leaked)
