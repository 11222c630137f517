"""The admin site over HTTP: health, readiness, metrics, the connection table, the token."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
import treq
from wsclient import (  # noqa: F401 - close_clients is an autouse fixture
    WsClient,
    close_clients,
    http,
    scrape,
    sdk_client,
    wait_until,
)

from tests.conftest import test_config as make_config

ROW_FIELDS = {"player_id", "state", "rtt_ms", "bytes_in", "bytes_out", "messages_in",
              "messages_out", "connected_at"}


@pytest_twisted.inlineCallbacks
def test_healthz_readyz_metrics(start_gateway, mint):
    running = yield start_gateway()
    health = yield http(f"{running.admin_url}/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    ready = yield http(f"{running.admin_url}/readyz")
    assert ready.status == 200
    assert ready.json() == {"ready": True, "checks": {
        "listening": True, "backend": True, "not_draining": True}}

    client = sdk_client(running.url, mint("alice"))
    yield client.connect()
    response = yield http(f"{running.admin_url}/metrics")
    assert response.status == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    assert b"# TYPE rtgateway_connections gauge" in response.body
    samples = yield scrape(running.admin_url)
    assert samples[("rtgateway_connections", frozenset({("state", "authenticated")}))] == 1.0
    assert samples[("rtgateway_handshakes_total", frozenset({("outcome", "101")}))] == 1.0
    yield client.close()
    yield wait_until(lambda: len(running.gateway.hub) == 0)
    samples = yield scrape(running.admin_url)
    assert samples[("rtgateway_connections", frozenset({("state", "authenticated")}))] == 0.0
    assert samples[("rtgateway_closes_total", frozenset({("code", "1000")}))] == 1.0


@pytest_twisted.inlineCallbacks
def test_debug_connections_one_row_per_connection(start_gateway, mint):
    running = yield start_gateway()
    before = time.time()
    client = sdk_client(running.url, mint("alice"))
    yield client.connect()
    client.ping()
    yield client.wait_for("system.pong")
    quiet = yield WsClient.connect(running.url, mint("bob"))  # upgraded, no hello yet
    yield wait_until(lambda: len(running.gateway.hub) == 2)

    response = yield http(f"{running.admin_url}/debug/connections")
    assert response.status == 200
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    table = response.json()
    assert table["instance_id"] == running.gateway.instance_id
    assert table["count"] == 2
    rows = {row["player_id"]: row for row in table["connections"]}
    assert set(rows) == {"alice", "bob"}  # bob's identity came with the upgrade
    for row in rows.values():
        assert ROW_FIELDS <= set(row)
        assert before - 1 <= row["connected_at"] <= time.time()
    alice, bob = rows["alice"], rows["bob"]
    assert (alice["state"], bob["state"]) == ("authenticated", "connected")
    assert alice["messages_in"] >= 2 and alice["bytes_in"] > 0  # hello, ping
    assert alice["messages_out"] >= 2 and alice["bytes_out"] > 0  # welcome, pong
    assert bob["messages_in"] == bob["bytes_in"] == 0
    assert alice["rtt_ms"] == 0  # the server has not pinged yet (heartbeat.interval 10 s)
    assert "token" not in response.body.decode().lower()
    yield quiet.close()
    yield client.close()


@pytest.fixture
def admin_token(monkeypatch):
    token = "admin-" + "t" * 32
    monkeypatch.setenv("RTGW_TEST_ADMIN_TOKEN", token)
    return token


@pytest_twisted.inlineCallbacks
def test_admin_token_guards_debug_and_admin_only(start_gateway, admin_token):
    running = yield start_gateway(make_config(**{"admin.token_env": "RTGW_TEST_ADMIN_TOKEN"}))
    url = running.admin_url
    bearer = {"Authorization": f"Bearer {admin_token}"}

    denied = yield http(f"{url}/debug/connections")
    assert denied.status == 401
    assert denied.headers.getRawHeaders("www-authenticate") == ["Bearer"]
    wrong = yield http(f"{url}/debug/connections", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    basic = yield http(f"{url}/debug/connections", headers={"Authorization": admin_token})
    assert basic.status == 401
    assert (yield http(f"{url}/debug/connections", headers=bearer)).status == 200

    refused = yield http(f"{url}/admin/drain", method="POST")
    assert refused.status == 401
    assert not running.gateway.draining

    # Health and metrics stay open to load balancers and the scraper.
    assert (yield http(f"{url}/healthz")).status == 200
    assert (yield http(f"{url}/readyz")).status == 200
    assert (yield http(f"{url}/metrics")).status == 200

    drained = yield http(f"{url}/admin/drain", method="POST", headers=bearer)
    assert drained.status == 202
    assert running.gateway.draining


@pytest_twisted.inlineCallbacks
def test_wrong_methods_are_405(start_gateway):
    running = yield start_gateway()
    assert (yield http(f"{running.admin_url}/healthz", method="POST")).status == 405
    assert (yield http(f"{running.admin_url}/admin/drain")).status == 405
    assert not running.gateway.draining
    for missing in ("/nope", "/debug/nope", "/admin/nope"):
        assert (yield http(f"{running.admin_url}{missing}")).status == 404


@pytest_twisted.inlineCallbacks
def test_plugin_admin_resources_need_the_admin_token_too(start_gateway, monkeypatch):
    monkeypatch.setenv("RTGW_TEST_ADMIN_TOKEN", "s3cret-admin-token")
    running = yield start_gateway(make_config(**{"admin.token_env": "RTGW_TEST_ADMIN_TOKEN"}))
    body = json.dumps({"text": "hi", "level": "info"}).encode()
    refused = yield treq.post(running.admin_url + "/admin/announce", body)
    assert refused.code == 401
    yield refused.content()
    allowed = yield treq.post(running.admin_url + "/admin/announce", body,
                              headers={"Authorization": "Bearer s3cret-admin-token"})
    assert allowed.code == 202
    yield allowed.content()


@pytest_twisted.inlineCallbacks
def test_guarded_plugin_leaf_resources_still_route_their_subpaths(start_gateway, monkeypatch):
    monkeypatch.setenv("RTGW_TEST_ADMIN_TOKEN", "s3cret-admin-token")
    running = yield start_gateway(make_config(**{"admin.token_env": "RTGW_TEST_ADMIN_TOKEN"}))
    auth = {"Authorization": "Bearer s3cret-admin-token"}
    status = yield treq.get(running.admin_url + "/admin/recording", headers=auth)
    assert status.code == 200
    yield status.content()
    started = yield treq.post(running.admin_url + "/admin/recording/start",
                              json.dumps({"all": True}).encode(), headers=auth)
    assert started.code in (200, 202), (yield started.content())
    yield started.content()
    stopped = yield treq.post(running.admin_url + "/admin/recording/stop", b"{}", headers=auth)
    assert stopped.code in (200, 202)
    yield stopped.content()
    refused = yield treq.post(running.admin_url + "/admin/recording/start", b"{}")
    assert refused.code == 401
    yield refused.content()
