"""Distribution metrics for generated audio: Frechet distance, FAD-infinity, KL, IS, CLAP score.

Pure numpy (+ ``scipy.linalg.sqrtm``), float64 throughout; the inputs are embeddings or logits
that an embedder (:mod:`soundctm.eval.embedders`) computed. Nothing here knows about models.

- Frechet distance between Gaussians fitted to two embedding sets: FID (Heusel et al. 2017,
  "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6) and
  its audio version FAD on VGGish embeddings (Kilgour et al. 2019, "Frechet Audio Distance: A
  Reference-Free Metric for Evaluating Music Enhancement Algorithms", eq. 1).
- FAD-infinity: the Frechet distance extrapolated to an infinite evaluation set (Chung & Forsyth
  2020, "Effectively Unbiased FID and Inception Score and Where to Find Them", FID_inf; adapted to
  audio by Gui et al. 2024, "Adapting Frechet Audio Distance for Generative Music Evaluation").
- KL divergence of classifier label distributions, paired clip by clip, and the Inception Score
  (Salimans et al. 2016) over classifier logits, as in the AudioLDM evaluation toolkit
  (``audioldm_eval``) used by the SoundCTM paper.
- CLAP score: the cosine similarity of paired audio and text embeddings (Wu et al. 2023,
  LAION-CLAP).
- MMD with a Gaussian RBF kernel between two embedding sets, as CMMD computes it (Jayasumana et
  al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image Generation", eq. 3 with
  their sigma = 10 and scale 1000), here on CLAP audio embeddings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from soundctm.errors import InvalidArgumentError

#: Added to the generated clips' probabilities inside the log of the KL divergence, as
#: ``audioldm_eval/metrics/kl.py`` does (``EPS = 1e-6``), so a class the generated clip rules out
#: costs ``log(1e6)`` instead of infinity.
KL_EPS = 1e-6


class FrechetWarning(UserWarning):
    """The matrix square root of a Frechet distance had a large imaginary part; the value uses
    its real part and may be inaccurate (too few samples for the embedding dimension?)."""


@dataclass(frozen=True)
class FrechetResult:
    """A Frechet distance with its numerical diagnostics.

    ``value``: the distance; ``imag_max``: the largest ``|imag|`` entry of ``sqrtm(S1 S2)``
    (0 for a real square root); ``regularised``: ``eps * I`` was added to both covariances
    because one was singular or the square root was not finite; ``n_a``, ``n_b``: the numbers of
    embeddings behind each Gaussian (0 when the statistics were given directly).
    """

    value: float
    imag_max: float
    regularised: bool
    n_a: int
    n_b: int


# -- Frechet distance --------------------------------------------------------------------------


def _check_embeddings(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidArgumentError(f"{what} must be a [N, D] array, got shape {x.shape}")
    if x.shape[0] < 2:
        raise InvalidArgumentError(
            f"{what} needs at least 2 embeddings to estimate a covariance, got {x.shape[0]}"
        )
    if not np.isfinite(x).all():
        raise InvalidArgumentError(f"{what} contains NaN or infinite values")
    return x


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (``np.cov(rowvar=False)``, divisor
    ``N - 1``) of the embeddings ``x`` ``[N, D]``, in float64: the Gaussian that FID/FAD fit to
    each set (Heusel et al. 2017, section 3; the pytorch-fid and FAD reference code)."""
    x = _check_embeddings(x, "embeddings")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _is_singular(sigma: np.ndarray) -> bool:
    """True when ``sigma`` is rank-deficient by numpy's default SVD tolerance (``matrix_rank``),
    e.g. the covariance of fewer samples than dimensions."""
    return int(np.linalg.matrix_rank(sigma)) < sigma.shape[0]


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    imag_tol: float = 1e-3,
) -> FrechetResult:
    """The Frechet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``:

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``

    (Dowson & Landau 1982; FID, Heusel et al. 2017, eq. 6; FAD, Kilgour et al. 2019, eq. 1). As
    in the pytorch-fid / FAD reference code, when a covariance is singular (``matrix_rank < D``,
    e.g. fewer samples than dimensions) or the square root is not finite, ``eps * I`` is added to
    both covariances and the root is taken again (``regularised=True``). ``sqrtm`` of a product
    of PSD matrices is real in exact arithmetic; a numerically complex root is reduced to its
    real part, and a :class:`FrechetWarning` is issued when its largest ``|imag|`` entry exceeds
    ``imag_tol`` (pytorch-fid raises instead). The value is not clipped at 0: rounding can make
    the distance of a set to itself about ``-1e-12``.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise InvalidArgumentError(
            f"Frechet distance needs means [D] and covariances [D, D] of one D, got "
            f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    if eps < 0:
        raise InvalidArgumentError(f"eps must be >= 0, got {eps}")
    regularised = _is_singular(s1) or _is_singular(s2)
    covmean = None if regularised else scipy.linalg.sqrtm(s1 @ s2)
    if covmean is None or not np.isfinite(covmean).all():
        offset = eps * np.eye(d)
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        regularised = True
    imag_max = float(np.abs(covmean.imag).max()) if np.iscomplexobj(covmean) else 0.0
    if imag_max > imag_tol:
        warnings.warn(
            f"the matrix square root of the Frechet distance has an imaginary part of up to "
            f"{imag_max:.3g} (> {imag_tol:g}); the value uses its real part and may be "
            "inaccurate: use more clips than embedding dimensions",
            FrechetWarning,
            stacklevel=2,
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean.real)
    return FrechetResult(float(value), imag_max, bool(regularised), 0, 0)


def frechet_from_embeddings(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> FrechetResult:
    """:func:`frechet_distance` between the Gaussians fitted (:func:`gaussian_stats`) to the
    embeddings ``a`` ``[N_a, D]`` and ``b`` ``[N_b, D]``. For FAD the rows are the per-example
    (0.96 s) VGGish embeddings of all clips of a set, not one row per clip."""
    a = _check_embeddings(a, "first embedding set")
    b = _check_embeddings(b, "second embedding set")
    if a.shape[1] != b.shape[1]:
        raise InvalidArgumentError(
            f"embedding sets differ in dimension: {a.shape[1]} and {b.shape[1]}"
        )
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    r = frechet_distance(mu_a, s_a, mu_b, s_b, eps=eps)
    return FrechetResult(r.value, r.imag_max, r.regularised, a.shape[0], b.shape[0])


def default_subset_sizes(n: int, count: int = 15) -> list[int]:
    """``count`` subset sizes evenly spaced from ``max(2, n // 4)`` to ``n`` (duplicates after
    rounding removed), the default grid of :func:`fad_infinity`."""
    lo = max(2, n // 4)
    return sorted({int(v) for v in np.rint(np.linspace(lo, n, count))})


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line ``y = slope * x + intercept`` and its coefficient of determination."""
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return float(slope), float(intercept), r2


def fad_infinity(
    a: np.ndarray,
    b: np.ndarray,
    *,
    sizes: Sequence[int] | None = None,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """FAD-infinity: the Frechet distance extrapolated to an infinitely large evaluated set.

    The Frechet distance of ``N`` samples is biased upwards, by about ``k / N`` to first order,
    with ``k`` depending on the model (Chung & Forsyth 2020, section 3: ``FID_N = FID_inf + k/N``);
    so scores of sets of different sizes, or of models with different ``k``, are not comparable.
    Following Chung & Forsyth's FID_inf (and fadtk's ``score_inf``, Gui et al. 2024): for each
    size ``N`` in ``sizes`` (default :func:`default_subset_sizes` of ``len(a)``: 15 sizes from
    ``len(a) // 4`` to ``len(a)``) draw ``repeats`` random subsets of ``N`` rows of ``a`` (the
    evaluated set) without replacement, compute their Frechet distance to all of ``b`` (the
    reference set), average the repeats, and fit ``FD = slope * (1 / N) + intercept`` by least
    squares. The intercept is FAD-infinity. Subsets come from ``np.random.default_rng(seed)``, so
    the result is deterministic given ``seed``.

    Returns ``{"value": intercept, "slope": slope, "points": [[N, mean FD], ...], "r2": r2,
    "repeats": repeats, "regularised": any subset needed eps * I}``.
    """
    a = _check_embeddings(a, "evaluated embedding set")
    b = _check_embeddings(b, "reference embedding set")
    if a.shape[1] != b.shape[1]:
        raise InvalidArgumentError(
            f"embedding sets differ in dimension: {a.shape[1]} and {b.shape[1]}"
        )
    if repeats < 1:
        raise InvalidArgumentError(f"FAD-infinity needs repeats >= 1, got {repeats}")
    n = a.shape[0]
    grid = default_subset_sizes(n) if sizes is None else sorted({int(s) for s in sizes})
    if len(grid) < 2 or grid[0] < 2 or grid[-1] > n:
        raise InvalidArgumentError(
            f"FAD-infinity needs at least 2 distinct subset sizes between 2 and {n} (the size "
            f"of the evaluated set), got {grid}"
        )
    rng = np.random.default_rng(seed)
    mu_b, s_b = gaussian_stats(b)
    points: list[list[float]] = []
    regularised = False
    for size in grid:
        values = []
        for _ in range(repeats):
            rows = rng.choice(n, size=size, replace=False)
            mu, s = gaussian_stats(a[rows])
            r = frechet_distance(mu, s, mu_b, s_b)
            regularised |= r.regularised
            values.append(r.value)
        points.append([int(size), float(np.mean(values))])
    pts = np.asarray(points, dtype=np.float64)
    slope, intercept, r2 = _linear_fit(1.0 / pts[:, 0], pts[:, 1])
    return {
        "value": intercept,
        "slope": slope,
        "points": points,
        "r2": r2,
        "repeats": int(repeats),
        "regularised": bool(regularised),
    }


# -- classifier-based metrics -------------------------------------------------------------------


def _log_softmax(logits: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2:
        raise InvalidArgumentError(
            f"{what} must be a [N, classes] array with N >= 1 and classes >= 2, got {x.shape}"
        )
    if not np.isfinite(x).all():
        raise InvalidArgumentError(f"{what} contains NaN or infinite values")
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


#: The two directions of the protocols' KL: audioldm_eval's ``KL(p_ref || p_gen)`` and
#: stable-audio-metrics' ``KL(p_gen || p_ref)``.
KL_DIRECTIONS = ("ref||gen", "gen||ref")


def kl_divergence(
    p_logits: np.ndarray,
    q_logits: np.ndarray,
    *,
    paired: bool = True,
    direction: str = "ref||gen",
) -> float:
    """KL divergence between classifier label distributions of generated and reference audio.

    ``p_logits`` ``[N, C]`` are the classifier logits (PaSST or PANNs over the AudioSet classes)
    of the GENERATED clips, ``q_logits`` ``[N, C]`` those of the REFERENCE clips; with
    ``paired=True`` row ``i`` of both belongs to the same caption (the protocol pairs files by
    name). Each row is turned into a label distribution with a softmax, and the result is

    ``mean_i KL(q_i || p_i) = mean_i sum_c q_ic (log q_ic - log(p_ic + 1e-6))``,

    i.e. KL(reference || generated). This is the direction and the epsilon of
    ``audioldm_eval/metrics/kl.py`` (``kl_div((softmax(gen) + EPS).log(), softmax(ref),
    reduction="sum") / N``, "KL(input2_i || input1_i)" with the reference as the "pseudo target"),
    the toolkit behind the KL numbers of AudioLDM, AudioLDM 2 and SoundCTM; it penalises
    generated clips that miss classes present in the reference. Note the argument order: the
    first argument is the generated set, yet it is the second argument of KL. Classes with
    ``q_ic = 0`` contribute 0.

    With ``paired=False`` the row counts may differ and the KL is taken between the average
    label distributions of the two sets, ``KL(mean_i q_i || mean_j p_j)`` (same epsilon).

    ``direction="gen||ref"`` swaps the roles, ``mean_i sum_c p_ic (log p_ic - log(q_ic + 1e-6))``:
    stable-audio-metrics' ``passt_kld`` (``kl_div((ref_p + 1e-6).log(), eval_p, reduction="sum")``,
    with the epsilon on the reference), the KL of the Stable Audio and SoundCTM-DiT papers.
    """
    if direction not in KL_DIRECTIONS:
        raise InvalidArgumentError(
            f"KL direction must be one of {', '.join(KL_DIRECTIONS)}, got {direction!r}"
        )
    log_p = _log_softmax(p_logits, "generated logits")
    log_q = _log_softmax(q_logits, "reference logits")
    if log_p.shape[1] != log_q.shape[1]:
        raise InvalidArgumentError(
            f"logits differ in the number of classes: {log_p.shape[1]} and {log_q.shape[1]}"
        )
    p, q = np.exp(log_p), np.exp(log_q)
    if not paired:
        p, q = p.mean(axis=0, keepdims=True), q.mean(axis=0, keepdims=True)
    elif p.shape[0] != q.shape[0]:
        raise InvalidArgumentError(
            f"paired KL needs one reference per generated clip, got {p.shape[0]} generated and "
            f"{q.shape[0]} reference rows; pair them by file name or use paired=False"
        )
    if direction == "gen||ref":
        p, q = q, p
    # KL(q || p) with the epsilon inside the second argument's log; q_c = 0 contributes 0
    terms = np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - np.log(p + KL_EPS)), 0.0)
    return float(terms.sum(axis=1).mean())


def inception_score(logits: np.ndarray, *, splits: int = 1) -> tuple[float, float]:
    """Inception Score ``IS = exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016, section 4)
    of classifier ``logits`` ``[N, C]`` (softmax per row), where ``p(y)`` is the mean of
    ``p(y|x)`` over the split. The rows are cut into ``splits`` contiguous parts
    (``np.array_split``; not shuffled) and the mean and the standard deviation (``ddof=0``) of the
    per-split scores are returned, as in the original code and torch-fidelity's ``isc``. IS ranges
    from 1 (every clip gets the same distribution) to C (confident, evenly spread classes)."""
    log_pyx = _log_softmax(logits, "logits")
    if not 1 <= splits <= log_pyx.shape[0]:
        raise InvalidArgumentError(
            f"Inception Score needs 1 <= splits <= number of clips ({log_pyx.shape[0]}), "
            f"got {splits}"
        )
    scores = []
    for part in np.array_split(log_pyx, splits, axis=0):
        pyx = np.exp(part)
        log_py = np.log(pyx.mean(axis=0, keepdims=True))
        kl = (pyx * (part - log_py)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# -- CLAP score ---------------------------------------------------------------------------------


def cosine_similarity_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of paired rows ``[N]`` of ``a`` and ``b`` ``[N, D]``:
    ``a_i . b_i / (max(||a_i||, 1e-12) * max(||b_i||, 1e-12))`` (a zero row gives 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InvalidArgumentError(
            f"cosine similarity needs two [N, D] arrays of one shape, got {a.shape} and {b.shape}"
        )
    na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / (na * nb)


def clap_score(audio_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """CLAP score: the mean cosine similarity between each clip's audio embedding and the
    embedding of its own caption (row ``i`` with row ``i``), from a text-audio model's two towers
    (LAION-CLAP, Wu et al. 2023). The value lies in [-1, 1]; some papers report it multiplied by
    100 (or clipped at 0, as CLIPScore does); neither is applied here."""
    return float(cosine_similarity_rows(audio_emb, text_emb).mean())


# -- MMD ----------------------------------------------------------------------------------------

#: CMMD's kernel bandwidth and reporting scale (google-research/cmmd ``distance.py``).
MMD_SIGMA = 10.0
MMD_SCALE = 1000.0


def mmd_rbf(
    a: np.ndarray, b: np.ndarray, sigma: float = MMD_SIGMA, scale: float = MMD_SCALE
) -> float:
    """Squared maximum mean discrepancy of ``a`` ``[N, D]`` and ``b`` ``[M, D]`` with the
    Gaussian kernel ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``, times ``scale``
    (docs/method.md, section 7):
    ``scale * (mean_ij k(a_i, a_j) + mean_ij k(b_i, b_j) - 2 mean_ij k(a_i, b_j))``.
    The means include the diagonal (the biased V-statistic), as CMMD does; the value is 0 for
    identical sets and grows as the sets move apart."""
    x = _check_embeddings(a, "the first embedding set")
    y = _check_embeddings(b, "the second embedding set")
    if x.shape[1] != y.shape[1]:
        raise InvalidArgumentError(
            f"MMD needs embeddings of one dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    if sigma <= 0:
        raise InvalidArgumentError(f"MMD sigma must be > 0, got {sigma}")
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(u: np.ndarray, v: np.ndarray) -> float:
        sq = (u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2.0 * u @ v.T
        return float(np.exp(-gamma * np.maximum(sq, 0.0)).mean())

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))
