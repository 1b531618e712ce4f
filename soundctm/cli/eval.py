"""``soundctm eval folder | model | compare``: metrics and reports for a folder of audio, a model,
or two models.

Each sub-command is a thin layer over :mod:`soundctm.eval.runner`. The command lines of the
single ``eval`` command keep working: without a sub-command, ``--compare`` selects ``compare``,
``--model`` selects ``model`` and anything else ``folder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from soundctm.cli.app import Command
from soundctm.cli.common import console, err_console, handle_errors
from soundctm.cli.options import BatchSize, Device, config_option, model_option
from soundctm.config import EvalSettings, load_settings
from soundctm.errors import InvalidArgumentError


def _opt(*names: str, text: str) -> Any:
    return typer.Option(*names, help=text, show_default=False)


Reference = Annotated[
    Path | None, _opt("--reference", "-r", text="Reference audio folder, paired by file name.")
]
Prompts = Annotated[
    str | None,
    _opt("--prompts", text="Prompts CSV (caption[,file_name]) or text file, or 'synthcaps'."),
]
Num = Annotated[int | None, _opt("--num", "-n", text="Number of prompts (synthcaps: 16).")]
Nu = Annotated[float | None, _opt("--nu", text="nu (students).")]
Omega = Annotated[float | None, _opt("--omega", text="omega.")]
Seed = Annotated[int | None, _opt("--seed", text="Seed of prompt 0; prompt i uses seed + i.")]
Seconds = Annotated[float | None, _opt("--seconds", text="Clip length (default: the model's).")]
Preset = Annotated[
    str | None, _opt("--preset", text="Protocol: audioldm or stable-audio (needs weight files).")
]
Metrics = Annotated[
    str | None,
    _opt(
        "--metrics", text="Metrics, e.g. fd,synthcaps-attributes (default: all the input allows)."
    ),
]
Embedder = Annotated[
    str | None, _opt("--embedder", text="Embedder of fd (default: mel-stats, not VGGish).")
]
Classifier = Annotated[str | None, _opt("--classifier", text="Classifier of kl and is.")]
FadInf = Annotated[bool | None, _opt("--fad-inf", text="Add FAD-infinity to fd.")]
Out = Annotated[Path | None, _opt("--out", "-o", text="Report folder (default: outputs/eval).")]
CacheDir = Annotated[
    Path | None,
    _opt("--cache-dir", text="Embedding cache (default: ~/.cache/soundctm/embeddings)."),
]
Cache = Annotated[bool | None, _opt("--cache/--no-cache", text="Cache embeddings (default on).")]
Config = config_option("eval")


class EvalGroup(TyperGroup):
    """The ``eval`` group; a command line without a sub-command is routed as before."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [_legacy_command(args), *args]
        return super().parse_args(ctx, args)


def _legacy_command(args: list[str]) -> str:
    if any(a == "--compare" or a.startswith("--compare=") for a in args):
        return "compare"
    if any(a in ("--model", "-m") or a.startswith(("--model=", "-m")) for a in args):
        return "model"
    return "folder"


eval_app = typer.Typer(
    cls=EvalGroup,
    name="eval",
    no_args_is_help=True,
    help="Evaluate generated audio: FD/FAD, KL, IS, CLAP, SynthCaps attributes, content "
    "preservation; writes results.json, report.md and PNG figures.",
)


def _settings(config: Path | None, **flags: Any) -> EvalSettings:
    return load_settings(EvalSettings, config, **flags)


def _common(s: EvalSettings) -> dict[str, Any]:
    from soundctm.engine.devices import resolve_device

    return {
        "metrics": s.metrics,
        "preset": s.preset,
        "embedder": s.embedder,
        "classifier": s.classifier,
        "fad_inf": s.fad_inf,
        "out": s.out,
        "cache_dir": s.cache_dir,
        "use_cache": s.cache,
        "device": str(resolve_device(s.device)),
    }


def _generation(s: EvalSettings) -> dict[str, Any]:
    return {
        "prompts": s.prompts,
        "n": s.num,
        "nu": s.nu,
        "omega": s.omega,
        "seed": s.seed,
        "seconds": s.seconds,
        "reference": s.reference,
        "batch_size": s.batch_size,
    }


def folder(
    generated: Annotated[
        Path | None, typer.Argument(help="Folder of generated audio.", show_default=False)
    ] = None,
    reference: Reference = None,
    captions: Annotated[
        Path | None, _opt("--captions", text="Captions CSV (file_name,caption).")
    ] = None,
    sample_rate: Annotated[
        int | None, _opt("--sample-rate", text="Resample every folder to this rate.")
    ] = None,
    preset: Preset = None,
    metrics: Metrics = None,
    embedder: Embedder = None,
    classifier: Classifier = None,
    fad_inf: FadInf = None,
    out: Out = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    device: Device = None,
    config: Config = None,
) -> None:
    """Evaluate a folder of generated audio, optionally against reference audio and captions."""
    s = _settings(
        config, reference=reference, captions=captions, sample_rate=sample_rate, preset=preset,
        metrics=metrics, embedder=embedder, classifier=classifier, fad_inf=fad_inf, out=out,
        cache_dir=cache_dir, cache=cache, device=device,
    )  # fmt: skip
    if generated is None:
        raise InvalidArgumentError(
            "nothing to evaluate; give a folder of generated audio, or --model DIR "
            "(with --prompts FILE or synthcaps)"
        )
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval.runner import evaluate_folders

    with EvalProgress(err_console) as bar:
        results = evaluate_folders(
            generated, reference=s.reference, captions=s.captions, sample_rate=s.sample_rate,
            callback=bar, **_common(s),
        )  # fmt: skip
    _summary(results, s.out)


def model(
    model: model_option(
        "Checkpoint to generate with (default: the packaged default model)."
    ) = None,  # type: ignore[valid-type]
    prompts: Prompts = None,
    num: Num = None,
    steps: Annotated[str | None, _opt("--steps", text="Step counts, e.g. 1,2,4,16.")] = None,
    gamma: Annotated[
        str | None, _opt("--gamma", text="CTM gamma value(s), e.g. 0 or 0,1 (default 0).")
    ] = None,
    nu: Nu = None,
    omega: Omega = None,
    seed: Seed = None,
    seconds: Seconds = None,
    reference: Reference = None,
    content: Annotated[
        bool | None,
        _opt("--content/--no-content", text="Content preservation, gamma 0 vs 1 (default on)."),
    ] = None,
    preset: Preset = None,
    metrics: Metrics = None,
    embedder: Embedder = None,
    classifier: Classifier = None,
    fad_inf: FadInf = None,
    out: Out = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    batch_size: BatchSize = None,
    device: Device = None,
    config: Config = None,
) -> None:
    """Generate with a model at several step counts and gammas and evaluate each setting."""
    s = _settings(
        config, model=model, prompts=prompts, num=num, steps=steps, gamma=gamma, nu=nu,
        omega=omega, seed=seed, seconds=seconds, reference=reference, content=content,
        preset=preset, metrics=metrics, embedder=embedder, classifier=classifier,
        fad_inf=fad_inf, out=out, cache_dir=cache_dir, cache=cache, batch_size=batch_size,
        device=device,
    )  # fmt: skip
    from soundctm.cli.models import resolve_model
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval.runner import DEFAULT_STEPS, evaluate_model

    with EvalProgress(err_console) as bar:
        results = evaluate_model(
            resolve_model(s.model), steps=s.steps or list(DEFAULT_STEPS),
            gammas=s.gamma or [0.0], content=s.content, callback=bar,
            **_generation(s), **_common(s),
        )  # fmt: skip
    _summary(results, s.out)


def compare(
    model: model_option("Model A (e.g. a teacher).") = None,  # type: ignore[valid-type]
    compare: Annotated[
        Path | None, _opt("--compare", text="Model B, compared with --model.")
    ] = None,
    prompts: Prompts = None,
    num: Num = None,
    steps: Annotated[
        str | None, _opt("--steps", text="Steps of model A (default: its own).")
    ] = None,
    compare_steps: Annotated[
        int | None, _opt("--compare-steps", text="Steps of model B (default: its own).")
    ] = None,
    gamma: Annotated[str | None, _opt("--gamma", text="CTM gamma of the students.")] = None,
    nu: Nu = None,
    omega: Omega = None,
    seed: Seed = None,
    seconds: Seconds = None,
    reference: Reference = None,
    preset: Preset = None,
    metrics: Metrics = None,
    embedder: Embedder = None,
    classifier: Classifier = None,
    fad_inf: FadInf = None,
    out: Out = None,
    cache_dir: CacheDir = None,
    cache: Cache = None,
    batch_size: BatchSize = None,
    device: Device = None,
    config: Config = None,
) -> None:
    """Two models on the same prompts and seeds, each at its own step count."""
    s = _settings(
        config, model=model, compare=compare, prompts=prompts, num=num, steps=steps,
        compare_steps=compare_steps, gamma=gamma, nu=nu, omega=omega, seed=seed,
        seconds=seconds, reference=reference, preset=preset, metrics=metrics,
        embedder=embedder, classifier=classifier, fad_inf=fad_inf, out=out,
        cache_dir=cache_dir, cache=cache, batch_size=batch_size, device=device,
    )  # fmt: skip
    if s.model is None or s.compare is None:
        raise InvalidArgumentError("compare needs --model (model A) and --compare (model B)")
    if s.steps is not None and len(s.steps) != 1:
        raise InvalidArgumentError("with --compare, --steps takes one step count")
    if s.gamma is not None and len(s.gamma) != 1:
        raise InvalidArgumentError("with --compare, --gamma takes one value")
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval.runner import compare_models

    with EvalProgress(err_console) as bar:
        results = compare_models(
            s.model, s.compare, steps_a=s.steps[0] if s.steps else None,
            steps_b=s.compare_steps, gamma=s.gamma[0] if s.gamma else None, callback=bar,
            **_generation(s), **_common(s),
        )  # fmt: skip
    _summary(results, s.out)


def _summary(results: Any, out: Path) -> None:
    from soundctm.eval.report import headline

    for run in results.runs:
        parts = [f"{k} {headline(k, v)}" for k, v in run.metrics.items()]
        console.print(f"{run.label}: " + ", ".join(parts), highlight=False, soft_wrap=True)
    cp = results.content_preservation
    for r in cp.rows if cp is not None else []:
        console.print(
            f"content preservation, {r.steps} steps, gamma {r.gamma:g}: {r.values['value']:.3f}",
            highlight=False,
        )
    console.print(f"N = {results.n}; report: {out / 'report.md'}", highlight=False, soft_wrap=True)


for _fn in (folder, model, compare):
    eval_app.command(name=_fn.__name__, cls=Command)(handle_errors(_fn))

__all__ = ["eval_app"]
