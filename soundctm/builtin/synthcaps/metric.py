"""``synthcaps-attributes``: prompt following on SynthCaps, as a metric plugin.

The attributes each caption requests are read back from the generated audio by SynthCaps'
analytic detectors (:mod:`.detectors`); the result is the accuracy per attribute and overall,
with the chance level (1 / number of classes) beside each.
"""

from __future__ import annotations

import math
from typing import Any

from soundctm.eval.evalset import EvalSet
from soundctm.eval.plugins import Context, EmbedderSpec


class SynthCapsAttributes:
    """Prompt following on SynthCaps: the attributes each caption requests, read back from the
    generated audio by the analytic detectors; accuracy per attribute and overall, with the
    chance level (1 / number of classes) beside each."""

    name = "synthcaps-attributes"
    requires: tuple[str, ...] = ("attributes",)

    def embedders(self) -> list[EmbedderSpec]:
        return []

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.builtin.synthcaps.detectors import attribute_accuracy

        requested = [it.attributes or {} for it in evalset.items]
        acc = attribute_accuracy(requested, evalset.generated(), evalset.sample_rate)
        n_all = sum(acc["n"].values())
        chance = (
            sum(acc["chance"][k] * acc["n"][k] for k in acc["n"]) / n_all if n_all else math.nan
        )
        return {
            "value": float(acc["overall"]),
            "overall": float(acc["overall"]),
            "chance_overall": float(chance),
            "per_attribute": acc["per_attribute"],
            "chance": acc["chance"],
            "checks": acc["n"],
            "n": evalset.n,
        }


__all__ = ["SynthCapsAttributes"]
