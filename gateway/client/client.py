"""The Python client SDK: a Twisted client for wire protocol v1.

``GatewayClient`` owns a :class:`ClientSession` (sans-io, survives
reconnects) and one WebSocket connection at a time.  Outbound events sent in
the same reactor turn leave as one frame, paced to the limits the server
announced in its welcome.  Reliable events are resent until the server
acknowledges them; a give-up callback reports the ones that time out.

After an unexpected loss of an authenticated connection the client
reconnects by itself (``reconnect=ReconnectPolicy(...)``): exponential
backoff with full jitter, an endpoint pool with failover, the server's
drain instructions (``server.draining``), session resume with the
reconnection token, and an offline queue for what the application sends in
the meantime.  docs/ClientSDK.md describes the guarantees.

Everything runs on the injected reactor: no threads, no sleeps, and every
timer is cancelled when the client ends up DISCONNECTED.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from google.protobuf.message import Message
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import SUBPROTOCOL
from gateway.client.backoff import Backoff, ReconnectPolicy, Uniform
from gateway.client.session import ClientSession, Incoming, QueuedSend
from gateway.codes import NO_RECONNECT
from gateway.events import EventRegistry
from gateway.ratelimit import TokenBucket
from gateway.states import State
from gateway.wire import WireError
from protocol import events_pb2

__all__ = [
    "DEFAULT_RECONNECT",
    "ClientClosed",
    "GatewayClient",
    "QueueFull",
    "ServerError",
]

log = Logger()

Handler = Callable[[Incoming], object]
TokenProvider = Callable[[], "str | defer.Deferred[str]"]

#: The policy a client gets unless told otherwise: first retry within 0.1 s,
#: then up to 10 s apart, never giving up.
DEFAULT_RECONNECT = ReconnectPolicy(base=0.1, cap=10.0, max_attempts=None)

_UPGRADE_STATUS = re.compile(r"upgrade failed \[(\d{3})\]")
# HTTP answers to the upgrade after which retrying with the same token is pointless.
_AUTH_REFUSED = frozenset({401, 403})
# Headroom on the server's rate limit: network jitter can bunch frames we spaced out.
_RATE_MARGIN = 0.9
_BURST_MARGIN = 2


class ClientClosed(Exception):
    """The connection closed; ``code`` and ``reason`` say why.

    ``http_status`` is set when the WebSocket upgrade itself was refused
    (401, 403, 503...), ``disconnect`` when the server said why first
    (system.disconnect), ``attempts`` when the client gave up reconnecting.
    """

    def __init__(self, code: int | None, reason: str | None, *,
                 http_status: int | None = None,
                 disconnect: events_pb2.Disconnect | None = None,
                 attempts: int = 0) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason
        self.http_status = http_status
        self.disconnect = disconnect
        self.attempts = attempts


class ServerError(Exception):
    """The server answered a request with system.error."""

    def __init__(self, error: events_pb2.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.code = error.code


class QueueFull(Exception):
    """A request sent while offline was refused or evicted by the bounded offline queue."""

    def __init__(self, type_: str) -> None:
        super().__init__(f"offline queue full: {type_} dropped")
        self.type = type_


class _Protocol(WebSocketClientProtocol):  # type: ignore[misc]
    client: GatewayClient

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn sets TCP_NODELAY before copying tcpNoDelay from the factory (and hides
        # the AttributeError): without this, Nagle delays back-to-back frames by the
        # server's delayed ACK (40 ms on Linux).
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(getattr(self, "tcpNoDelay", True))
        except (AttributeError, OSError):
            pass

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(self, code, reason)


class GatewayClient:
    """Connect, authenticate, send and receive typed events, measure RTT, reconnect.

    ``urls`` is one gateway URL or a pool of them: the first is tried first,
    and the client moves on to the next when one fails (the pool rotates).

    ``token_via`` is ``"header"`` (Authorization: Bearer), ``"query"``
    (``access_token``, for environments that cannot set headers) or
    ``"hello"`` (in-band, in system.hello; the server must allow it).

    ``reconnect`` is the :class:`ReconnectPolicy` applied after losing an
    authenticated connection (``None``: never reconnect by itself).
    ``token_provider()`` (str or Deferred[str]) is asked for a fresh access
    token before every reconnection attempt.  ``on_resync(welcome)`` is called
    when a resume was attempted but the server could not honour it fully
    (``resumed`` false or ``full_resync``): the application must rebuild its
    replicated state.  ``on_queue_full(type_)`` is called for every event the
    bounded offline queue (``offline_queue_limit``) drops.  ``on_closed`` gets
    the final :class:`ClientClosed` when the client gives up or is closed.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str = "",
        *,
        reactor: Any = None,
        registry: EventRegistry | None = None,
        token_via: str = "header",  # noqa: S107 - a mode, not a secret
        compression: tuple[str, ...] = ("lz4", "zlib"),
        reliable_timeout: float = 30.0,
        on_give_up: Callable[[str, int], object] | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        client_name: str = "rtgateway-python/0.1",
        connect_timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = DEFAULT_RECONNECT,
        offline_queue_limit: int = 1000,
        on_queue_full: Callable[[str], object] | None = None,
        token_provider: TokenProvider | None = None,
        on_resync: Callable[[events_pb2.Welcome], object] | None = None,
        on_closed: Callable[[ClientClosed], object] | None = None,
        rng: Uniform | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if token_via not in ("header", "query", "hello"):
            raise ValueError("token_via is header, query or hello")
        pool = (urls,) if isinstance(urls, str) else tuple(urls)
        if not pool:
            raise ValueError("at least one gateway URL is needed")
        #: The endpoint pool, in order of preference.
        self.urls: tuple[str, ...] = pool
        self._url = pool[0]
        self.token = token
        self.token_via = token_via
        self.reactor = reactor
        self.monotonic_ns = monotonic_ns
        self.connect_timeout = connect_timeout
        self.on_give_up = on_give_up
        self.policy = reconnect
        self.on_queue_full = on_queue_full
        self.token_provider = token_provider
        self.on_resync = on_resync
        self.on_closed = on_closed
        self.session = ClientSession(
            registry=registry or EventRegistry(),
            compression=compression,
            reliable_timeout=reliable_timeout,
            client_name=client_name,
            offline_limit=offline_queue_limit,
        )
        self._backoff = Backoff(reconnect or DEFAULT_RECONNECT, rng)
        self._handlers: dict[str, list[Handler]] = {}
        self._any: list[Handler] = []
        self._proto: _Protocol | None = None  # open (the handshake completed)
        self._attempt_proto: _Protocol | None = None  # TCP up, WebSocket handshake under way
        self._tcp: defer.Deferred[Any] | None = None
        self._dialing: defer.Deferred[events_pb2.Welcome] | None = None
        self._connected: defer.Deferred[events_pb2.Welcome] | None = None
        self._closed_waiters: list[defer.Deferred[ClientClosed]] = []
        self._requests: dict[int, defer.Deferred[Incoming]] = {}
        self._correlation = itertools.count(1)
        self._flush_call: IDelayedCall | None = None
        self._timeout: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._drain_call: IDelayedCall | None = None
        self._token_request: defer.Deferred[Any] | None = None
        self._heartbeat: task.LoopingCall | None = None
        self._housekeeping: task.LoopingCall | None = None
        self._bucket: TokenBucket | None = None
        self._cycle: str | None = None  # "initial" or "reconnect" while trying to connect
        self._tried = 0  # endpoints tried in this initial pass
        self._index = 0  # the pool entry to try next
        self._preferred_url: str | None = None  # server.draining's reconnect_url
        self._drain_at: float | None = None  # when to be gone from a draining server
        self._stopping = False  # the application closed: no automatic reconnect
        self._resume_attempted = False
        self._last_received = 0.0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.disconnect: events_pb2.Disconnect | None = None
        self.draining: events_pb2.Draining | None = None
        #: Why the client last ended up DISCONNECTED (None before that).
        self.last_close: ClientClosed | None = None
        #: Successful automatic reconnections so far.
        self.reconnects = 0
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

    @property
    def url(self) -> str:
        """The URL of the current (or last) connection attempt.

        Assigning one points the next attempt there: a URL of the pool is
        selected, any other replaces the pool entry in use.
        """
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        if url not in self.urls:
            pool = list(self.urls)
            pool[self._index] = url
            self.urls = tuple(pool)
        self._index = self.urls.index(url)
        self._url = url

    @property
    def online(self) -> bool:
        """True while an authenticated connection is open: events leave at once."""
        return (self._proto is not None and self.state is State.AUTHENTICATED
                and not self._stopping)

    @property
    def reconnect_attempts(self) -> int:
        """Failed attempts in the current reconnection cycle."""
        return self._backoff.failures

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
        """Open the WebSocket and authenticate; fires with the Welcome.

        Tries each endpoint of the pool once, in turn; fails with the last
        error when none answers.  Called again after a close (or a failure),
        it resumes the session when the server still has it.  While an
        automatic reconnection is under way it fires with its welcome, and a
        retry waiting out its backoff is made at once (say, the application
        learnt that the network is back).
        """
        if self.online and self.session.welcome is not None:
            return defer.succeed(self.session.welcome)
        if self._stopping and self._proto is not None:
            # A close() is under way: connect again once it is done.
            closing = self.when_closed()
            closing.addCallback(lambda _: self.connect())
            return closing  # type: ignore[return-value]
        if self._connected is not None:
            return _chain(self._connected)
        self._stopping = False
        self._connected = defer.Deferred()
        result = _chain(self._connected)
        self._start_housekeeping()
        if self._cycle is None:
            self._cycle = "initial"
            self._tried = 0
            self._backoff.reset()
            self._attempt_now()
        elif self._retry_call is not None and self._retry_call.active():
            # Reconnecting and waiting out the backoff: the application says now.
            self._retry_call.cancel()
            self._attempt_now()
        return result

    def send(self, type_: str, message: Message, *, reliable: bool | None = None,
             priority: int | None = None, key: str | None = None) -> bool:
        """Queue an event; everything sent in one reactor turn leaves as one frame.

        While not authenticated (connecting, reconnecting, closed) the event
        waits in the offline queue and leaves, in order, once a connection is
        authenticated.  Returns False when the full offline queue refused it
        (``on_queue_full`` was called).
        """
        if self.online:
            event = self.session.event(type_, message, reliable=reliable, priority=priority,
                                       key=key)
            self.session.queue(event)
            self._schedule_flush()
            return True
        item = self.session.prepare(type_, message, reliable=reliable, priority=priority,
                                    key=key, now=self.reactor.seconds())
        return self._queue_offline(item)

    def request(self, type_: str, message: Message, *, timeout: float = 10.0
                ) -> defer.Deferred[Incoming]:
        """Send with a correlation id; fires with the correlated reply (ServerError on error).

        Offline, the request waits in the offline queue; ``timeout`` runs from
        now either way.  Fails with QueueFull if the offline queue drops it.
        """
        correlation = next(self._correlation)
        d: defer.Deferred[Incoming] = defer.Deferred()
        self._requests[correlation] = d
        d.addTimeout(timeout, self.reactor)
        d.addBoth(self._forget_request, correlation)
        if self.online:
            event = self.session.event(type_, message, correlation_id=correlation)
            self.session.queue(event)
            self._schedule_flush()
        else:
            item = self.session.prepare(type_, message, correlation_id=correlation,
                                        now=self.reactor.seconds())
            self._queue_offline(item)
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
        """Hand the server a fresh access token for this connection (system.auth_refresh).

        Also used for the next connection attempts.
        """
        self.token = token
        return self.request("system.auth_refresh", events_pb2.AuthRefresh(token=token),
                            timeout=timeout)

    def ping(self) -> None:
        """Measure the RTT now (a no-op while offline)."""
        if not self.online:
            return
        self.session.queue(self.session.ping(self.monotonic_ns()))
        self._flush()

    def when_closed(self) -> defer.Deferred[ClientClosed]:
        """Fires when the client is DISCONNECTED: closed, refused, or done retrying.

        A connection lost while an automatic reconnection follows does not
        fire it (watch ``on_state`` for RECONNECTING).
        """
        d: defer.Deferred[ClientClosed] = defer.Deferred()
        if (self.state is State.DISCONNECTED and self._proto is None
                and self._cycle is None):
            d.callback(ClientClosed(self.close_code, self.close_reason))
        else:
            self._closed_waiters.append(d)
        return d

    def close(self, code: int = 1000, reason: str = "bye") -> defer.Deferred[ClientClosed]:
        """Close for good: no automatic reconnect.

        With 1000 the server ends the session (a later ``connect()`` starts a
        new one); another code leaves it resumable.
        """
        d = self.when_closed()
        self._stopping = True
        self._stop_trying()
        if code == 1000:
            self.resume_token = ""  # the server ends the session on a clean goodbye
        if self._proto is not None:
            self._flush()
            self._proto.sendClose(code, reason)
        elif (self.state is not State.DISCONNECTED or self._connected is not None
              or self._cycle is not None):
            self._abandon_attempt()
            self._finish(ClientClosed(self.close_code, self.close_reason or "closed"))
        return d

    def abort(self, *, reconnect: bool = False) -> None:
        """Drop the TCP connection without a close handshake.

        The server keeps the session (resumable with ``connect()``).  With
        ``reconnect=True`` this simulates a network failure: the client
        reconnects by itself, as after any unexpected loss.
        """
        proto = self._proto or self._attempt_proto
        if reconnect:
            if proto is not None:
                proto.dropConnection(abort=True)
            return
        self._stopping = True
        self._stop_trying()
        if proto is not None:
            proto.dropConnection(abort=True)  # _closed() finishes the job
        elif self.state is not State.DISCONNECTED or self._connected is not None:
            self._abandon_attempt()
            self._finish(ClientClosed(self.close_code, self.close_reason or "aborted"))

    # ------------------------------------------------------------------ connection cycle

    def _attempt_now(self) -> None:
        """One connection attempt of the current cycle (after the token, if one is due)."""
        self._retry_call = None
        if self._cycle is None:
            return
        provider = self.token_provider
        if provider is None or (self._cycle == "initial" and self.token):
            self._dial_next()
            return
        requested = defer.maybeDeferred(provider)
        self._token_request = requested

        def got(token: Any) -> None:
            if self._token_request is not requested:
                return
            self._token_request = None
            if token:
                self.token = str(token)
            self._dial_next()

        def failed(failure: Failure) -> None:
            if self._token_request is not requested:
                return
            self._token_request = None
            log.failure("token_provider failed", failure)
            self._attempt_failed(failure)

        requested.addCallbacks(got, failed)

    def _dial_next(self) -> None:
        url = self._preferred_url or self.urls[self._index]
        self._preferred_url = None
        self._to(State.CONNECTING)
        d = self._dial(url)
        d.addCallbacks(self._attempt_succeeded, self._attempt_failed)

    def _dial(self, url: str) -> defer.Deferred[events_pb2.Welcome]:
        """One connection attempt to ``url``: fires with the Welcome, fails with why not.

        The only step that touches the network (tests replace it).
        """
        self._url = url
        dialing: defer.Deferred[events_pb2.Welcome] = defer.Deferred()
        self._dialing = dialing
        factory = self._factory(url)
        factory.attempt = dialing  # type: ignore[attr-defined]  # tags this attempt's protocols
        tcp = self._endpoint(url).connect(factory)
        self._tcp = tcp

        def connected(proto: _Protocol) -> None:
            self._tcp = None
            if self._dialing is not dialing:
                proto.dropConnection(abort=True)
            else:
                self._attempt_proto = proto

        def failed(failure: Failure) -> None:
            if self._tcp is tcp:
                self._tcp = None
            if self._dialing is dialing:
                self._end_dial(failure)

        tcp.addCallbacks(connected, failed)
        self._timeout = self.reactor.callLater(self.connect_timeout, self._dial_timed_out)
        return dialing

    def _end_dial(self, result: events_pb2.Welcome | Failure) -> None:
        dialing, self._dialing = self._dialing, None
        self._cancel_timeout()
        if isinstance(result, Failure):
            self._attempt_proto = None
        if dialing is not None and not dialing.called:
            if isinstance(result, Failure):
                dialing.errback(result)
            else:
                dialing.callback(result)

    def _dial_timed_out(self) -> None:
        self._timeout = None
        dialing = self._dialing
        if dialing is None:
            return
        proto = self._proto or self._attempt_proto
        if self._proto is not None:
            self._teardown_connection()
        self._abandon_attempt()  # its late close or connect is ignored from here on
        if proto is not None:
            proto.dropConnection(abort=True)
        if not dialing.called:
            dialing.errback(defer.TimeoutError(f"no welcome within {self.connect_timeout}s"))

    def _attempt_succeeded(self, welcome: events_pb2.Welcome) -> None:
        self._cycle = None
        self._backoff.reset()
        d, self._connected = self._connected, None
        if d is not None and not d.called:
            d.callback(welcome)

    def _attempt_failed(self, failure: Failure) -> None:
        if self._cycle is None:
            return  # closed meanwhile
        reason: BaseException = failure.value or Exception("connection failed")
        if isinstance(reason, ClientClosed):
            self.close_code, self.close_reason = reason.code, reason.reason
        else:
            self.close_code, self.close_reason = None, str(reason) or type(reason).__name__
        if self._is_fatal(reason):
            self._finish(self._closed_exception(reason), failure)
            return
        if self._cycle == "initial":
            self._tried += 1
            if self._tried >= len(self.urls):
                self._finish(self._closed_exception(reason), failure)
                return
            self._rotate()
            self._attempt_now()
            return
        if not self._backoff.failed():
            log.warn("giving up after {n} reconnection attempts: {why}",
                     n=self._backoff.failures, why=self.close_reason)
            self._finish(self._closed_exception(reason), failure)
            return
        self._rotate()
        self._to(State.RECONNECTING)
        self._schedule_retry(self._backoff.next_delay())

    def _is_fatal(self, reason: BaseException) -> bool:
        """Would another attempt fail the same way?"""
        if isinstance(reason, ClientClosed):
            if reason.code in NO_RECONNECT:
                return True
            if reason.disconnect is not None and not reason.disconnect.reconnect:
                return True
            if reason.http_status in _AUTH_REFUSED:
                # A token_provider may have a fresh token for the next attempt.
                return self.token_provider is None or self._cycle == "initial"
        return False

    def _closed_exception(self, reason: BaseException) -> ClientClosed:
        attempts = self._backoff.failures if self._cycle == "reconnect" else self._tried
        if isinstance(reason, ClientClosed):
            reason.attempts = attempts
            return reason
        return ClientClosed(None, str(reason) or type(reason).__name__, attempts=attempts)

    def _rotate(self) -> None:
        self._index = (self._index + 1) % len(self.urls)

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = self.reactor.callLater(max(0.0, delay), self._attempt_now)

    def _should_reconnect(self, code: int | None) -> bool:
        if self.policy is None or self._stopping:
            return False
        if code is not None and code in NO_RECONNECT:
            return False
        return self.disconnect is None or self.disconnect.reconnect

    def _connection_lost(self, code: int | None, reason: str | None) -> None:
        """The authenticated connection is gone: reconnect, or end up DISCONNECTED."""
        self._teardown_connection()
        self.close_code, self.close_reason = code, reason
        if not self._should_reconnect(code):
            self._finish(ClientClosed(code, reason, disconnect=self.disconnect))
            return
        log.info("connection lost ({code}: {reason}); reconnecting", code=code, reason=reason)
        self._cycle = "reconnect"
        self._backoff.reset()
        self._to(State.RECONNECTING)
        if self._drain_at is not None:
            delay = self._drain_at - self.reactor.seconds()  # the spread the server asked for
            self._drain_at = None
        else:
            delay = self._backoff.next_delay()
        self._schedule_retry(delay)

    def _finish(self, closed: ClientClosed, failure: Failure | None = None) -> None:
        """DISCONNECTED for good: stop every timer, tell everyone waiting."""
        self._stop_trying()
        self._teardown_connection()
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        self._housekeeping = None
        self.close_code, self.close_reason = closed.code, closed.reason
        self.last_close = closed
        self._to(State.DISCONNECTED)
        d, self._connected = self._connected, None
        if d is not None and not d.called:
            d.errback(failure if failure is not None else Failure(closed))
        for correlation in list(self._requests):
            request = self._requests.pop(correlation)
            if not request.called:
                request.errback(ClientClosed(closed.code, closed.reason))
        if self.on_closed is not None:
            try:
                self.on_closed(closed)
            except Exception:
                log.failure("on_closed callback failed")
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(ClientClosed(closed.code, closed.reason,
                                         http_status=closed.http_status,
                                         disconnect=closed.disconnect,
                                         attempts=closed.attempts))

    def _stop_trying(self) -> None:
        """Cancel the reconnection cycle's timers (the attempt in flight is left alone)."""
        self._cycle = None
        for call in (self._retry_call, self._drain_call):
            if call is not None and call.active():
                call.cancel()
        self._retry_call = self._drain_call = None
        self._drain_at = None
        request, self._token_request = self._token_request, None
        if request is not None and not request.called:
            request.cancel()

    def _abandon_attempt(self) -> None:
        """Give up the attempt in flight, if any (a close or a timeout)."""
        self._cancel_timeout()
        self._dialing = None
        tcp, self._tcp = self._tcp, None
        if tcp is not None and not tcp.called:
            tcp.cancel()
        proto, self._attempt_proto = self._attempt_proto, None
        if proto is not None and proto is not self._proto:
            proto.dropConnection(abort=True)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def _teardown_connection(self) -> None:
        """Forget the connection's own timers and state (the session stays)."""
        self._proto = None
        self._bucket = None
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self.session.connection_lost()

    def _to(self, new: State) -> None:
        """Move to ``new`` through RECONNECTING when the table has no direct edge."""
        machine = self.session.machine
        if machine.state is new:
            return
        if not machine.can(new) and machine.can(State.RECONNECTING):
            machine.to(State.RECONNECTING)
        if machine.can(new):
            machine.to(new)

    def _start_housekeeping(self) -> None:
        if self._housekeeping is not None and self._housekeeping.running:
            return
        self._housekeeping = task.LoopingCall(self._expire)
        self._housekeeping.clock = self.reactor
        interval = min(1.0, max(0.05, self.session.reliable_timeout / 10))
        self._housekeeping.start(interval, now=False)

    # ------------------------------------------------------------------ offline queue

    def _queue_offline(self, item: QueuedSend) -> bool:
        dropped = self.session.queue_offline(item)
        for victim in dropped:
            self._dropped(victim)
        return item not in dropped

    def _dropped(self, item: QueuedSend) -> None:
        if self.on_queue_full is not None:
            try:
                self.on_queue_full(item.type)
            except Exception:
                log.failure("on_queue_full callback failed")
        request = self._requests.get(item.correlation_id) if item.correlation_id else None
        if request is not None and not request.called:
            request.errback(QueueFull(item.type))

    def _expire(self) -> None:
        """Give up on reliable events unacknowledged (or unsent) for ``reliable_timeout``."""
        now = self.reactor.seconds()
        for pending in self.session.expire(now):
            self._give_up(pending.event.type, pending.seq, pending.on_give_up)
        for queued in self.session.expire_offline(now):
            self._give_up(queued.type, 0, queued.on_give_up)
            request = self._requests.get(queued.correlation_id) if queued.correlation_id \
                else None
            if request is not None and not request.called:
                request.errback(defer.TimeoutError(f"{queued.type} never sent"))

    def _give_up(self, type_: str, seq: int,
                 callback: Callable[[str, int], object] | None) -> None:
        callback = callback or self.on_give_up
        if callback is None:
            return
        try:
            callback(type_, seq)
        except Exception:
            log.failure("give-up callback failed")

    # ------------------------------------------------------------------ plumbing

    def _factory(self, url: str | None = None) -> WebSocketClientFactory:
        url = url or self.url
        headers = {}
        via = self.token_via
        if self.token and via == "header":
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.token and via == "query":
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

    def _endpoint(self, url: str | None = None) -> Any:
        parts = urlparse(url or self.url)
        host = parts.hostname or "127.0.0.1"
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        endpoint = endpoints.HostnameEndpoint(self.reactor, host, port)
        if secure:
            from twisted.internet import ssl

            return endpoints.wrapClientTLS(ssl.optionsForClientTLS(host), endpoint)
        return endpoint

    def _opened(self, proto: _Protocol) -> None:
        if getattr(proto.factory, "attempt", None) is not self._dialing or self._dialing is None:
            proto.dropConnection(abort=True)  # an attempt given up meanwhile
            return
        self._proto = proto
        self._attempt_proto = None
        self.disconnect = None
        self.draining = None
        self._last_received = self.reactor.seconds()
        self._to(State.CONNECTED)
        in_band = self.token_via == "hello"  # noqa: S105 - a mode, not a secret
        token = self.token if in_band else ""
        self._resume_attempted = bool(self.resume_token)
        proto.sendMessage(self.session.hello(token=token, resume_token=self.resume_token),
                          isBinary=True)
        self._to(State.AUTHENTICATING)

    def _received(self, proto: _Protocol, payload: bytes, is_binary: bool) -> None:
        if proto is not self._proto:
            return
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
            if proto is not self._proto:
                return  # a handler closed the connection
        if self.session.has_output:
            self._schedule_flush()

    def _dispatch(self, incoming: Incoming) -> None:
        t = incoming.type
        msg = incoming.message
        welcomed: events_pb2.Welcome | None = None
        if t == "system.welcome" and isinstance(msg, events_pb2.Welcome):
            welcomed = msg if self._welcomed(msg) else None
        elif t == "system.ping" and isinstance(msg, events_pb2.Ping):
            self.session.queue(ClientSession.pong_for(msg))
            self._schedule_flush()
        elif t == "system.pong" and isinstance(msg, events_pb2.Pong):
            self.session.on_pong(msg, self.monotonic_ns())
        elif t == "system.disconnect" and isinstance(msg, events_pb2.Disconnect):
            self.disconnect = msg
        elif t == "server.draining" and isinstance(msg, events_pb2.Draining):
            self.draining = msg
            self._drain(msg)
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
        if welcomed is not None:
            self._end_dial(welcomed)  # connect() fires after the welcome's handlers

    def _welcomed(self, welcome: events_pb2.Welcome) -> bool:
        if self.state is not State.AUTHENTICATING:
            return False  # a second welcome on one connection: ignore
        resync = self._resume_attempted and (not welcome.resumed or welcome.full_resync)
        if self._cycle == "reconnect":
            self.reconnects += 1
        self.session.on_welcome(welcome)  # schedules the resend of unacknowledged events
        self.resume_token = welcome.reconnect_token  # tokens rotate on every use
        self._cancel_timeout()
        limits = welcome.limits
        if limits.messages_per_second > 0 and limits.messages_burst > 0:
            burst = max(1, limits.messages_burst - _BURST_MARGIN)
            self._bucket = TokenBucket(limits.messages_per_second * _RATE_MARGIN, burst,
                                       self.reactor.seconds())
        # Offline events go before anything sent from the callbacks below.
        self.session.flush_offline()
        self._to(State.AUTHENTICATED)
        interval = max(1, welcome.heartbeat_interval_s or 10)
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(interval, now=False)
        if resync and self.on_resync is not None:
            try:
                self.on_resync(welcome)
            except Exception:
                log.failure("on_resync callback failed")
        self._flush()
        return True

    def _drain(self, msg: events_pb2.Draining) -> None:
        """The server is shutting down: leave at a random point of its spread window."""
        if self.policy is None or self._stopping:
            return
        if msg.reconnect_url:
            self._preferred_url = msg.reconnect_url
        elif len(self.urls) > 1:
            current = self.urls.index(self.url) if self.url in self.urls else self._index
            self._index = (current + 1) % len(self.urls)
        delay = self._backoff.spread(msg.retry_after_ms / 1000)
        self._drain_at = self.reactor.seconds() + delay
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = self.reactor.callLater(delay, self._leave_draining)

    def _leave_draining(self) -> None:
        """Our moment in the spread window came before the server's close: move now."""
        self._drain_call = None
        if self._proto is not None and self.state is State.AUTHENTICATED:
            self._flush()
            # 1001, not 1000: the server keeps the session, for the resume elsewhere.
            self._proto.sendCloseFrame(code=1001, reasonUtf8=b"server draining: moving",
                                       isReply=False)

    def _beat(self) -> None:
        welcome = self.session.welcome
        proto = self._proto
        if welcome is not None and proto is not None:
            silence = self.reactor.seconds() - self._last_received
            if silence > welcome.heartbeat_interval_s + welcome.heartbeat_timeout_s:
                log.warn("no traffic from the server for {s:.1f}s: dropping", s=silence)
                proto.dropConnection(abort=True)
                return
        self.ping()

    def _schedule_flush(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send what is due, in frames within the server's limits and at its rate."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        proto = self._proto
        if proto is None or self.state is not State.AUTHENTICATED:
            return
        if proto.state != WebSocketClientProtocol.STATE_OPEN:
            return  # closing: what is queued waits for the next connection
        limits = self.session.welcome.limits if self.session.welcome is not None else None
        max_events = (limits.max_events_per_frame or None) if limits is not None else None
        size = self.session.max_message_size
        max_bytes = size - 1024 if size > 4096 else size // 2
        now = self.reactor.seconds()
        while self.session.has_output:
            allowed = max_events
            bucket = self._bucket
            if bucket is not None:
                bucket.take(now, 0)  # refill
                tokens = int(bucket.tokens + 1e-9)  # float dust must not stall the queue
                if tokens < 1:
                    wait = max(0.001, (1 - bucket.tokens) / bucket.rate)
                    self._flush_call = self.reactor.callLater(wait, self._flush)
                    return
                allowed = tokens if allowed is None else min(allowed, tokens)
            frame = self.session.take_frame(now, max_events=allowed, max_bytes=max_bytes)
            if frame is None:
                return
            if bucket is not None:
                bucket.tokens = max(0.0, bucket.tokens - self.session.last_frame_events)
            proto.sendMessage(frame, isBinary=True)

    def _forget_request(self, result: Any, correlation: int) -> Any:
        self._requests.pop(correlation, None)
        self.session.cancel_offline(correlation)
        return result

    def _closed(self, proto: _Protocol, code: int | None, reason: str | None) -> None:
        attempt = getattr(proto.factory, "attempt", None)
        if self._dialing is not None and attempt is self._dialing:
            # Closed before the welcome: this attempt failed.
            if self._proto is proto:
                self._teardown_connection()
            self._attempt_proto = None
            match = _UPGRADE_STATUS.search(reason or "")
            failure = Failure(ClientClosed(
                code, reason, http_status=int(match.group(1)) if match else None,
                disconnect=self.disconnect))
            if self._stopping:
                self._dialing = None
                self._cancel_timeout()
                self._finish(ClientClosed(code, reason, disconnect=self.disconnect))
                return
            self._end_dial(failure)
            return
        if proto is not self._proto:
            return  # an abandoned attempt or an old connection
        if self._stopping:
            self._teardown_connection()
            self._finish(ClientClosed(code, reason, disconnect=self.disconnect))
            return
        self._connection_lost(code, reason)


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
