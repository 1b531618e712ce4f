"""The ``csv`` and ``folder`` data sets: captioned audio files on disk.

Both check every file once when they are built (:meth:`ClipDataset.scan`). A bad *description*
of the data (a manifest without its columns, a listed file that does not exist, an empty caption)
is refused at once with a :class:`DataError` naming the line or file; a bad *audio file*
(unreadable, corrupt, empty, silent or too short) is skipped and recorded in
:attr:`ClipDataset.problems`, and :meth:`ClipDataset.summary` counts them. The full list of
skipped files is written to ``problems_file`` (one ``path<TAB>reason<TAB>detail`` line each);
with no usable file at all the error names the first few and the list (in a temporary file
when no ``problems_file`` was given). Each item is a dict
``audio`` (float32 mono tensor ``[seconds * sample_rate]``, resampled, cropped or zero-padded,
peak-normalised), ``caption`` (str) and ``id`` (the file's path). Caption dropout is the trainer's
job, not the data set's.
"""

from __future__ import annotations

import csv
import hashlib
import math
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from soundctm.engine.audio import (
    AUDIO_SUFFIXES,
    crop_or_pad,
    is_silent,
    load_audio,
    peak_normalise,
    resample_soxr,
    to_mono,
)
from soundctm.engine.files import write_text_atomic
from soundctm.errors import AudioFileError, DataError, InvalidArgumentError, OutputPathError

#: Why a file was skipped.
REASONS = ("unreadable", "corrupt", "empty", "silent", "too short")
#: Manifest columns (the layout of the official AudioCaps lists).
FILE_COLUMN, CAPTION_COLUMN = "file_name", "caption"
#: Extra source samples read beyond the clip so resampling has no edge effect at its end.
_RESAMPLE_MARGIN = 64
#: How many unusable files an error message names (the rest are in the list file).
SHOWN_PROBLEMS = 3


@dataclass(frozen=True)
class DataProblem:
    """An audio file that was skipped: ``reason`` is one of :data:`REASONS`."""

    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Clip:
    """A usable file with its caption, as found by the scan."""

    path: Path
    caption: str


# -- events (see soundctm.events) ----------------------------------------------------------------
@dataclass(frozen=True)
class ScanStarted:
    """Checking ``total`` audio files listed by ``source`` started."""

    source: str
    total: int


@dataclass(frozen=True)
class ScanProgress:
    """``done`` of ``total`` files are checked."""

    done: int
    total: int


@dataclass(frozen=True)
class ClipSkipped:
    """A file is unusable and was left out."""

    problem: DataProblem


@dataclass(frozen=True)
class ScanFinished:
    """The scan of ``source`` is over: ``clips`` usable, ``skipped`` left out, listed in
    ``problems_file`` (if one was written)."""

    source: str
    clips: int
    skipped: int
    summary: str
    problems_file: str | None = None


DataEvent = ScanStarted | ScanProgress | ClipSkipped | ScanFinished
DataCallback = Callable[[Any], None]


def _emit(callback: DataCallback | None, event: DataEvent) -> None:
    if callback is not None:
        callback(event)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_audio_file(
    path: Path, *, seconds: float, min_seconds: float, silence_db: float
) -> DataProblem | None:
    """Check one file the way :meth:`ClipDataset.__getitem__` will use it; ``None`` if usable.

    Reads the header (``sf.info``) and the first ``seconds`` of audio, once. The file is
    ``empty`` (no bytes or no frames), ``too short`` (under ``min_seconds``), ``corrupt`` (not
    decodable, or non-finite samples), ``unreadable`` (the OS refuses to open it) or ``silent``
    (the peak of the mono mix of the part used for training is below ``silence_db`` dBFS).
    """
    where = str(path)
    try:
        with path.open("rb") as f:
            if not f.read(1):
                return DataProblem(where, "empty", "the file has 0 bytes")
    except OSError as exc:
        return DataProblem(where, "unreadable", _first_line(exc))
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        return DataProblem(where, "corrupt", _first_line(exc))
    if info.frames <= 0 or info.samplerate <= 0:
        return DataProblem(where, "empty", "no audio frames")
    wanted = min(info.frames, math.ceil(seconds * info.samplerate))
    try:
        x, rate = load_audio(path, frames=wanted)
    except AudioFileError as exc:
        return DataProblem(where, "corrupt", _first_line(exc.__cause__ or exc))
    got = x.shape[-1]
    if got == 0:
        return DataProblem(where, "corrupt", f"the header promises {info.frames} frames, none read")
    if not bool(torch.isfinite(x).all()):
        return DataProblem(where, "corrupt", "the audio contains NaN or infinite samples")
    duration = (info.frames if got >= wanted else got) / rate
    if duration < min_seconds:
        return DataProblem(where, "too short", f"{duration:.3f} s < {min_seconds:g} s")
    if is_silent(to_mono(x), silence_db):
        return DataProblem(where, "silent", f"peak below {silence_db:g} dBFS")
    return None


class ClipDataset(torch.utils.data.Dataset):
    """Captioned audio files, checked once at construction (the base of ``csv`` and ``folder``).

    Items: ``{"audio": Tensor[round(seconds * sample_rate)], "caption": str, "id": str}``.
    Audio is mixed to mono, resampled to ``sample_rate`` with soxr
    (:func:`soundctm.engine.audio.resample_soxr`), cut to its FIRST ``seconds`` (no random
    crop: the same index always gives the same audio; a trainer wanting random crops can
    shuffle clips instead), zero-padded at the end when it is
    shorter (clips shorter than ``min_seconds`` are skipped instead), and scaled to a peak of
    ``peak``. Unusable files are listed in ``problems_file`` (see the module docstring).
    """

    def __init__(
        self,
        entries: list[Clip],
        *,
        source: str,
        sample_rate: int = 16000,
        seconds: float = 3.0,
        min_seconds: float = 0.5,
        silence_db: float = -60.0,
        peak: float = 0.95,
        callback: DataCallback | None = None,
        problems_file: str | Path | None = None,
    ) -> None:
        if sample_rate <= 0 or seconds <= 0 or min_seconds < 0 or not 0 < peak <= 1:
            raise InvalidArgumentError(
                "need sample_rate > 0, seconds > 0, min_seconds >= 0 and 0 < peak <= 1, got "
                f"{sample_rate}, {seconds}, {min_seconds}, {peak}"
            )
        self.source = source
        self.sample_rate = int(sample_rate)
        self.seconds = float(seconds)
        self.num_samples = round(self.seconds * self.sample_rate)
        self.min_seconds = float(min(min_seconds, seconds))
        self.silence_db = float(silence_db)
        self.peak = float(peak)
        self.clips: list[Clip] = []
        self.problems: list[DataProblem] = []
        self.requested_problems_file = Path(problems_file) if problems_file else None
        #: Where the list of unusable files was written (``None``: nowhere, none or not asked).
        self.problems_file: Path | None = None
        self.scan(entries, callback=callback)

    def scan(self, entries: list[Clip], *, callback: DataCallback | None = None) -> None:
        """Check every entry once (:func:`check_audio_file`), keep the usable ones in
        :attr:`clips` and record the others in :attr:`problems` (and list them in the problems
        file). No usable clip is an error that names the first few files and the list."""
        clips, problems = [], []
        _emit(callback, ScanStarted(self.source, len(entries)))
        for i, entry in enumerate(entries, 1):
            problem = check_audio_file(
                entry.path,
                seconds=self.seconds,
                min_seconds=self.min_seconds,
                silence_db=self.silence_db,
            )
            if problem is None:
                clips.append(entry)
            else:
                problems.append(problem)
                _emit(callback, ClipSkipped(problem))
            _emit(callback, ScanProgress(i, len(entries)))
        self.clips, self.problems = clips, problems
        self.problems_file = self._list_problems(temporary=not clips)
        listed = str(self.problems_file) if self.problems_file else None
        _emit(
            callback,
            ScanFinished(self.source, len(clips), len(problems), self.summary(), listed),
        )
        if not clips:
            raise DataError(
                f"no usable audio in {self.source}: {self.summary()}: {self.first_problems()}; "
                f"full list in {self.problems_file}; fix or replace these files"
            )

    def _list_problems(self, *, temporary: bool) -> Path | None:
        """Write :attr:`problems` to the requested problems file (or, if ``temporary``, to a
        temporary file when none was requested); a stale list is removed. Returns the file."""
        target = self.requested_problems_file
        if not self.problems:
            if target is not None and target.is_file():
                target.unlink()
            return None
        if target is None and not temporary:
            return None
        lines = [f"# unusable files of {self.source} ({self.summary()}): path, reason, detail"]
        lines += [f"{p.path}\t{p.reason}\t{' '.join(p.detail.split())}" for p in self.problems]
        text = "\n".join(lines) + "\n"
        if target is None:  # one file per data set, rewritten on each try
            digest = hashlib.sha256(str(Path(self.source).resolve()).encode()).hexdigest()[:12]
            target = Path(tempfile.gettempdir()) / f"soundctm-unusable-files-{digest}.txt"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot create {target.parent} ({_first_line(exc)})") from exc
        write_text_atomic(target, text)
        return target

    def first_problems(self, n: int = SHOWN_PROBLEMS) -> str:
        """The first ``n`` unusable files with their reasons, e.g. ``"a.wav (corrupt: ...),
        b.wav (empty: the file has 0 bytes) and 3 more"``."""
        source = Path(self.source)
        base = (source if source.is_dir() else source.parent).resolve()
        shown = []
        for p in self.problems[:n]:
            try:
                name = str(Path(p.path).resolve().relative_to(base))
            except ValueError:
                name = p.path
            detail = " ".join(p.detail.replace(str(p.path), name).split())
            if len(detail) > 80:
                detail = detail[:77] + "..."
            shown.append(f"{name} ({p.reason}: {detail})" if detail else f"{name} ({p.reason})")
        more = len(self.problems) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    def summary(self) -> str:
        """E.g. ``"812 clips, 3 skipped (2 silent, 1 corrupt)"``."""
        text = f"{len(self.clips)} clips, {len(self.problems)} skipped"
        if not self.problems:
            return text
        counts = Counter(p.reason for p in self.problems)
        order = sorted(counts, key=lambda r: (-counts[r], REASONS.index(r)))
        return text + " (" + ", ".join(f"{counts[r]} {r}" for r in order) + ")"

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        try:
            info_rate = sf.info(str(clip.path)).samplerate
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioFileError(
                f"{clip.path} became unreadable after the data set was checked "
                f"({_first_line(exc)}); restore it or rebuild the data set"
            ) from exc
        frames = math.ceil(self.seconds * info_rate) + _RESAMPLE_MARGIN
        x, rate = load_audio(clip.path, frames=frames)
        audio = resample_soxr(to_mono(x), rate, self.sample_rate)
        audio = peak_normalise(crop_or_pad(audio, self.num_samples), self.peak)
        return {"audio": audio.float().contiguous(), "caption": clip.caption, "id": str(clip.path)}


def _refuse(where: Path, problems: list[str], what_to_do: str) -> DataError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return DataError(f"{where}: {problems[0]}{more}; {what_to_do}")


def read_manifest(path: str | Path) -> list[Clip]:
    """The clips listed by a CSV manifest with the columns ``file_name`` and ``caption``.

    Other columns are ignored; relative file names resolve against the manifest's folder.
    Raises :class:`DataError` naming the first bad line (and how many more there are) when a
    column is missing, a file name or caption is empty or a listed file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist; give a CSV file with the header "
            f"{FILE_COLUMN},{CAPTION_COLUMN}"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in (FILE_COLUMN, CAPTION_COLUMN) if c not in header]
            if missing:
                found = ", ".join(header) or "nothing"
                raise DataError(
                    f"manifest {path} line 1: missing column {', '.join(map(repr, missing))} "
                    f"(found: {found}); the header must name {FILE_COLUMN} and {CAPTION_COLUMN}"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                rows.append((reader.line_num, row))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"manifest {path} is not a readable UTF-8 CSV file ({_first_line(exc)}); "
            "save it as UTF-8 CSV"
        ) from exc
    base = path.parent
    clips, errors = [], []
    for line, row in rows:
        name = (row.get(FILE_COLUMN) or "").strip()
        caption = " ".join((row.get(CAPTION_COLUMN) or "").split())
        if not name:
            errors.append(f"line {line}: empty {FILE_COLUMN}")
            continue
        file = Path(name).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            errors.append(f"line {line}: file {name} not found (looked for {file})")
        elif not caption:
            errors.append(f"line {line}: empty caption for {name}")
        else:
            clips.append(Clip(file.resolve(), caption))
    if errors:
        raise _refuse(path, errors, "fix these lines of the manifest or remove them")
    if not clips:
        raise DataError(f"manifest {path} lists no files; add lines 'file_name,caption'")
    return clips


def find_captioned_files(root: str | Path) -> list[Clip]:
    """Audio files (wav, flac, ogg, mp3; any depth) under ``root``, each captioned by the text of
    the ``.txt`` file with the same name beside it (``dog.wav`` -> ``dog.txt``), sorted by path.

    Raises :class:`DataError` if ``root`` is not a folder, holds no audio, or a caption file is
    missing or empty."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give a folder of audio files with .txt captions")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        suffixes = ", ".join(AUDIO_SUFFIXES)
        raise DataError(f"no audio files ({suffixes}) in {root}; check the folder")
    clips, errors = [], []
    for file in files:
        text_file = file.with_suffix(".txt")
        rel = file.relative_to(root)
        if not text_file.is_file():
            errors.append(f"{rel} has no caption file {text_file.name}")
            continue
        try:
            caption = " ".join(text_file.read_text(encoding="utf-8-sig").split())
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"caption file {text_file.name} is unreadable ({_first_line(exc)})")
            continue
        if not caption:
            errors.append(f"caption file {text_file.relative_to(root)} is empty")
            continue
        clips.append(Clip(file.resolve(), caption))
    if errors:
        raise _refuse(root, errors, "give every audio file a non-empty same-named .txt caption")
    return clips


class CsvDataset(ClipDataset):
    """Audio files listed in a CSV manifest with the columns ``file_name,caption`` (AudioCaps
    layout; relative paths resolve against the manifest's folder)."""

    def __init__(
        self,
        path: str | Path,
        sample_rate: int = 16000,
        seconds: float = 3.0,
        *,
        min_seconds: float = 0.5,
        silence_db: float = -60.0,
        peak: float = 0.95,
        callback: DataCallback | None = None,
        problems_file: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(
            read_manifest(self.path),
            source=str(self.path),
            sample_rate=sample_rate,
            seconds=seconds,
            min_seconds=min_seconds,
            silence_db=silence_db,
            peak=peak,
            callback=callback,
            problems_file=problems_file,
        )


class FolderDataset(ClipDataset):
    """Audio files (wav, flac, ogg, mp3) in a folder tree, each with a same-named ``.txt``
    caption beside it."""

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        seconds: float = 3.0,
        *,
        min_seconds: float = 0.5,
        silence_db: float = -60.0,
        peak: float = 0.95,
        callback: DataCallback | None = None,
        problems_file: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        super().__init__(
            find_captioned_files(self.root),
            source=str(self.root),
            sample_rate=sample_rate,
            seconds=seconds,
            min_seconds=min_seconds,
            silence_db=silence_db,
            peak=peak,
            callback=callback,
            problems_file=problems_file,
        )
