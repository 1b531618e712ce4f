"""Export a pipeline as three ONNX graphs; the sampler loop stays on the host (docs/onnx.md).

* ``text_encoder.onnx``: token ids -> token states (the tokenizer is saved beside it);
* ``network.onnx``: the preconditioned CTM network ``g(x, t, s)`` (method.md §2-3, EDM eq. 7)
  with per-sample ``t``, ``s`` and ``omega``; the host forms the jump
  ``G(x, t, s) = (s/t) x + (1 - s/t) g`` (CTM eq. 7), classifier-free guidance / nu-sampling
  (one call on a 2B batch) and the noise of gamma-sampling, so every solver and every
  ``steps``/``gamma``/``nu``/``omega`` works without re-exporting;
* ``decoder.onnx``: latents -> waveform.

Every graph has a dynamic batch; the text inputs a dynamic token length; the latent frame axis is
dynamic when the clip length changes it. Beside the graphs: ``model.json`` (the original card)
and ``export.json`` (graph names, input/output specs, opset, fp16, SHA-256 of every file).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.engine.checkpoint import CARD_FILE, sha256_file
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM
from soundctm.engine.files import write_dir_atomic
from soundctm.errors import SoundCTMError
from soundctm.events import Callback, Message, emit

EXPORT_FILE = "export.json"
EXPORT_FORMAT = "soundctm-onnx"
EXPORT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
GRAPHS = ("text_encoder", "network", "decoder")
#: Largest |torch - onnxruntime| accepted on the export example, relative to max(1, |torch|)
#: (float16 networks: ``FP16_CHECK_TOLERANCE``).
CHECK_TOLERANCE = 1e-3
FP16_CHECK_TOLERANCE = 5e-2
#: Decoders that retrieve phase iteratively (``autoencoder.phase_retrieval``, e.g. Griffin-Lim)
#: are checked on the spectrogram: largest accepted spectral convergence
#: ``||S_ort| - |S_torch||_F / ||S_torch||_F`` between the two runtimes' outputs.
#: Measured: 0.012 for the default codec (n_fft 1024, hop 512, 32 iterations) on SynthCaps clips,
#: below its own Griffin-Lim error (about 0.07 against the target spectrogram).
SPECTRAL_CHECK_TOLERANCE = 5e-2
SPECTRAL_N_FFT = 1024


class ExportError(SoundCTMError):
    """A component cannot be exported (the message names it), or an export is unusable."""


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the package {module!r}, which is not installed; "
            "run `pip install 'soundctm[onnx]'`"
        ) from exc


#: The fewest latent frames an exported graph accepts (0.32 s with the mel codec), unless the
#: model's own clip is shorter.
MIN_FRAMES = 32


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """One line of an exception: for torch.onnx's long reports, the exception summary and the
    line of model code that raised it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if "## Exception summary" in lines:
        rest = lines[lines.index("## Exception summary") + 1 :]
        line = rest[0] if rest else line
        where = next((ln for ln in rest if ln.startswith('File "')), None)
        if where is not None:
            line = f"{line} [{where}]"
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------- graph modules
class TextEncoderGraph(nn.Module):
    """``input_ids [B, L] int64, attention_mask [B, L] int64 -> tokens [B, L, D] float32``: the
    last hidden states of a Hugging Face encoder (the tokenizer runs on the host)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state.float()


class HalfBackbone(nn.Module):
    """A copy of ``backbone`` in float16: latents and text tokens are cast to float16, the
    per-sample ``c_noise`` values and ``omega`` stay float32 (the backbone casts its own
    embeddings), and the output is cast back to float32."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(backbone).half()

    def forward(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
    ) -> Tensor:
        half = Conditioning(cond.tokens.half(), cond.mask)
        return self.inner(x.half(), t_noise, s_noise, omega, half).float()


class NetworkGraph(nn.Module):
    """``(x, t, s, omega, tokens, mask) -> g(x, t, s)``, the preconditioned CTM network
    ``c_skip(t) x + c_out(t) F(c_in(t) x; c_noise(t), c_noise(s), omega)`` (method.md §2-3).

    For a teacher ``s`` and ``omega`` are ignored and the output is the denoiser ``D(x, t)``.
    The preconditioning is computed in float32 even when the backbone runs in float16.
    """

    def __init__(self, ctm: CTM) -> None:
        super().__init__()
        self.ctm = ctm

    def forward(
        self, x: Tensor, t: Tensor, s: Tensor, omega: Tensor, tokens: Tensor, mask: Tensor
    ) -> Tensor:
        return self.ctm.g(x, t, s, Conditioning(tokens, mask), omega)


class DecoderGraph(nn.Module):
    """``latents [B, *latent_shape] -> audio [B, samples]`` (the autoencoder's decode)."""

    def __init__(self, autoencoder: Any) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latents: Tensor) -> Tensor:
        audio = self.autoencoder.decode(latents)
        return audio.reshape(audio.shape[0], -1).float()


# ---------------------------------------------------------------------------- helpers
def phase_retrieval(autoencoder: Any) -> bool:
    """Whether the decoder retrieves phase iteratively (``autoencoder.phase_retrieval``): its
    export is then checked on the spectrogram, not sample by sample."""
    return bool(getattr(autoencoder, "phase_retrieval", False))


def text_encoder_exportable(encoder: Any) -> str | None:
    """Why ``encoder`` cannot be exported as a token-id graph, or None if it can.

    Exportable encoders are :class:`~soundctm.builtin.text.TransformersTextEncoder`
    (``minilm``, ``t5`` and subclasses that keep its tokenisation and forward pass)."""
    from soundctm.builtin.text import TransformersTextEncoder

    if not isinstance(encoder, TransformersTextEncoder):
        return (
            "it maps strings to token states in Python, so it is no graph; only Hugging Face "
            "token-id encoders (minilm, t5: TransformersTextEncoder) can be exported"
        )
    for method in ("encode_prompts", "_run", "token_ids"):
        if getattr(type(encoder), method) is not getattr(TransformersTextEncoder, method):
            return f"it overrides {method}, so its graph would differ from its Python code"
    if not hasattr(encoder.tokenizer, "save_pretrained"):
        return "its tokenizer cannot be saved (no save_pretrained)"
    return None


def frame_axes(autoencoder: Any, seconds: float, max_seconds: float) -> list[int]:
    """The latent axes (0-based, batch excluded) whose size changes with the clip length."""
    a = tuple(autoencoder.latent_shape(max_seconds))
    b = tuple(autoencoder.latent_shape(min(seconds, max_seconds / 2)))
    return [i for i, (p, q) in enumerate(zip(a, b, strict=True)) if p != q]


def samples_per_frame(autoencoder: Any, sample_rate: int, seconds: float, max_seconds: float):
    """``k`` such that ``frames = ceil(round(seconds * sample_rate) / k)`` on the (single) frame
    axis for every length tried, or None (the exported model then only makes ``seconds`` clips)."""
    axes = frame_axes(autoencoder, seconds, max_seconds)
    if len(axes) != 1:
        return None
    axis = axes[0]
    n_max = round(max_seconds * sample_rate)
    k = round(n_max / autoencoder.latent_shape(max_seconds)[axis])
    if k < 1:
        return None
    for frac in (0.05, 0.13, 0.25, 0.31, 0.5, 0.77, 1.0):
        secs = seconds if frac == 1.0 else max_seconds * frac
        n = round(secs * sample_rate)
        if autoencoder.latent_shape(secs)[axis] != max(1, math.ceil(n / k)):
            return None
    return k


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
    output: str,
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
                output_names=[output],
                external_data=True,
                verbose=False,
                report=False,
            )
    except Exception as exc:
        raise ExportError(
            f"cannot export the {component} {name!r}: torch.onnx failed ({_first_line(exc)})"
        ) from exc
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(
            f"cannot export the {component} {name!r}: onnx.checker rejects the graph "
            f"({_first_line(exc)})"
        ) from exc
    return _compare(component, name, module, args, path, tolerance, spectral)


def waveform_spectral_convergence(reference: Tensor, estimate: Tensor) -> float:
    """``||S(estimate)| - |S(reference)||_F / ||S(reference)||_F`` over STFT magnitudes of
    waveforms ``[B, n]`` (Sturmel & Daudet 2011, the Griffin-Lim literature's consistency
    measure): 0 when both have the same spectrogram, whatever their phases. (The `mel` codec's
    ``spectral_convergence`` compares given magnitudes per clip; this one takes waveforms.)"""
    n_fft = min(SPECTRAL_N_FFT, 1 << max(1, reference.shape[-1].bit_length() - 1))
    window = torch.hann_window(n_fft)

    def mag(x: Tensor) -> Tensor:
        x = x.reshape(-1, x.shape[-1]).double()
        return torch.stft(
            x, n_fft, max(1, n_fft // 4), window=window.double(), return_complex=True
        ).abs()

    ref, est = mag(reference), mag(estimate)
    return float(torch.linalg.norm(est - ref) / torch.linalg.norm(ref).clamp_min(1e-12))


def _compare(
    component: str,
    name: str,
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    tolerance: float = CHECK_TOLERANCE,
    spectral: bool = False,
) -> float:
    """Max |onnxruntime - torch| of the graph at ``path`` on ``args`` (raises if too large).

    With ``spectral`` (phase-retrieval decoders) the outputs are compared by
    :func:`waveform_spectral_convergence` against ``SPECTRAL_CHECK_TOLERANCE`` instead:
    iterative phase retrieval lets rounding pick different, equally valid phases in the two
    runtimes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    params = list(dynamic_input_names(module))
    feeds = {k: v.detach().cpu().numpy() for k, v in zip(params, args, strict=True) if k in names}
    got = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad():
        ref = module(*args).detach().float().cpu()
    if got.shape != ref.shape:
        raise ExportError(
            f"cannot export the {component} {name!r}: the graph returns shape "
            f"{tuple(got.shape)}, torch {tuple(ref.shape)}"
        )
    if spectral and ref.numel():
        diff = waveform_spectral_convergence(ref, got)
        if not diff <= SPECTRAL_CHECK_TOLERANCE:
            raise ExportError(
                f"cannot export the {component} {name!r}: the spectrograms of its onnxruntime "
                f"and torch outputs differ by {diff:.3g} (spectral convergence, limit "
                f"{SPECTRAL_CHECK_TOLERANCE:g}) on the export example"
            )
        return diff
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    scale = max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
    if not diff <= tolerance * scale:
        raise ExportError(
            f"cannot export the {component} {name!r}: onnxruntime and torch disagree by "
            f"{diff:.3g} on the export example; the graph does not reproduce the module"
        )
    return diff


def _decoder_example(autoencoder: Any, sample_rate: int, seconds: float, like: Tensor) -> Tensor:
    """Latents to check the decoder on: the encoding of a tone in noise when the autoencoder can
    encode (decoders such as Griffin-Lim are ill-conditioned on random latents), else noise."""
    if callable(getattr(autoencoder, "encode", None)):
        n = round(seconds * sample_rate)
        g = torch.Generator().manual_seed(1)
        t = torch.arange(n, dtype=torch.float32) / sample_rate
        audio = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (220.0, 880.0)])
        audio = audio + 0.05 * torch.randn(audio.shape, generator=g)
        with torch.no_grad():
            latents = autoencoder.encode(audio.to(like.device)).to(like.dtype)
        if latents.shape == like.shape:
            return latents
    return like * 0.5


def dynamic_input_names(module: nn.Module) -> list[str]:
    """The graph input names of a graph module: its forward's parameter names."""
    import inspect

    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


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
    why = text_encoder_exportable(pipe.text_encoder)
    if why is not None:
        raise ExportError(f"cannot export the text_encoder {names['text_encoder']!r}: {why}")
    if not callable(getattr(pipe.autoencoder, "decode", None)):
        raise ExportError(
            f"cannot export the autoencoder {names['autoencoder']!r}: it has no decode method"
        )

    device = pipe.device
    encoder = pipe.text_encoder
    seconds, max_seconds = card.seconds, card.max_seconds
    latent = tuple(int(n) for n in pipe.latent_shape(seconds))
    axes = frame_axes(pipe.autoencoder, seconds, max_seconds)
    spf = samples_per_frame(pipe.autoencoder, card.sample_rate, seconds, max_seconds)
    max_latent = tuple(int(n) for n in pipe.latent_shape(max_seconds))

    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=max(2, int(encoder.max_length)))
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
    x = torch.randn((2, *latent), generator=g).to(device)
    tokens = torch.randn(2, 5, int(encoder.dim), generator=g).to(device)
    mask = torch.ones(2, 5, dtype=torch.bool, device=device)
    mask[1, 3:] = False
    t = torch.tensor([2.0, 0.5], device=device)
    s = torch.tensor([0.3, 0.1], device=device)
    omega = torch.tensor([3.0, 5.0], device=device)
    ids = torch.tensor(
        [encoder.token_ids("a dog barks in the distance")] * 2, dtype=torch.long, device=device
    )

    backbone = pipe.ctm.backbone
    if fp16:
        try:
            backbone = HalfBackbone(backbone)
        except Exception as exc:  # pragma: no cover - deepcopy/half of a plain module
            raise ExportError(
                f"cannot export the backbone {names['backbone']!r} in float16 "
                f"({_first_line(exc)}); export without --fp16"
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
            "denoised",
            tmp / "network.onnx",
            opset,
            FP16_CHECK_TOLERANCE if fp16 else CHECK_TOLERANCE,
        )
        emit(callback, Message(f"exporting the autoencoder {names['autoencoder']!r} (decoder)"))
        latents = _decoder_example(pipe.autoencoder, card.sample_rate, seconds, x)
        check_diffs["decoder"] = _export_graph(
            "autoencoder",
            names["autoencoder"],
            DecoderGraph(pipe.autoencoder),
            (latents,),
            {"latents": latent_dims},
            "audio",
            tmp / "decoder.onnx",
            opset,
            spectral=phase_retrieval(pipe.autoencoder),
        )
        emit(callback, Message(f"exporting the text_encoder {names['text_encoder']!r}"))
        check_diffs["text_encoder"] = _export_graph(
            "text_encoder",
            names["text_encoder"],
            TextEncoderGraph(encoder.model),
            (ids, torch.ones_like(ids)),
            {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
            "tokens",
            tmp / "text_encoder.onnx",
            opset,
        )
        try:
            encoder.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        except Exception as exc:
            raise ExportError(
                f"cannot export the text_encoder {names['text_encoder']!r}: saving its tokenizer "
                f"failed ({_first_line(exc)})"
            ) from exc
        original = pipe.path / CARD_FILE if pipe.path is not None else None
        if original is not None and original.is_file():
            shutil.copyfile(original, tmp / CARD_FILE)
        else:
            (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
        tok = encoder.tokenizer
        fallback = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
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
            },
            "text": {
                "tokenizer": TOKENIZER_DIR,
                "max_length": int(encoder.max_length),
                "exact": bool(encoder.exact),
                "dim": int(encoder.dim),
                "pad_token_id": int(tok.pad_token_id or 0),
                "fallback_token_id": None if fallback is None else int(fallback),
            },
            "graphs": {k: {"file": f"{k}.onnx", **_io_spec(tmp / f"{k}.onnx")} for k in GRAPHS},
            "export_check_max_abs_diff": check_diffs,
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
    "EXPORT_FILE",
    "EXPORT_FORMAT",
    "GRAPHS",
    "DecoderGraph",
    "ExportError",
    "NetworkGraph",
    "TextEncoderGraph",
    "export_onnx",
    "text_encoder_exportable",
]
