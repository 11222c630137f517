"""Sans-io client side of wire protocol v1.

A :class:`ClientSession` outlives individual WebSocket connections: it keeps
the outbound sequence numbers and the reliable events the server has not
acknowledged (resent after a reconnect), the highest server seq received
(so duplicates replayed on resume are dropped), the negotiated versions, and
the offline queue: what the application sent while no connection was
authenticated, flushed in order by the next one.
The Twisted adapter feeds it bytes and the time and sends what it returns.

After a reconnect the welcome decides what happens to the unacknowledged
reliable events (:meth:`ClientSession.on_welcome`):

* ``resumed``: the server kept the session (and the last seq it received
  from us), so they are resent with their original seqs; duplicates are
  dropped by the server.
* not resumed: a new session numbers everything from 1 again, both ways.  The
  last seq received is reset (in :meth:`~ClientSession.receive`, before the
  rest of the welcome's frame is read) and the events are resent as new
  events, renumbered from 1: at-least-once, since the old session may have
  handled some of them.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError, Message

from gateway.connection import Rtt
from gateway.events import EventRegistry
from gateway.states import State, StateMachine
from gateway.system_events import register as register_system_events
from gateway.wire import (
    COMPRESSION_NAMES,
    OutEvent,
    WireError,
    compress_frame,
    decode_frame,
    envelope_fragment,
    make_event,
)
from protocol import events_pb2

__all__ = ["ClientSession", "Incoming", "PendingReliable", "QueuedSend"]

_CRITICAL = events_pb2.PRIORITY_CRITICAL
# Control events that belong to one connection: not carried over to the next.
_PER_CONNECTION = frozenset({"system.ping", "system.pong", "system.ack"})


@dataclass(slots=True)
class Incoming:
    """A decoded server event: ``message`` is at the newest version this client knows."""

    type: str
    version: int
    message: Message | None  # None when the type is not registered on the client
    envelope: events_pb2.Envelope


@dataclass(slots=True)
class PendingReliable:
    seq: int
    event: OutEvent
    first_sent: float
    on_give_up: Callable[[str, int], object] | None = None


@dataclass(slots=True)
class QueuedSend:
    """An event sent while offline: encoded when flushed, with the versions then negotiated."""

    type: str
    message: Message
    reliable: bool
    priority: int | None
    key: str | None
    correlation_id: int
    queued_at: float
    on_give_up: Callable[[str, int], object] | None = None


@dataclass
class ClientSession:
    registry: EventRegistry = field(default_factory=EventRegistry)
    client_name: str = "rtgateway-python/0.1"
    compression: tuple[str, ...] = ("lz4", "zlib")
    max_message_size: int = 65536
    reliable_timeout: float = 30.0  # give up on an unacknowledged reliable event after this
    max_pending: int = 1024
    offline_limit: int = 1000  # events held while not authenticated

    machine: StateMachine = field(default_factory=StateMachine)
    rtt: Rtt = field(default_factory=Rtt)
    welcome: events_pb2.Welcome | None = None
    versions: dict[str, int] = field(default_factory=dict)
    last_in_seq: int = 0  # highest reliable server seq received
    next_out_seq: int = 1
    pending: deque[PendingReliable] = field(default_factory=deque)
    offline: deque[QueuedSend] = field(default_factory=deque)
    #: Envelopes in the frame :meth:`take_frame` last returned.
    last_frame_events: int = 0
    peer_ack: int = 0  # highest of our seqs the server acknowledged
    _queue: list[OutEvent] = field(default_factory=list)
    _replay: deque[PendingReliable] = field(default_factory=deque)  # resend, original seqs
    _renumber: deque[PendingReliable] = field(default_factory=deque)  # resend, new seqs
    _ack_pending: bool = False
    _nonces: Iterable[int] = field(default_factory=lambda: itertools.count(1))
    _pings: dict[int, int] = field(default_factory=dict)
    _codec: int = 0
    _threshold: int = 0

    def __post_init__(self) -> None:
        if "system.hello" not in self.registry:
            register_system_events(self.registry)

    @property
    def state(self) -> State:
        return self.machine.state

    # ------------------------------------------------------------------ handshake

    def hello(self, token: str = "", resume_token: str = "") -> bytes:
        """The first frame of a connection: versions we speak, compression we accept."""
        msg = events_pb2.Hello(
            token=token,
            client_name=self.client_name,
            compression=[COMPRESSION_NAMES[c] for c in self.compression],  # type: ignore[misc]
            resume_token=resume_token,
            last_seq=self.last_in_seq,
        )
        for spec in self.registry:
            msg.versions[spec.type].versions.extend(sorted(spec.versions))
        event = make_event("system.hello", msg.SerializeToString(), priority=_CRITICAL,
                           reliable=False)
        return envelope_fragment(event, 0, 0)

    def on_welcome(self, welcome: events_pb2.Welcome) -> None:
        """Apply the negotiation, and schedule the resend of unacknowledged reliable events.

        Resumed: with their original seqs (the server drops the ones it has).
        New session: as new events, ahead of anything queued since.
        """
        self.welcome = welcome
        self.versions = dict(welcome.versions)
        self._codec = welcome.compression
        self._threshold = welcome.compression_threshold or 512
        if welcome.limits.max_message_size:
            self.max_message_size = welcome.limits.max_message_size
        if welcome.resumed:
            self._replay = deque(self.pending)
        else:
            # A new session: our seqs start at 1 again (NetworkingGuide.md#resume).
            self._replay.clear()
            self._renumber.extend(self.pending)
            self.pending.clear()
            self.peer_ack = 0
            self.next_out_seq = 1

    def connection_lost(self) -> None:
        """The transport is gone: forget what only made sense on it (pings, pongs)."""
        self._queue = [e for e in self._queue if e.type not in _PER_CONNECTION]
        self._pings.clear()
        self._replay.clear()

    # ------------------------------------------------------------------ inbound

    def receive(self, data: bytes) -> list[Incoming]:
        """Decode a server frame; drop duplicates; note what needs acknowledging."""
        accepted = frozenset(COMPRESSION_NAMES[c] for c in self.compression)
        try:
            envelopes = decode_frame(data, max_events=1 << 16, max_size=1 << 24,
                                     accepted_compression=accepted)
        except WireError:
            raise
        out: list[Incoming] = []
        for env in envelopes:
            if env.type == "system.welcome" and not env.seq:
                self._new_numbering(env)
            if env.ack:
                self.acknowledge(env.ack)
            if env.seq:
                if env.seq <= self.last_in_seq:
                    self._ack_pending = True  # a replay: the server missed our ack, repeat it
                    continue
                self.last_in_seq = env.seq
                self._ack_pending = True
            if env.type == "system.ack":
                continue
            out.append(self._decode(env))
        return out

    def _new_numbering(self, env: events_pb2.Envelope) -> None:
        """A welcome for a new session: its seqs start at 1, so forget the old session's.

        Done here, not in :meth:`on_welcome`, because the events after the
        welcome in the same frame already belong to the new numbering.
        """
        try:
            welcome = events_pb2.Welcome.FromString(env.payload)
        except DecodeError:
            return
        if not welcome.resumed:
            self.last_in_seq = 0
            self._ack_pending = False

    def _decode(self, env: events_pb2.Envelope) -> Incoming:
        spec = self.registry.get(env.type)
        if spec is None:
            return Incoming(env.type, env.version, None, env)
        version = env.version or spec.latest
        cls = spec.versions.get(version)
        if cls is None:
            return Incoming(env.type, version, None, env)
        message = cls()
        try:
            message.ParseFromString(env.payload)
        except DecodeError:
            return Incoming(env.type, version, None, env)
        if version != spec.latest:
            message = spec.convert(message, version, spec.latest)
        return Incoming(env.type, version, message, env)

    def acknowledge(self, ack: int) -> None:
        if ack > self.peer_ack:
            self.peer_ack = ack
        while self.pending and self.pending[0].seq <= ack:
            self.pending.popleft()
        while self._replay and self._replay[0].seq <= ack:
            self._replay.popleft()

    # ------------------------------------------------------------------ outbound

    def event(self, type_: str, message: Message, *, reliable: bool | None = None,
              priority: int | None = None, correlation_id: int = 0,
              key: str | None = None) -> OutEvent:
        spec = self.registry.get(type_)
        if spec is None:
            raise KeyError(f"event type {type_!r} is not registered on this client")
        if not spec.direction.client_may_send:
            raise ValueError(f"{type_} is server-to-client only")
        version = self.versions.get(type_, spec.latest)
        if version != spec.latest:
            message = spec.convert(message, spec.latest, version)
        return make_event(
            type_,
            message.SerializeToString(),
            version=version,
            priority=int(priority or spec.priority),
            reliable=spec.reliable if reliable is None else reliable,
            correlation_id=correlation_id,
            key=key,
        )

    def queue(self, event: OutEvent) -> None:
        self._queue.append(event)

    @property
    def has_output(self) -> bool:
        return bool(self._queue or self._replay or self._renumber) or self._ack_pending

    def take_frame(self, now: float, *, on_give_up: Callable[[str, int], object] | None = None,
                   max_events: int | None = None, max_bytes: int | None = None
                   ) -> bytes | None:
        """What is due as one frame; reliable events get seqs and are retained.

        Order: events resent after a resume (original seqs), events resent on a
        new session (new seqs), then the queue by priority (stable: in the order
        sent within a priority).  ``max_events`` and ``max_bytes`` (uncompressed)
        bound the frame; what does not fit stays for the next one.  One event is
        always taken, however large.
        """
        self.last_frame_events = 0
        if not self.has_output:
            return None
        ack = self.last_in_seq if self._ack_pending else 0
        parts: list[bytes] = []
        size = 0

        def fits(fragment: bytes) -> bool:
            if not parts:
                return True
            if max_events is not None and len(parts) >= max_events:
                return False
            return max_bytes is None or size + len(fragment) <= max_bytes

        full = False
        while self._replay:
            pending = self._replay[0]
            fragment = envelope_fragment(pending.event, pending.seq, ack)
            if not fits(fragment):
                full = True
                break
            self._replay.popleft()
            parts.append(fragment)
            size += len(fragment)
            ack = 0
        while self._renumber and not full:
            old = self._renumber[0]
            seq = self.next_out_seq
            fragment = envelope_fragment(old.event, seq, ack)
            if not fits(fragment):
                full = True
                break
            self._renumber.popleft()
            self.next_out_seq += 1
            self.pending.append(PendingReliable(seq, old.event, old.first_sent, old.on_give_up))
            parts.append(fragment)
            size += len(fragment)
            ack = 0
        if self._queue and not full:
            queue = sorted(self._queue, key=lambda e: e.priority or 3)
            taken = 0
            for event in queue:
                seq = self.next_out_seq if event.reliable else 0
                fragment = envelope_fragment(event, seq, ack)
                if not fits(fragment):
                    break
                if event.reliable:
                    self.next_out_seq += 1
                    self.pending.append(PendingReliable(seq, event, now, on_give_up))
                parts.append(fragment)
                size += len(fragment)
                ack = 0
                taken += 1
            self._queue = queue[taken:]
        if ack:
            ack_event = make_event("system.ack", b"", priority=_CRITICAL, reliable=False)
            parts.append(envelope_fragment(ack_event, 0, ack))
        self._ack_pending = False
        self.last_frame_events = len(parts)
        frame = b"".join(parts)
        if self._codec and len(frame) >= self._threshold:
            frame = compress_frame(frame, self._codec)
        return frame

    # ------------------------------------------------------------------ offline queue

    def prepare(self, type_: str, message: Message, *, reliable: bool | None = None,
                priority: int | None = None, key: str | None = None, correlation_id: int = 0,
                now: float = 0.0, on_give_up: Callable[[str, int], object] | None = None
                ) -> QueuedSend:
        """Check an event like :meth:`event` does, keep a copy for the offline queue."""
        spec = self.registry.get(type_)
        if spec is None:
            raise KeyError(f"event type {type_!r} is not registered on this client")
        if not spec.direction.client_may_send:
            raise ValueError(f"{type_} is server-to-client only")
        copy = type(message)()
        copy.CopyFrom(message)
        return QueuedSend(type_, copy, spec.reliable if reliable is None else reliable,
                          priority, key, correlation_id, now, on_give_up)

    def queue_offline(self, item: QueuedSend) -> list[QueuedSend]:
        """Hold ``item`` until a connection is authenticated; returns what was dropped.

        An unreliable event with a ``key`` replaces a queued one with the same
        key (the newer state supersedes it; not a drop).  When the queue holds
        ``offline_limit`` events, the oldest unreliable one is dropped to make
        room; when every queued event is reliable, ``item`` itself is refused
        (returned) -- a reliable event is never silently evicted.
        """
        if item.key is not None and not item.reliable:
            for i, queued in enumerate(self.offline):
                if queued.key == item.key and not queued.reliable:
                    del self.offline[i]
                    break
        dropped: list[QueuedSend] = []
        while len(self.offline) >= self.offline_limit:
            victim = next((q for q in self.offline if not q.reliable), None)
            if victim is None:
                return [item]  # nothing unreliable to evict (or no queue at all): refused
            self.offline.remove(victim)
            dropped.append(victim)
        self.offline.append(item)
        return dropped

    def cancel_offline(self, correlation_id: int) -> bool:
        """Forget a queued request (its caller stopped waiting); True if it was queued."""
        for i, queued in enumerate(self.offline):
            if queued.correlation_id == correlation_id:
                del self.offline[i]
                return True
        return False

    def flush_offline(self) -> int:
        """Encode the offline queue, in order, with the versions now negotiated."""
        count = 0
        while self.offline:
            item = self.offline.popleft()
            try:
                event = self.event(item.type, item.message, reliable=item.reliable,
                                   priority=item.priority, correlation_id=item.correlation_id,
                                   key=item.key)
            except (KeyError, ValueError):
                continue  # the registry changed under us: nothing sensible to send
            self._queue.append(event)
            count += 1
        return count

    def expire_offline(self, now: float) -> list[QueuedSend]:
        """Reliable events queued offline for longer than ``reliable_timeout``: given up."""
        expired = [q for q in self.offline
                   if q.reliable and now - q.queued_at > self.reliable_timeout]
        for q in expired:
            self.offline.remove(q)
        return expired

    def resend_frame(self) -> bytes | None:
        """After a resume: every reliable event the server had not acknowledged, in order."""
        if not self.pending:
            return None
        return b"".join(envelope_fragment(p.event, p.seq, 0) for p in self.pending)

    def expire(self, now: float) -> list[PendingReliable]:
        """Reliable events unacknowledged past the timeout: given up, reported to the caller.

        Includes the ones waiting to be resent after a reconnect: the timeout
        runs from the first send, across reconnects.
        """
        expired: list[PendingReliable] = []
        while self._renumber and now - self._renumber[0].first_sent > self.reliable_timeout:
            expired.append(self._renumber.popleft())
        while self.pending and now - self.pending[0].first_sent > self.reliable_timeout:
            expired.append(self.pending.popleft())
        if expired and self._replay:
            gone = {id(p) for p in expired}
            self._replay = deque(p for p in self._replay if id(p) not in gone)
        return expired

    # ------------------------------------------------------------------ heartbeat

    def ping(self, mono_ns: int) -> OutEvent:
        nonce = next(iter(self._nonces))  # type: ignore[call-overload]
        self._pings[nonce] = mono_ns
        if len(self._pings) > 64:
            self._pings.pop(next(iter(self._pings)))
            self.rtt.lost()
        msg = events_pb2.Ping(nonce=nonce, sent_ns=mono_ns, rtt_us=int(self.rtt.srtt * 1e6))
        return make_event("system.ping", msg.SerializeToString(), priority=_CRITICAL,
                          reliable=False)

    def on_pong(self, pong: events_pb2.Pong, mono_ns: int) -> float | None:
        sent = self._pings.pop(pong.nonce, None)
        if sent is None or sent != pong.sent_ns:
            return None
        rtt = max(0, mono_ns - sent) / 1e9
        self.rtt.sample(rtt)
        return rtt

    @staticmethod
    def pong_for(ping: events_pb2.Ping) -> OutEvent:
        msg = events_pb2.Pong(nonce=ping.nonce, sent_ns=ping.sent_ns)
        return make_event("system.pong", msg.SerializeToString(), priority=_CRITICAL,
                          reliable=False)


def versions_of(registry: EventRegistry) -> Mapping[str, list[int]]:
    return {spec.type: sorted(spec.versions) for spec in registry}
