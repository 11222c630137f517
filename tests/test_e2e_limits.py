"""Admission limits, and a slow consumer that must not grow server memory."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import task
from wsclient import (  # noqa: F401 - close_clients is an autouse fixture
    RawSocket,
    WsClient,
    assert_healthy,
    close_clients,
    metric,
    sdk_client,
    upgrade_status,
    wait_until,
)

from gateway.codes import CloseCode
from gateway.events import Delivery, Direction, EventRegistry, Priority, spec
from gateway.states import State
from protocol import events_pb2
from tests.conftest import test_config as make_config


@pytest_twisted.inlineCallbacks
def test_max_connections_is_503(start_gateway, mint):
    running = yield start_gateway(make_config(**{"limits.max_connections": 2}))
    first = yield WsClient.connect(running.url, mint("a"))
    second = yield WsClient.connect(running.url, mint("b"))
    assert (yield upgrade_status(running.url, mint("c"))) == 503
    assert (yield metric(running.admin_url, "rtgateway_handshakes_total", outcome="503")) == 1.0
    yield first.close()
    yield wait_until(lambda: len(running.gateway.hub) == 1, what="the slot freed")
    assert (yield upgrade_status(running.url, mint("c"))) == 101
    yield second.close()


@pytest_twisted.inlineCallbacks
def test_max_connections_per_ip_is_429(start_gateway, mint):
    running = yield start_gateway(make_config(**{"limits.max_connections_per_ip": 1}))
    first = yield WsClient.connect(running.url, mint("a"))
    yield first.handshake()
    assert (yield upgrade_status(running.url, mint("b"))) == 429
    assert (yield metric(running.admin_url, "rtgateway_handshakes_total", outcome="429")) == 1.0
    yield first.close()
    yield wait_until(lambda: len(running.gateway.hub) == 0, what="the connection gone")
    assert (yield upgrade_status(running.url, mint("b"))) == 101


@pytest.mark.parametrize(
    ("origin", "status"),
    [("https://evil.example", 403), ("https://game.example", 101), (None, 101),
     ("https://game.example.evil.example", 403),
     ("null", 400)],  # refused by Autobahn itself (allowNullOrigin is off), before our list
)
@pytest_twisted.inlineCallbacks
def test_allowed_origins(start_gateway, mint, origin, status):
    config = make_config(**{"server.allowed_origins": ["https://game.example"]})
    running = yield start_gateway(config)
    assert (yield upgrade_status(running.url, mint("a"), origin=origin)) == status


# --------------------------------------------------------------------------- slow consumer

SOFT, HARD = 16384, 65536
BLOB = spec("test.blob", events_pb2.Error, direction=Direction.SERVER_TO_CLIENT,
            delivery=Delivery.RELIABLE, priority=Priority.NORMAL)
STATE = spec("test.state", events_pb2.Error, direction=Direction.SERVER_TO_CLIENT,
             delivery=Delivery.UNRELIABLE, priority=Priority.NORMAL)
PAYLOAD = events_pb2.Error(message="x" * 1000)


def slow_config():
    return make_config(**{
        "limits.outbound_soft_bytes": SOFT,
        "limits.outbound_hard_bytes": HARD,
        "limits.stalled_seconds": 2,
    })


def register_blobs(service):
    service.gateway.registry.register(BLOB, STATE)


def event_size(running, type_):
    return running.gateway.registry.encode(type_, PAYLOAD, 1).size


@pytest_twisted.inlineCallbacks
def push_until_gone(running, conn, type_, per_call=2, timeout=8.0):
    """Send to "slow" from the reactor (~400 KB/s, under the soft limit per tick) until gone.

    The queue is sampled after every event: the most it ever held is the
    server memory this reader cost.
    """
    from twisted.internet import reactor

    gateway = running.gateway
    samples = {"max_queued": 0, "degraded": False, "paused": False, "sent": 0}

    def push():
        if conn.state is State.DISCONNECTED or reactor.seconds() > deadline:
            loop.stop()
            return
        for _ in range(per_call):
            gateway.send_to_player("slow", type_, PAYLOAD)
            samples["sent"] += 1
            samples["max_queued"] = max(samples["max_queued"], conn.queued_bytes)
            samples["degraded"] = samples["degraded"] or conn.degraded
            samples["paused"] = samples["paused"] or conn.paused_since is not None

    deadline = reactor.seconds() + timeout
    loop = task.LoopingCall(push)
    yield loop.start(0.005)
    return samples


@pytest.mark.parametrize(
    ("type_", "dropped_reason"),
    [
        ("test.blob", "slow_consumer"),  # reliable: the queue hits outbound_hard_bytes
        ("test.state", "stalled"),  # unreliable: shed while degraded, then stalled_seconds
    ],
)
@pytest_twisted.inlineCallbacks
def test_slow_consumer_is_bounded_then_disconnected(start_gateway, mint, type_, dropped_reason):
    running = yield start_gateway(slow_config(), setup=register_blobs)
    healthy = sdk_client(running.url, mint("healthy"))
    yield healthy.connect()
    raw = yield RawSocket.open(running.url, mint("slow"), rcvbuf=4096)
    [conn] = yield wait_until(
        lambda: [c for c in running.gateway.hub.connections()
                 if c.player_id == "slow" and c.authenticated],
        what="the slow reader authenticated",
    )
    # Small kernel buffers on the server side too, so TCP back-pressure reaches
    # the gateway after kilobytes instead of the megabytes loopback autotuning allows.
    running.gateway.hub.get(conn.id).transport.getHandle().setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    samples = yield push_until_gone(running, conn, type_)
    assert conn.state is State.DISCONNECTED, samples
    assert samples["paused"] and samples["degraded"], samples
    # Bounded: the queue stops at the hard limit (plus the one event that crossed it).
    assert samples["max_queued"] <= HARD + event_size(running, type_), samples
    assert conn not in running.gateway.hub.connections()
    assert (yield metric(running.admin_url, "rtgateway_closes_total", code="4009")) == 1.0
    dropped = yield metric(running.admin_url, "rtgateway_dropped_events_total",
                           reason=dropped_reason)
    assert dropped >= 1.0
    yield assert_healthy(healthy)
    raw.close()
    yield healthy.close()


@pytest_twisted.inlineCallbacks
def test_burst_over_hard_limit_closes_4009_and_keeps_nothing_more(start_gateway, mint):
    """More than outbound_hard_bytes queued in one reactor turn: 4009, and the closing
    connection is given nothing more while its close handshake runs."""
    running = yield start_gateway(slow_config(), setup=register_blobs)
    client = sdk_client(running.url, mint("slow"))
    bystander = sdk_client(running.url, mint("healthy"))
    yield client.connect()
    yield bystander.connect()
    [conn] = [c for c in running.gateway.hub.connections() if c.player_id == "slow"]
    for _ in range(4 * HARD // 1000):
        running.gateway.send_to_player("slow", "test.blob", PAYLOAD)
    assert conn.queued_bytes <= HARD + event_size(running, "test.blob")
    closed = yield client.when_closed()
    assert closed.code == CloseCode.SLOW_CONSUMER
    yield assert_healthy(bystander)
    yield bystander.close()


@pytest_twisted.inlineCallbacks
def test_burst_over_max_message_size_is_split_into_frames(start_gateway, mint):
    """A healthy reader sent more in one tick than one WebSocket message may carry
    (limits.max_message_size) receives every event, over several frames."""
    running = yield start_gateway(make_config(**{"limits.max_message_size": 16384}),
                                  setup=register_blobs)
    registry = EventRegistry()
    registry.register(BLOB)
    # No compression: 'x' * 1000 would shrink far under any limit.
    client = sdk_client(running.url, mint("reader"), registry=registry, compression=())
    yield client.connect()
    got = []
    count = 40  # ~40 KB: over 16 KiB, far under outbound_hard_bytes
    client.on("test.blob", got.append)
    done = client.wait_for("test.blob", predicate=lambda _: len(got) == count, timeout=5)
    [conn] = running.gateway.hub.connections()
    frames_before = conn.stats.messages_out
    for _ in range(count):
        running.gateway.send_to_player("reader", "test.blob", PAYLOAD)
    yield done
    assert len(got) == count
    assert conn.stats.messages_out - frames_before >= 3  # 40 KB in frames of at most 16 KiB
    assert client.state is State.AUTHENTICATED
    yield client.close()
