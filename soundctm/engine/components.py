"""The contracts between the engine and the components a plugin provides, as typing Protocols.

Every component kind has one required protocol (:class:`Backbone`, :class:`TextEncoder`,
:class:`Autoencoder`, :class:`Solver`). What a component *may* offer beyond it is a capability
protocol of its own, checked with ``isinstance`` (they are ``runtime_checkable``) through the
small accessors below, so no other module probes components with ``getattr`` or
``inspect.signature``:

========================  ==============================================  =====================
capability                what it is                                      used by
========================  ==============================================  =====================
:class:`TeacherFeatures`  ``features(x, t_noise, cond) -> [tensor]``      feature distance
:class:`HasLastLayer`     ``last_layer``: the output weight ``W``         adaptive DSM weight
:class:`HasMaxFrames`     ``max_frames``: the longest latent it accepts   training data checks
:class:`ExpandsParams`    ``expand_params(params) -> params`` (factory)   cards (size presets)
:class:`CountsParameters` ``parameter_count(params) -> int`` (factory)    card size checks
:class:`OnnxExportable`   ``onnx_export() -> OnnxGraph``                  ``soundctm export``
:class:`PhaseRetrieval`   ``phase_retrieval``: decoder retrieves phase    export checks
:class:`HostPhaseRetrieval` ``magnitude`` + Griffin-Lim settings          host phase retrieval
:class:`CheckpointWeights` ``checkpoint_weights``: store weights or not   checkpoints
:class:`LoraTargets`      ``lora_targets``: layers LoRA adapts            ``--lora-rank``
solver options            keyword options beyond the shared signature     sampling plans
========================  ==============================================  =====================

The method is described in docs/method.md; the plugin guide in docs/plugins.md.
This module imports torch only for type checking.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from torch import Tensor, nn

    from soundctm.engine.conditioning import Conditioning
    from soundctm.events import Callback

#: The keyword arguments every solver takes; anything else in its signature is an option.
SOLVER_SIGNATURE = frozenset({"model", "x", "sigmas", "noise", "callback"})


# ---------------------------------------------------------------------------- required contracts
@runtime_checkable
class Backbone(Protocol):
    """The raw denoiser network ``F`` (EDM preconditioning lives in the engine, method.md §2).

    ``s_noise`` and ``omega`` are ``None`` for a teacher; a CTM student takes ``c_noise(s)`` and
    the guidance scale ``omega`` it was distilled for."""

    def __call__(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
    ) -> Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts to token states and mask (``""`` is the unconditional prompt)."""

    dim: int

    def __call__(self, prompts: Sequence[str]) -> Conditioning: ...


@runtime_checkable
class Encoder(Protocol):
    """The encoding half of an autoencoder: audio ``[B, n]`` -> latents ``[B, *latent_shape]``."""

    def encode(self, audio: Tensor) -> Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """The decoding half of an autoencoder (all that sampling and export need):
    latents ``[B, *latent_shape]`` -> audio ``[B, n]``."""

    def decode(self, latents: Tensor) -> Tensor: ...


@runtime_checkable
class Autoencoder(Encoder, Decoder, Protocol):
    """Audio <-> latents (a VAE together with its vocoder is one autoencoder)."""

    sample_rate: int

    def latent_shape(self, seconds: float) -> Sequence[int]: ...


class NoiseFn(Protocol):
    def __call__(self, like: Tensor) -> Tensor: ...


@runtime_checkable
class Solver(Protocol):
    """A sampler ``(model, x, sigmas, *, noise, callback, **options) -> x``.

    ``grid``: ``"ctm"`` (n+1 Karras points ending at sigma_min) or ``"edm"`` (n points then 0);
    ``requires``: ``"jump"`` (a CTM student) or ``"denoise"`` (any model). Mark functions with
    :func:`soundctm.engine.solvers.solver`; undeclared solvers default to ``edm``/``denoise``."""

    def __call__(
        self,
        model: Any,
        x: Tensor,
        sigmas: Tensor,
        *,
        noise: NoiseFn | None = None,
        callback: Callback | None = None,
    ) -> Tensor: ...


# ---------------------------------------------------------------------------- capabilities
@runtime_checkable
class TeacherFeatures(Protocol):
    """A backbone whose hidden features define the teacher-feature distance (method.md §4.5)."""

    def features(self, x: Tensor, t_noise: Tensor, cond: Conditioning) -> list[Tensor]: ...


@runtime_checkable
class HasLastLayer(Protocol):
    """A backbone that names its output weight ``W`` for the adaptive DSM weight
    (method.md §4.7)."""

    @property
    def last_layer(self) -> Tensor: ...


@runtime_checkable
class HasMaxFrames(Protocol):
    """A backbone that accepts at most ``max_frames`` latent frames (``None``: no limit)."""

    max_frames: int | None


@runtime_checkable
class LoraTargets(Protocol):
    """A backbone that names the ``nn.Linear`` layers LoRA adapts by default (``--lora-rank``):
    ``fnmatch`` patterns over its module names (its attention and feed-forward linears)."""

    lora_targets: tuple[str, ...]


@runtime_checkable
class ExpandsParams(Protocol):
    """A component factory that turns shorthand card parameters (a size preset) into its full
    keyword arguments, so cards are explicit."""

    def expand_params(self, params: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class CountsParameters(Protocol):
    """A component factory that says, without building anything, how many values the state dict
    of ``factory(**params)`` holds (so a checkpoint's card is checked against its weights file
    before any memory is allocated). Factories without it are counted by a build on torch's
    ``meta`` device."""

    def parameter_count(self, params: dict[str, Any]) -> int: ...


#: The graph contract of an exportable text encoder: ``input_ids [B, L] int64`` and
#: ``attention_mask [B, L] int64`` (1 for a token, 0 for padding) -> ``tokens [B, L, dim]``
#: float32. Dynamic axes are named ``"batch"`` and ``"length"``.
TEXT_GRAPH_INPUTS = ("input_ids", "attention_mask")
TEXT_GRAPH_OUTPUTS = ("tokens",)


@dataclass(frozen=True)
class TokenizerSpec:
    """How the host turns a prompt into the token ids of a text-encoder graph.

    ``save(folder)`` writes a Hugging Face tokenizer that ``AutoTokenizer.from_pretrained(folder,
    local_files_only=True)`` loads (a byte-level ``ByT5Tokenizer`` serves encoders without a
    vocabulary). The runtime tokenises a prompt as
    ``tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]``, replaces an empty
    result by ``[fallback_token_id]``, right-pads a batch with ``pad_token_id`` (mask 0) and, with
    ``exact``, feeds each prompt alone and unpadded. These fields are recorded in export.json
    (``text``)."""

    save: Callable[[Path], None]
    max_length: int
    pad_token_id: int
    fallback_token_id: int | None
    exact: bool = True


@dataclass(frozen=True)
class OnnxGraph:
    """What a component hands the exporter: a torch module to trace and how to call it.

    ``module(*example)`` is traced and checked against onnxruntime on ``example`` (tensors on the
    component's device); ``input_names`` are the module's forward parameters, ``output_names``
    name its outputs; ``dynamic`` maps an input name to ``{axis: name}`` of its dynamic axes;
    a text encoder's graph follows :data:`TEXT_GRAPH_INPUTS` / :data:`TEXT_GRAPH_OUTPUTS` and
    brings its host ``tokenizer``."""

    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    tokenizer: TokenizerSpec | None = None


@runtime_checkable
class OnnxExportable(Protocol):
    """A component that can describe itself as an ONNX graph (``soundctm export``).

    ``onnx_export`` raises (any exception, its first line says why) when this instance cannot
    be exported; the exporter reports it with the component's name."""

    def onnx_export(self) -> OnnxGraph: ...


@runtime_checkable
class PhaseRetrieval(Protocol):
    """An autoencoder whose decoder retrieves phase iteratively (Griffin-Lim): its export is
    checked on the spectrogram, not sample by sample."""

    phase_retrieval: bool


@runtime_checkable
class HostPhaseRetrieval(Protocol):
    """A decoder whose last stage is fast Griffin-Lim on a magnitude spectrogram, split so that
    an exported model can run the iteration on the host (numpy FFT, :mod:`soundctm.export.phase`)
    instead of in the graph: ``magnitude(latents)`` gives the spectrogram and
    ``griffin_lim_settings()`` the iteration's settings (None: not offered for this instance)."""

    def magnitude(self, latents: Tensor) -> Tensor: ...

    def griffin_lim_settings(self) -> dict[str, Any] | None: ...


@runtime_checkable
class CropsToClip(Protocol):
    """An autoencoder whose decoded audio may be longer than the clip asked for (it rounds the
    latent length up, as a UNet needs): the sampler crops it to ``round(seconds * rate)``."""

    crop_to_clip: bool


@runtime_checkable
class CheckpointWeights(Protocol):
    """A component that says whether its weights go into soundctm checkpoints (frozen encoders
    loaded from elsewhere say ``False``)."""

    checkpoint_weights: bool


# ---------------------------------------------------------------------------- accessors
def teacher_features(backbone: object) -> bool:
    """Whether ``backbone`` offers :class:`TeacherFeatures`."""
    return isinstance(backbone, TeacherFeatures)


def last_layer(backbone: object) -> Tensor | None:
    """The adaptive-weight layer of ``backbone``, or ``None`` if it names none."""
    return backbone.last_layer if isinstance(backbone, HasLastLayer) else None


def max_frames(backbone: object) -> int | None:
    """The most latent frames ``backbone`` accepts (``None``: no limit or not declared)."""
    return backbone.max_frames if isinstance(backbone, HasMaxFrames) else None


def expand_params(factory: object, params: dict[str, Any]) -> dict[str, Any]:
    """``factory.expand_params(params)`` when it offers :class:`ExpandsParams`, else ``params``."""
    if isinstance(factory, ExpandsParams):
        return dict(factory.expand_params(dict(params)))
    return params


def declared_parameter_count(factory: object, params: dict[str, Any]) -> int | None:
    """``factory.parameter_count(params)`` when it offers :class:`CountsParameters`, else
    ``None``."""
    if isinstance(factory, CountsParameters):
        return int(factory.parameter_count(dict(params)))
    return None


def onnx_exportable(component: object) -> bool:
    """Whether ``component`` offers :class:`OnnxExportable`."""
    return isinstance(component, OnnxExportable)


def onnx_graph(component: object) -> OnnxGraph | None:
    """``component.onnx_export()`` when it offers :class:`OnnxExportable`, else ``None``."""
    return component.onnx_export() if isinstance(component, OnnxExportable) else None


def phase_retrieval(autoencoder: object) -> bool:
    """Whether the decoder of ``autoencoder`` retrieves phase iteratively."""
    return isinstance(autoencoder, PhaseRetrieval) and bool(autoencoder.phase_retrieval)


def host_phase_retrieval(autoencoder: object) -> dict[str, Any] | None:
    """The Griffin-Lim settings of ``autoencoder`` for a host implementation, when it offers
    :class:`HostPhaseRetrieval` and settings for this instance; else None."""
    if isinstance(autoencoder, HostPhaseRetrieval):
        return autoencoder.griffin_lim_settings()
    return None


def crops_to_clip(autoencoder: object) -> bool:
    """Whether decoded audio of ``autoencoder`` is cropped to the clip length (default: no)."""
    return isinstance(autoencoder, CropsToClip) and bool(autoencoder.crop_to_clip)


def lora_targets(backbone: object) -> tuple[str, ...]:
    """The default LoRA layer patterns of ``backbone`` (empty: none declared)."""
    return tuple(backbone.lora_targets) if isinstance(backbone, LoraTargets) else ()


def checkpoint_weights(component: object) -> bool:
    """Whether a torch component's weights belong in the checkpoint (default: yes)."""
    return not isinstance(component, CheckpointWeights) or bool(component.checkpoint_weights)


def solver_grid(fn: object) -> Literal["ctm", "edm"]:
    """The grid a solver runs on (``"edm"`` unless declared)."""
    return "ctm" if getattr(fn, "grid", "edm") == "ctm" else "edm"


def solver_requires(fn: object) -> Literal["jump", "denoise"]:
    """What a solver needs of the model (``"denoise"`` unless declared)."""
    return "jump" if getattr(fn, "requires", "denoise") == "jump" else "denoise"


def solver_options(fn: Callable[..., Any]) -> frozenset[str]:
    """The keyword options a solver accepts beyond :data:`SOLVER_SIGNATURE`."""
    return frozenset(p for p in inspect.signature(fn).parameters if p not in SOLVER_SIGNATURE)


__all__ = [
    "SOLVER_SIGNATURE",
    "TEXT_GRAPH_INPUTS",
    "TEXT_GRAPH_OUTPUTS",
    "Autoencoder",
    "Backbone",
    "CheckpointWeights",
    "CountsParameters",
    "CropsToClip",
    "Decoder",
    "Encoder",
    "ExpandsParams",
    "HasLastLayer",
    "HasMaxFrames",
    "HostPhaseRetrieval",
    "LoraTargets",
    "OnnxExportable",
    "OnnxGraph",
    "PhaseRetrieval",
    "Solver",
    "TeacherFeatures",
    "TextEncoder",
    "TokenizerSpec",
    "checkpoint_weights",
    "crops_to_clip",
    "declared_parameter_count",
    "expand_params",
    "host_phase_retrieval",
    "last_layer",
    "lora_targets",
    "max_frames",
    "onnx_exportable",
    "onnx_graph",
    "phase_retrieval",
    "solver_grid",
    "solver_options",
    "solver_requires",
]
