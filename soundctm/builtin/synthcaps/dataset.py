"""The registered SynthCaps data set (torch items) and a writer of WAV + caption folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from soundctm.builtin.synthcaps.generator import check_args, generate
from soundctm.engine.audio_io import write_wav
from soundctm.engine.files import ensure_writable_dir, write_text_atomic
from soundctm.errors import InvalidArgumentError
from soundctm.events import BatchFinished, Callback, emit

MANIFEST = "synthcaps.jsonl"


def item_id(split: str, index: int, seed: int) -> str:
    """The stable name of an item, e.g. ``synthcaps-test-s0-000042``."""
    return f"synthcaps-{split}-s{seed}-{index:06d}"


class SynthCapsDataset:
    """SynthCaps, generated on the fly: item ``i`` is ``generate(split, i, seed)``.

    Items are dicts ``audio`` (float32 tensor [n]), ``caption``, ``attributes`` and ``id``.
    Generation is deterministic, so workers and restarts see the same data.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 10000,
        sample_rate: int = 16000,
        seconds: float = 3.0,
        seed: int = 0,
    ) -> None:
        check_args(split, sample_rate, seconds)
        if size < 1:
            raise InvalidArgumentError(f"SynthCaps size must be at least 1, got {size}")
        self.split = split
        self.size = int(size)
        self.sample_rate = int(sample_rate)
        self.seconds = float(seconds)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"SynthCaps index {index} out of range for size {self.size}")
        item = generate(self.split, index, self.seed, self.sample_rate, self.seconds)
        return {
            "audio": torch.from_numpy(item.audio),
            "caption": item.caption,
            "attributes": item.attributes,
            "id": item_id(self.split, index, self.seed),
        }

    def __repr__(self) -> str:
        return (
            f"SynthCapsDataset(split={self.split!r}, size={self.size}, "
            f"sample_rate={self.sample_rate}, seconds={self.seconds}, seed={self.seed})"
        )


def write_folder(
    path: str | Path,
    split: str,
    n: int,
    *,
    sample_rate: int = 16000,
    seconds: float = 3.0,
    seed: int = 0,
    start: int = 0,
    subtype: str = "PCM_16",
    manifest: bool = True,
    callback: Callback | None = None,
) -> list[Path]:
    """Write items ``start .. start+n-1`` of ``split`` to ``path`` as ``<id>.wav`` with a
    same-named ``<id>.txt`` caption, plus (``manifest=True``) ``synthcaps.jsonl`` listing each
    file, caption and attributes (for attribute-accuracy references). Every file is written to
    a temporary name and renamed. Emits :class:`~soundctm.events.BatchFinished` per clip.
    Returns the WAV paths."""
    check_args(split, sample_rate, seconds)
    if n < 1 or start < 0:
        raise InvalidArgumentError(f"write_folder needs n >= 1 and start >= 0, got {n}, {start}")
    folder = ensure_writable_dir(Path(path))
    wavs: list[Path] = []
    rows: list[str] = []
    for k, index in enumerate(range(start, start + n)):
        item = generate(split, index, seed, sample_rate, seconds)
        name = item_id(split, index, seed)
        wav = folder / f"{name}.wav"
        write_wav(wav, item.audio, sample_rate, subtype=subtype)
        write_text_atomic(wav.with_suffix(".txt"), item.caption + "\n")
        wavs.append(wav)
        rows.append(
            json.dumps({"file": wav.name, "caption": item.caption, "attributes": item.attributes})
        )
        emit(callback, BatchFinished(done=k + 1, total=n))
    if manifest:
        write_text_atomic(folder / MANIFEST, "\n".join(rows) + "\n")
    return wavs
