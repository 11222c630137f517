"""The client SDK's sans-io pieces: acks, input redundancy, reconciliation, interpolation."""

from __future__ import annotations

import math

import pytest

from gateway.client.prediction import (
    InputBuffer,
    Interpolator,
    Reconciler,
    ReplicaSchema,
    StateReplica,
)
from gateway.state.codec import encode_full
from gateway.state.provider import FieldSpec, Schema
from gateway.state.quantize import ROT_IDENTITY
from protocol import state_pb2


def test_ack_mask_reports_what_arrived():
    r = StateReplica()
    rec = encode_full(1, (1, 0, 0, 0, 0, 0, 0, 0, ROT_IDENTITY), 1, 60, (), ())
    assert r.apply(1, 1, 0, True, rec, 1)
    for seq in (2, 4, 5):
        assert r.apply(seq, seq, 0, False, b"", 1)
    seq, mask, resync = r.ack()
    assert (seq, resync) == (5, False)
    assert mask & 1 and not mask & 2 and mask & 4 and mask & 8  # 4 yes, 3 no, 2 yes, 1 yes
    assert not r.ack_pending
    assert not r.apply(6, 6, 0, False, b"", 99)  # another epoch: ignored
    assert r.ignored == 1


def test_schema_message_round_trip():
    schema = ReplicaSchema.from_schema(
        Schema({1: (FieldSpec("hp"), FieldSpec("speed", "float", 0.5))}), tick_rate=30,
        entity_id=0)
    back = ReplicaSchema.from_message(state_pb2.StateSchema.FromString(
        schema.to_message().SerializeToString()))
    assert back == schema


def test_input_buffer_repeats_unconfirmed_inputs():
    buf = InputBuffer(redundancy=3)
    for i in range(5):
        assert buf.add(bytes([i]), tick=10 + i) == i + 1
    msg = buf.message()
    assert [c.seq for c in msg.inputs] == [3, 4, 5]
    buf.acknowledge(4)
    assert [c.seq for c in buf.message().inputs] == [5]
    ack = state_pb2.StateAck(seq=9, received=3)
    assert buf.message(ack).ack.seq == 9
    with pytest.raises(ValueError):
        InputBuffer(redundancy=0)


def test_reconciliation_replays_unconfirmed_inputs_on_the_servers_state():
    def step(x, dx):
        return x + dx

    rec = Reconciler(step, 0)
    for seq, dx in enumerate([1, 1, 1, 1], start=1):
        rec.predict(seq, dx)
    assert rec.state == 4
    # The server applied inputs 1 and 2 but pushed us back by 0.5 (a wall, say).
    assert rec.reconcile(1.5, 2) == 3.5
    assert [s for s, _ in rec.inputs] == [3, 4]
    assert rec.reconcile(3.5, 4) == 3.5 and not rec.inputs
    assert rec.corrections == 1


def test_interpolation_between_snapshots_with_delay():
    interp = Interpolator(tick_rate=60, delay=0.1)
    q = (0.0, 0.0, 0.0, 1.0)
    half_turn = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))
    interp.push(60, {1: (0.0, 0.0, 0.0, q)}, now=1.0)
    interp.push(63, {1: (3.0, 0.0, 0.0, half_turn)}, now=1.05)
    interp.push(66, {1: (6.0, 0.0, 0.0, half_turn), 2: (9.0, 9.0, 0.0, q)}, now=1.1)
    # render time = newest tick estimate - 6 ticks
    assert interp.render_tick(1.1) == pytest.approx(60.0)
    x, _y, _z, rot = interp.sample_tick(61.5)[1]
    assert x == pytest.approx(1.5)
    assert abs(math.hypot(*rot) - 1.0) < 1e-9
    assert interp.sample_tick(64.5)[2] == (9.0, 9.0, 0.0, q)  # new entity: no "from" pose
    assert interp.sample_tick(100)[1][0] == 6.0  # beyond the newest: held
    assert Interpolator(60).sample(5.0) == {}
