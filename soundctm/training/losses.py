"""Losses and noise-level samplers (method.md §2; EDM, Karras et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from soundctm.engine.schedule import append_dims, edm_loss_weight


def sample_edm_sigmas(
    n: int, generator: torch.Generator, p_mean: float = -1.2, p_std: float = 1.2
) -> Tensor:
    """``ln sigma ~ Normal(p_mean, p_std^2)`` (EDM, table 1, "training"), drawn on the CPU."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float32))


def edm_denoising_loss(denoised: Tensor, x0: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """``E[lambda(sigma) |D(x0 + sigma eps) - x0|^2]`` with ``lambda = (sigma^2+sd^2)/(sigma sd)^2``
    (EDM eq. 2 and table 1): the per-element mean over each sample, averaged over the batch."""
    weight = append_dims(edm_loss_weight(sigma, sigma_data), x0.ndim)
    per_sample = (weight * (denoised.float() - x0.float()) ** 2).flatten(1).mean(1)
    return per_sample.mean()
