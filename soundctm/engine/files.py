"""Atomic file and directory writes: write to a temporary name, then rename.

A crash (or Ctrl-C) mid-write leaves the old file or nothing, never half a file. A failed write
(a full disk, a file-size limit, an I/O error) is an :class:`~soundctm.errors.OutputPathError`
that names the OS reason and the path (:func:`write_error`), and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors import SafetensorError

from soundctm.errors import OutputPathError, SoundCTMError, StorageError

#: Temporary names of :func:`atomic_path` and :func:`write_dir_atomic` (``.NAME.XXXXXXXX.tmp``)
#: and of a folder being replaced (``.NAME.old-PID``).
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:[A-Za-z0-9_]{8}\.tmp|old-\d+)$")
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_reason(exc: BaseException) -> tuple[str, int | None] | None:
    """The OS reason (lower case, e.g. ``"no space left on device"``) and errno of an I/O
    failure, or ``None`` if ``exc`` is not one.

    Understands :class:`OSError` and safetensors' ``SafetensorError`` (which wraps the OS error
    in its message, ``"... (os error 28)"``).
    """
    number: int | None = None
    text = ""
    if isinstance(exc, SoundCTMError):  # already a user error (a StorageError is an OSError too)
        return None
    if isinstance(exc, OSError):
        number = exc.errno
        text = exc.strerror or (os.strerror(number) if number else "") or str(exc)
    elif isinstance(exc, SafetensorError):
        found = _OS_ERROR.search(str(exc))
        if found is None and "I/O error" not in str(exc):
            return None
        number = int(found.group(1)) if found else None
        text = os.strerror(number) if number else str(exc).split("I/O error:", 1)[-1]
    else:
        return None
    text = " ".join(text.split()) or "input/output error"
    return text[0].lower() + text[1:], number


def probe_write(folder: Path, size: int) -> OSError | None:
    """Try to write ``size`` bytes into a temporary file in ``folder`` (removed again): the OS
    error that a writer which reports no reason of its own (libsndfile) most likely met."""
    try:
        fd, name = tempfile.mkstemp(prefix=".soundctm-probe-", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc
    try:
        block = b"\0" * min(max(size, 1), 1 << 20)
        left = max(size, 1)
        while left > 0:
            left -= os.write(fd, block[:left])
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return None


def write_error(path: Path, exc: BaseException, *, reason: str | None = None) -> StorageError:
    """The one-line user error of a failed write of ``path``: ``"REASON: PATH; what to do"``.

    ``reason`` overrides the reason found in ``exc`` (:func:`os_reason`). The error is an
    :class:`OutputPathError` and an :class:`OSError` with the errno of ``exc`` (if any).
    """
    found = os_reason(exc)
    number = found[1] if found else None
    text = reason or (found[0] if found else str(exc) or type(exc).__name__)
    if number in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space on that disk or write elsewhere"
    elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "choose a folder you can write to"
    elif number == errno.EFBIG:
        advice = "raise the file-size limit (ulimit -f) or write elsewhere"
    else:
        advice = "check the disk and the folder, or write elsewhere"
    error = StorageError(f"{text}: {path}; {advice}")
    error.errno = number  # type: ignore[misc]
    return error


def _shown_path(exc: BaseException, tmp: Path, final: Path) -> Path:
    """The path to name for a failure inside temporary ``tmp`` that becomes ``final``."""
    name = getattr(exc, "filename", None)
    if isinstance(name, str | os.PathLike):
        try:
            return final / Path(name).absolute().relative_to(tmp.absolute())
        except ValueError:
            return Path(name)
    return final


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
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(final, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fix_modes(tmp)
        os.replace(tmp, final)
    except (OSError, SafetensorError) as exc:
        if os_reason(exc) is None:
            raise
        raise write_error(_shown_path(exc, tmp, final), exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dir_atomic(final: Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``final`` by filling a temporary sibling with ``fill`` and renaming it.

    An existing ``final`` is replaced only once the new one is complete. An I/O failure is an
    :class:`OutputPathError` (:func:`write_error`) and leaves no temporary folder.
    """
    final = final.absolute()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise write_error(final, exc) from exc
    old: Path | None = None
    try:
        fill(tmp)
        _fix_modes(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException as exc:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError | SafetensorError) and os_reason(exc) is not None:
            raise write_error(_shown_path(exc, tmp, final), exc) from exc
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def copy_dir(source: Path, target: Path) -> None:
    """Copy the files of folder ``source`` (any depth, links followed) into folder ``target``.

    Unlike :func:`shutil.copytree`, the first failure is raised as it is (an :class:`OSError`
    with its errno), not collected; wrap in :func:`write_dir_atomic` for an atomic copy."""
    source, target = Path(source), Path(target)
    for root, _dirs, names in os.walk(source, followlinks=True):
        here = target / Path(root).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        for name in sorted(names):
            shutil.copy2(Path(root) / name, here / name)
