"""``soundctm vary``: variations of an audio file (audio-to-audio), and inpainting with --mask."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from soundctm.cli.common import console, err_console
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
    config_option,
    model_option,
    out_option,
    steps_option,
)
from soundctm.config import VarySettings, load_settings
from soundctm.errors import AudioFileError, InvalidArgumentError

#: The strength without --strength: a clear variation; with a mask, the spans are made anew.
DEFAULT_STRENGTH, DEFAULT_MASK_STRENGTH = 0.5, 1.0


def parse_mask(spans: list[str] | None) -> list[tuple[float, float]]:
    """``["0.5:1.2", ...]`` -> ``[(0.5, 1.2), ...]`` (seconds), with a one-line error for a
    span that is not ``START:END``."""
    out = []
    for text in spans or []:
        parts = text.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start, end = float(parts[0]), float(parts[1])
        except ValueError:
            raise InvalidArgumentError(
                f"--mask takes START:END in seconds, e.g. 0.5:1.2, got {text!r}"
            ) from None
        if not (math.isfinite(start) and math.isfinite(end)) or not 0 <= start < end:
            raise InvalidArgumentError(
                f"--mask {text} is not a span: need 0 <= START < END (seconds)"
            )
        out.append((start, end))
    return out


def read_input(path: Path, sample_rate: int) -> Any:
    """The input of a variation as mono audio at ``sample_rate`` (decoded by soundfile,
    resampled with soxr), with a one-line error for a missing or non-audio file."""
    from soundctm.engine.audio import read_audio

    if not path.is_file():
        raise AudioFileError(f"input {path} does not exist; give an audio file (wav, flac, ...)")
    return read_audio(path, sample_rate)


def vary(
    input_file: Annotated[
        Path,
        typer.Argument(help="The audio file to vary (wav, flac, ogg, mp3).", show_default=False),
    ],
    prompts: Annotated[
        list[str] | None,
        typer.Argument(
            help='Prompts for the variations, e.g. "a deeper engine hum".', show_default=False
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            "--strength",
            "-s",
            help="0 keeps the input, 1 makes a new sound (default: 0.5; 1 with --mask).",
            show_default=False,
        ),
    ] = None,
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask",
            help="Regenerate only START:END (seconds), keep the rest; repeatable.",
            show_default=False,
        ),
    ] = None,
    model: model_option() = None,  # type: ignore[valid-type]
    steps: steps_option("the model's, 1 for a CTM student") = None,  # type: ignore[valid-type]
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
    config: config_option("vary") = None,  # type: ignore[valid-type]
) -> None:
    """Make variations of an audio file: encode it, noise it to the level --strength picks,
    and let the model jump back (1 step by default), steered by the prompt.

    With --mask START:END only those spans are made anew and the rest of the input is kept
    (inpainting). Each variation gets a JSON sidecar naming the input file and its SHA-256.
    """
    settings = load_settings(
        VarySettings,
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
        strength=strength,
    )
    from soundctm.cli.sample import gather_prompts

    all_prompts = gather_prompts(prompts, prompts_file)
    spans = parse_mask(mask)
    chosen = settings.strength
    if chosen is None:
        chosen = DEFAULT_MASK_STRENGTH if spans else DEFAULT_STRENGTH

    from soundctm.cli.models import resolve_model_source
    from soundctm.cli.progress import GenerationProgress
    from soundctm.cli.writing import expand_seeds, load_with_spinner, write_batches
    from soundctm.engine.audio_io import slug, variation_record
    from soundctm.engine.checkpoint import card_sha256, read_card
    from soundctm.engine.files import ensure_writable_dir

    model_dir, hub = resolve_model_source(settings.model)
    card = read_card(model_dir)
    audio = read_input(input_file, card.sample_rate)
    record = variation_record(input_file, chosen, spans)
    pipe = load_with_spinner(model_dir, settings.device, settings.dtype)
    expanded, seeds = expand_seeds(all_prompts, settings.num_samples, settings.seed)
    started = time.perf_counter()
    with GenerationProgress(err_console) as bar:
        batches = pipe.vary_batches(
            audio,
            card.sample_rate,
            expanded,
            seeds=seeds,
            strength=chosen,
            mask=spans,
            negative_prompt=settings.negative_prompt,
            steps=settings.steps,
            gamma=settings.gamma,
            nu=settings.nu,
            omega=settings.omega,
            seconds=settings.seconds,
            solver=settings.solver,
            batch_size=settings.batch_size,
            callback=bar,
        )  # everything is checked (and the input encoded) before anything is written
        out_dir = ensure_writable_dir(settings.out)
        written, prm = write_batches(
            batches,
            out_dir,
            lambda prm: f"{slug(input_file.stem, 20)}.vary-{slug(prm.prompt)}-{prm.seed}",
            model_dir=model_dir,
            card_hash=card_sha256(model_dir),
            extra={**record, **({"model_hub": hub} if hub else {})},
            normalize=settings.normalize,
            audio_format=settings.format,
            bar=bar,
        )
    console.print(
        f"{len(written)} variation(s) of {input_file.name}, strength {chosen:g}"
        + (f", {len(spans)} masked span(s)" if spans else "")
        + f", {prm.steps} step(s), in {time.perf_counter() - started:.2f} s -> {out_dir}",
        highlight=False,
        soft_wrap=True,
    )
