"""The happy path through real sockets: connect, welcome, ping, close."""

from __future__ import annotations

import pytest_twisted

from gateway.client.client import GatewayClient
from gateway.states import State


@pytest_twisted.inlineCallbacks
def test_connect_welcome_ping_close(start_gateway, mint):
    from twisted.internet import reactor

    running = yield start_gateway()
    client = GatewayClient(running.url, mint("alice"), reactor=reactor, reconnect=None)
    states = []
    client.on_state(lambda old, new: states.append(new))
    welcome = yield client.connect()
    assert welcome.player_id == "alice"
    assert welcome.instance_id == running.gateway.instance_id
    assert states == [State.CONNECTED, State.AUTHENTICATING, State.AUTHENTICATED]
    client.ping()
    yield client.wait_for("system.pong", timeout=5)
    assert client.rtt > 0
    [conn] = running.gateway.hub.connections()
    assert conn.player_id == "alice"
    closed = yield client.close()
    assert closed.code == 1000
    assert states[-1] is State.DISCONNECTED
