"""The extension point: ``IGatewayPlugin`` dropins in the ``plugins`` package.

Discovery follows Twisted's own dropin model: any module in a ``plugins/``
directory on ``sys.path`` (this distribution's, another distribution's, or a
directory listed in ``plugins.paths``) that holds a module-level object
providing :class:`IGatewayPlugin` is a plugin.  Our own subsystems use the
same interface, so the core has no privileged path a third party lacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, implementer

from gateway.config import Config, ConfigError, parse_section
from gateway.events import EventRegistry, EventSpec, Handler, Router

if TYPE_CHECKING:
    from gateway.server import Gateway
    from gateway.tick import TickScheduler

__all__ = [
    "GatewayPlugin",
    "IGatewayPlugin",
    "PluginContext",
    "PluginError",
    "discover",
    "handles",
    "load_plugins",
    "order",
]

log = Logger()


class PluginError(Exception):
    """A plugin could not be loaded; the message starts with its name."""


class IGatewayPlugin(IPlugin):
    """A subsystem or game extension of the gateway.

    It extends ``twisted.plugin.IPlugin`` because Twisted's dropin cache only
    records objects providing ``IPlugin``.
    """

    name = Attribute("Unique name, also the [plugin.<name>] config table")
    version = Attribute("Version string, shown in logs and the event catalog")
    requires = Attribute("Names of plugins that must load before this one")
    optional = Attribute("True: a load failure is logged and start-up continues without it")
    config_class = Attribute("Frozen dataclass parsed from [plugin.<name>], or None")

    def configure(config: Any) -> None:
        """Receive the parsed [plugin.<name>] options, before event_specs() is asked."""

    def event_specs() -> Iterable[EventSpec]:
        """The event types this plugin owns; registered before any plugin's setup()."""

    def setup(context: PluginContext) -> IService | None:
        """Register handlers and hooks; return a service to run alongside the gateway, if any."""


def handles(*types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a plugin method as the handler of event ``types`` (registered at setup)."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method.__rtgateway_handles__ = types  # type: ignore[attr-defined]
        return method

    return mark


@implementer(IGatewayPlugin)
class GatewayPlugin:
    """Convenient base: declare attributes, decorate handler methods with :func:`handles`."""

    name = ""
    version = "0"
    requires: Sequence[str] = ()
    optional = False
    config_class: type[Any] | None = None
    config: Any = None

    def instance(self) -> GatewayPlugin:
        """A fresh object for one gateway: the dropin itself is a process-wide singleton,
        and several gateways may share a process (tests, embedded use)."""
        return type(self)()

    def configure(self, config: Any) -> None:
        if config is not None:
            self.config = config

    def event_specs(self) -> Iterable[EventSpec]:
        return ()

    def setup(self, context: PluginContext) -> IService | None:
        return None


@dataclasses.dataclass
class PluginContext:
    """What a plugin gets at setup: the gateway's parts it may extend."""

    plugin: Any
    gateway: Gateway
    config: Any  # the plugin's parsed config_class instance (or None)
    gateway_config: Config
    reactor: Any
    ticks: TickScheduler
    admin_resources: dict[bytes, Any]
    plugins: Mapping[str, Any]  # plugins loaded so far, by name (its dependencies are there)

    @property
    def registry(self) -> EventRegistry:
        return self.gateway.registry

    @property
    def router(self) -> Router:
        return self.gateway.router

    def handle(self, type_: str, handler: Handler) -> Callable[[], None]:
        if type_ not in self.gateway.registry:
            raise PluginError(f"{self.plugin.name}: handler for unregistered type {type_!r}")
        return self.gateway.router.add(type_, handler)


@contextlib.contextmanager
def _extend_search_path(paths: Sequence[str]) -> Iterator[None]:
    """Add ``paths`` to the ``plugins`` package's ``__path__`` for one scan, then restore it.

    The directories in ``plugins.paths`` belong to one gateway's configuration,
    not to the process: left on ``__path__``, every later :func:`discover` in
    the process (another gateway, a test, ``rtgateway-catalog``) would load
    those dropins too.  Modules imported during the scan stay in
    ``sys.modules``, so a dropin's module-level imports of its neighbours
    (``from plugins import emotes_pb2``) keep working afterwards; import them
    at module level, not lazily inside functions.
    """
    import plugins

    added: list[str] = []
    try:
        for path in paths:
            full = os.path.abspath(path)
            if not os.path.isdir(full):
                raise ConfigError("plugins.paths", f"{path} is not a directory")
            if full not in plugins.__path__:
                plugins.__path__.append(full)
                added.append(full)
        yield
    finally:
        for full in added:
            plugins.__path__.remove(full)


def discover(paths: Sequence[str] = ()) -> list[Any]:
    """Every IGatewayPlugin provider in the ``plugins`` package and in ``paths``.

    ``paths`` (config ``plugins.paths``) are searched for this call only.
    """
    import plugins

    found: dict[str, Any] = {}
    with _extend_search_path(paths):
        for plugin in getPlugins(IGatewayPlugin, plugins):
            name = getattr(plugin, "name", "")
            if not name:
                raise PluginError(f"{plugin!r}: a plugin needs a name")
            if name in found and found[name] is not plugin:
                raise PluginError(f"{name}: two plugins have this name")
            found[name] = plugin
    return list(found.values())


def order(candidates: Iterable[Any], disabled: Iterable[str] = ()) -> list[Any]:
    """Dependencies first; drop optional plugins whose dependencies are missing.

    Raises :class:`PluginError` naming the plugin for a missing dependency of
    a required plugin, or a dependency cycle.
    """
    off = set(disabled)
    available = {p.name: p for p in candidates if p.name not in off}
    changed = True
    while changed:  # drop optional plugins with unmet dependencies, transitively
        changed = False
        for name, plugin in list(available.items()):
            missing = [r for r in plugin.requires if r not in available]
            if missing:
                if getattr(plugin, "optional", False):
                    log.warn("plugin {name} skipped: needs {missing}", name=name, missing=missing)
                    del available[name]
                    changed = True
                else:
                    why = "disabled" if missing[0] in off else "not installed"
                    raise PluginError(f"{name}: requires plugin {missing[0]!r} ({why})")
    result: list[Any] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise PluginError(f"{name}: dependency cycle {' -> '.join([*chain, name])}")
        state[name] = 1
        for dep in sorted(available[name].requires):
            visit(dep, [*chain, name])
        state[name] = 2
        result.append(available[name])

    for name in sorted(available):
        visit(name, [])
    return result


def _parse_config(plugin: Any, table: Mapping[str, Any] | None) -> Any:
    cls = getattr(plugin, "config_class", None)
    if cls is None:
        if table:
            raise ConfigError(f"plugin.{plugin.name}", "this plugin takes no options")
        return None
    return parse_section(f"plugin.{plugin.name}", cls, table or {})


def _method_handlers(plugin: Any) -> list[tuple[str, Handler]]:
    out = []
    for _name, member in inspect.getmembers(plugin, callable):
        for type_ in getattr(member, "__rtgateway_handles__", ()):
            out.append((type_, member))
    return out


def load_plugins(
    config: Config,
    gateway: Gateway,
    *,
    reactor: Any,
    ticks: TickScheduler,
    admin_resources: dict[bytes, Any],
    candidates: Iterable[Any] | None = None,
) -> tuple[list[Any], list[IService]]:
    """Discover, order, configure and set up every enabled plugin.

    Returns the loaded plugins and the services they asked to run.  A
    required plugin that fails stops start-up with a PluginError naming it.
    """
    found = list(candidates) if candidates is not None else discover(config.plugins.paths)
    found = [p.instance() if hasattr(p, "instance") else p for p in found]
    names = {p.name for p in found}
    for table in config.plugin:
        if table not in names:
            raise ConfigError(f"plugin.{table}", "no installed plugin has this name")
    for name in config.plugins.disabled:
        if name not in names:
            raise ConfigError("plugins.disabled", f"no installed plugin is named {name!r}")
    ordered = order(found, config.plugins.disabled)
    loaded: dict[str, Any] = {}
    services: list[IService] = []
    parsed: dict[str, Any] = {}
    for plugin in ordered:
        try:
            parsed[plugin.name] = _parse_config(plugin, config.plugin.get(plugin.name))
            plugin.configure(parsed[plugin.name])
            for s in plugin.event_specs():
                owned = s if s.owner != "core" else dataclasses.replace(s, owner=plugin.name)
                gateway.registry.register(owned)
        except ConfigError:
            raise
        except Exception as exc:
            _fail(plugin, exc, "registering its events")
            continue
        loaded[plugin.name] = plugin
    ready: dict[str, Any] = {}
    for plugin in ordered:
        if plugin.name not in loaded:
            continue
        if any(dep not in ready for dep in plugin.requires):
            _fail(plugin, PluginError("a dependency failed to load"), "setting up")
            continue
        context = PluginContext(
            plugin=plugin,
            gateway=gateway,
            config=parsed[plugin.name],
            gateway_config=config,
            reactor=reactor,
            ticks=ticks,
            admin_resources=admin_resources,
            plugins=dict(ready),
        )
        try:
            for type_, handler in _method_handlers(plugin):
                context.handle(type_, handler)
            service = plugin.setup(context)
        except Exception as exc:
            _fail(plugin, exc, "setting up")
            continue
        if service is not None:
            services.append(service)
        ready[plugin.name] = plugin
        log.info("plugin {name} {version} loaded", name=plugin.name, version=plugin.version)
    return list(ready.values()), services


def _fail(plugin: Any, exc: Exception, doing: str) -> None:
    if getattr(plugin, "optional", False):
        log.failure(
            "optional plugin {name} failed while {doing}; continuing without it",
            name=plugin.name,
            doing=doing,
        )
        return
    raise PluginError(f"{plugin.name}: failed while {doing}: {exc}") from exc
