"""Run an exported model (docs/onnx.md) with onnxruntime, through the engine's sampler.

:class:`OrtPipeline` holds the same :class:`~soundctm.engine.sampler.Sampler` as the torch
:class:`~soundctm.engine.pipeline.Pipeline`, with three graph-backed components: argument
validation, the Karras grids, per-sample CPU generators (:mod:`soundctm.engine.noise`),
classifier-free guidance / nu-sampling (:class:`~soundctm.engine.guidance.GuidedModel`), the
jump ``G`` (:class:`~soundctm.engine.ctm.TrajectoryModel`) and the solvers of
:mod:`soundctm.engine.solvers` are the very same code. Only ``g(x, t, s)``, the token states and
the decoder run in the graphs, so the same prompt and seed give the same audio as the torch
pipeline up to float rounding.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from soundctm.engine.checkpoint import (
    ModelCard,
    check_format_version,
    inside_file,
    read_card,
    sha256_file,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import TrajectoryModel, as_batch
from soundctm.engine.sampler import Sampler, SamplingAPI
from soundctm.errors import CheckpointError, InvalidArgumentError, SoundCTMError
from soundctm.export.onnx import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    GRAPHS,
    MAGNITUDE_GRAPH,
)
from soundctm.plugins.registry import Registry

#: Short provider names accepted by :func:`resolve_providers`.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class Graph(Protocol):
    """What the pipeline needs of a graph: its input names and ``run(feeds) -> first output``."""

    input_names: list[str]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


def is_exported(path: str | Path) -> bool:
    """True if ``path`` is a directory written by :func:`~soundctm.export.onnx.export_onnx`."""
    spec = Path(path) / EXPORT_FILE
    if not spec.is_file():
        return False
    try:
        return json.loads(spec.read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def read_export(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and check ``export.json`` (with ``verify``, every listed file's SHA-256).

    ``format_version`` must be a positive integer, and every file it names (``files``,
    ``graphs.*.file``, ``text.tokenizer``) must be a relative path inside ``path`` (see
    :func:`~soundctm.engine.checkpoint.inside_file`); a graph file must be listed in ``files``.
    """
    path = Path(path)
    if not is_exported(path):
        raise CheckpointError(
            f"{str(path)!r} is not an exported soundctm model (no valid {EXPORT_FILE}); "
            "create one with `soundctm export --model CHECKPOINT --out DIR`"
        )
    where = path / EXPORT_FILE
    spec = json.loads(where.read_text(encoding="utf-8"))
    check_format_version(spec.get("format_version"), where, EXPORT_VERSION)
    files = spec.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{where} is invalid at files: it must map file names to SHA-256")
    for name in files:
        inside_file(path, name, field="files", where=where)
    graphs = spec.get("graphs", {})
    for graph, info in graphs.items() if isinstance(graphs, dict) else []:
        name = info.get("file") if isinstance(info, dict) else None
        inside_file(path, name, field=f"graphs.{graph}.file", where=where)
        if verify and name not in files:
            raise CheckpointError(
                f"{where} is invalid at graphs.{graph}.file: {name!r} has no SHA-256 in files, so "
                "it cannot be verified; re-export the model"
            )
    host = spec.get("phase_retrieval")
    if host is not None:
        graph = host.get("graph") if isinstance(host, dict) else None
        name = graph.get("file") if isinstance(graph, dict) else None
        inside_file(path, name, field="phase_retrieval.graph.file", where=where)
        if verify and name not in files:
            raise CheckpointError(
                f"{where} is invalid at phase_retrieval.graph.file: {name!r} has no SHA-256 in "
                "files, so it cannot be verified; re-export the model"
            )
    text = spec.get("text", {})
    if isinstance(text, dict) and "tokenizer" in text:
        inside_file(path, text["tokenizer"], field="text.tokenizer", where=where)
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(
                f"exported model {str(path)!r} lacks {name}; copy the whole folder again"
            )
        if verify and sha256_file(file) != digest:
            raise CheckpointError(
                f"{file} is corrupt or truncated (its SHA-256 differs from {EXPORT_FILE}); "
                "copy the exported model again or re-export it"
            )
    return spec


def resolve_providers(providers: str | Sequence[str] | None = None) -> list[str]:
    """onnxruntime execution providers, in order of preference, always ending with the CPU.

    ``None`` picks CUDA when onnxruntime-gpu is installed and torch sees a GPU, else the CPU.
    Names are ``cpu``, ``cuda``, ``tensorrt`` or onnxruntime's own provider names.
    """
    ort = _onnxruntime()
    available = list(ort.get_available_providers())
    if providers is None:
        gpu = "CUDAExecutionProvider" in available and torch.cuda.is_available()
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        )
    wanted = [providers] if isinstance(providers, str) else list(providers)
    out: list[str] = []
    for name in wanted:
        full = PROVIDERS.get(name.lower(), name)
        if full not in PROVIDERS.values() and full not in available:
            raise InvalidArgumentError(
                f"unknown onnxruntime provider {name!r}; choose from {', '.join(PROVIDERS)}"
            )
        if full not in available:
            short = {v: k for k, v in PROVIDERS.items()}
            have = ", ".join(short.get(a, a) for a in available)
            raise InvalidArgumentError(
                f"onnxruntime provider {name!r} is not available here (available: {have}); "
                "CUDA and TensorRT need `pip install 'soundctm[gpu]'` (onnxruntime-gpu, never "
                "beside onnxruntime) and an NVIDIA GPU"
            )
        if full not in out:
            out.append(full)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def providers_for_device(device: str | None) -> list[str] | None:
    """The providers for a ``--device`` value: ``cpu`` -> CPU, ``cuda``/``cuda:N`` -> CUDA,
    ``tensorrt`` -> onnxruntime's TensorRT provider, ``auto``/None -> the default choice."""
    if device is None or device == "auto":
        return None
    kind = device.split(":")[0].lower()
    if kind not in PROVIDERS:
        raise InvalidArgumentError(
            f"device {device!r} is not usable with an exported model; use cpu, cuda or tensorrt"
        )
    return [kind]


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise SoundCTMError(
            "running an exported model needs onnxruntime, which is not installed; run "
            "`pip install 'soundctm[onnx]'` (or 'soundctm[gpu]' for onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """The onnxruntime session options of exported models: all graph optimisations, sequential
    execution (the graphs have no parallel branches worth a second pool), the CPU memory arena,
    ``threads`` intra-op threads (None: onnxruntime's default, one per physical core) and no
    spinning of idle pool threads (on a busy or shared machine a spinning thread takes CPU from
    the host's own work between graph calls; measured in docs/onnx.md, "Speed")."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtGraph:
    """One onnxruntime session; called with numpy feeds, returns its first output."""

    def __init__(self, path: Path, providers: Sequence[str], threads: int | None = None) -> None:
        ort = _onnxruntime()
        options = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:
            raise CheckpointError(
                f"onnxruntime cannot load {path} ({str(exc).strip().splitlines()[0]}); "
                "re-export the model with this soundctm"
            ) from exc
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: feeds[k] for k in self.input_names})[0]


# ---------------------------------------------------------------------------- components
def _numpy(x: Tensor, dtype: Any = np.float32) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy().astype(dtype, copy=False))


class GraphCTM(TrajectoryModel):
    """The network of an exported model: calling it runs the ``network`` graph, which computes
    ``g(x, t, s)``; ``denoise`` and the jump ``G(x, t, s) = (s/t) x + (1 - s/t) g`` (CTM eq. 7)
    are the engine's (:class:`~soundctm.engine.ctm.TrajectoryModel`)."""

    def __init__(self, graph: Graph, kind: str) -> None:
        self.graph = graph
        self.kind = kind

    def __call__(
        self,
        x: Tensor,
        t: float | Tensor,
        s: float | Tensor,
        cond: Conditioning,
        omega: float | Tensor | None = None,
    ) -> Tensor:
        """``g(x, t, s)`` from the graph; ``omega=None`` feeds 0 (a student's sampler always
        passes omega; a teacher's graph ignores it)."""
        b = x.shape[0]
        feeds = {
            "x": _numpy(x),
            "t": _numpy(as_batch(t, b, x)),
            "s": _numpy(as_batch(s, b, x)),
            "omega": _numpy(as_batch(0.0 if omega is None else omega, b, x)),
            "tokens": _numpy(cond.tokens),
            "mask": _numpy(cond.mask, np.bool_),
        }
        return torch.from_numpy(self.graph(feeds)).to(device=x.device, dtype=x.dtype)

    g = __call__


class GraphTextEncoder:
    """Tokenizer on the host, ``text_encoder`` graph for the token states.

    Tokenises as the exported encoder's ``TokenizerSpec`` says (engine/components.py: special
    tokens, truncation to ``max_length``, one EOS/pad for a prompt without tokens);
    with ``exact`` every prompt is encoded alone and unpadded, as the torch encoder does."""

    def __init__(self, graph: Graph, tokenizer: Any, text: dict[str, Any]) -> None:
        self.graph = graph
        self.tokenizer = tokenizer
        self.max_length = int(text["max_length"])
        self.exact = bool(text["exact"])
        self.dim = int(text["dim"])
        self.pad_token_id = int(text["pad_token_id"])
        self.fallback_token_id = text.get("fallback_token_id")
        self.cache_size = int(text.get("cache_size", 4096))
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    def token_ids(self, prompt: str) -> list[int]:
        ids = list(self.tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"])
        if not ids:
            if self.fallback_token_id is None:
                raise InvalidArgumentError(f"the tokenizer gives no tokens for {prompt!r}")
            ids = [int(self.fallback_token_id)]
        return ids

    def __call__(self, prompts: Sequence[str]) -> Conditioning:
        from soundctm.engine.dsp import pad_token_states

        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            ids = [self.token_ids(p) for p in missing]
            groups = [[i] for i in ids] if self.exact else [ids]
            fresh: list[Tensor] = []
            for group in groups:
                length = max(len(i) for i in group)
                batch = np.array([i + [self.pad_token_id] * (length - len(i)) for i in group])
                mask = np.array([[1] * len(i) + [0] * (length - len(i)) for i in group])
                out = self.graph({"input_ids": batch.astype(np.int64), "attention_mask": mask})
                fresh.extend(torch.from_numpy(out[r, : len(i)].copy()) for r, i in enumerate(group))
            for prompt, state in zip(missing, fresh, strict=True):
                self._cache[prompt] = state
        states = [self._cache[p] for p in prompts]
        for p in prompts:  # least recently used last out
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return pad_token_states([s.clone() for s in states], self.dim)


class GraphDecoder:
    """``decode(latents)`` on the ``decoder`` graph, and the latent shape of a clip length."""

    def __init__(self, graph: Graph, spec: dict[str, Any]) -> None:
        self.graph = graph
        self.sample_rate = int(spec["sample_rate"])
        self.seconds = float(spec["seconds"])
        latent = spec["latent"]
        self.shape = [int(n) for n in latent["shape"]]
        self.frame_axes = [int(a) for a in latent["frame_axes"]]
        self.samples_per_frame = latent.get("samples_per_frame")
        self.crop_to_clip = bool(latent.get("crop_to_clip", False))

    def latent_shape(self, seconds: float) -> tuple[int, ...]:
        """The latent shape at ``seconds``: ``frames = ceil(round(seconds * rate) / k)`` with
        ``k`` samples per frame (stored at export), or the export's clip length only."""
        if abs(seconds - self.seconds) < 1e-9:
            return tuple(self.shape)
        if self.samples_per_frame is None:
            raise InvalidArgumentError(
                f"this exported model only generates {self.seconds:g} s clips; leave seconds "
                "at its default"
            )
        n = round(seconds * self.sample_rate)
        shape = list(self.shape)
        shape[self.frame_axes[0]] = max(1, -(-n // int(self.samples_per_frame)))
        return tuple(shape)

    def decode(self, latents: Tensor) -> Tensor:
        return torch.from_numpy(self.graph({"latents": _numpy(latents)}))


class HostPhaseDecoder(GraphDecoder):
    """A Griffin-Lim decoder split at the phase retrieval: the ``decoder_magnitude`` graph gives
    the magnitude spectrogram, :func:`soundctm.export.phase.griffin_lim` (numpy/scipy FFT)
    the waveform, with the settings of ``export.json phase_retrieval``."""

    def __init__(self, graph: Graph, spec: dict[str, Any]) -> None:
        from soundctm.export.phase import GriffinLimSettings

        super().__init__(graph, spec)
        try:
            self.settings = GriffinLimSettings.from_spec(spec["phase_retrieval"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{EXPORT_FILE} is invalid at phase_retrieval ({exc}); re-export the model or "
                "load it with host_phase_retrieval=False"
            ) from exc

    def decode(self, latents: Tensor) -> Tensor:
        from soundctm.export.phase import griffin_lim

        magnitude = self.graph({"latents": _numpy(latents)})
        return torch.from_numpy(griffin_lim(magnitude, self.settings))


# ---------------------------------------------------------------------------- pipeline
class OrtPipeline(SamplingAPI):
    """An exported model run by onnxruntime (or TensorRT engines, see
    :func:`soundctm.export.tensorrt.load_tensorrt`).

    It holds the engine's :class:`~soundctm.engine.sampler.Sampler` over graph-backed
    components, so ``generate``, ``generate_batches``, ``refine``, ``resolve``, ``grid``,
    ``latent_shape`` and ``encode_text`` are the torch pipeline's. Host tensors stay on the
    CPU; the accelerator is chosen with ``providers``. It is not a training checkpoint: keep
    the original checkpoint folder for that (copy the exported folder as a whole).
    """

    def __init__(
        self,
        card: ModelCard,
        spec: dict[str, Any],
        graphs: dict[str, Graph],
        tokenizer: Any,
        *,
        path: Path | None = None,
        providers: Sequence[str] = (),
        registry: Registry | None = None,
    ) -> None:
        from soundctm.plugins.registry import get_registry

        if MAGNITUDE_GRAPH in graphs and "phase_retrieval" in spec:
            decoder: GraphDecoder = HostPhaseDecoder(graphs[MAGNITUDE_GRAPH], spec)
        else:
            decoder = GraphDecoder(graphs["decoder"], spec)
        if decoder.sample_rate != card.sample_rate:
            raise CheckpointError(
                f"{EXPORT_FILE} says {decoder.sample_rate} Hz but model.json says "
                f"{card.sample_rate} Hz; re-export the model"
            )
        self.spec = spec
        self.network = GraphCTM(graphs["network"], card.kind)
        self.sampler = Sampler(
            card,
            self.network,
            GraphTextEncoder(graphs["text_encoder"], tokenizer, spec["text"]),
            decoder,
            registry=registry or get_registry(),
        )
        self.path = Path(path) if path is not None else None
        self.providers = list(providers)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        providers: str | Sequence[str] | None = None,
        verify: bool = True,
        registry: Registry | None = None,
        host_phase_retrieval: bool = True,
        threads: int | None = None,
    ) -> OrtPipeline:
        """Load an exported directory; ``providers``: see :func:`resolve_providers`.

        ``host_phase_retrieval``: when the export has a Griffin-Lim decoder split for the host
        (``export.json phase_retrieval``), run its magnitude graph and the iteration in numpy
        (several times faster than onnxruntime's DFT); False, or an older export: the
        self-contained ``decoder.onnx``. ``threads``: intra-op threads per session (None:
        onnxruntime's default)."""
        path = Path(path)
        spec = read_export(path, verify=verify)
        chosen = resolve_providers(providers)
        names = list(GRAPHS)
        if host_phase_retrieval and "phase_retrieval" in spec:
            names[names.index("decoder")] = MAGNITUDE_GRAPH
        files = {name: spec["graphs"][name]["file"] for name in GRAPHS}
        if MAGNITUDE_GRAPH in names:
            files[MAGNITUDE_GRAPH] = spec["phase_retrieval"]["graph"]["file"]
        graphs = {name: OrtGraph(path / files[name], chosen, threads) for name in names}
        return cls.from_graphs(path, graphs, providers=chosen, spec=spec, registry=registry)

    @classmethod
    def from_graphs(
        cls,
        path: str | Path,
        graphs: dict[str, Graph],
        *,
        providers: Sequence[str] = (),
        spec: dict[str, Any] | None = None,
        registry: Registry | None = None,
    ) -> OrtPipeline:
        """An exported directory's card, spec and tokenizer with the given graph runners."""
        path = Path(path)
        spec = spec if spec is not None else read_export(path)
        card = read_card(path)
        return cls(
            card,
            spec,
            graphs,
            load_tokenizer(path / spec["text"]["tokenizer"]),
            path=path,
            providers=providers,
            registry=registry,
        )


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved at export (``tokenizer/``), loaded offline with transformers."""
    from transformers import AutoTokenizer

    from soundctm.engine.hf import quiet_transformers

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"the tokenizer in {path} cannot be loaded ({str(exc).strip().splitlines()[0]}); "
            "copy the exported model again or re-export it"
        ) from exc


def load_exported(path: str | Path, *, providers: str | Sequence[str] | None = None) -> OrtPipeline:
    """Load an exported model directory with onnxruntime (see :meth:`OrtPipeline.load`)."""
    return OrtPipeline.load(path, providers=providers)


__all__ = [
    "PROVIDERS",
    "GraphCTM",
    "GraphDecoder",
    "GraphTextEncoder",
    "HostPhaseDecoder",
    "OrtGraph",
    "OrtPipeline",
    "is_exported",
    "load_exported",
    "providers_for_device",
    "read_export",
    "resolve_providers",
    "session_options",
]
