"""What every command shares: the consoles, the ``--debug`` state and error handling.

User errors (:class:`~soundctm.errors.SoundCTMError`) become one line on stderr and exit code 2;
``--debug`` (or ``SOUNDCTM_DEBUG=1``) re-raises them with the traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from soundctm.errors import SoundCTMError

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class _State:
    debug: bool = os.environ.get("SOUNDCTM_DEBUG", "").lower() in {"1", "true", "yes"}


state = _State()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` as one line on stderr and return the Exit to raise."""
    one_line = " ".join(str(message).split())
    typer.echo(f"error: {one_line}", err=True)
    return typer.Exit(code)


def show_messages(event: object) -> None:
    """A library callback that prints the text of :class:`~soundctm.events.Message` events on
    stderr, as plain text (paths may contain brackets)."""
    from soundctm.events import Message

    if isinstance(event, Message):
        err_console.print(event.text, highlight=False, soft_wrap=True, markup=False)


def handle_errors(fn: F) -> F:
    """Turn user errors into one line + exit 2; unexpected errors into one line + exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except SoundCTMError as exc:
            if state.debug:
                raise
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            if state.debug:
                raise
            raise fail("interrupted; finished files were kept, nothing half-written", 130) from None
        except Exception as exc:
            if state.debug:
                raise
            raise fail(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                "traceback and please report it)",
                1,
            ) from None

    return wrapper  # type: ignore[return-value]
