"""Exponential moving average of weights."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` to hold its EMA. Trainable parameters are copied;
    frozen ones (``requires_grad`` off: ``--freeze``, a LoRA run's base weights) are shared with
    ``model``, the same tensors, since their average is themselves. A LoRA run thus keeps no
    second copy of the parent's weights, only of the adapters."""
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    return copy.deepcopy(model, shared).requires_grad_(False).eval()


def shared_names(ema: nn.Module, model: nn.Module) -> set[str]:
    """Names of the parameters ``ema`` shares with ``model`` (:func:`ema_copy`'s frozen ones)."""
    pairs = zip(
        ema.named_parameters(remove_duplicate=False),
        model.named_parameters(remove_duplicate=False),
        strict=True,
    )
    return {name for (name, p_ema), (_, p) in pairs if p_ema is p}


def ema_state(ema: nn.Module, model: nn.Module) -> dict[str, Tensor]:
    """What a training state saves of ``ema``: its state dict without the parameters it shares
    with ``model`` (the model's own state holds those; safetensors also refuses to write one
    tensor twice)."""
    shared = shared_names(ema, model)
    return {k: v for k, v in ema.state_dict().items() if k not in shared}


def load_ema_state(ema: nn.Module, model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a saved :func:`ema_state` (or a full EMA state dict, as older runs saved) into
    ``ema``; only the parameters it shares with ``model`` may be missing."""
    missing, unexpected = ema.load_state_dict(state, strict=False)
    stray = sorted(set(missing) - shared_names(ema, model)) + sorted(unexpected)
    if stray:
        raise RuntimeError(f"the saved EMA does not match the model: first mismatch {stray[0]!r}")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` for every trainable parameter;
    a frozen one (``requires_grad`` off: ``--freeze``, a LoRA run's base weights) is copied, so
    it stays bit-identical instead of drifting by rounding (nothing to do where
    :func:`ema_copy` shares it). Buffers are copied. Both modules must have the same
    structure."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        if p.requires_grad:
            p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - decay)
        elif p_ema is not p:
            p_ema.copy_(p)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
