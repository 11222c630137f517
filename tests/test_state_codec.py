"""The dense record format: round trips, sizes and refusals of bad input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.state.codec import (
    DELTA,
    FULL,
    REMOVED,
    WIRE_BYTES,
    WIRE_INT,
    StateDecodeError,
    decode_records,
    encode_delta,
    encode_full,
    encode_removed,
    encode_update,
)
from gateway.state.quantize import ROT_IDENTITY, extrapolate, pack_rotation
from protocol import state_pb2

HZ = 60
WIRE = (WIRE_INT, WIRE_BYTES)
DEFAULTS = (0, b"")


def state(v=10, kind=1, px=0, py=0, pz=0, vx=0, vy=0, vz=0, rot=ROT_IDENTITY, f=(0, b"")):
    return (v, kind, px, py, pz, vx, vy, vz, rot, *f)


def decode(data, tick, bases=None):
    bases = bases or {}
    return decode_records(data, tick, HZ, lambda e, v: bases.get((e, v)),
                          lambda kind: WIRE, lambda kind: DEFAULTS)


def test_full_record_round_trips_and_is_small():
    s = state(v=95, px=6400, py=-3200, vx=192, vy=-64, rot=pack_rotation(0, 0, 0.38, 0.92),
              f=(100, b"alice"))
    data = encode_full(7, s, 100, HZ, WIRE, DEFAULTS)
    assert decode(data, 100) == [(FULL, 7, s)]
    assert len(data) <= 24


def test_delta_against_dead_reckoned_base_sends_only_the_residual():
    base = state(v=10, px=1000, py=2000, vx=128, vy=0)
    # 60 ticks later dead reckoning says px = 1128; the entity is 3 units further.
    new = state(v=70, px=extrapolate(1000, 128, 60, HZ) + 3, py=2000, vx=128, vy=0)
    data = encode_delta(7, new, base, 72, HZ, WIRE)
    assert len(data) == 5  # head, age, base age, mask, one residual
    assert decode(data, 72, {(7, 10): base}) == [(DELTA, 7, new)]


def test_unchanged_fields_cost_nothing_and_bytes_fields_travel_whole():
    base = state(f=(100, b"bob"))
    new = state(v=11, f=(95, b"bobby"))
    data = encode_delta(3, new, base, 11, HZ, WIRE)
    assert decode(data, 11, {(3, 10): base}) == [(DELTA, 3, new)]


def test_removed_record():
    assert decode(encode_removed(123456), 5) == [(REMOVED, 123456, None)]


def test_a_delta_against_an_unknown_version_is_refused():
    new = state(v=11, px=5)
    with pytest.raises(StateDecodeError):
        decode(encode_delta(3, new, state(), 11, HZ, WIRE), 11, {})


@pytest.mark.parametrize("data", [b"\x80", b"\x04\x00", b"\x07", b"\x05\x00\x01\x40\x01",
                                  b"\x05\x00\x01\xff\xff\x01"])
def test_malformed_records_are_refused(data):
    with pytest.raises(StateDecodeError):
        decode(data, 10)


ints = st.integers(-(1 << 24), 1 << 24)


@settings(max_examples=300, deadline=None)
@given(st.tuples(ints, ints, ints, ints, ints, ints), st.tuples(ints, ints, ints, ints, ints, ints),
       st.integers(0, 500), st.integers(0, 500), st.integers(0, 1 << 32 - 1),
       st.integers(-1000, 1000), st.binary(max_size=40))
def test_any_delta_round_trips(a, b, base_v, gap, rot, health, name):
    base = state(base_v, 1, *a, rot=ROT_IDENTITY, f=(0, b""))
    new = state(base_v + gap, 1, *b, rot=rot, f=(health, name))
    tick = base_v + gap + 3
    data = encode_delta(9, new, base, tick, HZ, WIRE)
    assert decode(data, tick, {(9, base_v): base}) == [(DELTA, 9, new)]
    full = encode_full(9, new, tick, HZ, WIRE, DEFAULTS)
    assert decode(full, tick) == [(FULL, 9, new)]


def test_update_header_is_a_valid_protobuf_message():
    rng = random.Random(1)
    for _ in range(200):
        args = (rng.randint(1, 1 << 31), rng.randint(0, 1 << 40), rng.randint(0, 1 << 20),
                rng.random() < 0.5, bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))),
                rng.randint(0, 1 << 31))
        raw = encode_update(*args)
        msg = state_pb2.StateUpdate.FromString(raw)
        assert (msg.seq, msg.tick, msg.input_seq, msg.full, msg.records, msg.epoch) == args
        assert msg.SerializeToString() == raw  # byte for byte what protobuf would write
