"""Noise schedule and EDM preconditioning (method.md section 1; Karras et al. 2022).

The process is variance exploding, ``x_t = x_0 + t * eps``, with ``t`` the noise level sigma.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


def karras_sigmas(
    n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> Tensor:
    """``n`` Karras noise levels from ``sigma_max`` down to ``sigma_min`` (float64).

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    (Karras et al. 2022, eq. 5). ``n == 1`` gives ``[sigma_max]``.
    """
    if n < 1:
        raise ValueError(f"a Karras grid needs at least 1 point, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact end points despite rounding
    return sigmas


def append_zero(sigmas: Tensor) -> Tensor:
    """``sigmas`` followed by 0: the EDM sampling grid that ends on clean data."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ctm_grid(
    steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> Tensor:
    """A CTM sampler grid for ``steps`` jumps: ``steps + 1`` Karras points (method.md §5)."""
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho)


def edm_grid(
    steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> Tensor:
    """The grid of an ODE solver with ``steps`` steps: ``steps`` Karras points then 0 (EDM)."""
    return append_zero(karras_sigmas(steps, sigma_min, sigma_max, rho))


def c_skip(sigma: Tensor, sigma_data: float) -> Tensor:
    """``c_skip = sd^2 / (sigma^2 + sd^2)`` (EDM, table 1)."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Tensor, sigma_data: float) -> Tensor:
    """``c_out = sigma * sd / sqrt(sigma^2 + sd^2)`` (EDM, table 1)."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: Tensor, sigma_data: float) -> Tensor:
    """``c_in = 1 / sqrt(sigma^2 + sd^2)`` (EDM, table 1)."""
    return (sigma**2 + sigma_data**2).rsqrt()


def c_noise(sigma: Tensor) -> Tensor:
    """Noise conditioning ``c_noise = ln(sigma) / 4`` (EDM, table 1)."""
    return sigma.log() / 4


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """``lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2`` (EDM, table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def gamma_target(sigma_next: float, sigma_min: float, gamma: float) -> float:
    """The time a gamma-sampling step jumps to (method.md §5; Kim et al. 2024, alg. 2).

    ``s = sqrt(1 - gamma^2) * (sigma_next - sigma_min) + sigma_min``.
    """
    return math.sqrt(1.0 - gamma**2) * (sigma_next - sigma_min) + sigma_min


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """``v`` with trailing singleton dimensions up to ``ndim`` (to broadcast per-sample scalars)."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))
