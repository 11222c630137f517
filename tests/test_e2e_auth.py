"""Authentication through real sockets: at the upgrade, in-band, expiry and refresh."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher
from wsclient import (  # noqa: F401 - close_clients is an autouse fixture
    WsClient,
    assert_healthy,
    close_clients,
    hello_frame,
    metric,
    sdk_client,
    upgrade_status,
)

from gateway.auth import mint_token
from gateway.client.client import ServerError
from gateway.codes import CloseCode, ErrorCode
from protocol import events_pb2
from tests.conftest import test_config as make_config

AUTH_FAILURES = "rtgateway_auth_failures_total"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, claims: dict, secret: bytes | None) -> str:
    """A JWT assembled by hand (no library would sign these)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims_now(**extra) -> dict:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 300, **extra}


BAD_TOKENS = {
    # name: (reason label, config overrides, token factory(mint, dev_key))
    "missing": ("missing", {}, lambda mint, key: None),
    "malformed": ("malformed", {}, lambda mint, key: "not.a-jwt"),
    "expired": ("expired", {}, lambda mint, key: mint("alice", ttl=-120)),  # leeway is 30
    "wrong_signature": (
        "bad_signature", {},
        lambda mint, key: mint_token(b"another-secret-of-32-bytes-or-more!", "HS256", "dev",
                                     claims_now()),
    ),
    "alg_none": (
        "bad_algorithm", {},
        lambda mint, key: hand_made({"alg": "none", "typ": "JWT", "kid": "dev"}, claims_now(),
                                    None),
    ),
    "alg_confusion": (
        # Claims RS256 for the HS256 key "dev", signed with that key as an HMAC secret.
        "bad_algorithm", {},
        lambda mint, key: hand_made({"alg": "RS256", "typ": "JWT", "kid": "dev"}, claims_now(),
                                    key),
    ),
    "wrong_audience": (
        "bad_audience", {"auth.audience": "game"}, lambda mint, key: mint("alice", aud="other"),
    ),
    "missing_claim": (
        "missing_claim", {},
        lambda mint, key: mint_token(key, "HS256", "dev",
                                     {"sub": "alice", "exp": int(time.time()) + 300}),
    ),
}


@pytest.mark.parametrize("via", ["header", "query"])
@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
@pytest_twisted.inlineCallbacks
def test_bad_token_is_401_before_upgrade(start_gateway, mint, dev_key, case, via):
    reason, overrides, make = BAD_TOKENS[case]
    running = yield start_gateway(make_config(**overrides))
    token = make(mint, dev_key)
    status = yield upgrade_status(running.url, token, via=via)
    assert status == 401
    assert (yield metric(running.admin_url, AUTH_FAILURES, reason=reason)) == 1.0
    assert (yield metric(running.admin_url, "rtgateway_handshakes_total", outcome="401")) == 1.0
    assert len(running.gateway.hub) == 0


@pytest.mark.parametrize("via", ["header", "query"])
@pytest_twisted.inlineCallbacks
def test_good_token_at_upgrade_independent_client(start_gateway, mint, via):
    running = yield start_gateway(make_config(**{"auth.audience": "game"}))
    client = yield WsClient.connect(running.url, mint("alice", aud="game"), via=via)
    assert client.ws.subprotocol == "rtgateway.v1"
    welcome = yield client.handshake()
    assert welcome.player_id == "alice"
    assert welcome.session_id
    yield client.close()


@pytest.mark.parametrize("via", ["header", "query", "hello"])
@pytest_twisted.inlineCallbacks
def test_good_token_sdk(start_gateway, mint, via):
    running = yield start_gateway(make_config(**{"auth.allow_in_band": via == "hello"}))
    client = sdk_client(running.url, mint("bob"), token_via=via)
    welcome = yield client.connect()
    assert welcome.player_id == "bob"
    [conn] = running.gateway.hub.connections()
    assert conn.player_id == "bob"
    yield assert_healthy(client)
    closed = yield client.close()
    assert closed.code == 1000


@pytest_twisted.inlineCallbacks
def test_in_band_token_independent_client(start_gateway, mint):
    running = yield start_gateway(make_config(**{"auth.allow_in_band": True}))
    client = yield WsClient.connect(running.url)  # no token at the upgrade
    [conn] = running.gateway.hub.connections()
    assert conn.player_id == ""
    welcome = yield client.handshake(mint("carol"))
    assert welcome.player_id == "carol"
    assert conn.player_id == "carol"
    yield client.close()


@pytest.mark.parametrize(
    ("token", "reason"),
    [("bad", "malformed"), ("", "missing"), ("expired", "expired")],
)
@pytest_twisted.inlineCallbacks
def test_in_band_bad_token_closes_4001(start_gateway, mint, token, reason):
    running = yield start_gateway(make_config(**{"auth.allow_in_band": True}))
    client = yield WsClient.connect(running.url)
    if token == "expired":
        token = mint("carol", ttl=-120)
    yield client.send(hello_frame(token))
    closed = yield client.closed()
    assert closed.code == CloseCode.AUTH_FAILED
    assert closed.of_type("system.welcome") == []
    assert (yield metric(running.admin_url, AUTH_FAILURES, reason=reason)) == 1.0
    assert (yield metric(running.admin_url, "rtgateway_closes_total", code="4001")) == 1.0


@pytest_twisted.inlineCallbacks
def test_in_band_not_allowed_means_401(start_gateway):
    running = yield start_gateway()
    assert (yield upgrade_status(running.url)) == 401


@pytest_twisted.inlineCallbacks
def test_no_hello_within_handshake_timeout_closes_4004(start_gateway, mint):
    running = yield start_gateway(make_config(**{"limits.handshake_timeout": 2}))
    started = time.monotonic()
    client = yield WsClient.connect(running.url, mint("dave"))
    closed = yield client.closed(timeout=6)
    elapsed = time.monotonic() - started
    assert closed.code == CloseCode.HELLO_TIMEOUT
    assert 1.0 <= elapsed <= 4.0  # deadline 2 s, checked by the 1-second sweep
    assert (yield metric(running.admin_url, "rtgateway_closes_total", code="4004")) == 1.0


@pytest_twisted.inlineCallbacks
def test_query_token_never_logged(start_gateway, mint):
    events: list[dict] = []
    running = yield start_gateway()
    good = mint("erin")
    bad = mint("erin", ttl=-120)
    globalLogPublisher.addObserver(events.append)
    try:
        client = yield WsClient.connect(running.url, good, via="query")
        yield client.handshake()
        yield client.send(b"garbage")  # a logged failure path on this connection
        yield client.closed()
        assert (yield upgrade_status(running.url, bad, via="query")) == 401
        sdk = sdk_client(running.url, good, token_via="query")
        yield sdk.connect()
        yield sdk.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(f"{formatEvent(e)} {e!r}" for e in events)
    assert events  # the refused upgrade at least is logged: the check is not vacuous
    for token in (good, bad):
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature


# --------------------------------------------------------------------------- expiry and refresh


@pytest_twisted.inlineCallbacks
def test_token_expiry_closes_4002_unless_refreshed(start_gateway, mint):
    running = yield start_gateway(make_config(**{"auth.leeway": 0}))
    # Minted first, so its exp is never later than the other's.
    refreshed_token = mint("bob", ttl=2)
    expiring_token = mint("alice", ttl=2)
    refresher = sdk_client(running.url, refreshed_token)
    expiring = sdk_client(running.url, expiring_token)
    yield refresher.connect()
    welcome = yield expiring.connect()
    original_exp = welcome.token_expires_at
    assert original_exp >= refresher.welcome.token_expires_at

    reply = yield refresher.refresh_token(mint("bob", ttl=60))
    assert reply.type == "system.auth_refreshed"
    [bob] = [c for c in running.gateway.hub.connections() if c.player_id == "bob"]
    assert bob.token_expires_at == reply.message.token_expires_at
    assert bob.token_expires_at > original_exp + 50

    # A refresh with somebody else's token is refused; the connection stays.
    with pytest.raises(ServerError) as info:
        yield refresher.refresh_token(mint("mallory", ttl=60))
    assert info.value.code == ErrorCode.AUTH_REFRESH_FAILED
    assert bob.token_expires_at == reply.message.token_expires_at

    closed = yield expiring.when_closed()
    assert closed.code == CloseCode.AUTH_EXPIRED
    assert expiring.disconnect is not None and expiring.disconnect.reconnect is False
    assert time.time() > original_exp  # the sweep that closed alice ran after bob's old exp too
    yield assert_healthy(refresher)
    assert (yield metric(running.admin_url, "rtgateway_closes_total", code="4002")) == 1.0
    assert (yield metric(running.admin_url, AUTH_FAILURES, reason="bad_subject")) == 1.0
    yield refresher.close()


@pytest_twisted.inlineCallbacks
def test_refresh_with_invalid_token_is_error_9(start_gateway, mint):
    running = yield start_gateway()
    client = sdk_client(running.url, mint("bob"))
    yield client.connect()
    with pytest.raises(ServerError) as info:
        yield client.refresh_token("not-a-token")
    assert info.value.code == ErrorCode.AUTH_REFRESH_FAILED
    assert isinstance(info.value.error, events_pb2.Error)
    yield assert_healthy(client)
    assert (yield metric(running.admin_url, AUTH_FAILURES, reason="malformed")) == 1.0

