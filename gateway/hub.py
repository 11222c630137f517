"""Who is connected to this instance, and delivery to them.

Delivery is deferred to the flush phase of each tick: events for one
connection in one tick leave as one frame.  Unreliable events published to a
topic are shared: their fragments are built once per tick and, for every
subscriber with nothing private queued, sent as one prepared WebSocket
message (framed once, written many times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.codes import CloseCode
from gateway.connection import Connection, Disconnect
from gateway.wire import OutEvent, compress_frame

__all__ = ["Hub", "Transport"]

log = Logger()


class Transport(Protocol):
    """The adapter's side of a connection (``gateway.ws.GatewayProtocol``)."""

    connection: Connection

    def send_frame(self, data: bytes) -> None: ...

    def send_prepared(self, prepared: Any, size: int) -> None: ...

    def close(self, code: CloseCode, reason: str, *, reconnect: bool = True) -> None: ...

    def abort(self) -> None: ...


Preparer = Callable[[bytes], Any]
#: ``observer(transport, direction, frame)``: "in" or "out", the WebSocket message as sent.
FrameObserver = Callable[["Transport", str, bytes], None]


class Hub:
    def __init__(self, prepare: Preparer | None = None) -> None:
        self._transports: dict[int, Transport] = {}
        self._by_player: dict[str, set[Transport]] = {}
        self._topics: dict[str, set[Transport]] = {}
        self._dirty: set[Transport] = set()
        self._batches: dict[str, list[OutEvent]] = {}
        self._failed: set[int] = set()  # connections closed for a Disconnect: deliver nothing more
        self.prepare = prepare
        self.clock: Callable[[], float] = lambda: 0.0  # set by the gateway (reactor seconds)
        self.on_topic_added: Callable[[str], object] | None = None
        self.on_topic_removed: Callable[[str], object] | None = None
        self.on_close: Callable[[Transport, Disconnect], object] | None = None
        # Raw frames as they cross the wire (session recording); while empty the
        # send paths pay one truthiness check.  Gateway.frame_observers is this list.
        self.frame_observers: list[FrameObserver] = []
        # Write-ahead: frames carrying newly sequenced reliable events wait until
        # persist(connections) fires (see gateway.session.manager).
        self.persist: Callable[[list[Connection]], defer.Deferred[None]] | None = None
        self.needs_persist: Callable[[Connection], bool] = lambda conn: False
        self.on_persist_failed: Callable[[], object] = lambda: None
        self._held: dict[int, list[bytes]] = {}  # connection id -> frames awaiting persistence

    # ------------------------------------------------------------------ registry

    def add(self, transport: Transport) -> None:
        self._transports[transport.connection.id] = transport

    def bind_player(self, transport: Transport) -> None:
        """Index an authenticated connection by its player id."""
        self._by_player.setdefault(transport.connection.player_id, set()).add(transport)

    def remove(self, transport: Transport) -> None:
        conn = transport.connection
        self._transports.pop(conn.id, None)
        players = self._by_player.get(conn.player_id)
        if players is not None:
            players.discard(transport)
            if not players:
                del self._by_player[conn.player_id]
        for topic in tuple(conn.topics):
            self.unsubscribe(transport, topic)
        self._dirty.discard(transport)
        self._held.pop(conn.id, None)
        self._failed.discard(conn.id)

    def __len__(self) -> int:
        return len(self._transports)

    def transports(self) -> Iterator[Transport]:
        return iter(tuple(self._transports.values()))

    def connections(self) -> list[Connection]:
        return [t.connection for t in self._transports.values()]

    def get(self, connection_id: int) -> Transport | None:
        return self._transports.get(connection_id)

    def for_player(self, player_id: str) -> tuple[Transport, ...]:
        return tuple(self._by_player.get(player_id, ()))

    def players(self) -> Iterable[str]:
        return self._by_player.keys()

    # ------------------------------------------------------------------ topics

    def subscribe(self, transport: Transport, topic: str) -> None:
        members = self._topics.get(topic)
        if members is None:
            members = self._topics[topic] = set()
            if self.on_topic_added is not None:
                self.on_topic_added(topic)
        members.add(transport)
        transport.connection.topics.add(topic)

    def unsubscribe(self, transport: Transport, topic: str) -> None:
        members = self._topics.get(topic)
        if members is None:
            return
        members.discard(transport)
        transport.connection.topics.discard(topic)
        if not members:
            del self._topics[topic]
            self._batches.pop(topic, None)
            if self.on_topic_removed is not None:
                self.on_topic_removed(topic)

    def subscribers(self, topic: str) -> tuple[Transport, ...]:
        return tuple(self._topics.get(topic, ()))

    def topics_of(self, transport: Transport) -> frozenset[str]:
        return frozenset(transport.connection.topics)

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    # ------------------------------------------------------------------ delivery

    def deliver(self, transport: Transport, event: OutEvent, *, urgent: bool = False) -> bool:
        """Queue ``event`` for one connection; urgent events are flushed at once."""
        conn = transport.connection
        if conn.id in self._failed:
            return False  # closing until the transport reports it lost: no more memory for it
        try:
            accepted = conn.enqueue(event, urgent=urgent)
        except Disconnect as exc:
            self._fail(transport, exc)
            return False
        if urgent:
            self.flush_one(transport, self.clock())
        else:
            self._dirty.add(transport)
        return accepted

    def share(self, topic: str, event: OutEvent) -> None:
        """Queue an unreliable event for every subscriber of ``topic``, encoded once."""
        if event.reliable:
            raise ValueError("shared batches carry no seq: reliable events go per connection")
        if topic in self._topics:
            self._batches.setdefault(topic, []).append(event)

    def flush_one(self, transport: Transport, now: float) -> None:
        conn = transport.connection
        try:
            frame = conn.take_frame(now)
        except Disconnect as exc:
            self._fail(transport, exc)
            return
        if frame is not None:
            waiting: list[Transport] = []
            self._emit(transport, frame, waiting)
            self._persist_then_send(waiting)
        if conn.has_pending:
            self._dirty.add(transport)
        else:
            self._dirty.discard(transport)

    def flush(self, now: float) -> None:
        """End of tick: one frame per connection with anything to send."""
        shared = self._take_shared()
        dirty = self._dirty
        self._dirty = set()
        private = list(dirty)
        waiting: list[Transport] = []
        prepared: dict[tuple[str, int], tuple[Any, int, bytes]] = {}
        for transport, (key, data, count) in shared.items():
            conn = transport.connection
            if (
                transport in dirty
                or conn.has_pending
                or conn.paused_since is not None
                or conn.id in self._held
            ):
                if transport not in dirty:
                    private.append(transport)
                continue
            # Nothing private queued: send the shared frame, framed once for every such reader.
            codec = conn.compression if len(data) >= conn.compression_threshold else 0
            entry = prepared.get((key, codec))
            if entry is None:
                raw = compress_frame(data, codec, conn.zlib_level) if codec else data
                entry = prepared[(key, codec)] = (self._prepare(raw), len(raw), raw)
            try:
                transport.send_prepared(entry[0], entry[1])
            except Exception:
                log.failure("sending to connection {id} failed", id=conn.id)
                self._failed.add(conn.id)
                transport.abort()
                continue
            if self.frame_observers:
                self.observe_frame(transport, "out", entry[2])
            conn.count_shared(entry[1], count)
        for transport in private:
            conn = transport.connection
            extra = shared.get(transport)
            if extra is not None and conn.paused_since is not None:
                conn.stats.dropped_out += extra[2]  # unreliable state for a stalled reader
            try:
                frame = conn.take_frame(now, extra[1] if extra else b"")
            except Disconnect as exc:
                self._fail(transport, exc)
                continue
            if frame is not None:
                self._emit(transport, frame, waiting)
            if conn.has_pending:
                self._dirty.add(transport)
        self._persist_then_send(waiting)

    def _emit(self, transport: Transport, frame: bytes, waiting: list[Transport]) -> None:
        """Send, unless the frame's reliable events must be persisted first (write-ahead).

        Frames of a connection whose persistence is in flight queue behind it,
        so a connection's frames always leave in the order they were built.
        """
        conn = transport.connection
        held = self._held.get(conn.id)
        if held is not None:
            held.append(frame)
            return
        if self.persist is not None and self.needs_persist(conn):
            self._held[conn.id] = [frame]
            waiting.append(transport)
            return
        self._send(transport, frame)

    def _send(self, transport: Transport, frame: bytes) -> None:
        """Write one frame; one connection's failure must not cost the rest of the tick."""
        try:
            transport.send_frame(frame)
        except Exception:
            log.failure("sending to connection {id} failed", id=transport.connection.id)
            self._failed.add(transport.connection.id)
            try:
                transport.abort()
            except Exception:
                log.failure("aborting connection {id} failed", id=transport.connection.id)
            return
        if self.frame_observers:
            self.observe_frame(transport, "out", frame)

    def _persist_then_send(self, waiting: list[Transport]) -> None:
        if not waiting or self.persist is None:
            return
        d = self.persist([t.connection for t in waiting])

        def release(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("persisting sessions failed; sending anyway", result)
                self.on_persist_failed()
            again: list[Transport] = []
            for transport in waiting:
                conn = transport.connection
                if conn.id not in self._transports:
                    self._held.pop(conn.id, None)
                    continue
                if self.needs_persist(conn):
                    again.append(transport)  # newer frames carry newer events: persist those too
                    continue
                for frame in self._held.pop(conn.id, ()):
                    self._send(transport, frame)
            self._persist_then_send(again)

        d.addBoth(release)

    def observe_frame(self, transport: Transport, direction: str, data: bytes) -> None:
        """Show a raw frame to every observer; an observer's failure is logged, never raised."""
        for observer in tuple(self.frame_observers):
            try:
                observer(transport, direction, data)
            except Exception:
                log.failure("frame observer {observer!r} failed", observer=observer)

    def _prepare(self, data: bytes) -> Any:
        return self.prepare(data) if self.prepare is not None else data

    def _take_shared(self) -> dict[Transport, tuple[str, bytes, int]]:
        """Per subscriber, the joined fragments of every topic batch it receives this tick."""
        if not self._batches:
            return {}
        batches = self._batches
        self._batches = {}
        per_topic = {
            topic: b"".join(e.plain_fragment() for e in events)
            for topic, events in batches.items()
        }
        counts = {topic: len(events) for topic, events in batches.items()}
        out: dict[Transport, tuple[str, bytes, int]] = {}
        for topic, data in per_topic.items():
            for transport in self._topics.get(topic, ()):
                if not transport.connection.authenticated:
                    continue
                previous = out.get(transport)
                if previous is None:
                    out[transport] = (topic, data, counts[topic])
                else:
                    # Several topics this tick: a private join (rare), keyed by its topic set.
                    key = previous[0] + "\0" + topic
                    out[transport] = (key, previous[1] + data, previous[2] + counts[topic])
        return out

    def _fail(self, transport: Transport, exc: Disconnect) -> None:
        self._dirty.discard(transport)
        self._failed.add(transport.connection.id)
        if self.on_close is not None:
            self.on_close(transport, exc)
        transport.close(exc.code, exc.reason)
