"""Sessions that outlive connections, stored in the backend.

A session is created at the first welcome and survives disconnects for
``session.timeout_seconds``.  Its reliable outbound events are persisted
*before* they are sent (write-ahead, batched per flush), so the instance
that takes a resume can replay exactly what the client had not
acknowledged, with the original sequence numbers.  Events published to a
topic while a session was away are caught up from the topic's capped log
(``tl:<topic>``), from the session's per-topic cursor.

Every key has a TTL: a crashed instance leaves nothing that lives forever.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.backend.base import Backend
from gateway.config import SessionConfig
from gateway.connection import Connection
from gateway.metrics import Metrics
from gateway.session.core import (
    ResumePlan,
    hash_token,
    keys,
    new_session_id,
    new_token,
    plan_resume,
)
from gateway.wire import OutEvent
from protocol import events_pb2, internal_pb2

if TYPE_CHECKING:
    from gateway.events import EventRegistry

__all__ = ["SessionLink", "SessionManager", "SessionOpened"]

log = Logger()

USED_TOKEN_SECONDS = 3600.0

#: A topic-log entry read back for a catch-up: (topic seq, entry).
CaughtUp = tuple[int, internal_pb2.QueuedEvent]
#: Topic logs whose counters this instance remembers as existing (LRU).
_MAX_LOGS_TRACKED = 100_000


@dataclass(slots=True)
class SessionLink:
    """Per-connection session bookkeeping, kept on ``Connection.session``."""

    record: internal_pb2.SessionRecord
    token_hash: str
    journal: list[tuple[int, OutEvent]] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)  # topic -> highest topic_seq enqueued
    seen: dict[str, int] = field(default_factory=dict)  # topic -> bitmask below the mark
    holding: dict[str, list[OutEvent]] = field(default_factory=dict)  # topics catching up
    dirty: bool = True
    acked_dirty: bool = False
    replaced: bool = False  # a newer connection took the session: this one must not write
    refreshed_at: float = 0.0


@dataclass
class SessionOpened:
    session_id: str
    reconnect_token: str
    resumed: bool
    full_resync: bool
    replay: list[tuple[int, OutEvent]]
    topics: list[str]
    reason: str = ""


def _decode(cls: Any, data: bytes | None) -> Any:
    if data is None:
        return None
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return None
    return msg


class SessionManager:
    def __init__(
        self,
        backend: Backend,
        config: SessionConfig,
        metrics: Metrics,
        instance_id: str,
        registry: EventRegistry,
        *,
        wall_clock: Any = time.time,
    ) -> None:
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.instance_id = instance_id
        self.registry = registry
        self.wall_clock = wall_clock
        self._dirty: set[Connection] = set()  # connections with write-behind work
        # Topic logs this instance appended to, and when: their counters are known to exist.
        self._logs_alive: OrderedDict[str, float] = OrderedDict()
        self._seeding: dict[str, list[tuple[bytes, defer.Deferred[int]]]] = {}
        previous = backend.on_ready_change

        def ready_changed(ready: bool) -> None:
            previous(ready)
            if not ready:
                self._logs_alive.clear()  # the store may come back empty (restart, failover)

        backend.on_ready_change = ready_changed

    @property
    def ttl(self) -> float:
        return self.config.timeout_seconds

    # ------------------------------------------------------------------ open / resume

    @defer.inlineCallbacks
    def open(
        self, conn: Connection, hello: events_pb2.Hello
    ) -> Generator[defer.Deferred[Any], Any, SessionOpened]:
        """A new session, or the resumed one named by ``hello.resume_token``."""
        started = self.wall_clock()
        opened: SessionOpened | None = None
        full_resync = False
        reason = ""
        if hello.resume_token:
            try:
                opened = yield self._resume(conn, hello)
            except _Refused as refused:
                full_resync, reason = True, refused.reason
        if opened is None:
            opened = yield self._create(conn)
            opened.full_resync = full_resync
            opened.reason = reason
        else:
            self.metrics.sessions_resumed.inc()
            self.metrics.replayed_events.inc(len(opened.replay))
            self.metrics.resume_seconds.observe(max(0.0, self.wall_clock() - started))
        self.metrics.sessions_active.inc()
        return opened

    @defer.inlineCallbacks
    def _create(self, conn: Connection) -> Generator[defer.Deferred[Any], Any, SessionOpened]:
        session_id = new_session_id()
        token = new_token()
        token_hash = hash_token(token)
        now = self.wall_clock()
        record = internal_pb2.SessionRecord(
            session_id=session_id,
            player_id=conn.player_id,
            instance_id=self.instance_id,
            connection_id=conn.id,
            next_out_seq=1,
            queue_first_seq=1,
            created_at=now,
            last_seen=now,
            token_hash=token_hash,
            versions=conn.versions,
            compression=conn.compression,
        )
        conn.session = SessionLink(record, token_hash)
        conn.session_id = session_id
        yield self._write_record(conn)
        yield self.backend.set(keys.token(token_hash), session_id.encode(), self.ttl)
        return SessionOpened(session_id, token, False, False, [], [])

    @defer.inlineCallbacks
    def _resume(
        self, conn: Connection, hello: events_pb2.Hello
    ) -> Generator[defer.Deferred[Any], Any, SessionOpened]:
        old_hash = hash_token(hello.resume_token)
        raw_id = yield self.backend.getdel(keys.token(old_hash))
        if raw_id is None:
            used = yield self.backend.get(keys.used_token(old_hash))
            reason = "reused" if used is not None else "unknown"
            self.metrics.refused_tokens.labels(reason).inc()
            raise _Refused(f"reconnection token {reason}")
        session_id = raw_id.decode()
        yield self.backend.set(keys.used_token(old_hash), raw_id, USED_TOKEN_SECONDS)
        record = _decode(
            internal_pb2.SessionRecord, (yield self.backend.get(keys.record(session_id)))
        )
        if record is None:
            self.metrics.sessions_expired.inc()
            raise _Refused("session expired")
        if record.player_id != conn.player_id:
            self.metrics.refused_tokens.labels("wrong_player").inc()
            raise _Refused("reconnection token belongs to another player")
        raw_queue = yield self.backend.lrange(keys.queue(session_id))
        queue = [q for q in (_decode(internal_pb2.QueuedEvent, b) for b in raw_queue) if q]
        plan: ResumePlan = plan_resume(record, queue, hello.last_seq)
        token = new_token()
        token_hash = hash_token(token)
        previous_owner = (record.instance_id, record.connection_id)
        record.instance_id = self.instance_id
        record.connection_id = conn.id
        record.token_hash = token_hash
        record.last_seen = self.wall_clock()
        record.next_out_seq = plan.next_out_seq
        link = SessionLink(record, token_hash)
        link.marks = dict(record.cursors)
        conn.session = link
        conn.session_id = session_id
        conn.next_out_seq = plan.next_out_seq
        conn.peer_ack = hello.last_seq
        conn.last_in_seq = record.last_in_seq
        conn.previous_owner = previous_owner  # type: ignore[attr-defined]
        replay = []
        for entry in plan.replay:
            spec = self.registry.get(entry.type)
            priority = int(spec.priority) if spec is not None else events_pb2.PRIORITY_NORMAL
            replay.append((entry.seq, OutEvent(entry.type, entry.body, priority, True)))
        if plan.full_resync:
            self.metrics.refused_tokens.labels("gap").inc()
        topics = list(record.topics)  # the new connection subscribes to these next
        yield self._write_record(conn, topics)
        yield self.backend.set(keys.token(token_hash), session_id.encode(), self.ttl)
        return SessionOpened(
            session_id, token, True, plan.full_resync, replay, topics, plan.reason
        )

    # ------------------------------------------------------------------ topic catch-up

    @defer.inlineCallbacks
    def catch_up(
        self, conn: Connection, topic: str
    ) -> Generator[defer.Deferred[Any], Any, tuple[list[CaughtUp], bool]]:
        """Logged events of ``topic`` after the session's cursor; True if some were lost."""
        link: SessionLink = conn.session  # type: ignore[attr-defined]
        cursor = link.record.cursors.get(topic, 0)
        oldest, entries = yield self.backend.read_log(keys.topic_log(topic), cursor)
        gap = bool(cursor) and oldest > cursor + 1
        out = []
        for seq, raw in entries:
            entry = _decode(internal_pb2.QueuedEvent, raw)
            if entry is not None:
                out.append((seq, entry))
        return out, gap

    def append_topic_log(self, topic: str, type_: str, payload: bytes,
                         correlation_id: int = 0) -> defer.Deferred[int]:
        """Log a reliable event; returns its topic_seq.

        Subscribers drop a logged event whose topic_seq is not above the last
        one they saw (catch-up and live overlap), so a log's numbering must
        never go back, even when the store lost the log (a Redis restart or
        failover) or it expired while quiet: a counter that may not exist is
        first seeded from the wall clock (microseconds) with SET NX.  That
        costs one command per topic after start-up, after every backend outage
        and after a long silence, not one per event.  Appends to one topic
        leave in call order, seeded or not.
        """
        entry = internal_pb2.QueuedEvent(type=type_, payload=payload,
                                         correlation_id=correlation_id).SerializeToString()
        waiting = self._seeding.get(topic)
        if waiting is not None:  # a seed is in flight: append after it, in order
            mine: defer.Deferred[int] = defer.Deferred()
            waiting.append((entry, mine))
            return mine
        now = self.wall_clock()
        last = self._logs_alive.get(topic)
        if last is not None and now - last < self.config.topic_log_seconds / 2:
            return self._append(topic, entry)  # appended here lately: the counter exists
        waiting = self._seeding[topic] = []
        seed = b"%d" % int(now * 1_000_000)
        d = self.backend.set(keys.topic_log(topic) + ":n", seed, self.config.topic_log_seconds,
                             only_if_absent=True)

        mine = defer.Deferred()

        def seeded(_created: bool) -> None:
            del self._seeding[topic]
            self._append(topic, entry).chainDeferred(mine)
            for later_entry, later in waiting:
                self._append(topic, later_entry).chainDeferred(later)

        def failed(failure: Failure) -> None:
            del self._seeding[topic]
            for _entry, later in waiting:
                later.errback(failure)
            mine.errback(failure)

        d.addCallbacks(seeded, failed)
        return mine

    def _append(self, topic: str, entry: bytes) -> defer.Deferred[int]:
        alive = self._logs_alive
        alive[topic] = self.wall_clock()
        alive.move_to_end(topic)
        if len(alive) > _MAX_LOGS_TRACKED:
            alive.popitem(last=False)
        return self.backend.append_log(keys.topic_log(topic), entry,
                                       max_len=self.config.topic_log_len,
                                       ttl=self.config.topic_log_seconds)

    # ------------------------------------------------------------------ persistence

    def sequenced(self, conn: Connection, seq: int, event: OutEvent) -> None:
        """Connection hook: a reliable event got ``seq`` and is about to be sent."""
        link: SessionLink | None = getattr(conn, "session", None)
        if link is None:
            return
        link.journal.append((seq, event))
        self._dirty.add(conn)
        if event.topic:
            link.record.cursors[event.topic] = max(
                link.record.cursors.get(event.topic, 0), event.topic_seq
            )
        link.dirty = True

    def needs_persist(self, conn: Connection) -> bool:
        link: SessionLink | None = getattr(conn, "session", None)
        return link is not None and bool(link.journal)

    def persist(self, conns: Iterable[Connection], topics: Iterable[str] | None = None
                ) -> defer.Deferred[None]:
        """Write-ahead: journal entries and the record of each connection, in one batch."""
        ds: list[defer.Deferred[Any]] = []
        for conn in conns:
            link: SessionLink | None = getattr(conn, "session", None)
            if link is None or link.record.instance_id != self.instance_id:
                continue
            if link.journal:
                entries = [
                    internal_pb2.QueuedEvent(seq=seq, type=ev.type, body=ev.body)
                    .SerializeToString()
                    for seq, ev in link.journal
                ]
                if not link.record.queue_first_seq or link.record.queue_first_seq > (
                    link.journal[0][0]
                ):
                    link.record.queue_first_seq = link.journal[0][0]
                link.journal.clear()
                ds.append(
                    self.backend.rpush(
                        keys.queue(conn.session_id),
                        entries,
                        max_len=self.config.max_replay_events,
                        ttl=self.ttl,
                    )
                )
            ds.append(self._write_record(conn, topics))
        if not ds:
            return defer.succeed(None)
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def _write_record(self, conn: Connection, topics: Iterable[str] | None = None
                      ) -> defer.Deferred[Any]:
        link: SessionLink = conn.session  # type: ignore[attr-defined]
        record = link.record
        record.next_out_seq = conn.next_out_seq
        record.last_in_seq = conn.last_in_seq
        record.acked = conn.peer_ack
        del record.topics[:]
        source = conn.topics if topics is None else topics
        record.topics.extend(sorted(t for t in source if not t.startswith("session:")))
        link.dirty = False
        link.refreshed_at = self.wall_clock()
        return self.backend.set(keys.record(record.session_id), record.SerializeToString(),
                                self.ttl)

    def touched(self, conn: Connection) -> None:
        """Something in the record changed (e.g. last_in_seq): write it on the next tick."""
        link: SessionLink | None = getattr(conn, "session", None)
        if link is not None:
            link.dirty = True
            self._dirty.add(conn)

    def acked(self, conn: Connection, ack: int) -> None:
        link: SessionLink | None = getattr(conn, "session", None)
        if link is not None:
            link.acked_dirty = True
            self._dirty.add(conn)

    def housekeeping(self, live: Iterable[Connection] = ()) -> defer.Deferred[None]:
        """Normal tick: trim acknowledged events and write changed records (write-behind).

        ``live``: every connection, passed now and then so that long-lived
        sessions refresh their TTLs (a crashed instance's sessions then expire).
        """
        if not self.backend.ready:
            return defer.succeed(None)
        now = self.wall_clock()
        refresh_every = min(300.0, self.ttl / 3)
        work = set(self._dirty)
        self._dirty.clear()
        for conn in live:
            link = conn.session
            if link is not None and now - link.refreshed_at > refresh_every:
                link.dirty = True
                work.add(conn)
        ds: list[defer.Deferred[Any]] = []
        for conn in work:
            link = conn.session
            if link is None or link.replaced or not conn.authenticated:
                continue
            if link.acked_dirty:
                link.acked_dirty = False
                first = link.record.queue_first_seq or 1
                count = conn.peer_ack - first + 1
                if count > 0:
                    link.record.queue_first_seq = conn.peer_ack + 1
                    ds.append(self.backend.ltrim_left(keys.queue(conn.session_id), count))
                link.dirty = True
            if link.journal:
                self._dirty.add(conn)  # the next write-ahead persist covers it
            elif link.dirty:
                if now - link.refreshed_at > refresh_every:
                    link.refreshed_at = now
                    ds.append(self.backend.expire(keys.queue(conn.session_id), self.ttl))
                    ds.append(self.backend.expire(keys.token(link.token_hash), self.ttl))
                ds.append(self._write_record(conn))
        if not ds:
            return defer.succeed(None)
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # ------------------------------------------------------------------ end of a connection

    @defer.inlineCallbacks
    def suspend(
        self, conn: Connection, topics: Iterable[str]
    ) -> Generator[defer.Deferred[Any], Any, None]:
        """The connection is gone; keep the session for a resume (here or elsewhere)."""
        link: SessionLink | None = getattr(conn, "session", None)
        if link is None:
            return
        self.metrics.sessions_active.dec()
        if link.replaced:
            return  # the new owner writes the record now
        self.metrics.sessions_suspended.inc()
        topics = tuple(topics)  # the connection has already left them: keep this list
        if link.journal:
            yield self.persist([conn], topics)
        record = link.record
        # Topics without a cursor yet: remember the log head, so a resume catches up
        # from here and not from the beginning of the log.
        for topic in topics:
            if topic not in record.cursors:
                head = yield self.backend.get(keys.topic_log(topic) + ":n")
                record.cursors[topic] = int(head or b"0")
        record.instance_id = ""
        record.connection_id = 0
        record.last_seen = self.wall_clock()
        yield self._write_record(conn, topics)

    @defer.inlineCallbacks
    def end(self, conn: Connection) -> Generator[defer.Deferred[Any], Any, None]:
        """The client said goodbye (close 1000): nothing to resume, remove everything."""
        link: SessionLink | None = getattr(conn, "session", None)
        if link is None:
            return
        self.metrics.sessions_active.dec()
        if link.replaced:
            return
        yield self.backend.delete(
            keys.record(conn.session_id), keys.queue(conn.session_id), keys.token(link.token_hash)
        )

    @defer.inlineCallbacks
    def revoke(self, session_id: str) -> Generator[defer.Deferred[Any], Any, bool]:
        """Operator action: the session and its reconnection token stop working."""
        record = _decode(
            internal_pb2.SessionRecord, (yield self.backend.get(keys.record(session_id)))
        )
        if record is None:
            return False
        yield self.backend.delete(
            keys.record(session_id), keys.queue(session_id), keys.token(record.token_hash)
        )
        return True


class _Refused(Exception):  # noqa: N818
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
