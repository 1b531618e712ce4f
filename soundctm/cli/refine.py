"""``soundctm refine``: regenerate a chosen sample from its own noise with more steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from soundctm.cli.common import console, err_console
from soundctm.cli.options import (
    Device,
    DtypeOption,
    config_option,
    format_option,
    gamma_option,
    model_option,
    negative_prompt_option,
    normalize_option,
    out_option,
    steps_option,
)
from soundctm.config import RefineSettings, load_settings
from soundctm.errors import CheckpointError


def refine(
    file: Annotated[
        Path,
        typer.Argument(
            help="A WAV written by `soundctm sample` (its .json sidecar must be beside it).",
            show_default=False,
        ),
    ],
    steps: steps_option("16") = None,  # type: ignore[valid-type]
    gamma: gamma_option("0") = None,  # type: ignore[valid-type]
    model: model_option("Use this checkpoint instead of the one in the sidecar.") = None,  # type: ignore[valid-type]
    out: out_option("beside the input") = None,  # type: ignore[valid-type]
    device: Device = None,
    dtype: DtypeOption = None,
    normalize: normalize_option("the input's, from its sidecar") = None,  # type: ignore[valid-type]
    audio_format: format_option("the input's") = None,  # type: ignore[valid-type]
    negative_prompt: negative_prompt_option("the input's") = None,  # type: ignore[valid-type]
    config: config_option("refine") = None,  # type: ignore[valid-type]
) -> None:
    """Re-run a sample deterministically with more steps: same noise, same content, cleaner.

    Writes a new WAV + sidecar beside the input (or in --out); never overwrites the input.
    """
    settings = load_settings(
        RefineSettings,
        config,
        steps=steps,
        gamma=gamma,
        model=model,
        out=out,
        device=device,
        dtype=dtype,
        normalize=normalize,
        format=audio_format,
        negative_prompt=negative_prompt,
    )

    from soundctm.engine.audio_io import free_stem, params_from_record, read_sidecar, save_sample
    from soundctm.engine.checkpoint import card_sha256
    from soundctm.engine.files import ensure_writable_dir

    record = read_sidecar(file)
    params = params_from_record(record)
    level = settings.normalize or str(record.get("normalize") or "none")
    suffix = settings.format or file.suffix.lower().lstrip(".")
    from soundctm.engine.audio_io import check_format
    from soundctm.engine.levels import check_mode

    check_mode(level)
    suffix = check_format(suffix)
    out_dir = ensure_writable_dir(settings.out or file.parent)
    if settings.model is not None:
        from soundctm.cli.models import resolve_model

        model_dir = resolve_model(settings.model)
    else:
        stored = record.get("model")
        if not stored:
            raise CheckpointError(f"the sidecar of {file} names no model; pass --model DIR")
        model_dir = Path(stored)
        if not (model_dir / "model.json").is_file():
            raise CheckpointError(
                f"the model that made {file.name} is gone ({stored}); pass --model DIR to "
                "refine with another copy of it"
            )
        if record.get("model_card_sha256") not in (None, card_sha256(model_dir)):
            raise CheckpointError(
                f"the model at {stored} has changed since {file.name} was made, so the refined "
                f"sound would differ; pass --model {stored} to refine with it anyway"
            )

    from soundctm.cli.models import load_model
    from soundctm.cli.progress import GenerationProgress
    from soundctm.engine.audio_io import variation_source

    variation = variation_source(record, file) if "strength" in record else None
    pipe = load_model(model_dir, settings.device, settings.dtype)
    card_hash = card_sha256(model_dir)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    with GenerationProgress(err_console) as bar:
        if variation is None:
            gen = pipe.refine(
                params,
                steps=settings.steps,
                gamma=settings.gamma,
                callback=bar,
                negative_prompt=settings.negative_prompt,
            )
        else:  # a variation is refined from the same input, strength, mask and seed
            from soundctm.cli.vary import read_input

            source, extra = variation
            arguments = {**params.arguments(), "steps": settings.steps, "gamma": settings.gamma}
            if settings.negative_prompt is not None:
                arguments["negative_prompt"] = settings.negative_prompt
            gen = pipe.vary(
                read_input(source, pipe.sample_rate),
                pipe.sample_rate,
                [params.prompt],
                seeds=[params.seed],
                strength=float(extra["strength"]),
                mask=[tuple(span) for span in extra["mask"]],
                batch_size=1,
                callback=bar,
                **arguments,
            )
        path = free_stem(out_dir, f"{file.stem}.refined-{settings.steps}", suffix)
        new = gen.params[0]
        save_sample(
            path,
            gen.audio[0],
            new,
            sample_rate=gen.sample_rate,
            model_path=model_dir,
            model_card_sha256=card_hash,
            extra={
                **extra,
                "refined_from": str(file.resolve()),
                "refined_from_steps": params.steps,
            },
            normalize=level,
            callback=bar,
        )
    console.print(
        f"refined {file.name} ({params.steps} -> {new.steps} steps, gamma {new.gamma:g}, "
        f"seed {new.seed}) in {time.perf_counter() - started:.2f} s -> {path}",
        highlight=False,
        soft_wrap=True,
    )
