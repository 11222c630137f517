"""Bad input from one client never hurts another; handler failures stay isolated.

Every bad-input case runs with a healthy SDK client connected to the same
gateway; after the offender is dealt with (closed, or answered with
system.error), the healthy client still gets a pong and the daemon still
admits newcomers.  The offender is the independent ``websockets`` client
sending frames built by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from websockets.exceptions import ConnectionClosed
from wsclient import (  # noqa: F401 - close_clients is an autouse fixture
    RawSocket,
    WsClient,
    assert_healthy,
    close_clients,
    envelope,
    frame,
    hello_frame,
    http,
    metric,
    parse,
    sdk_client,
    upgrade_status,
    wait_until,
)

from gateway.client.client import ServerError
from gateway.codes import CloseCode, ErrorCode
from gateway.events import Direction, EventRegistry, spec
from protocol import events_pb2
from tests.conftest import test_config as make_config

PING = events_pb2.Ping(nonce=1, sent_ns=2)


@dataclass
class Case:
    run: Callable[[Any, Any], Any]  # (running, offender WsClient) -> Deferred
    config: dict[str, Any] = field(default_factory=dict)
    hello: bool = True  # complete system.hello before misbehaving


@defer.inlineCallbacks
def closes_with(running, client, data, code, *, kind=None, disconnect=True):
    """Send ``data`` (one message, or a list of messages); the offender is closed with ``code``."""
    for message in data if isinstance(data, list) else [data]:
        try:
            yield client.send(message)
        except ConnectionClosed:
            break  # closed by an earlier message of the list: that is the point
    closed = yield client.closed()
    assert closed.code == code
    if disconnect:
        [env] = closed.of_type("system.disconnect")
        assert parse(env, events_pb2.Disconnect).code == code
    else:
        assert closed.of_type("system.disconnect") == []
    assert (yield metric(running.admin_url, "rtgateway_closes_total", code=str(code))) == 1.0
    if kind is not None:
        assert (yield metric(running.admin_url, "rtgateway_bad_input_total", kind=kind)) == 1.0


@defer.inlineCallbacks
def answered_with(running, client, env, code):
    """Send one event; it is answered with system.error ``code`` and the connection stays."""
    yield client.send(frame(env))
    error_env = yield client.expect("system.error")
    error = parse(error_env, events_pb2.Error)
    assert error.code == code
    assert error.event_type == env.type[:64]
    assert error.correlation_id == env.correlation_id
    assert error_env.correlation_id == env.correlation_id
    assert error_env.seq >= 1  # system.error is reliable
    # Still open and served: a ping from the offender itself is answered.
    yield client.send(frame(envelope("system.ping", events_pb2.Ping(nonce=99))))
    pong = yield client.expect("system.pong")
    assert parse(pong, events_pb2.Pong).nonce == 99
    assert len(running.gateway.hub) == 2
    return error


@defer.inlineCallbacks
def refused_upgrade(running, status, **kw):
    assert (yield upgrade_status(running.url, "unused", **kw)) == status


CASES = {
    "garbage": Case(lambda r, c: closes_with(r, c, b"\xff\x00garbage\x13\x37", CloseCode.BAD_FRAME,
                                             kind="bad_frame")),
    "garbage_before_hello": Case(
        lambda r, c: closes_with(r, c, b"\xffnot protobuf", CloseCode.BAD_FRAME, disconnect=False),
        hello=False,
    ),
    "truncated_frame": Case(
        lambda r, c: closes_with(r, c, frame(envelope("system.ping", PING), envelope(
            "system.ping", PING))[:-3], CloseCode.BAD_FRAME, kind="bad_frame"),
    ),
    "truncated_hello": Case(
        lambda r, c: closes_with(r, c, hello_frame()[:-2], CloseCode.BAD_FRAME, disconnect=False),
        hello=False,
    ),
    "oversized": Case(
        # Refused by Autobahn before our code sees it: a close frame 1009, no system.disconnect.
        lambda r, c: closes_with(r, c, frame(envelope("system.ping", payload=b"x" * 4096)),
                                 CloseCode.TOO_BIG, disconnect=False),
        config={"limits.max_message_size": 2048},
    ),
    "text_message": Case(
        lambda r, c: closes_with(r, c, "hello, I am text", CloseCode.UNSUPPORTED_DATA,
                                 kind="text_message"),
    ),
    "event_before_hello": Case(
        lambda r, c: closes_with(r, c, frame(envelope("system.ping", PING)),
                                 CloseCode.NOT_AUTHENTICATED, kind="not_authenticated",
                                 disconnect=False),
        hello=False,
    ),
    "too_many_events": Case(
        lambda r, c: closes_with(r, c, frame(*[envelope("system.ping", PING)] * 9),
                                 CloseCode.FRAME_LIMIT, kind="frame_limit"),
        config={"limits.max_events_per_frame": 8},
    ),
    "rate_limit": Case(
        # Two frames: the first (5 events) spends the burst, the second is over it.
        lambda r, c: closes_with(r, c, [frame(*[envelope("system.ping", PING)] * 5),
                                        frame(envelope("system.ping", PING))],
                                 CloseCode.RATE_LIMITED, kind="rate_limited"),
        config={"limits.messages_per_second": 1.0, "limits.messages_burst": 5,
                "limits.max_events_per_frame": 5},
    ),
    "unknown_type": Case(
        lambda r, c: answered_with(r, c, envelope("no.such_type", PING, correlation_id=5),
                                   ErrorCode.UNKNOWN_TYPE),
    ),
    "unknown_version": Case(
        lambda r, c: answered_with(r, c, envelope("system.ping", PING, version=7),
                                   ErrorCode.UNKNOWN_VERSION),
    ),
    "bad_payload": Case(
        lambda r, c: answered_with(r, c, envelope("system.ping", payload=b"\x08\xff",
                                                  correlation_id=8),
                                   ErrorCode.BAD_PAYLOAD),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest_twisted.inlineCallbacks
def test_bad_input_hurts_nobody_else(start_gateway, mint, name):
    case = CASES[name]
    running = yield start_gateway(make_config(**case.config))
    healthy = sdk_client(running.url, mint("healthy"))
    yield healthy.connect()
    offender = yield WsClient.connect(running.url, mint("offender"))
    if case.hello:
        yield offender.handshake()
    yield case.run(running, offender)
    yield assert_healthy(healthy)
    yield daemon_alive(running, mint)
    yield healthy.close()


@defer.inlineCallbacks
def daemon_alive(running, mint):
    assert (yield http(f"{running.admin_url}/healthz")).status == 200
    newcomer = yield WsClient.connect(running.url, mint("newcomer"))
    welcome = yield newcomer.handshake()
    assert welcome.player_id == "newcomer"
    yield newcomer.close()


@pytest_twisted.inlineCallbacks
def test_server_to_client_type_is_injection(start_gateway, mint):
    running = yield start_gateway()
    healthy = sdk_client(running.url, mint("healthy"))
    yield healthy.connect()
    offender = yield WsClient.connect(running.url, mint("offender"))
    yield offender.handshake()
    forged = events_pb2.Welcome(player_id="healthy")
    for type_ in ("system.welcome", "server.draining"):
        yield answered_with(running, offender, envelope(type_, forged, correlation_id=3),
                            ErrorCode.FORBIDDEN_DIRECTION)
    injections = yield metric(running.admin_url, "rtgateway_injection_attempts_total")
    assert injections == 2.0
    yield assert_healthy(healthy)
    yield daemon_alive(running, mint)
    [conn] = [c for c in running.gateway.hub.connections() if c.player_id == "offender"]
    assert conn.authenticated
    yield offender.close()
    yield healthy.close()


@pytest.mark.parametrize("subprotocols", [("other.v1",), None])
@pytest_twisted.inlineCallbacks
def test_wrong_subprotocol_is_400(start_gateway, mint, subprotocols):
    running = yield start_gateway()
    healthy = sdk_client(running.url, mint("healthy"))
    yield healthy.connect()
    status = yield upgrade_status(running.url, mint("offender"), subprotocols=subprotocols)
    assert status == 400
    assert (yield metric(running.admin_url, "rtgateway_handshakes_total", outcome="400")) == 1.0
    yield assert_healthy(healthy)
    yield daemon_alive(running, mint)


# --------------------------------------------------------------------------- handlers

ECHO = spec("test.echo", events_pb2.Ping, direction=Direction.BOTH)
BOOM = spec("test.boom", events_pb2.Ping, direction=Direction.CLIENT_TO_SERVER)
ASYNC_BOOM = spec("test.async_boom", events_pb2.Ping, direction=Direction.CLIENT_TO_SERVER)


def client_registry():
    registry = EventRegistry()
    registry.register(ECHO, BOOM, ASYNC_BOOM)
    return registry


def handler_setup(seen):
    def setup(service):
        gateway = service.gateway
        gateway.registry.register(ECHO, BOOM, ASYNC_BOOM)

        def boom(ctx, msg):
            raise RuntimeError("handler bug")

        def later_boom(ctx, msg):
            def fail():
                raise ValueError("async handler bug")

            return task.deferLater(reactor, 0.01, fail)

        def record(ctx, msg):
            seen.append((ctx.spec.type, ctx.player_id, msg.nonce))

        def echo(ctx, msg):
            ctx.reply("test.echo", events_pb2.Ping(nonce=msg.nonce + 1, sent_ns=msg.sent_ns))

        gateway.router.add("test.boom", boom)
        gateway.router.add("test.boom", record)
        gateway.router.add("test.async_boom", later_boom)
        gateway.router.add("test.async_boom", record)
        gateway.router.add("test.echo", echo)

    return setup


@pytest.mark.parametrize("type_", ["test.boom", "test.async_boom"])
@pytest_twisted.inlineCallbacks
def test_failing_handler_is_isolated(start_gateway, mint, type_):
    seen: list = []
    running = yield start_gateway(setup=handler_setup(seen))
    client = sdk_client(running.url, mint("alice"), registry=client_registry())
    bystander = sdk_client(running.url, mint("bob"))
    yield client.connect()
    yield bystander.connect()
    with pytest.raises(ServerError) as info:
        yield client.request(type_, events_pb2.Ping(nonce=41), timeout=5)
    error = info.value.error
    assert error.code == ErrorCode.HANDLER_FAILED
    assert error.event_type == type_
    assert "bug" not in error.message  # details stay in the server log
    assert seen == [(type_, "alice", 41)]  # the other handler still ran
    failures = yield metric(running.admin_url, "rtgateway_handler_failures_total", type=type_)
    assert failures == 1.0
    yield assert_healthy(client)
    yield assert_healthy(bystander)
    reply = yield client.request("test.echo", events_pb2.Ping(nonce=1))  # still served
    assert reply.message.nonce == 2


@pytest_twisted.inlineCallbacks
def test_correlated_reply_reaches_request(start_gateway, mint):
    running = yield start_gateway(setup=handler_setup([]))
    client = sdk_client(running.url, mint("alice"), registry=client_registry())
    yield client.connect()
    replies = yield defer.gatherResults(
        [client.request("test.echo", events_pb2.Ping(nonce=n, sent_ns=n * 10)) for n in (10, 20)]
    )
    assert [(r.type, r.message.nonce, r.message.sent_ns) for r in replies] == [
        ("test.echo", 11, 100), ("test.echo", 21, 200)
    ]
    assert all(r.envelope.correlation_id for r in replies)
    # The independent client: the reply echoes the hand-set correlation id.
    raw = yield WsClient.connect(running.url, mint("bob"))
    yield raw.handshake()
    yield raw.send(frame(envelope("test.echo", events_pb2.Ping(nonce=5), seq=1,
                                  correlation_id=777)))
    env = yield raw.expect("test.echo")
    assert env.correlation_id == 777
    assert parse(env, events_pb2.Ping).nonce == 6
    assert env.ack == 1  # our reliable event was acknowledged on the reply
    yield raw.close()
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_offender_ignoring_the_close_does_not_break_delivery(start_gateway, mint):
    """An offender closed by the server that never answers the close handshake is
    still in the hub for a while: flushing to it must not break everyone's flush."""
    failures: list = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    running = yield start_gateway(setup=handler_setup([]))
    healthy = sdk_client(running.url, mint("healthy"), registry=client_registry())
    yield healthy.connect()
    raw = yield RawSocket.open(running.url, mint("offender"))
    [transport] = yield wait_until(
        lambda: [t for t in running.gateway.hub.transports()
                 if t.connection.player_id == "offender" and t.connection.authenticated],
    )
    yield deferToThread(raw.send_binary, b"\xffgarbage")
    yield wait_until(lambda: transport.state != transport.STATE_OPEN, what="the close sent")
    got: list = []
    healthy.on("test.echo", got.append)
    globalLogPublisher.addObserver(observe)
    try:
        for nonce in range(3):  # one per tick: each flush meets the closing offender
            arrived = healthy.wait_for("test.echo", timeout=5)
            running.gateway.send_to_players(["offender", "healthy"], "test.echo",
                                            events_pb2.Ping(nonce=nonce))
            yield arrived
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [g.message.nonce for g in got] == [0, 1, 2]
    assert failures == []
    assert transport in running.gateway.hub.transports()  # still closing: the test is valid
    raw.close()
    yield wait_until(lambda: len(running.gateway.hub) == 1, what="the offender gone")
    yield healthy.close()


@pytest_twisted.inlineCallbacks
def test_client_chosen_close_codes_do_not_create_metric_series(start_gateway, mint):
    from twisted.internet import reactor

    from gateway.client import GatewayClient

    running = yield start_gateway()
    for code in (4321, 4777):
        client = GatewayClient(running.url, mint("alice"), reactor=reactor, reconnect=None)
        yield client.connect()
        yield client.close(code, "bye")
    yield wait_until(lambda: not running.gateway.hub.connections(), timeout=5)
    from prometheus_client import generate_latest

    body = generate_latest(running.gateway.metrics.registry).decode()
    assert 'code="4321"' not in body and 'code="4777"' not in body
    assert 'rtgateway_closes_total{code="other"} 2.0' in body
