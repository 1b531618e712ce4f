"""``soundctm eval``: metrics and reports for a folder of audio, a model, or two models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

import typer
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from soundctm.cli.common import console, err_console, handle_errors
from soundctm.config import MAX_SEED, CommandSettings, load_settings
from soundctm.errors import InvalidArgumentError


def _split(value: Any) -> Any:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if any(not p for p in parts):
            raise ValueError("give a comma-separated list without empty entries, e.g. 1,2,4")
        return parts
    return value


class EvalSettings(CommandSettings):
    """Settings of ``soundctm eval`` (TOML table ``[eval]``, env ``SOUNDCTM_EVAL_*``)."""

    command: ClassVar[str] = "eval"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_EVAL_", extra="forbid")

    reference: Path | None = None
    captions: Path | None = None
    model: Path | None = None
    compare: Path | None = None
    prompts: str = "synthcaps"
    num: int | None = Field(default=None, ge=1)
    steps: list[int] | None = None
    compare_steps: int | None = Field(default=None, ge=1)
    gamma: list[float] | None = None
    nu: float | None = Field(default=None, ge=0.0)
    omega: float | None = Field(default=None, ge=0.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    seconds: float | None = Field(default=None, gt=0.0)
    preset: str | None = None
    metrics: list[str] | None = None
    embedder: str = "mel-stats"
    classifier: str | None = None
    fad_inf: bool = False
    content: bool = True
    sample_rate: int | None = Field(default=None, ge=1000)
    out: Path = Path("outputs/eval")
    cache_dir: Path | None = None
    cache: bool = True
    batch_size: int = Field(default=8, ge=1)
    device: str = "cpu"

    @field_validator("steps", "gamma", "metrics", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("steps")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(s < 1 for s in value)):
            raise ValueError("step counts must be whole numbers >= 1")
        return value

    @field_validator("gamma")
    @classmethod
    def _unit(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0.0 <= g <= 1.0 for g in value):
            raise ValueError("every gamma must be between 0 and 1")
        return value


@handle_errors
def eval_command(
    generated: Annotated[
        Path | None,
        typer.Argument(
            help="Folder of generated audio to evaluate (mode a). Leave out with --model.",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            "-r",
            help="Reference audio folder, paired by file name.",
            show_default=False,
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(help="Captions CSV (file_name,caption) for mode a.", show_default=False),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint to generate with (mode b; model A in mode c).",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option(
            help="A second checkpoint to compare with --model (mode c).", show_default=False
        ),
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option(
            help="Prompts CSV (caption[,file_name]) or text file, or 'synthcaps' (default).",
            show_default=False,
        ),
    ] = None,
    num: Annotated[
        int | None,
        typer.Option("--num", "-n", help="Number of prompts (synthcaps: 16).", show_default=False),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="Step counts, e.g. 1,2,4,16 (mode c: model A's).", show_default=False),
    ] = None,
    compare_steps: Annotated[
        int | None,
        typer.Option(help="Steps of the --compare model (default: its own).", show_default=False),
    ] = None,
    gamma: Annotated[
        str | None,
        typer.Option(help="CTM gamma value(s), e.g. 0 or 0,1 (default 0).", show_default=False),
    ] = None,
    nu: Annotated[float | None, typer.Option(help="nu (students).", show_default=False)] = None,
    omega: Annotated[float | None, typer.Option(help="omega.", show_default=False)] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of prompt 0; prompt i uses seed + i.", show_default=False),
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="Clip length (default: the model's).", show_default=False)
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Protocol: audioldm or stable-audio (needs weight files).", show_default=False
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Metrics, e.g. fd,synthcaps-attributes (default: every one the input allows).",
            show_default=False,
        ),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(help="Embedder of fd (default: mel-stats, not VGGish).", show_default=False),
    ] = None,
    classifier: Annotated[
        str | None, typer.Option(help="Classifier of kl and is.", show_default=False)
    ] = None,
    fad_inf: Annotated[
        bool | None, typer.Option("--fad-inf", help="Add FAD-infinity to fd.", show_default=False)
    ] = None,
    content: Annotated[
        bool | None,
        typer.Option(
            "--content/--no-content",
            help="Content preservation, gamma 0 vs 1 (mode b, students; default on).",
            show_default=False,
        ),
    ] = None,
    sample_rate: Annotated[
        int | None,
        typer.Option(help="Resample every folder to this rate (mode a).", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Report folder (default: outputs/eval).", show_default=False
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Embedding cache (default: ~/.cache/soundctm/embeddings).", show_default=False
        ),
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache", help="Cache embeddings (default on).", show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Clips generated at once (default 8).", show_default=False)
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="torch device (default: cpu).", show_default=False)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML file whose \\[eval] table sets defaults.", show_default=False
        ),
    ] = None,
) -> None:
    """Evaluate generated audio: FD/FAD, KL, IS, CLAP, SynthCaps attributes, content
    preservation; writes results.json, report.md and PNG figures."""
    s = load_settings(
        EvalSettings,
        config,
        reference=reference,
        captions=captions,
        model=model,
        compare=compare,
        prompts=prompts,
        num=num,
        steps=steps,
        compare_steps=compare_steps,
        gamma=gamma,
        nu=nu,
        omega=omega,
        seed=seed,
        seconds=seconds,
        preset=preset,
        metrics=metrics,
        embedder=embedder,
        classifier=classifier,
        fad_inf=fad_inf,
        content=content,
        sample_rate=sample_rate,
        out=out,
        cache_dir=cache_dir,
        cache=cache,
        batch_size=batch_size,
        device=device,
    )
    common = {
        "metrics": s.metrics,
        "preset": s.preset,
        "embedder": s.embedder,
        "classifier": s.classifier,
        "fad_inf": s.fad_inf,
        "out": s.out,
        "cache_dir": s.cache_dir,
        "use_cache": s.cache,
        "device": s.device,
    }
    from soundctm.cli.progress import EvalProgress
    from soundctm.eval import runner

    with EvalProgress(err_console) as bar:
        if s.model is None:
            if generated is None:
                raise InvalidArgumentError(
                    "nothing to evaluate; give a folder of generated audio, or --model DIR "
                    "(with --prompts FILE or synthcaps)"
                )
            if s.compare is not None:
                raise InvalidArgumentError("--compare needs --model (the model to compare with)")
            results = runner.evaluate_folders(
                generated,
                reference=s.reference,
                captions=s.captions,
                sample_rate=s.sample_rate,
                callback=bar,
                **common,
            )
        else:
            if generated is not None:
                raise InvalidArgumentError(
                    "give either a folder of generated audio or --model, not both"
                )
            if s.captions is not None:
                raise InvalidArgumentError(
                    "--captions is for a folder of audio; with --model, captions come from "
                    "--prompts"
                )
            shared = {
                "prompts": s.prompts,
                "n": s.num,
                "nu": s.nu,
                "omega": s.omega,
                "seed": s.seed,
                "seconds": s.seconds,
                "reference": s.reference,
                "batch_size": s.batch_size,
                "callback": bar,
                **common,
            }
            if s.compare is None:
                results = runner.evaluate_model(
                    s.model,
                    steps=s.steps or [1, 2, 4, 16],
                    gammas=s.gamma or [0.0],
                    content=s.content,
                    **shared,
                )
            else:
                if s.steps is not None and len(s.steps) != 1:
                    raise InvalidArgumentError("with --compare, --steps takes one step count")
                if s.gamma is not None and len(s.gamma) != 1:
                    raise InvalidArgumentError("with --compare, --gamma takes one value")
                results = runner.compare_models(
                    s.model,
                    s.compare,
                    steps_a=s.steps[0] if s.steps else None,
                    steps_b=s.compare_steps,
                    gamma=s.gamma[0] if s.gamma else None,
                    **shared,
                )
    _summary(results, s.out)


def _summary(results: dict[str, Any], out: Path) -> None:
    from soundctm.eval.report import headline

    for run in results["runs"]:
        parts = [f"{k} {headline(k, v)}" for k, v in run["metrics"].items()]
        console.print(f"{run['label']}: " + ", ".join(parts), highlight=False, soft_wrap=True)
    cp = results.get("content_preservation")
    if cp:
        for r in cp["rows"]:
            console.print(
                f"content preservation, {r['steps']} steps, gamma {r['gamma']:g}: {r['value']:.3f}",
                highlight=False,
            )
    console.print(
        f"N = {results['n']}; report: {out / 'report.md'}", highlight=False, soft_wrap=True
    )


__all__ = ["EvalSettings", "eval_command"]
