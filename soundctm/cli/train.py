"""``soundctm train``: train an EDM diffusion teacher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from soundctm.cli.common import console, err_console
from soundctm.cli.options import (
    TRAINING_OPTIONS,
    Resume,
    ResumeFrom,
    config_option,
    lr_option,
    out_option,
    with_options,
)
from soundctm.config import TrainingConfig, TrainSettings, load_settings


def given_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The shared training flags with a repeatable option given no times (an empty list) made
    ``None``, "not given", so the config file's value stands."""
    return {k: (None if v == [] else v) for k, v in flags.items()}


def run_training(
    train: Callable[..., Path], settings: TrainingConfig, resume: Path | bool | None
) -> Path:
    """Run ``train(settings, resume=..., callback=...)`` under the training progress display;
    returns the last checkpoint (shared by ``train`` and ``distill``)."""
    from soundctm.cli.progress import TrainProgress

    with TrainProgress(err_console) as progress:
        return train(settings, resume=resume, callback=progress)


@with_options(**TRAINING_OPTIONS)
def train(
    config: config_option("train", "configures the run") = None,  # type: ignore[valid-type]
    out: out_option("runs/teacher", "Run folder") = None,  # type: ignore[valid-type]
    lr: lr_option("2e-4, AdamW") = None,  # type: ignore[valid-type]
    init_components: Annotated[
        str | None,
        typer.Option(
            "--init-components",
            help="Comma-separated components --init-from provides: backbone, text_encoder, "
            "autoencoder (default: all).",
            show_default=False,
        ),
    ] = None,
    latent_cache: Annotated[
        bool | None,
        typer.Option(
            "--latent-cache/--no-latent-cache",
            help="Encode the data set once, train from the cache.",
            show_default=False,
        ),
    ] = None,
    resume: Resume = False,
    resume_from: ResumeFrom = None,
    **flags: Any,
) -> None:
    """Train a diffusion teacher (EDM) on a registered data set; multi-GPU with accelerate launch.

    Writes runs/NAME/checkpoints/step-N (loadable by `soundctm sample`), state/step-N (for
    --resume), metrics.jsonl and audio previews.
    """
    settings = load_settings(
        TrainSettings,
        config,
        out=out,
        lr=lr,
        latent_cache=latent_cache,
        init_components=init_components,
        **given_flags(flags),
    )
    from soundctm.training.teacher import train_teacher

    final = run_training(train_teacher, settings, resume_from or resume or None)
    console.print(
        f'done: {final} (sample it with: soundctm sample "..." --model {final})',
        highlight=False,
        soft_wrap=True,
    )
