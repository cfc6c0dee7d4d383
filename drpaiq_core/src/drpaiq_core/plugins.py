"""Plugin discovery and the four registries.

Plugins are modules named by entry points of the group ``drpaiq``; the built-in
distributions use the same group. Nothing is imported until a registry is first
asked for a name, so ``drpaiq --help`` stays fast.

Environment switches:

``DRPAIQ_PLUGINS``
    When set, only the named external plugins (entry point names, comma separated)
    are loaded; set and empty loads no external plugin. Built-in distributions
    always load unless blocked.
``DRPAIQ_BLOCK_PLUGINS``
    Entry point names (or distribution names) never to load, comma separated.
``DRPAIQ_TRACE_PLUGINS``
    When set to ``1``, every hook call is traced on stderr.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pluggy

from drpaiq_core import hookspecs
from drpaiq_core.errors import PluginError
from drpaiq_core.plugin_api import Calibrator, ExclusionMatcher, OpQuantizer, Reader

log = logging.getLogger("drpaiq")

ENTRY_POINT_GROUP = "drpaiq"
ENV_ONLY = "DRPAIQ_PLUGINS"
ENV_BLOCK = "DRPAIQ_BLOCK_PLUGINS"
ENV_TRACE = "DRPAIQ_TRACE_PLUGINS"

#: Distributions that ship drpaiq's built-in plugins; they are not "external".
BUILTIN_DISTRIBUTIONS = frozenset(
    {"drpaiq-plugins-readers", "drpaiq-plugins-ops", "drpaiq-plugins-calibrators"}
)

#: Which distribution provides each built-in name, to help a user with only the core.
BUILTIN_PROVIDERS: dict[str, dict[str, str]] = {
    "reader": {
        name: "drpaiq-plugins-readers" for name in ("nchw_image", "nhwc_image", "tvm", "numpy")
    },
    "calibrator": {
        name: "drpaiq-plugins-calibrators" for name in ("minmax", "entropy", "percentile")
    },
    "exclusion matcher": {
        name: "drpaiq-plugins-ops" for name in ("op_type", "node_name", "act_func_pattern")
    },
}

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin module and where it came from."""

    name: str
    distribution: str
    version: str
    module: str
    registers: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered class and the plugin that registered it."""

    name: str
    cls: type[T]
    plugin: PluginInfo


def _split_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _entry_points() -> Iterable[Any]:
    import importlib_metadata

    return importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)


class Registry(Generic[T]):
    """Named classes of one kind; names match case-insensitively."""

    def __init__(self, kind: str, host: PluginHost, key: Callable[[type[T]], Iterable[str]]):
        self.kind = kind
        self._host = host
        self._key = key
        self._entries: dict[str, Entry[T]] | None = None

    def _load(self) -> dict[str, Entry[T]]:
        if self._entries is None:
            self._entries = self._host._collect(self.kind, self._key)
        return self._entries

    def forget(self, plugin: str) -> None:
        """Drop what plugin ``plugin`` registered here (when it is skipped later)."""
        if self._entries is not None:
            self._entries = {k: e for k, e in self._entries.items() if e.plugin.name != plugin}

    def entries(self) -> list[Entry[T]]:
        """Every registered entry, sorted by name (each class once)."""
        seen: dict[int, Entry[T]] = {}
        for entry in self._load().values():
            seen.setdefault(id(entry.cls), entry)
        return sorted(seen.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        """The names users can select."""
        return sorted(self._load())

    def find(self, name: str) -> type[T] | None:
        """The class registered under ``name``, or None."""
        entry = self._load().get(name.lower())
        return entry.cls if entry else None

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; an unknown name is a
        :class:`PluginError` listing the installed names and the closest match."""
        cls = self.find(name)
        if cls is not None:
            return cls
        installed = self.names()
        parts = [f"unknown {self.kind} {name!r}"]
        close = _closest(name.lower(), installed)
        if close:
            parts.append(f"did you mean {' or '.join(repr(c) for c in close)}?")
        if installed:
            parts.append(f"installed: {', '.join(installed)}")
        else:
            parts.append(f"no {self.kind} plugins are installed")
        provider = BUILTIN_PROVIDERS.get(self.kind, {}).get(name.lower())
        if provider:
            parts.append(f"{name!r} is provided by {provider}: pip install {provider}")
        raise PluginError("; ".join(parts))


class PluginHost:
    """The plugin manager plus lazily filled registries.

    Create one with :func:`get_plugin_host`; tests may pass ``load_entry_points=False``
    and register plugin objects of their own with :meth:`register`.
    """

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("drpaiq")
        self.pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._loaded = False
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: list[str] = []
        self.tracing = os.environ.get(ENV_TRACE) == "1"
        if self.tracing:
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(f"drpaiq trace: {text}"))
            self.pm.enable_tracing()
        self.readers: Registry[Reader] = Registry("reader", self, _plugin_names)
        self.calibrators: Registry[Calibrator] = Registry("calibrator", self, _plugin_names)
        self.op_quantizers: Registry[OpQuantizer] = Registry(
            "op quantizer", self, lambda cls: cls.OP_TYPES
        )
        self.exclusion_matchers: Registry[ExclusionMatcher] = Registry(
            "exclusion matcher", self, _plugin_names
        )

    def trace(self, message: str) -> None:
        """Write one trace line on stderr when ``DRPAIQ_TRACE_PLUGINS=1``."""
        if self.tracing:
            sys.stderr.write(f"drpaiq trace: {message}\n")

    # -- loading ---------------------------------------------------------------

    def register(self, plugin: object, name: str, distribution: str = "(local)") -> None:
        """Register a plugin object (module or instance with hook implementations), with
        the check an entry point gets: a misspelled hook name is a :class:`PluginError`
        (nothing is kept)."""
        self.pm.register(plugin, name=name)
        try:
            _check_known_hooks(self.pm, plugin)
        except Exception as exc:
            self._drop(name)
            raise PluginError(f"plugin {name!r}: {_one_line(exc)}") from exc
        self.plugins[name] = PluginInfo(name, distribution, "", getattr(plugin, "__name__", name))

    def load(self) -> None:
        """Import every allowed entry point once; broken ones cost one warning each."""
        if self._loaded:
            return
        self._loaded = True
        if not self._load_entry_points:
            return
        only = _split_env(ENV_ONLY)
        blocked = _split_env(ENV_BLOCK) or set()
        # Built-in distributions first: an external entry point that reuses one of their
        # names is the one skipped.
        for ep in sorted(_entry_points(), key=_load_order):
            dist = _distribution(ep)
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in blocked or dist in blocked:
                continue
            if only is not None and dist not in BUILTIN_DISTRIBUTIONS and ep.name not in only:
                continue
            if ep.name in self.plugins:
                first = self.plugins[ep.name]
                if (first.distribution, first.module) != (dist, ep.value):
                    self._broken(
                        ep.name,
                        dist,
                        PluginError(
                            f"the entry point name {ep.name!r} is already used by "
                            f"{first.distribution} ({first.module}); give the plugin "
                            "another name in its entry point"
                        ),
                        block_hint=False,
                    )
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
                _check_known_hooks(self.pm, module)
            except Exception as exc:  # a broken plugin must not take the host down
                # pluggy keeps the hooks it registered before one failed validation.
                self.skip(ep.name, dist, exc)
                continue
            self.plugins[ep.name] = PluginInfo(ep.name, dist, version, ep.value)

    def _broken(self, name: str, dist: str, exc: BaseException, *, block_hint: bool = True) -> None:
        """Report a plugin that is skipped: one warning, also kept in :attr:`broken`."""
        kind = "" if isinstance(exc, PluginError) else f"{type(exc).__name__}: "
        message = (
            f"plugin {name!r} from {dist} failed to load and is skipped: {kind}{_one_line(exc)}"
        )
        if block_hint:
            message += f" (disable it with {ENV_BLOCK}={name})"
        self.broken.append(message)
        log.warning(message)

    def skip(self, name: str, dist: str, exc: BaseException) -> None:
        """Skip plugin ``name`` (from distribution ``dist``) because of ``exc``: one
        warning, and the plugin contributes nothing from now on."""
        self._broken(name, dist, exc)
        self._drop(name)

    def _drop(self, name: str) -> None:
        """Take plugin ``name`` out entirely (a plugin reported as skipped must
        contribute nothing): its hooks, its listing, and what registries already hold
        of it."""
        with contextlib.suppress(Exception):
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for registry in self.iter_registry():
            registry.forget(name)

    def owner_of(self, module_name: str) -> PluginInfo | None:
        """The loaded plugin whose package holds the module ``module_name``, or None."""
        top = module_name.split(".", 1)[0]
        for info in self.plugins.values():
            if info.module.split(":", 1)[0].split(".", 1)[0] == top:
                return info
        return None

    def _collect(self, kind: str, key: Callable[[type[T]], Iterable[str]]) -> dict[str, Entry[T]]:
        self.load()
        hook_name = {
            "reader": "drpaiq_register_readers",
            "calibrator": "drpaiq_register_calibrators",
            "op quantizer": "drpaiq_register_op_quantizers",
            "exclusion matcher": "drpaiq_register_exclusion_matchers",
        }[kind]
        caller = getattr(self.pm.hook, hook_name)
        entries: dict[str, Entry[T]] = {}
        # Each implementation is called on its own so that one failing plugin
        # is reported and skipped without losing the others' registrations.
        for impl in reversed(caller.get_hookimpls()):
            info = self.plugins.get(impl.plugin_name) or PluginInfo(
                impl.plugin_name, "(unknown distribution)", "", ""
            )
            found: list[type[T]] = []
            try:
                impl.function(found.append)
                for cls in found:
                    _check_class(kind, cls)
                keyed = [(cls, list(key(cls))) for cls in found]
            except Exception as exc:
                self.skip(info.name, info.distribution, exc)
                continue
            self.trace(
                f"{hook_name} of plugin {info.name!r} ({info.distribution}) registered "
                f"{', '.join(getattr(cls, 'PLUGIN_NAME', '?') for cls in found) or 'nothing'}"
            )
            for cls, keys in keyed:
                for raw in keys:
                    name = raw.lower()
                    if name in entries and entries[name].cls is not cls:
                        other = entries[name]
                        raise PluginError(
                            f"{kind} name {raw!r} is registered twice: by "
                            f"{other.cls.__module__}.{other.cls.__qualname__} "
                            f"(distribution {other.plugin.distribution}) and by "
                            f"{cls.__module__}.{cls.__qualname__} (distribution "
                            f"{info.distribution}); uninstall one or block it with "
                            f"{ENV_BLOCK}"
                        )
                    entries[name] = Entry(name, cls, info)
                info.registers.setdefault(kind, []).append(getattr(cls, "PLUGIN_NAME", "?"))
        return entries

    def iter_registry(self) -> Iterator[Registry[Any]]:
        """The four registries, in a fixed order."""
        yield self.readers
        yield self.calibrators
        yield self.op_quantizers
        yield self.exclusion_matchers

    def load_all(self) -> None:
        """Fill every registry (for listings)."""
        for registry in self.iter_registry():
            registry.entries()


def _one_line(exc: BaseException) -> str:
    # pluggy's validation errors span several lines; a warning is one line.
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_known_hooks(pm: pluggy.PluginManager, plugin: object) -> None:
    """Refuse a plugin that implements a hook drpaiq does not have (a misspelled hook
    name would otherwise register nothing, silently)."""
    unknown = sorted(c.name for c in pm.get_hookcallers(plugin) or () if not c.has_spec())
    if not unknown:
        return
    pm.unregister(plugin)
    known = [name for name in dir(hookspecs) if name.startswith("drpaiq_")]
    hints = []
    for name in unknown:
        close = _closest(name, known)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise pluggy.PluginValidationError(plugin, f"no such drpaiq hook: {', '.join(hints)}")


def _plugin_names(cls: type[Any]) -> list[str]:
    name = getattr(cls, "PLUGIN_NAME", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{cls.__module__}.{cls.__qualname__} declares no PLUGIN_NAME")
    return [name, *getattr(cls, "ALIASES", ())]


#: The base class each kind of registered class must derive from.
_BASES: dict[str, type[Any]] = {
    "reader": Reader,
    "calibrator": Calibrator,
    "op quantizer": OpQuantizer,
    "exclusion matcher": ExclusionMatcher,
}


def _check_class(kind: str, cls: Any) -> None:
    """Refuse what a register hook passed unless it is a concrete subclass of the
    kind's base class with well-formed declarations: tuples of names (a missing comma
    in ``OP_TYPES = ("Softplus")`` would register the op types s, o, f, ...) and a
    mapping of ``OPTIONS``. The message names the class and says what to fix."""
    import inspect

    base = _BASES[kind]
    if not isinstance(cls, type):
        raise PluginError(
            f"its {kind} hook registered {cls!r}, not a class; pass the class itself "
            f"(register({type(cls).__name__}), not an instance)"
        )
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not issubclass(cls, base):
        raise PluginError(
            f"{where} was registered as a {kind} but is not a subclass of "
            f"drpaiq_core.plugin_api.{base.__name__}"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise PluginError(f"{where} does not implement {missing}")
    for attribute in ("OP_TYPES", "ALIASES"):
        value = getattr(cls, attribute, ())
        if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
            raise PluginError(
                f"{where}.{attribute} must be a tuple of names, e.g. ({value!r},) with the "
                f"comma; got {value!r}"
            )
    options = getattr(cls, "OPTIONS", {})
    if not isinstance(options, Mapping):
        raise PluginError(
            f"{where}.OPTIONS must map each option name to its help text; got {options!r}"
        )


def _load_order(ep: Any) -> tuple[bool, str, str]:
    return (_distribution(ep) not in BUILTIN_DISTRIBUTIONS, ep.name, _distribution(ep))


def _distribution(ep: Any) -> str:
    return str(ep.dist.name) if ep.dist is not None else "(unknown distribution)"


def _closest(name: str, candidates: Iterable[str]) -> list[str]:
    """The candidates most similar to ``name`` (all of them on a tie), if similar enough.

    ``nhcw_image`` is one transposition from both ``nchw_image`` and ``nhwc_image``;
    naming only one of them would be a coin toss.
    """
    scored = [(difflib.SequenceMatcher(None, name, c).ratio(), c) for c in candidates]
    best = max((score for score, _ in scored), default=0.0)
    return sorted(c for score, c in scored if score == best) if best >= 0.5 else []


def get_plugin_host(load_entry_points: bool = True) -> PluginHost:
    """A new plugin host; entry points are imported on first use of a registry."""
    return PluginHost(load_entry_points=load_entry_points)
