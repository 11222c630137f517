"""plugins/state.py through real sockets, with a provider registered from setup=."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from gateway.client import GatewayClient, registry_for
from gateway.client.prediction import StateClient
from gateway.config import ConfigError
from gateway.state.events import state_event_specs
from gateway.state.provider import GLOBAL, EntityState, FieldSpec, Schema
from protocol import state_pb2
from tests.conftest import test_config


class Line:
    """A tiny provider: a row of entities, players' avatars move one metre per input."""

    schema = Schema({1: (FieldSpec("hp"),)})

    def __init__(self, n=5):
        self.n = n
        self.avatars = {}
        self.inputs = []
        self.left = []

    def player_joined(self, player_id):
        self.avatars.setdefault(player_id, [1000 + len(self.avatars), 0.0])
        return self.avatars[player_id][0]

    def player_left(self, player_id):
        self.left.append(player_id)

    def apply_input(self, player_id, seq, tick, data):
        self.inputs.append((player_id, seq, data))
        self.avatars[player_id][1] += 1.0
        return seq

    def advance(self, tick, dt):
        pass

    def entity_states(self, tick):
        out = [EntityState(0, 1, scope=GLOBAL, fields=(7,))]
        out += [EntityState(e, 1, float(e), 0.0, fields=(100,)) for e in range(1, self.n + 1)]
        out += [EntityState(eid, 1, x, 0.0, fields=(50,)) for eid, x in self.avatars.values()]
        return out

    def view_position(self, player_id):
        return None


def sleep(seconds):
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


def state_plugin(service):
    [plugin] = [p for p in service.plugins if p.name == "state"]
    return plugin


@defer.inlineCallbacks
def connect(running, token):
    from twisted.internet import reactor

    client = GatewayClient(running.url, token, reactor=reactor,
                           registry=registry_for(state_event_specs()))
    state = StateClient(client)
    synced = state.when_synced()
    yield client.connect()
    yield synced
    return client, state


@pytest_twisted.inlineCallbacks
def test_provider_from_setup_inputs_and_budget_claim(start_gateway, mint):
    provider = Line()
    config = test_config(**{"plugin.state.rate": 30, "plugin.state.cell_size": 10.0,
                            "plugin.state.view_radius": 30.0})
    running = yield start_gateway(config, setup=lambda s: state_plugin(s).register_provider(
        provider))
    client, state = yield connect(running, mint("ann", state_budget=4096))
    replica = state.replica
    assert replica.schema.entity_id == 1000
    assert replica.schema.sync_interval == 2 and replica.schema.tick_rate == 60
    assert set(replica.entities) == {0, 1, 2, 3, 4, 5, 1000}
    assert replica.view(3).fields == {"hp": 100}
    plugin = state_plugin(running.service)
    [viewer] = plugin.engine.viewers.values()
    assert viewer.budget.bytes_per_second == 4096  # from the token's claim

    for _ in range(3):
        state.send_input(b"go")
    for _ in range(40):
        if replica.input_seq == 3:
            break
        yield sleep(0.02)
    assert replica.input_seq == 3
    assert [seq for _p, seq, _d in provider.inputs] == [1, 2, 3]  # repeats dropped
    for _ in range(40):
        if replica.view(1000).x == 3.0:
            break
        yield sleep(0.02)
    assert replica.view(1000).x == 3.0
    assert viewer.budget.spent > 0
    assert plugin.set_budget("ann", 9000) == 1
    yield client.close()
    yield sleep(0.05)
    assert provider.left == ["ann"] and not plugin.engine.viewers


@pytest_twisted.inlineCallbacks
def test_late_inputs_are_rejected(start_gateway, mint):
    provider = Line()
    config = test_config(**{"plugin.state.ring_depth": 2})
    running = yield start_gateway(config, setup=lambda s: state_plugin(s).register_provider(
        provider))
    client, state = yield connect(running, mint("bo"))
    yield sleep(0.3)
    state.send_input(b"old", tick=1)  # made for a tick long gone from the ring
    yield sleep(0.2)
    assert state_plugin(running.service).late_inputs == 1
    assert provider.inputs == []
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_without_a_provider_the_plugin_sends_nothing(start_gateway, mint):
    running = yield start_gateway()
    from twisted.internet import reactor

    client = GatewayClient(running.url, mint("cy"), reactor=reactor,
                           registry=registry_for(state_event_specs()))
    seen = []
    client.on_any(lambda incoming: seen.append(incoming.type))
    yield client.connect()
    yield sleep(0.2)
    assert not [t for t in seen if t.startswith("state.")]
    yield client.close()


@pytest.mark.parametrize("key,value", [
    ("plugin.state.rate", 7),
    ("plugin.state.bytes_per_second", 10),
    ("plugin.state.ring_depth", 0),
    ("plugin.state.provider", "nope"),
    ("plugin.state.provider", "gateway.state:Missing"),
])
def test_bad_config_stops_start_up_naming_the_key(key, value):
    from gateway.plugin import PluginError
    from gateway.service import GatewayService

    with pytest.raises((ConfigError, PluginError)) as info:
        GatewayService(test_config(**{key: value}))
    assert "plugin.state" in str(info.value)


def test_update_event_is_built_without_protobuf_and_parses():
    from gateway.wire import decode_frame
    from plugins.state import StatePlugin

    plugin = StatePlugin()
    event = plugin._event("state.delta", 1, b"\x08\x01\x10\x05")
    frame = event.plain_fragment()
    [env] = decode_frame(frame, max_events=10, max_size=1000)
    assert (env.type, env.version, env.priority) == ("state.delta", 1, event.priority)
    assert state_pb2.StateUpdate.FromString(env.payload).tick == 5
    assert event.key == "state" and not event.reliable
