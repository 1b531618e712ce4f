"""The text-to-sound pipeline: the components a checkpoint names, composed.

A :class:`Pipeline` builds, loads, saves and moves torch components; generation is the
:class:`~soundctm.engine.sampler.Sampler` it holds (the same one the onnxruntime pipeline holds),
reached through the methods of :class:`~soundctm.engine.sampler.SamplingAPI`. Sampling
parameters are arguments of each call, never stored state; :meth:`Pipeline.resolve` returns a
:class:`~soundctm.engine.plan.SamplingPlan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.engine.checkpoint import (
    CARD_FILE,
    COMPONENT_KINDS,
    ComponentCard,
    ModelCard,
    SamplingDefaults,
    card_sha256,
    read_card,
    read_weights,
    save_checkpoint,
)
from soundctm.engine.components import checkpoint_weights, expand_params
from soundctm.engine.ctm import CTM, STUDENT, TEACHER
from soundctm.engine.hub import is_hub_id
from soundctm.engine.hub import resolve as resolve_hub
from soundctm.engine.plan import GAMMA_SOLVER, TEACHER_SOLVER, SampleParams, SamplingPlan
from soundctm.engine.sampler import Generation, Sampler, SamplingAPI
from soundctm.engine.sizes import check_sizes
from soundctm.engine.weights import build_with_state
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.plugins.registry import Registry, get_registry

#: The steps of a freshly built model's defaults: one jump for a student, 40 Heun steps else.
STUDENT_STEPS, TEACHER_STEPS = 1, 40


class Pipeline(SamplingAPI):
    """A CTM (or teacher) model with its text encoder and autoencoder."""

    def __init__(
        self,
        card: ModelCard,
        backbone: nn.Module,
        text_encoder: Any,
        autoencoder: Any,
        *,
        path: Path | None = None,
        registry: Registry | None = None,
    ) -> None:
        ae_rate = getattr(autoencoder, "sample_rate", None)
        if ae_rate != card.sample_rate:
            raise CheckpointError(
                f"the card says {card.sample_rate} Hz but autoencoder "
                f"{card.components['autoencoder'].name!r} produces {ae_rate} Hz; fix model.json"
            )
        self.ctm = CTM(backbone, card.sigma_data, card.kind).eval()
        self.sampler = Sampler(
            card, self.ctm, text_encoder, autoencoder, registry=registry or get_registry()
        )
        self.path = Path(path) if path is not None else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        *,
        kind: str,
        backbone: ComponentCard | tuple[str, dict[str, Any]],
        text_encoder: ComponentCard | tuple[str, dict[str, Any]],
        autoencoder: ComponentCard | tuple[str, dict[str, Any]],
        sigma_data: float,
        seconds: float,
        max_seconds: float | None = None,
        defaults: SamplingDefaults | None = None,
        provenance: dict[str, Any] | None = None,
        registry: Registry | None = None,
        weights: dict[str, dict[str, Tensor]] | None = None,
    ) -> Pipeline:
        """Build freshly initialised components by plugin name and parameters.

        ``weights`` (by component kind: ``backbone``, ``text_encoder``, ``autoencoder``) are
        loaded strictly into the components they name, which are then built lazily (on the meta
        device, the tensors assigned: :func:`~soundctm.engine.weights.build_with_state`), as a
        converter of released weights wants."""
        registry = registry or get_registry()
        comps = {
            k: expand_component(
                registry,
                k,
                c if isinstance(c, ComponentCard) else ComponentCard(name=c[0], params=dict(c[1])),
            )
            for k, c in zip(COMPONENT_KINDS, (backbone, text_encoder, autoencoder), strict=True)
        }
        weights = weights or {}
        unknown = set(weights) - set(COMPONENT_KINDS)
        if unknown:
            raise InvalidArgumentError(
                f"weights for unknown component kinds {sorted(unknown)}; use "
                f"{', '.join(COMPONENT_KINDS)}"
            )
        built = {
            k: build_with_state(
                lambda k=k, c=c: registry.build(k, c.name, **c.params),
                weights.get(k, {}),
                f"{k} {c.name!r}",
            )[0]
            for k, c in comps.items()
        }
        if defaults is None:
            student = kind == STUDENT
            defaults = SamplingDefaults(
                solver=GAMMA_SOLVER if student else TEACHER_SOLVER,
                steps=STUDENT_STEPS if student else TEACHER_STEPS,
            )
        card = ModelCard(
            kind=kind,  # type: ignore[arg-type]
            sigma_data=sigma_data,
            sample_rate=int(built["autoencoder"].sample_rate),
            seconds=seconds,
            max_seconds=max_seconds if max_seconds is not None else seconds,
            components=comps,
            defaults=defaults,
            provenance=dict(provenance or {}),
        )
        return cls(
            card, built["backbone"], built["text_encoder"], built["autoencoder"], registry=registry
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        verify: bool = True,
        registry: Registry | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Pipeline:
        """Rebuild a pipeline from a checkpoint directory (or a hub id ``hf:OWNER/REPO[@REV]``,
        see :mod:`soundctm.engine.hub`); the card is all it needs.

        Components are built lazily (:func:`~soundctm.engine.weights.build_with_state`: on the
        meta device, the stored tensors assigned as they are), so a large network costs no
        random initialisation. ``dtype`` (``float32``, ``bfloat16``, ``float16``; ``None``: the
        dtype the component is built with, float32, whatever the file stores) casts the
        backbone, the network that dominates memory and time; the text encoder and the
        autoencoder stay as built (the sampler casts between them).

        The card is first checked against the weights files (:func:`~soundctm.engine.sizes.
        check_sizes`), so an absurd card fails before anything is allocated. Every weights file
        must lie inside ``path`` and, with ``verify`` (the default), match
        the SHA-256 the card lists for it (a missing hash is an error). ``verify=False`` is the
        explicit opt-out: it loads files without checking (or needing) their hashes.
        """
        if is_hub_id(path):
            path = resolve_hub(str(path), registry=registry).path
        path = Path(path)
        card = read_card(path)
        registry = registry or get_registry()
        if card.lora is not None:  # an adapter: the parent's weights with it on top
            return cls._load_lora(
                path, card, device=device, verify=verify, registry=registry, dtype=dtype
            )
        check_sizes(path, card, registry)  # before anything is built or allocated
        want = parse_dtype(dtype) if dtype is not None else None
        built = {}
        for kind in COMPONENT_KINDS:
            comp = card.components[kind]
            state = read_weights(path, card, kind, verify=verify)
            built[kind], _ = build_with_state(
                lambda kind=kind, comp=comp: registry.build(kind, comp.name, **comp.params),
                state,
                f"{kind} {comp.name!r} in {path}",
                want if kind == "backbone" else None,
            )
        if want is not None and isinstance(built["backbone"], nn.Module):
            built["backbone"] = built["backbone"].to(want)
        pipe = cls(
            card,
            built["backbone"],
            built["text_encoder"],
            built["autoencoder"],
            path=path,
            registry=registry,
        )
        return pipe.to(device)

    @classmethod
    def _load_lora(
        cls,
        path: Path,
        card: ModelCard,
        *,
        device: str | torch.device,
        verify: bool,
        registry: Registry,
        dtype: str | torch.dtype | None,
    ) -> Pipeline:
        """A LoRA checkpoint (``card.lora``): its parent, checked by card hash, with the adapter
        of ``path`` put on its backbone (:mod:`soundctm.engine.lora`)."""
        from soundctm.engine.lora import add_lora, load_adapter

        lora = card.lora
        assert lora is not None
        parent = parent_folder(lora.parent, path, registry)
        if not (parent / CARD_FILE).is_file():
            raise CheckpointError(
                f"{path} is a LoRA adapter of {lora.parent}, which is not there; put the parent "
                "model there (or merge the adapter where it is: soundctm pack --merge-lora)"
            )
        digest = card_sha256(parent)
        if digest != lora.parent_card_sha256.lower():
            raise CheckpointError(
                f"{path} is a LoRA adapter of {lora.parent}, whose model.json has changed "
                f"(SHA-256 {digest[:12]}..., the adapter was trained on "
                f"{lora.parent_card_sha256[:12]}...); load it on the model it was trained from"
            )
        base = cls.load(parent, verify=verify, registry=registry)
        for kind in COMPONENT_KINDS:
            have, want = base.card.components[kind], card.components[kind]
            if (have.name, have.params) != (want.name, want.params):
                raise CheckpointError(
                    f"{path}: its {kind} {want.name!r} is not the parent's {have.name!r} "
                    f"{have.params}; the card is damaged"
                )
        backbone = add_lora(base.ctm.backbone, lora.layers, lora.rank, lora.alpha)
        load_adapter(backbone, read_weights(path, card, "backbone", verify=verify), str(path))
        if dtype is not None:
            backbone = backbone.to(parse_dtype(dtype))
        pipe = cls(
            card, backbone, base.text_encoder, base.autoencoder, path=path, registry=registry
        )
        return pipe.to(device)

    def save(self, path: str | Path, *, provenance: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint directory atomically (a crash leaves no half checkpoint). A
        LoRA pipeline (``card.lora``) writes only its adapter; the parent holds the rest."""
        card = self.card.model_copy(deep=True)
        card.provenance.update(provenance or {})
        if card.lora is not None:
            from soundctm.engine.lora import adapter_state

            weights = {
                "backbone": adapter_state(self.ctm.backbone),
                "text_encoder": {},
                "autoencoder": {},
            }
        else:
            weights = {
                "backbone": self.ctm.backbone.state_dict(),
                "text_encoder": checkpoint_state(self.text_encoder),
                "autoencoder": checkpoint_state(self.autoencoder),
            }
        out = save_checkpoint(Path(path), card, weights)
        self.path = out
        return out

    def to(self, device: str | torch.device) -> Pipeline:
        """Move every torch component to ``device``."""
        device = torch.device(device)
        for comp in (self.ctm, self.text_encoder, self.autoencoder):
            if isinstance(comp, nn.Module):
                comp.to(device)
        self.device = device
        return self


#: The dtypes a backbone may compute in, by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` (or the torch dtype) -> the torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    found = DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if found is None:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {str(dtype)!r}")
    return found


def parent_folder(parent: str, path: Path, registry: Registry | None = None) -> Path:
    """The local folder of a LoRA checkpoint's ``parent`` (a hub id, or a folder: a relative
    one is taken from the LoRA checkpoint at ``path``)."""
    if is_hub_id(parent):
        return resolve_hub(parent, registry=registry).path
    folder = Path(parent)
    return folder if folder.is_absolute() else Path(path) / folder


def expand_component(registry: Registry, kind: str, card: ComponentCard) -> ComponentCard:
    """The card with explicit parameters: a factory may offer ``expand_params(params)`` to turn
    shorthands (such as a size preset) into its full keyword arguments."""
    params = expand_params(registry.load(kind, card.name), card.params)
    return card if params is card.params else ComponentCard(name=card.name, params=params)


def checkpoint_state(component: Any) -> dict[str, Tensor]:
    """The weights a component stores in a checkpoint (none if it loads them from elsewhere)."""
    if not isinstance(component, nn.Module) or not checkpoint_weights(component):
        return {}
    return component.state_dict()


def load_pipeline(path: str | Path, *, device: str | torch.device = "cpu") -> Pipeline:
    """Load a checkpoint directory (see :meth:`Pipeline.load`)."""
    return Pipeline.load(path, device=device)


__all__ = [
    "STUDENT",
    "TEACHER",
    "Generation",
    "Pipeline",
    "SampleParams",
    "SamplingPlan",
    "expand_component",
    "load_pipeline",
]
