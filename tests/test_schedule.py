import math

import pytest
import torch

from soundctm.engine import schedule


def test_karras_grid_matches_formula_and_ends():
    n, lo, hi, rho = 40, 0.002, 80.0, 7.0
    sig = schedule.karras_sigmas(n, lo, hi, rho)
    assert sig.shape == (n,) and sig.dtype == torch.float64
    assert sig[0] == hi and sig[-1] == lo
    assert torch.all(sig[1:] < sig[:-1])
    i = 17
    expected = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    assert math.isclose(float(sig[i]), expected, rel_tol=1e-12)


def test_grids_for_solvers():
    assert schedule.ctm_grid(1).tolist() == [80.0, 0.002]
    g = schedule.edm_grid(5)
    assert len(g) == 6 and g[-1] == 0 and g[-2] == 0.002
    assert schedule.karras_sigmas(1).tolist() == [80.0]
    with pytest.raises(ValueError):
        schedule.karras_sigmas(0)


def test_edm_preconditioning_identities():
    sd = 0.5
    sigma = torch.tensor([0.002, 0.3, 1.0, 80.0], dtype=torch.float64)
    cs, co, ci = (schedule.c_skip(sigma, sd), schedule.c_out(sigma, sd), schedule.c_in(sigma, sd))
    # sd^2/(sigma^2+sd^2) + sigma^2/(sigma^2+sd^2) = 1
    assert torch.allclose(cs + co**2 / sd**2, torch.ones_like(sigma))
    assert torch.allclose(ci, 1 / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(schedule.c_noise(sigma), torch.log(sigma) / 4)
    # At sigma -> 0 the denoiser is the identity.
    assert float(schedule.c_skip(torch.tensor(1e-9), sd)) == pytest.approx(1.0)
    w = schedule.edm_loss_weight(sigma, sd)
    assert torch.allclose(w * co**2, torch.ones_like(sigma))


def test_gamma_target():
    assert schedule.gamma_target(1.0, 0.002, 0.0) == pytest.approx(1.0)
    assert schedule.gamma_target(1.0, 0.002, 1.0) == pytest.approx(0.002)
    mid = schedule.gamma_target(1.0, 0.002, 0.5)
    assert mid == pytest.approx(math.sqrt(0.75) * 0.998 + 0.002)
