"""The interest grid: incremental visible sets that match a brute-force check."""

from __future__ import annotations

import math
import random

import pytest

from gateway.state.grid import InterestGrid


def brute_force(grid, positions, viewer_xy):
    vc = grid.cell(*viewer_xy)
    radius = grid.view_radius / grid.cell_size
    out = set()
    for e, (x, y) in positions.items():
        c = grid.cell(x, y)
        if math.hypot(c[0] - vc[0], c[1] - vc[1]) <= radius:
            out.add(e)
    return out


def test_visible_sets_follow_entities_and_viewers_across_borders():
    rng = random.Random(11)
    grid = InterestGrid(cell_size=10, view_radius=25)
    positions = {e: (rng.uniform(0, 200), rng.uniform(0, 200)) for e in range(300)}
    viewers = {v: (rng.uniform(0, 200), rng.uniform(0, 200)) for v in range(20)}
    for e, xy in positions.items():
        grid.move(e, *xy)
    for v, xy in viewers.items():
        grid.set_viewer(v, *xy)
    grid.take_changes()
    for _ in range(200):
        previous = {v: set(grid.visible(v)) for v in viewers}
        for e in rng.sample(sorted(positions), 40):
            x, y = positions[e]
            positions[e] = (x + rng.uniform(-6, 6), y + rng.uniform(-6, 6))
            grid.move(e, *positions[e])
        for v in rng.sample(sorted(viewers), 5):
            x, y = viewers[v]
            viewers[v] = (x + rng.uniform(-8, 8), y + rng.uniform(-8, 8))
            grid.set_viewer(v, *viewers[v])
        gone = rng.choice(sorted(positions))
        del positions[gone]
        grid.remove(gone)
        changes = grid.take_changes()
        for v, xy in viewers.items():
            now = brute_force(grid, positions, xy)
            assert grid.visible(v) == now
            entered, left = changes.get(v, (set(), set()))
            assert entered == now - previous[v]
            assert left == previous[v] - now


def test_moving_inside_a_cell_is_no_work_and_radius_is_cell_granular():
    grid = InterestGrid(cell_size=10, view_radius=20)
    assert grid.move(1, 5, 5) is True
    assert grid.move(1, 9.9, 0.1) is False  # same cell
    grid.set_viewer("v", 5, 5)
    assert grid.visible("v") == {1}
    grid.move(2, 25, 5)  # two cells east: centre distance 20 <= radius
    grid.move(3, 35, 5)  # three cells: out
    grid.move(4, 25, 25)  # diagonal (2, 2): 28.3 > 20, out
    assert grid.visible("v") == {1, 2}
    grid.remove_viewer("v")
    assert grid.visible("v") == set()


def test_bad_parameters():
    with pytest.raises(ValueError):
        InterestGrid(0, 10)
