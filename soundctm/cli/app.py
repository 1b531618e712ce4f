"""The ``soundctm`` application: a root with global options, the built-in commands and the
commands other plugins register.

The built-in commands come from :data:`soundctm.cli.commands.BUILTIN_COMMANDS`; plugin
commands from the ``register_commands`` hook, with lazy ``"module:attr"`` targets. Every command
is wrapped once by :func:`~soundctm.cli.common.handle_errors`. Building the app imports pluggy,
typer and the command modules, never torch, so ``soundctm --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer

from soundctm._version import __version__
from soundctm.cli.commands import BUILTIN_COMMANDS
from soundctm.cli.common import fail, handle_errors, state
from soundctm.cli.options import Command, Group
from soundctm.errors import PluginError, SoundCTMError
from soundctm.plugins.registry import Entry, PluginFailure, PluginSource, Registry, one_line

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Root(Group):
    """The root group: usage errors (an unknown option, a value of the wrong type) are one
    ``error:`` line naming the command's ``--help``, exit 2, like every other user error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            code = getattr(exc, "exit_code", 2)
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help
                exc.show()  # type: ignore[attr-defined]
                raise SystemExit(code) from None
            if state.debug:
                raise
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            lines = str(exc.format_message()).strip().splitlines()  # type: ignore[attr-defined]
            line = (lines or ["bad command line"])[0] + hint
            raise SystemExit(_exit_with_line(line, code)) from None
        except typer.Abort:
            raise SystemExit(_exit_with_line("aborted", 1)) from None
        raise SystemExit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"soundctm {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="SOUNDCTM_DEBUG", help="Show tracebacks instead of one-line errors."
        ),
    ] = False,
) -> None:
    """soundctm: fast text-to-sound with Sound Consistency Trajectory Models.

    Generate in one step with `soundctm sample`; refine a chosen one with `soundctm refine`.
    """
    state.debug = debug


def build_app() -> typer.Typer:
    """A Typer app with every command that the installed plugins register."""
    app = typer.Typer(
        cls=Root,
        name="soundctm",
        context_settings=CONTEXT,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        add_completion=False,
    )
    app.callback()(_root)

    from soundctm.plugins.registry import BUILTIN_NAME, get_registry

    for name, (target, _) in BUILTIN_COMMANDS.items():
        _add_command(app, name, _load_builtin(target))
    registry = get_registry()
    for entry in registry.entries("command"):
        if entry.plugin == BUILTIN_NAME:
            continue
        _add_plugin_command(app, registry, entry)
    return app


def _add_plugin_command(app: typer.Typer, registry: Registry, entry: Entry) -> None:
    """Add a plugin's command; one that cannot be loaded or built is recorded in the registry
    and replaced by a command that exits 2 with one line saying why."""
    try:
        fn = entry.load()
        if not callable(fn):
            raise PluginError(f"its target {entry.target_name!r} is not a function")
        probe = typer.Typer()
        _add_command(probe, entry.name, fn)
        typer.main.get_command(probe)  # typer refuses parameters it cannot parse here
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, PluginError) and exc.__cause__ else exc
        source = entry.source or PluginSource(entry.plugin, entry.version)
        failure = PluginFailure(
            source, f"command {entry.name!r}", type(cause).__name__, one_line(cause), cause
        )
        registry.record_failure(failure)
        _add_broken_command(app, entry.name, failure)
        return
    _add_command(app, entry.name, fn)


def _add_broken_command(app: typer.Typer, name: str, failure: PluginFailure) -> None:
    """A stand-in for a plugin command that cannot be used: it takes any arguments and fails."""

    def broken() -> None:
        raise PluginError(failure.describe()) from failure.exception

    settings = {**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True}
    app.command(
        name=name, help=f"(broken: {failure.cause})", cls=Command, context_settings=settings
    )(handle_errors(broken))


def _load_builtin(target: str) -> Callable[..., Any] | typer.Typer:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _add_command(app: typer.Typer, name: str, fn: Callable[..., Any] | typer.Typer) -> None:
    """Add a command (a function) or a command group (a Typer app) under ``name``."""
    if isinstance(fn, typer.Typer):
        app.add_typer(fn, name=name, context_settings=CONTEXT)
        return
    app.command(name=name, help=None, cls=Command, context_settings=CONTEXT)(handle_errors(fn))


def main() -> None:
    """Console-script entry point."""
    try:
        app = build_app()
    except SoundCTMError as exc:
        raise SystemExit(_exit_with(exc)) from None
    _warn_broken_plugins(debug=state.debug or "--debug" in sys.argv[1:])
    app()


def _warn_broken_plugins(*, debug: bool) -> None:
    """One ``warning: ...`` line on stderr per broken plugin (with ``debug``, its traceback)."""
    from soundctm.plugins.registry import get_registry

    for failure in get_registry().failures:
        typer.echo(f"warning: {failure.describe()}", err=True)
        if debug and failure.exception is not None:
            text = "".join(traceback.format_exception(failure.exception))
            typer.echo(text, err=True, nl=False)


def _exit_with(exc: SoundCTMError) -> int:
    return _exit_with_line(str(exc), exc.exit_code)


def _exit_with_line(message: str, code: int) -> int:
    try:
        raise fail(message, code)
    except typer.Exit as e:
        return e.exit_code
