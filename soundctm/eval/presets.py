"""Evaluation protocols of the papers (method.md section 7) as presets.

- ``audioldm`` (16 kHz, the SoundCTM-UNet / AudioLDM protocol): FAD on VGGish per-window
  embeddings, KL and IS on PaSST logits (KL paired by file name), CLAP score (LAION-CLAP
  ``630k-audioset-best.pt``).
- ``stable-audio`` (44.1 kHz, the stable-audio-metrics protocol of the SoundCTM-DiT paper): FD on
  OpenL3 embeddings, KL on PaSST logits, CLAP score, and FD / MMD on CLAP audio embeddings
  (``fd-clap``, ``mmd-clap``).

A preset evaluates at its rate: folders are read at it (``--sample-rate`` overrides), a model's
clips are resampled to it (soxr) before any embedder sees them, and each embedder then takes its
own rate. Each embedder finds its weight file with :func:`soundctm.eval.weights.fetch_weights`
(argument > variable > cache > download); :func:`check_preset` stops with one line naming the
first embedder no installed plugin provides, and building the embedders (before any audio is
generated) stops on a missing or wrong weight file.
"""

from __future__ import annotations

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
    """A protocol: its sample rate, metrics (name, params), the weight files they need and the
    clip length a model generates for it (None: the model's own)."""

    name: str
    sample_rate: int
    metrics: tuple[tuple[str, dict[str, Any]], ...]
    weights: tuple[WeightFile, ...]
    description: str
    seconds: float | None = None


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
        "OpenL3 audio model, mel256 input, env content, 512-d (as stable-audio-metrics uses)",
    ),
}

PRESETS: dict[str, Preset] = {
    "audioldm": Preset(
        "audioldm",
        16000,
        (
            ("fd", {"embedder": "vggish"}),
            ("kl", {"classifier": "passt", "embedder_params": {"protocol": "audioldm"}}),
            ("is", {"classifier": "passt", "embedder_params": {"protocol": "audioldm"}}),
            (
                "fd",
                {
                    "embedder": "passt",
                    "embedder_params": {"protocol": "audioldm"},
                    "frames": False,
                    "label": "fd-passt",
                },
            ),
            ("clap", {"embedder": "clap"}),
        ),
        (WEIGHTS["vggish"], WEIGHTS["passt"], WEIGHTS["clap"]),
        "16 kHz: FAD (VGGish), KL, IS and FD (PaSST), CLAP score",
        seconds=10.0,
    ),
    "stable-audio": Preset(
        "stable-audio",
        44100,
        (
            (
                "fd",
                {"embedder": "openl3", "embedder_params": {"content_type": "env", "hop_s": 0.5}},
            ),
            (
                "kl",
                {
                    "classifier": "passt",
                    "direction": "gen||ref",
                    "embedder_params": {"protocol": "stable-audio", "collect": "mean"},
                },
            ),
            ("clap", {"embedder": "clap"}),
            ("fd", {"embedder": "clap", "frames": False, "label": "fd-clap"}),
            ("mmd", {"embedder": "clap", "label": "mmd-clap"}),
        ),
        (WEIGHTS["openl3"], WEIGHTS["passt"], WEIGHTS["clap"]),
        "44.1 kHz: FD (OpenL3), KL (PaSST), CLAP score, FD and MMD on CLAP audio embeddings",
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
    """Check that every embedder of ``preset`` is installed (its weight file is found, or
    downloaded, when the run builds it, before any audio is generated).

    Raises :class:`MissingWeightsError` naming the embedder and the file it needs.
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


def describe_presets() -> list[dict[str, Any]]:
    """Every preset as plain data (for docs and ``--json`` listings)."""
    return [
        {
            "name": p.name,
            "sample_rate": p.sample_rate,
            "seconds": p.seconds,
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
