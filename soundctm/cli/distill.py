"""``soundctm distill``: distil a SoundCTM student from a trained teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soundctm.cli.common import console, handle_errors
from soundctm.cli.train import run_training
from soundctm.config import DistillSettings, load_settings
from soundctm.errors import InvalidArgumentError


@handle_errors
def distill(
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            "-t",
            help="Teacher checkpoint folder (from `soundctm train`).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML file whose \\[distill] table configures the run.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default: runs/student).", show_default=False),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.", show_default=False)] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Clips per step and process.", show_default=False)
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: 8e-5, RAdam).", show_default=False)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.", show_default=False)] = None,
    distance: Annotated[
        str | None,
        typer.Option(
            help="feature (teacher features, default), l2, l1 or pseudo-huber.", show_default=False
        ),
    ] = None,
    save_every: Annotated[
        int | None, typer.Option(help="Write a checkpoint every N steps.", show_default=False)
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help="Log metrics every N steps.", show_default=False)
    ] = None,
    mixed_precision: Annotated[
        str | None, typer.Option(help="no, bf16 or fp16.", show_default=False)
    ] = None,
    keep_teacher: Annotated[
        bool | None,
        typer.Option(
            "--keep-teacher/--no-keep-teacher",
            help="Copy the teacher into each checkpoint (for `sample --teacher`).",
            show_default=False,
        ),
    ] = None,
    trajectory_cache: Annotated[
        bool | None,
        typer.Option(
            "--trajectory-cache/--online",
            help="Solve the teacher once for cache_size trajectories and train from the cache.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest state in --out.")
    ] = False,
    resume_from: Annotated[
        Path | None,
        typer.Option("--resume-from", help="Continue from this state folder.", show_default=False),
    ] = None,
) -> None:
    """Distil a SoundCTM student (1-step generation, deterministic refinement) from a teacher.

    Writes runs/NAME/checkpoints/step-N (loadable by `soundctm sample` and `refine`),
    state/step-N, metrics.jsonl (each loss term, the adaptive weight, k) and previews at 1 and
    4 steps.
    """
    settings = load_settings(
        DistillSettings,
        config,
        teacher=teacher,
        out=out,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        distance=distance,
        save_every=save_every,
        log_every=log_every,
        mixed_precision=mixed_precision,
        keep_teacher=keep_teacher,
        trajectory_cache=trajectory_cache,
    )
    if settings.teacher is None:
        raise InvalidArgumentError(
            "no teacher given; pass --teacher DIR (a checkpoint folder from `soundctm train`)"
        )
    from soundctm.training.distill import distill as run_distill

    final = run_training(run_distill, settings, resume_from or resume or None)
    console.print(
        f'done: {final} (try: soundctm sample "..." --model {final}, then soundctm refine)',
        highlight=False,
        soft_wrap=True,
    )
