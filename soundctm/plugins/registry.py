"""The component registry: kind -> name -> lazily imported target.

Built from a pluggy plugin manager that holds the built-in plugin, every plugin found in the
``soundctm`` entry-point group (unless ``SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD`` is set) and any plugin
object registered at run time with :func:`register_plugin`.
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from soundctm._version import __version__
from soundctm.errors import PluginError, UnknownComponentError
from soundctm.plugins import hookspecs

ENTRY_POINT_GROUP = "soundctm"
AUTOLOAD_ENV = "SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGIN = "soundctm.builtin"
BUILTIN_NAME = "soundctm"

#: Component kinds and the hook that registers each.
KINDS: dict[str, str] = {
    "backbone": "register_backbones",
    "text_encoder": "register_text_encoders",
    "autoencoder": "register_autoencoders",
    "solver": "register_solvers",
    "dataset": "register_datasets",
    "metric": "register_metrics",
    "embedder": "register_embedders",
    "importer": "register_importers",
    "command": "register_commands",
}


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    target: Any
    plugin: str
    version: str
    description: str = ""
    _loaded: Any = field(default=None, repr=False, compare=False)

    @property
    def target_name(self) -> str:
        """The ``module:attr`` path of the target (or its qualified name)."""
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', repr(self.target))}"

    def load(self) -> Any:
        """Import (once) and return the target."""
        if self._loaded is None:
            self._loaded = (
                _import_target(self.target, self) if isinstance(self.target, str) else self.target
            )
        return self._loaded

    def describe(self) -> str:
        """The description, or the first line of the target's docstring once it is imported."""
        if self.description:
            return self.description
        if self._loaded is not None or not isinstance(self.target, str):
            doc = (getattr(self.load(), "__doc__", None) or "").strip()
            return doc.splitlines()[0] if doc else ""
        return ""


def _import_target(target: str, entry: Entry) -> Any:
    module_name, sep, attr = target.partition(":")
    where = f"{entry.kind} {entry.name!r} of plugin {entry.plugin!r}"
    if not sep or not module_name or not attr:
        raise PluginError(f"{where} has target {target!r}; it must look like 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"{where} points to {target!r}, which cannot be imported ({exc}); "
            "reinstall or update that plugin"
        ) from exc
    return obj


class Registry:
    """All components of all plugins, by kind and name."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        versions = _plugin_versions(manager)
        for kind, hook_name in KINDS.items():
            hook = getattr(manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin = impl.plugin_name
                register = self._register_fn(kind, plugin, versions.get(plugin, "unknown"))
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {plugin!r} failed in {hook_name}: {exc}; "
                        "update or uninstall that plugin"
                    ) from exc

    def _register_fn(self, kind: str, plugin: str, version: str) -> Callable[..., None]:
        def register(name: str, target: Any, *, description: str = "") -> None:
            if not isinstance(name, str) or not name.strip():
                raise PluginError(f"plugin {plugin!r} registered a {kind} with an empty name")
            existing = self._entries[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered twice, by plugin {existing.plugin!r} and by "
                    f"plugin {plugin!r}; uninstall one of them or rename the component"
                )
            self._entries[kind][name] = Entry(kind, name, target, plugin, version, description)

        return register

    def names(self, kind: str) -> list[str]:
        """Sorted names of the components of ``kind``."""
        return sorted(self._entries[_check_kind(kind)])

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        """All entries (of one kind), sorted by kind and name."""
        kinds = [_check_kind(kind)] if kind else list(KINDS)
        for k in kinds:
            for name in sorted(self._entries[k]):
                yield self._entries[k][name]

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; a clear error listing the alternatives if there is none."""
        table = self._entries[_check_kind(kind)]
        if name in table:
            return table[name]
        label = kind.replace("_", " ")
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(sorted(table)) or "none"
        raise UnknownComponentError(
            f"no installed plugin provides the {label} {name!r}; {hint}installed: {known} "
            "(install the plugin that provides it; `soundctm plugins` lists what is installed)"
        )

    def load(self, kind: str, name: str) -> Any:
        """Import and return the target of ``name``."""
        return self.get(kind, name).load()

    def build(self, kind: str, name: str, **params: Any) -> Any:
        """Call the factory of ``name`` with ``params`` (its card parameters)."""
        factory = self.load(kind, name)
        try:
            return factory(**params)
        except TypeError as exc:
            raise PluginError(
                f"cannot build {kind.replace('_', ' ')} {name!r} with parameters {params}: {exc}"
            ) from exc


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return kind


def _plugin_versions(manager: pluggy.PluginManager) -> dict[str, str]:
    versions: dict[str, str] = {BUILTIN_NAME: __version__}
    for plugin, dist in manager.list_plugin_distinfo():
        name = manager.get_name(plugin)
        if name is not None:
            versions[name] = dist.version
    for name, plugin in manager.list_name_plugin():
        if name not in versions:
            versions[name] = str(getattr(plugin, "__version__", "unknown"))
    return versions


def autoload_enabled() -> bool:
    """False when ``SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value other than 0."""
    value = os.environ.get(AUTOLOAD_ENV, "").strip().lower()
    return value in {"", "0", "false", "no"}


def make_plugin_manager(extra: list[tuple[Any, str]] | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugin, entry-point plugins and ``extra`` ones."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    try:
        manager.register(importlib.import_module(BUILTIN_PLUGIN), name=BUILTIN_NAME)
        if autoload_enabled():
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for plugin, name in extra or []:
            if manager.is_registered(plugin):
                raise PluginError(
                    f"plugin {name!r} is already registered (as "
                    f"{manager.get_name(plugin)!r}); register it once"
                )
            manager.register(plugin, name=name)
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin_obj = getattr(exc, "plugin", None)
        name = (manager.get_name(plugin_obj) if plugin_obj is not None else None) or "?"
        raise PluginError(
            f"plugin {name!r} is invalid: {exc}; "
            "fix its hook names (see `soundctm.plugins.hookspecs`) or uninstall it"
        ) from exc
    except ValueError as exc:
        raise PluginError(f"cannot register plugin: {exc}") from exc
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"a plugin in entry-point group {ENTRY_POINT_GROUP!r} cannot be loaded: {exc}; "
            f"reinstall or uninstall it (set {AUTOLOAD_ENV}=1 to skip plugins)"
        ) from exc
    return manager


_lock = threading.Lock()
_registry: Registry | None = None
_extra: list[tuple[Any, str]] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry(make_plugin_manager(_extra))
        return _registry


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Add a plugin object (a module or an instance with ``@hookimpl`` methods) at run time."""
    global _registry
    plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        _extra.append((plugin, plugin_name))
        _registry = None
    try:
        get_registry()
    except Exception:
        with _lock:
            _extra.pop()
            _registry = None
        raise


def reset_registry() -> None:
    """Forget run-time plugins and rebuild on next use (re-reads entry points and the env var)."""
    global _registry
    with _lock:
        _extra.clear()
        _registry = None
