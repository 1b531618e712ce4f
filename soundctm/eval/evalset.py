"""The evaluation set: generated clips, optional references paired by file name, captions.

An :class:`EvalSet` is what every metric plugin receives. Each :class:`EvalItem` has a key (the
file stem, used for pairing), the generated audio (mono float32 at the set's sample rate), and
optionally a reference clip with the same key, a caption and SynthCaps attributes. Items built
from files carry the SHA-256 of the file content, so the embedding cache can recognise them.

:func:`load_folders` builds a set from folders on disk and refuses bad input up front with one
line naming the problem: a missing or empty folder, unpaired files, unreadable or empty audio,
sample rates that differ, captions missing for some files.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from soundctm.engine.audio import AUDIO_SUFFIXES
from soundctm.engine.checkpoint import sha256_file
from soundctm.errors import AudioFileError, DataError, InvalidArgumentError

CAPTIONS_FILE_COLUMN, CAPTIONS_TEXT_COLUMN = "file_name", "caption"
SYNTHCAPS_MANIFEST = "synthcaps.jsonl"


@dataclass
class EvalItem:
    """One clip to evaluate. ``audio`` and ``reference`` are mono float32 at the set's rate."""

    key: str
    audio: np.ndarray
    caption: str | None = None
    reference: np.ndarray | None = None
    attributes: dict[str, str] | None = None
    path: Path | None = None
    reference_path: Path | None = None
    audio_sha256: str = ""
    reference_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.audio_sha256:
            self.audio_sha256 = array_sha256(self.audio)
        if self.reference is not None and not self.reference_sha256:
            self.reference_sha256 = array_sha256(self.reference)


@dataclass
class EvalSet:
    """Items to evaluate, all at ``sample_rate``; ``label`` names the set in reports."""

    items: list[EvalItem]
    sample_rate: int
    label: str = "generated"
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def has_reference(self) -> bool:
        return bool(self.items) and all(it.reference is not None for it in self.items)

    @property
    def has_captions(self) -> bool:
        return bool(self.items) and all(it.caption for it in self.items)

    @property
    def has_attributes(self) -> bool:
        return bool(self.items) and all(it.attributes for it in self.items)

    def available(self) -> set[str]:
        """What this set offers to metrics: ``reference``, ``captions``, ``attributes``."""
        out = set()
        if self.has_reference:
            out.add("reference")
        if self.has_captions:
            out.add("captions")
        if self.has_attributes:
            out.add("attributes")
        return out

    def generated(self) -> list[np.ndarray]:
        return [it.audio for it in self.items]

    def references(self) -> list[np.ndarray]:
        return [it.reference for it in self.items if it.reference is not None]

    def captions(self) -> list[str]:
        return [it.caption or "" for it in self.items]

    def at_rate(self, rate: int) -> EvalSet:
        """A copy with every clip resampled to ``rate`` Hz (soxr HQ; content keys recomputed);
        itself when it is already at ``rate``. Presets evaluate at their protocol's rate."""
        if int(rate) == int(self.sample_rate):
            return self
        import torch

        from soundctm.eval.embedders import resample_hq

        def res(x: np.ndarray | None) -> np.ndarray | None:
            if x is None:
                return None
            y = resample_hq(
                torch.from_numpy(np.asarray(x, dtype=np.float32)), self.sample_rate, rate
            )
            return y.numpy()

        items = [
            replace(
                it,
                audio=res(it.audio),
                reference=res(it.reference),
                audio_sha256="",
                reference_sha256="",
            )
            for it in self.items
        ]
        for it in items:
            it.__post_init__()
        return EvalSet(items, int(rate), self.label, {**self.info, "resampled_to": int(rate)})

    def with_references(self, refs: dict[str, np.ndarray], label: str | None = None) -> EvalSet:
        """A copy whose item ``k`` has reference ``refs[k]`` (paired by key)."""
        missing = [it.key for it in self.items if it.key not in refs]
        if missing:
            raise DataError(f"no reference for {missing[0]!r} ({len(missing)} unpaired)")
        items = [replace(it, reference=refs[it.key], reference_sha256="") for it in self.items]
        for it in items:
            it.__post_init__()
        return EvalSet(items, self.sample_rate, label or self.label, dict(self.info))


def array_sha256(x: np.ndarray) -> str:
    """SHA-256 of a clip's float32 samples (for audio that exists only in memory)."""
    data = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return hashlib.sha256(data.tobytes()).hexdigest()


def audio_files(folder: Path, what: str) -> dict[str, Path]:
    """The audio files directly in ``folder`` by stem; one-line errors for bad folders."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{what} folder {str(folder)!r} does not exist; check the path")
    if not folder.is_dir():
        raise DataError(f"{what} folder {str(folder)!r} is not a folder; give a folder of audio")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise DataError(
                    f"{what} folder {folder} has both {files[p.stem].name} and {p.name}; "
                    "file names (without extension) must be unique for pairing"
                )
            files[p.stem] = p
    if not files:
        raise DataError(
            f"{what} folder {str(folder)!r} holds no audio files (.wav, .flac, .ogg, .mp3)"
        )
    return files


def read_clip(path: Path, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A file as mono float32 and its rate (resampled to ``target_rate`` if given)."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioFileError(f"cannot read audio file {path} ({reason}); fix or remove it") from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"audio file {path} is empty (0 samples); fix or remove it")
    x = data.mean(axis=1).astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise AudioFileError(f"audio file {path} holds NaN or infinite samples; fix or remove it")
    if target_rate is not None and int(rate) != int(target_rate):
        import torch

        from soundctm.engine.audio import resample_soxr

        x = resample_soxr(torch.from_numpy(x), int(rate), int(target_rate)).numpy()
        rate = target_rate
    return x, int(rate)


def _common_rate(files: Iterable[Path], what: str) -> int:
    rates: dict[int, Path] = {}
    for p in files:
        try:
            info = sf.info(str(p))
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise AudioFileError(
                f"cannot read audio file {p} ({reason}); fix or remove it"
            ) from exc
        rates.setdefault(int(info.samplerate), p)
        if len(rates) > 1:
            (r1, p1), (r2, p2) = list(rates.items())[:2]
            raise DataError(
                f"{what} files have different sample rates ({p1.name}: {r1} Hz, {p2.name}: "
                f"{r2} Hz); resample them to one rate or pass --sample-rate HZ"
            )
    return next(iter(rates))


def read_captions_csv(path: Path) -> dict[str, str]:
    """``{file stem: caption}`` from a CSV with the columns ``file_name`` and ``caption``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"captions file {str(path)!r} does not exist; check --captions")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataError(f"cannot read captions file {path} ({exc})") from exc
    for col in (CAPTIONS_FILE_COLUMN, CAPTIONS_TEXT_COLUMN):
        if col not in columns:
            raise DataError(
                f"captions file {path} has no {col!r} column; its header must be "
                f"'{CAPTIONS_FILE_COLUMN},{CAPTIONS_TEXT_COLUMN}'"
            )
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.get(CAPTIONS_FILE_COLUMN) or "").strip()
        caption = " ".join((row.get(CAPTIONS_TEXT_COLUMN) or "").split())
        if not name or not caption:
            raise DataError(f"captions file {path} line {line}: empty file name or caption")
        out[Path(name).stem] = caption
    if not out:
        raise DataError(f"captions file {path} has no rows; add lines 'file_name,caption'")
    return out


def read_synthcaps_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{stem: {"caption", "attributes"}}`` from a folder's ``synthcaps.jsonl`` (if any)."""
    path = Path(folder) / SYNTHCAPS_MANIFEST
    if not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            out[Path(row["file"]).stem] = {
                "caption": str(row["caption"]),
                "attributes": {str(k): str(v) for k, v in dict(row["attributes"]).items()},
            }
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} line {line} is not a SynthCaps manifest row ({exc})") from exc
    return out


def _side_caption(path: Path) -> str | None:
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return None
    try:
        return " ".join(txt.read_text(encoding="utf-8-sig").split()) or None
    except (OSError, UnicodeDecodeError):
        return None


def _unpaired_error(a: Sequence[str], b: Sequence[str], gen: Path, ref: Path) -> DataError:
    only_gen = sorted(set(a) - set(b))
    only_ref = sorted(set(b) - set(a))
    if only_gen:
        return DataError(
            f"{len(only_gen)} generated file(s) have no same-named reference in {ref} (first: "
            f"{only_gen[0]!r}); reference files are paired with generated ones by file name"
        )
    return DataError(
        f"{len(only_ref)} reference file(s) have no same-named generated file in {gen} (first: "
        f"{only_ref[0]!r}); reference files are paired with generated ones by file name"
    )


def load_folders(
    generated: str | Path,
    *,
    reference: str | Path | None = None,
    captions: str | Path | None = None,
    sample_rate: int | None = None,
    label: str = "generated",
) -> EvalSet:
    """An :class:`EvalSet` from a folder of generated audio.

    - ``reference``: a folder whose files pair with the generated ones by file name (stem);
      every file must have a partner.
    - ``captions``: a CSV ``file_name,caption``; without it, same-named ``.txt`` files or a
      ``synthcaps.jsonl`` manifest (written by SynthCaps' ``write_folder``) give the captions.
      A ``synthcaps.jsonl`` in the generated or reference folder also gives the attributes.
    - ``sample_rate``: resample everything to this rate; without it, all files (generated and
      reference) must share one rate.
    """
    if sample_rate is not None and sample_rate < 1000:
        raise InvalidArgumentError(f"sample rate must be at least 1000 Hz, got {sample_rate}")
    gen_dir = Path(generated)
    gen_files = audio_files(gen_dir, "generated")
    ref_dir = Path(reference) if reference is not None else None
    ref_files = audio_files(ref_dir, "reference") if ref_dir is not None else {}
    if ref_dir is not None and set(gen_files) != set(ref_files):
        raise _unpaired_error(list(gen_files), list(ref_files), gen_dir, ref_dir)
    if sample_rate is None:
        rate = _common_rate(gen_files.values(), "generated")
        if ref_files:
            ref_rate = _common_rate(ref_files.values(), "reference")
            if ref_rate != rate:
                raise DataError(
                    f"generated audio is {rate} Hz but reference audio is {ref_rate} Hz; "
                    "resample one folder or pass --sample-rate HZ to resample both"
                )
    else:
        rate = int(sample_rate)
    manifest = read_synthcaps_manifest(gen_dir)
    if ref_dir is not None:
        manifest = {**read_synthcaps_manifest(ref_dir), **manifest}
    caption_table = read_captions_csv(Path(captions)) if captions is not None else None
    if caption_table is not None:
        missing = [k for k in gen_files if k not in caption_table]
        if missing:
            raise DataError(
                f"captions file {captions} has no caption for {len(missing)} generated file(s) "
                f"(first: {missing[0]!r}); add a row 'file_name,caption' for each"
            )
    items: list[EvalItem] = []
    resampled = sample_rate is not None
    for key, path in gen_files.items():
        audio, _ = read_clip(path, rate if resampled else None)
        ref = ref_path = None
        ref_sha = ""
        if ref_dir is not None:
            ref_path = ref_files[key]
            ref, _ = read_clip(ref_path, rate if resampled else None)
            ref_sha = _content_key(ref_path, rate if resampled else None)
        meta = manifest.get(key, {})
        if caption_table is not None:
            caption = caption_table[key]
        else:
            caption = (
                meta.get("caption")
                or _side_caption(path)
                or (_side_caption(ref_path) if ref_path else None)
            )
        items.append(
            EvalItem(
                key=key,
                audio=audio,
                caption=caption,
                reference=ref,
                attributes=meta.get("attributes"),
                path=path,
                reference_path=ref_path,
                audio_sha256=_content_key(path, rate if resampled else None),
                reference_sha256=ref_sha,
            )
        )
    info = {"generated": str(gen_dir.resolve())}
    if ref_dir is not None:
        info["reference"] = str(ref_dir.resolve())
    if captions is not None:
        info["captions"] = str(Path(captions).resolve())
    return EvalSet(items, rate, label, info)


def _content_key(path: Path, resampled_to: int | None) -> str:
    """The cache key of a file: SHA-256 of its bytes (plus the rate it was resampled to)."""
    digest = sha256_file(path)
    return digest if resampled_to is None else f"{digest}@{resampled_to}"


__all__ = [
    "EvalItem",
    "EvalSet",
    "array_sha256",
    "audio_files",
    "load_folders",
    "read_captions_csv",
    "read_clip",
    "read_synthcaps_manifest",
]
