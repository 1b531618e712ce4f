"""Starting a run from a pretrained model (``--init-from``) and freezing parameters (``--freeze``).

``--init-from MODEL`` names a checkpoint folder, an imported official model or a hub id
(``hf:OWNER/REPO[@REV][#VARIANT]``, resolved by :mod:`soundctm.engine.hub`). The run takes the
weights of some or all of MODEL's components (:func:`take_components`), with a fresh optimizer
and learning-rate schedule; a component taken must be the run's component exactly (plugin name
and parameters, then every tensor's name and shape), and the first difference is a one-line
error. A component taken that the run's settings do not name explicitly is MODEL's component
(:func:`parent_components`), so ``init_components = ["text_encoder", "autoencoder"]`` with a
DiT named in the config trains that DiT from scratch on MODEL's text encoder and codec.

Parameters are named ``<component>.<name>`` (``backbone.blocks.0.attn.qkv.weight``,
``text_encoder.model.embeddings...``); ``--freeze`` takes ``fnmatch`` patterns over those names.
The text encoder and the autoencoder are never trained, so they count as frozen whatever the
patterns say. No hub access or weights are read unless a run starts fresh.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.engine.checkpoint import (
    COMPONENT_KINDS,
    ComponentCard,
    LoraCard,
    ModelCard,
    card_sha256,
    read_card,
    read_weights,
)
from soundctm.engine.hub import is_hub_id
from soundctm.engine.hub import resolve as resolve_hub
from soundctm.engine.lora import add_lora, target_layers
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.events import Callback, ParameterReport, emit
from soundctm.training.rng import seeded_init


@dataclass(frozen=True)
class Parent:
    """The model a run starts from: its local folder, card and the provenance ``record``
    (``model`` as given, ``path`` or ``repo``/``revision``/``commit``, and ``card_sha256``)."""

    path: Path
    card: ModelCard
    record: dict[str, Any]


def resolve_parent(model: str | Path, registry: Any, callback: Callback | None = None) -> Parent:
    """The local checkpoint of ``model`` (a folder, or a hub id downloaded and converted as
    ``sample --model`` does) with its card, and what the new card records of it."""
    record: dict[str, Any] = {"model": str(model)}
    if is_hub_id(model):
        found = resolve_hub(str(model), registry=registry, callback=callback)
        path = found.path
        record.update(found.record())
    else:
        path = Path(model)
        if not path.exists():
            raise CheckpointError(
                f"--init-from {str(model)!r} does not exist; give a checkpoint folder (one with "
                "model.json), an imported model or a hub id hf:OWNER/REPO"
            )
        record["path"] = str(path.resolve())
    card = read_card(path)
    if "repo" in record and "variant" not in record and card.provenance.get("variant"):
        record["variant"] = card.provenance["variant"]  # the importer's default, named
    record["card_sha256"] = card_sha256(path)
    return Parent(path, card, record)


def check_kinds(kinds: Iterable[str], what: str = "init_components") -> list[str]:
    """``kinds`` as a list of component kinds, refusing an unknown one in one line."""
    out = list(kinds)
    bad = [k for k in out if k not in COMPONENT_KINDS]
    if bad or not out:
        raise InvalidArgumentError(
            f"{what} {bad[0] if bad else out!r} is not a component; choose from "
            f"{', '.join(COMPONENT_KINDS)}"
        )
    return out


def component_mismatch(kind: str, parent: ComponentCard, run: ComponentCard) -> str | None:
    """The first difference between MODEL's component ``kind`` and the run's, in words
    (``None``: the same plugin and parameters)."""
    if parent.name != run.name:
        return f"{kind} is {parent.name!r} there but {run.name!r} in this run"
    for key in sorted(set(parent.params) | set(run.params)):
        have, want = parent.params.get(key, "<unset>"), run.params.get(key, "<unset>")
        if have != want:
            return f"{kind} {run.name!r} has {key} = {have!r} there but {want!r} in this run"
    return None


def state_mismatch(kind: str, parent: dict[str, Tensor], run: dict[str, Tensor]) -> str | None:
    """The first tensor that differs in name or shape between MODEL's state and the run's."""
    for key, value in run.items():
        if key not in parent:
            return f"{kind} tensor {key!r} is missing there"
        if tuple(parent[key].shape) != tuple(value.shape):
            return (
                f"{kind} tensor {key!r} has shape {list(parent[key].shape)} there but "
                f"{list(value.shape)} in this run"
            )
    extra = [k for k in parent if k not in run]
    if extra:
        return f"{kind} tensor {extra[0]!r} there has no place in this run's {kind}"
    return None


def parent_components(
    parent: Parent, take: Sequence[str], run: dict[str, ComponentCard], explicit: set[str]
) -> dict[str, ComponentCard]:
    """The run's component cards with every component taken from ``parent`` that the settings
    do not name (``explicit``) replaced by the parent's (without its file and hash)."""
    out = dict(run)
    for kind in take:
        if kind not in explicit:
            comp = parent.card.components[kind]
            out[kind] = ComponentCard(name=comp.name, params=dict(comp.params))
    return out


def take_components(
    parent: Parent,
    take: Sequence[str],
    modules: dict[str, Any],
    cards: dict[str, ComponentCard],
) -> list[str]:
    """Load the weights of the components ``take`` of ``parent`` into ``modules`` (by kind),
    checking first that each is the run's component (``cards``): plugin name and parameters,
    then each tensor's name and shape. Returns the kinds whose weights were copied (a component
    that stores none, such as a text encoder that loads a packaged model, only needs the same
    card)."""
    label = parent.record["model"]
    for kind in take:
        problem = component_mismatch(kind, parent.card.components[kind], cards[kind])
        if problem:
            raise InvalidArgumentError(
                f"--init-from {label}: {problem}; make the run's {kind} the same as the model's, "
                "or leave it out of --init-components"
            )
    loaded = []
    for kind in take:
        state = read_weights(parent.path, parent.card, kind)
        module = modules[kind]
        if not state:
            continue
        if not isinstance(module, nn.Module):
            raise CheckpointError(
                f"--init-from {label}: it stores weights for the {kind}, which is no torch "
                "module here"
            )
        mine = module.state_dict()
        problem = state_mismatch(kind, state, mine)
        if problem:
            raise InvalidArgumentError(
                f"--init-from {label}: {problem}; the model is of another design"
            )
        with torch.no_grad():
            for key, value in mine.items():
                value.copy_(state[key])
        loaded.append(kind)
    return loaded


def parent_identity(parent: Parent) -> str:
    """How a LoRA card names its parent: ``hf:REPO@COMMIT[#VARIANT]`` (pinned to the commit
    it was converted from) or the absolute folder."""
    record = parent.record
    if "repo" in record:
        variant = f"#{record['variant']}" if record.get("variant") else ""
        return f"hf:{record['repo']}@{record['commit']}{variant}"
    return str(record["path"])


def start_lora(
    backbone: nn.Module,
    parent: Parent,
    rank: int,
    alpha: float | None,
    targets: list[str] | None,
    seed: int,
) -> LoraCard:
    """Put LoRA adapters on ``backbone`` (its base weights frozen) and return the card entry
    that ties the adapter to ``parent``. The adapters' initial weights are drawn from ``seed``
    (:func:`~soundctm.training.rng.seeded_init`), so a run is a function of its seed."""
    layers = target_layers(backbone, targets)
    alpha = float(alpha if alpha is not None else rank)
    with seeded_init(seed):
        add_lora(backbone, layers, rank, alpha)
    return LoraCard(
        parent=parent_identity(parent),
        parent_card_sha256=parent.record["card_sha256"],
        rank=rank,
        alpha=alpha,
        layers=layers,
    )


def named_parameters(components: dict[str, Any]) -> dict[str, nn.Parameter]:
    """Every parameter of the torch ``components`` as ``<kind>.<name>`` (shared ones once)."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for kind, module in components.items():
        if not isinstance(module, nn.Module):
            continue
        for name, p in module.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out[f"{kind}.{name}"] = p
    return out


def apply_freeze(params: dict[str, nn.Parameter], patterns: Sequence[str]) -> int:
    """Set ``requires_grad = False`` on the parameters whose name matches any of ``patterns``
    (``fnmatch``); returns how many tensors matched. A pattern that matches nothing is a
    one-line error (a misspelt name would otherwise train everything)."""
    matched = 0
    for pattern in patterns:
        hits = [name for name in params if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            example = next(iter(params), "backbone.x")
            raise InvalidArgumentError(
                f"--freeze {pattern!r} matches no parameter; names look like {example!r} "
                "(<component>.<parameter>, e.g. 'backbone.blocks.0.*' or 'text_encoder.*')"
            )
        for name in hits:
            params[name].requires_grad_(False)
        matched += len(hits)
    return matched


def parameter_report(components: dict[str, Any], callback: Callback | None) -> ParameterReport:
    """Count the trainable and frozen parameters of each component and emit the report."""
    rows = []
    for kind, module in components.items():
        if not isinstance(module, nn.Module):
            rows.append((kind, 0, 0))
            continue
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        rows.append((kind, trainable, frozen))
    report = ParameterReport(
        trainable=sum(r[1] for r in rows), frozen=sum(r[2] for r in rows), components=tuple(rows)
    )
    emit(callback, report)
    return report


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` the optimizer updates (a one-line error if none is left)."""
    found = [p for p in module.parameters() if p.requires_grad]
    if not found:
        raise InvalidArgumentError(
            "--freeze leaves no trainable parameter; freeze fewer (e.g. 'backbone.blocks.0.*')"
        )
    return found


__all__ = [
    "Parent",
    "apply_freeze",
    "check_kinds",
    "component_mismatch",
    "named_parameters",
    "parameter_report",
    "parent_components",
    "parent_identity",
    "resolve_parent",
    "start_lora",
    "state_mismatch",
    "take_components",
    "trainable_parameters",
]
