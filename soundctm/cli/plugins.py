"""``soundctm plugins``: list every installed component by kind."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from soundctm.cli.common import console
from soundctm.errors import InvalidArgumentError
from soundctm.plugins.registry import KINDS, get_registry


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    kind: Annotated[
        str | None,
        typer.Option(
            help="Only this kind (backbone, text_encoder, autoencoder, solver, dataset, metric, "
            "command).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List installed components by kind, with the plugin, version and description of each.

    Broken plugins (and plugin commands) are listed after the table, one line each, with their
    distribution, entry point and the error; in JSON they are rows of kind ``broken``.
    """
    if kind is not None and kind not in KINDS:
        raise InvalidArgumentError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    registry = get_registry()
    entries = list(registry.entries(kind))
    rows = [
        {
            "kind": e.kind,
            "name": e.name,
            "plugin": e.plugin,
            "version": e.version,
            "target": e.target_name,
            "description": e.description,
        }
        for e in entries
    ]
    broken = [
        {
            "kind": "broken",
            "name": f.plugin,
            "plugin": f.plugin,
            "version": f.version,
            "target": f.entry_point or "",
            "description": f.describe(),
            "distribution": f.distribution,
            "entry_point": f.entry_point,
            "stage": f.stage,
            "error": f.cause,
        }
        for f in registry.failures
    ]
    if as_json:
        typer.echo(json.dumps(rows + broken, indent=2))
        return
    table = Table(title="soundctm components", show_lines=False)
    for col in ("kind", "name", "plugin", "version", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["kind"], r["name"], r["plugin"], r["version"], r["description"])
    console.print(table)
    for row in broken:  # plain lines, never wrapped, so each one can be grepped
        typer.echo(f"broken: {row['description']}")
