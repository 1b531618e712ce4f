"""``soundctm pack``: a distributable copy of a checkpoint (half-precision weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soundctm.cli.common import console
from soundctm.errors import InvalidArgumentError


def pack(
    model: Annotated[Path, typer.Argument(help="Checkpoint folder to pack.", show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the packed copy.", show_default=False)
    ],
    dtype: Annotated[
        str, typer.Option(help="Weight precision: float16, bfloat16 or float32.")
    ] = "float16",
    teacher: Annotated[
        bool,
        typer.Option(
            "--teacher/--no-teacher", help="Pack the bundled teacher (MODEL/teacher) as well."
        ),
    ] = True,
    merge_lora: Annotated[
        bool,
        typer.Option(
            "--merge-lora",
            help="MODEL is a LoRA checkpoint: write its parent with the adapter merged in, an "
            "ordinary checkpoint.",
        ),
    ] = False,
    omega: Annotated[
        float | None,
        typer.Option(
            help="Default guidance scale written into the packed card(s) (default: keep).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Copy a checkpoint with its weights cast to half precision and fresh checksums.

    Loading casts the weights back to float32; only their rounding changes. A student's bundled
    teacher (from `distill --keep-teacher`) travels along in OUT/teacher, used by
    `sample --teacher`. --merge-lora turns a LoRA checkpoint (adapter only) into an ordinary one.
    """
    if dtype not in {"float16", "bfloat16", "float32"}:
        raise InvalidArgumentError(f"--dtype must be float16, bfloat16 or float32, got {dtype!r}")
    if not (model / "model.json").is_file():
        raise InvalidArgumentError(f"{model} is not a checkpoint folder (no model.json in it)")
    from soundctm.engine.pack import merge_lora_checkpoint, pack_checkpoint, weights_bytes

    if merge_lora:
        path = merge_lora_checkpoint(model, out, dtype=dtype, omega=omega)
        console.print(
            f"merged the LoRA adapter {model} into its parent -> {path}: weights "
            f"{weights_bytes(path) / 1e6:.1f} MB ({dtype})",
            highlight=False,
            soft_wrap=True,
        )
        return

    before = (
        weights_bytes(model) if teacher else weights_bytes(model) - weights_bytes(model / "teacher")
    )
    path = pack_checkpoint(model, out, dtype=dtype, with_teacher=teacher, omega=omega)
    console.print(
        f"packed {model} -> {path}: weights {before / 1e6:.1f} MB -> "
        f"{weights_bytes(path) / 1e6:.1f} MB ({dtype})",
        highlight=False,
        soft_wrap=True,
    )
