"""SynthCaps: the built-in procedural data set of captioned sounds.

- :func:`generate` ``(split, index, seed, sample_rate, seconds) -> Item(audio, caption,
  attributes)``, deterministic and numpy-only;
- :class:`SynthCapsDataset`, the registered data set (items with a torch waveform);
- :func:`detect` and :func:`attribute_accuracy`, analytic detectors for evaluation;
- :func:`write_folder`, clips as WAV files with same-named ``.txt`` captions.
"""

from __future__ import annotations

from typing import Any

from soundctm.builtin.synthcaps.detectors import attribute_accuracy, detect
from soundctm.builtin.synthcaps.generator import SOURCES, SPLITS, Item, generate

__all__ = [
    "SOURCES",
    "SPLITS",
    "Item",
    "SynthCapsDataset",
    "attribute_accuracy",
    "detect",
    "generate",
    "write_folder",
]


def __getattr__(name: str) -> Any:  # the torch-using parts load on first use
    if name in ("SynthCapsDataset", "write_folder"):
        from soundctm.builtin.synthcaps import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
