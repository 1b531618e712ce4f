"""Typed results of an evaluation run and their JSON form (``results.json``).

The runner builds an :class:`EvalResults`; :meth:`EvalResults.to_json` gives the dictionary that
``results.json`` holds and that the Markdown report is rendered from, so the two cannot disagree.
What one metric returns (:data:`MetricValues`) is the metric plugin's own JSON-able dictionary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from soundctm._version import __version__

RESULTS_VERSION = 1
Mode = Literal["folders", "model", "compare"]
#: What a metric plugin's ``compute`` returns: JSON-able values, ``value`` the headline number.
MetricValues = dict[str, Any]


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers, tuples as lists, non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def portable_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it, else absolute.

    Reports are often committed next to the code (docs/default-model/): a path relative to the
    repository travels, an absolute one names the machine that wrote it.
    """
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


@dataclass(frozen=True)
class EmbedderInfo:
    """An embedder a run used: weight checksum, sample rate and embedding size, and every weight
    file it loaded (``{name, file, path, sha256, status}``, see
    :class:`soundctm.eval.weights.WeightRecord`)."""

    checksum: str
    sample_rate: int
    dim: int
    weights: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class CacheInfo:
    """The embedding cache of a run (``dir`` None: no cache) and its look-up counts."""

    dir: str | None
    hits: int
    misses: int


@dataclass(frozen=True)
class ModelInfo:
    """A model a run generated with."""

    path: str
    kind: str
    card_sha256: str
    sample_rate: int


@dataclass(frozen=True)
class Sampling:
    """How the audio of a run was generated (modes model and compare)."""

    model: str
    steps: int
    gamma: float
    nu: float
    omega: float
    solver: str


@dataclass(frozen=True)
class RunResult:
    """One evaluated setting: its label, N, the metrics' values and how it was generated."""

    label: str
    n: int
    metrics: dict[str, MetricValues]
    sampling: Sampling | None = None

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {"label": self.label}
        if self.sampling is not None:
            head.update(asdict(self.sampling))
        return {**head, "n": self.n, "metrics": self.metrics}


@dataclass(frozen=True)
class ContentRow:
    """Content preservation of one (steps, gamma) against the 1-step output."""

    steps: int
    gamma: float
    values: MetricValues

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "gamma": self.gamma, **self.values}


@dataclass(frozen=True)
class ContentPreservationResult:
    """The content-preservation table of a CTM student (mode model)."""

    rows: list[ContentRow]
    similarity: str = "spectrogram"
    reference_steps: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "similarity": self.similarity,
            "reference_steps": self.reference_steps,
            "rows": [r.to_json() for r in self.rows],
        }


@dataclass(frozen=True)
class Generation:
    """What modes model and compare share: seeds, clip length, prompts and models."""

    seed: int
    seconds: float
    prompts: str
    models: dict[str, ModelInfo]


@dataclass(frozen=True)
class EvalResults:
    """Everything a run found; ``files`` (kind -> file name) once the report is written."""

    mode: Mode
    n: int
    sample_rate: int
    preset: str | None
    metrics: list[str]
    skipped: dict[str, str]
    runs: list[RunResult]
    embedders: dict[str, EmbedderInfo]
    cache: CacheInfo
    inputs: dict[str, Any] | None = None
    generation: Generation | None = None
    content_preservation: ContentPreservationResult | None = None
    b_vs_a: MetricValues | None = None
    files: dict[str, str] | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    soundctm_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        """The content of ``results.json`` (keys in their documented order)."""
        out: dict[str, Any] = {
            "soundctm_eval": RESULTS_VERSION,
            "mode": self.mode,
            "soundctm_version": self.soundctm_version,
            "created": self.created,
            "n": self.n,
            "sample_rate": self.sample_rate,
        }
        gen = self.generation
        if gen is not None:
            out.update(seed=gen.seed, seconds=gen.seconds)
        out["preset"] = self.preset
        if self.mode == "folders":
            out["inputs"] = self.inputs
        if gen is not None:
            out["prompts"] = gen.prompts
            out["models"] = {k: asdict(v) for k, v in gen.models.items()}
        out.update(metrics=self.metrics, skipped=self.skipped)
        out["runs"] = [r.to_json() for r in self.runs]
        if self.mode == "model":
            cp = self.content_preservation
            out["content_preservation"] = cp.to_json() if cp is not None else None
        if self.mode == "compare":
            out["b_vs_a"] = self.b_vs_a
        out["embedders"] = {k: asdict(v) for k, v in self.embedders.items()}
        out["cache"] = asdict(self.cache)
        if self.files is not None:
            out["files"] = self.files
        return jsonable(out)


@dataclass(frozen=True)
class ExampleRow:
    """One prompt of the spectrogram figure: its title and one clip per column."""

    title: str
    audio: list[np.ndarray]


@dataclass(frozen=True)
class Examples:
    """The clips of ``spectrograms.png``: columns (settings) by rows (prompts)."""

    sample_rate: int
    columns: list[str]
    rows: list[ExampleRow]


__all__ = [
    "RESULTS_VERSION",
    "CacheInfo",
    "ContentPreservationResult",
    "ContentRow",
    "EmbedderInfo",
    "EvalResults",
    "ExampleRow",
    "Examples",
    "Generation",
    "MetricValues",
    "Mode",
    "ModelInfo",
    "RunResult",
    "Sampling",
    "jsonable",
    "portable_path",
]
