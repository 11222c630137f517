"""Budgets and the priority accumulator: within budget on average, and nothing starves."""

from __future__ import annotations

import itertools

import pytest

from gateway.state.priority import ByteBudget, PriorityAccumulator, distance_weight
from gateway.state.provider import EntityState
from gateway.state.sync import KindRate, SyncConfig, SyncEngine


def test_bucket_refills_up_to_burst_and_carries_debt():
    b = ByteBudget(1000, burst=300)
    assert b.tokens == 300
    b.charge(500)
    assert b.tokens == -200 and not b.available
    b.refill(0.1)
    assert b.tokens == pytest.approx(-100)
    b.refill(10)
    assert b.tokens == 300
    with pytest.raises(ValueError):
        ByteBudget(0)


def test_accumulator_orders_by_accumulated_weight():
    acc = PriorityAccumulator()
    for _ in range(3):
        acc.add("far", distance_weight(3))
    acc.add("near", distance_weight(0))
    assert acc.order(["near", "far", "new"]) == ["near", "far", "new"]
    acc.add("far", 1.0)
    assert acc.order(["near", "far"])[0] == "far"
    acc.reset("far")
    acc.forget(["near"])
    assert acc.values == {}


def moving(n, tick, spread=1.0):
    return [EntityState(e, 0, e * spread + tick * 0.5, 0.0, vx=0.0) for e in range(1, n + 1)]


def run(engine, ticks, states, *, start=1, hz=60):
    sent: dict[int, int] = {}
    total = 0
    for tick in range(start, start + ticks):
        engine.update(tick, states(tick))
        for viewer, payload, _full in engine.build(tick, 1 / hz):
            engine.charge(viewer.key, len(payload))
            total += len(payload)
            known = viewer.known
            for e, st in known.items():
                if st is not None and st is engine.world.get(e):
                    sent[e] = tick
            # acknowledge everything at once (a perfect network)
            engine.ack(viewer.key, viewer.seq, (1 << 64) - 1)
    return sent, total


def test_nothing_starves_under_a_tiny_budget_and_the_budget_holds():
    # 200 entities all changing every tick (teleporting: no dead reckoning help),
    # 2 KB/s: about 15 records a tick fit.  Every entity must still get through.
    engine = SyncEngine(config=SyncConfig(bytes_per_second=2000, burst_bytes=300,
                                          cell_size=1000, view_radius=1000, keepalive=0))
    engine.add_viewer("p", entity=None)
    engine.set_view_position("p", 0.0, 0.0)
    last_seen: dict[int, list[int]] = {}
    total = 0
    for tick in range(1, 601):
        engine.update(tick, [EntityState(e, 0, (tick * 7 + e) % 97, 0.0)
                             for e in range(1, 201)])
        for viewer, payload, full in engine.build(tick, 1 / 60):
            engine.charge("p", len(payload) + 20)  # envelope overhead too
            total += len(payload) + 20
            if not full:
                for pkt in viewer.inflight:
                    for e, _st in pkt.entries:
                        last_seen.setdefault(e, []).append(tick)
            engine.ack("p", viewer.seq, (1 << 64) - 1)
    assert set(last_seen) == set(range(1, 201))  # everyone was sent
    # and repeatedly: the largest gap between two updates of an entity is bounded
    gaps = [max(b - a for a, b in itertools.pairwise(t)) for t in last_seen.values()
            if len(t) > 1]
    assert max(gaps) < 120, max(gaps)
    seconds = 600 / 60
    assert total <= 2000 * seconds + 300 + 400  # budget, burst, one overdraw


def test_kind_throttling_and_distance():
    config = SyncConfig(cell_size=10, view_radius=100, near_radius=10, far_interval=3,
                        kinds=(KindRate(kind=2, interval=6),), keepalive=0)
    engine = SyncEngine(config=config)
    engine.add_viewer("p")
    engine.set_view_position("p", 0.0, 0.0)
    counts = {1: 0, 2: 0, 3: 0}
    for tick in range(1, 121):
        states = [
            EntityState(1, 0, 1.0 + tick % 5, 0.0),  # near, normal kind: every tick
            EntityState(2, 2, 1.0 + tick % 5, 1.0),  # near, kind 2: every 6th tick
            EntityState(3, 0, 80.0 + tick % 5, 0.0),  # far: every 3rd tick
        ]
        engine.update(tick, states)
        for viewer, _payload, full in engine.build(tick, 1 / 60):
            if not full:
                for e, _st in viewer.inflight[-1].entries:
                    counts[e] += 1
            engine.ack("p", viewer.seq, (1 << 64) - 1)
    assert counts[1] >= 115
    assert 18 <= counts[2] <= 21
    assert 37 <= counts[3] <= 41
