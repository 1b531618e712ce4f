"""The component registry: kind -> name -> lazily imported target.

Built from a pluggy plugin manager that holds the built-in plugin, every plugin found in the
``soundctm`` entry-point group (unless ``SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD`` is set) and any plugin
object registered at run time with :func:`register_plugin`.

A broken installed plugin never breaks the registry: a plugin whose module raises anything at
import, whose hooks do not validate, whose hook implementation raises, or that registers a name
another plugin already has, is skipped as a whole and recorded as a :class:`PluginFailure`
(distribution, entry point, exception type and message) in :attr:`Registry.failures`. The CLI
warns about each one, ``soundctm plugins`` lists them, and a lookup of a component that no
plugin provides names them. A plugin registered at run time with :func:`register_plugin` is the
caller's own, so its failure is raised there instead.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from soundctm._version import __version__
from soundctm.errors import PluginError, SoundCTMError, UnknownComponentError
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


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from: its name, and for an installed one its distribution."""

    name: str
    version: str = "unknown"
    distribution: str | None = None
    entry_point: str | None = None

    def label(self) -> str:
        """``plugin 'NAME' (distribution DIST VERSION, entry point 'NAME = module')``."""
        if self.distribution is None:
            return f"plugin {self.name!r}"
        return (
            f"plugin {self.name!r} (distribution {self.distribution} {self.version}, "
            f"entry point {self.entry_point!r})"
        )


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, or one of its components that could not be used.

    ``stage`` says where it broke: ``"import"`` (the entry-point module raised), ``"validation"``
    (pluggy refused its hooks), a hook name such as ``"register_backbones"``, ``"duplicate"``, or
    ``"command NAME"`` (a registered command that cannot be loaded). ``exception`` keeps the
    original exception (with its traceback) for ``--debug``.
    """

    source: PluginSource
    stage: str
    error_type: str
    message: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def plugin(self) -> str:
        """The plugin (entry-point) name."""
        return self.source.name

    @property
    def distribution(self) -> str | None:
        """The installed distribution that holds the plugin (None for a run-time plugin)."""
        return self.source.distribution

    @property
    def version(self) -> str:
        """The version of that distribution."""
        return self.source.version

    @property
    def entry_point(self) -> str | None:
        """The entry point, as ``name = module``."""
        return self.source.entry_point

    @property
    def cause(self) -> str:
        """``ExceptionType: message``, on one line."""
        return f"{self.error_type}: {self.message}" if self.message else self.error_type

    def what(self) -> str:
        """What went wrong, in words."""
        if self.stage == "import":
            return "cannot be imported"
        if self.stage == "validation":
            return "is invalid"
        if self.stage == "duplicate":
            return "registers a name that is already taken"
        if self.stage.startswith("command "):
            return f"registers the {self.stage}, which cannot be used"
        return f"failed in {self.stage}"

    def describe(self) -> str:
        """One line: which plugin, what broke and why, and what to do."""
        skipped = "" if self.stage.startswith("command ") else " and was skipped"
        hint = f" (set {AUTOLOAD_ENV}=1 to skip all plugins)" if self.distribution else ""
        return (
            f"{self.source.label()} {self.what()}{skipped} ({self.cause}); "
            f"fix, update or uninstall it{hint}"
        )


def _failure(source: PluginSource, stage: str, exc: BaseException) -> PluginFailure:
    return PluginFailure(source, stage, type(exc).__name__, one_line(exc), exc)


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    target: Any
    plugin: str
    version: str
    description: str = ""
    source: PluginSource | None = field(default=None, repr=False, compare=False)
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
    source = entry.source or PluginSource(entry.plugin, entry.version)
    where = f"{entry.kind} {entry.name!r} of {source.label()}"
    if not sep or not module_name or not attr:
        raise PluginError(f"{where} has target {target!r}; it must look like 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a plugin module may raise anything at import
        raise PluginError(
            f"{where} points to {target!r}, which cannot be imported "
            f"({type(exc).__name__}: {one_line(exc)}); reinstall or update that plugin"
        ) from exc
    return obj


class Registry:
    """All components of all plugins, by kind and name, and the plugins that failed."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        *,
        sources: dict[str, PluginSource] | None = None,
        failures: list[PluginFailure] | None = None,
    ) -> None:
        self.manager = manager
        #: Plugins (or their commands) that are broken, in the order they were found.
        self.failures: list[PluginFailure] = list(failures or [])
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._sources = dict(sources or {})
        for name, plugin in manager.list_name_plugin():
            if name not in self._sources:
                version = __version__ if name == BUILTIN_NAME else None
                self._sources[name] = PluginSource(
                    name, version or str(getattr(plugin, "__version__", "unknown"))
                )
        staged: dict[str, list[Entry]] = {name: [] for name, _ in manager.list_name_plugin()}
        broken: set[str] = set()
        for kind, hook_name in KINDS.items():
            hook = getattr(manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin = impl.plugin_name
                if plugin in broken:
                    continue
                source = self._source(plugin)
                register = self._register_fn(kind, source, staged.setdefault(plugin, []))
                try:
                    impl.function(register=register)
                except Exception as exc:
                    if plugin == BUILTIN_NAME:
                        raise
                    broken.add(plugin)
                    self.failures.append(_failure(source, hook_name, exc))
        for plugin, entries in staged.items():
            if plugin not in broken:
                self._commit(plugin, entries)

    def _source(self, plugin: str) -> PluginSource:
        return self._sources.get(plugin) or PluginSource(plugin)

    def _register_fn(
        self, kind: str, source: PluginSource, out: list[Entry]
    ) -> Callable[..., None]:
        def register(name: str, target: Any, *, description: str = "") -> None:
            if not isinstance(name, str) or not name.strip():
                raise PluginError(f"plugin {source.name!r} registered a {kind} with an empty name")
            out.append(Entry(kind, name, target, source.name, source.version, description, source))

        return register

    def _commit(self, plugin: str, entries: list[Entry]) -> None:
        """Add the entries of one plugin, all or none (a taken name breaks the plugin)."""
        seen: set[tuple[str, str]] = set()
        for entry in entries:
            key = (entry.kind, entry.name)
            existing = self._entries[entry.kind].get(entry.name)
            if existing is not None or key in seen:
                other = existing.plugin if existing is not None else plugin
                exc = PluginError(
                    f"{entry.kind} {entry.name!r} is registered twice, by plugin {other!r} and by "
                    f"plugin {plugin!r}; uninstall one of them or rename the component"
                )
                if plugin == BUILTIN_NAME:
                    raise exc
                self.failures.append(_failure(self._source(plugin), "duplicate", exc))
                return
            seen.add(key)
        for entry in entries:
            self._entries[entry.kind][entry.name] = entry

    def record_failure(self, failure: PluginFailure) -> None:
        """Add a failure found after the registry was built (a command that cannot be loaded)."""
        self.failures.append(failure)

    def failures_of(self, plugin: str) -> list[PluginFailure]:
        """The failures recorded for plugin ``plugin``."""
        return [f for f in self.failures if f.plugin == plugin]

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
        """The entry for ``name``; a clear error listing the alternatives if there is none.

        When some plugins are broken the error names them too: one of them may be the plugin
        that would have provided ``name``."""
        table = self._entries[_check_kind(kind)]
        if name in table:
            return table[name]
        label = kind.replace("_", " ")
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(sorted(table)) or "none"
        broken = [f for f in self.failures if not f.stage.startswith("command ")]
        note = ""
        if broken:
            causes = "; ".join(f"{f.source.label()} ({f.cause})" for f in broken)
            note = (
                f"a broken plugin may be the one that provides it, fix, update or uninstall it: "
                f"{causes}; "
            )
        raise UnknownComponentError(
            f"no installed plugin provides the {label} {name!r}; {note}{hint}installed: {known} "
            "(install the plugin that provides it; `soundctm plugins` lists what is installed)"
        )

    def load(self, kind: str, name: str) -> Any:
        """Import and return the target of ``name``."""
        return self.get(kind, name).load()

    def build(self, kind: str, name: str, **params: Any) -> Any:
        """Call the factory of ``name`` with ``params`` (its card parameters).

        A factory of an outside plugin that raises something other than a
        :class:`~soundctm.errors.SoundCTMError` is a broken plugin: a :class:`PluginError` that
        names the plugin, its distribution and the exception."""
        entry = self.get(kind, name)
        factory = entry.load()
        try:
            return factory(**params)
        except TypeError as exc:
            raise PluginError(
                f"cannot build {kind.replace('_', ' ')} {name!r} with parameters {params}: {exc}"
            ) from exc
        except SoundCTMError:
            raise
        except Exception as exc:
            if entry.plugin == BUILTIN_NAME:
                raise
            source = entry.source or PluginSource(entry.plugin, entry.version)
            raise PluginError(
                f"{kind.replace('_', ' ')} {name!r} of {source.label()} failed to build "
                f"({type(exc).__name__}: {one_line(exc)}); fix, update or uninstall that plugin"
            ) from exc


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return kind


def autoload_enabled() -> bool:
    """False when ``SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value other than 0."""
    value = os.environ.get(AUTOLOAD_ENV, "").strip().lower()
    return value in {"", "0", "false", "no"}


@dataclass
class LoadedPlugins:
    """A plugin manager with the plugins that loaded, where each came from, and the failures."""

    manager: pluggy.PluginManager
    sources: dict[str, PluginSource] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


def _distribution_name(dist: importlib.metadata.Distribution) -> str:
    name = dist.metadata["Name"] if dist.metadata is not None else None
    return str(name or getattr(dist, "name", None) or "unknown")


def _load_entry_points(loaded: LoadedPlugins) -> None:
    """Register every plugin of the entry-point group; record the ones that fail."""
    manager = loaded.manager
    seen: set[str] = set()
    for dist in list(importlib.metadata.distributions()):
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in seen or manager.is_blocked(ep.name):
                continue
            seen.add(ep.name)
            source = PluginSource(
                ep.name, str(dist.version), _distribution_name(dist), f"{ep.name} = {ep.value}"
            )
            if manager.has_plugin(ep.name):
                exc = PluginError(f"the plugin name {ep.name!r} is already taken")
                loaded.failures.append(_failure(source, "validation", exc))
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a plugin module may raise anything
                loaded.failures.append(_failure(source, "import", exc))
                continue
            if _register(loaded, plugin, source):
                loaded.sources[ep.name] = source


def _register(loaded: LoadedPlugins, plugin: Any, source: PluginSource) -> bool:
    """Register one plugin object; False (and a recorded failure) if pluggy refuses it."""
    manager = loaded.manager
    if manager.is_registered(plugin):
        exc = PluginError(
            f"plugin {source.name!r} is already registered (as "
            f"{manager.get_name(plugin)!r}); register it once"
        )
        loaded.failures.append(_failure(source, "validation", exc))
        return False
    try:
        manager.register(plugin, name=source.name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        loaded.failures.append(_failure(source, "validation", exc))
        return False
    return True


def _check_pending(loaded: LoadedPlugins) -> None:
    """pluggy's ``check_pending``, one plugin at a time: a plugin with an unknown hook (a
    misspelt name) is unregistered and recorded; the others stay."""
    manager = loaded.manager
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin)
            if name is None or name == BUILTIN_NAME:
                raise
            source = loaded.sources.pop(name, None) or PluginSource(name)
            manager.unregister(exc.plugin)
            loaded.failures.append(_failure(source, "validation", exc))


def load_plugins(extra: list[tuple[Any, str]] | None = None) -> LoadedPlugins:
    """The built-in plugin, the entry-point plugins and ``extra`` ones, in that order.

    Never raises for a broken entry-point or ``extra`` plugin: each one is skipped and recorded in
    :attr:`LoadedPlugins.failures`. (A broken built-in plugin does raise: that is a bug.)
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    loaded = LoadedPlugins(manager)
    manager.register(importlib.import_module(BUILTIN_PLUGIN), name=BUILTIN_NAME)
    loaded.sources[BUILTIN_NAME] = PluginSource(BUILTIN_NAME, __version__)
    if autoload_enabled():
        _load_entry_points(loaded)
    for plugin, name in extra or []:
        source = PluginSource(name, str(getattr(plugin, "__version__", "unknown")))
        if _register(loaded, plugin, source):
            loaded.sources[name] = source
    _check_pending(loaded)
    return loaded


def make_plugin_manager(extra: list[tuple[Any, str]] | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugin, entry-point plugins and ``extra`` ones.

    Broken plugins are left out (see :func:`load_plugins`, which also says why)."""
    return load_plugins(extra).manager


def build_registry(extra: list[tuple[Any, str]] | None = None) -> Registry:
    """A registry of the built-in, entry-point and ``extra`` plugins (broken ones recorded)."""
    loaded = load_plugins(extra)
    return Registry(loaded.manager, sources=loaded.sources, failures=loaded.failures)


_lock = threading.Lock()
_registry: Registry | None = None
_extra: list[tuple[Any, str]] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use.

    A broken installed plugin does not make this raise: see :attr:`Registry.failures`."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = build_registry(_extra)
        return _registry


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Add a plugin object (a module or an instance with ``@hookimpl`` methods) at run time.

    If the plugin is broken (invalid hooks, a hook that raises, a name already taken) it is
    removed again and a :class:`~soundctm.errors.PluginError` is raised."""
    global _registry
    plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        _extra.append((plugin, plugin_name))
        _registry = None
    try:
        failures = get_registry().failures_of(plugin_name)
        if failures:
            first = failures[0]
            if isinstance(first.exception, PluginError):
                raise first.exception
            raise PluginError(first.describe()) from first.exception
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
