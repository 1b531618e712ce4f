"""Evaluation maths: Frechet distance, FAD-infinity, KL, Inception Score, CLAP score."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from soundctm.errors import InvalidArgumentError
from soundctm.eval.metrics import (
    FrechetResult,
    FrechetWarning,
    clap_score,
    cosine_similarity_rows,
    default_subset_sizes,
    fad_infinity,
    frechet_distance,
    frechet_from_embeddings,
    gaussian_stats,
    inception_score,
    kl_divergence,
)


def exact_set(rng: np.random.Generator, n: int, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``n`` Gaussian-looking rows whose sample mean and unbiased covariance are exactly
    ``mu`` and ``cov`` (white the draw, then colour it)."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.cholesky(np.linalg.inv(np.cov(z, rowvar=False)))
    return z @ np.linalg.cholesky(cov).T + mu


def frechet_reference(mu1, s1, mu2, s2) -> float:
    """Independent closed form: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)) (symmetric)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(lam).sum())


def test_gaussian_stats_is_unbiased_mean_and_covariance():
    x = np.random.default_rng(0).standard_normal((50, 3))
    mu, cov = gaussian_stats(x)
    assert np.allclose(mu, x.mean(0))
    centred = x - x.mean(0)
    assert np.allclose(cov, centred.T @ centred / 49)


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).standard_normal((200, 16)) * 3 + 1
    r = frechet_from_embeddings(x, x)
    assert isinstance(r, FrechetResult)
    assert abs(r.value) < 1e-6
    assert not r.regularised and r.imag_max < 1e-6 and (r.n_a, r.n_b) == (200, 200)


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(2)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    a = exact_set(rng, 300, mu1, np.diag(v1))
    b = exact_set(rng, 400, mu2, np.diag(v2))
    # Diagonal covariances commute: sqrtm is elementwise, FD = |dmu|^2 + sum (sqrt v1 - sqrt v2)^2.
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    r = frechet_from_embeddings(a, b)
    assert r.value == pytest.approx(closed, rel=1e-8, abs=1e-9)
    assert not r.regularised


def test_frechet_matches_independent_formula_for_full_covariances():
    rng = np.random.default_rng(3)
    d = 8
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T / d + 0.1 * np.eye(d), m2 @ m2.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    r = frechet_distance(mu1, s1, mu2, s2)
    assert r.value == pytest.approx(frechet_reference(mu1, s1, mu2, s2), rel=1e-8)
    # symmetric in its two arguments
    assert frechet_distance(mu2, s2, mu1, s1).value == pytest.approx(r.value, rel=1e-8)


def test_singular_covariance_is_regularised_and_finite():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((5, 10)), rng.standard_normal((6, 10)) + 0.5
    r = frechet_from_embeddings(a, b)
    assert r.regularised and math.isfinite(r.value) and r.value > 0
    # eps * I changes a well-posed distance only negligibly
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    offset = 1e-6 * np.eye(10)
    expected = frechet_reference(mu_a, s_a + offset, mu_b, s_b + offset)
    assert r.value == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_large_imaginary_part_warns():
    # Not covariances (one negative variance): sqrtm(diag(1, -1)) = diag(1, i).
    with pytest.warns(FrechetWarning, match="imaginary"):
        r = frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    assert r.imag_max == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 2 * np.eye(2))


def test_frechet_rejects_bad_shapes():
    with pytest.raises(InvalidArgumentError):
        frechet_from_embeddings(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(InvalidArgumentError):
        frechet_from_embeddings(np.zeros((1, 3)), np.zeros((10, 3)))


def test_default_subset_sizes():
    sizes = default_subset_sizes(1000)
    assert len(sizes) == 15 and sizes[0] == 250 and sizes[-1] == 1000
    assert sizes == sorted(set(sizes))


def test_fad_infinity_removes_the_one_over_n_bias():
    # Both sets come from N(0, I_16): the true FD is 0. The reference set b has exactly that mean
    # and covariance, so only the evaluated set's sampling error remains. Its expected FD is
    # c / N with c = D + D (D + 1) / 4 = 84 (mean term tr(I)/N; covariance term
    # E||S - I||_F^2 / 4 for a Wishart S). Over 20 seeds (M = 2000) the plain FD of the whole set
    # was 0.042 +- 0.005 while the intercept was -0.0005 +- 0.0053 (max |.| 0.012) and the
    # slope 84; the tolerances below are about 4 standard deviations.
    rng = np.random.default_rng(5)
    d = 16
    b = exact_set(rng, 500, np.zeros(d), np.eye(d))
    a = rng.standard_normal((2000, d))
    plain = frechet_from_embeddings(a, b).value
    r = fad_infinity(a, b, seed=0)
    assert plain > 0.025
    assert abs(r["value"]) < 0.02
    assert r["slope"] == pytest.approx(d + d * (d + 1) / 4, rel=0.2)
    assert r["r2"] > 0.9
    assert [p[0] for p in r["points"]] == default_subset_sizes(2000)
    assert fad_infinity(a, b, seed=0) == r  # deterministic given the seed


def test_fad_infinity_recovers_a_known_nonzero_distance():
    # Mean shift of length 1 (true FD = 1). Now the pool's own mean error enters linearly,
    # 2 dmu . (mean(a) - mu_a), with standard deviation 2 / sqrt(M) = 0.032 for M = 4000;
    # the intercept must be within 0.13 (4 sd) of 1, and the bias c / N is removed.
    rng = np.random.default_rng(6)
    d = 16
    mu_b = np.zeros(d)
    mu_b[0] = 1.0
    b = exact_set(rng, 500, mu_b, np.eye(d))
    a = rng.standard_normal((4000, d))
    r = fad_infinity(a, b, sizes=[500, 1000, 2000, 3000, 4000], repeats=4, seed=1)
    assert r["value"] == pytest.approx(1.0, abs=0.13)
    assert r["slope"] > 0


def test_fad_infinity_rejects_bad_sizes():
    x = np.random.default_rng(7).standard_normal((20, 2))
    with pytest.raises(InvalidArgumentError):
        fad_infinity(x, x, sizes=[10])
    with pytest.raises(InvalidArgumentError):
        fad_infinity(x, x, sizes=[10, 40])


def test_kl_is_zero_for_identical_distributions():
    logits = np.random.default_rng(8).normal(size=(10, 5))
    assert abs(kl_divergence(logits, logits)) < 1e-5
    assert abs(kl_divergence(logits, logits + 3.0)) < 1e-5  # softmax ignores a constant shift
    assert abs(kl_divergence(logits, logits, paired=False)) < 1e-5


def test_kl_hand_computed_two_class_case():
    generated = np.array([[0.0, 0.0]])  # p = (1/2, 1/2)
    reference = np.array([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    # KL(q || p) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; the other direction would be 0.143841.
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_divergence(generated, reference) == pytest.approx(expected, abs=1e-5)
    assert abs(kl_divergence(generated, reference) - 0.143841) > 0.01
    # paired: the mean over pairs; the second pair is identical and adds 0
    two = kl_divergence(np.vstack([generated, [[1.0, 2.0]]]), np.vstack([reference, [[1.0, 2.0]]]))
    assert two == pytest.approx(expected / 2, abs=1e-5)


def test_kl_stable_audio_direction_is_generated_against_reference():
    """stable-audio-metrics: kl_div((p_ref + 1e-6).log(), p_gen, reduction="sum") = KL(p || q)."""
    generated = np.array([[0.0, 0.0]])  # p = (1/2, 1/2)
    reference = np.array([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    # KL(p || q) = 1/2 ln(2/3) + 1/2 ln(2) = 0.143841, the epsilon on q
    expected = 0.5 * math.log(0.5 / (0.75 + 1e-6)) + 0.5 * math.log(0.5 / (0.25 + 1e-6))
    got = kl_divergence(generated, reference, direction="gen||ref")
    assert got == pytest.approx(expected, abs=1e-7)
    assert abs(got - kl_divergence(generated, reference)) > 0.01
    with pytest.raises(InvalidArgumentError, match="direction"):
        kl_divergence(generated, reference, direction="sideways")


def test_kl_paired_needs_equal_rows():
    with pytest.raises(InvalidArgumentError):
        kl_divergence(np.zeros((3, 4)), np.zeros((2, 4)))
    assert kl_divergence(np.zeros((3, 4)), np.zeros((2, 4)), paired=False) == pytest.approx(
        0.0, abs=1e-5
    )


def test_inception_score_bounds():
    c = 7
    assert inception_score(np.zeros((20, c)))[0] == pytest.approx(1.0)
    same = np.tile(np.random.default_rng(9).normal(size=(1, c)), (30, 1))
    assert inception_score(same)[0] == pytest.approx(1.0)
    confident = np.tile(50.0 * np.eye(c), (4, 1))  # one-hot-like, every class equally often
    mean, std = inception_score(confident)
    assert mean == pytest.approx(c, rel=1e-6)
    mean, std = inception_score(confident, splits=2)  # each half still covers all classes
    assert mean == pytest.approx(c, rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)
    # two confident classes out of 7: IS = 2
    two = np.zeros((10, c))
    two[::2, 0] = two[1::2, 1] = 50.0
    assert inception_score(two)[0] == pytest.approx(2.0, rel=1e-6)


def test_clap_score_and_cosine():
    x = np.random.default_rng(10).normal(size=(6, 12))
    assert clap_score(x, x) == pytest.approx(1.0)
    assert clap_score(x, 5 * x) == pytest.approx(1.0)
    assert clap_score(x, -x) == pytest.approx(-1.0)
    cos = cosine_similarity_rows(
        np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [1.0, 0]])
    )
    assert cos == pytest.approx([0.0, 1 / math.sqrt(2)])
    with pytest.raises(InvalidArgumentError):
        cosine_similarity_rows(x, x[:3])
