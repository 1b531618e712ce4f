"""The pure maths of SoundCTM distillation (method.md §4; Kim et al. 2024; Saito et al. 2024).

One distillation iteration draws ``k`` (one per batch), grid indices ``(t, u, s)`` and the
guidance scale ``omega`` per sample, solves the teacher's guided ODE ``k`` Heun steps from ``t``
to ``u``, compares the student's jump with the target network's jump at a common time with a
distance, and adds a DSM loss weighted adaptively. This module holds those pieces as small pure
functions; the training loop composes them.

Every random draw uses a caller-supplied CPU :class:`torch.Generator` (see
:mod:`soundctm.training.rng`) and returns CPU tensors; the caller moves them to its device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from soundctm.engine.solvers import sample_heun
from soundctm.errors import InvalidArgumentError
from soundctm.training.losses import sample_edm_sigmas

K_DISTRIBUTIONS = ("linear", "uniform")
TARGET_TIME_MODES = ("s", "sigma_min")
ADAPTIVE_EPS = 1e-8
PSEUDO_HUBER_C = 0.00054


def _check_cpu(generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise InvalidArgumentError(
            f"the distillation samplers draw on a CPU generator, got one on {generator.device}; "
            "use soundctm.training.rng.generator(...)"
        )


# ---------------------------------------------------------------------------- sampling (§4.1)


def k_probabilities(n: int, distribution: str = "linear") -> Tensor:
    """``P(k)`` for ``k = 1..n-1`` as a float64 vector of length ``n - 1`` (method.md §4.1).

    ``"linear"``: ``P(k) = k / sum_{j=1}^{n-1} j = 2k / (n (n-1))``; ``"uniform"``: ``1/(n-1)``.
    """
    if n < 2:
        raise InvalidArgumentError(f"the training grid needs at least 2 points, got {n}")
    if distribution == "linear":
        weights = torch.arange(1, n, dtype=torch.float64)
    elif distribution == "uniform":
        weights = torch.ones(n - 1, dtype=torch.float64)
    else:
        raise InvalidArgumentError(
            f"unknown k distribution {distribution!r}; use one of {', '.join(K_DISTRIBUTIONS)}"
        )
    return weights / weights.sum()


def sample_k(n: int, generator: torch.Generator, distribution: str = "linear") -> int:
    """The number of teacher Heun steps ``k`` for one batch, in ``1..n-1`` (method.md §4.1).

    ``n`` is the number of points of the training grid. ``"linear"`` draws ``P(k) ∝ k`` (SoundCTM:
    long teacher solves are drawn more often), ``"uniform"`` draws ``P(k) = 1/(n-1)``.
    Raises ``ValueError`` (:class:`InvalidArgumentError`) for another distribution.
    """
    _check_cpu(generator)
    probs = k_probabilities(n, distribution)
    return int(torch.multinomial(probs, 1, generator=generator)) + 1


def sample_grid_indices(
    batch: int, n: int, k: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per-sample grid indices ``(i, j)`` of the times ``t``, ``s`` (method.md §4.1).

    ``i ~ Uniform{0, ..., n-1-k}`` gives ``t = sigma_i`` and ``u = sigma_{i+k}``;
    ``j ~ Uniform{i+k, ..., n-1}`` gives ``s = sigma_j``, so ``sigma_min <= s <= u`` (``s`` may
    equal ``u``). Returns two int64 CPU tensors of shape ``[batch]``.
    """
    _check_cpu(generator)
    if not 1 <= k <= n - 1:
        raise InvalidArgumentError(f"k must be in 1..{n - 1} for a grid of {n} points, got {k}")
    i = torch.randint(0, n - k, (batch,), generator=generator, dtype=torch.int64)
    lo = i + k
    count = n - lo  # number of admissible s indices, >= 1
    offset = torch.floor(torch.rand(batch, generator=generator, dtype=torch.float64) * count)
    j = lo + torch.minimum(offset.to(torch.int64), count - 1)
    return i, j


def grid_times(grid: Tensor, i: Tensor, k: int, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, u, s) = (sigma_i, sigma_{i+k}, sigma_j)`` per sample from the training ``grid``."""
    i = i.to(grid.device)
    return grid[i], grid[i + k], grid[j.to(grid.device)]


def sample_omega(batch: int, w_min: float, w_max: float, generator: torch.Generator) -> Tensor:
    """Guidance scales ``omega ~ Uniform[w_min, w_max]`` per sample, float32 ``[batch]``
    (method.md §4.1: [2, 5] for the UNet, [1, 10] for the DiT)."""
    _check_cpu(generator)
    if w_min > w_max:
        raise InvalidArgumentError(f"need w_min <= w_max, got {w_min} > {w_max}")
    u = torch.rand(batch, generator=generator, dtype=torch.float32)
    return w_min + (w_max - w_min) * u


# ---------------------------------------------------------------------------- teacher (§4.3)


def teacher_solve(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    grid: Tensor,
    start: Tensor,
    k: int,
) -> Tensor:
    """``k`` EDM Heun steps of the probability-flow ODE from ``grid[start]`` to ``grid[start+k]``.

    Implements the deterministic sampler of Karras et al. 2022 (EDM), algorithm 1, on the
    ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (EDM eq. 3), one step per grid interval and with
    per-sample times: sample ``b`` walks ``grid[start_b], grid[start_b + 1], ...,
    grid[start_b + k]`` (method.md §4.3). Each step is an Euler step
    ``x' = x + (sigma' - sigma) d`` with ``d = (x - D(x, sigma)) / sigma`` corrected by the slope
    at ``x'``: ``x <- x + (sigma' - sigma) (d + d') / 2``. The training grid ends at
    ``sigma_min > 0``, so every step has the second-order correction. The steps are those of
    :func:`soundctm.engine.solvers.sample_heun`, given the per-sample levels.

    ``denoise(x, sigma)`` takes ``sigma`` of shape ``[B]`` and returns ``D(x, sigma)``; the caller
    makes it guided and runs this under ``torch.no_grad()``. ``start`` is an int64 tensor
    ``[B]``; times are cast to ``x``'s dtype and device. ``k = 0`` returns ``x``.
    """
    if grid.ndim != 1:
        raise InvalidArgumentError(f"the grid must be 1-D, got shape {tuple(grid.shape)}")
    if k < 0:
        raise InvalidArgumentError(f"k must be >= 0, got {k}")
    if start.shape != (x.shape[0],):
        raise InvalidArgumentError(
            f"start must hold one index per sample [{x.shape[0]}], got {tuple(start.shape)}"
        )
    if k == 0:
        return x
    idx = start.to(device=grid.device, dtype=torch.int64)
    if int(idx.min()) < 0 or int(idx.max()) + k > grid.numel() - 1:
        raise InvalidArgumentError(
            f"start + k must stay on the grid of {grid.numel()} points (k = {k})"
        )
    sig = grid.to(device=x.device, dtype=x.dtype)
    idx = idx.to(x.device)
    if float(sig[idx + k].min()) <= 0.0:
        raise InvalidArgumentError("teacher_solve needs a grid of positive noise levels")
    # column b walks grid[start_b], ..., grid[start_b + k]: the solver module's Heun, per sample
    levels = sig[idx[None, :] + torch.arange(k + 1, device=x.device)[:, None]]
    return sample_heun(_Denoise(denoise), x, levels)


class _Denoise:
    """A ``denoise(x, sigma)`` callable as the model object the solvers take."""

    def __init__(self, denoise: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.denoise = denoise


# ---------------------------------------------------------------------------- DSM (§4.6)


def dsm_sigmas(
    batch: int,
    generator: torch.Generator,
    grid: Tensor,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> Tensor:
    """Noise levels of the DSM loss, float32 ``[batch]`` on the CPU (method.md §4.6).

    The first ``ceil(batch/2)`` draw ``ln sigma ~ Normal(p_mean, p_std^2)`` (EDM, table 1); the
    rest draw sigma from "the upper part of the Karras range", which this project takes to be the
    upper half of the training grid: uniformly among the grid points ``sigma_0, ...,
    sigma_{n//2}`` (``n = len(grid)``, ``sigma_0 = sigma_max``), so high noise levels, rarely
    drawn by the log-normal, keep a well-trained denoiser. All values are clamped to
    ``[grid.min(), grid.max()]``.
    """
    _check_cpu(generator)
    if grid.ndim != 1 or grid.numel() < 1:
        raise InvalidArgumentError(f"the grid must be a non-empty 1-D tensor, got {grid.shape}")
    n_normal = math.ceil(batch / 2)
    normal = sample_edm_sigmas(n_normal, generator, p_mean, p_std)
    upper = torch.sort(grid.detach().to("cpu", torch.float64), descending=True).values
    upper = upper[: grid.numel() // 2 + 1]
    pick = torch.randint(0, upper.numel(), (batch - n_normal,), generator=generator)
    sigmas = torch.cat([normal, upper[pick].to(torch.float32)])
    lo, hi = float(grid.min()), float(grid.max())
    return sigmas.clamp(lo, hi)


def adaptive_weight(
    loss_ctm: Tensor, loss_dsm: Tensor, last_layer: Tensor, max_weight: float = 1000.0
) -> Tensor:
    """``a = ||grad_W L_ctm|| / (||grad_W L_dsm|| + 1e-8)``, clamped to ``[0, max_weight]``.

    The adaptive balance of method.md §4.7 (Kim et al. 2024, after the adaptive GAN weight of
    Esser et al. 2021), with ``W = last_layer`` (a parameter, e.g. the DiT's ``last_layer``).
    Gradients come from ``torch.autograd.grad(..., retain_graph=True)`` so the caller can still
    backpropagate the total loss; a loss that does not depend on ``W`` has gradient norm 0.
    Returns a detached scalar.
    """

    def grad_norm(loss: Tensor) -> Tensor:
        if not loss.requires_grad:
            return torch.zeros((), device=last_layer.device)
        (grad,) = torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)
        if grad is None:
            return torch.zeros((), device=last_layer.device)
        return grad.detach().float().norm()

    a = grad_norm(loss_ctm) / (grad_norm(loss_dsm) + ADAPTIVE_EPS)
    return a.clamp(0.0, max_weight).detach()


# ---------------------------------------------------------------------------- distances (§4.5)


def ctm_target_time(s: Tensor, sigma_min: float, mode: str = "s") -> Tensor:
    """The time at which estimate and target are compared (method.md §4.5).

    ``"s"``: at ``s`` itself (the official SoundCTM configs); ``"sigma_min"``: both are carried on
    to ``sigma_min`` with the target network before comparing (the CTM paper's option, Kim et al.
    2024, CTM loss), so a vector of ``sigma_min`` like ``s``.
    """
    if mode == "s":
        return s
    if mode == "sigma_min":
        return torch.full_like(s, sigma_min)
    raise InvalidArgumentError(
        f"unknown comparison time {mode!r}; use one of {', '.join(TARGET_TIME_MODES)}"
    )


def normalize_channels(feat: Tensor, channel_dim: int = -1, eps: float = 1e-8) -> Tensor:
    """``f / (||f||_channels + eps)``: unit length along the channel axis (LPIPS-style)."""
    f = feat.float()
    return f / (f.norm(dim=channel_dim, keepdim=True) + eps)


def feature_distance(
    a: Sequence[Tensor], b: Sequence[Tensor], eps: float = 1e-8, channel_dim: int = -1
) -> Tensor:
    """SoundCTM's teacher-feature distance per sample, ``[B]`` (method.md §4.5; Saito et al.
    2024, SoundCTM).

    ``sum_m mean(|f_m(a) / ||f_m(a)|| - f_m(b) / ||f_m(b)|| |^2)``: each feature map is normalised
    to unit length along ``channel_dim`` (``-1`` for the DiT's ``[B, T, C]`` maps, ``1`` for UNet
    ``[B, C, H, W]`` maps), the squared difference is averaged over all non-batch elements of the
    map, and the maps are summed. Zero for equal inputs; invariant to a positive rescaling of a map
    at each position (up to ``eps``). Computed in float32.
    """
    if len(a) != len(b):
        raise InvalidArgumentError(f"{len(a)} feature maps against {len(b)}")
    if len(a) == 0:
        raise InvalidArgumentError("feature_distance needs at least one feature map")
    total: Tensor | None = None
    for fa, fb in zip(a, b, strict=True):
        if fa.shape != fb.shape:
            raise InvalidArgumentError(
                f"feature maps differ in shape: {tuple(fa.shape)} vs {tuple(fb.shape)}"
            )
        diff = normalize_channels(fa, channel_dim, eps) - normalize_channels(fb, channel_dim, eps)
        per_map = diff.square().flatten(1).mean(1)
        total = per_map if total is None else total + per_map
    assert total is not None
    return total


def l2_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per sample, ``[B]`` (method.md §4.5, "l2"; Kim et al. 2024)."""
    return (a.float() - b.float()).square().flatten(1).mean(1)


def l1_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute error per sample, ``[B]`` (method.md §4.5, "l1")."""
    return (a.float() - b.float()).abs().flatten(1).mean(1)


def pseudo_huber_distance(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """``sqrt(||a - b||^2 + c^2) - c`` per sample, ``[B]`` (method.md §4.5, "pseudo-Huber").

    Song & Dhariwal 2023, "Improved techniques for training consistency models", with
    their default ``c = 0.00054 sqrt(d)``, ``d`` the number of elements per sample. It behaves like
    ``||a - b||^2 / (2c)`` for small differences and like ``||a - b||`` for large ones.
    """
    diff = (a.float() - b.float()).flatten(1)
    if c is None:
        c = PSEUDO_HUBER_C * math.sqrt(diff.shape[1])
    if c < 0:
        raise InvalidArgumentError(f"the pseudo-Huber constant must be >= 0, got {c}")
    return torch.sqrt(diff.square().sum(1) + c * c) - c
