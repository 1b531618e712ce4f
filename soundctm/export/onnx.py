"""Export a pipeline as three ONNX graphs; the sampler loop stays on the host (docs/onnx.md).

* ``text_encoder.onnx``: token ids -> token states, the graph the text encoder hands over
  through :class:`~soundctm.engine.components.OnnxExportable` (its tokenizer is saved beside it);
* ``network.onnx``: the preconditioned CTM network ``g(x, t, s)`` (method.md §2-3, EDM eq. 7)
  with per-sample ``t``, ``s`` and ``omega``; the host forms the jump
  ``G(x, t, s) = (s/t) x + (1 - s/t) g`` (CTM eq. 7), classifier-free guidance / nu-sampling
  (one call on a 2B batch) and the noise of gamma-sampling, so every solver and every
  ``steps``/``gamma``/``nu``/``omega`` works without re-exporting;
* ``decoder.onnx``: latents -> waveform.

Every graph has a dynamic batch; the text inputs a dynamic token length; the latent frame axis is
dynamic when the clip length changes it. Beside the graphs: ``model.json`` (the original card)
and ``export.json`` (graph names, input/output specs, opset, fp16, SHA-256 of every file).
The graph modules are in :mod:`soundctm.export.graphs`, the parity checks in
:mod:`soundctm.export.checks`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.engine.checkpoint import CARD_FILE, sha256_file
from soundctm.engine.components import (
    TEXT_GRAPH_INPUTS,
    TEXT_GRAPH_OUTPUTS,
    Decoder,
    OnnxGraph,
    TokenizerSpec,
    crops_to_clip,
    host_phase_retrieval,
    onnx_exportable,
    onnx_graph,
    phase_retrieval,
)
from soundctm.engine.ctm import CTM
from soundctm.engine.files import write_dir_atomic
from soundctm.events import Callback, Message, emit
from soundctm.export.checks import (
    CHECK_TOLERANCE,
    FP16_CHECK_TOLERANCE,
    SPECTRAL_CHECK_TOLERANCE,
    ExportError,
    compare,
    first_line,
    host_check,
    waveform_spectral_convergence,
)
from soundctm.export.graphs import (
    MIN_FRAMES,
    DecoderGraph,
    HalfBackbone,
    MagnitudeGraph,
    NetworkGraph,
    check_seconds,
    decoder_example,
    frame_axes,
    graph_input_names,
    samples_per_frame,
)

EXPORT_FILE = "export.json"
EXPORT_FORMAT = "soundctm-onnx"
EXPORT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
GRAPHS = ("text_encoder", "network", "decoder")
#: The magnitude graph of a Griffin-Lim decoder (``export.json phase_retrieval.graph``).
MAGNITUDE_GRAPH = "decoder_magnitude"


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the package {module!r}, which is not installed; "
            "run `pip install 'soundctm[onnx]'`"
        ) from exc


def text_encoder_graph(encoder: object, name: str) -> OnnxGraph:
    """The export graph ``encoder`` offers (:class:`~soundctm.engine.components.OnnxExportable`),
    checked against the text-graph contract; raises :class:`ExportError` naming the text
    encoder ``name`` when it offers none or a graph that breaks the contract."""

    def refuse(why: str) -> ExportError:
        return ExportError(f"cannot export the text_encoder {name!r}: {why}")

    if not onnx_exportable(encoder):
        raise refuse(
            "it maps strings to token states in Python and offers no ONNX graph (the "
            "OnnxExportable capability of soundctm.engine.components, docs/plugins.md)"
        )
    try:
        graph = onnx_graph(encoder)
    except Exception as exc:
        raise refuse(first_line(exc)) from exc
    if not isinstance(graph, OnnxGraph):
        raise refuse(f"onnx_export returned {type(graph).__name__}, not an OnnxGraph")
    if tuple(graph.input_names) != TEXT_GRAPH_INPUTS or tuple(graph.output_names) != (
        TEXT_GRAPH_OUTPUTS
    ):
        raise refuse(
            f"its graph maps {list(graph.input_names)} -> {list(graph.output_names)}; a text "
            f"encoder graph maps {list(TEXT_GRAPH_INPUTS)} -> {list(TEXT_GRAPH_OUTPUTS)}"
        )
    if graph_input_names(graph.module) != list(TEXT_GRAPH_INPUTS):
        raise refuse(f"its graph module's forward does not take {', '.join(TEXT_GRAPH_INPUTS)}")
    if len(graph.example) != len(TEXT_GRAPH_INPUTS):
        raise refuse(f"its graph example has {len(graph.example)} tensors, not 2")
    tok = graph.tokenizer
    if not isinstance(tok, TokenizerSpec):
        raise refuse("its graph brings no tokenizer (OnnxGraph.tokenizer)")
    n = tok.max_length
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise refuse(f"its tokenizer max_length must be a whole number >= 1, got {n!r}")
    unknown = {a for axes in graph.dynamic.values() for a in axes.values()} - {"batch", "length"}
    if unknown or set(graph.dynamic) - set(TEXT_GRAPH_INPUTS):
        raise refuse(
            "its dynamic axes must name inputs of the graph and be called batch or length, got "
            f"{graph.dynamic}"
        )
    return graph


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The library never prints: silence the exporter's warnings and log lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _io_spec(model_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes (ints or symbolic names) of a graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)

    def one(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": str(dtype), "shape": shape}

    return {
        "inputs": [one(v) for v in model.graph.input],
        "outputs": [one(v) for v in model.graph.output],
    }


def _export_graph(
    component: str,
    name: str,
    module: nn.Module,
    args: tuple[Tensor, ...],
    dynamic: dict[str, dict[int, Any]],
    outputs: tuple[str, ...],
    path: Path,
    opset: int,
    tolerance: float = CHECK_TOLERANCE,
    spectral: bool = False,
) -> float:
    """Export one graph, check it with onnx.checker and compare onnxruntime with torch on
    ``args``. Returns the max abs difference (``spectral``: the spectral convergence, see
    :func:`waveform_spectral_convergence`). Every failure names the component."""
    import onnx

    module.eval()
    try:
        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                output_names=list(outputs),
                external_data=True,
                verbose=False,
                report=False,
            )
    except Exception as exc:
        raise ExportError(
            f"cannot export the {component} {name!r}: torch.onnx failed ({first_line(exc)})"
        ) from exc
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(
            f"cannot export the {component} {name!r}: onnx.checker rejects the graph "
            f"({first_line(exc)})"
        ) from exc
    return compare(component, name, module, args, path, tolerance, spectral)


# ---------------------------------------------------------------------------- export
def export_onnx(
    pipeline_or_dir: Any,
    out_dir: str | Path,
    *,
    opset: int = 18,
    fp16: bool = False,
    callback: Callback | None = None,
) -> Path:
    """Export a pipeline (or the checkpoint directory of one) to ``out_dir`` (docs/onnx.md).

    Writes ``text_encoder.onnx``, ``network.onnx`` (``g(x, t, s)``; float16 weights inside if
    ``fp16``, inputs and outputs float32 either way), ``decoder.onnx`` (their weights in
    ``*.onnx.data``), the tokenizer files in ``tokenizer/``, ``model.json`` and ``export.json``.
    The directory is written atomically. Raises :class:`ExportError` naming the component that
    cannot be exported.
    """
    from soundctm.engine.pipeline import Pipeline

    _need("onnx")
    _need("onnxscript")
    _need("onnxruntime")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= 23:
        raise ExportError(f"opset must be a whole number from 18 to 23, got {opset!r}")
    pipe = pipeline_or_dir if isinstance(pipeline_or_dir, Pipeline) else None
    if pipe is None:
        pipe = Pipeline.load(Path(pipeline_or_dir))
    card = pipe.card
    names = {k: card.components[k].name for k in ("text_encoder", "backbone", "autoencoder")}

    # Cheap checks first: nothing is exported if a component is known to be unexportable.
    text_graph = text_encoder_graph(pipe.text_encoder, names["text_encoder"])
    tokenizer = text_graph.tokenizer
    assert tokenizer is not None  # checked by text_encoder_graph
    if not isinstance(pipe.autoencoder, Decoder):
        raise ExportError(
            f"cannot export the autoencoder {names['autoencoder']!r}: it has no decode method"
        )

    device = pipe.device
    encoder = pipe.text_encoder
    host_settings = host_phase_retrieval(pipe.autoencoder)
    seconds, max_seconds = card.seconds, card.max_seconds
    latent = tuple(int(n) for n in pipe.latent_shape(seconds))
    axes = frame_axes(pipe.autoencoder, seconds, max_seconds)
    # The graphs are traced and checked on a short clip inside the dynamic range, not the card's
    # whole clip (which can be long with a fine latent).
    check_secs = check_seconds(pipe.autoencoder, seconds, axes)
    example = tuple(int(n) for n in pipe.latent_shape(check_secs))
    spf = samples_per_frame(pipe.autoencoder, card.sample_rate, seconds, max_seconds)
    max_latent = tuple(int(n) for n in pipe.latent_shape(max_seconds))

    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=max(2, tokenizer.max_length))
    named = {"batch": batch, "length": length}
    latent_dims: dict[int, Any] = {0: batch}
    for i in axes:
        # Not min=1: a decoder's STFT padding needs a few frames (the mel codec at n_fft 1024,
        # hop 160 needs > 3.2), and torch.export refuses a range that admits fewer.
        latent_dims[i + 1] = torch.export.Dim(
            "frames" if len(axes) == 1 else f"frames{i}",
            min=min(latent[i], MIN_FRAMES),
            max=max_latent[i],
        )

    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *example), generator=g).to(device)
    tokens = torch.randn(2, 5, int(encoder.dim), generator=g).to(device)
    mask = torch.ones(2, 5, dtype=torch.bool, device=device)
    mask[1, 3:] = False
    t = torch.tensor([2.0, 0.5], device=device)
    s = torch.tensor([0.3, 0.1], device=device)
    omega = torch.tensor([3.0, 5.0], device=device)

    backbone = pipe.ctm.backbone
    if fp16:
        try:
            backbone = HalfBackbone(backbone)
        except Exception as exc:  # pragma: no cover - deepcopy/half of a plain module
            raise ExportError(
                f"cannot export the backbone {names['backbone']!r} in float16 "
                f"({first_line(exc)}); export without --fp16"
            ) from exc
    network = NetworkGraph(CTM(backbone, card.sigma_data, card.kind))
    check_diffs = {}

    def fill(tmp: Path) -> None:
        emit(callback, Message(f"exporting the backbone {names['backbone']!r} (network.onnx)"))
        check_diffs["network"] = _export_graph(
            "backbone",
            names["backbone"],
            network,
            (x, t, s, omega, tokens, mask),
            {
                "x": latent_dims,
                "t": {0: batch},
                "s": {0: batch},
                "omega": {0: batch},
                "tokens": {0: batch, 1: length},
                "mask": {0: batch, 1: length},
            },
            ("denoised",),
            tmp / "network.onnx",
            opset,
            FP16_CHECK_TOLERANCE if fp16 else CHECK_TOLERANCE,
        )
        emit(callback, Message(f"exporting the autoencoder {names['autoencoder']!r} (decoder)"))
        latents = decoder_example(pipe.autoencoder, card.sample_rate, check_secs, x)
        check_diffs["decoder"] = _export_graph(
            "autoencoder",
            names["autoencoder"],
            DecoderGraph(pipe.autoencoder),
            (latents,),
            {"latents": latent_dims},
            ("audio",),
            tmp / "decoder.onnx",
            opset,
            spectral=phase_retrieval(pipe.autoencoder),
        )
        if host_settings is not None:
            emit(
                callback,
                Message("exporting the decoder's magnitude spectrogram (host Griffin-Lim)"),
            )
            check_diffs[MAGNITUDE_GRAPH] = _export_graph(
                "autoencoder",
                names["autoencoder"],
                MagnitudeGraph(pipe.autoencoder),
                (latents,),
                {"latents": latent_dims},
                ("magnitude",),
                tmp / f"{MAGNITUDE_GRAPH}.onnx",
                opset,
            )
            check_diffs["decoder_host"] = host_check(pipe.autoencoder, latents, host_settings)
        emit(callback, Message(f"exporting the text_encoder {names['text_encoder']!r}"))
        check_diffs["text_encoder"] = _export_graph(
            "text_encoder",
            names["text_encoder"],
            text_graph.module,
            tuple(text_graph.example),
            {k: {a: named[n] for a, n in axes.items()} for k, axes in text_graph.dynamic.items()},
            tuple(text_graph.output_names),
            tmp / "text_encoder.onnx",
            opset,
        )
        try:
            tokenizer.save(tmp / TOKENIZER_DIR)
        except Exception as exc:
            raise ExportError(
                f"cannot export the text_encoder {names['text_encoder']!r}: saving its tokenizer "
                f"failed ({first_line(exc)})"
            ) from exc
        original = pipe.path / CARD_FILE if pipe.path is not None else None
        if original is not None and original.is_file():
            shutil.copyfile(original, tmp / CARD_FILE)
        else:
            (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
        fallback = tokenizer.fallback_token_id
        fallback = None if fallback is None else int(fallback)
        spec = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "soundctm_version": __version__,
            "torch_version": torch.__version__,
            "opset": opset,
            "fp16": bool(fp16),
            "kind": card.kind,
            "sample_rate": card.sample_rate,
            "seconds": seconds,
            "max_seconds": max_seconds,
            "latent": {
                "shape": list(latent),
                "frame_axes": axes,
                "samples_per_frame": spf,
                # only where the decoder makes more than the clip (older readers ignore it)
                **({"crop_to_clip": True} if crops_to_clip(pipe.autoencoder) else {}),
            },
            "text": {
                "tokenizer": TOKENIZER_DIR,
                "max_length": tokenizer.max_length,
                "exact": bool(tokenizer.exact),
                "dim": int(encoder.dim),
                "pad_token_id": int(tokenizer.pad_token_id),
                "fallback_token_id": fallback,
            },
            "graphs": {k: {"file": f"{k}.onnx", **_io_spec(tmp / f"{k}.onnx")} for k in GRAPHS},
            # optional (older readers ignore it): Griffin-Lim on the host, docs/onnx.md
            **(
                {}
                if host_settings is None
                else {
                    "phase_retrieval": {
                        **host_settings,
                        "graph": {
                            "file": f"{MAGNITUDE_GRAPH}.onnx",
                            **_io_spec(tmp / f"{MAGNITUDE_GRAPH}.onnx"),
                        },
                    }
                }
            ),
            "export_check_max_abs_diff": check_diffs,
            "export_check_seconds": check_secs,
            "export_check_decoder": (
                "spectral convergence (phase retrieval)"
                if phase_retrieval(pipe.autoencoder)
                else "max abs difference"
            ),
            "files": {
                str(p.relative_to(tmp)): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            },
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    out = Path(out_dir)
    write_dir_atomic(out, fill)
    emit(callback, Message(f"exported {out}"))
    return out


__all__ = [
    "CHECK_TOLERANCE",
    "EXPORT_FILE",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FP16_CHECK_TOLERANCE",
    "GRAPHS",
    "MAGNITUDE_GRAPH",
    "MIN_FRAMES",
    "SPECTRAL_CHECK_TOLERANCE",
    "TOKENIZER_DIR",
    "DecoderGraph",
    "ExportError",
    "HalfBackbone",
    "NetworkGraph",
    "export_onnx",
    "frame_axes",
    "samples_per_frame",
    "text_encoder_graph",
    "waveform_spectral_convergence",
]
