"""Atomic file and directory writes: write to a temporary name, then rename.

A crash (or Ctrl-C) mid-write leaves the old file or nothing, never half a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from soundctm.errors import OutputPathError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fix_modes(path: Path) -> None:
    """Give files made by mkstemp/mkdtemp (0600/0700) the modes a plain open/mkdir would."""
    mask = _umask()
    if path.is_dir():
        for root, dirs, names in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for n in names:
                os.chmod(os.path.join(root, n), 0o666 & ~mask)
        os.chmod(path, 0o777 & ~mask)
    elif path.exists():
        os.chmod(path, 0o666 & ~mask)


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".soundctm-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputPathError(
            f"cannot write to output folder {str(path)!r} ({reason}); choose another --out folder"
        ) from exc
    return path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success, else delete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fix_modes(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dir_atomic(final: Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``final`` by filling a temporary sibling with ``fill`` and renaming it.

    An existing ``final`` is replaced only once the new one is complete.
    """
    final = final.absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    old: Path | None = None
    try:
        fill(tmp)
        _fix_modes(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
