"""Sans-io model of one client connection.

Everything that decides what happens on a connection lives here, with time
passed in as numbers: the state machine, inbound limits and sequence numbers,
acknowledgements, the outbound priority queue and its drop policy, heartbeat
and RTT.  The Twisted adapter (``gateway.ws``) only moves bytes and timers.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.codes import CloseCode
from gateway.config import HeartbeatConfig, LimitsConfig
from gateway.ratelimit import TokenBucket
from gateway.states import State, StateMachine
from gateway.wire import (
    OutEvent,
    WireError,
    compress_frame,
    decode_frame,
    envelope_fragment,
    make_event,
)
from protocol import events_pb2

__all__ = ["Connection", "ConnectionStats", "Disconnect", "Rtt", "TypeStats"]

CRITICAL = events_pb2.PRIORITY_CRITICAL
HIGH = events_pb2.PRIORITY_HIGH
NORMAL = events_pb2.PRIORITY_NORMAL
LOW = events_pb2.PRIORITY_LOW
PRIORITIES = (CRITICAL, HIGH, NORMAL, LOW)

ACK_EVENT = make_event("system.ack", b"", priority=CRITICAL, reliable=False)
#: Standalone acks are delayed this long hoping to piggyback on an outbound event.
ACK_DELAY = 0.05
#: Room left in a frame for compression framing (incompressible data grows a few dozen bytes).
FRAME_OVERHEAD = 64


class Disconnect(Exception):  # noqa: N818 - it is an instruction, not a failure
    """The connection must close with ``code``; raised by the model, acted on by the adapter."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class TypeStats:
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0


@dataclass(slots=True)
class ConnectionStats:
    """Counters for the network-statistics API (``/debug/connections`` and plugins)."""

    messages_in: int = 0  # WebSocket messages
    bytes_in: int = 0
    events_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    events_out: int = 0
    dropped_out: int = 0  # events dropped by the degrade policy
    superseded_out: int = 0  # unreliable events replaced by newer state before sending
    duplicates_in: int = 0  # reliable events seen twice (resends after a resume)
    rate_limited: int = 0
    by_type: dict[str, TypeStats] = field(default_factory=dict)

    def for_type(self, type_: str) -> TypeStats:
        stats = self.by_type.get(type_)
        if stats is None:
            stats = self.by_type[type_] = TypeStats()
        return stats


class Rtt:
    """Smoothed RTT and jitter (RFC 6298 estimator) plus loss over the last 32 pings."""

    __slots__ = ("_answered", "_window", "jitter", "last", "samples", "srtt")

    def __init__(self) -> None:
        self.srtt = 0.0
        self.jitter = 0.0
        self.last = 0.0
        self.samples = 0
        # Outcomes of recent pings as bits (1 = answered), newest lowest: two ints
        # instead of a deque per connection.
        self._answered = 0
        self._window = 0

    def _record(self, answered: bool) -> None:
        self._answered = ((self._answered << 1) | int(answered)) & 0xFFFFFFFF
        self._window = min(32, self._window + 1)

    def sample(self, rtt: float) -> None:
        self.last = rtt
        if self.samples == 0:
            self.srtt = rtt
            self.jitter = rtt / 2
        else:
            self.jitter += (abs(self.srtt - rtt) - self.jitter) / 4
            self.srtt += (rtt - self.srtt) / 8
        self.samples += 1
        self._record(True)

    def lost(self) -> None:
        self._record(False)

    @property
    def loss(self) -> float:
        """Fraction of recent pings unanswered within the heartbeat timeout."""
        if not self._window:
            return 0.0
        answered = bin(self._answered & ((1 << self._window) - 1)).count("1")
        return (self._window - answered) / self._window


_ids = itertools.count(1)
_NO_VERSIONS: Mapping[str, int] = {}


def _droppable(event: OutEvent) -> bool:
    """What a degraded connection sheds: low priority, and unreliable state below critical.

    Critical unreliable events are the protocol's control messages (pings, pongs,
    system.disconnect, server.draining): tiny, and the slow reader needs them most.
    """
    return event.priority == LOW or (not event.reliable and event.priority != CRITICAL)


class Connection:
    """One client connection; every method takes ``now`` (seconds) from the caller's clock."""

    # Slots: one Connection per player, ~1.6 KiB of instance dict saved at 10k players.
    # "__dict__" stays so plugins may still attach attributes (the dict then appears).
    __slots__ = (
        "__dict__", "_ack_pending", "_ack_since", "_keyed", "_ping_nonce", "_pings",
        "_queues", "_replay", "accepted_compression", "bucket", "claims", "compression",
        "compression_threshold", "connected_at", "degraded", "heartbeat", "id",
        "last_in_seq", "last_ping_sent", "last_received", "limits", "machine",
        "max_unacked", "next_out_seq", "on_ack", "on_sequenced", "paused_since", "peer",
        "peer_ack", "player_id", "previous_owner", "queued_bytes", "replay_overflow", "rtt",
        "session", "session_id", "stats", "token_expires_at", "topics", "type_buckets", "unacked",
        "unacked_bytes", "urgent", "versions", "zlib_level",
    )

    def __init__(
        self,
        peer: str,
        limits: LimitsConfig,
        heartbeat: HeartbeatConfig,
        now: float,
        *,
        max_unacked: int = 1024,
        connection_id: int | None = None,
    ) -> None:
        self.id = connection_id if connection_id is not None else next(_ids)
        self.peer = peer
        self.limits = limits
        self.heartbeat = heartbeat
        self.connected_at = now
        self.machine = StateMachine()
        self.player_id = ""
        self.session_id = ""
        self.token_expires_at = 0.0
        self.claims: Mapping[str, object] = {}
        self.versions: Mapping[str, int] = _NO_VERSIONS  # negotiated version per event type
        self.stats = ConnectionStats()
        self.rtt = Rtt()
        self.bucket = TokenBucket(limits.messages_per_second, limits.messages_burst, now)
        # inbound reliability
        self.last_in_seq = 0
        self._ack_pending = False
        self._ack_since = 0.0
        # outbound
        self.next_out_seq = 1
        self.peer_ack = 0
        # () until the first reliable event: an empty deque costs ~760 bytes a connection.
        self.unacked: deque[tuple[int, OutEvent]] | tuple[()] = ()
        self.unacked_bytes = 0
        self.max_unacked = max_unacked
        self.replay_overflow = False  # oldest unacked events were dropped: a resume needs a resync
        # Created on first use: an idle connection should not carry four empty deques.
        self._queues: dict[int, deque[OutEvent | str]] = {}
        self._keyed: dict[str, OutEvent] = {}
        self.queued_bytes = 0
        self.urgent = False  # something must go out before the next tick
        self.degraded = False
        self.paused_since: float | None = None  # transport not draining (peer not reading)
        self.compression = events_pb2.COMPRESSION_NONE
        self.compression_threshold = 512
        self.zlib_level = 6
        self.accepted_compression: frozenset[int] = frozenset()
        # heartbeat
        self.last_received = now
        # Spread first pings over the interval: connections accepted in the same second
        # must not be pinged (and answer) in the same sweep forever after.
        self.last_ping_sent = now - random.random() * heartbeat.interval
        self._ping_nonce = 0
        self._pings: dict[int, tuple[float, int]] = {}  # nonce -> (sent now, sent mono ns)
        # Session persistence hooks, called with this connection first so that one bound
        # method serves every connection: on_ack(conn, ack) when the peer acknowledges,
        # on_sequenced(conn, seq, event) when a reliable event gets its seq (write-ahead).
        self.on_ack: Callable[[Connection, int], object] | None = None
        self.on_sequenced: Callable[[Connection, int, OutEvent], object] | None = None
        self.session: Any = None  # gateway.session.manager.SessionLink once welcomed
        self.topics: set[str] = set()  # maintained by the hub
        # Per event type rate limits (EventSpec.rate_limit), created on first use.
        self.type_buckets: dict[str, TokenBucket] | None = None
        self._replay: deque[tuple[int, OutEvent]] | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def authenticated(self) -> bool:
        return self.machine.state is State.AUTHENTICATED

    # ------------------------------------------------------------------ inbound

    def receive(self, data: bytes, now: float) -> list[events_pb2.Envelope]:
        """Decode one WebSocket message; return the events for the router.

        Handles acks, duplicate suppression and rate limiting here so that no
        subsystem ever sees a resent or over-limit event.  Raises
        :class:`Disconnect` when the connection must close.
        """
        self.last_received = now
        self.stats.messages_in += 1
        self.stats.bytes_in += len(data)
        try:
            envelopes = decode_frame(
                data,
                max_events=self.limits.max_events_per_frame,
                max_size=self.limits.max_message_size,
                accepted_compression=self.accepted_compression,
            )
        except WireError as exc:
            raise Disconnect(exc.code, exc.reason)
        if not self.bucket.take(now, max(1, len(envelopes))):
            self.stats.rate_limited += 1
            raise Disconnect(CloseCode.RATE_LIMITED, "message rate over the limit")
        out = []
        for env in envelopes:
            self.stats.events_in += 1
            if env.ack:
                self.acknowledge(env.ack)
            if env.seq:
                if env.seq <= self.last_in_seq:
                    self.stats.duplicates_in += 1
                    if not self._ack_pending:  # a resend: the peer missed our ack, repeat it
                        self._ack_pending = True
                        self._ack_since = now
                    continue
                self.last_in_seq = env.seq
                if not self._ack_pending:
                    self._ack_pending = True
                    self._ack_since = now
            if env.type == "system.ack":
                continue
            out.append(env)
        return out

    def count_in(self, type_: str, size: int) -> None:
        """Per-type inbound accounting, called once the type is known to be registered."""
        stats = self.stats.for_type(type_)
        stats.messages_in += 1
        stats.bytes_in += size

    def acknowledge(self, ack: int) -> None:
        """The peer has everything up to ``ack``: release those reliable events."""
        if ack <= self.peer_ack or ack >= self.next_out_seq:
            return  # stale, or acking what we never sent (ignored rather than trusted)
        self.peer_ack = ack
        while self.unacked and self.unacked[0][0] <= ack:
            _seq, event = self.unacked.popleft()  # type: ignore[union-attr]
            self.unacked_bytes -= event.size
        if self.on_ack is not None:
            self.on_ack(self, ack)

    # ------------------------------------------------------------------ outbound

    def enqueue(self, event: OutEvent, *, urgent: bool = False) -> bool:
        """Queue an event for the next flush; False when the drop policy refused it.

        Under pressure (queued bytes over ``outbound_soft_bytes`` or the
        transport paused) the connection is *degraded*: low-priority and
        unreliable events (critical control events excepted) are refused, and
        queued ones of those are purged.
        Over ``outbound_hard_bytes`` it raises :class:`Disconnect`.
        """
        if self.degraded and _droppable(event):
            self.stats.dropped_out += 1
            return False
        if event.key is not None and not event.reliable:
            if event.key in self._keyed:
                old = self._keyed[event.key]
                self._keyed[event.key] = event
                self.queued_bytes += event.size - old.size
                self.stats.superseded_out += 1
            else:
                self._keyed[event.key] = event
                self._queue_for(event.priority).append(event.key)
                self.queued_bytes += event.size
        else:
            self._queue_for(event.priority).append(event)
            self.queued_bytes += event.size
        if urgent:
            self.urgent = True
        self._check_pressure()
        return True

    def _pressure(self) -> int:
        return self.queued_bytes

    def _check_pressure(self) -> None:
        pressure = self._pressure()
        if pressure > self.limits.outbound_hard_bytes:
            raise Disconnect(CloseCode.SLOW_CONSUMER, "outbound buffer over the limit")
        if not self.degraded and (pressure > self.limits.outbound_soft_bytes):
            self.degraded = True
            self._purge_droppable()
        elif (
            self.degraded
            and self.paused_since is None  # a paused transport stays degraded until resume()
            and pressure < self.limits.outbound_soft_bytes // 2
        ):
            self.degraded = False

    def _purge_droppable(self) -> None:
        """Drop queued low-priority and unreliable events, oldest state first."""
        for priority, queue in self._queues.items():
            kept: deque[OutEvent | str] = deque()
            for item in queue:
                event = self._keyed[item] if isinstance(item, str) else item
                if _droppable(event):
                    if isinstance(item, str):
                        del self._keyed[item]
                    self.queued_bytes -= event.size
                    self.stats.dropped_out += 1
                else:
                    kept.append(item)
            self._queues[priority] = kept

    def pause(self, now: float) -> None:
        """The transport stopped draining (its buffer is full): stop writing, degrade."""
        if self.paused_since is None:
            self.paused_since = now
        if not self.degraded:
            self.degraded = True
            self._purge_droppable()

    def resume(self) -> None:
        self.paused_since = None
        if self.queued_bytes < self.limits.outbound_soft_bytes // 2:
            self.degraded = False

    @property
    def has_pending(self) -> bool:
        return self.queued_bytes > 0 or self._ack_pending or bool(self._replay)

    def _queue_for(self, priority: int) -> deque[OutEvent | str]:
        queue = self._queues.get(priority or NORMAL)
        if queue is None:
            queue = self._queues[priority or NORMAL] = deque()
        return queue

    def take_frame(self, now: float, shared: bytes = b"") -> bytes | None:
        """Assemble the next WebSocket message: queued events by priority, plus ``shared``.

        ``shared`` is pre-built unsequenced fragments (a topic's batch for
        this tick), appended without re-encoding.  Returns None when there is
        nothing to send or the transport is paused.  A frame stays within
        ``limits.max_message_size`` (Autobahn refuses larger outgoing messages):
        what does not fit stays queued for the next flush.
        """
        if self.paused_since is not None:
            return None
        parts: list[bytes] = []
        count = 0
        ack = self.last_in_seq if self._ack_pending else 0
        budget = self.limits.max_message_size - len(shared) - FRAME_OVERHEAD
        size = 0
        full = False
        while self._replay:
            seq, event = self._replay[0]
            if parts and size + event.size > budget:
                full = True
                break
            self._replay.popleft()
            size += event.size
            self.queued_bytes -= event.size
            self._retain(seq, event)
            parts.append(envelope_fragment(event, seq, ack))
            ack = 0
            count += 1
        for priority in PRIORITIES:
            queue = self._queues.get(priority)
            while queue and not full:
                item = queue[0]
                event = self._keyed[item] if isinstance(item, str) else item
                if parts and size + event.size > budget:
                    full = True
                    break
                queue.popleft()
                if isinstance(item, str):
                    del self._keyed[item]
                size += event.size
                self.queued_bytes -= event.size
                seq = 0
                if event.reliable:
                    seq = self.next_out_seq
                    self.next_out_seq += 1
                    self._retain(seq, event)
                    if self.on_sequenced is not None:
                        self.on_sequenced(self, seq, event)
                parts.append(envelope_fragment(event, seq, ack))
                ack = 0
                count += 1
                stats = self.stats.for_type(event.type)
                stats.messages_out += 1
                stats.bytes_out += event.size
        for drained in [p for p, q in self._queues.items() if not q]:
            del self._queues[drained]  # drained: idle connections keep no deques
        if ack and now - self._ack_since < ACK_DELAY and not shared:
            return None  # only an ack to send: wait a little for something to carry it
        if ack:
            parts.append(envelope_fragment(ACK_EVENT, 0, ack))
            count += 1
        self._ack_pending = False
        self.urgent = False
        if shared:
            parts.append(shared)
        if not parts:
            return None
        frame = b"".join(parts)
        if self.compression and len(frame) >= self.compression_threshold:
            frame = compress_frame(frame, self.compression, self.zlib_level)
        self.stats.messages_out += 1
        self.stats.bytes_out += len(frame)
        self.stats.events_out += count
        if self.degraded and self.paused_since is None:
            self._check_pressure()
        return frame

    def count_shared(self, size: int, events: int) -> None:
        """Account for a frame sent through the shared (prepared) broadcast path."""
        self.stats.messages_out += 1
        self.stats.bytes_out += size
        self.stats.events_out += events

    def replay(self, events: list[tuple[int, OutEvent]]) -> None:
        """Resend already-sequenced reliable events (a resume), before anything else."""
        if events and self._replay is None:
            self._replay = deque()
        for seq, event in events:
            self._replay.append((seq, event))  # type: ignore[union-attr]
            self.queued_bytes += event.size
        if events:
            self.urgent = True

    def _retain(self, seq: int, event: OutEvent) -> None:
        """Keep a reliable event until acknowledged, within count and byte bounds."""
        if self.unacked.__class__ is tuple:
            self.unacked = deque()
        self.unacked.append((seq, event))  # type: ignore[union-attr]
        self.unacked_bytes += event.size
        while self.unacked and (
            len(self.unacked) > self.max_unacked
            or self.unacked_bytes > self.limits.outbound_hard_bytes
        ):
            _old_seq, old = self.unacked.popleft()  # type: ignore[union-attr]
            self.unacked_bytes -= old.size
            self.replay_overflow = True

    # ------------------------------------------------------------------ heartbeat

    def ping_due(self, now: float) -> bool:
        return now - self.last_ping_sent >= self.heartbeat.interval

    def make_ping(self, now: float, mono_ns: int) -> OutEvent:
        """A ping carrying our monotonic clock in ns; the pong echoes it for RTT.

        ``now`` (the reactor clock) schedules pings and expiry; ``mono_ns``
        measures the RTT, so a wall-clock step never shows up as latency.
        """
        self._ping_nonce += 1
        self.last_ping_sent = now
        self._pings[self._ping_nonce] = (now, mono_ns)
        msg = events_pb2.Ping(
            nonce=self._ping_nonce, sent_ns=mono_ns, rtt_us=int(self.rtt.srtt * 1e6)
        )
        return make_event(
            "system.ping", msg.SerializeToString(), priority=CRITICAL, reliable=False
        )

    def on_pong(self, pong: events_pb2.Pong, mono_ns: int) -> float | None:
        """Record an RTT sample from our own ping's echo; unknown or forged nonces are ignored."""
        sent = self._pings.get(pong.nonce)
        if sent is None or sent[1] != pong.sent_ns:
            return None  # unknown or forged: the real pong may still come
        del self._pings[pong.nonce]
        rtt = max(0, mono_ns - sent[1]) / 1e9
        self.rtt.sample(rtt)
        return rtt

    def expire_pings(self, now: float) -> None:
        """Pings unanswered within the timeout count as lost (the loss estimate)."""
        timeout = self.heartbeat.timeout
        for nonce, (sent, _mono) in list(self._pings.items()):
            if now - sent > timeout:
                del self._pings[nonce]
                self.rtt.lost()

    def is_dead(self, now: float) -> bool:
        """Nothing at all received for interval + timeout: the peer is gone."""
        return now - self.last_received > self.heartbeat.interval + self.heartbeat.timeout

    def is_stalled(self, now: float) -> bool:
        return (
            self.paused_since is not None
            and now - self.paused_since > self.limits.stalled_seconds
        )

    # ------------------------------------------------------------------ introspection

    def snapshot(self, now: float) -> dict[str, object]:
        """One row of ``/debug/connections``: JSON-ready, no secrets."""
        s = self.stats
        return {
            "id": self.id,
            "player_id": self.player_id,
            "session_id": self.session_id,
            "peer": self.peer,
            "state": self.state.value,
            "connected_at": self.connected_at,
            "age_seconds": round(now - self.connected_at, 3),
            "rtt_ms": round(self.rtt.srtt * 1000, 3),
            "jitter_ms": round(self.rtt.jitter * 1000, 3),
            "loss": round(self.rtt.loss, 3),
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
            "events_in": s.events_in,
            "events_out": s.events_out,
            "dropped_out": s.dropped_out,
            "queued_bytes": self.queued_bytes,
            "unacked": len(self.unacked),
            "degraded": self.degraded,
            "paused": self.paused_since is not None,
            "by_type": {
                t: {
                    "messages_in": v.messages_in,
                    "bytes_in": v.bytes_in,
                    "messages_out": v.messages_out,
                    "bytes_out": v.bytes_out,
                }
                for t, v in s.by_type.items()
            },
        }
