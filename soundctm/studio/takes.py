"""The studio's history and files: takes are read back from the out folder's sidecars.

A *take* is an audio file in the out folder with the JSON sidecar soundctm writes beside it
(``soundctm sample``, ``refine``, ``vary`` and the studio all write them), so the history
survives a restart and includes takes made on the command line. Its id is the file's stem.

Files are served from the out folder only: :func:`safe_file` refuses absolute paths, ``..``,
hidden names (the temporary files of atomic writes), anything whose resolved path (links
followed) lies outside the folder, and suffixes other than audio, JSON and PNG.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

#: Audio suffixes a take may have (soundfile writes them all).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
#: Every suffix the studio serves from the out folder.
SERVED_SUFFIXES = (*AUDIO_SUFFIXES, ".json", ".png")
#: A take id: a file stem without path separators (and not hidden).
TAKE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,250}$")
#: Sub-folder of the out folder that holds uploaded files.
UPLOADS = "uploads"


def safe_file(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it names a servable file inside ``root``, else ``None``."""
    if not relative or "\\" in relative or "\0" in relative:
        return None
    rel = PurePosixPath(relative)
    if rel.is_absolute() or any(p in ("", ".", "..") or p.startswith(".") for p in rel.parts):
        return None
    if rel.suffix.lower() not in SERVED_SUFFIXES:
        return None
    base = root.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def _natural(text: str) -> list[Any]:
    """A sort key that orders the numbers inside names by value (``x-9`` before ``x-10``)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def is_take_id(text: str) -> bool:
    """Whether ``text`` can be a take id (no separators, no ``..``, not hidden)."""
    return bool(TAKE_ID.match(text)) and ".." not in text


@dataclass(frozen=True)
class Take:
    """A take: its audio file, its sidecar's content and its id (the stem)."""

    id: str
    audio: Path
    record: dict[str, Any]

    def created(self) -> str:
        return str(self.record.get("created") or "")


class TakeStore:
    """Reads the takes of an out folder; each sidecar is parsed once per change of the file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _record(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            stat = sidecar.stat()
        except OSError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(sidecar.name)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or "soundctm_sidecar" not in record:
            record = None
        with self._lock:
            self._cache[sidecar.name] = (key, record)
        return record

    def _audio(self, stem: str) -> Path | None:
        for suffix in AUDIO_SUFFIXES:
            path = self.root / f"{stem}{suffix}"
            if path.is_file():
                return path
        return None

    def get(self, take_id: str) -> Take | None:
        """The take ``take_id``, or ``None`` if there is no such take in the folder."""
        if not is_take_id(take_id):
            return None
        sidecar = self.root / f"{take_id}.json"
        record = self._record(sidecar) if sidecar.is_file() else None
        audio = self._audio(take_id) if record is not None else None
        if record is None or audio is None:
            return None
        return Take(take_id, audio, record)

    def all(self) -> list[Take]:
        """Every take in the folder, newest first by the sidecar's ``created`` (to the second);
        takes made in the same second (one request's) in name order, so by seed."""
        takes = []
        try:
            names = sorted(p.name for p in self.root.glob("*.json"))
        except OSError:
            return []
        for name in names:
            take = self.get(name[: -len(".json")])
            if take is not None:
                takes.append(take)
        takes.sort(key=lambda t: _natural(t.id))
        takes.sort(key=lambda t: t.created(), reverse=True)
        return takes

    def id_of(self, path: str | None) -> str | None:
        """The take id of an absolute path a sidecar names (``refined_from``), if it is a take
        of this folder."""
        if not path:
            return None
        candidate = Path(path)
        try:
            inside = candidate.parent.resolve() == self.root.resolve()
        except OSError:
            return None
        if not inside or candidate.suffix.lower() not in AUDIO_SUFFIXES:
            return None
        return candidate.stem if self.get(candidate.stem) is not None else None


__all__ = [
    "AUDIO_SUFFIXES",
    "SERVED_SUFFIXES",
    "UPLOADS",
    "Take",
    "TakeStore",
    "is_take_id",
    "safe_file",
]
