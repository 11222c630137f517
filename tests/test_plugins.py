"""Plugin discovery, ordering, configuration and failure isolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet import task

from gateway.auth import TokenVerifier
from gateway.config import ConfigError, load
from gateway.events import Direction, EventContext, spec
from gateway.plugin import GatewayPlugin, PluginError, discover, handles, load_plugins, order
from gateway.server import Gateway
from gateway.tick import TickScheduler
from protocol import events_pb2


def make(name: str, requires: tuple[str, ...] = (), optional: bool = False, **attrs: Any) -> Any:
    cls = type(name.title(), (GatewayPlugin,), {"name": name, "requires": requires,
                                                "optional": optional, **attrs})
    return cls()


def names(plugins: list[Any]) -> list[str]:
    return [p.name for p in plugins]


def test_order_puts_dependencies_first() -> None:
    ordered = order([make("c", ("b",)), make("a"), make("b", ("a",))])
    assert names(ordered) == ["a", "b", "c"]


def test_missing_dependency_names_the_plugin() -> None:
    with pytest.raises(PluginError, match=r"^game: requires plugin 'presence' \(not installed\)"):
        order([make("game", ("presence",))])


def test_dependency_on_a_disabled_plugin_is_an_error() -> None:
    with pytest.raises(PluginError, match=r"game: requires plugin 'chat' \(disabled\)"):
        order([make("game", ("chat",)), make("chat")], disabled=["chat"])


def test_optional_plugin_with_missing_dependency_is_skipped_transitively() -> None:
    ordered = order([make("a", ("missing",), optional=True), make("b", ("a",), optional=True),
                     make("c")])
    assert names(ordered) == ["c"]


def test_cycle_is_reported() -> None:
    with pytest.raises(PluginError, match="dependency cycle"):
        order([make("a", ("b",)), make("b", ("a",))])


def test_builtin_plugins_are_discovered() -> None:
    found = names(discover())
    assert {"chat", "world"} <= set(found)


@dataclass(frozen=True)
class EchoConfig:
    prefix: str = ">"
    times: int = 1


class Echo(GatewayPlugin):
    name = "echo"
    config_class = EchoConfig

    def __init__(self) -> None:
        self.config = EchoConfig()
        self.seen: list[str] = []

    def event_specs(self) -> tuple[Any, ...]:
        return (spec("test.echo", events_pb2.Ping, direction=Direction.BOTH),)

    @handles("test.echo")
    def on_echo(self, ctx: EventContext, msg: events_pb2.Ping) -> None:
        self.seen.append(ctx.player_id)

    def setup(self, context: Any) -> Any:
        self.setup_config = context.config
        return Service()


def gateway_for(config: Any) -> tuple[Gateway, TickScheduler]:
    clock = task.Clock()
    gw = Gateway(config, TokenVerifier(config.auth, keys={}, clock=clock), clock=clock)
    return gw, TickScheduler(clock)


def load_with(config: Any, candidates: list[Any]) -> tuple[list[Any], list[Any], Gateway]:
    gw, ticks = gateway_for(config)
    loaded, services = load_plugins(config, gw, reactor=None, ticks=ticks, admin_resources={},
                                    candidates=candidates)
    return loaded, services, gw


def test_config_table_parsed_into_the_plugin_dataclass() -> None:
    config = load(None, {"plugin.echo.prefix": "#", "plugin.echo.times": "3"})
    [plugin], services, gw = load_with(config, [Echo()])
    assert plugin.setup_config == EchoConfig(prefix="#", times=3)
    assert plugin.config == EchoConfig(prefix="#", times=3)
    assert len(services) == 1
    assert gw.registry["test.echo"].owner == "echo"
    assert len(gw.router.handlers("test.echo")) == 1


def test_bad_plugin_option_names_the_key() -> None:
    config = load(None, {"plugin.echo.times": "many"})
    with pytest.raises(ConfigError) as err:
        load_with(config, [Echo()])
    assert err.value.key == "plugin.echo.times"


def test_config_for_an_unknown_plugin_is_refused() -> None:
    config = load(None, {"plugin.ecko.times": "1"})
    with pytest.raises(ConfigError) as err:
        load_with(config, [Echo()])
    assert err.value.key == "plugin.ecko"


def test_disabled_plugin_is_not_loaded() -> None:
    config = load(None, {"plugins.disabled": '["echo"]'})
    loaded, _services, gw = load_with(config, [Echo()])
    assert loaded == []
    assert "test.echo" not in gw.registry


def test_each_gateway_gets_its_own_plugin_instance() -> None:
    dropin = Echo()
    config = load(None)
    [a], _, _ = load_with(config, [dropin])
    [b], _, _ = load_with(config, [dropin])
    assert a is not b and a is not dropin and b is not dropin


class Broken(GatewayPlugin):
    name = "broken"

    def setup(self, context: Any) -> None:
        raise RuntimeError("boom")


class OptionalBroken(Broken):
    optional = True


def test_failing_required_plugin_stops_start_up_naming_it() -> None:
    with pytest.raises(PluginError, match=r"^broken: failed while setting up: boom"):
        load_with(load(None), [Broken()])


def test_failing_optional_plugin_is_skipped_and_others_load() -> None:
    loaded, _, _ = load_with(load(None), [OptionalBroken(), Echo()])
    assert names(loaded) == ["echo"]


def test_plugin_registering_an_existing_type_fails_naming_it() -> None:
    class Clash(GatewayPlugin):
        name = "clash"

        def event_specs(self) -> Any:
            return (spec("system.ping", events_pb2.Ping),)

    with pytest.raises(PluginError, match=r"^clash: failed while registering its events"):
        load_with(load(None), [Clash()])


def test_handler_for_unregistered_type_is_refused() -> None:
    class Stray(GatewayPlugin):
        name = "stray"

        @handles("no.such")
        def handler(self, ctx: Any, msg: Any) -> None:
            pass

    with pytest.raises(PluginError, match=r"unregistered type 'no\.such'"):
        load_with(load(None), [Stray()])


def test_plugins_paths_must_exist() -> None:
    with pytest.raises(ConfigError) as err:
        discover(["/nonexistent/plugins/dir"])
    assert err.value.key == "plugins.paths"
