"""Evaluation protocols of the papers (method.md section 7) as presets.

- ``audioldm`` (16 kHz, the SoundCTM / AudioLDM protocol): FAD on VGGish embeddings, KL and IS
  on PaSST logits (KL paired by file name), CLAP score (LAION-CLAP).
- ``stable-audio`` (44.1 kHz, the stable-audio-metrics protocol): FD on OpenL3 embeddings, KL on
  PaSST logits, CLAP score.

Each embedder needs a weight file the user supplies (nothing is downloaded); a preset names them,
and :func:`check_preset` stops with one line naming the first missing file or embedder before
any audio is generated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from soundctm.errors import InvalidArgumentError, SoundCTMError


@dataclass(frozen=True)
class WeightFile:
    """The weight file an embedder loads: where to point it and what it is."""

    embedder: str
    env: str
    description: str


@dataclass(frozen=True)
class Preset:
    """A protocol: its sample rate, metrics (name, params) and the weight files they need."""

    name: str
    sample_rate: int
    metrics: tuple[tuple[str, dict[str, Any]], ...]
    weights: tuple[WeightFile, ...]
    description: str


WEIGHTS: dict[str, WeightFile] = {
    "vggish": WeightFile(
        "vggish",
        "SOUNDCTM_VGGISH_WEIGHTS",
        "torchvggish weights (vggish-10086976.pth, from harritaylor/torchvggish releases)",
    ),
    "passt": WeightFile(
        "passt",
        "SOUNDCTM_PASST_WEIGHTS",
        "PaSST-S AudioSet classifier (passt-s-f128-p16-s10-ap.476-swa.pt, kkoutini/PaSST releases)",
    ),
    "clap": WeightFile(
        "clap",
        "SOUNDCTM_CLAP_WEIGHTS",
        "LAION-CLAP checkpoint (630k-audioset-best.pt, or 630k-audioset-fusion-best.pt)",
    ),
    "openl3": WeightFile(
        "openl3",
        "SOUNDCTM_OPENL3_WEIGHTS",
        "OpenL3 audio model, mel256 input, music content, 512-d (as stable-audio-metrics uses)",
    ),
}

PRESETS: dict[str, Preset] = {
    "audioldm": Preset(
        "audioldm",
        16000,
        (
            ("fd", {"embedder": "vggish"}),
            ("kl", {"classifier": "passt"}),
            ("is", {"classifier": "passt"}),
            ("clap", {"embedder": "clap"}),
        ),
        (WEIGHTS["vggish"], WEIGHTS["passt"], WEIGHTS["clap"]),
        "16 kHz: FAD (VGGish), KL and IS (PaSST), CLAP score",
    ),
    "stable-audio": Preset(
        "stable-audio",
        44100,
        (
            ("fd", {"embedder": "openl3"}),
            ("kl", {"classifier": "passt"}),
            ("clap", {"embedder": "clap"}),
        ),
        (WEIGHTS["openl3"], WEIGHTS["passt"], WEIGHTS["clap"]),
        "44.1 kHz: FD (OpenL3), KL (PaSST), CLAP score",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset ``name``; a one-line error listing the known ones."""
    if name not in PRESETS:
        raise InvalidArgumentError(
            f"unknown evaluation preset {name!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    return PRESETS[name]


class MissingWeightsError(SoundCTMError):
    """A preset needs an embedder or weight file that is not there."""


def check_preset(preset: Preset, registry: Any | None = None) -> None:
    """Check that every embedder of ``preset`` is installed and its weight file exists.

    Raises :class:`MissingWeightsError` naming the embedder, the file and the variable to set.
    An embedder's own loader may still refuse a file that exists but is damaged.
    """
    from soundctm.plugins.registry import get_registry

    registry = registry or get_registry()
    installed = set(registry.names("embedder"))
    for w in preset.weights:
        if w.embedder not in installed:
            raise MissingWeightsError(
                f"preset {preset.name!r} needs the embedder {w.embedder!r} ({w.description}), "
                f"which no installed plugin provides; install a plugin that does, or evaluate "
                f"with --metrics/--embedder instead of --preset"
            )
        path = os.environ.get(w.env, "").strip()
        if not path:
            raise MissingWeightsError(
                f"preset {preset.name!r} needs the {w.embedder} weight file ({w.description}); "
                f"set {w.env}=/path/to/file (nothing is downloaded)"
            )
        if not os.path.isfile(path):
            raise MissingWeightsError(
                f"preset {preset.name!r}: the {w.embedder} weight file {path!r} ({w.env}) does "
                f"not exist; fix {w.env} ({w.description})"
            )


def describe_presets() -> list[dict[str, Any]]:
    """Every preset as plain data (for docs and ``--json`` listings)."""
    return [
        {
            "name": p.name,
            "sample_rate": p.sample_rate,
            "description": p.description,
            "metrics": [{"name": m, "params": dict(params)} for m, params in p.metrics],
            "weights": [
                {"embedder": w.embedder, "env": w.env, "file": w.description} for w in p.weights
            ],
        }
        for p in PRESETS.values()
    ]


__all__ = [
    "PRESETS",
    "WEIGHTS",
    "MissingWeightsError",
    "Preset",
    "WeightFile",
    "check_preset",
    "describe_presets",
    "get_preset",
]
