"""Sans-io codec: WebSocket message bytes <-> envelopes.

Outbound events are serialised once and shared by every recipient.  A
protobuf message is the concatenation of its fields, and a repeated field is
the concatenation of its elements, so a recipient's frame is assembled by
joining ready-made byte fragments: ``Frame.envelopes`` entries built from a
per-connection prefix (``seq`` and ``ack``, a few bytes) and the shared body
(type, version, payload, priority, ...).  Per recipient that is a varint and
a join, never a protobuf object.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import lz4.frame
from google.protobuf.message import DecodeError

from gateway.codes import CloseCode
from protocol import events_pb2

__all__ = [
    "COMPRESSION_NAMES",
    "OutEvent",
    "WireError",
    "compress_frame",
    "decode_frame",
    "encode_fragment",
    "envelope_fragment",
    "make_event",
    "varint",
]

Envelope = events_pb2.Envelope
Frame = events_pb2.Frame

COMPRESSION_NAMES = {
    "zlib": events_pb2.COMPRESSION_ZLIB,
    "lz4": events_pb2.COMPRESSION_LZ4,
}

_FRAME_ENVELOPES_TAG = b"\x0a"  # field 1, wire type 2 (length-delimited)
_SEQ_TAG = 0x08  # Envelope.seq: field 1, varint
_ACK_TAG = 0x10  # Envelope.ack: field 2, varint


class WireError(Exception):
    """Input that cannot be a valid Frame: the connection closes with ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def varint(value: int) -> bytes:
    """Protobuf base-128 varint (unsigned)."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(slots=True, eq=False)
class OutEvent:
    """An outbound event, serialised once, shared by every recipient.

    ``body`` is a serialised Envelope without ``seq`` and ``ack``.
    ``priority`` is the numeric protobuf Priority (1 = critical ... 4 = low).
    ``key`` names what an unreliable event supersedes (e.g. ``"pos:42"``): a
    newer queued event with the same key replaces the older one.
    """

    type: str
    body: bytes
    priority: int
    reliable: bool
    key: str | None = None
    # Reliable topic events: the topic and the event's position in its log, so a
    # session can tell what it already has (cursor) and catch up after a resume.
    topic: str | None = None
    topic_seq: int = 0
    size: int = field(init=False)
    _plain: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.size = len(self.body) + 12  # body plus tag, length and seq/ack prefix at most

    def plain_fragment(self) -> bytes:
        """The Frame fragment for an unsequenced, ack-free copy: identical for everyone."""
        if self._plain is None:
            self._plain = _FRAME_ENVELOPES_TAG + varint(len(self.body)) + self.body
        return self._plain


def make_event(
    type_: str,
    payload: bytes,
    *,
    version: int = 1,
    priority: int = events_pb2.PRIORITY_NORMAL,
    reliable: bool = True,
    correlation_id: int = 0,
    timestamp_us: int = 0,
    key: str | None = None,
) -> OutEvent:
    """Serialise an event once; ``payload`` is the already-serialised message."""
    body = Envelope(
        type=type_,
        version=version,
        payload=payload,
        priority=priority,  # type: ignore[arg-type]
        correlation_id=correlation_id,
        timestamp_us=timestamp_us,
    ).SerializeToString()
    return OutEvent(type_, body, priority, reliable, key)


def envelope_fragment(event: OutEvent, seq: int, ack: int) -> bytes:
    """The Frame fragment carrying ``event`` with this connection's seq and ack."""
    if not seq and not ack:
        return event.plain_fragment()
    prefix = b""
    if seq:
        prefix = bytes((_SEQ_TAG,)) + varint(seq)
    if ack:
        prefix += bytes((_ACK_TAG,)) + varint(ack)
    return _FRAME_ENVELOPES_TAG + varint(len(prefix) + len(event.body)) + prefix + event.body


def encode_fragment(envelope: events_pb2.Envelope) -> bytes:
    """Fragment for an ad-hoc Envelope object (clients, tools, tests)."""
    body = envelope.SerializeToString()
    return _FRAME_ENVELOPES_TAG + varint(len(body)) + body


def compress_frame(raw: bytes, codec: int, zlib_level: int = 6) -> bytes:
    """Wrap an assembled (uncompressed) frame in a compressed Frame."""
    if codec == events_pb2.COMPRESSION_ZLIB:
        data = zlib.compress(raw, zlib_level)
    elif codec == events_pb2.COMPRESSION_LZ4:
        data = lz4.frame.compress(raw)
    else:
        return raw
    return Frame(compression=codec, compressed=data).SerializeToString()  # type: ignore[arg-type]


def _decompress(codec: int, data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes: a small bomb must not become a large allocation."""
    try:
        if codec == events_pb2.COMPRESSION_ZLIB:
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, limit + 1)
            if len(out) > limit or inflater.unconsumed_tail:
                raise WireError(CloseCode.TOO_BIG, "decompressed frame over the message limit")
            if not inflater.eof:
                raise WireError(CloseCode.BAD_FRAME, "truncated zlib stream")
            return out
        if codec == events_pb2.COMPRESSION_LZ4:
            lz4_inflater = lz4.frame.LZ4FrameDecompressor()
            out = lz4_inflater.decompress(data, max_length=limit + 1)
            if len(out) > limit or (not lz4_inflater.eof and not lz4_inflater.needs_input):
                raise WireError(CloseCode.TOO_BIG, "decompressed frame over the message limit")
            if not lz4_inflater.eof:
                raise WireError(CloseCode.BAD_FRAME, "truncated lz4 stream")
            return bytes(out)
    except (zlib.error, RuntimeError) as exc:
        raise WireError(CloseCode.BAD_FRAME, f"bad compressed data: {exc}")
    raise WireError(CloseCode.BAD_FRAME, f"unknown compression {codec}")


def decode_frame(
    data: bytes,
    *,
    max_events: int,
    max_size: int,
    accepted_compression: frozenset[int] = frozenset(),
) -> list[events_pb2.Envelope]:
    """Parse one WebSocket message into envelopes, enforcing the limits.

    Raises :class:`WireError` for anything that is not a well-formed frame
    within the limits.  Unknown protobuf fields are tolerated (forward
    compatibility) and dropped.
    """
    if len(data) > max_size:
        raise WireError(CloseCode.TOO_BIG, f"message of {len(data)} bytes over {max_size}")
    frame = Frame()
    try:
        frame.ParseFromString(data)
    except DecodeError:
        raise WireError(CloseCode.BAD_FRAME, "message is not a Frame")
    if frame.compression:
        if frame.compression not in accepted_compression:
            raise WireError(CloseCode.BAD_FRAME, "compression was not negotiated")
        if frame.envelopes:
            raise WireError(CloseCode.BAD_FRAME, "compressed frame also carries envelopes")
        inner = Frame()
        try:
            inner.ParseFromString(_decompress(frame.compression, frame.compressed, max_size))
        except DecodeError:
            raise WireError(CloseCode.BAD_FRAME, "compressed payload is not a Frame")
        if inner.compression:
            raise WireError(CloseCode.BAD_FRAME, "nested compression")
        frame = inner
    count = len(frame.envelopes)
    if count > max_events:
        raise WireError(CloseCode.FRAME_LIMIT, f"{count} events in one frame, limit {max_events}")
    return list(frame.envelopes)
