"""Graceful shutdown and drain through real sockets."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from wsclient import (  # noqa: F401 - close_clients is an autouse fixture
    WsClient,
    close_clients,
    http,
    metric,
    parse,
    sdk_client,
    upgrade_status,
)

from gateway.codes import CloseCode
from gateway.states import State
from protocol import events_pb2
from tests.conftest import test_config as make_config

GRACE = 1.0
SPREAD_MS = 2500


def drain_config():
    return make_config(**{
        "shutdown.grace_seconds": GRACE,
        "shutdown.reconnect_spread_ms": SPREAD_MS,
    })


@pytest_twisted.inlineCallbacks
def test_stop_service_drains_then_closes_1001(start_gateway, mint):
    running = yield start_gateway(drain_config())
    url = running.url  # the port is gone once stopped
    sdk = sdk_client(url, mint("alice"))
    yield sdk.connect()
    raw = yield WsClient.connect(url, mint("bob"))
    yield raw.handshake()
    sdk_draining = sdk.wait_for("server.draining", timeout=5)
    sdk_closed = sdk.when_closed()
    raw_closed = raw.closed(timeout=10)

    started = time.monotonic()
    stopped = running.service.stopService()
    assert not stopped.called
    draining = (yield sdk_draining).message
    assert (draining.grace_ms, draining.retry_after_ms) == (int(GRACE * 1000), SPREAD_MS)
    assert draining.reconnect_url == ""
    ready = yield http(f"{running.admin_url}/readyz")
    assert ready.status == 503
    assert ready.json()["checks"]["listening"] is False

    # stopService stops listening first: a newcomer is refused at TCP level, not upgraded.
    with pytest.raises(ConnectionRefusedError):
        yield WsClient.connect(url, mint("carol"))

    closed = yield sdk_closed
    assert closed.code == CloseCode.GOING_AWAY
    assert time.monotonic() - started >= GRACE - 0.05
    assert sdk.state is State.DISCONNECTED
    raw_result = yield raw_closed
    assert raw_result.code == CloseCode.GOING_AWAY
    [env] = raw_result.of_type("server.draining")
    assert parse(env, events_pb2.Draining).grace_ms == int(GRACE * 1000)
    yield stopped
    assert time.monotonic() - started < GRACE + 2  # no waiting for the abort fallback
    assert len(running.gateway.hub) == 0
    assert not running.service.running


@pytest_twisted.inlineCallbacks
def test_stop_service_without_connections_is_immediate(start_gateway):
    running = yield start_gateway(drain_config())
    started = time.monotonic()
    yield running.service.stopService()
    assert time.monotonic() - started < GRACE


@pytest_twisted.inlineCallbacks
def test_admin_drain_refuses_newcomers_with_503(start_gateway, mint):
    running = yield start_gateway(drain_config())
    client = sdk_client(running.url, mint("alice"))
    yield client.connect()
    draining = client.wait_for("server.draining", timeout=5)
    closed = client.when_closed()

    response = yield http(f"{running.admin_url}/admin/drain", method="POST")
    assert response.status == 202
    assert response.json() == {"draining": True, "connections": 1}
    assert (yield draining).message.grace_ms == int(GRACE * 1000)
    ready = yield http(f"{running.admin_url}/readyz")
    assert ready.status == 503
    assert ready.json() == {"ready": False, "checks": {
        "listening": True, "backend": True, "not_draining": False}}
    assert (yield metric(running.admin_url, "rtgateway_draining")) == 1.0

    # Still listening during the grace period: new upgrades get a clear 503.
    assert (yield upgrade_status(running.url, mint("bob"))) == 503
    assert (yield closed).code == CloseCode.GOING_AWAY
    # A second drain request is harmless.
    again = yield http(f"{running.admin_url}/admin/drain", method="POST")
    assert again.status == 202
    assert (yield upgrade_status(running.url, mint("bob"))) == 503
