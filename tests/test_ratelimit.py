"""gateway.ratelimit: the token bucket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit import TokenBucket


def test_starts_full_and_refuses_past_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=4, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [True] * 4 + [False]


def test_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=4, now=0.0)
    for _ in range(4):
        assert bucket.take(0.0)
    assert not bucket.take(0.4)  # 0.8 of a token
    assert bucket.take(0.5)  # 1.0
    assert not bucket.take(0.5)
    assert bucket.take(1.5, cost=2)
    assert bucket.tokens == pytest.approx(0.0)


def test_burst_caps_the_refill() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert bucket.take(0.0, cost=3)
    bucket.take(1000.0, cost=0)
    assert bucket.tokens == 3
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]


def test_refusal_spends_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=10, now=0.0)
    assert bucket.take(0.0, cost=8.5)
    assert not bucket.take(0.0, cost=2)
    assert bucket.tokens == pytest.approx(1.5)
    assert bucket.take(0.0, cost=1.5)
    assert not bucket.take(0.0, cost=0.01)


def test_clock_going_backwards_gives_no_free_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=5, now=100.0)
    assert bucket.take(100.0, cost=5)
    # A step back neither refills nor drains ...
    assert not bucket.take(40.0)
    assert bucket.tokens == pytest.approx(0.0)
    # ... and time counts again from the new reading, not from the old one.
    assert not bucket.take(40.5)
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.take(41.0)


def test_clock_going_backwards_keeps_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=5, now=100.0)
    assert bucket.take(100.0, cost=2)
    assert bucket.take(50.0, cost=3)
    assert not bucket.take(50.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (1, -2)])
def test_rejects_non_positive_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(0, 3)), max_size=40))
def test_never_more_than_earned(steps: list[tuple[float, float]]) -> None:
    """Taken tokens never exceed the burst plus rate x (clock advance), whatever the clock does."""
    rate, burst = 2.0, 5.0
    bucket = TokenBucket(rate, burst, 0.0)
    now, advanced, taken = 0.0, 0.0, 0.0
    for delta, cost in steps:
        advanced += max(0.0, delta)
        now += delta
        if bucket.take(now, cost):
            taken += cost
        assert 0.0 <= bucket.tokens <= burst
    assert taken <= burst + rate * advanced + 1e-6
