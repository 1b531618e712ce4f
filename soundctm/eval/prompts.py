"""The prompts a model is evaluated on: a prompts file, or SynthCaps through the dataset registry.

SynthCaps items bring their reference clip and the attributes their caption requests, so a model
evaluated on them gets Frechet distances and attribute accuracy without any files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundctm.errors import DataError, InvalidArgumentError
from soundctm.eval.results import portable_path

SYNTHCAPS = "synthcaps"
#: Prompts of ``synthcaps`` when no number is given.
DEFAULT_SYNTHCAPS_N = 16
#: SynthCaps renders clips of 1 to 10 seconds; reference clips are clamped to that range.
SYNTHCAPS_SECONDS = (1.0, 10.0)


@dataclass
class PromptSet:
    """Prompts to generate from: keys, captions, and optionally references and attributes."""

    keys: list[str]
    captions: list[str]
    references: dict[str, np.ndarray] | None
    attributes: list[dict[str, str] | None]
    description: str

    def available(self) -> set[str]:
        """What the prompts offer to metrics: ``captions``, ``reference``, ``attributes``."""
        out = {"captions"} | ({"reference"} if self.references is not None else set())
        if all(a for a in self.attributes):
            out.add("attributes")
        return out


def synthcaps_prompts(
    n: int,
    sample_rate: int,
    seconds: float,
    *,
    split: str = "test",
    seed: int = 0,
    registry: Any | None = None,
) -> PromptSet:
    """``n`` SynthCaps items of the registered ``synthcaps`` data set: captions, attributes and
    the real clips as references (rendered at ``sample_rate`` and ``seconds`` clamped to
    SynthCaps' 1-10 s)."""
    from soundctm.plugins.registry import get_registry

    lo, hi = SYNTHCAPS_SECONDS
    dataset = (registry or get_registry()).build(
        "dataset",
        SYNTHCAPS,
        split=split,
        size=int(n),
        sample_rate=int(sample_rate),
        seconds=min(hi, max(lo, float(seconds))),
        seed=seed,
    )
    keys, caps, attrs, refs = [], [], [], {}
    for i in range(int(n)):
        item = dataset[i]
        key = str(item["id"])
        keys.append(key)
        caps.append(item["caption"])
        attrs.append(dict(item["attributes"]))
        refs[key] = np.asarray(item["audio"], dtype=np.float32)
    return PromptSet(keys, caps, refs, attrs, f"synthcaps ({split} split, seed {seed}, N={n})")


def _read_lines(path: Path) -> tuple[list[str], list[str]]:
    """Keys and captions of a prompts CSV or text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts file {path} ({exc})") from exc
    keys: list[str] = []
    caps: list[str] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "caption" not in (reader.fieldnames or []):
            raise DataError(
                f"prompts file {path} has no 'caption' column; its header must be "
                "'file_name,caption' (or just 'caption')"
            )
        for line, row in enumerate(reader, start=2):
            cap = " ".join((row.get("caption") or "").split())
            if not cap:
                raise DataError(f"prompts file {path} line {line}: empty caption")
            name = (row.get("file_name") or "").strip()
            keys.append(Path(name).stem if name else f"prompt-{len(keys):05d}")
            caps.append(cap)
    else:
        for ln in text.splitlines():
            ln = ln.strip()
            if ln and not ln.startswith("#"):
                keys.append(f"prompt-{len(keys):05d}")
                caps.append(ln)
    return keys, caps


def read_prompts(
    path: str | Path,
    *,
    n: int | None = None,
    reference: str | Path | None = None,
    sample_rate: int | None = None,
) -> PromptSet:
    """Prompts from a CSV (``caption`` column, optional ``file_name`` for pairing with
    ``reference``) or a text file (one prompt per line, ``#`` lines skipped)."""
    from soundctm.eval.evalset import audio_files, read_clip

    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {str(path)!r} does not exist; check --prompts")
    keys, caps = _read_lines(path)
    if not caps:
        raise DataError(f"prompts file {path} has no prompts")
    if len(set(keys)) != len(keys):
        raise DataError(f"prompts file {path} names a file twice; file names must be unique")
    if n is not None:
        keys, caps = keys[:n], caps[:n]
    refs = None
    if reference is not None:
        files = audio_files(Path(reference), "reference")
        missing = [k for k in keys if k not in files]
        if missing:
            raise DataError(
                f"{len(missing)} prompt(s) have no same-named reference file in {reference} "
                f"(first: {missing[0]!r}); give the prompts CSV a file_name column that names them"
            )
        refs = {k: read_clip(files[k], sample_rate)[0] for k in keys}
    return PromptSet(keys, caps, refs, [None] * len(keys), portable_path(path))


def prompt_set(
    prompts: str | Path,
    n: int | None,
    reference: str | Path | None,
    sample_rate: int,
    seconds: float,
    registry: Any | None = None,
) -> PromptSet:
    """``prompts`` (a file, or ``"synthcaps"``) as a :class:`PromptSet`."""
    if str(prompts) == SYNTHCAPS:
        if reference is not None:
            raise InvalidArgumentError(
                "--prompts synthcaps brings its own reference clips; drop --reference"
            )
        return synthcaps_prompts(n or DEFAULT_SYNTHCAPS_N, sample_rate, seconds, registry=registry)
    return read_prompts(prompts, n=n, reference=reference, sample_rate=sample_rate)


__all__ = ["SYNTHCAPS", "PromptSet", "prompt_set", "read_prompts", "synthcaps_prompts"]
