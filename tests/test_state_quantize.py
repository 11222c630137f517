"""Quantisation: positions, dead reckoning and smallest-three rotations, with their precision."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.state.quantize import (
    ROT_IDENTITY,
    extrapolate,
    pack_rotation,
    quantize,
    unpack_rotation,
    unzigzag,
    yaw_quaternion,
    zigzag,
)


def angle_between(a, b):
    dot = abs(sum(x * y for x, y in zip(a, b, strict=True)))
    return math.degrees(2 * math.acos(min(1.0, dot)))


def test_position_quantisation_error_is_at_most_half_a_step():
    rng = random.Random(3)
    for _ in range(10000):
        v = rng.uniform(-5000, 5000)
        assert abs(quantize(v, 64) / 64 - v) <= 0.5 / 64 + 1e-9


@given(st.integers(-(1 << 40), 1 << 40))
def test_zigzag_round_trips(value):
    assert unzigzag(zigzag(value)) == value
    assert zigzag(value) >= 0


def test_extrapolation_is_exact_integer_arithmetic_rounding_halves_up():
    assert extrapolate(100, 60, 1, 60) == 101
    assert extrapolate(100, 30, 1, 60) == 101  # 0.5 rounds up
    assert extrapolate(100, -30, 1, 60) == 100  # -0.5 rounds up too
    assert extrapolate(100, -90, 1, 60) == 99  # -1.5 -> -1
    assert extrapolate(100, 0, 50, 60) == 100
    assert extrapolate(100, 640, 0, 60) == 100
    for v in range(-300, 300, 7):
        for n in range(0, 200, 13):
            assert extrapolate(0, v, n, 60) == math.floor(v * n / 60 + 0.5)


def test_rotation_error_is_under_a_quarter_of_a_degree():
    rng = random.Random(5)
    worst = 0.0
    for _ in range(20000):
        q = [rng.gauss(0, 1) for _ in range(4)]
        norm = math.sqrt(sum(c * c for c in q))
        q = [c / norm for c in q]
        worst = max(worst, angle_between(q, unpack_rotation(pack_rotation(*q))))
    assert worst < 0.25, worst
    assert pack_rotation(*q) < (1 << 32)


def test_identity_and_yaw_helpers():
    assert unpack_rotation(ROT_IDENTITY) == pytest_approx((0.0, 0.0, 0.0, 1.0))
    q = yaw_quaternion(math.pi / 2)
    assert angle_between(q, unpack_rotation(pack_rotation(*q))) < 0.2
    assert pack_rotation(0, 0, 0, 0) == ROT_IDENTITY  # a degenerate quaternion is the identity
    # q and -q are the same rotation: the same packing
    assert pack_rotation(*q) == pack_rotation(*(-c for c in q))


def pytest_approx(values):
    import pytest

    return pytest.approx(values, abs=2e-3)
