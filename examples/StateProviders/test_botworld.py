"""The bot world example, end to end: a real gateway loading plugins/botworld.py as a dropin,
a predicting client over real sockets, and a resume that restores the world.

Run it from the root of the rtgateway checkout::

    pytest examples/StateProviders
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, task

from gateway.client import GatewayClient, registry_for
from gateway.state.events import state_event_specs
from tests.conftest import test_config as gateway_config  # renamed: not a test

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from client import PLUGINS_DIR, PredictingPlayer, load_game  # noqa: E402


def world_config(**options):
    base = {
        "plugins.paths": [PLUGINS_DIR],
        "plugin.botworld.bots": 40,
        "plugin.botworld.zone": 120.0,
        "plugin.state.rate": 20,
        "plugin.state.cell_size": 20.0,
        "plugin.state.view_radius": 50.0,
    }
    base.update(options)
    return gateway_config(**base)


def sleep(seconds):
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


def plugin(running, name):
    [found] = [p for p in running.service.plugins if p.name == name]
    return found


@defer.inlineCallbacks
def connect(running, token):
    from twisted.internet import reactor

    game = load_game()
    client = GatewayClient(running.url, token, reactor=reactor,
                           registry=registry_for(state_event_specs()))
    player = PredictingPlayer(client, game, zone=120.0)
    synced = player.state.when_synced()
    yield client.connect()
    yield synced
    return client, player


@defer.inlineCallbacks
def settle(running, player, conn_id):
    """Freeze the bots, then wait until the client's state equals the server's."""
    state = plugin(running, "state")
    plugin(running, "botworld").paused = True
    for _ in range(100):
        yield sleep(0.05)
        engine = state.engine
        if conn_id not in engine.viewers:
            continue
        expected = {e: engine.world[e] for e in engine.visible(conn_id)}
        if player.state.replica.entities == expected:
            return expected
    raise AssertionError("the client never reached the server's state")


def connection_id(running, player_id):
    [transport] = running.gateway.hub.for_player(player_id)
    return transport.connection.id


@pytest_twisted.inlineCallbacks
def test_a_predicting_client_reaches_the_servers_state(start_gateway, mint):
    running = yield start_gateway(world_config())
    client, player = yield connect(running, mint("alice"))
    replica = player.state.replica
    game = player.game
    assert player.entity is not None and player.entity in replica.entities
    assert game.WORLD_ENTITY in replica.entities  # global state reaches everyone
    bots = [e for e, s in replica.entities.items() if s[1] == game.KIND_BOT]
    assert 0 < len(bots) < 40  # interest management: only the bots near the avatar

    # Walk east for a second, predicting every step; the server agrees afterwards.
    for _ in range(20):
        player.move(1.0, 0.0)
        yield sleep(game.INPUT_DT)
    yield sleep(0.3)
    server = player.authoritative(replica)
    predicted = player.predictor.state
    assert server.x > 60 + 4  # it moved (5 m/s for about a second, from the centre)
    tolerance = (2 + 0.5) / 64 + 1e-6  # dead-reckoning tolerance + quantisation
    assert abs(predicted.x - server.x) <= tolerance and abs(predicted.y - server.y) <= tolerance
    assert replica.input_seq == player.state.inputs.next_seq - 1  # every input confirmed
    assert not player.state.inputs.pending

    expected = yield settle(running, player, connection_id(running, "alice"))
    assert player.entity in expected
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_resume_restores_the_world_quickly(start_gateway, mint):
    running = yield start_gateway(world_config())
    client, player = yield connect(running, mint("bob"))
    old_conn = connection_id(running, "bob")
    yield settle(running, player, old_conn)
    plugin(running, "botworld").paused = False
    before = set(player.state.replica.entities)

    synced = player.state.when_synced()
    started = time.monotonic()
    client.abort(reconnect=True)  # a network failure: the client resumes by itself
    yield synced
    elapsed = time.monotonic() - started
    print(f"\nstate restored {elapsed * 1000:.0f} ms after the connection dropped "
          f"(welcome to full snapshot: {player.state.synced_after * 1000:.0f} ms)")
    assert client.welcome.resumed
    assert elapsed < 5.0  # generous: the target is under 2 s; the client's first retry is ~0.1 s
    new_conn = connection_id(running, "bob")
    assert new_conn != old_conn
    expected = yield settle(running, player, new_conn)
    assert player.entity in expected
    assert before & set(expected)  # the same neighbourhood came back
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_two_players_see_each_other(start_gateway, mint):
    running = yield start_gateway(world_config())
    a_client, a = yield connect(running, mint("carol"))
    b_client, b = yield connect(running, mint("dave"))
    # Both avatars start in the centre: each sees the other.
    for _ in range(40):
        if b.entity in a.state.replica.entities and a.entity in b.state.replica.entities:
            break
        yield sleep(0.05)
    assert b.entity in a.state.replica.entities
    name = a.state.replica.view(b.entity).fields["name"]
    assert name == b"dave"
    # Dave walks away north: carol sees him leave her view.
    left = []
    a.state.replica.on_leave.append(left.append)
    for _ in range(int(60 / (5.0 * 0.05)) + 10):
        b.move(0.0, 1.0)
        yield sleep(0.01)
    for _ in range(60):
        if b.entity in left:
            break
        yield sleep(0.05)
    assert b.entity in left
    assert math.isclose(b.predictor.state.y, 120.0, abs_tol=0.05)  # clamped at the zone edge
    yield a_client.close()
    yield b_client.close()
