"""Sans-io client side of wire protocol v1.

A :class:`ClientSession` outlives individual WebSocket connections: it keeps
the outbound sequence numbers and the reliable events the server has not
acknowledged (resent after a reconnect), the highest server seq received
(so duplicates replayed on resume are dropped), and the negotiated versions.
The Twisted adapter feeds it bytes and the time and sends what it returns.
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

__all__ = ["ClientSession", "Incoming", "PendingReliable"]

_CRITICAL = events_pb2.PRIORITY_CRITICAL


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


@dataclass
class ClientSession:
    registry: EventRegistry = field(default_factory=EventRegistry)
    client_name: str = "rtgateway-python/0.1"
    compression: tuple[str, ...] = ("lz4", "zlib")
    max_message_size: int = 65536
    reliable_timeout: float = 30.0  # give up on an unacknowledged reliable event after this
    max_pending: int = 1024

    machine: StateMachine = field(default_factory=StateMachine)
    rtt: Rtt = field(default_factory=Rtt)
    welcome: events_pb2.Welcome | None = None
    versions: dict[str, int] = field(default_factory=dict)
    last_in_seq: int = 0  # highest reliable server seq received
    next_out_seq: int = 1
    pending: deque[PendingReliable] = field(default_factory=deque)
    _queue: list[OutEvent] = field(default_factory=list)
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
        self.welcome = welcome
        self.versions = dict(welcome.versions)
        self._codec = welcome.compression
        self._threshold = welcome.compression_threshold or 512
        if welcome.limits.max_message_size:
            self.max_message_size = welcome.limits.max_message_size

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
            if env.ack:
                self.acknowledge(env.ack)
            if env.seq:
                if env.seq <= self.last_in_seq:
                    continue
                self.last_in_seq = env.seq
                self._ack_pending = True
            if env.type == "system.ack":
                continue
            out.append(self._decode(env))
        return out

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
        while self.pending and self.pending[0].seq <= ack:
            self.pending.popleft()

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
        return bool(self._queue) or self._ack_pending

    def take_frame(self, now: float, *, on_give_up: Callable[[str, int], object] | None = None
                   ) -> bytes | None:
        """Everything queued as one frame; reliable events get seqs and are retained."""
        if not self._queue and not self._ack_pending:
            return None
        ack = self.last_in_seq if self._ack_pending else 0
        parts: list[bytes] = []
        queue = sorted(self._queue, key=lambda e: e.priority or 3)
        self._queue = []
        for event in queue:
            seq = 0
            if event.reliable:
                seq = self.next_out_seq
                self.next_out_seq += 1
                self.pending.append(PendingReliable(seq, event, now, on_give_up))
            parts.append(envelope_fragment(event, seq, ack))
            ack = 0
        if ack:
            ack_event = make_event("system.ack", b"", priority=_CRITICAL, reliable=False)
            parts.append(envelope_fragment(ack_event, 0, ack))
        self._ack_pending = False
        frame = b"".join(parts)
        if self._codec and len(frame) >= self._threshold:
            frame = compress_frame(frame, self._codec)
        return frame

    def resend_frame(self) -> bytes | None:
        """After a resume: every reliable event the server had not acknowledged, in order."""
        if not self.pending:
            return None
        return b"".join(envelope_fragment(p.event, p.seq, 0) for p in self.pending)

    def expire(self, now: float) -> list[PendingReliable]:
        """Reliable events unacknowledged past the timeout: given up, reported to the caller."""
        expired: list[PendingReliable] = []
        while self.pending and now - self.pending[0].first_sent > self.reliable_timeout:
            expired.append(self.pending.popleft())
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
