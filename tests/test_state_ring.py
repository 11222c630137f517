"""The ring of recent world states: lookup and rewind by tick, and the late-input rule."""

from __future__ import annotations

import pytest

from gateway.state.provider import EntityState
from gateway.state.ring import ACCEPT, REJECT_LATE, StateRing, classify_input
from gateway.state.sync import SyncConfig, SyncEngine


def test_lookup_by_tick_with_gaps_and_depth():
    ring = StateRing(depth=4)
    assert ring.at(5) is None and ring.oldest is None
    for tick in (3, 6, 9, 12, 15):
        ring.push(tick, {1: (tick,)})
    assert len(ring) == 4 and ring.oldest == 6 and ring.newest == 15
    assert ring.at(5) is None  # older than the ring
    assert ring.at(6)[1] == (6,)
    assert ring.at(8)[1] == (6,)  # the newest stored tick at or before
    assert ring.at(100)[1] == (15,)
    with pytest.raises(ValueError):
        ring.push(15, {})
    with pytest.raises(ValueError):
        StateRing(0)


def test_rewind_gives_past_positions_for_lag_compensation():
    engine = SyncEngine(config=SyncConfig(ring_depth=10))
    for tick in range(1, 31):
        engine.update(tick, [EntityState(1, 0, float(tick), 0.0, vx=60.0)])
    ring = engine.ring
    assert ring.oldest == 21
    pos = ring.positions_at(25, 60)
    assert pos is not None
    assert abs(pos[1][0] - 25 * 64) <= 2  # 25 m, within the dead-reckoning tolerance
    assert ring.positions_at(3, 60) is None
    assert classify_input(25, ring) == ACCEPT
    assert classify_input(40, ring) == ACCEPT  # the future: not late
    assert classify_input(20, ring) == REJECT_LATE
