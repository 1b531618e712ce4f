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

from soundctm.cli.common import console, err_console, handle_errors
from soundctm.cli.options import (
    BatchSize,
    Command,
    Device,
    Group,
    Nu,
    Omega,
    Seconds,
    Seed,
    config_option,
    model_option,
    out_option,
    with_options,
)
from soundctm.config import EvalSettings, load_settings
from soundctm.errors import InvalidArgumentError


def _opt(*names: str, text: str) -> Any:
    return typer.Option(*names, help=text, show_default=False)


Reference = Annotated[
    Path | None, _opt("--reference", "-r", text="Reference audio folder, paired by file name.")
]
#: Options of every ``eval`` sub-command: the protocol, the report and where it runs.
REPORT_OPTIONS: dict[str, Any] = {
    "preset": Annotated[
        str | None, _opt("--preset", text="Protocol: audioldm or stable-audio (weight files).")
    ],
    "metrics": Annotated[
        str | None,
        _opt("--metrics", text="Metrics, e.g. fd,synthcaps-attributes (default: all possible)."),
    ],
    "embedder": Annotated[
        str | None, _opt("--embedder", text="Embedder of fd (default: mel-stats, not VGGish).")
    ],
    "classifier": Annotated[str | None, _opt("--classifier", text="Classifier of kl and is.")],
    "weights": Annotated[
        list[str] | None,
        _opt("--weights", text="NAME=PATH: the weight file of embedder NAME (repeatable)."),
    ],
    "fad_inf": Annotated[bool | None, _opt("--fad-inf", text="Add FAD-infinity to fd.")],
    "out": out_option("outputs/eval", "Report folder"),
    "cache_dir": Annotated[
        Path | None,
        _opt("--cache-dir", text="Embedding cache (default: ~/.cache/soundctm/embeddings)."),
    ],
    "cache": Annotated[
        bool | None, _opt("--cache/--no-cache", text="Cache embeddings (default on).")
    ],
    "device": Device,
    "config": config_option("eval"),
}
#: Options of the sub-commands that generate (``model``, ``compare``).
GENERATION_OPTIONS: dict[str, Any] = {
    "prompts": Annotated[
        str | None,
        _opt("--prompts", text="Prompts CSV (caption[,file_name]) or text file, or 'synthcaps'."),
    ],
    "num": Annotated[int | None, _opt("--num", "-n", text="Number of prompts (synthcaps: 16).")],
    "nu": Nu,
    "omega": Omega,
    "seed": Seed,
    "seconds": Seconds,
    "reference": Reference,
    "batch_size": BatchSize,
}


class EvalGroup(Group):
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


def _settings(flags: dict[str, Any], **own: Any) -> EvalSettings:
    shared = dict(flags)
    shared.pop("weights", None)
    return load_settings(EvalSettings, shared.pop("config"), **shared, **own)


def weight_flags(values: list[str] | None) -> dict[str, str]:
    """``--weights NAME=PATH`` values as ``{variable: path}`` for
    :func:`soundctm.eval.weights.weight_paths` (NAME: vggish, passt, clap, openl3)."""
    from soundctm.eval.presets import WEIGHTS

    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not path.strip():
            raise InvalidArgumentError(f"--weights takes NAME=PATH, got {value!r}")
        if name.strip() not in WEIGHTS:
            raise InvalidArgumentError(
                f"--weights: unknown embedder {name!r}; use one of {', '.join(sorted(WEIGHTS))}"
            )
        out[WEIGHTS[name.strip()].env] = path.strip()
    return out


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


@with_options(reference=Reference, **REPORT_OPTIONS)
def folder(
    generated: Annotated[
        Path | None, typer.Argument(help="Folder of generated audio.", show_default=False)
    ] = None,
    captions: Annotated[
        Path | None, _opt("--captions", text="Captions CSV (file_name,caption).")
    ] = None,
    sample_rate: Annotated[
        int | None, _opt("--sample-rate", text="Resample every folder to this rate.")
    ] = None,
    **flags: Any,
) -> None:
    """Evaluate a folder of generated audio, optionally against reference audio and captions."""
    s = _settings(flags, captions=captions, sample_rate=sample_rate)
    if generated is None:
        raise InvalidArgumentError(
            "nothing to evaluate; give a folder of generated audio, or --model DIR "
            "(with --prompts FILE or synthcaps)"
        )
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval.runner import evaluate_folders
    from soundctm.eval.weights import weight_paths

    with EvalProgress(err_console) as bar, weight_paths(weight_flags(flags.get("weights"))):
        results = evaluate_folders(
            generated, reference=s.reference, captions=s.captions, sample_rate=s.sample_rate,
            callback=bar, **_common(s),
        )  # fmt: skip
    _summary(results, s.out)


@with_options(**GENERATION_OPTIONS, **REPORT_OPTIONS)
def model(
    model: model_option(
        "Checkpoint to generate with (default: the packaged default model)."
    ) = None,  # type: ignore[valid-type]
    steps: Annotated[str | None, _opt("--steps", text="Step counts, e.g. 1,2,4,16.")] = None,
    gamma: Annotated[
        str | None, _opt("--gamma", text="CTM gamma value(s), e.g. 0 or 0,1 (default 0).")
    ] = None,
    content: Annotated[
        bool | None,
        _opt("--content/--no-content", text="Content preservation, gamma 0 vs 1 (default on)."),
    ] = None,
    **flags: Any,
) -> None:
    """Generate with a model at several step counts and gammas and evaluate each setting."""
    s = _settings(flags, model=model, steps=steps, gamma=gamma, content=content)
    from soundctm.cli.models import resolve_model
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval.runner import DEFAULT_STEPS, evaluate_model
    from soundctm.eval.weights import weight_paths

    with EvalProgress(err_console) as bar, weight_paths(weight_flags(flags.get("weights"))):
        results = evaluate_model(
            resolve_model(s.model), steps=s.steps or list(DEFAULT_STEPS),
            gammas=s.gamma or [0.0], content=s.content, callback=bar,
            **_generation(s), **_common(s),
        )  # fmt: skip
    _summary(results, s.out)


@with_options(**GENERATION_OPTIONS, **REPORT_OPTIONS)
def compare(
    model: model_option("Model A (e.g. a teacher).") = None,  # type: ignore[valid-type]
    compare: Annotated[
        Path | None, _opt("--compare", text="Model B, compared with --model.")
    ] = None,
    steps: Annotated[
        str | None, _opt("--steps", text="Steps of model A (default: its own).")
    ] = None,
    compare_steps: Annotated[
        int | None, _opt("--compare-steps", text="Steps of model B (default: its own).")
    ] = None,
    gamma: Annotated[str | None, _opt("--gamma", text="CTM gamma of the students.")] = None,
    **flags: Any,
) -> None:
    """Two models on the same prompts and seeds, each at its own step count."""
    s = _settings(
        flags, model=model, compare=compare, steps=steps, compare_steps=compare_steps, gamma=gamma
    )
    if s.model is None or s.compare is None:
        raise InvalidArgumentError("compare needs --model (model A) and --compare (model B)")
    if s.steps is not None and len(s.steps) != 1:
        raise InvalidArgumentError("with --compare, --steps takes one step count")
    if s.gamma is not None and len(s.gamma) != 1:
        raise InvalidArgumentError("with --compare, --gamma takes one value")
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval.runner import compare_models
    from soundctm.eval.weights import weight_paths

    with EvalProgress(err_console) as bar, weight_paths(weight_flags(flags.get("weights"))):
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
