"""``soundctm distill``: distil a SoundCTM student from a trained teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from soundctm.cli.common import console
from soundctm.cli.options import (
    TRAINING_OPTIONS,
    Resume,
    ResumeFrom,
    config_option,
    lr_option,
    out_option,
    with_options,
)
from soundctm.cli.train import given_flags, run_training
from soundctm.config import DistillSettings, load_settings
from soundctm.errors import InvalidArgumentError


@with_options(**TRAINING_OPTIONS)
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
    config: config_option("distill", "configures the run") = None,  # type: ignore[valid-type]
    out: out_option("runs/student", "Run folder") = None,  # type: ignore[valid-type]
    lr: lr_option("8e-5, RAdam") = None,  # type: ignore[valid-type]
    distance: Annotated[
        str | None,
        typer.Option(
            help="feature (teacher features, default), l2, l1 or pseudo-huber.", show_default=False
        ),
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
    resume: Resume = False,
    resume_from: ResumeFrom = None,
    **flags: Any,
) -> None:
    """Distil a SoundCTM student (1-step generation, deterministic refinement) from a teacher.

    Writes runs/NAME/checkpoints/step-N (loadable by `soundctm sample` and `refine`),
    state/step-N, metrics.jsonl (each loss term, the adaptive weight, k) and previews at 1 and
    4 steps.
    """
    settings = load_settings(
        DistillSettings, config, teacher=teacher, out=out, lr=lr, distance=distance,
        keep_teacher=keep_teacher, trajectory_cache=trajectory_cache, **given_flags(flags),
    )  # fmt: skip
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
