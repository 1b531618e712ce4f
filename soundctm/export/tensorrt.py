"""TensorRT engines from the exported ONNX graphs, and a runner for them (docs/onnx.md).

Written against TensorRT's documented Python API (``tensorrt`` 10.x: ``Builder``,
``OnnxParser``, optimisation profiles, ``execute_async_v3``). UNTESTED on the machines this
project is developed on (no GPU, no tensorrt package); there every entry point raises
:class:`TensorRTUnavailableError` with one line saying what is missing.

Engines are specific to the GPU model and the TensorRT version that built them: build them on the
machine that runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from soundctm.errors import InvalidArgumentError, SoundCTMError
from soundctm.events import Callback, Message, emit
from soundctm.export.onnx import GRAPHS
from soundctm.export.runtime import OrtPipeline, read_export

ENGINES_DIR = "tensorrt"
ENGINES_FILE = "engines.json"
WORKSPACE_BYTES = 2 << 30


class TensorRTUnavailableError(SoundCTMError):
    """TensorRT or a CUDA GPU is missing."""


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, with a CUDA GPU present; else a one-line error (exit code 2)."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed (pip install tensorrt; it needs an NVIDIA GPU with "
            "CUDA); use --format onnx, or the onnxruntime providers cpu/cuda"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "no CUDA GPU is available: TensorRT engines need an NVIDIA GPU; use --format onnx"
        )
    return tensorrt


def profile_bounds(
    spec: dict[str, Any], max_batch: int
) -> dict[str, dict[str, tuple[int, int, int]]]:
    """(min, opt, max) of every symbolic input dimension of each graph.

    ``batch``: 1 .. ``max_batch`` (``2 * max_batch`` for the network, which runs the conditional
    and unconditional halves as one batch); ``length``: 1 .. the tokenizer's ``max_length``;
    ``frames``: 1 .. the frames of ``max_seconds`` (optimum: the card's clip length).
    """
    shape = spec["latent"]["shape"]
    axes = spec["latent"]["frame_axes"]
    k = spec["latent"].get("samples_per_frame")
    frames: dict[str, tuple[int, int, int]] = {}
    for axis in axes:
        top = shape[axis]
        if k:
            top = max(top, -(-round(spec["max_seconds"] * spec["sample_rate"]) // int(k)))
        name = "frames" if len(axes) == 1 else f"frames{axis}"
        frames[name] = (1, shape[axis], top)
    length = int(spec["text"]["max_length"])
    out = {}
    for graph in GRAPHS:
        top = 2 * max_batch if graph == "network" else max_batch
        opt = top if graph != "text_encoder" or not spec["text"]["exact"] else 1
        out[graph] = {
            "batch": (1, opt, top),
            "length": (1, min(length, 32), length),
            **frames,
        }
    return out


def _input_shapes(
    inputs: list[dict[str, Any]], bounds: dict[str, tuple[int, int, int]]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    shapes = {}
    for inp in inputs:
        dims = []
        for dim in inp["shape"]:
            if isinstance(dim, int):
                dims.append((dim, dim, dim))
            elif dim in bounds:
                dims.append(bounds[dim])
            else:
                raise SoundCTMError(
                    f"input {inp['name']!r} has a dimension {dim!r} this builder does not know; "
                    "re-export the model with this soundctm"
                )
        lo, opt, hi = (tuple(d[j] for d in dims) for j in range(3))
        shapes[inp["name"]] = (lo, opt, hi)
    return shapes


def build_engines(
    exported_dir: str | Path,
    out: str | Path | None = None,
    *,
    fp16: bool = True,
    max_batch: int = 8,
    callback: Callback | None = None,
) -> Path:
    """Build one serialized TensorRT engine per graph of an exported model.

    Writes ``{text_encoder,network,decoder}.engine`` and ``engines.json`` into ``out`` (default:
    ``exported_dir/tensorrt``). ``fp16`` sets TensorRT's FP16 builder flag (layers may run in
    half precision; inputs and outputs stay float32). Raises :class:`TensorRTUnavailableError`
    without TensorRT or a GPU.
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InvalidArgumentError(f"max_batch must be a whole number >= 1, got {max_batch}")
    exported_dir = Path(exported_dir)
    spec = read_export(exported_dir)
    trt = require_tensorrt()
    out = Path(out) if out is not None else exported_dir / ENGINES_DIR
    out.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    bounds = profile_bounds(spec, max_batch)
    built: dict[str, Any] = {}
    for graph in GRAPHS:
        emit(callback, Message(f"building the TensorRT engine of {graph}"))
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
        parser = trt.OnnxParser(network, logger)
        onnx_path = exported_dir / spec["graphs"][graph]["file"]
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise SoundCTMError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shapes = _input_shapes(spec["graphs"][graph]["inputs"], bounds[graph])
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise SoundCTMError(f"TensorRT failed to build an engine for {graph} (see its log)")
        (out / f"{graph}.engine").write_bytes(bytes(engine))
        built[graph] = {
            "file": f"{graph}.engine",
            "profile": {k: list(v) for k, v in shapes.items()},
        }
    import torch

    info = {
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "fp16": bool(fp16),
        "max_batch": max_batch,
        "engines": built,
    }
    (out / ENGINES_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    emit(callback, Message(f"built TensorRT engines in {out}"))
    return out


def has_engines(exported_dir: str | Path) -> bool:
    """True if ``exported_dir/tensorrt`` holds engines built by :func:`build_engines`."""
    return (Path(exported_dir) / ENGINES_DIR / ENGINES_FILE).is_file()


class TrtGraph:
    """Runs one engine: numpy feeds in (copied to the GPU), the first output back as numpy."""

    def __init__(self, path: Path, trt: Any, logger: Any) -> None:
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise SoundCTMError(
                f"TensorRT cannot load {path}: engines only run with the TensorRT version and "
                "GPU that built them; rebuild them with `soundctm export --format tensorrt`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.input_names = [n for n, i in zip(names, is_input, strict=True) if i]
        self.output_names = [n for n, i in zip(names, is_input, strict=True) if not i]
        self.output_dtypes = [
            np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.output_names
        ]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        keep = []  # the device tensors must outlive the launch
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name, dtype in zip(self.output_names, self.output_dtypes, strict=True):
            shape = tuple(self.context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype).cuda()
            self.context.set_tensor_address(name, tensor.data_ptr())
            outputs.append(tensor)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise SoundCTMError("TensorRT failed to run an engine")
        stream.synchronize()
        return outputs[0].cpu().numpy()


def load_tensorrt(exported_dir: str | Path, engines_dir: str | Path | None = None) -> OrtPipeline:
    """An exported model run by its TensorRT engines (same sampling code as onnxruntime)."""
    exported_dir = Path(exported_dir)
    spec = read_export(exported_dir)
    trt = require_tensorrt()
    engines = Path(engines_dir) if engines_dir is not None else exported_dir / ENGINES_DIR
    if not (engines / ENGINES_FILE).is_file():
        raise SoundCTMError(
            f"{str(engines)!r} has no TensorRT engines; build them with "
            "`soundctm export --format tensorrt`"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    graphs = {g: TrtGraph(engines / f"{g}.engine", trt, logger) for g in GRAPHS}
    return OrtPipeline.from_graphs(exported_dir, graphs, providers=["tensorrt"], spec=spec)


__all__ = [
    "ENGINES_DIR",
    "TensorRTUnavailableError",
    "TrtGraph",
    "build_engines",
    "has_engines",
    "load_tensorrt",
    "profile_bounds",
    "require_tensorrt",
]
