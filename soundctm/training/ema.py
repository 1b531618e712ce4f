"""Exponential moving average of weights."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` for every trainable parameter;
    a frozen one (``requires_grad`` off: ``--freeze``, a LoRA run's base weights) is copied, so
    it stays bit-identical instead of drifting by rounding. Buffers are copied. Both modules
    must have the same structure."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        if p.requires_grad:
            p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - decay)
        else:
            p_ema.copy_(p)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
