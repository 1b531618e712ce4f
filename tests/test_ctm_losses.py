"""The pure maths of SoundCTM distillation (soundctm.training.ctm_losses)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from soundctm.engine.schedule import karras_sigmas
from soundctm.training import ctm_losses as cl
from soundctm.training.rng import generator

P_MIN = 1e-4  # reject a distribution when a chi-square test gives p below this (fixed seeds)


def chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of a chi-square goodness-of-fit test of ``counts`` against ``probs``."""
    counts, probs = counts.double(), probs.double()
    expected = probs / probs.sum() * counts.sum()
    return float(stats.chisquare(counts.numpy(), expected.numpy()).pvalue)


# ---------------------------------------------------------------------------- k, (t, u, s), omega


@pytest.mark.parametrize("distribution", ["linear", "uniform"])
def test_sample_k_follows_its_distribution(distribution):
    n, draws = 12, 30000
    gen = generator(1, "k", distribution)
    ks = torch.tensor([cl.sample_k(n, gen, distribution) for _ in range(draws)])
    assert int(ks.min()) >= 1 and int(ks.max()) <= n - 1
    counts = torch.bincount(ks - 1, minlength=n - 1)
    k = torch.arange(1, n, dtype=torch.float64)
    linear, uniform = k / k.sum(), torch.full((n - 1,), 1 / (n - 1), dtype=torch.float64)
    right, wrong = (linear, uniform) if distribution == "linear" else (uniform, linear)
    assert chi2_p(counts, right) > P_MIN
    assert chi2_p(counts, wrong) < 1e-12  # the test has the power to tell them apart
    assert torch.allclose(cl.k_probabilities(n, distribution), right)


def test_sample_k_rejects_bad_arguments():
    gen = generator(0)
    with pytest.raises(ValueError):
        cl.sample_k(10, gen, "quadratic")
    with pytest.raises(ValueError):
        cl.sample_k(1, gen)
    assert cl.sample_k(2, gen) == 1  # the only admissible k


def test_grid_indices_joint_distribution():
    """i ~ U{0..n-1-k}; j | i ~ U{i+k..n-1}, tested on the joint histogram of (i, j)."""
    n, k, batch = 10, 3, 200000
    i, j = cl.sample_grid_indices(batch, n, k, generator(2, "grid"))
    assert i.dtype == torch.int64 and j.dtype == torch.int64
    assert i.shape == (batch,) and j.shape == (batch,)
    assert int(i.min()) == 0 and int(i.max()) == n - 1 - k
    assert bool((j >= i + k).all()) and int(j.max()) == n - 1
    # t-index marginal
    assert chi2_p(torch.bincount(i, minlength=n - k), torch.full((n - k,), 1 / (n - k))) > P_MIN
    # s-index conditional on each i
    for value in range(n - k):
        cond = j[i == value] - (value + k)
        m = n - value - k
        assert int(cond.min()) == 0 and int(cond.max()) == m - 1
        if m > 1:
            assert chi2_p(torch.bincount(cond, minlength=m), torch.full((m,), 1 / m)) > P_MIN
    # s never above u on the Karras grid (which decreases)
    grid = karras_sigmas(n)
    t, u, s = cl.grid_times(grid, i, k, j)
    assert bool((s <= u).all()) and bool((u < t).all()) and bool((s >= grid[-1]).all())


def test_grid_indices_largest_k():
    n = 40
    i, j = cl.sample_grid_indices(64, n, n - 1, generator(3))
    assert bool((i == 0).all()) and bool((j == n - 1).all())
    with pytest.raises(ValueError):
        cl.sample_grid_indices(4, n, n, generator(3))
    with pytest.raises(ValueError):
        cl.sample_grid_indices(4, n, 0, generator(3))


def test_omega_range_and_uniformity():
    w = cl.sample_omega(100000, 1.0, 10.0, generator(4, "omega"))
    assert w.dtype == torch.float32 and w.shape == (100000,)
    assert float(w.min()) >= 1.0 and float(w.max()) <= 10.0
    counts = torch.histc(w, bins=9, min=1.0, max=10.0)
    assert chi2_p(counts, torch.full((9,), 1 / 9)) > P_MIN
    assert abs(float(w.mean()) - 5.5) < 0.05
    assert torch.equal(w, cl.sample_omega(100000, 1.0, 10.0, generator(4, "omega")))
    with pytest.raises(ValueError):
        cl.sample_omega(3, 5.0, 2.0, generator(4))


def test_samplers_refuse_non_cpu_generators():
    class FakeGen:
        device = torch.device("meta")

    with pytest.raises(ValueError):
        cl.sample_omega(3, 1.0, 2.0, FakeGen())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- teacher solve

SD = 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser for data ~ N(0, SD^2): ``D(x, sigma) = x SD^2 / (sigma^2 + SD^2)``."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x * SD**2 / (s**2 + SD**2)


def exact_jump(x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE solution of the Gaussian: ``x sqrt((u^2+SD^2)/(t^2+SD^2))``."""
    ratio = torch.sqrt((u**2 + SD**2) / (t**2 + SD**2))
    return x * ratio.reshape(-1, *([1] * (x.ndim - 1)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_teacher_solve_converges_at_second_order():
    """Same (t, u) end points, 1x/2x/4x as many Heun steps between them: grids of 40, 79 and 157
    Karras points share every point of the 40-point grid (157 - 1 = 4 * 39)."""
    x = torch.randn(3, 2, 5, generator=generator(5), dtype=torch.float64)
    g40 = karras_sigmas(40)
    for i, k in [(0, 39), (20, 10), (10, 5)]:
        exact = exact_jump(x, g40[i].expand(3), g40[i + k].expand(3))
        errs = []
        for n, m in [(40, 1), (79, 2), (157, 4)]:
            grid = karras_sigmas(n)
            assert torch.allclose(grid[i * m], g40[i]) and torch.allclose(
                grid[(i + k) * m], g40[i + k]
            )
            start = torch.full((3,), i * m, dtype=torch.int64)
            errs.append(rel_err(cl.teacher_solve(gaussian_denoiser, x, grid, start, k * m), exact))
        assert errs[0] < 2e-2
        # Heun is 2nd order: halving the step divides the error by about 4 (at least 3 here).
        assert errs[1] < errs[0] / 3 and errs[2] < errs[1] / 3, errs


def test_teacher_solve_single_step_accuracy_and_per_sample_times():
    grid = karras_sigmas(40)
    start = torch.arange(39, dtype=torch.int64)  # every sample walks its own grid interval
    x = torch.randn(39, 4, generator=generator(6), dtype=torch.float64)
    out = cl.teacher_solve(gaussian_denoiser, x, grid, start, 1)
    exact = exact_jump(x, grid[start], grid[start + 1])
    err = (out - exact).abs().amax(1) / exact.abs().amax(1)
    assert float(err.max()) < 5e-3
    low = grid[start] <= 0.15  # low noise levels: much smaller error
    assert bool(low.any()) and float(err[low].max()) < 1e-4
    # per-sample multi-step solves equal the one-sample solves
    k = 5
    start = torch.tensor([0, 7, 20, 34], dtype=torch.int64)
    x = torch.randn(4, 3, generator=generator(7), dtype=torch.float64)
    batch = cl.teacher_solve(gaussian_denoiser, x, grid, start, k)
    for b in range(4):
        alone = cl.teacher_solve(gaussian_denoiser, x[b : b + 1], grid, start[b : b + 1], k)
        assert torch.allclose(batch[b : b + 1], alone, rtol=1e-12, atol=0)
        assert (
            rel_err(batch[b], exact_jump(x[b : b + 1], grid[start[b]], grid[start[b] + k])[0])
            < 1e-2
        )


def test_teacher_solve_counts_denoiser_calls_and_checks_range():
    calls = []

    def denoise(x, sigma):
        calls.append(sigma.clone())
        return gaussian_denoiser(x, sigma)

    grid = karras_sigmas(10)
    x = torch.ones(2, 3, dtype=torch.float64)
    cl.teacher_solve(denoise, x, grid, torch.tensor([0, 3]), 4)
    assert len(calls) == 8  # 2 evaluations per Heun step
    assert torch.equal(calls[-1], grid[torch.tensor([4, 7])])
    assert torch.equal(cl.teacher_solve(denoise, x, grid, torch.tensor([0, 3]), 0), x)
    with pytest.raises(ValueError):
        cl.teacher_solve(denoise, x, grid, torch.tensor([0, 6]), 4)
    with pytest.raises(ValueError):
        cl.teacher_solve(denoise, x, torch.cat([grid, grid.new_zeros(1)]), torch.tensor([0, 6]), 4)


# ---------------------------------------------------------------------------- DSM sigmas


def test_dsm_sigmas_halves():
    grid = karras_sigmas(40)
    batch = 40001
    sig = cl.dsm_sigmas(batch, generator(8, "dsm"), grid)
    assert sig.dtype == torch.float32 and sig.shape == (batch,)
    assert float(sig.min()) >= float(grid.min()) * (1 - 1e-6)
    assert float(sig.max()) <= float(grid.max()) * (1 + 1e-6)
    first = sig[: math.ceil(batch / 2)].double().log()
    assert abs(float(first.mean()) - (-1.2)) < 0.03
    assert abs(float(first.std()) - 1.2) < 0.03
    second = sig[math.ceil(batch / 2) :]
    upper = grid[: 40 // 2 + 1].float()
    match = second[:, None] == upper[None, :]
    assert bool((match.sum(1) == 1).all())  # every value is exactly one upper-half grid point
    counts = match.sum(0)
    assert chi2_p(counts, torch.full((21,), 1 / 21)) > P_MIN
    # odd and tiny batches: the normal half is the first ceil(batch/2)
    assert cl.dsm_sigmas(1, generator(9), grid).shape == (1,)
    three = cl.dsm_sigmas(3, generator(9), grid)
    assert bool(torch.isin(three[2:], upper).all())


# ---------------------------------------------------------------------------- distances


def test_feature_distance_properties():
    gen = generator(10)
    a = [torch.randn(3, 7, 16, generator=gen), torch.randn(3, 5, 8, generator=gen)]
    b = [torch.randn(3, 7, 16, generator=gen), torch.randn(3, 5, 8, generator=gen)]
    zero = cl.feature_distance(a, [t.clone() for t in a])
    assert zero.shape == (3,) and torch.equal(zero, torch.zeros(3))
    d = cl.feature_distance(a, b)
    assert d.shape == (3,) and bool((d > 0).all())
    # invariant to scaling a map by a constant and by a positive factor per position
    scale = torch.rand(3, 7, 1, generator=gen) * 10 + 0.1
    scaled = [a[0] * 3.7, a[1] * torch.rand(3, 5, 1, generator=gen).add(0.05)]
    assert torch.allclose(cl.feature_distance(scaled, b), d, rtol=1e-5, atol=1e-7)
    assert torch.allclose(cl.feature_distance([a[0] * scale, a[1]], b), d, rtol=1e-5, atol=1e-7)
    assert float(cl.feature_distance(a, [a[0] * scale, a[1] * 2.0]).abs().max()) < 1e-6
    # sums over maps, each map a mean over all non-batch elements
    d0, d1 = cl.feature_distance(a[:1], b[:1]), cl.feature_distance(a[1:], b[1:])
    assert torch.allclose(d, d0 + d1)
    na = a[0] / a[0].norm(dim=-1, keepdim=True)
    nb = b[0] / b[0].norm(dim=-1, keepdim=True)
    assert torch.allclose(d0, ((na - nb) ** 2).mean((1, 2)), rtol=1e-5)
    # a change in one sample only moves that sample's distance
    c = [t.clone() for t in a]
    c[1][2] += 1.0
    moved = cl.feature_distance(a, c)
    assert float(moved[:2].abs().max()) == 0.0 and float(moved[2]) > 0


def test_feature_distance_unet_layout():
    gen = generator(11)
    a = torch.randn(2, 6, 4, 5, generator=gen)
    b = torch.randn(2, 6, 4, 5, generator=gen)
    per_pos = torch.rand(2, 1, 4, 5, generator=gen) + 0.1
    d = cl.feature_distance([a], [b], channel_dim=1)
    assert torch.allclose(cl.feature_distance([a * per_pos], [b], channel_dim=1), d, rtol=1e-5)
    # channel-last on the permuted maps is the same distance
    last = cl.feature_distance([a.permute(0, 2, 3, 1)], [b.permute(0, 2, 3, 1)])
    assert torch.allclose(last, d, rtol=1e-6)
    # scaling along the wrong axis does change it
    assert not torch.allclose(
        cl.feature_distance([a * per_pos], [b]), cl.feature_distance([a], [b])
    )
    with pytest.raises(ValueError):
        cl.feature_distance([a], [b, b])
    with pytest.raises(ValueError):
        cl.feature_distance([a], [b[:, :3]])


def test_elementwise_distances():
    gen = generator(12)
    a = torch.randn(4, 3, 10, generator=gen)
    b = torch.randn(4, 3, 10, generator=gen)
    assert torch.allclose(cl.l2_distance(a, b), ((a - b) ** 2).mean((1, 2)))
    assert torch.allclose(cl.l1_distance(a, b), (a - b).abs().mean((1, 2)))
    assert cl.l2_distance(a, b).shape == (4,) and cl.l1_distance(a, b).shape == (4,)
    ph = cl.pseudo_huber_distance(a, b)
    assert ph.shape == (4,)
    c = 0.00054 * math.sqrt(30)
    expected = torch.sqrt(((a - b) ** 2).sum((1, 2)) + c**2) - c
    assert torch.allclose(ph, expected)
    assert torch.equal(cl.pseudo_huber_distance(a, a), torch.zeros(4))
    assert torch.equal(cl.l2_distance(a, a), torch.zeros(4))
    # monotone in the size of the difference, ~ squared error / (2c) for tiny differences
    direction = torch.randn(1, 3, 10, generator=gen)
    scales = torch.tensor([1e-6, 1e-4, 1e-2, 1.0, 10.0]).reshape(-1, 1, 1)
    zero = torch.zeros(5, 3, 10)
    values = cl.pseudo_huber_distance(zero + scales * direction, zero)
    assert bool((values[1:] > values[:-1]).all())
    sq = (direction**2).sum() * 1e-12
    assert float(values[0]) == pytest.approx(float(sq / (2 * c)), rel=1e-2)
    assert float(values[-1]) == pytest.approx(10 * float(direction.norm()), rel=1e-2)
    assert torch.allclose(
        cl.pseudo_huber_distance(a, b, c=0.0), (a - b).flatten(1).norm(dim=1), rtol=1e-5
    )


# ---------------------------------------------------------------------------- adaptive weight


def test_adaptive_weight_hand_computed():
    w = torch.nn.Parameter(torch.tensor([[0.3, -1.0], [2.0, 0.5]]))
    a_mat = torch.tensor([[1.0, 2.0], [-2.0, 4.0]])  # ||A|| = 5
    b_mat = torch.tensor([[0.5, 0.0], [0.0, 0.0]])  # ||B|| = 0.5
    loss_ctm, loss_dsm = (w * a_mat).sum(), (w * b_mat).sum()
    a = cl.adaptive_weight(loss_ctm, loss_dsm, w)
    assert float(a) == pytest.approx(5.0 / (0.5 + 1e-8), rel=1e-6)
    assert not a.requires_grad and a.ndim == 0
    # the graph is kept: the caller can still backpropagate the total loss
    (loss_ctm + a * loss_dsm).backward()
    assert torch.allclose(w.grad, a_mat + float(a) * b_mat)
    # clamped to max_weight when the DSM gradient is tiny, and to a custom maximum
    w.grad = None
    tiny = (w * b_mat * 1e-9).sum()
    assert float(cl.adaptive_weight((w * a_mat).sum(), tiny, w)) == 1000.0
    assert float(cl.adaptive_weight((w * a_mat).sum(), tiny, w, max_weight=7.0)) == 7.0


def test_adaptive_weight_unused_parameter():
    w = torch.nn.Parameter(torch.ones(2, 2))
    other = torch.nn.Parameter(torch.ones(2))
    depends = (w * 2.0).sum()
    independent = (other * 3.0).sum()
    assert float(cl.adaptive_weight(independent, depends, w)) == 0.0
    assert float(cl.adaptive_weight(depends, independent, w)) == 1000.0
    assert float(cl.adaptive_weight(depends, torch.tensor(1.0), w)) == 1000.0


def test_ctm_target_time():
    s = torch.tensor([0.5, 3.0, 0.002])
    assert cl.ctm_target_time(s, 0.002) is s
    assert torch.equal(cl.ctm_target_time(s, 0.002, "sigma_min"), torch.full((3,), 0.002))
    with pytest.raises(ValueError):
        cl.ctm_target_time(s, 0.002, "zero")
