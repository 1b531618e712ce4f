"""Is the default model's prompt following limited by what it can make, or by the words it reads?

Run from the repository root::

    python docs/default-model/phrasing_check.py MODEL N STEPS OMEGA OUT.json
    python docs/default-model/phrasing_check.py soundctm/models/default/teacher 160 40 6 \
        docs/default-model/phrasing-check-teacher.json

Takes the first N SynthCaps test items (the prompts `soundctm eval model` uses) and generates
each twice with seed i for item i: once from its test caption (test-only templates and synonyms,
as the evaluation does) and once from a caption that states the same attributes in the train
split's words (``make_caption(attributes, "train", ...)`` with a random stream of its own, so no
training caption is copied). Everything but the wording is the same, so the difference in
SynthCaps attribute accuracy is what the unseen wording costs. Also counts the requested ->
detected event counts, the one attribute whose errors do not depend on the wording.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from soundctm.builtin.synthcaps import synth
from soundctm.builtin.synthcaps.captions import make_caption
from soundctm.builtin.synthcaps.detectors import attribute_accuracy, detect
from soundctm.engine.pipeline import Pipeline
from soundctm.eval.prompts import synthcaps_prompts


def train_worded(attributes: list[dict[str, str]]) -> list[str]:
    """Captions stating ``attributes`` in the train split's templates and synonyms."""
    return [
        make_caption(a, "train", synth.stable_rng(0, "rephrase", i, "caption"))
        for i, a in enumerate(attributes)
    ]


def count_confusion(
    attributes: list[dict[str, str]], audio: list[torch.Tensor], sample_rate: int
) -> dict[str, int]:
    """``{"requested -> detected": clips}`` over the items that state a count."""
    out: dict[str, int] = {}
    for want, clip in zip(attributes, audio, strict=True):
        if "count" in want:
            key = f"{want['count']} -> {detect(clip.numpy(), sample_rate)['count']}"
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def main(model: str, n: int, steps: int, omega: float) -> dict[str, object]:
    pipe = Pipeline.load(model)
    prompts = synthcaps_prompts(n, pipe.card.sample_rate, 3.0, split="test")
    plan = pipe.resolve(steps=steps, omega=omega)
    result: dict[str, object] = {"model": model, "n": n, "steps": steps, "omega": omega}
    for wording, captions in (
        ("test words (the evaluation)", prompts.captions),
        ("train words", train_worded(prompts.attributes)),
    ):
        start = time.perf_counter()
        gen = pipe.generate(captions, seeds=list(range(n)), **plan.arguments(), batch_size=16)
        acc = attribute_accuracy(prompts.attributes, gen.audio, gen.sample_rate)
        result[wording] = {
            "overall": acc["overall"],
            "per_attribute": acc["per_attribute"],
            "checks": acc["n"],
            "count_confusion": count_confusion(prompts.attributes, gen.audio, gen.sample_rate),
            "first_captions": captions[:4],
            "seconds": round(time.perf_counter() - start, 1),
        }
    return result


if __name__ == "__main__":
    model, n, steps, omega, out = sys.argv[1:6]
    report = main(model, int(n), int(steps), float(omega))
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v["overall"] for k, v in report.items() if isinstance(v, dict)}))
