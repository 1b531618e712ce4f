"""Analytic tests: with data ~ N(0, sd^2 I) the denoiser and the ODE jump are known exactly.

``D(x, t) = x sd^2 / (t^2 + sd^2)`` and ``G(x, t, s) = x sqrt((s^2 + sd^2) / (t^2 + sd^2))``.
These pin the maths of the solvers, not the code.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from soundctm.engine import schedule, solvers
from soundctm.engine.guidance import GuidedModel, cfg_combine, guided
from soundctm.engine.noise import PerSampleNoise, make_generators

SD = 0.5
SMIN, SMAX = 0.002, 80.0


class Gaussian:
    """The exact denoiser and jump for Gaussian data with std ``sd``."""

    def __init__(self, sd: float = SD) -> None:
        self.sd = sd
        self.calls = 0

    def denoise(self, x, sigma):
        self.calls += 1
        return x * self.sd**2 / (sigma**2 + self.sd**2)

    def jump(self, x, t, s):
        self.calls += 1
        return x * math.sqrt((s**2 + self.sd**2) / (t**2 + self.sd**2))


def _start(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SMAX * torch.randn(1, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("fn", [solvers.sample_heun, solvers.sample_euler, solvers.sample_dpmpp_2m])
def test_ode_solvers_approach_exact_solution(fn):
    x = _start()
    exact = x * SD / math.sqrt(SMAX**2 + SD**2)  # G(x, sigma_max, 0)
    errors = []
    for n in (8, 16, 32, 64, 128):
        out = fn(Gaussian(), x, schedule.edm_grid(n))
        errors.append(float((out - exact).abs().max() / exact.abs().max()))
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0] / 10, errors
    if fn is solvers.sample_heun:
        assert errors[-1] < 1e-3, errors  # 2nd order: tight at 128 steps


def test_heun_is_second_order():
    x = _start()
    exact = x * SD / math.sqrt(SMAX**2 + SD**2)

    def err(n):
        # Stop at sigma_min (no final Euler step to 0) to see the 2nd-order rate of the corrector.
        out = solvers.sample_heun(Gaussian(), x, schedule.karras_sigmas(n + 1))
        target = x * math.sqrt((SMIN**2 + SD**2) / (SMAX**2 + SD**2))
        return float((out - target).abs().max() / exact.abs().max())

    ratio = err(16) / err(32)
    assert ratio > 3.0, ratio  # halving the step size cuts the error by ~4


@pytest.mark.parametrize("steps", [2, 4, 16])
def test_gamma0_with_exact_jump_is_step_count_invariant(steps):
    x = _start()
    one = solvers.sample_gamma(Gaussian(), x, schedule.ctm_grid(1), gamma=0.0)
    many = solvers.sample_gamma(Gaussian(), x, schedule.ctm_grid(steps), gamma=0.0)
    assert torch.allclose(one, many, rtol=1e-10, atol=0)
    assert torch.allclose(one, x * math.sqrt((SMIN**2 + SD**2) / (SMAX**2 + SD**2)))


def predicted_variance(v0: float, grid: list[float], gamma: float, sd: float = SD) -> float:
    """Variance after gamma-sampling with the exact jump, by the recursion of method.md §5:
    a jump t -> s scales the variance by (s^2+sd^2)/(t^2+sd^2); fresh noise adds
    sigma_next^2 - s^2."""
    v, smin = v0, grid[-1]
    for i in range(len(grid) - 1):
        t, nxt = grid[i], grid[i + 1]
        s = math.sqrt(1 - gamma**2) * (nxt - smin) + smin
        v = v * (s**2 + sd**2) / (t**2 + sd**2)
        if i < len(grid) - 2:
            v += nxt**2 - s**2
    return v


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_gamma_sampling_variance_matches_the_maths(gamma):
    grid = schedule.ctm_grid(4).tolist()
    n = 400_000
    gens = make_generators([123])
    x = SMAX * torch.randn(1, n, generator=gens[0], dtype=torch.float64)
    out = solvers.sample_gamma(Gaussian(), x, grid, gamma=gamma, noise=PerSampleNoise(gens))
    expected = predicted_variance(SMAX**2, grid, gamma)
    assert float(out.var()) == pytest.approx(expected, rel=0.015)
    # The sampler preserves the marginals: started from the true marginal N(0, T^2 + sd^2),
    # every gamma ends at N(0, sigma_min^2 + sd^2).
    assert predicted_variance(SMAX**2 + SD**2, grid, gamma) == pytest.approx(SMIN**2 + SD**2)


def test_gamma_variances_differ_as_predicted():
    grid = schedule.ctm_grid(4).tolist()
    v = [predicted_variance(SMAX**2, grid, g) for g in (0.0, 0.5, 1.0)]
    # Starting from sigma_max^2 (missing sd^2), gamma = 0 keeps the deficit through the whole
    # chain, while fresh noise (gamma > 0) restores part of it.
    assert v[0] < v[1] < v[2] <= SMIN**2 + SD**2


def test_cfg_with_equal_branches_is_the_plain_model(toy_student):
    torch.manual_seed(0)
    ctm = toy_student.ctm
    x = torch.randn(3, *toy_student.latent_shape(0.25)) * 10
    cond = toy_student.encode_text(["a beep", "a bell rings", "wind"])
    plain = GuidedModel(ctm, cond, None, 1.0, 5.0)
    for scale in (0.0, 2.5, 7.0):
        same = GuidedModel(ctm, cond, cond, scale, 5.0)
        assert torch.allclose(same.jump(x, 10.0, 1.0), plain.jump(x, 10.0, 1.0), atol=1e-5)
        assert torch.allclose(same.denoise(x, 10.0), plain.denoise(x, 10.0), atol=1e-5)
    a, b = torch.randn(4), torch.randn(4)
    assert torch.equal(cfg_combine(a, a, 3.0), a)
    assert torch.allclose(cfg_combine(a, b, 1.0), a)


def test_cfg_is_one_forward_on_2b_and_nu1_skips_uncond():
    seen = []

    def fn(x, cond, w):
        seen.append((x.shape[0], len(cond), None if w is None else w.shape[0]))
        return x * 2

    from soundctm.engine.conditioning import Conditioning

    c = Conditioning(torch.ones(3, 2, 4), torch.ones(3, 2, dtype=torch.bool))
    u = Conditioning(torch.zeros(3, 1, 4), torch.ones(3, 1, dtype=torch.bool))
    x, w = torch.ones(3, 5), torch.full((3,), 5.0)
    guided(fn, x, c, u, 3.0, w)
    assert seen == [(6, 6, 6)]
    seen.clear()
    guided(fn, x, c, u, 1.0, w)
    assert seen == [(3, 3, 3)]
