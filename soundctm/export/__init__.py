"""Export to ONNX, run exported models with onnxruntime, build TensorRT engines (docs/onnx.md).

Heavy imports (torch, onnx, onnxruntime, tensorrt) happen in the submodules only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OrtPipeline", "build_engines", "export_onnx", "is_exported", "load_tensorrt"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from soundctm.export.onnx import export_onnx

        return export_onnx
    if name in {"OrtPipeline", "is_exported"}:
        from soundctm.export import runtime

        return getattr(runtime, name)
    if name in {"build_engines", "load_tensorrt"}:
        from soundctm.export import tensorrt

        return getattr(tensorrt, name)
    raise AttributeError(f"module 'soundctm.export' has no attribute {name!r}")
