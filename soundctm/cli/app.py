"""The ``soundctm`` application: a root with global options; commands come from plugins.

Every command, the built-in ones included, is registered through the ``register_commands`` hook
with a lazy ``"module:attr"`` target. Building the app imports pluggy, typer and the command
modules, never torch, so ``soundctm --help`` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from soundctm._version import __version__
from soundctm.cli.common import fail, handle_errors, state
from soundctm.errors import PluginError, SoundCTMError

CONTEXT = {"help_option_names": ["-h", "--help"]}


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
        name="soundctm",
        context_settings=CONTEXT,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        add_completion=False,
    )
    app.callback()(_root)

    from soundctm.plugins.registry import get_registry

    for entry in get_registry().entries("command"):
        fn = entry.load()
        if not callable(fn):
            raise PluginError(
                f"command {entry.name!r} of plugin {entry.plugin!r} is not a function; "
                "fix or uninstall that plugin"
            )
        app.command(name=entry.name, help=None, context_settings=CONTEXT)(handle_errors(fn))
    return app


def main() -> None:
    """Console-script entry point."""
    try:
        app = build_app()
    except SoundCTMError as exc:
        raise SystemExit(_exit_with(exc)) from None
    app()


def _exit_with(exc: SoundCTMError) -> int:
    try:
        raise fail(str(exc), exc.exit_code)
    except typer.Exit as e:
        return e.exit_code
