"""The gateway: admission, handshake, dispatch, heartbeat and drain.

This is the one place that knows the protocol's rules end to end.  It talks
to connections through the :class:`gateway.hub.Transport` interface and to
time through an injected ``IReactorTime`` and monotonic clock, so tests drive
it with ``task.Clock`` and in-memory transports; ``gateway.ws`` adapts it to
Autobahn.
"""

from __future__ import annotations

import math
import secrets
import time
import types
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import SUBPROTOCOL
from gateway.auth import AuthError, Identity, TokenVerifier
from gateway.backend.base import Backend
from gateway.bus import Fanout
from gateway.codes import NO_RECONNECT, CloseCode, ErrorCode
from gateway.config import Config
from gateway.connection import Connection, Disconnect
from gateway.delivery import Delivery
from gateway.events import (
    EventContext,
    EventError,
    EventRegistry,
    EventSpec,
    Router,
    parse_inbound,
)
from gateway.hub import Hub, Transport
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBucket
from gateway.session.core import player_topic, session_topic
from gateway.session.manager import SessionManager, SessionOpened
from gateway.states import State
from gateway.system_events import register as register_system_events
from gateway.wire import COMPRESSION_NAMES, OutEvent
from protocol import events_pb2, internal_pb2

__all__ = ["Admission", "Gateway", "HandshakeRequest", "Reject"]

log = Logger()

#: Seconds after the 1001 close frames before connections still open are aborted.
DRAIN_ABORT_AFTER = 3.0

SYSTEM_LOCAL = frozenset(
    {"system.hello", "system.ping", "system.pong", "system.auth_refresh", "system.ack"}
)


class Reject(Exception):  # noqa: N818 - an HTTP answer, not a bug
    """Refuse the WebSocket upgrade with an HTTP status (no body beyond the reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class HandshakeRequest:
    """What admission needs from the HTTP upgrade request."""

    path: str
    peer_host: str
    headers: Mapping[str, str]  # lower-cased names
    params: Mapping[str, list[str]]
    protocols: tuple[str, ...]
    origin: str | None


@dataclass(frozen=True)
class Admission:
    subprotocol: str
    identity: Identity | None  # None: token expected in system.hello (auth.allow_in_band)


class Gateway:
    """One instance's protocol engine."""

    def __init__(
        self,
        config: Config,
        verifier: TokenVerifier,
        *,
        clock: IReactorTime,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        metrics: Metrics | None = None,
        registry: EventRegistry | None = None,
        instance_id: str = "",
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.clock = clock
        self.monotonic_ns = monotonic_ns
        self.metrics = metrics or Metrics()
        self.registry = registry or EventRegistry()
        if "system.hello" not in self.registry:
            register_system_events(self.registry)
        self.router = Router(on_failure=self._handler_failed)
        self.hub = Hub()
        self.hub.on_close = self._closing
        # observer(transport, "in" | "out", raw frame): the hub's list, shared (recording).
        self.frame_observers = self.hub.frame_observers
        self.delivery = Delivery(self.registry, self.hub, self.metrics)
        self.hub.clock = self.now
        self.sessions: SessionManager | None = None
        self.fanout: Fanout | None = None
        self.instance_id = instance_id or config.server.instance_id or secrets.token_hex(4)
        self.draining = False
        self.listening = False
        self.backend_ready: Callable[[], bool] = lambda: True
        self._per_ip: dict[str, int] = {}
        self._pending = 0  # upgrades being authenticated
        self._in_counters: dict[str, tuple[Any, Any]] = {}
        self._versions_cache: dict[frozenset[tuple[str, int]], Mapping[str, int]] = {}
        self._compression_sets: dict[frozenset[int], frozenset[int]] = {}
        self._sweeper: task.LoopingCall | None = None
        self._drain_call: IDelayedCall | None = None
        self._drained: defer.Deferred[None] | None = None
        self._closed_waiters: list[defer.Deferred[None]] = []
        self.on_authenticated: list[Callable[[Transport], object]] = []
        self.on_disconnected: list[Callable[[Transport], object]] = []
        preference = [COMPRESSION_NAMES[n] for n in config.compression.algorithms]
        self._compression_preference = preference

    # ------------------------------------------------------------------ lifecycle

    def attach(self, backend: Backend, sessions: SessionManager, fanout: Fanout) -> None:
        """Connect the engine to a backend: sessions, topic logs and the bus."""
        self.sessions = sessions
        self.fanout = fanout
        # Bound once: every connection shares these hook objects (memory per connection).
        self._on_sequenced = self._on_sequenced  # type: ignore[method-assign]
        self._on_ack = self._on_ack  # type: ignore[method-assign]
        self.delivery.sessions = sessions
        self.delivery.fanout = fanout
        self.backend_ready = lambda: backend.ready
        self.hub.persist = self._persist
        self.hub.needs_persist = sessions.needs_persist
        self.hub.on_topic_added = fanout.subscribe
        self.hub.on_topic_removed = fanout.unsubscribe
        fanout.on_event = self.delivery.remote
        fanout.on_control = self._control

    def _shared_versions(self, versions: dict[str, int]) -> Mapping[str, int]:
        """One read-only mapping per distinct negotiation result, shared by connections.

        Nearly every client of a release negotiates the same versions: one copy
        instead of one dict per connection.  Bounded, since clients choose what
        they offer.
        """
        key = frozenset(versions.items())
        shared = self._versions_cache.get(key)
        if shared is None:
            shared = types.MappingProxyType(versions)
            if len(self._versions_cache) < 1000:
                self._versions_cache[key] = shared
        return shared

    def _on_sequenced(self, conn: Connection, seq: int, event: OutEvent) -> None:
        assert self.sessions is not None
        self.sessions.sequenced(conn, seq, event)

    def _on_ack(self, conn: Connection, ack: int) -> None:
        assert self.sessions is not None
        self.sessions.acked(conn, ack)

    def _persist(self, conns: list[Connection]) -> defer.Deferred[None]:
        assert self.sessions is not None
        if not self.sessions.backend.ready:
            # Local traffic keeps flowing while the store is down; resume may then resync.
            self.metrics.persist_skipped.inc(len(conns))
            for conn in conns:
                if conn.session is not None:
                    conn.session.journal.clear()
            return defer.succeed(None)
        return self.sessions.persist(conns)

    def start(self) -> None:
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(1.0, now=False)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()

    def now(self) -> float:
        return self.clock.seconds()

    @property
    def ready(self) -> bool:
        return self.listening and not self.draining and self.backend_ready()

    # ------------------------------------------------------------------ admission

    def admit(self, request: HandshakeRequest) -> defer.Deferred[Admission]:
        """Decide the HTTP upgrade: every refusal is an HTTP status, before any WebSocket."""
        try:
            self._check_request(request)
        except Reject as exc:
            self.metrics.handshakes.labels(str(exc.status)).inc()
            return defer.fail(exc)
        token = _token_from(request)
        if not token:
            if self.config.auth.allow_in_band:
                return defer.succeed(Admission(SUBPROTOCOL, None))
            return defer.fail(self._auth_failed(AuthError("missing", "no token")))
        self._pending += 1
        d = self.verifier.verify(token)

        def done(result: Identity | Failure) -> Admission:
            self._pending -= 1
            if isinstance(result, Failure):
                if result.check(AuthError):
                    raise self._auth_failed(_err(result))
                log.failure("token verification crashed", result)
                self.metrics.handshakes.labels("500").inc()
                raise Reject(500, "Internal Server Error")
            if self.draining:
                raise Reject(503, "Service Unavailable")
            return Admission(SUBPROTOCOL, result)

        return d.addBoth(done)

    def _check_request(self, request: HandshakeRequest) -> None:
        if request.path != self.config.server.path:
            raise Reject(404, "Not Found")
        if self.draining:
            raise Reject(503, "Service Unavailable")
        allowed = self.config.server.allowed_origins
        if allowed and request.origin is not None and request.origin not in allowed:
            raise Reject(403, "Forbidden")
        if SUBPROTOCOL not in request.protocols:
            raise Reject(400, f"Bad Request: subprotocol {SUBPROTOCOL} required")
        limits = self.config.limits
        if len(self.hub) + self._pending >= limits.max_connections:
            raise Reject(503, "Service Unavailable")
        if self._per_ip.get(request.peer_host, 0) >= limits.max_connections_per_ip:
            raise Reject(429, "Too Many Requests")

    def _auth_failed(self, exc: AuthError) -> Reject:
        self.metrics.auth_failures.labels(exc.reason).inc()
        self.metrics.handshakes.labels("401").inc()
        return Reject(401, "Unauthorized")

    def new_connection(self, peer_host: str) -> Connection:
        return Connection(
            peer_host,
            self.config.limits,
            self.config.heartbeat,
            self.now(),
            max_unacked=self.config.session.max_replay_events,
        )

    # ------------------------------------------------------------------ connection events

    def opened(self, transport: Transport, admission: Admission) -> None:
        conn = transport.connection
        conn.machine.observe(self._count_state)
        self.metrics.connections.labels(State.CONNECTING.value).inc()
        self._per_ip[conn.peer] = self._per_ip.get(conn.peer, 0) + 1
        self.hub.add(transport)
        conn.machine.to(State.CONNECTED)
        if admission.identity is not None:
            self._set_identity(conn, admission.identity)

    def _count_state(self, old: State, new: State) -> None:
        self.metrics.connections.labels(old.value).dec()
        if new is not State.DISCONNECTED:
            self.metrics.connections.labels(new.value).inc()

    def received(self, transport: Transport, data: bytes) -> None:
        """One inbound WebSocket message.  Never raises: failures close this connection only."""
        conn = transport.connection
        self.metrics.frames_in.inc()
        self.metrics.wire_bytes_in.inc(len(data))
        if self.frame_observers:
            self.hub.observe_frame(transport, "in", data)
        before = conn.last_in_seq
        try:
            envelopes = conn.receive(data, self.now())
            if conn.last_in_seq != before and self.sessions is not None:
                # Client events were numbered: the write-behind records how far we got,
                # so a resume elsewhere drops their resends instead of handling them twice.
                self.sessions.touched(conn)
            for env in envelopes:
                self._handle(transport, env)
        except Disconnect as exc:
            self.metrics.bad_input.labels(exc.code.name.lower()).inc()
            self.close(transport, exc.code, exc.reason)
            return
        except Exception:
            log.failure("unexpected error handling input from connection {id}", id=conn.id)
            self.close(transport, CloseCode.INTERNAL, "internal error")
            return
        if conn.urgent and conn.state is not State.DISCONNECTED:
            self.hub.flush_one(transport, self.now())

    def closed(self, transport: Transport, code: int | None, *, goodbye: bool = False) -> None:
        """The transport is gone.  ``goodbye``: the client closed cleanly with 1000."""
        conn = transport.connection
        if conn.state is State.DISCONNECTED:
            return
        topics = tuple(conn.topics)
        self.hub.remove(transport)
        count = self._per_ip.get(conn.peer, 0) - 1
        if count > 0:
            self._per_ip[conn.peer] = count
        else:
            self._per_ip.pop(conn.peer, None)
        was_authenticated = conn.authenticated
        conn.machine.to(State.DISCONNECTED)
        self.metrics.closes.labels(_close_label(code)).inc()
        if self.sessions is not None and conn.session is not None and not conn.session.replaced:
            end = goodbye or (code is not None and code in NO_RECONNECT)
            d = self.sessions.end(conn) if end else self.sessions.suspend(conn, topics)
            d.addErrback(lambda f: log.failure("session bookkeeping failed", f))
        if was_authenticated:
            for hook in tuple(self.on_disconnected):
                try:
                    hook(transport)
                except Exception:
                    log.failure("disconnect hook failed")
        if self._drained is not None and not self._drained.called and not len(self.hub):
            self._finish_drain()

    # ------------------------------------------------------------------ inbound events

    def _handle(self, transport: Transport, env: events_pb2.Envelope) -> None:
        conn = transport.connection
        if not conn.authenticated:
            if env.type != "system.hello":
                raise Disconnect(CloseCode.NOT_AUTHENTICATED, "system.hello must come first")
            if conn.state is not State.CONNECTED:
                raise Disconnect(CloseCode.NOT_AUTHENTICATED, "system.hello already received")
            self._hello(transport, env)
            return
        try:
            spec, version, message, size = parse_inbound(self.registry, env, conn.versions)
        except EventError as exc:
            if exc.code is ErrorCode.FORBIDDEN_DIRECTION:
                self.metrics.injection_attempts.inc()
            self.metrics.bad_input.labels(exc.code.name.lower()).inc()
            self.send_error(transport, exc.code, exc.message, env)
            return
        conn.count_in(spec.type, size)
        counters = self._in_counters.get(spec.type)
        if counters is None:  # labels() is a dict lookup under a lock: resolve once per type
            counters = self._in_counters[spec.type] = (
                self.metrics.messages_in.labels(spec.type),
                self.metrics.bytes_in.labels(spec.type),
            )
        counters[0].inc()
        counters[1].inc(size)
        if spec.rate_limit is not None and not self._type_allowed(conn, spec):
            conn.stats.rate_limited += 1
            self.send_error(transport, ErrorCode.RATE_LIMITED, f"{spec.type} rate limit", env)
            return
        if spec.type in SYSTEM_LOCAL:
            self._system(transport, spec, message, env)
            return
        ctx = EventContext(conn, spec, version, env.seq, env.correlation_id, self)
        try:
            for validator in spec.validators:
                validator(ctx, message)
        except Exception as exc:
            self.metrics.bad_input.labels("validation_failed").inc()
            self.send_error(transport, ErrorCode.VALIDATION_FAILED, str(exc)[:200], env)
            return
        if not self.router.dispatch(ctx, message):
            self.send_error(transport, ErrorCode.NO_HANDLER, f"nothing handles {spec.type}", env)

    def _type_allowed(self, conn: Connection, spec: EventSpec) -> bool:
        assert spec.rate_limit is not None
        # Kept on the connection: they go with it, no search on close.
        buckets = conn.type_buckets
        if buckets is None:
            buckets = conn.type_buckets = {}
        bucket = buckets.get(spec.type)
        if bucket is None:
            rate, burst = spec.rate_limit
            bucket = buckets[spec.type] = TokenBucket(rate, burst, self.now())
        return bucket.take(self.now())

    def _system(
        self, transport: Transport, spec: EventSpec, message: Any, env: events_pb2.Envelope
    ) -> None:
        conn = transport.connection
        if spec.type == "system.ping":
            pong = events_pb2.Pong(nonce=message.nonce, sent_ns=message.sent_ns)
            self.send_to_connection(conn, "system.pong", pong, urgent=True)
        elif spec.type == "system.pong":
            rtt = conn.on_pong(message, self.monotonic_ns())
            if rtt is not None:
                self.metrics.rtt.observe(rtt)
        elif spec.type == "system.auth_refresh":
            self._refresh(transport, message.token, env)
        # system.hello after welcome and system.ack need nothing more.

    def _hello(self, transport: Transport, env: events_pb2.Envelope) -> None:
        conn = transport.connection
        hello = events_pb2.Hello()
        try:
            hello.ParseFromString(env.payload)
        except DecodeError:
            raise Disconnect(CloseCode.BAD_FRAME, "system.hello does not parse")
        conn.machine.to(State.AUTHENTICATING)
        if conn.player_id:
            self._welcome(transport, hello)
            return
        if not hello.token:
            self.metrics.auth_failures.labels("missing").inc()
            raise Disconnect(CloseCode.AUTH_FAILED, "token required in system.hello")
        d = self.verifier.verify(hello.token)

        def verified(identity: Identity) -> None:
            if conn.state is not State.AUTHENTICATING:
                return  # closed while the token was being checked
            self._set_identity(conn, identity)
            self._welcome(transport, hello)
            self.hub.flush_one(transport, self.now())

        def failed(failure: Failure) -> None:
            reason = _err(failure).reason if failure.check(AuthError) else "internal"
            if not failure.check(AuthError):
                log.failure("in-band token verification crashed", failure)
            self.metrics.auth_failures.labels(reason).inc()
            if conn.state is State.AUTHENTICATING:
                self.close(transport, CloseCode.AUTH_FAILED, "invalid token", reconnect=False)

        d.addCallbacks(verified, failed)

    def _set_identity(self, conn: Connection, identity: Identity) -> None:
        conn.player_id = identity.player_id
        conn.token_expires_at = identity.expires_at
        conn.claims = identity.claims

    def _welcome(self, transport: Transport, hello: events_pb2.Hello) -> None:
        conn = transport.connection
        offered = {t: list(v.versions) for t, v in hello.versions.items()}
        conn.versions = self._shared_versions(self.registry.negotiate(offered))
        missing = [t for t in ("system.welcome", "system.error") if t not in conn.versions]
        if missing:
            raise Disconnect(CloseCode.UNSUPPORTED_VERSION, f"no common version of {missing[0]}")
        accepted = set(hello.compression)
        # Interned: a handful of distinct sets, shared by every connection.
        accepted_set = frozenset(accepted & set(self._compression_preference))
        conn.accepted_compression = self._compression_sets.setdefault(accepted_set, accepted_set)
        for codec in self._compression_preference:
            if codec in accepted:
                conn.compression = codec
                break
        conn.compression_threshold = self.config.compression.threshold
        conn.zlib_level = self.config.compression.zlib_level
        d = self._establish(transport, hello)
        d.addErrback(self._establish_failed, transport)

    def _establish_failed(self, failure: Failure, transport: Transport) -> None:
        if failure.check(Disconnect):
            self.close(transport, _err(failure).code, _err(failure).reason)
            return
        log.failure("session set-up failed for {player}", failure,
                    player=transport.connection.player_id)
        self.close(transport, CloseCode.INTERNAL, "session set-up failed")

    @defer.inlineCallbacks
    def _establish(
        self, transport: Transport, hello: events_pb2.Hello
    ) -> Generator[defer.Deferred[Any], Any, None]:
        """Open or resume the session, restore subscriptions, catch up, then welcome."""
        conn = transport.connection
        if self.sessions is None:
            opened = SessionOpened(secrets.token_hex(16), "", False, False, [], [])
            conn.session_id = opened.session_id
        else:
            opened = yield self.sessions.open(conn, hello)
        if conn.state is not State.AUTHENTICATING:
            if self.sessions is not None and conn.session is not None:
                yield self.sessions.suspend(conn, ())
            return  # the connection closed while the session was being set up
        if opened.resumed:
            self._replace_previous(conn)
        if self.sessions is not None:
            conn.on_sequenced = self._on_sequenced
            conn.on_ack = self._on_ack
        conn.machine.to(State.AUTHENTICATED)
        self.hub.bind_player(transport)
        full_resync = opened.full_resync
        catch_up = [t for t in opened.topics if not t.startswith("session:")]
        link = conn.session
        if link is not None:
            for topic in catch_up:
                link.holding[topic] = []  # live events wait until the log is read
        for topic in (player_topic(conn.player_id), session_topic(opened.session_id),
                      *opened.topics):
            self.hub.subscribe(transport, topic)
        caught: list[tuple[str, list[Any]]] = []
        if catch_up and self.sessions is not None and self.fanout is not None:
            yield self.fanout.subscribed(catch_up)  # subscribe first, then read the logs
            for topic in catch_up:
                entries, gap = yield self.sessions.catch_up(conn, topic)
                full_resync = full_resync or gap
                caught.append((topic, entries))
        if conn.state is not State.AUTHENTICATED:  # type: ignore[comparison-overlap]
            return  # closed while the logs were read (mypy cannot see the yields change it)
        self._send_welcome(transport, opened, full_resync)
        conn.replay(opened.replay)
        for topic, entries in caught:
            self._deliver_caught_up(transport, topic, entries)
        self.hub.flush_one(transport, self.now())
        for hook in tuple(self.on_authenticated):
            try:
                hook(transport)
            except Exception:
                log.failure("connect hook failed for {player}", player=conn.player_id)

    def _deliver_caught_up(self, transport: Transport, topic: str, entries: list[Any]) -> None:
        """Logged events the session missed, then the live ones held meanwhile, in order."""
        link = transport.connection.session
        held = link.holding.pop(topic, []) if link is not None else []
        for seq, entry in entries:
            spec = self.registry.get(entry.type)
            version = transport.connection.versions.get(entry.type)
            if spec is None or version is None:
                continue
            message = spec.versions[spec.latest].FromString(entry.payload)
            event = self.registry.encode(entry.type, message, version,
                                         correlation_id=entry.correlation_id)
            event.topic, event.topic_seq = topic, seq
            self.delivery.deliver_topic_event(transport, event)
        for event in held:
            self.delivery.deliver_topic_event(transport, event)

    def _replace_previous(self, conn: Connection) -> None:
        """One live connection per session: the previous one (here or elsewhere) goes."""
        owner, connection_id = getattr(conn, "previous_owner", ("", 0))
        if not owner:
            return
        if owner == self.instance_id:
            old = self.hub.get(connection_id)
            if old is not None and old.connection is not conn:
                if old.connection.session is not None:
                    old.connection.session.replaced = True
                self.close(old, CloseCode.REPLACED, "replaced by a newer connection",
                           reconnect=False)
        elif self.fanout is not None:
            control = internal_pb2.BusControl(
                action="replace", session_id=conn.session_id, code=int(CloseCode.REPLACED),
                reason="replaced by a newer connection",
            )
            self.fanout.publish_control(session_topic(conn.session_id), control)

    def _control(self, control: internal_pb2.BusControl) -> None:
        """Instructions from other instances for sessions or players held here."""
        if control.action in ("replace", "kick", "revoke") and control.session_id:
            for transport in self.hub.subscribers(session_topic(control.session_id)):
                link = transport.connection.session
                if control.action == "replace" and link is not None:
                    link.replaced = True
                code = CloseCode(control.code) if control.code in CloseCode._value2member_map_ \
                    else CloseCode.KICKED
                self.close(transport, code, control.reason or control.action, reconnect=False)

    def _send_welcome(self, transport: Transport, opened: SessionOpened,
                      full_resync: bool) -> None:
        conn = transport.connection
        limits = self.config.limits
        welcome = events_pb2.Welcome(
            session_id=conn.session_id,
            player_id=conn.player_id,
            instance_id=self.instance_id,
            server_time_us=int(self.now() * 1e6),
            heartbeat_interval_s=self.config.heartbeat.interval,
            heartbeat_timeout_s=self.config.heartbeat.timeout,
            compression=conn.compression,  # type: ignore[arg-type]
            compression_threshold=conn.compression_threshold,
            versions=conn.versions,
            limits=events_pb2.Limits(
                max_message_size=limits.max_message_size,
                max_events_per_frame=limits.max_events_per_frame,
                messages_per_second=limits.messages_per_second,
                messages_burst=limits.messages_burst,
            ),
            token_expires_at=_unix_seconds(conn.token_expires_at),
            reconnect_token=opened.reconnect_token,
            resumed=opened.resumed,
            full_resync=full_resync,
        )
        self.send_to_connection(conn, "system.welcome", welcome, urgent=True)
        self.metrics.handshakes.labels("101").inc()
        self.metrics.handshake_seconds.observe(max(0.0, self.now() - conn.connected_at))

    def _refresh(self, transport: Transport, token: str, env: events_pb2.Envelope) -> None:
        conn = transport.connection
        d = self.verifier.verify(token)

        def ok(identity: Identity) -> None:
            if identity.player_id != conn.player_id:
                self.metrics.auth_failures.labels("bad_subject").inc()
                self.send_error(
                    transport, ErrorCode.AUTH_REFRESH_FAILED, "token is for another player", env
                )
                return
            conn.token_expires_at = identity.expires_at
            msg = events_pb2.AuthRefreshed(token_expires_at=_unix_seconds(identity.expires_at))
            self.send_to_connection(
                conn, "system.auth_refreshed", msg, correlation_id=env.correlation_id, urgent=True
            )

        def bad(failure: Failure) -> None:
            reason = _err(failure).reason if failure.check(AuthError) else "internal"
            self.metrics.auth_failures.labels(reason).inc()
            self.send_error(transport, ErrorCode.AUTH_REFRESH_FAILED, f"token {reason}", env)

        d.addCallbacks(ok, bad)

    # ------------------------------------------------------------------ sending

    def encode_for(
        self, conn: Connection, type_: str, message: Message, **kw: Any
    ) -> OutEvent | None:
        version = conn.versions.get(type_)
        if version is None:
            return None  # the client speaks no version of this type
        return self.registry.encode(type_, message, version, **kw)

    def send_to_connection(
        self,
        conn: Connection,
        type_: str,
        message: Message,
        *,
        correlation_id: int = 0,
        urgent: bool = False,
        key: str | None = None,
    ) -> None:
        transport = self.hub.get(conn.id)
        if transport is None:
            return
        if type_ not in conn.versions and type_ in ("system.welcome", "system.error"):
            # Before negotiation (an error answering a bad hello): version 1 always exists.
            event: OutEvent | None = self.registry.encode(
                type_, message, 1, correlation_id=correlation_id, key=key
            )
        else:
            event = self.encode_for(conn, type_, message, correlation_id=correlation_id, key=key)
        if event is None:
            return
        self.hub.deliver(transport, event, urgent=urgent)

    def is_online(self, player_id: str) -> bool:
        """Whether the player has a connection on this instance."""
        return bool(self.hub.for_player(player_id))

    def send_to_player(self, player_id: str, type_: str, message: Message) -> None:
        self.send_to_players((player_id,), type_, message)

    def send_to_players(self, player_ids: Iterable[str], type_: str, message: Message) -> None:
        """To every connection of these players, on any instance (their player topics)."""
        self.delivery.to_players(player_ids, type_, message)

    def publish(self, topic: str, type_: str, message: Message) -> None:
        """To every subscriber of ``topic`` on any instance (see gateway.delivery)."""
        self.delivery.publish(topic, type_, message)

    def send_error(
        self,
        transport: Transport,
        code: ErrorCode,
        message: str,
        env: events_pb2.Envelope | None = None,
    ) -> None:
        err = events_pb2.Error(code=int(code), message=message)
        if env is not None:
            err.event_type = env.type[:64]
            err.seq = env.seq
            err.correlation_id = env.correlation_id
        self.send_to_connection(
            transport.connection,
            "system.error",
            err,
            correlation_id=env.correlation_id if env is not None else 0,
            urgent=True,
        )

    def _handler_failed(self, ctx: EventContext, failure: Failure) -> None:
        transport = self.hub.get(ctx.connection.id)
        if failure.check(EventError):
            # A handler refusing a request on purpose: the sender learns why; not a crash.
            self.metrics.bad_input.labels(_err(failure).code.name.lower()).inc()
            code, text = _err(failure).code, _err(failure).message[:200]
        else:
            self.metrics.handler_failures.labels(ctx.spec.type).inc()
            code, text = ErrorCode.HANDLER_FAILED, f"handling {ctx.spec.type} failed"
        if transport is None:
            return
        err = events_pb2.Error(
            code=int(code),
            message=text,
            event_type=ctx.spec.type,
            seq=ctx.seq,
            correlation_id=ctx.correlation_id,
        )
        self.send_to_connection(
            ctx.connection, "system.error", err, correlation_id=ctx.correlation_id, urgent=True
        )

    # ------------------------------------------------------------------ closing

    def close(
        self, transport: Transport, code: CloseCode, reason: str, *, reconnect: bool | None = None
    ) -> None:
        """Tell the client why (system.disconnect), then close with ``code``."""
        conn = transport.connection
        if conn.state is State.DISCONNECTED:
            return
        if reconnect is None:
            reconnect = code not in NO_RECONNECT
        if conn.authenticated and conn.paused_since is None:
            msg = events_pb2.Disconnect(code=int(code), reason=reason, reconnect=reconnect)
            event = self.encode_for(conn, "system.disconnect", msg, priority=1)
            if event is not None:
                try:
                    conn.enqueue(event)
                    frame = conn.take_frame(self.now())
                    if frame is not None:
                        transport.send_frame(frame)
                        if self.frame_observers:
                            self.hub.observe_frame(transport, "out", frame)
                except Disconnect:
                    pass
        transport.close(code, reason, reconnect=reconnect)

    def _closing(self, transport: Transport, exc: Disconnect) -> None:
        self.metrics.dropped_out.labels(exc.code.name.lower()).inc()

    # ------------------------------------------------------------------ periodic work

    def sweep(self) -> None:
        """Once a second: heartbeats, dead and stalled peers, token expiry, hello deadline."""
        now = self.now()
        mono = self.monotonic_ns()
        deadline = self.config.limits.handshake_timeout
        for transport in self.hub.transports():
            conn = transport.connection
            state = conn.state
            if state is State.DISCONNECTED:
                continue
            if state is not State.AUTHENTICATED:
                if now - conn.connected_at > deadline:
                    self.close(transport, CloseCode.HELLO_TIMEOUT, "no system.hello in time")
                continue
            if conn.is_dead(now):
                self.close(transport, CloseCode.HEARTBEAT_TIMEOUT, "no traffic from client")
            elif conn.is_stalled(now):
                self.metrics.dropped_out.labels("stalled").inc()
                self.close(transport, CloseCode.SLOW_CONSUMER, "client stopped reading")
            elif conn.token_expires_at and now > conn.token_expires_at + self.config.auth.leeway:
                self.close(transport, CloseCode.AUTH_EXPIRED, "token expired", reconnect=False)
            else:
                conn.expire_pings(now)
                if conn.ping_due(now):
                    self.hub.deliver(transport, conn.make_ping(now, mono))

    def flush(self, now: float | None = None) -> None:
        """The critical tick's flush phase: one batched frame per connection."""
        self.hub.flush(self.now() if now is None else now)

    # ------------------------------------------------------------------ drain

    def drain(self, grace: float | None = None) -> defer.Deferred[None]:
        """Stop admitting, tell everyone to reconnect elsewhere, close (1001) after the grace."""
        if self._drained is not None:
            return _chain(self._drained)
        grace = self.config.shutdown.grace_seconds if grace is None else grace
        self.draining = True
        self.metrics.draining.set(1)
        self._drained = defer.Deferred()
        result = _chain(self._drained)
        shutdown = self.config.shutdown
        msg = events_pb2.Draining(
            grace_ms=int(grace * 1000),
            reconnect_url=shutdown.reconnect_url,
            retry_after_ms=shutdown.reconnect_spread_ms,
        )
        for transport in self.hub.transports():
            if transport.connection.authenticated:
                self.send_to_connection(transport.connection, "server.draining", msg, urgent=True)
        log.info(
            "draining {count} connections, closing in {grace}s", count=len(self.hub), grace=grace
        )
        if not len(self.hub):
            self._finish_drain()
        else:
            self._drain_call = self.clock.callLater(grace, self._close_all)
        return result

    def _close_all(self) -> None:
        self.flush()
        for transport in self.hub.transports():
            transport.close(CloseCode.GOING_AWAY, "server shutting down", reconnect=True)
        # Peers that never answer the close handshake must not hold the shutdown hostage.
        self._drain_call = self.clock.callLater(DRAIN_ABORT_AFTER, self._abort_all)

    def _abort_all(self) -> None:
        for transport in self.hub.transports():
            transport.abort()

    def _finish_drain(self) -> None:
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        if self._drained is not None and not self._drained.called:
            self._drained.callback(None)


def _chain(d: defer.Deferred[None]) -> defer.Deferred[None]:
    """A new Deferred that fires with ``d`` without consuming its result."""
    out: defer.Deferred[None] = defer.Deferred()
    if d.called:
        out.callback(None)
        return out

    def relay(result: object) -> object:
        out.callback(None)
        return result

    d.addBoth(relay)
    return out


def _err(failure: Failure) -> Any:
    """The exception inside a Failure, typed loosely (callers checked its class first)."""
    return failure.value


def _close_label(code: int | None) -> str:
    """Close code as a metric label: the client picks its own codes, so only known
    ones (RFC 6455's and ours) get a series of their own."""
    code = code or 1006
    if 1000 <= code <= 1015 or code in CloseCode._value2member_map_:
        return str(code)
    return "other"


def _unix_seconds(value: float) -> int:
    """Whole seconds for the wire; 0 means "does not expire" (exp not required)."""
    return int(value) if math.isfinite(value) else 0


def _token_from(request: HandshakeRequest) -> str:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    values = request.params.get("access_token")
    return values[0] if values else ""
