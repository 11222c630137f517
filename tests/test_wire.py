"""gateway.wire: varints, fragment assembly, compression and the decoder's limits."""

from __future__ import annotations

import tracemalloc
import zlib

import lz4.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codes import CloseCode
from gateway.wire import (
    OutEvent,
    WireError,
    compress_frame,
    decode_frame,
    encode_fragment,
    envelope_fragment,
    make_event,
    varint,
)
from protocol import events_pb2

Envelope = events_pb2.Envelope
Frame = events_pb2.Frame
ZLIB = events_pb2.COMPRESSION_ZLIB
LZ4 = events_pb2.COMPRESSION_LZ4
BOTH = frozenset({ZLIB, LZ4})
U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)

envelopes = st.builds(
    Envelope,
    seq=U64,
    ack=U64,
    type=st.text(max_size=24),
    version=U32,
    payload=st.binary(max_size=64),
    priority=st.integers(min_value=0, max_value=4),
    timestamp_us=U64,
    correlation_id=U64,
)


def decode(data: bytes, accepted: frozenset[int] = BOTH, **limits: int) -> list[Envelope]:
    return decode_frame(
        data,
        max_events=limits.get("max_events", 1 << 20),
        max_size=limits.get("max_size", 1 << 24),
        accepted_compression=accepted,
    )


def frame_of(*envs: Envelope) -> bytes:
    return b"".join(encode_fragment(e) for e in envs)


def wire_error(data: bytes, **kwargs: object) -> WireError:
    with pytest.raises(WireError) as info:
        decode(data, **kwargs)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- varint


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint_known_values(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded


@settings(max_examples=200, deadline=None, database=None)
@given(U64.filter(bool))
def test_varint_matches_protobuf(value: int) -> None:
    # Envelope.seq is field 1, varint: tag 0x08 then the value.
    assert Envelope(seq=value).SerializeToString() == b"\x08" + varint(value)


# ---------------------------------------------------------------- fragments


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(envelopes, max_size=8))
def test_joined_fragments_are_a_frame(envs: list[Envelope]) -> None:
    joined = frame_of(*envs)
    reference = Frame(envelopes=envs).SerializeToString()
    assert Frame.FromString(joined) == Frame.FromString(reference)
    assert decode(joined) == envs


@settings(max_examples=100, deadline=None, database=None)
@given(seq=U64, ack=U64, type_=st.text(max_size=16), payload=st.binary(max_size=40),
       version=st.integers(min_value=1, max_value=2**32 - 1),
       priority=st.integers(min_value=0, max_value=4), correlation_id=U64)
def test_seq_ack_prefix_merges_into_the_shared_body(
    seq: int, ack: int, type_: str, payload: bytes, version: int, priority: int,
    correlation_id: int,
) -> None:
    event = make_event(type_, payload, version=version, priority=priority,
                       correlation_id=correlation_id, timestamp_us=7)
    [env] = decode(envelope_fragment(event, seq, ack))
    assert (env.seq, env.ack) == (seq, ack)
    assert env.type == type_
    assert env.payload == payload
    assert env.version == version
    assert env.priority == priority
    assert env.correlation_id == correlation_id
    assert env.timestamp_us == 7


def test_plain_fragment_is_shared_and_cached() -> None:
    event = make_event("game.tick", b"abc", reliable=False)
    assert envelope_fragment(event, 0, 0) is event.plain_fragment()
    assert event.plain_fragment() is event.plain_fragment()
    [env] = decode(event.plain_fragment())
    assert (env.seq, env.ack, env.type, env.payload) == (0, 0, "game.tick", b"abc")


def test_out_event_size_covers_the_body_and_the_prefix() -> None:
    event = make_event("game.tick", b"x" * 100)
    assert isinstance(event, OutEvent)
    assert event.size == len(event.body) + 12
    assert len(envelope_fragment(event, 2**20, 2**20)) <= event.size


def test_make_event_body_has_no_seq_or_ack() -> None:
    event = make_event("game.tick", b"p", reliable=True, key="k")
    env = Envelope.FromString(event.body)
    assert env.seq == 0 and env.ack == 0
    assert event.reliable and event.key == "k"
    assert event.priority == events_pb2.PRIORITY_NORMAL


# ---------------------------------------------------------------- compression


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_compressed_round_trip(codec: int) -> None:
    envs = [Envelope(seq=i, type="game.move", payload=b"xy" * 50) for i in range(1, 20)]
    raw = frame_of(*envs)
    packed = compress_frame(raw, codec)
    outer = Frame.FromString(packed)
    assert outer.compression == codec
    assert not outer.envelopes
    assert len(packed) < len(raw)
    assert decode(packed, frozenset({codec})) == envs


def test_compress_frame_none_is_identity() -> None:
    raw = frame_of(Envelope(type="a.b"))
    assert compress_frame(raw, events_pb2.COMPRESSION_NONE) is raw


def test_zlib_level_is_used() -> None:
    raw = frame_of(*[Envelope(type="a.b", payload=bytes(range(256)) * 4) for _ in range(4)])
    fast = Frame.FromString(compress_frame(raw, ZLIB, 1)).compressed
    best = Frame.FromString(compress_frame(raw, ZLIB, 9)).compressed
    assert zlib.decompress(fast) == zlib.decompress(best) == raw


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_compression_not_negotiated_is_refused(codec: int) -> None:
    packed = compress_frame(frame_of(Envelope(type="a.b")), codec)
    assert wire_error(packed, accepted=frozenset()).code is CloseCode.BAD_FRAME
    other = LZ4 if codec == ZLIB else ZLIB
    assert wire_error(packed, accepted=frozenset({other})).code is CloseCode.BAD_FRAME


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_nested_compression_is_refused(codec: int) -> None:
    inner = compress_frame(frame_of(Envelope(type="a.b")), codec)
    compress = zlib.compress if codec == ZLIB else lz4.frame.compress
    nested = Frame(compression=codec, compressed=compress(inner)).SerializeToString()
    err = wire_error(nested)
    assert err.code is CloseCode.BAD_FRAME
    assert "nested" in err.reason


def test_compressed_frame_with_envelopes_is_refused() -> None:
    outer = Frame(compression=ZLIB, compressed=zlib.compress(frame_of(Envelope(type="a.b"))))
    outer.envelopes.add(type="c.d")
    assert wire_error(outer.SerializeToString()).code is CloseCode.BAD_FRAME


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_compressed_garbage_is_bad_frame(codec: int) -> None:
    compress = zlib.compress if codec == ZLIB else lz4.frame.compress
    not_a_frame = Frame(compression=codec, compressed=compress(b"\xff\xff\xff")).SerializeToString()
    assert wire_error(not_a_frame).code is CloseCode.BAD_FRAME
    corrupt = Frame(compression=codec, compressed=b"definitely not compressed").SerializeToString()
    assert wire_error(corrupt).code is CloseCode.BAD_FRAME


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_truncated_stream_is_bad_frame(codec: int) -> None:
    raw = frame_of(*[Envelope(type="a.b", payload=bytes(range(200)))] * 10)
    data = Frame.FromString(compress_frame(raw, codec)).compressed
    for cut in (len(data) // 2, len(data) - 1):
        truncated = Frame(compression=codec, compressed=data[:cut]).SerializeToString()
        err = wire_error(truncated)
        assert err.code is CloseCode.BAD_FRAME, (cut, err.reason)


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_decompressed_size_limit_is_exact(codec: int) -> None:
    env = Envelope(type="a.b", payload=b"\0" * 4000)
    raw = frame_of(env)
    packed = compress_frame(raw, codec)
    assert decode(packed, max_size=len(raw)) == [env]
    assert wire_error(packed, max_size=len(raw) - 1).code is CloseCode.TOO_BIG


@pytest.mark.parametrize("codec", [ZLIB, LZ4])
def test_decompression_bomb_is_refused_without_inflating_it(codec: int) -> None:
    bomb_size = 16 << 20
    inner = Frame(envelopes=[Envelope(type="a.b", payload=b"\0" * bomb_size)]).SerializeToString()
    packed = compress_frame(inner, codec, 9)
    limit = 100_000
    assert len(packed) < limit  # small on the wire ...
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as info:
            decode(packed, max_size=limit)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code is CloseCode.TOO_BIG
    # ... and never inflated: memory stays around the limit, far from the 16 MiB.
    assert peak < 2 << 20, peak


# ---------------------------------------------------------------- limits and garbage


def test_max_events_is_frame_limit() -> None:
    data = frame_of(*[Envelope(type="a.b")] * 5)
    assert len(decode(data, max_events=5)) == 5
    assert wire_error(data, max_events=4).code is CloseCode.FRAME_LIMIT


def test_max_events_applies_inside_compressed_frames() -> None:
    packed = compress_frame(frame_of(*[Envelope(type="a.b")] * 5), ZLIB)
    assert wire_error(packed, max_events=4).code is CloseCode.FRAME_LIMIT


def test_oversize_message_is_too_big() -> None:
    data = frame_of(Envelope(type="a.b", payload=b"x" * 100))
    assert len(decode(data, max_size=len(data))) == 1
    assert wire_error(data, max_size=len(data) - 1).code is CloseCode.TOO_BIG


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff",
        b"\x0a\x10abc",  # length past the end
        b"\x0a\x03\x08",  # truncated inner varint
        b"\x07",  # invalid wire type
    ],
)
def test_garbage_is_bad_frame(garbage: bytes) -> None:
    assert wire_error(garbage).code is CloseCode.BAD_FRAME


def test_empty_message_is_an_empty_frame() -> None:
    assert decode(b"") == []


def test_unknown_fields_are_tolerated() -> None:
    # Envelope field 99 (varint) and Frame field 15 (length-delimited): from a newer peer.
    body = Envelope(seq=3, type="a.b", payload=b"p").SerializeToString() + b"\x98\x06\x2a"
    data = b"\x0a" + varint(len(body)) + body + b"\x7a\x02hi"
    [env] = decode(data)
    assert (env.seq, env.type, env.payload) == (3, "a.b", b"p")


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_decode_raises_only_wire_error_on_arbitrary_bytes(data: bytes) -> None:
    try:
        decode(data, max_events=16, max_size=150)
    except WireError as exc:
        assert isinstance(exc.code, CloseCode)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from([ZLIB, LZ4]), st.binary(max_size=200))
def test_decode_raises_only_wire_error_on_arbitrary_compressed_bytes(
    codec: int, payload: bytes
) -> None:
    data = Frame(compression=codec, compressed=payload).SerializeToString()
    try:
        decode(data, max_events=16, max_size=4096)
    except WireError as exc:
        assert isinstance(exc.code, CloseCode)


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from([ZLIB, LZ4]), st.lists(envelopes, max_size=6))
def test_compressed_round_trip_of_arbitrary_envelopes(codec: int, envs: list[Envelope]) -> None:
    assert decode(compress_frame(frame_of(*envs), codec)) == envs
