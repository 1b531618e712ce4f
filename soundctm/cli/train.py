"""``soundctm train``: train an EDM diffusion teacher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from soundctm.cli.common import console, err_console, handle_errors
from soundctm.config import TrainingConfig, TrainSettings, load_settings


def run_training(
    train: Callable[..., Path], settings: TrainingConfig, resume: Path | bool | None
) -> Path:
    """Run ``train(settings, resume=..., callback=...)`` under the training progress display;
    returns the last checkpoint (shared by ``train`` and ``distill``)."""
    from soundctm.cli.progress import TrainProgress

    with TrainProgress(err_console) as progress:
        return train(settings, resume=resume, callback=progress)


@handle_errors
def train(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML file whose \\[train] table configures the run.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default: runs/teacher).", show_default=False),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.", show_default=False)] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Clips per step and process.", show_default=False)
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.", show_default=False)] = None,
    save_every: Annotated[
        int | None, typer.Option(help="Write a checkpoint every N steps.", show_default=False)
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help="Log metrics every N steps.", show_default=False)
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option(help="Gradient accumulation steps.", show_default=False)
    ] = None,
    mixed_precision: Annotated[
        str | None, typer.Option(help="no, bf16 or fp16.", show_default=False)
    ] = None,
    num_workers: Annotated[
        int | None, typer.Option(help="Data loader worker processes.", show_default=False)
    ] = None,
    latent_cache: Annotated[
        bool | None,
        typer.Option(
            "--latent-cache/--no-latent-cache",
            help="Encode the data set once, train from the cache.",
            show_default=False,
        ),
    ] = None,
    tracker: Annotated[
        str | None,
        typer.Option(
            help="Also log to this accelerate tracker (tensorboard, wandb).", show_default=False
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
    """Train a diffusion teacher (EDM) on a registered data set; multi-GPU with accelerate launch.

    Writes runs/NAME/checkpoints/step-N (loadable by `soundctm sample`), state/step-N (for
    --resume), metrics.jsonl and audio previews.
    """
    settings = load_settings(
        TrainSettings,
        config,
        out=out,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        save_every=save_every,
        log_every=log_every,
        grad_accum=grad_accum,
        mixed_precision=mixed_precision,
        num_workers=num_workers,
        latent_cache=latent_cache,
        tracker=tracker,
    )
    from soundctm.training.teacher import train_teacher

    final = run_training(train_teacher, settings, resume_from or resume or None)
    console.print(
        f'done: {final} (sample it with: soundctm sample "..." --model {final})',
        highlight=False,
        soft_wrap=True,
    )
