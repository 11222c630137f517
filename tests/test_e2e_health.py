"""Heartbeat through real sockets: silent peers are closed (4010), RTT is measured."""

from __future__ import annotations

import time

import pytest_twisted
from wsclient import (  # noqa: F401 - close_clients is an autouse fixture
    WsClient,
    assert_healthy,
    close_clients,
    envelope,
    frame,
    http,
    metric,
    parse,
    sdk_client,
)

from gateway.codes import CloseCode
from protocol import events_pb2
from tests.conftest import test_config as make_config

INTERVAL, TIMEOUT = 2, 2


@pytest_twisted.inlineCallbacks
def test_silent_client_closed_4010_while_responsive_one_stays(start_gateway, mint):
    running = yield start_gateway(make_config(**{
        "heartbeat.interval": INTERVAL, "heartbeat.timeout": TIMEOUT,
    }))
    responsive = sdk_client(running.url, mint("alice"))
    welcome = yield responsive.connect()
    assert (welcome.heartbeat_interval_s, welcome.heartbeat_timeout_s) == (INTERVAL, TIMEOUT)
    silent = yield WsClient.connect(running.url, mint("mute"))  # no WebSocket pings either
    yield silent.handshake()
    last_sent = time.monotonic()

    closed = yield silent.closed(timeout=INTERVAL + TIMEOUT + 3)
    elapsed = time.monotonic() - last_sent
    assert closed.code == CloseCode.HEARTBEAT_TIMEOUT
    assert INTERVAL + TIMEOUT - 0.1 <= elapsed <= INTERVAL + TIMEOUT + 1 + 0.3, elapsed
    # The server did ping it (unanswered), then said why it closed.
    assert closed.of_type("system.ping")
    [bye] = closed.of_type("system.disconnect")
    assert parse(bye, events_pb2.Disconnect).code == CloseCode.HEARTBEAT_TIMEOUT
    assert (yield metric(running.admin_url, "rtgateway_closes_total", code="4010")) == 1.0

    # The responsive client answered the server's pings: it stays, and its RTT is known.
    yield assert_healthy(responsive)
    rows = (yield http(f"{running.admin_url}/debug/connections")).json()["connections"]
    [row] = rows
    assert row["player_id"] == "alice"
    assert row["rtt_ms"] > 0
    assert row["loss"] == 0
    assert (yield metric(running.admin_url, "rtgateway_rtt_seconds_count")) >= 1.0
    assert responsive.rtt > 0  # and the client measured its own
    yield responsive.close()


@pytest_twisted.inlineCallbacks
def test_server_answers_ping_with_pong_echoing_nonce(start_gateway, mint):
    running = yield start_gateway()
    client = yield WsClient.connect(running.url, mint("alice"))
    yield client.handshake()
    ping = events_pb2.Ping(nonce=123456789, sent_ns=987654321)
    yield client.send(frame(envelope("system.ping", ping)))
    pong = parse((yield client.expect("system.pong")), events_pb2.Pong)
    assert (pong.nonce, pong.sent_ns) == (123456789, 987654321)
    yield client.close()
