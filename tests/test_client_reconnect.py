"""Client SDK reconnection through real sockets: drop and resume, offline queue,
endpoint failover, no-reconnect codes, attempt limit, drain to another gateway."""

from __future__ import annotations

import socket
import statistics
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError

from gateway.client import ClientClosed, GatewayClient, QueueFull, ReconnectPolicy, registry_for
from gateway.codes import CloseCode
from gateway.states import State
from plugins.chat import ChatPlugin
from protocol import game_pb2
from tests.conftest import test_config

FAST_CHAT = {"plugin.chat.burst": 100, "plugin.chat.messages_per_second": 100}
RECONNECTED = [State.RECONNECTING, State.CONNECTING, State.CONNECTED, State.AUTHENTICATING,
               State.AUTHENTICATED]


class FixedRng:
    """uniform(a, b) at a fixed fraction of the way from a to b (deterministic jitter)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


@pytest.fixture
def clients():
    """make(urls, token, **kw) -> GatewayClient on the global reactor, closed after the test."""
    from twisted.internet import reactor

    made: list[GatewayClient] = []

    def make(urls, token, **kw):
        kw.setdefault("registry", registry_for(ChatPlugin()))
        client = GatewayClient(urls, token, reactor=reactor, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        if client.state is not State.DISCONNECTED or client._cycle is not None:
            pytest_twisted.blockon(client.close())
        assert leftover_calls(client) == [], "timers left behind after close"


def leftover_calls(client: GatewayClient) -> list:
    """The client's own DelayedCalls still pending on the global reactor."""
    from twisted.internet import reactor

    mine = []
    for call in reactor.getDelayedCalls():
        owner = getattr(call.func, "__self__", None)
        if isinstance(owner, task.LoopingCall):
            owner = getattr(owner.f, "__self__", None)
        if owner is client:
            mine.append(call)
    return mine


def say(client, text, **kw):
    return client.send("social.chat.send", game_pb2.ChatSend(channel="global", text=text), **kw)


def texts(into, sender=None):
    def handler(incoming):
        if sender is None or incoming.message.from_player == sender:
            into.append(incoming.message.text)

    return handler


def reached(client, state):
    """A Deferred fired when ``client`` next enters ``state``."""
    d = defer.Deferred()

    def watch(_old, new):
        if new is state and not d.called:
            unsubscribe()
            d.callback(new)

    unsubscribe = client.on_state(watch)
    return d


def lose_in_flight(client, text):
    """A reliable event that got its seq and is kept for resending, but was never written
    (as if the connection died with it in a buffer)."""
    event = client.session.event("social.chat.send",
                                 game_pb2.ChatSend(channel="global", text=text))
    client.session.queue(event)
    client.session.take_frame(_reactor().seconds())
    assert client.session.pending[-1].event is event


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


# --------------------------------------------------------------------------- drop and resume


@pytest_twisted.inlineCallbacks
def test_dropped_tcp_connection_resumes_the_session(start_gateway, mint, clients):
    running = yield start_gateway()
    client = clients(running.url, mint("alice"))
    states = []
    client.on_state(lambda _old, new: states.append(new))
    first = yield client.connect()
    timings = []
    for _ in range(5):
        states.clear()
        back = client.wait_for("system.welcome", timeout=10)
        started = time.monotonic()
        client._proto.transport.abortConnection()  # no close frame: a dead network
        again = (yield back).message
        timings.append(time.monotonic() - started)
        assert states == RECONNECTED, (states, again)
        assert again.resumed and not again.full_resync
        assert again.session_id == first.session_id
        assert client.state is State.AUTHENTICATED
    print(f"\ndrop -> authenticated on loopback: min {min(timings) * 1000:.1f} ms, "
          f"median {statistics.median(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")
    assert max(timings) < 10
    assert client.reconnects == 5
    assert len(running.gateway.hub.for_player("alice")) == 1
    closed = yield client.close()
    assert closed.code == 1000
    assert client.state is State.DISCONNECTED
    assert leftover_calls(client) == []


@pytest_twisted.inlineCallbacks
def test_events_across_a_drop_arrive_once_in_order_and_offline_sends_follow(
        start_gateway, mint, clients):
    running = yield start_gateway(test_config(**FAST_CHAT))
    # Away for 0.3 s exactly: long enough for bob's lines to be published meanwhile.
    alice = clients(running.url, mint("alice"),
                    reconnect=ReconnectPolicy(base=0.3, cap=1.0), rng=FixedRng(1.0))
    bob = clients(running.url, mint("bob"))
    heard, bob_heard = [], []
    alice.on("social.chat.message", texts(heard))
    bob.on("social.chat.message", texts(bob_heard, sender="alice"))
    yield alice.connect()
    yield bob.connect()
    for n in range(3):
        say(bob, f"before-{n}")
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "before-2")

    lose_in_flight(alice, "lost")  # sequenced and kept, but the server never saw it
    away = reached(alice, State.RECONNECTING)
    alice.abort(reconnect=True)
    yield away
    for n in range(4):
        say(bob, f"during-{n}")
    for n in range(3):
        assert say(alice, f"offline-{n}")  # queued: alice is not authenticated
    assert [q.type for q in alice.session.offline] == ["social.chat.send"] * 3
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "during-3")
    assert alice.state is not State.AUTHENTICATED  # bob's lines really went out meanwhile

    yield alice.wait_for("system.welcome", timeout=10)
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "offline-2")
    say(bob, "after")
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "after")
    # "lost" was resent with its original seq on the resumed session, ahead of the queue.
    assert heard == ([f"before-{n}" for n in range(3)] + [f"during-{n}" for n in range(4)]
                     + ["lost"] + [f"offline-{n}" for n in range(3)] + ["after"])
    assert bob_heard == ["lost"] + [f"offline-{n}" for n in range(3)]
    assert not alice.session.offline and not alice.session.pending


# --------------------------------------------------------------------------- endpoints


@pytest_twisted.inlineCallbacks
def test_endpoint_pool_fails_over_to_the_next_url(start_gateway, mint, clients):
    running = yield start_gateway()
    dead = closed_port_url()
    client = clients([dead, running.url], mint("alice"))
    welcome = yield client.connect()
    assert welcome.player_id == "alice"
    assert client.url == running.url
    assert client.urls == (dead, running.url)


@pytest_twisted.inlineCallbacks
def test_connect_fails_when_no_endpoint_answers(mint, clients):
    client = clients([closed_port_url(), closed_port_url()], mint("alice"))
    closed = client.when_closed()
    with pytest.raises(ConnectionRefusedError):
        yield client.connect()
    reason = yield closed
    assert reason.code is None and "refused" in (reason.reason or "").lower()
    assert client.state is State.DISCONNECTED


# --------------------------------------------------------------------------- no reconnect


@pytest_twisted.inlineCallbacks
def test_kicked_means_disconnected_without_retry(start_gateway, mint, clients):
    running = yield start_gateway()
    ended = []
    client = clients(running.url, mint("alice"), on_closed=ended.append)
    states = []
    client.on_state(lambda _old, new: states.append(new))
    yield client.connect()
    closed = client.when_closed()
    transport = running.gateway.hub.for_player("alice")[0]
    running.gateway.close(transport, CloseCode.KICKED, "bye")
    reason = yield closed
    assert reason.code == CloseCode.KICKED
    assert reason.disconnect is not None and reason.disconnect.reconnect is False
    assert [e.code for e in ended] == [CloseCode.KICKED]
    yield task.deferLater(_reactor(), 0.3, lambda: None)  # well past any first retry
    assert State.RECONNECTING not in states
    assert client.state is State.DISCONNECTED
    assert running.gateway.hub.for_player("alice") == ()
    assert leftover_calls(client) == []


@pytest_twisted.inlineCallbacks
def test_reconnect_none_keeps_the_old_behaviour(start_gateway, mint, clients):
    running = yield start_gateway()
    client = clients(running.url, mint("alice"), reconnect=None)
    yield client.connect()
    closed = client.when_closed()
    client.abort(reconnect=True)  # even a simulated network failure
    reason = yield closed
    assert reason.code == 1006
    assert client.state is State.DISCONNECTED
    again = yield client.connect()  # the application reconnects itself: resumed
    assert again.resumed


# --------------------------------------------------------------------------- queue and limits


@pytest_twisted.inlineCallbacks
def test_offline_queue_overflow_drops_and_reports(start_gateway, mint, clients):
    running = yield start_gateway(test_config(**FAST_CHAT))
    full = []
    alice = clients(running.url, mint("alice"), offline_queue_limit=3, on_queue_full=full.append)
    bob = clients(running.url, mint("bob"))
    bob_heard = []
    bob.on("social.chat.message", texts(bob_heard, sender="alice"))
    yield bob.connect()

    assert say(alice, "u1", reliable=False)  # not connected yet: all of this waits
    assert say(alice, "r1")
    assert say(alice, "r2")
    assert say(alice, "r3")  # full: the oldest unreliable one (u1) goes
    assert full == ["social.chat.send"]
    assert not say(alice, "r4")  # full of reliable events: the newcomer is refused
    assert full == ["social.chat.send"] * 2
    refused = alice.request("social.chat.send", game_pb2.ChatSend(channel="global", text="q"))
    with pytest.raises(QueueFull):
        yield refused
    assert len(full) == 3

    yield alice.connect()
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "r3")
    assert bob_heard == ["r1", "r2", "r3"]


@pytest_twisted.inlineCallbacks
def test_attempt_limit_ends_disconnected_with_the_last_reason(start_gateway, mint, clients):
    running = yield start_gateway(test_config(**{"shutdown.grace_seconds": 0,
                                                 "shutdown.reconnect_spread_ms": 0}))
    ended = []
    client = clients(running.url, mint("alice"), on_closed=ended.append,
                     reconnect=ReconnectPolicy(base=0.02, cap=0.1, max_attempts=3))
    states = []
    client.on_state(lambda _old, new: states.append(new))
    yield client.connect()
    states.clear()
    closed = client.when_closed()
    yield running.service.stopService()
    reason = yield closed
    assert reason.attempts == 3
    assert "refused" in (reason.reason or "").lower()
    assert states.count(State.CONNECTING) == 3
    assert states[0] is State.RECONNECTING and states[-1] is State.DISCONNECTED
    assert client.state is State.DISCONNECTED
    assert [e.attempts for e in ended] == [3]
    assert leftover_calls(client) == []


# --------------------------------------------------------------------------- drain


@pytest_twisted.inlineCallbacks
def test_drain_moves_to_the_other_gateway_with_a_resync(start_gateway, mint, clients):
    config = test_config(**FAST_CHAT, **{"shutdown.reconnect_spread_ms": 200})
    one = yield start_gateway(config)
    two = yield start_gateway(config)  # its own in-memory backend: no session to resume
    resyncs = []
    alice = clients([one.url, two.url], mint("alice"), on_resync=resyncs.append)
    bob = clients(two.url, mint("bob"))
    bob_heard = []
    bob.on("social.chat.message", texts(bob_heard, sender="alice"))
    first = yield alice.connect()
    yield bob.connect()
    assert first.instance_id == one.gateway.instance_id

    lose_in_flight(alice, "lost")
    notice = alice.wait_for("server.draining")
    away = reached(alice, State.RECONNECTING)
    welcomed = alice.wait_for("system.welcome", timeout=10)
    one.gateway.drain(grace=0.5)
    assert (yield notice).message.retry_after_ms == 200
    yield away
    for n in range(3):
        assert say(alice, f"moved-{n}")
    welcome = (yield welcomed).message
    assert welcome.instance_id == two.gateway.instance_id
    assert not welcome.resumed and welcome.full_resync
    assert resyncs == [welcome]
    assert alice.url == two.url and alice.state is State.AUTHENTICATED
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "moved-2")
    # A new session: the unacknowledged event went again, renumbered, before the queue.
    assert bob_heard == ["lost", "moved-0", "moved-1", "moved-2"]


@pytest_twisted.inlineCallbacks
def test_request_while_offline_waits_for_the_connection(start_gateway, mint, clients):
    running = yield start_gateway(test_config(**FAST_CHAT))
    client = clients(running.url, mint("alice"))
    yield client.connect()
    away = reached(client, State.RECONNECTING)
    client.abort(reconnect=True)
    yield away
    reply = client.request("social.chat.send",
                           game_pb2.ChatSend(channel="global", text="hello?", to_player="nobody"),
                           timeout=5)
    assert client.session.offline  # waiting, its timeout running
    with pytest.raises(Exception) as info:
        yield reply
    assert "not online" in str(info.value)  # the server answered: it was sent after all


@pytest_twisted.inlineCallbacks
def test_close_while_reconnecting_stops_everything(start_gateway, mint, clients):
    running = yield start_gateway()
    client = clients(running.url, mint("alice"), reconnect=ReconnectPolicy(base=5, cap=5),
                     rng=FixedRng(1.0))
    yield client.connect()
    away = reached(client, State.RECONNECTING)
    client.abort(reconnect=True)
    yield away
    closed = yield client.close()
    assert isinstance(closed, ClientClosed)
    assert client.state is State.DISCONNECTED
    assert leftover_calls(client) == []


def _reactor():
    from twisted.internet import reactor

    return reactor
