"""Choosing the metrics of a run: names (or a preset) to metric plugins, checked before any work.

Without names, every metric of :data:`DEFAULT_METRICS` that the input and the embedder allow
runs, the others are listed as skipped with the reason; a metric named explicitly that cannot
run stops the run with one line saying what it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from soundctm.errors import DataError, InvalidArgumentError
from soundctm.eval.context import EvalContext
from soundctm.eval.evalset import EvalSet
from soundctm.eval.results import MetricValues, jsonable
from soundctm.events import Message, emit

#: Metrics tried when none are named: each runs only if the data and the embedder allow it.
DEFAULT_METRICS: tuple[str, ...] = ("fd", "kl", "is", "clap", "synthcaps-attributes")
#: What a metric's ``requires`` entry asks of the input, in words.
WANTS = {
    "reference": "reference audio (pass --reference DIR, or evaluate a model on synthcaps)",
    "captions": "captions (pass --captions CSV, or .txt files beside the audio)",
    "attributes": "SynthCaps attributes (a synthcaps.jsonl manifest, or --prompts synthcaps)",
}
CLASSIFIER_METRICS = ("kl", "is")
TEXT_METRICS = ("clap",)
MetricSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class MetricPlan:
    """The metrics of a run (name, params) and whether they were named explicitly."""

    specs: list[MetricSpec]
    explicit: bool
    preset: str | None = None


@dataclass(frozen=True)
class Selection:
    """Metric instances to run, and ``{name: reason}`` of the default ones that cannot."""

    metrics: list[Any]
    skipped: dict[str, str]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.metrics]


def metric_specs(
    metrics: Sequence[str] | None,
    *,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
) -> MetricPlan:
    """The metrics of a run. A preset fixes its own metrics (``metrics`` must then be empty).
    Otherwise ``embedder`` is the embedder of ``fd`` and (without ``classifier``) the
    classifier of ``kl``/``is`` and the CLAP model of ``clap``."""
    if preset is not None:
        from soundctm.eval.presets import get_preset

        if metrics:
            raise InvalidArgumentError("--preset fixes the metrics; drop --metrics or --preset")
        specs = [(m, dict(params)) for m, params in get_preset(preset).metrics]
        if fad_inf:
            specs = [(m, {**pr, "fad_inf": True} if m == "fd" else pr) for m, pr in specs]
        return MetricPlan(specs, True, preset)
    names = list(metrics) if metrics else list(DEFAULT_METRICS)
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"a metric is named twice in {','.join(names)}")
    specs = []
    for name in names:
        params: dict[str, Any] = {}
        if name == "fd":
            params = {"embedder": embedder, "fad_inf": fad_inf}
        elif name in CLASSIFIER_METRICS:
            params = {"classifier": classifier or embedder}
        elif name in TEXT_METRICS:
            params = {"embedder": embedder}
        specs.append((name, params))
    return MetricPlan(specs, bool(metrics))


def build_metrics(specs: Sequence[MetricSpec], registry: Any | None = None) -> list[Any]:
    """Instances of the metric plugins (one-line errors for unknown names or bad params)."""
    from soundctm.plugins.registry import get_registry

    registry = registry or get_registry()
    out = []
    for name, params in specs:
        metric = registry.build("metric", name, **params)
        if not callable(getattr(metric, "compute", None)):
            raise InvalidArgumentError(
                f"metric {name!r} is not a metric plugin (it has no compute method); "
                "update the plugin that provides it"
            )
        out.append(metric)
    return out


def _unusable(name: str, embedders: list[Any]) -> tuple[str, str] | None:
    """(error, skip reason) when the embedders of metric ``name`` lack what it needs."""
    from soundctm.eval.embedders import has_logits, has_text

    names = ", ".join(e.name for e in embedders)
    if name in CLASSIFIER_METRICS and not all(has_logits(e) for e in embedders):
        return (
            f"metric {name!r} needs a classifier with label logits; {names} has none "
            "(pass --classifier NAME)",
            f"{embedders[0].name} is not a classifier",
        )
    if name in TEXT_METRICS and not all(has_text(e) for e in embedders):
        return (
            f"metric {name!r} needs an embedder with a text tower; {names} has none",
            f"{embedders[0].name} has no text tower",
        )
    return None


def _build(context: EvalContext, name: str, params: dict[str, Any], preset: str | None) -> Any:
    """The embedder ``name``; under a preset, a weight-file error names the preset too."""
    from soundctm.eval.weights import WeightsFileError, WeightsNotFoundError

    try:
        return context.embedder(name, **params)
    except (WeightsNotFoundError, WeightsFileError) as exc:
        if preset is None:
            raise
        raise type(exc)(f"preset {preset!r}: {exc}") from exc


def prepare_metrics(
    plan: MetricPlan, available: set[str], context: EvalContext, *, allow_none: bool = False
) -> Selection:
    """Build the metrics and their embedders before any work (so a missing weight file stops
    the run at once); ``available`` is what the input offers (see :data:`WANTS`)."""
    if plan.preset is not None:
        from soundctm.eval.presets import check_preset, get_preset

        check_preset(get_preset(plan.preset), context.registry)
    chosen: list[Any] = []
    skipped: dict[str, str] = {}
    for name, params in plan.specs:
        factory = context.registry.load("metric", name)
        missing = [r for r in getattr(factory, "requires", ()) if r not in available]
        if missing:
            if plan.explicit:
                raise DataError(f"metric {name!r} needs {WANTS.get(missing[0], missing[0])}")
            skipped[name] = f"needs {missing[0]}"
            continue
        (metric,) = build_metrics([(name, params)], context.registry)
        problem = _unusable(
            name, [_build(context, e, p, plan.preset) for e, p in metric.embedders()]
        )
        if problem is not None:
            if plan.explicit:
                raise InvalidArgumentError(problem[0])
            skipped[name] = problem[1]
            continue
        chosen.append(metric)
    if not chosen and not allow_none:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "none selected"
        raise DataError(f"no metric can run on this input ({reasons})")
    return Selection(chosen, skipped)


def run_metrics(
    evalset: EvalSet, metrics: Sequence[Any], context: EvalContext
) -> dict[str, MetricValues]:
    """``{metric name: values}`` of every metric on ``evalset``."""
    out: dict[str, MetricValues] = {}
    for metric in metrics:
        emit(context.callback, Message(f"{metric.name} on {evalset.label} (N={evalset.n})"))
        out[metric.name] = jsonable(metric.compute(evalset, context))
    return out


__all__ = [
    "DEFAULT_METRICS",
    "WANTS",
    "MetricPlan",
    "MetricSpec",
    "Selection",
    "build_metrics",
    "metric_specs",
    "prepare_metrics",
    "run_metrics",
]
