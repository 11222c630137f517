"""The Python client SDK: a Twisted client for wire protocol v1.

``GatewayClient`` owns a :class:`ClientSession` (sans-io, survives
reconnects) and one WebSocket connection at a time.  Outbound events sent in
the same reactor turn leave as one frame.  Reliable events are resent until
the server acknowledges them; a give-up callback reports the ones that time
out.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from google.protobuf.message import Message
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import SUBPROTOCOL
from gateway.client.session import ClientSession, Incoming
from gateway.events import EventRegistry
from gateway.states import State
from gateway.wire import WireError
from protocol import events_pb2

__all__ = ["ClientClosed", "GatewayClient", "ServerError"]

log = Logger()

Handler = Callable[[Incoming], object]


class ClientClosed(Exception):  # noqa: N818
    """The connection closed; ``code`` and ``reason`` say why."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class ServerError(Exception):
    """The server answered a request with system.error."""

    def __init__(self, error: events_pb2.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.code = error.code


class _Protocol(WebSocketClientProtocol):  # type: ignore[misc]
    client: GatewayClient

    def onOpen(self) -> None:  # noqa: N802
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        self.client._received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        self.client._closed(self, code, reason)


class GatewayClient:
    """Connect, authenticate, send and receive typed events, measure RTT.

    ``token_via`` is ``"header"`` (Authorization: Bearer), ``"query"``
    (``access_token``, for environments that cannot set headers) or
    ``"hello"`` (in-band, in system.hello; the server must allow it).
    """

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        reactor: Any = None,
        registry: EventRegistry | None = None,
        token_via: str = "header",
        compression: tuple[str, ...] = ("lz4", "zlib"),
        reliable_timeout: float = 30.0,
        on_give_up: Callable[[str, int], object] | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        client_name: str = "rtgateway-python/0.1",
        connect_timeout: float = 10.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if token_via not in ("header", "query", "hello"):
            raise ValueError("token_via is header, query or hello")
        self.url = url
        self.token = token
        self.token_via = token_via
        self.reactor = reactor
        self.monotonic_ns = monotonic_ns
        self.connect_timeout = connect_timeout
        self.on_give_up = on_give_up
        self.session = ClientSession(
            registry=registry or EventRegistry(),
            compression=compression,
            reliable_timeout=reliable_timeout,
            client_name=client_name,
        )
        self._handlers: dict[str, list[Handler]] = {}
        self._any: list[Handler] = []
        self._proto: _Protocol | None = None
        self._connected: defer.Deferred[events_pb2.Welcome] | None = None
        self._closed_waiters: list[defer.Deferred[ClientClosed]] = []
        self._requests: dict[int, defer.Deferred[Incoming]] = {}
        self._correlation = itertools.count(1)
        self._flush_call: IDelayedCall | None = None
        self._heartbeat: task.LoopingCall | None = None
        self._last_received = 0.0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.disconnect: events_pb2.Disconnect | None = None
        self.draining: events_pb2.Draining | None = None
        #: The reconnection token of the current session ("" before the first welcome).
        self.resume_token = ""

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        return self.session.state

    @property
    def rtt(self) -> float:
        """Smoothed round-trip time in seconds (0 until the first pong)."""
        return self.session.rtt.srtt

    @property
    def welcome(self) -> events_pb2.Welcome | None:
        return self.session.welcome

    @property
    def registry(self) -> EventRegistry:
        return self.session.registry

    def on_state(self, callback: Callable[[State, State], object]) -> Callable[[], None]:
        """``callback(old, new)`` on every state change; returns an unsubscribe function."""
        return self.session.machine.observe(callback)

    def on(self, type_: str, handler: Handler | None = None) -> Any:
        """Register a handler for a server event type (usable as a decorator)."""

        def register(h: Handler) -> Handler:
            self._handlers.setdefault(type_, []).append(h)
            return h

        return register(handler) if handler is not None else register

    def on_any(self, handler: Handler) -> None:
        self._any.append(handler)

    def connect(self) -> defer.Deferred[events_pb2.Welcome]:
        """Open the WebSocket and authenticate; fires with the Welcome."""
        if self._connected is not None:
            return _chain(self._connected)
        machine = self.session.machine
        if machine.state is not State.CONNECTING:
            machine.to(State.CONNECTING)
        self._connected = defer.Deferred()
        result = _chain(self._connected)
        factory = self._factory()
        endpoint = self._endpoint()
        d = endpoint.connect(factory)
        d.addErrback(self._connect_failed)
        self._timeout = self.reactor.callLater(self.connect_timeout, self._connect_timed_out)
        return result

    def send(self, type_: str, message: Message, *, reliable: bool | None = None,
             priority: int | None = None, key: str | None = None) -> None:
        """Queue an event; everything sent in one reactor turn leaves as one frame."""
        event = self.session.event(type_, message, reliable=reliable, priority=priority, key=key)
        self.session.queue(event)
        self._schedule_flush()

    def request(self, type_: str, message: Message, *, timeout: float = 10.0
                ) -> defer.Deferred[Incoming]:
        """Send with a correlation id; fires with the correlated reply (ServerError on error)."""
        correlation = next(self._correlation)
        event = self.session.event(type_, message, correlation_id=correlation)
        d: defer.Deferred[Incoming] = defer.Deferred()
        self._requests[correlation] = d
        d.addTimeout(timeout, self.reactor)
        d.addBoth(self._forget_request, correlation)
        self.session.queue(event)
        self._schedule_flush()
        return d

    def wait_for(self, type_: str, *, timeout: float = 10.0,
                 predicate: Callable[[Incoming], bool] | None = None) -> defer.Deferred[Incoming]:
        """Fires with the next event of ``type_`` (matching ``predicate``)."""
        d: defer.Deferred[Incoming] = defer.Deferred()

        def handler(incoming: Incoming) -> None:
            if d.called or (predicate is not None and not predicate(incoming)):
                return
            self._handlers[type_].remove(handler)
            d.callback(incoming)

        self.on(type_, handler)

        def cleanup(result: Any) -> Any:
            if handler in self._handlers.get(type_, ()):
                self._handlers[type_].remove(handler)
            return result

        d.addTimeout(timeout, self.reactor)
        d.addBoth(cleanup)
        return d

    def refresh_token(self, token: str, *, timeout: float = 10.0
                      ) -> defer.Deferred[Incoming]:
        self.token = token
        return self.request("system.auth_refresh", events_pb2.AuthRefresh(token=token),
                            timeout=timeout)

    def ping(self) -> None:
        self.session.queue(self.session.ping(self.monotonic_ns()))
        self._flush()

    def when_closed(self) -> defer.Deferred[ClientClosed]:
        d: defer.Deferred[ClientClosed] = defer.Deferred()
        if self.state is State.DISCONNECTED and self._proto is None:
            d.callback(ClientClosed(self.close_code, self.close_reason))
        else:
            self._closed_waiters.append(d)
        return d

    def close(self, code: int = 1000, reason: str = "bye") -> defer.Deferred[ClientClosed]:
        d = self.when_closed()
        if self._proto is not None:
            self._flush()
            self._proto.sendClose(code, reason)
        return d

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (tests, simulated failures)."""
        if self._proto is not None:
            self._proto.dropConnection(abort=True)

    # ------------------------------------------------------------------ plumbing

    def _factory(self) -> WebSocketClientFactory:
        url = self.url
        headers = {}
        if self.token and self.token_via == "header":
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.token and self.token_via == "query":
            parts = urlparse(url)
            query = urlencode({"access_token": self.token})
            url = urlunparse(parts._replace(query=f"{parts.query}&{query}" if parts.query
                                            else query))
        factory = WebSocketClientFactory(url, protocols=[SUBPROTOCOL], headers=headers,
                                         reactor=self.reactor)
        factory.setProtocolOptions(
            maxMessagePayloadSize=1 << 24, maxFramePayloadSize=1 << 24,
            autoPingInterval=0, perMessageCompressionOffers=[], failByDrop=False,
            tcpNoDelay=True, openHandshakeTimeout=max(2, int(self.connect_timeout)),
        )
        client = self

        class Protocol(_Protocol):
            pass

        Protocol.client = client
        factory.protocol = Protocol
        return factory

    def _endpoint(self) -> Any:
        parts = urlparse(self.url)
        host = parts.hostname or "127.0.0.1"
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        endpoint = endpoints.HostnameEndpoint(self.reactor, host, port)
        if secure:
            from twisted.internet import ssl

            return endpoints.wrapClientTLS(ssl.optionsForClientTLS(host), endpoint)
        return endpoint

    def _connect_failed(self, failure: Failure) -> None:
        self._fail_connect(failure)
        self._set_state(State.DISCONNECTED)
        self._notify_closed()

    def _connect_timed_out(self) -> None:
        if self._connected is not None and not self._connected.called:
            self.abort()
            self._fail_connect(Failure(defer.TimeoutError("connect timed out")))

    def _fail_connect(self, failure: Failure) -> None:
        d, self._connected = self._connected, None
        if getattr(self, "_timeout", None) is not None and self._timeout.active():
            self._timeout.cancel()
        if d is not None and not d.called:
            d.errback(failure)

    def _set_state(self, new: State) -> None:
        machine = self.session.machine
        if machine.state is not new and machine.can(new):
            machine.to(new)

    def _opened(self, proto: _Protocol) -> None:
        self._proto = proto
        self._last_received = self.reactor.seconds()
        self._set_state(State.CONNECTED)
        token = self.token if self.token_via == "hello" else ""
        proto.sendMessage(self.session.hello(token=token, resume_token=self.resume_token),
                          isBinary=True)
        self._set_state(State.AUTHENTICATING)

    def _received(self, proto: _Protocol, payload: bytes, is_binary: bool) -> None:
        self._last_received = self.reactor.seconds()
        if not is_binary:
            return
        try:
            events = self.session.receive(payload)
        except WireError as exc:
            log.error("undecodable frame from server: {reason}", reason=exc.reason)
            proto.sendClose(4000, "bad frame")
            return
        for incoming in events:
            self._dispatch(incoming)
        if self.session.has_output:
            self._schedule_flush()

    def _dispatch(self, incoming: Incoming) -> None:
        t = incoming.type
        msg = incoming.message
        if t == "system.welcome" and isinstance(msg, events_pb2.Welcome):
            self._welcomed(msg)
        elif t == "system.ping" and isinstance(msg, events_pb2.Ping):
            self.session.queue(ClientSession.pong_for(msg))
            self._schedule_flush()
        elif t == "system.pong" and isinstance(msg, events_pb2.Pong):
            self.session.on_pong(msg, self.monotonic_ns())
        elif t == "system.disconnect" and isinstance(msg, events_pb2.Disconnect):
            self.disconnect = msg
        elif t == "server.draining" and isinstance(msg, events_pb2.Draining):
            self.draining = msg
        correlation = incoming.envelope.correlation_id
        if correlation and correlation in self._requests:
            d = self._requests.pop(correlation)
            if t == "system.error" and isinstance(msg, events_pb2.Error):
                d.errback(ServerError(msg))
            else:
                d.callback(incoming)
        for handler in tuple(self._handlers.get(t, ())) + tuple(self._any):
            try:
                handler(incoming)
            except Exception:
                log.failure("client handler for {type} failed", type=t)

    def _welcomed(self, welcome: events_pb2.Welcome) -> None:
        self.session.on_welcome(welcome)
        self.resume_token = welcome.reconnect_token  # tokens rotate on every use
        self._set_state(State.AUTHENTICATED)
        if getattr(self, "_timeout", None) is not None and self._timeout.active():
            self._timeout.cancel()
        interval = max(1, welcome.heartbeat_interval_s or 10)
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(interval, now=False)
        d, self._connected = self._connected, None
        if d is not None and not d.called:
            d.callback(welcome)

    def _beat(self) -> None:
        welcome = self.session.welcome
        if welcome is not None and self._proto is not None:
            silence = self.reactor.seconds() - self._last_received
            if silence > welcome.heartbeat_interval_s + welcome.heartbeat_timeout_s:
                log.warn("no traffic from the server for {s:.1f}s: dropping", s=silence)
                self.abort()
                return
        for pending in self.session.expire(self.reactor.seconds()):
            callback = pending.on_give_up or self.on_give_up
            if callback is not None:
                callback(pending.event.type, pending.seq)
        self.ping()

    def _schedule_flush(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._proto is None or self.state is not State.AUTHENTICATED:
            return
        frame = self.session.take_frame(self.reactor.seconds())
        if frame is not None:
            self._proto.sendMessage(frame, isBinary=True)

    def _forget_request(self, result: Any, correlation: int) -> Any:
        self._requests.pop(correlation, None)
        return result

    def _closed(self, proto: _Protocol, code: int | None, reason: str | None) -> None:
        if proto is not self._proto and self._proto is not None:
            return
        self._proto = None
        self.close_code = code
        self.close_reason = reason
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._fail_connect(Failure(ClientClosed(code, reason)))
        for correlation in list(self._requests):
            d = self._requests.pop(correlation)
            if not d.called:
                d.errback(ClientClosed(code, reason))
        self._set_state(State.DISCONNECTED)
        self._notify_closed()

    def _notify_closed(self) -> None:
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(ClientClosed(self.close_code, self.close_reason))


def _chain(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    out: defer.Deferred[Any] = defer.Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            out.errback(result)
            return None
        out.callback(result)
        return result

    d.addBoth(relay)
    return out
