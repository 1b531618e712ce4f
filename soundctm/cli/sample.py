"""``soundctm sample``: generate sounds from text prompts."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from soundctm.cli.common import console, err_console
from soundctm.cli.models import resolve_model_source
from soundctm.cli.options import (
    BatchSize,
    Device,
    DtypeOption,
    Format,
    Gamma,
    NegativePrompt,
    Normalize,
    Nu,
    NumSamples,
    Omega,
    PromptsFile,
    Seconds,
    Seed,
    Solver,
    Steps,
    config_option,
    model_option,
    out_option,
)
from soundctm.config import SampleSettings, load_settings
from soundctm.errors import CheckpointError, InvalidArgumentError

Model = model_option()


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are not prompts.
    ``-`` reads standard input."""
    if str(path) == "-":
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read prompts from standard input: {exc}") from exc
        prompts = [ln.strip() for ln in text.splitlines()]
        prompts = [p for p in prompts if p and not p.startswith("#")]
        if not prompts:
            raise InvalidArgumentError("standard input has no prompts (one per line)")
        return prompts
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgumentError(f"prompts file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read prompts file {str(path)!r}: {exc}") from exc
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise InvalidArgumentError(f"prompts file {str(path)!r} has no prompts (one per line)")
    return prompts


def gather_prompts(prompts: list[str] | None, prompts_file: Path | None) -> list[str]:
    """The prompts given as arguments, then those of ``--prompts-file`` (``-``: stdin)."""
    all_prompts = list(prompts or [])
    for i, p in enumerate(all_prompts):
        if not p.strip():
            raise InvalidArgumentError(
                f'prompt {i + 1} is empty; describe the sound, e.g. "a dog barks twice"'
            )
    if prompts_file is not None:
        all_prompts += read_prompts_file(prompts_file)
    if not all_prompts:
        raise InvalidArgumentError(
            "no prompts given; pass one or more prompts or --prompts-file FILE"
        )
    return all_prompts


def sample(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(
            help='Text prompts, e.g. "a high-pitched beep repeating three times".',
            show_default=False,
        ),
    ] = None,
    model: Model = None,
    steps: Steps = None,
    gamma: Gamma = None,
    nu: Nu = None,
    omega: Omega = None,
    solver: Solver = None,
    seed: Seed = None,
    num_samples: NumSamples = None,
    seconds: Seconds = None,
    prompts_file: PromptsFile = None,
    out: out_option("outputs") = None,  # type: ignore[valid-type]
    batch_size: BatchSize = None,
    device: Device = None,
    dtype: DtypeOption = None,
    normalize: Normalize = None,
    audio_format: Format = None,
    negative_prompt: NegativePrompt = None,
    teacher: Annotated[
        bool,
        typer.Option(
            "--teacher",
            help="Sample the teacher kept beside a student (distill --keep-teacher).",
        ),
    ] = False,
    config: config_option("sample") = None,  # type: ignore[valid-type]
) -> None:
    """Generate sounds from text prompts: WAV files, each with a JSON sidecar to reproduce it."""
    settings = load_settings(
        SampleSettings,
        config,
        model=model,
        steps=steps,
        gamma=gamma,
        nu=nu,
        omega=omega,
        solver=solver,
        seed=seed,
        num_samples=num_samples,
        seconds=seconds,
        out=out,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        normalize=normalize,
        format=audio_format,
        negative_prompt=negative_prompt,
    )
    all_prompts = gather_prompts(prompts, prompts_file)

    model_dir, hub = resolve_model_source(settings.model)
    if teacher:
        if not (model_dir / "teacher" / "model.json").is_file():
            raise CheckpointError(
                f"{model_dir} keeps no teacher; distil with --keep-teacher, or pass the "
                "teacher's own folder to --model"
            )
        model_dir = model_dir / "teacher"

    from soundctm.engine.audio_io import slug
    from soundctm.engine.checkpoint import card_sha256, read_card

    card = read_card(model_dir)  # cheap checks against the card before the weights load
    if settings.seconds is not None and settings.seconds > card.max_seconds:
        raise InvalidArgumentError(
            f"seconds must be in (0, {card.max_seconds:g}] for this model, got "
            f"{settings.seconds:g} (the longest clip it makes)"
        )
    from soundctm.cli.progress import GenerationProgress
    from soundctm.cli.writing import expand_seeds, load_with_spinner, write_batches
    from soundctm.engine.files import ensure_writable_dir

    pipe = load_with_spinner(model_dir, settings.device, settings.dtype)
    out_dir = ensure_writable_dir(settings.out)
    expanded, seeds = expand_seeds(all_prompts, settings.num_samples, settings.seed)
    started = time.perf_counter()
    with GenerationProgress(err_console) as bar:
        batches = pipe.generate_batches(
            expanded,
            seeds=seeds,
            steps=settings.steps,
            gamma=settings.gamma,
            nu=settings.nu,
            omega=settings.omega,
            seconds=settings.seconds,
            solver=settings.solver,
            negative_prompt=settings.negative_prompt,
            batch_size=settings.batch_size,
            callback=bar,
        )
        written, prm = write_batches(
            batches,
            out_dir,
            lambda prm: f"{slug(prm.prompt)}-{prm.seed}",
            model_dir=model_dir,
            card_hash=card_sha256(model_dir),
            extra={"model_hub": hub} if hub else None,
            normalize=settings.normalize,
            audio_format=settings.format,
            bar=bar,
        )
    elapsed = time.perf_counter() - started
    console.print(
        f"{len(written)} sample(s), {prm.steps} step(s), gamma {prm.gamma:g}, "
        f"nu {prm.nu:g}, omega {prm.omega:g}, in {elapsed:.2f} s -> {out_dir}",
        highlight=False,
        soft_wrap=True,
    )
