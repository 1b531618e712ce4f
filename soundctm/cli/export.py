"""``soundctm export``: ONNX graphs (and TensorRT engines) for low-latency inference."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from soundctm.cli.common import console, err_console, show_messages
from soundctm.cli.models import resolve_model
from soundctm.cli.options import model_option
from soundctm.errors import InvalidArgumentError


def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the exported model.", show_default=False)
    ],
    model: model_option() = None,  # type: ignore[valid-type]
    format: Annotated[
        str,
        typer.Option("--format", "-f", help="onnx, or tensorrt (ONNX graphs + TensorRT engines)."),
    ] = "onnx",
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Half-precision network (TensorRT: the FP16 build flag).")
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
) -> None:
    """Export a model as separate ONNX graphs (text encoder, network, decoder) + its card.

    The sampler stays on the host, so every steps/gamma/nu/omega setting works without
    re-export; `soundctm sample --model OUT` runs it with onnxruntime (docs/onnx.md).
    """
    if format not in {"onnx", "tensorrt"}:
        raise InvalidArgumentError(f"--format must be onnx or tensorrt, got {format!r}")
    if opset < 17:
        raise InvalidArgumentError(f"--opset must be >= 17 (the exporter needs it), got {opset}")
    model_dir = resolve_model(model)
    if format == "tensorrt":
        from soundctm.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before the slow ONNX export when TensorRT or a GPU is missing

    from soundctm.export import build_engines, export_onnx

    started = time.perf_counter()
    status = err_console.status("exporting to ONNX", spinner="dots")
    with status if err_console.is_terminal else contextlib.nullcontext():
        path = export_onnx(model_dir, out, opset=opset, fp16=fp16, callback=show_messages)
        if format == "tensorrt":
            build_engines(path, fp16=fp16, callback=show_messages)
    console.print(
        f"exported {model_dir} -> {path} in {time.perf_counter() - started:.1f} s "
        f'(run it: soundctm sample "..." --model {path})',
        highlight=False,
        soft_wrap=True,
    )
