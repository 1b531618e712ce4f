"""``soundctm import``: convert an official SoundCTM release into a soundctm checkpoint."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from soundctm.cli.common import console, err_console, handle_errors, show_messages
from soundctm.cli.options import Command, Group

#: ``--trust-pickle``, shared by the importers.
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow files that need full unpickling (only if you trust them)."
    ),
]

import_app = typer.Typer(
    cls=Group,
    name="import",
    no_args_is_help=True,
    help="Convert an official SoundCTM release (its released files) into a soundctm checkpoint.",
)


def soundctm_unet(
    src: Annotated[
        Path,
        typer.Argument(
            help="The official folder (Hugging Face Sony/soundctm: ckpt/, soundctm_ckpt/).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="New checkpoint folder.", show_default=False)
    ],
    weights: Annotated[
        str,
        typer.Option(help="The student's weights: ema, or online (what the official script runs)."),
    ] = "ema",
    teacher: Annotated[
        bool, typer.Option("--teacher", help="Also convert the teacher (for sample --teacher).")
    ] = False,
    unet_config: Annotated[
        Path | None,
        typer.Option(
            help="UNet config JSON (default: SRC/configs/diffusion_model_config.json, else the "
            "released one).",
            show_default=False,
        ),
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(
            help="FLAN-T5 folder or hub id (default: summary.jsonl's text_encoder_name).",
            show_default=False,
        ),
    ] = None,
    trust_pickle: TrustPickle = False,
) -> None:
    """Convert the official SoundCTM-UNet (16 kHz): UNet student (+ teacher), FLAN-T5, AudioLDM
    VAE + HiFi-GAN.

    Every source file's SHA-256 goes into the card, with the weights chosen and the converter
    version (docs/official-models.md).
    """
    from soundctm.plugins.registry import get_registry

    import_soundctm_unet = get_registry().load("importer", "soundctm-unet")
    started = time.perf_counter()
    status = err_console.status("converting", spinner="dots")
    with status if err_console.is_terminal else contextlib.nullcontext():
        path = import_soundctm_unet(
            src,
            out,
            weights=weights,
            teacher=teacher,
            unet_config=unet_config,
            text_encoder=text_encoder,
            trust_pickle=trust_pickle,
            callback=show_messages,
        )
    _done(src, path, started)


def soundctm_dit(
    src: Annotated[
        Path,
        typer.Argument(
            help="The official folder: the hub layout of koichisaito/soundctm_dit "
            "(model_checkpoints/, utils_checkpoints/) or the demo's (ckpt/models/, ckpt/utils/).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="New checkpoint folder.", show_default=False)
    ],
    variant: Annotated[
        str,
        typer.Option(
            help="v1 (ac_v1_iclr: the ICLR'25 model, CLAP projection 512-d) or v2 (ac_v2: the "
            "RoBERTa pooler output, 768-d)."
        ),
    ] = "v2",
    dit_config: Annotated[
        Path | None,
        typer.Option(
            help="DiT config JSON (default: SRC/configs/dit_config/dit_<variant>.json, else the "
            "released one).",
            show_default=False,
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="RoBERTa tokenizer folder or hub id (default: roberta-base, or SRC/roberta-base).",
            show_default=False,
        ),
    ] = None,
    trust_pickle: TrustPickle = False,
) -> None:
    """Convert the official SoundCTM-DiT (44.1 kHz, 1B): DiT student, LAION-CLAP text encoder,
    GaussianDAC.

    Every source file's SHA-256 goes into the card, with the variant and the converter version
    (docs/official-models.md).
    """
    from soundctm.plugins.registry import get_registry

    import_soundctm_dit = get_registry().load("importer", "soundctm-dit")
    started = time.perf_counter()
    status = err_console.status("converting", spinner="dots")
    with status if err_console.is_terminal else contextlib.nullcontext():
        path = import_soundctm_dit(
            src,
            out,
            variant=variant,
            dit_config_file=dit_config,
            tokenizer=tokenizer,
            trust_pickle=trust_pickle,
            callback=show_messages,
        )
    _done(src, path, started)


def _done(src: Path, path: Path, started: float) -> None:
    console.print(
        f"imported {src} -> {path} in {time.perf_counter() - started:.1f} s "
        f'(try: soundctm sample "a dog barks while rain falls" --model {path})',
        highlight=False,
        soft_wrap=True,
    )


import_app.command(name="soundctm-unet", cls=Command)(handle_errors(soundctm_unet))
import_app.command(name="soundctm-dit", cls=Command)(handle_errors(soundctm_dit))

__all__ = ["import_app"]
