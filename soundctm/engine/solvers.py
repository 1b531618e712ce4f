"""Samplers: pure functions with one shared signature.

``sample_x(model, x, sigmas, *, noise=None, callback=None, **options) -> x``

``model`` offers ``denoise(x, sigma)`` (a guided denoiser) and, for CTM samplers,
``jump(x, t, s)``; ``x`` starts at ``sigmas[0]``; ``noise(like)`` draws fresh standard normal
noise from per-sample generators; ``callback`` receives a :class:`~soundctm.events.SolverStep`
after every step. Each solver declares the grid it expects (``solver.grid``: ``"ctm"`` = n+1
Karras points ending at sigma_min, ``"edm"`` = n Karras points then 0) and what it needs of the
model (``solver.requires``: ``"jump"`` or ``"denoise"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from torch import Tensor

from soundctm.engine.schedule import append_dims, gamma_target
from soundctm.events import Callback, SolverStep, emit

NoiseFn = Callable[[Tensor], Tensor]
F = TypeVar("F", bound=Callable[..., Tensor])


class Denoiser(Protocol):
    def denoise(self, x: Tensor, sigma: float) -> Tensor: ...


class Jumper(Denoiser, Protocol):
    def jump(self, x: Tensor, t: float, s: float) -> Tensor: ...


def solver(*, grid: str, requires: str) -> Callable[[F], F]:
    """Mark a function as a solver with the grid it expects and the model method it needs."""
    if grid not in {"ctm", "edm"} or requires not in {"jump", "denoise"}:
        raise ValueError(f"bad solver declaration grid={grid!r} requires={requires!r}")

    def mark(fn: F) -> F:
        fn.grid = grid  # type: ignore[attr-defined]
        fn.requires = requires  # type: ignore[attr-defined]
        return fn

    return mark


def _floats(sigmas: Any) -> list[float]:
    return [float(s) for s in sigmas]


def _levels(sigmas: Any) -> list[Any]:
    """The noise levels of a grid: floats, or for a 2-D tensor ``[steps + 1, B]`` (per-sample
    levels, as in the teacher solves of distillation, method.md §4.3) one ``[B]`` row each."""
    if isinstance(sigmas, Tensor) and sigmas.ndim == 2:
        return list(sigmas.unbind(0))
    return _floats(sigmas)


def _per_sample(value: Any, x: Tensor) -> Any:
    """A per-sample ``[B]`` level shaped to broadcast against ``x``; a float stays a float."""
    return append_dims(value, x.ndim) if isinstance(value, Tensor) else value


def _nonzero(sigma: Any) -> bool:
    """Whether the level (every level, for a per-sample vector) is non-zero."""
    if not isinstance(sigma, Tensor):
        return sigma != 0.0
    zero = sigma == 0
    if bool(zero.any()) and not bool(zero.all()):
        raise ValueError("per-sample noise levels must all be zero or all non-zero at a step")
    return not bool(zero.any())


def _largest(sigma: Any) -> float:
    """A level for a progress event (the largest of a per-sample vector)."""
    return float(sigma.max()) if isinstance(sigma, Tensor) else sigma


def to_d(x: Tensor, sigma: Any, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (EDM eq. 3);
    ``sigma`` is a float or a per-sample ``[B]`` tensor."""
    return (x - denoised) / _per_sample(sigma, x)


@solver(grid="ctm", requires="jump")
def sample_gamma(
    model: Jumper,
    x: Tensor,
    sigmas: Any,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    gamma: float = 0.0,
) -> Tensor:
    """CTM gamma-sampling (Kim et al. 2024, algorithm 2; method.md §5).

    For each step i: ``s_i = sqrt(1 - gamma^2) (sigma_{i+1} - sigma_min) + sigma_min``,
    ``x = G(x, sigma_i, s_i)``, then, except after the last step,
    ``x = x + sqrt(sigma_{i+1}^2 - s_i^2) * z``. ``gamma = 0`` is a deterministic chain of jumps,
    ``gamma = 1`` is consistency-model multistep sampling; one step is one jump
    sigma_max -> sigma_min.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    grid = _floats(sigmas)
    steps, sigma_min = len(grid) - 1, grid[-1]
    for i in range(steps):
        t, nxt = grid[i], grid[i + 1]
        s = gamma_target(nxt, sigma_min, gamma)
        x = model.jump(x, t, s)
        if i < steps - 1:
            spread = math.sqrt(max(nxt**2 - s**2, 0.0))
            if spread > 0.0:
                if noise is None:
                    raise ValueError("gamma > 0 needs a noise source")
                x = x + spread * noise(x)
        emit(callback, SolverStep(i + 1, steps, t, nxt))
    return x


@solver(grid="edm", requires="denoise")
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Any,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
    grid = _floats(sigmas)
    steps = len(grid) - 1
    for i in range(steps):
        d = to_d(x, grid[i], model.denoise(x, grid[i]))
        x = x + (grid[i + 1] - grid[i]) * d
        emit(callback, SolverStep(i + 1, steps, grid[i], grid[i + 1]))
    return x


@solver(grid="edm", requires="denoise")
def sample_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Any,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, algorithm 1).

    An Euler step to ``sigma_{i+1}`` is corrected with the average of the two slopes; the last step
    to sigma = 0 is plain Euler. ``sigmas`` is one grid for the whole batch or, for the teacher
    solves of distillation (method.md §4.3), a 2-D tensor ``[steps + 1, B]`` whose column ``b``
    is the grid of sample ``b``; ``model.denoise`` then receives ``[B]`` levels.
    """
    grid = _levels(sigmas)
    steps = len(grid) - 1
    for i in range(steps):
        t, nxt = grid[i], grid[i + 1]
        h = _per_sample(nxt - t, x)
        d = to_d(x, t, model.denoise(x, t))
        x_next = x + h * d
        if _nonzero(nxt):
            d_next = to_d(x_next, nxt, model.denoise(x_next, nxt))
            x_next = x + h * (d + d_next) / 2
        x = x_next
        if callback is not None:
            emit(callback, SolverStep(i + 1, steps, _largest(t), _largest(nxt)))
    return x


@solver(grid="edm", requires="denoise")
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Any,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) in the sigma parameterisation.

    With ``lambda = -ln(sigma)`` and ``h = lambda_{i+1} - lambda_i``:
    ``x = (sigma_{i+1}/sigma_i) x - expm1(-h) D_i'`` where ``D_i'`` extrapolates the last two
    denoised values, ``D_i' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``r = h_{i-1}/h``.
    A step to sigma = 0 returns the denoised value.
    """
    grid = _floats(sigmas)
    steps = len(grid) - 1
    old: Tensor | None = None
    h_last = 0.0
    for i in range(steps):
        t, nxt = grid[i], grid[i + 1]
        denoised = model.denoise(x, t)
        if nxt == 0.0:
            x = denoised
        else:
            h = math.log(t) - math.log(nxt)
            if old is None:
                d = denoised
            else:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (nxt / t) * x - math.expm1(-h) * d
            h_last = h
        old = denoised
        emit(callback, SolverStep(i + 1, steps, t, nxt))
    return x
