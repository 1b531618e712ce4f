"""The evaluation runner: three modes as library functions that emit events and return results.

- :func:`evaluate_folders`: a folder of generated audio, optionally against a reference folder
  (paired by file name) and a captions CSV;
- :func:`evaluate_model`: generate with a model from a prompts file or SynthCaps at several step
  counts and gammas, evaluate each setting, and measure content preservation (1-step vs N-step
  output of the same prompt and seed, at gamma = 0 and gamma = 1);
- :func:`compare_models`: two models on the same prompts and seeds (e.g. a teacher at 40 steps
  and its student at 1 step).

Each returns an :class:`~soundctm.eval.results.EvalResults`; with ``out`` it is also written as
``results.json``, ``report.md`` and PNG figures (:mod:`soundctm.eval.report`). The pieces live
by concern: :mod:`.cache` (embeddings on disk by audio content, embedder and weight checksum),
:mod:`.context` (what metrics use), :mod:`.selection` (which metrics run), :mod:`.prompts`,
:mod:`.generation` and :mod:`.results`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundctm.errors import DataError, InvalidArgumentError
from soundctm.eval.context import EvalContext, make_context
from soundctm.eval.evalset import EvalSet, load_folders
from soundctm.eval.generation import (
    AUDIO_FOLDER,
    GAMMA_SOLVER,
    Setting,
    at,
    check_steps,
    generate,
    load_pipeline,
    make_evalset,
    model_info,
    resolve,
    sampling,
)
from soundctm.eval.prompts import PromptSet, prompt_set
from soundctm.eval.results import (
    ContentPreservationResult,
    ContentRow,
    EvalResults,
    ExampleRow,
    Examples,
    Generation,
    MetricValues,
    RunResult,
    jsonable,
)
from soundctm.eval.selection import MetricPlan, metric_specs, prepare_metrics, run_metrics
from soundctm.events import Callback, EvalStage, Message, emit

#: Step counts of ``evaluate_model`` when none are given.
DEFAULT_STEPS: tuple[int, ...] = (1, 2, 4, 16)
#: The step count content preservation uses when only 1 step is evaluated.
CONTENT_STEPS = 4
#: Prompts and settings in ``spectrograms.png``.
EXAMPLE_ROWS, EXAMPLE_COLUMNS = 4, 8

if TYPE_CHECKING:
    from soundctm.engine.plan import SamplingPlan


def _finish(
    results: EvalResults, context: EvalContext, examples: Examples, out: str | Path | None
) -> EvalResults:
    """Add what the context used, and write the report when ``out`` is given."""
    results = replace(results, embedders=context.embedder_info(), cache=context.cache_info())
    if out is None:
        return results
    from soundctm.eval.report import write_report

    emit(context.callback, EvalStage("writing the report"))
    return replace(results, files=write_report(results, Path(out), examples=examples))


def _preset_rate(preset: str) -> int:
    from soundctm.eval.presets import get_preset

    return int(get_preset(preset).sample_rate)


def _preset_seconds(preset: str | None, seconds: float | None) -> float | None:
    """``seconds``, else the preset's clip length (None: the model's own)."""
    if seconds is not None or preset is None:
        return seconds
    from soundctm.eval.presets import get_preset

    return get_preset(preset).seconds


def _at_preset_rate(evalset: EvalSet, preset: str | None) -> EvalSet:
    """The evaluation set at the preset's rate (the protocol evaluates there)."""
    return evalset if preset is None else evalset.at_rate(_preset_rate(preset))


def _check_n(n: int | None) -> None:
    if n is not None and n < 1:
        raise InvalidArgumentError(f"n must be at least 1, got {n}")


def _context_and_plan(
    cache_dir: str | Path | None,
    use_cache: bool,
    registry: Any | None,
    device: str,
    callback: Callback | None,
    metrics: Sequence[str] | None,
    **choice: Any,
) -> tuple[EvalContext, MetricPlan]:
    context = make_context(
        cache_dir, use_cache=use_cache, registry=registry, device=device, callback=callback
    )
    return context, metric_specs(metrics, **choice)


# ---------------------------------------------------------------------- mode a: folders
def evaluate_folders(
    generated: str | Path,
    *,
    reference: str | Path | None = None,
    captions: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
    sample_rate: int | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    callback: Callback | None = None,
    registry: Any | None = None,
) -> EvalResults:
    """Evaluate a folder of generated audio (mode a); see :func:`load_folders` for pairing."""
    context, plan = _context_and_plan(
        cache_dir, use_cache, registry, device, callback, metrics,
        preset=preset, embedder=embedder, classifier=classifier, fad_inf=fad_inf,
    )  # fmt: skip
    emit(callback, EvalStage("reading audio"))
    if sample_rate is None and preset is not None:
        sample_rate = _preset_rate(preset)
    evalset = load_folders(
        generated, reference=reference, captions=captions, sample_rate=sample_rate
    )
    chosen = prepare_metrics(plan, evalset.available(), context)
    values = run_metrics(evalset, chosen.metrics, context)
    results = EvalResults(
        mode="folders",
        n=evalset.n,
        sample_rate=evalset.sample_rate,
        preset=preset,
        inputs=evalset.info,
        metrics=chosen.names,
        skipped=chosen.skipped,
        runs=[RunResult(evalset.label, evalset.n, values)],
        embedders={},
        cache=context.cache_info(),
    )
    return _finish(results, context, _folder_examples(evalset), out)


def _folder_examples(evalset: EvalSet) -> Examples:
    ref = evalset.has_reference
    rows = [
        ExampleRow(it.caption or it.key, [it.audio] + ([it.reference] if ref else []))  # type: ignore[list-item]
        for it in evalset.items[:EXAMPLE_ROWS]
    ]
    return Examples(evalset.sample_rate, ["generated"] + (["reference"] if ref else []), rows)


# ---------------------------------------------------------------------- mode b: a model
def _content_settings(
    steps: Sequence[int], student: bool, solver: str, content: bool
) -> list[Setting]:
    """The N-step settings compared with 1 step: every N > 1 at gamma 0 and gamma 1."""
    if not (content and student):
        return []
    cp_steps = sorted({s for s in steps if s > 1})
    if solver != GAMMA_SOLVER:
        return []
    return [Setting(s, g) for s in cp_steps or [CONTENT_STEPS] for g in (0.0, 1.0)]


def evaluate_model(
    model: str | Path,
    *,
    prompts: str | Path = "synthcaps",
    n: int | None = None,
    steps: Sequence[int] = DEFAULT_STEPS,
    gammas: Sequence[float] = (0.0,),
    nu: float | None = None,
    omega: float | None = None,
    seed: int = 0,
    seconds: float | None = None,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
    content: bool = True,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
    callback: Callback | None = None,
    registry: Any | None = None,
) -> EvalResults:
    """Generate with ``model`` at every (step count, gamma) and evaluate each setting (mode b).

    Prompt ``i`` uses seed ``seed + i`` in every setting, so settings differ only in sampling.
    With ``content=True`` and a CTM student, every step count above 1 is also generated at
    gamma = 0 and gamma = 1 and compared with the 1-step output (content preservation)."""
    steps = [int(s) for s in steps]
    gammas = [float(g) for g in gammas]
    check_steps(steps, gammas)
    _check_n(n)
    context, plan = _context_and_plan(
        cache_dir, use_cache, registry, device, callback, metrics,
        preset=preset, embedder=embedder, classifier=classifier, fad_inf=fad_inf,
    )  # fmt: skip
    emit(callback, EvalStage("loading the model"))
    pipe = load_pipeline(model, device, registry)
    base = resolve(pipe, nu=nu, omega=omega, seconds=_preset_seconds(preset, seconds))
    gamma_solver = pipe.is_student and base.solver == GAMMA_SOLVER
    if not gamma_solver:
        if any(g != 0.0 for g in gammas):
            raise InvalidArgumentError(
                "gamma applies to CTM students with the gamma solver; drop --gamma"
            )
        gammas = [0.0]
    rate = int(pipe.card.sample_rate)
    ps = prompt_set(prompts, n, reference, rate, base.seconds, context.registry)
    content_runs = content and gamma_solver
    chosen = prepare_metrics(plan, ps.available(), context, allow_none=content_runs)
    seeds = [seed + i for i in range(len(ps.keys))]

    main = list(dict.fromkeys(Setting(s, g if s > 1 else 0.0) for s in steps for g in gammas))
    cp = _content_settings(steps, pipe.is_student, base.solver, content)
    one = Setting(1, 0.0)
    todo = list(dict.fromkeys(main + ([one] if cp else []) + cp))
    audio_dir = Path(out) / AUDIO_FOLDER if out is not None else None
    generated = {
        st: generate(
            pipe,
            ps,
            seeds,
            at(base, st),
            st.label,
            batch_size=batch_size,
            callback=callback,
            audio_dir=audio_dir,
        )
        for st in todo
    }
    runs = []
    for st in main:
        es = _at_preset_rate(make_evalset(ps, generated[st], rate, st.label, ps.references), preset)
        values = run_metrics(es, chosen.metrics, context)
        runs.append(RunResult(st.label, es.n, values, sampling(at(base, st), "model")))
    rows = []
    for st in cp:
        es = make_evalset(ps, generated[st], rate, st.label, generated[one])
        emit(callback, Message(f"content preservation: {st.label} vs 1 step"))
        rows.append(ContentRow(st.steps, st.gamma, _content(es, context)))
    results = EvalResults(
        mode="model",
        n=len(ps.keys),
        sample_rate=_preset_rate(preset) if preset else rate,
        preset=preset,
        metrics=chosen.names,
        skipped=chosen.skipped,
        runs=runs,
        embedders={},
        cache=context.cache_info(),
        generation=Generation(
            seed, base.seconds, ps.description, {"model": model_info(pipe, model)}
        ),
        content_preservation=ContentPreservationResult(rows) if rows else None,
    )
    return _finish(results, context, _setting_examples(ps, generated, todo, rate), out)


def _content(evalset: EvalSet, context: EvalContext) -> MetricValues:
    from soundctm.eval.plugins import ContentPreservation

    return jsonable(ContentPreservation().compute(evalset, context))


def _setting_examples(
    ps: PromptSet,
    generated: dict[Setting, dict[str, np.ndarray]],
    settings: list[Setting],
    sample_rate: int,
) -> Examples:
    order = sorted(settings, key=lambda s: (s.steps > 1, s.gamma, s.steps))[:EXAMPLE_COLUMNS]
    rows = [
        ExampleRow(cap, [generated[s][k] for s in order])
        for k, cap in list(zip(ps.keys, ps.captions, strict=True))[:EXAMPLE_ROWS]
    ]
    return Examples(sample_rate, [s.label for s in order], rows)


# ---------------------------------------------------------------------- mode c: two models
def compare_models(
    model_a: str | Path,
    model_b: str | Path,
    *,
    prompts: str | Path = "synthcaps",
    n: int | None = None,
    steps_a: int | None = None,
    steps_b: int | None = None,
    gamma: float | None = None,
    nu: float | None = None,
    omega: float | None = None,
    seed: int = 0,
    seconds: float | None = None,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    preset: str | None = None,
    embedder: str = "mel-stats",
    classifier: str | None = None,
    fad_inf: bool = False,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
    callback: Callback | None = None,
    registry: Any | None = None,
) -> EvalResults:
    """Two models on the same prompts and seeds (mode c), each at its own step count (default:
    its card's); also how similar B's output is to A's, clip by clip."""
    _check_n(n)
    context, plan = _context_and_plan(
        cache_dir, use_cache, registry, device, callback, metrics,
        preset=preset, embedder=embedder, classifier=classifier, fad_inf=fad_inf,
    )  # fmt: skip
    emit(callback, EvalStage("loading the models"))
    pipes = [load_pipeline(m, device, registry) for m in (model_a, model_b)]
    rate_a, rate_b = (int(p.card.sample_rate) for p in pipes)
    if rate_a != rate_b:
        raise DataError(
            f"the two models generate at different sample rates ({rate_a} and {rate_b} Hz); "
            "compare models of one sample rate, or evaluate each on its own"
        )
    plans: list[SamplingPlan] = []
    for pipe, st in zip(pipes, (steps_a, steps_b), strict=True):
        student = pipe.is_student
        plans.append(
            resolve(
                pipe,
                steps=st,
                gamma=gamma if student else None,
                nu=nu if student else None,
                omega=omega,
                seconds=_preset_seconds(preset, seconds),
            )
        )
    secs = min(p.seconds for p in plans)
    plans = [replace(p, seconds=secs) for p in plans]
    ps = prompt_set(prompts, n, reference, rate_a, secs, context.registry)
    chosen = prepare_metrics(plan, ps.available(), context)
    seeds = [seed + i for i in range(len(ps.keys))]
    audio_dir = Path(out) / AUDIO_FOLDER if out is not None else None
    tags = ("A", "B")
    labels = [
        f"{tag}: {p.card.kind} steps={pl.steps}"
        for tag, p, pl in zip(tags, pipes, plans, strict=True)
    ]
    outs = [
        generate(
            pipe,
            ps,
            seeds,
            pl,
            lab,
            batch_size=batch_size,
            callback=callback,
            audio_dir=audio_dir,
        )
        for pipe, pl, lab in zip(pipes, plans, labels, strict=True)
    ]
    runs = []
    for tag, lab, pl, audio in zip(tags, labels, plans, outs, strict=True):
        es = _at_preset_rate(make_evalset(ps, audio, rate_a, lab, ps.references), preset)
        runs.append(
            RunResult(lab, es.n, run_metrics(es, chosen.metrics, context), sampling(pl, tag))
        )
    paired = _content(make_evalset(ps, outs[1], rate_a, "B vs A", outs[0]), context)
    models = {
        tag: model_info(p, m) for tag, p, m in zip(tags, pipes, (model_a, model_b), strict=True)
    }
    results = EvalResults(
        mode="compare",
        n=len(ps.keys),
        sample_rate=_preset_rate(preset) if preset else rate_a,
        preset=preset,
        metrics=chosen.names,
        skipped=chosen.skipped,
        runs=runs,
        embedders={},
        cache=context.cache_info(),
        generation=Generation(seed, secs, ps.description, models),
        b_vs_a=paired,
    )
    examples = Examples(
        rate_a,
        labels,
        [
            ExampleRow(cap, [outs[0][k], outs[1][k]])
            for k, cap in list(zip(ps.keys, ps.captions, strict=True))[:EXAMPLE_ROWS]
        ],
    )
    return _finish(results, context, examples, out)


__all__ = ["DEFAULT_STEPS", "compare_models", "evaluate_folders", "evaluate_model"]
