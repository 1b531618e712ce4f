"""The plugin system: hook specifications and the component registry."""

from soundctm.plugins.hookspecs import hookimpl, hookspec
from soundctm.plugins.registry import (
    KINDS,
    Entry,
    PluginFailure,
    PluginSource,
    Registry,
    get_registry,
    register_plugin,
    reset_registry,
)

__all__ = [
    "KINDS",
    "Entry",
    "PluginFailure",
    "PluginSource",
    "Registry",
    "get_registry",
    "hookimpl",
    "hookspec",
    "register_plugin",
    "reset_registry",
]
