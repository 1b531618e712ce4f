"""User-facing errors.

Every error a user can cause (bad flags, missing files, corrupt checkpoints, unknown plugins) is a
:class:`SoundCTMError`. Its message is one line that says what was wrong and what to do. The CLI
prints it and exits with code 2 (``--debug`` shows the traceback); library callers can catch it.
"""

from __future__ import annotations


class SoundCTMError(Exception):
    """Base class of all user-facing errors: one line, what went wrong and what to do."""

    exit_code = 2


class InvalidArgumentError(SoundCTMError, ValueError):
    """A parameter value is out of range or inconsistent (steps < 1, gamma outside [0, 1], ...)."""


class PluginError(SoundCTMError):
    """A plugin is broken: duplicate names, misspelt hooks, an unimportable target."""


class UnknownComponentError(PluginError, KeyError):
    """No installed plugin provides the requested component."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(SoundCTMError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unknown format."""


class AudioFileError(SoundCTMError):
    """An audio file or its sidecar cannot be read or written."""


class DataError(SoundCTMError):
    """A data set cannot be used: a bad manifest or folder, or no usable clip at all."""


class OutputPathError(SoundCTMError):
    """An output location cannot be written."""


class StorageError(OutputPathError, OSError):
    """Writing failed for an OS reason: a full disk, a file-size limit, an I/O error.

    Also an :class:`OSError` (``errno`` is the OS error number, when known), so code that
    catches ``OSError`` around a save keeps working; its message is the one line for the user.
    """


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name: for one-line
    errors that quote a library's reason."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
