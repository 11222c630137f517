"""Several gateway instances on one real redis-server: the cluster end to end.

The scenarios of test_e2e_cluster_memory.py, and the ones only a real Redis
can show: an instance that dies without a word, Redis itself restarting
under traffic, and what is left in Redis afterwards.  Every instance is a
full GatewayService with ``backend.type = "redis"`` and the same key prefix;
the players are the Python SDK over real sockets.  The redis-server is the
suite's own, on a free port (conftest ``redis_server``), never 6379.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from conftest import test_config as make_config
from twisted.internet import defer, task
from wsclient import http, metric, wait_until

from gateway.client import GatewayClient, ReconnectPolicy, registry_for
from gateway.states import State
from plugins.chat import ChatPlugin
from protocol import game_pb2, internal_pb2

pytestmark = pytest.mark.redis

PREFIX = "rtgw:"
CHANNEL = "chat:global"
SESSION_TIMEOUT = 120.0
CLUSTER = {
    "backend.type": "redis",
    "backend.command_timeout": 0.5,
    "backend.bus_heartbeat_seconds": 0.2,
    "session.timeout_seconds": SESSION_TIMEOUT,
    "plugin.chat.burst": 200,
    "plugin.chat.messages_per_second": 200,
    "shutdown.reconnect_spread_ms": 200,
}
#: Reconnect quickly in tests (the SDK default starts at 0.1 s and caps at 10 s).
QUICK = ReconnectPolicy(base=0.05, cap=0.3)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def cluster(start_gateway: Callable[..., Any], redis_url: str
            ) -> Callable[..., defer.Deferred[list[Any]]]:
    """cluster(n, **overrides) -> Deferred[[instance gw-a, gw-b, ...]], all ready."""

    @defer.inlineCallbacks
    def _start(n: int = 2, **overrides: Any) -> Any:
        nodes = []
        for name in ("gw-a", "gw-b", "gw-c")[:n]:
            config = make_config(**{**CLUSTER, "backend.redis_url": redis_url,
                                    "server.instance_id": name, **overrides})
            nodes.append((yield start_gateway(config)))
        yield wait_until(lambda: all(_connected(node) for node in nodes), timeout=10,
                         what="every instance connected to Redis")
        return nodes

    return _start


@pytest.fixture
def players(cluster: Any) -> Iterator[Callable[..., GatewayClient]]:
    """players(urls, token, reconnect=None) -> a chat client, closed before the instances stop."""
    made: list[GatewayClient] = []

    def _make(urls: str | list[str], token: str, *, reconnect: ReconnectPolicy | None = None
              ) -> GatewayClient:
        client = GatewayClient(urls, token, reactor=_reactor(),
                               registry=registry_for(ChatPlugin()), reconnect=reconnect)
        made.append(client)
        return client

    yield _make
    for client in made:
        if client.state is not State.DISCONNECTED:
            pytest_twisted.blockon(client.close())


# --------------------------------------------------------------------------- helpers


def _connected(node: Any) -> bool:
    backend = node.service.backend
    return bool(backend.ready and backend.bus_connected)


def say(client: GatewayClient, text: str) -> None:
    client.send("social.chat.send", game_pb2.ChatSend(channel="global", text=text))


def listen(client: GatewayClient) -> list[str]:
    heard: list[str] = []
    client.on("social.chat.message", lambda i: heard.append(i.message.text))
    return heard


def hears(heard: list[str], text: str, timeout: float = 10.0) -> defer.Deferred[Any]:
    """Wait until ``text`` is among the lines ``listen`` collected (heard already, or later)."""
    return wait_until(lambda: text in heard, timeout=timeout, what=f"{text!r} heard")


def numsub(server: Any, channel: str) -> int:
    """How many connections (one per instance) subscribe to a bus channel."""
    reply = server.command("PUBSUB", "NUMSUB", PREFIX + "t:" + channel)
    return int(reply[1])


def subscribed(server: Any, n: int) -> defer.Deferred[Any]:
    """Subscribe first: wait until ``n`` instances listen to the chat channel."""
    return wait_until(lambda: numsub(server, CHANNEL) == n, timeout=5,
                      what=f"{n} instances subscribed to {CHANNEL}")


def all_keys(server: Any) -> list[bytes]:
    cursor, found = b"0", set()
    while True:
        cursor, keys = server.command("SCAN", cursor, "COUNT", 1000)
        found.update(keys)
        if cursor == b"0":
            return sorted(found)


def unowned(server: Any) -> list[tuple[bytes, int]]:
    """Keys that would live for ever (or outside the deployment's prefix)."""
    out = []
    for key in all_keys(server):
        pttl = server.command("PTTL", key)
        if not key.startswith(PREFIX.encode()) or pttl <= 0:
            out.append((key, pttl))
    return out


def kinds(server: Any) -> set[str]:
    """The key families present: "s", "s:q", "tok", "tokused", "tl", "tl:n", plugins' ..."""
    out = set()
    for key in all_keys(server):
        name = key.decode()[len(PREFIX):]
        head = name.split(":", 1)[0]
        if head == "s" and name.endswith(":q"):
            head = "s:q"
        elif head == "tl" and name.endswith(":n"):
            head = "tl:n"
        out.add(head)
    return out


@defer.inlineCallbacks
def readyz(node: Any, ready: bool, timeout: float = 10.0) -> Any:
    """Poll /readyz until it says ``ready`` (200) or not (503)."""
    deadline = time.monotonic() + timeout
    while True:
        response = yield http(f"{node.admin_url}/readyz")
        if (response.status == 200) is ready:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz of {node.gateway.instance_id} stayed "
                                 f"{response.status}: {response.body!r}")
        yield task.deferLater(_reactor(), 0.05, lambda: None)


@defer.inlineCallbacks
def stored_record(node: Any, session_id: str) -> Any:
    raw = yield node.service.backend.get(f"s:{session_id}")
    return None if raw is None else internal_pb2.SessionRecord.FromString(raw)


@defer.inlineCallbacks
def suspended(node: Any, session_id: str) -> Any:
    """Wait until the stored session is owned by nobody (its connection's end was written)."""
    deadline = time.monotonic() + 5
    while True:
        record = yield stored_record(node, session_id)
        if record is not None and not record.instance_id:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"session {session_id} not suspended: {record}")
        yield task.deferLater(_reactor(), 0.02, lambda: None)


@defer.inlineCallbacks
def crash(node: Any) -> Any:
    """The instance dies: no drain, no goodbye, nothing more sent or written.

    In one reactor turn, as a killed process: every player's TCP connection
    is reset (nothing queued is sent any more), its Redis connections are
    closed (so the end of those connections is never written: the sessions
    still name the dead instance as their owner) and its listener goes.
    The service object itself is stopped by the fixture after the test.
    """
    node.gateway.listening = False
    for transport in node.gateway.hub.transports():
        transport.abort()
    stopped = [node.service.backend.stop(), defer.maybeDeferred(node.service.ws.stopService)]
    yield defer.gatherResults(stopped)
    yield wait_until(lambda: len(node.gateway.hub) == 0, what="every connection reset")


class Publisher:
    """Says m0, m1, ... (``prefix``) every ``interval`` s until ``count`` lines were sent."""

    def __init__(self, client: GatewayClient, count: int, interval: float = 0.01,
                 prefix: str = "m") -> None:
        self.client = client
        self.count = count
        self.prefix = prefix
        self.sent = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = _reactor()
        self.done = self._loop.start(interval)

    def _tick(self) -> None:
        say(self.client, f"{self.prefix}{self.sent}")
        self.sent += 1
        if self.sent == self.count:
            self._loop.stop()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()


def lines(count: int, start: int = 0) -> list[str]:
    return [f"m{n}" for n in range(start, count)]


# --------------------------------------------------------------------------- scenarios


@pytest_twisted.inlineCallbacks
def test_event_published_on_one_instance_reaches_players_on_the_others(
        cluster, players, mint, redis_server):
    a, b, c = yield cluster(3)
    alice, bob, carol = players(a.url, mint("alice")), players(b.url, mint("bob")), \
        players(c.url, mint("carol"))
    for client in (alice, bob, carol):
        yield client.connect()
    yield subscribed(redis_server, 3)
    heard = {name: listen(client) for name, client in
             (("alice", alice), ("bob", bob), ("carol", carol))}
    # Both ends disable Nagle: a frame written right after another (a welcome, then
    # what a resume caught up) must not wait for the peer's delayed ACK (40 ms).
    [server_side] = list(a.gateway.hub.transports())
    for transport in (server_side.transport, alice._proto.transport):
        assert transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for n in range(20):
        say(bob, f"m{n}")
    for name in heard:
        yield hears(heard[name], "m19")
    # Once each, in order: bob's own instance delivered his lines locally and
    # dropped their echo from the bus.
    assert heard == {"alice": lines(20), "bob": lines(20), "carol": lines(20)}
    assert (yield metric(b.admin_url, "rtgateway_bus_received_total")) == 0.0
    for node in (a, c):
        assert (yield metric(node.admin_url, "rtgateway_bus_received_total")) == 20.0
        assert (yield metric(node.admin_url, "rtgateway_bus_gaps_total")) == 0.0
    # The lines were logged once, by the instance that accepted them.
    assert redis_server.command("LLEN", PREFIX + "tl:" + CHANNEL) == 20
    for client in (alice, bob, carol):
        yield client.close()
    assert unowned(redis_server) == []


@pytest_twisted.inlineCallbacks
def test_speakers_on_different_instances_lose_nothing(cluster, players, mint, redis_server):
    # Lines logged by A and B interleave in the topic log, but reach each
    # listener in bus order: a lower topic_seq often arrives after a higher
    # one, and must not be taken for a duplicate.
    a, b = yield cluster(2)
    alice, bob = players(a.url, mint("alice")), players(b.url, mint("bob"))
    carol = players(b.url, mint("carol"))
    heard = {"alice": listen(alice), "bob": listen(bob), "carol": listen(carol)}
    for client in (alice, bob, carol):
        yield client.connect()
    yield subscribed(redis_server, 2)
    by_alice, by_bob = Publisher(alice, 100, prefix="a"), Publisher(bob, 100, prefix="b")
    yield by_alice.done
    yield by_bob.done
    for name, lines_heard in heard.items():
        yield wait_until(lambda h=lines_heard: len(h) >= 200, what=f"{name} heard 200 lines")
        assert [t for t in lines_heard if t.startswith("a")] == [f"a{n}" for n in range(100)]
        assert [t for t in lines_heard if t.startswith("b")] == [f"b{n}" for n in range(100)]
        assert len(lines_heard) == 200
    for client in (alice, bob, carol):
        yield client.close()
    assert unowned(redis_server) == []


@pytest_twisted.inlineCallbacks
def test_players_of_a_crashed_instance_resume_on_another_exactly_once(
        cluster, players, mint, redis_server):
    a, b = yield cluster(2)
    # The SDK's own failover: a pool of both instances, automatic reconnection.
    alice = players([a.url, b.url], mint("alice"), reconnect=QUICK)
    dave = players([a.url, b.url], mint("dave"), reconnect=QUICK)
    bob = players(b.url, mint("bob"))
    first = {}
    for name, client in (("alice", alice), ("dave", dave)):
        first[name] = yield client.connect()
        assert first[name].instance_id == "gw-a"
    yield bob.connect()
    yield subscribed(redis_server, 2)
    heard = {"alice": listen(alice), "dave": listen(dave), "bob": listen(bob)}
    moved = {name: client.wait_for("system.welcome", timeout=15)
             for name, client in (("alice", alice), ("dave", dave))}

    publisher = Publisher(bob, 120)  # B keeps publishing through A's death
    yield hears(heard["alice"], "m30")
    yield crash(a)
    yield publisher.done
    yield hears(heard["bob"], "m119")
    for name in ("alice", "dave"):
        welcome = (yield moved[name]).message
        assert welcome.resumed and not welcome.full_resync, welcome
        assert welcome.session_id == first[name].session_id
        assert welcome.instance_id == "gw-b"
        yield wait_until(lambda h=heard[name]: len(h) >= 120, timeout=10,
                         what=f"{name} caught up")
    say(bob, "after")
    yield hears(heard["alice"], "after")
    yield hears(heard["dave"], "after")
    # Every reliable line exactly once, in order: replayed, caught up from the
    # topic log, then live.
    assert heard["alice"] == [*lines(120), "after"]
    assert heard["dave"] == [*lines(120), "after"]
    assert alice.reconnects == dave.reconnects == 1
    for client in (alice, dave, bob):
        yield client.close()
    assert unowned(redis_server) == []


@pytest_twisted.inlineCallbacks
def test_redis_restart_under_traffic_recovers_without_restarting_gateways(
        cluster, players, mint, redis_server):
    a, b = yield cluster(2)
    alice, carol = players(a.url, mint("alice")), players(a.url, mint("carol"))
    bob = players(b.url, mint("bob"))
    for client in (alice, carol, bob):
        yield client.connect()
    yield subscribed(redis_server, 2)
    at_alice, at_bob = listen(alice), listen(bob)
    publisher = Publisher(bob, 10_000, interval=0.02)  # B talks through the whole outage
    yield hears(at_alice, "m10")

    redis_server.stop()
    for node in (a, b):
        body = yield readyz(node, False)
        assert body["checks"] == {"listening": True, "backend": False, "not_draining": True}
    # Local traffic keeps flowing: two players on the same instance still talk.
    assert alice.online and carol.online
    for n in range(5):
        carol.send("social.chat.send", game_pb2.ChatSend(channel="global", text=f"local{n}"))
    yield hears(at_alice, "local4")

    redis_server.start()  # same port, empty: what pub/sub and the logs held is gone
    for node in (a, b):
        yield readyz(node, True)
    yield wait_until(lambda: _connected(a) and _connected(b), timeout=10,
                     what="both buses re-subscribed")
    yield subscribed(redis_server, 2)
    assert (yield metric(a.admin_url, "rtgateway_bus_resyncs_total")) >= 1.0
    # Cross-instance traffic is back by itself, in both directions.
    mark = publisher.sent
    yield hears(at_alice, f"m{mark + 5}")
    publisher.stop()
    carol.send("social.chat.send", game_pb2.ChatSend(channel="global", text="back"))
    yield hears(at_bob, "back")
    assert alice.online and carol.online and bob.online  # nobody was disconnected
    # What alice got from bob: no line twice, none out of order, none missing
    # outside the outage.
    from_bob = [int(t[1:]) for t in at_alice if t.startswith("m")]
    assert from_bob == sorted(set(from_bob))
    assert from_bob[:11] == list(range(11))
    tail = from_bob[from_bob.index(mark):]
    assert tail == list(range(mark, tail[-1] + 1))
    assert at_bob[-1] == "back"
    for client in (alice, carol, bob):
        yield client.close()
    assert unowned(redis_server) == []


@pytest_twisted.inlineCallbacks
def test_an_old_reconnection_token_is_refused_on_every_instance(
        cluster, players, mint, redis_server):
    a, b = yield cluster(2)
    alice = players(a.url, mint("alice"))
    first = yield alice.connect()
    old_token = alice.resume_token
    alice.abort()  # the network drops: the session waits for a resume
    yield alice.when_closed()
    yield suspended(a, first.session_id)

    alice.url = b.url
    resumed = yield alice.connect()
    assert resumed.resumed and resumed.session_id == first.session_id
    assert resumed.reconnect_token != old_token  # rotated on use

    # The old token, replayed against the instance that issued it: refused (the
    # tombstone is shared through Redis), and the real owner keeps its session.
    for node in (a, b):
        thief = players(node.url, mint("alice"))
        thief.resume_token = old_token
        stolen = yield thief.connect()
        assert not stolen.resumed and stolen.full_resync
        assert stolen.session_id != first.session_id
        yield thief.close()
        refused = yield metric(node.admin_url, "rtgateway_refused_reconnect_tokens_total",
                               reason="reused")
        assert refused == 1.0
    assert alice.online and alice.welcome.session_id == first.session_id
    used = [k for k in all_keys(redis_server) if k.startswith(PREFIX.encode() + b"tokused:")]
    assert len(used) == 1 and 0 < redis_server.command("PTTL", used[0])
    yield alice.close()
    assert unowned(redis_server) == []


@pytest_twisted.inlineCallbacks
def test_drain_moves_every_session_to_another_instance_with_nothing_lost(
        cluster, players, mint, redis_server):
    a, b = yield cluster(2, **{"shutdown.grace_seconds": 1.0})
    names = ("alice", "dave", "erin")
    movers = {name: players([a.url, b.url], mint(name), reconnect=QUICK) for name in names}
    bob = players(b.url, mint("bob"))
    first = {}
    for name, client in movers.items():
        first[name] = yield client.connect()
    yield bob.connect()
    yield subscribed(redis_server, 2)
    heard = {name: listen(client) for name, client in movers.items()}
    moved = {name: client.wait_for("system.welcome", timeout=15)
             for name, client in movers.items()}

    publisher = Publisher(bob, 80)
    yield hears(heard["alice"], "m10")
    response = yield http(f"{a.admin_url}/admin/drain", method="POST")
    assert response.status == 202 and response.json()["connections"] == 3
    body = yield readyz(a, False)
    assert body["checks"]["not_draining"] is False
    for name in names:
        welcome = (yield moved[name]).message
        assert welcome.resumed and not welcome.full_resync
        assert welcome.session_id == first[name].session_id
        assert welcome.instance_id == "gw-b"
    yield wait_until(lambda: len(a.gateway.hub) == 0, what="A empty")
    yield publisher.done
    say(bob, "after")
    for name in names:
        yield hears(heard[name], "after")
    for name in names:
        assert heard[name] == [*lines(80), "after"], name
    assert len(b.gateway.hub) == 4
    for client in (*movers.values(), bob):
        yield client.close()
    assert unowned(redis_server) == []


@pytest_twisted.inlineCallbacks
def test_every_key_has_a_ttl_or_an_owner_that_removes_it(cluster, players, mint, redis_server):
    a, b = yield cluster(2)
    alice, bob = players(a.url, mint("alice")), players(b.url, mint("bob"))
    heard = listen(alice)
    first = yield alice.connect()
    yield bob.connect()
    yield subscribed(redis_server, 2)
    for n in range(10):
        say(bob, f"m{n}")
    yield hears(heard, "m9")

    # While a session is suspended: its record, replay queue and token all expire
    # on their own (session.timeout_seconds) if nobody ever resumes it.
    alice.abort()
    yield alice.when_closed()
    yield suspended(a, first.session_id)
    assert unowned(redis_server) == []
    assert {"s", "tok", "tl", "tl:n"} <= kinds(redis_server)
    for key in all_keys(redis_server):
        if key.startswith(PREFIX.encode() + b"s:") or key.startswith(PREFIX.encode() + b"tok:"):
            assert redis_server.command("PTTL", key) <= SESSION_TIMEOUT * 1000

    # Resumed on the other instance, then everyone says goodbye (close 1000):
    # the sessions' keys are deleted by their owner; what remains (topic logs,
    # used-token tombstones) expires by itself.
    alice.url = b.url
    yield alice.connect()
    yield alice.close()
    yield bob.close()
    yield wait_until(lambda: not kinds(redis_server) & {"s", "s:q", "tok"}, timeout=5,
                     what="session keys removed")
    # Plugins keep their own keys (presence: last seen, history...); they expire too.
    assert {"tl", "tl:n", "tokused"} <= kinds(redis_server)
    assert unowned(redis_server) == []
