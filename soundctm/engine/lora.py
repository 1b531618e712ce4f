"""LoRA adapters on a backbone's attention and feed-forward linears (method.md §10), through peft.

``W x`` becomes ``W x + (alpha / r) B A x`` for each adapted ``nn.Linear`` (``A``: r x in,
Gaussian-initialised; ``B``: out x r, zero-initialised, so a fresh adapter changes nothing).
Only ``A`` and ``B`` train; the base weights ``W`` stay bit-identical.

peft (``inject_adapter_in_model``) does the wrapping: it is the route diffusers itself uses for
its UNet, and the same layer works on any ``nn.Linear``, so the DiTs need nothing special. A
backbone names the layers worth adapting with the :class:`~soundctm.engine.components.LoraTargets`
capability (``fnmatch`` patterns over module names); a run may give its own patterns.

A LoRA checkpoint is an ordinary checkpoint folder whose card has a ``lora`` entry (the parent
model, the SHA-256 of the parent's card, rank, alpha, the adapted layers) and whose backbone
file holds only the adapter tensors (``<layer>.lora_A.weight``, ``<layer>.lora_B.weight``);
:meth:`~soundctm.engine.pipeline.Pipeline.load` loads the parent and puts the adapter on top,
and :func:`merged_state` folds it back into plain weights (``soundctm pack --merge-lora``).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from soundctm.engine.components import lora_targets
from soundctm.errors import CheckpointError, InvalidArgumentError

#: The adapter name peft files the weights under (dropped from the names we store).
ADAPTER = "default"
_PEFT_PARTS = {f".lora_A.{ADAPTER}.": ".lora_A.", f".lora_B.{ADAPTER}.": ".lora_B."}


def target_layers(backbone: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """The names of the ``nn.Linear`` modules of ``backbone`` matching ``patterns`` (``fnmatch``;
    default: the backbone's declared ``lora_targets``). A one-line error when there are none."""
    if patterns is None:
        patterns = lora_targets(backbone)
        if not patterns:
            raise InvalidArgumentError(
                f"backbone {type(backbone).__name__} declares no LoRA layers (lora_targets); "
                "give lora_targets patterns such as 'blocks.*.attn.*'"
            )
    names = [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    if not names:
        raise InvalidArgumentError(
            f"lora_targets {list(patterns)} match no linear layer of {type(backbone).__name__}; "
            "patterns are fnmatch on module names such as 'blocks.0.self_attn.qkv'"
        )
    return names


def add_lora(backbone: nn.Module, layers: Sequence[str], rank: int, alpha: float) -> nn.Module:
    """Wrap ``layers`` of ``backbone`` (in place) in LoRA layers of ``rank`` and ``alpha``; every
    other parameter of ``backbone`` is frozen. Returns ``backbone``."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise InvalidArgumentError(f"lora_rank must be at least 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(layers), lora_dropout=0.0)
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
    return backbone


def _ours(key: str) -> str:
    for peft_part, ours in _PEFT_PARTS.items():
        key = key.replace(peft_part, ours)
    return key


def _peft(key: str) -> str:
    for peft_part, ours in _PEFT_PARTS.items():
        key = key.replace(ours, peft_part)
    return key


def adapter_state(backbone: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of ``backbone`` under our names (``<layer>.lora_A.weight``)."""
    return {
        _ours(k): v for k, v in backbone.state_dict().items() if ".lora_A." in k or ".lora_B." in k
    }


def load_adapter(backbone: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Copy the adapter ``state`` (our names) into the LoRA layers of ``backbone``; every adapter
    tensor must be there with its shape, and nothing else."""
    mine = {k: v for k, v in backbone.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
    given = {_peft(k): v for k, v in state.items()}
    for key, value in mine.items():
        if key not in given or tuple(given[key].shape) != tuple(value.shape):
            have = list(given[key].shape) if key in given else "missing"
            raise CheckpointError(
                f"{where}: adapter tensor {_ours(key)!r} is {have}, the card's LoRA needs "
                f"{list(value.shape)}; the card and the adapter file disagree"
            )
    extra = sorted(set(given) - set(mine))
    if extra:
        raise CheckpointError(
            f"{where}: adapter tensor {_ours(extra[0])!r} has no LoRA layer; the card and the "
            "adapter file disagree"
        )
    with torch.no_grad():
        for key, value in mine.items():
            value.copy_(given[key])


def merged_state(backbone: nn.Module) -> dict[str, Tensor]:
    """The plain state dict of ``backbone`` with its adapters folded into the base weights
    (``W + (alpha / r) B A``), under the names of the backbone without LoRA. ``backbone``
    itself is left as it is."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(backbone)
    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    out = {}
    for key, value in merged.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def base_state(backbone: nn.Module) -> dict[str, Tensor]:
    """The base weights of a backbone with adapters, under the plain names (no adapter)."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in backbone.state_dict().items()
        if ".lora_A." not in k and ".lora_B." not in k
    }


__all__ = [
    "adapter_state",
    "add_lora",
    "base_state",
    "load_adapter",
    "merged_state",
    "target_layers",
]
