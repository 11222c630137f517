"""Helpers for the end-to-end tests.

* :class:`WsClient`: an independent client, the ``websockets`` library's
  synchronous API, every blocking call run in a reactor thread (the gateway
  runs on the reactor thread of this same process, which must never block).
* Frames built by hand from ``protocol.events_pb2``, so the wire protocol is
  checked without going through our own SDK or codec.
* :class:`RawSocket`: a hand-written RFC 6455 client on a plain socket, for a
  peer that completes the handshake and then stops reading.
* ``http``/``scrape``/``metric``: plain HTTP against the admin site.
* ``wait_until``: poll server state on the reactor with a hard timeout.
* ``sdk_client``: our own SDK's client, closed after the test.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlparse

import pytest
import pytest_twisted
import treq
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gateway.client.client import GatewayClient
from gateway.states import State
from protocol import events_pb2

SUBPROTOCOL = "rtgateway.v1"

_open_ws: list[WsClient] = []
_open_raw: list[RawSocket] = []
_open_sdk: list[GatewayClient] = []


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# --------------------------------------------------------------------------- frames


def envelope(type_: str, message: Message | None = None, *, payload: bytes | None = None,
             **fields: Any) -> events_pb2.Envelope:
    """An Envelope; ``payload`` (raw bytes) wins over ``message``."""
    if payload is None:
        payload = message.SerializeToString() if message is not None else b""
    return events_pb2.Envelope(type=type_, payload=payload, **fields)


def frame(*envelopes: events_pb2.Envelope) -> bytes:
    return events_pb2.Frame(envelopes=envelopes).SerializeToString()


def hello_frame(token: str = "") -> bytes:
    """system.hello offering no compression and no version preferences."""
    return frame(envelope("system.hello", events_pb2.Hello(token=token, client_name="e2e-raw")))


def decode(data: bytes) -> list[events_pb2.Envelope]:
    f = events_pb2.Frame()
    f.ParseFromString(data)
    assert f.compression == events_pb2.COMPRESSION_NONE  # the raw client offers none
    return list(f.envelopes)


def parse(env: events_pb2.Envelope, cls: type[Message]) -> Any:
    msg = cls()
    msg.ParseFromString(env.payload)
    return msg


# --------------------------------------------------------------------------- websockets client


@dataclass
class Closed:
    code: int  # 1006 when the server dropped TCP without a close frame
    reason: str
    envelopes: list[events_pb2.Envelope] = field(default_factory=list)  # read before the close

    def of_type(self, type_: str) -> list[events_pb2.Envelope]:
        return [e for e in self.envelopes if e.type == type_]


def ws_url(url: str, token: str | None, via: str) -> tuple[str, dict[str, str]]:
    headers: dict[str, str] = {}
    if token is not None and via == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None and via == "query":
        url = f"{url}?{urlencode({'access_token': token})}"
    return url, headers


class WsClient:
    """``websockets.sync`` in reactor threads; every method returns a Deferred."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[events_pb2.Envelope] = []  # everything read so far

    @classmethod
    def connect(
        cls,
        url: str,
        token: str | None = None,
        *,
        via: str = "header",
        subprotocols: tuple[str, ...] | None = (SUBPROTOCOL,),
        headers: dict[str, str] | None = None,
        origin: str | None = None,
    ) -> defer.Deferred[WsClient]:
        """Upgrade; fails with ``websockets.exceptions.InvalidStatus`` on a refusal."""
        url, extra = ws_url(url, token, via)
        extra.update(headers or {})

        def blocking() -> WsClient:
            ws = connect(
                url,
                subprotocols=list(subprotocols) if subprotocols is not None else None,  # type: ignore[misc]
                additional_headers=extra,
                origin=origin,  # type: ignore[arg-type]
                open_timeout=5,
                close_timeout=2,
                ping_interval=None,  # silent unless the test sends something
                compression=None,
                proxy=None,
                legacy=True,  # a plain ClientConnection, closed by close_clients
            )
            client = cls(ws)
            _open_ws.append(client)
            return client

        return deferToThread(blocking)

    def send(self, data: bytes | str) -> defer.Deferred[None]:
        return deferToThread(self.ws.send, data)

    def recv(self, timeout: float = 5.0) -> defer.Deferred[bytes | str]:
        return deferToThread(self.ws.recv, timeout)

    @defer.inlineCallbacks
    def expect(self, type_: str, timeout: float = 5.0) -> Any:
        """The next envelope of ``type_``, skipping (but recording) others."""
        deadline = time.monotonic() + timeout
        while True:
            data = yield self.recv(max(0.01, deadline - time.monotonic()))
            for env in decode(data):
                self.received.append(env)
                if env.type == type_:
                    return env

    @defer.inlineCallbacks
    def handshake(self, token: str = "") -> Any:
        """Send system.hello, return the Welcome."""
        yield self.send(hello_frame(token))
        env = yield self.expect("system.welcome")
        return parse(env, events_pb2.Welcome)

    def closed(self, timeout: float = 10.0) -> defer.Deferred[Closed]:
        """Read until the connection closes; what was read before the close comes along."""

        def blocking() -> Closed:
            seen: list[events_pb2.Envelope] = []
            deadline = time.monotonic() + timeout
            try:
                while True:
                    data = self.ws.recv(max(0.01, deadline - time.monotonic()))
                    if isinstance(data, bytes):
                        seen.extend(decode(data))
            except ConnectionClosed as exc:
                self.received.extend(seen)
                if exc.rcvd is None:
                    return Closed(1006, "", seen)
                return Closed(exc.rcvd.code, exc.rcvd.reason, seen)

        return deferToThread(blocking)

    def close(self) -> defer.Deferred[None]:
        return deferToThread(self.ws.close)


def upgrade_status(url: str, token: str | None = None, **kw: Any) -> defer.Deferred[int]:
    """The HTTP status of an upgrade attempt (101 when it succeeded; then closed again)."""
    d = WsClient.connect(url, token, **kw)

    def upgraded(client: WsClient) -> defer.Deferred[int]:
        return client.close().addCallback(lambda _: 101)

    def refused(failure: Any) -> int:
        failure.trap(InvalidStatus)
        return int(failure.value.response.status_code)

    return d.addCallbacks(upgraded, refused)


# --------------------------------------------------------------------------- raw socket


class RawSocket:
    """A minimal RFC 6455 client on a blocking socket: for peers the libraries won't emulate."""

    def __init__(self, host: str, port: int, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect(), so the advertised window stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((host, port))
        _open_raw.append(self)

    @classmethod
    def open(cls, url: str, token: str, *, rcvbuf: int | None = None) -> defer.Deferred[RawSocket]:
        """Connect, upgrade with a bearer token and send system.hello: all in a thread."""
        parts = urlparse(url)

        def blocking() -> RawSocket:
            raw = cls(parts.hostname or "127.0.0.1", parts.port or 80, rcvbuf=rcvbuf)
            status = raw.upgrade(parts.path, {"Authorization": f"Bearer {token}"})
            assert status == 101, status
            raw.send_binary(hello_frame())
            return raw

        return deferToThread(blocking)

    def upgrade(self, path: str, headers: dict[str, str]) -> int:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(1)  # one byte at a time: leave the first frame unread
            if not chunk:
                break
            response += chunk
        return int(response.split(b" ", 2)[1])

    def send_binary(self, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x82, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x82, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- our SDK


def sdk_client(url: str, token: str = "", **kw: Any) -> GatewayClient:
    """A GatewayClient on the global reactor, closed after the test if still open."""
    kw.setdefault("reconnect", None)  # these tests watch closes: no automatic reconnect
    client = GatewayClient(url, token, reactor=_reactor(), **kw)
    _open_sdk.append(client)
    return client


@defer.inlineCallbacks
def assert_healthy(client: GatewayClient) -> Any:
    """The healthy bystander still gets a pong to its ping."""
    assert client.state is State.AUTHENTICATED
    pong = client.wait_for("system.pong", timeout=5)
    client.ping()
    yield pong


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Close whatever a test left open (import this fixture into each e2e module)."""
    yield
    ws, raw, sdk = list(_open_ws), list(_open_raw), list(_open_sdk)
    _open_ws.clear()
    _open_raw.clear()
    _open_sdk.clear()
    for r in raw:
        r.close()
    for w in ws:
        pytest_twisted.blockon(w.close())
    for c in sdk:
        if c.state is not State.DISCONNECTED:
            pytest_twisted.blockon(c.close())


# --------------------------------------------------------------------------- waiting


@defer.inlineCallbacks
def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01,
               what: str = "") -> Any:
    """Poll ``predicate`` on the reactor until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        yield task.deferLater(_reactor(), interval, lambda: None)


# --------------------------------------------------------------------------- admin HTTP


@dataclass
class HttpResponse:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@defer.inlineCallbacks
def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    response = yield treq.request(method, url, headers=headers or {}, persistent=False,
                                  timeout=5)
    body = yield treq.content(response)
    return HttpResponse(response.code, response.headers, body)


@defer.inlineCallbacks
def scrape(admin_url: str) -> Any:
    """GET /metrics -> {(sample name, frozenset(labels)): value}."""
    response = yield http(f"{admin_url}/metrics")
    assert response.status == 200
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


@defer.inlineCallbacks
def metric(admin_url: str, name: str, **labels: str) -> Any:
    """One sample's value from GET /metrics (0.0 when absent)."""
    samples = yield scrape(admin_url)
    return samples.get((name, frozenset(labels.items())), 0.0)
