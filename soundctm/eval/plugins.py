"""Metric plugins: each is registered (kind ``metric``) like every other component.

A metric is a class whose keyword arguments are its settings. An instance has ``name``,
``requires`` (what the evaluation set must offer: ``"reference"``, ``"captions"``,
``"attributes"``), ``embedders()`` (the embedders it will ask for, so a run can check every
weight file before it starts) and ``compute(evalset, context) -> dict``. The ``context`` (see
:class:`Context`, implemented by :class:`soundctm.eval.context.EvalContext`) builds embedders
once and caches embeddings by file content. The maths lives in :mod:`soundctm.eval.metrics`.
The built-in plugin registers these (its ``METRICS`` table); the SynthCaps attribute metric
lives with SynthCaps in the built-in plugin (``synthcaps/metric.py``): it needs its detectors.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from soundctm.errors import InvalidArgumentError
from soundctm.eval.evalset import EvalSet

Which = str  # "generated" or "reference"


class Context(Protocol):
    """What a metric may ask of the run."""

    def embedder(self, name: str, **params: Any) -> Any:
        """The embedder ``name`` (built once per run)."""

    def embeddings(
        self, embedder: Any, evalset: EvalSet, which: Which, kind: str = "embed"
    ) -> np.ndarray:
        """``[N, dim]`` embeddings of the generated or reference clips (cached); with
        ``kind="frames"`` the per-window embeddings of all clips stacked ``[rows, dim]``."""

    def logits(self, embedder: Any, evalset: EvalSet, which: Which) -> np.ndarray:
        """``[N, classes]`` classifier logits of the generated or reference clips (cached)."""

    def text_embeddings(self, embedder: Any, texts: list[str]) -> np.ndarray:
        """``[N, dim]`` text embeddings (text-audio embedders only)."""


EmbedderSpec = tuple[str, dict[str, Any]]


def _check_label(label: Any) -> str:
    if not isinstance(label, str) or not label.strip() or any(c.isspace() for c in label):
        raise InvalidArgumentError(f"a metric label must be a name without spaces, got {label!r}")
    return label


def _check_embedder(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"embedder must be a non-empty name, got {name!r}")
    return name


class FrechetMetric:
    """Frechet distance between Gaussians fitted to embeddings of generated and reference audio
    (FAD, Kilgour et al. 2019, eq. 1: ``|mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))``);
    ``fad_inf=True`` adds FAD-infinity (Jayasumana et al. 2024 / Gui et al. 2024: the distance
    extrapolated to infinitely many samples by a linear fit in ``1/N``)."""

    name = "fd"
    requires: tuple[str, ...] = ("reference",)

    def __init__(
        self,
        embedder: str = "mel-stats",
        fad_inf: bool = False,
        eps: float = 1e-6,
        frames: bool = True,
        embedder_params: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> None:
        # ``label``: the name the result is stored under (a preset with two Frechet distances,
        # e.g. ``fd`` on OpenL3 and ``fd-clap`` on CLAP, needs two names).
        self.name = _check_label(label) if label is not None else "fd"
        self.embedder = _check_embedder(embedder)
        self.fad_inf = bool(fad_inf)
        self.frames = bool(frames)
        self.eps = float(eps)
        self.embedder_params = dict(embedder_params or {})

    def embedders(self) -> list[EmbedderSpec]:
        return [(self.embedder, self.embedder_params)]

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.eval.embedders import has_frames
        from soundctm.eval.metrics import fad_infinity, frechet_from_embeddings

        emb = context.embedder(self.embedder, **self.embedder_params)
        per_window = self.frames and has_frames(emb)
        kind = "frames" if per_window else "embed"
        a = context.embeddings(emb, evalset, "generated", kind=kind)
        b = context.embeddings(emb, evalset, "reference", kind=kind)
        r = frechet_from_embeddings(a, b, eps=self.eps)
        out: dict[str, Any] = {
            "value": float(r.value),
            "embedder": emb.name,
            "n": evalset.n,
            "rows": int(r.n_a),
            "rows_reference": int(r.n_b),
            "per_window": per_window,
            "imag_max": float(r.imag_max),
            "regularised": bool(r.regularised),
        }
        if self.fad_inf:
            inf = fad_infinity(a, b)
            out["fad_inf"] = float(inf["value"])
            out["fad_inf_slope"] = float(inf["slope"])
            out["fad_inf_r2"] = float(inf["r2"])
        return out


class MMDMetric:
    """Squared MMD with a Gaussian kernel between the embeddings of generated and reference
    audio, CMMD's estimator (Jayasumana et al. 2024: sigma 10, times 1000), one embedding per
    clip; on CLAP audio embeddings in the ``stable-audio`` preset (``mmd-clap``)."""

    name = "mmd"
    requires: tuple[str, ...] = ("reference",)

    def __init__(
        self,
        embedder: str = "clap",
        sigma: float = 10.0,
        scale: float = 1000.0,
        embedder_params: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> None:
        if not float(sigma) > 0:
            raise InvalidArgumentError(f"MMD sigma must be > 0, got {sigma}")
        self.name = _check_label(label) if label is not None else "mmd"
        self.embedder = _check_embedder(embedder)
        self.sigma, self.scale = float(sigma), float(scale)
        self.embedder_params = dict(embedder_params or {})

    def embedders(self) -> list[EmbedderSpec]:
        return [(self.embedder, self.embedder_params)]

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.eval.metrics import mmd_rbf

        emb = context.embedder(self.embedder, **self.embedder_params)
        a = context.embeddings(emb, evalset, "generated")
        b = context.embeddings(emb, evalset, "reference")
        return {
            "value": mmd_rbf(a, b, sigma=self.sigma, scale=self.scale),
            "embedder": emb.name,
            "n": evalset.n,
            "sigma": self.sigma,
            "scale": self.scale,
        }


class _ClassifierMetric:
    requires: tuple[str, ...] = ()

    def __init__(
        self, classifier: str = "passt", embedder_params: dict[str, Any] | None = None
    ) -> None:
        self.classifier = _check_embedder(classifier)
        self.embedder_params = dict(embedder_params or {})

    def embedders(self) -> list[EmbedderSpec]:
        return [(self.classifier, self.embedder_params)]

    def _classifier(self, context: Context) -> Any:
        from soundctm.eval.embedders import has_logits

        emb = context.embedder(self.classifier, **self.embedder_params)
        if not has_logits(emb):
            raise InvalidArgumentError(
                f"metric {self.name!r} needs a classifier with label logits, but embedder "  # type: ignore[attr-defined]
                f"{emb.name!r} has none; choose a classifier such as 'passt'"
            )
        return emb


class KLMetric(_ClassifierMetric):
    """KL divergence between the classifier's label distributions of each reference clip and
    its paired generated clip, averaged over pairs: ``KL(p_ref || p_gen)`` (``direction``
    ``"ref||gen"``, AudioLDM's KL on PaSST / PANNs outputs) or ``KL(p_gen || p_ref)``
    (``"gen||ref"``, stable-audio-metrics')."""

    name = "kl"
    requires: tuple[str, ...] = ("reference",)

    def __init__(
        self,
        classifier: str = "passt",
        direction: str = "ref||gen",
        embedder_params: dict[str, Any] | None = None,
    ) -> None:
        from soundctm.eval.metrics import KL_DIRECTIONS

        super().__init__(classifier, embedder_params)
        if direction not in KL_DIRECTIONS:
            raise InvalidArgumentError(
                f"KL direction must be one of {', '.join(KL_DIRECTIONS)}, got {direction!r}"
            )
        self.direction = direction

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.eval.metrics import kl_divergence

        emb = self._classifier(context)
        gen = context.logits(emb, evalset, "generated")
        ref = context.logits(emb, evalset, "reference")
        value = kl_divergence(gen, ref, paired=True, direction=self.direction)
        return {
            "value": float(value),
            "classifier": emb.name,
            "n": int(gen.shape[0]),
            "direction": self.direction,
        }


class ISMetric(_ClassifierMetric):
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over the classifier's logits of the
    generated clips (Salimans et al. 2016)."""

    name = "is"

    def __init__(
        self,
        classifier: str = "passt",
        splits: int = 1,
        embedder_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(classifier, embedder_params)
        if int(splits) < 1:
            raise InvalidArgumentError(f"IS splits must be >= 1, got {splits}")
        self.splits = int(splits)

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.eval.metrics import inception_score

        emb = self._classifier(context)
        logits = context.logits(emb, evalset, "generated")
        mean, std = inception_score(logits, splits=min(self.splits, max(1, logits.shape[0])))
        return {
            "value": float(mean),
            "std": float(std),
            "classifier": emb.name,
            "n": int(logits.shape[0]),
        }


class ClapMetric:
    """CLAP score: mean cosine similarity between the audio embedding of each generated clip and
    the text embedding of its caption (Wu et al. 2023, LAION-CLAP), through an embedder with both
    an audio and a text tower."""

    name = "clap"
    requires: tuple[str, ...] = ("captions",)

    def __init__(self, embedder: str = "clap", embedder_params: dict[str, Any] | None = None):
        self.embedder = _check_embedder(embedder)
        self.embedder_params = dict(embedder_params or {})

    def embedders(self) -> list[EmbedderSpec]:
        return [(self.embedder, self.embedder_params)]

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.eval.embedders import has_text
        from soundctm.eval.metrics import clap_score

        emb = context.embedder(self.embedder, **self.embedder_params)
        if not has_text(emb):
            raise InvalidArgumentError(
                f"metric 'clap' needs an embedder with a text tower, but {emb.name!r} has "
                "none; choose a CLAP embedder"
            )
        audio = context.embeddings(emb, evalset, "generated")
        text = context.text_embeddings(emb, evalset.captions())
        return {"value": float(clap_score(audio, text)), "embedder": emb.name, "n": evalset.n}


class ContentPreservation:
    """Similarity of each generated clip to its paired reference clip, averaged over pairs.

    For SoundCTM's promise the reference is the 1-step output of the same prompt and seed and the
    generated clip the N-step output: with gamma = 0 the content should be kept (similarity near
    1), with gamma = 1 fresh noise enters every step and it is not. ``similarity``:

    - ``"spectrogram"``: Pearson correlation of the two log-mel spectrograms (dB, floored 80 dB
      below the peak), over the frames both clips have;
    - ``"embedding"``: cosine similarity of the embedder's embeddings.
    """

    name = "content-preservation"
    requires: tuple[str, ...] = ("reference",)

    def __init__(
        self,
        similarity: str = "spectrogram",
        embedder: str = "mel-stats",
        embedder_params: dict[str, Any] | None = None,
    ) -> None:
        if similarity not in ("spectrogram", "embedding"):
            raise InvalidArgumentError(
                f"content-preservation similarity must be 'spectrogram' or 'embedding', "
                f"got {similarity!r}"
            )
        self.similarity = similarity
        self.embedder = _check_embedder(embedder)
        self.embedder_params = dict(embedder_params or {})

    def embedders(self) -> list[EmbedderSpec]:
        return [(self.embedder, self.embedder_params)] if self.similarity == "embedding" else []

    def compute(self, evalset: EvalSet, context: Context) -> dict[str, Any]:
        from soundctm.eval.metrics import cosine_similarity_rows

        if self.similarity == "embedding":
            emb = context.embedder(self.embedder, **self.embedder_params)
            a = context.embeddings(emb, evalset, "generated")
            b = context.embeddings(emb, evalset, "reference")
            sims = cosine_similarity_rows(a, b)
            extra = {"embedder": emb.name}
        else:
            sims = np.array(
                [
                    spectrogram_similarity(it.audio, it.reference, evalset.sample_rate)
                    for it in evalset.items
                    if it.reference is not None
                ]
            )
            extra = {}
        return {
            "value": float(sims.mean()),
            "std": float(sims.std()),
            "min": float(sims.min()),
            "similarity": self.similarity,
            "n": int(sims.size),
            **extra,
        }


# ---------------------------------------------------------------------- spectrogram similarity
def log_mel_db(
    x: np.ndarray, sample_rate: int, n_mels: int = 64, floor_db: float = 80.0
) -> np.ndarray:
    """Log-mel power spectrogram ``[n_mels, frames]`` in dB, floored ``floor_db`` below its peak.

    Hann-windowed STFT with ``n_fft`` the power of two nearest 64 ms and hop ``n_fft / 4``, and
    the Slaney mel filterbank of the built-in ``mel`` autoencoder."""
    from soundctm.engine.dsp import mel_filterbank

    n_fft = 1 << max(6, round(math.log2(0.064 * sample_rate)))
    hop = n_fft // 4
    xx = np.asarray(x, dtype=np.float64).reshape(-1)
    if xx.size < n_fft:
        xx = np.pad(xx, (0, n_fft - xx.size))
    frames = np.lib.stride_tricks.sliding_window_view(xx, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    fb = mel_filterbank(sample_rate, n_fft, n_mels).double().numpy()
    mel = fb @ power.T
    db = 10.0 * np.log10(np.maximum(mel, 1e-20))
    return np.maximum(db, db.max() - floor_db)


def spectrogram_similarity(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
    """Pearson correlation of the log-mel spectrograms of ``a`` and ``b`` (1 = same content)."""
    sa, sb = log_mel_db(a, sample_rate), log_mel_db(b, sample_rate)
    frames = min(sa.shape[1], sb.shape[1])
    u = sa[:, :frames].ravel() - sa[:, :frames].mean()
    v = sb[:, :frames].ravel() - sb[:, :frames].mean()
    nu_, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu_ == 0.0 or nv == 0.0:  # a flat spectrogram (silence): equal or not, nothing between
        return 1.0 if nu_ == nv and np.allclose(sa[:, :frames], sb[:, :frames]) else 0.0
    return float(u @ v / (nu_ * nv))


__all__ = [
    "ClapMetric",
    "ContentPreservation",
    "Context",
    "FrechetMetric",
    "ISMetric",
    "KLMetric",
    "MMDMetric",
    "log_mel_db",
    "spectrogram_similarity",
]
