"""TickScheduler on a task.Clock: tick timing, grouping, order, stalls, errors, lifecycle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from gateway.tick import TickInfo, TickScheduler, TickStats

ROOT = Path(__file__).resolve().parents[1]
START = 1000.0
# LoopingCall.withCount turns clock time into a tick count with float
# division; landing exactly on a boundary sometimes rounds down (count 0,
# the tick slips) and the next call then reports count 2.  Real reactors
# always fire a little late, so this only bites a fake clock: stay EPS past
# each boundary.
EPS = 1e-6


class FakeMonotonic:
    """A monotonic clock that only moves when a test (or a callback) moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, critical_hz: int = 60, normal_hz: int = 10) -> None:
        self.hz = critical_hz
        self.clock = Clock()
        self.clock.advance(START)
        self.mono = FakeMonotonic()
        self.done: list[tuple[str, float, bool, int]] = []
        self.sched = TickScheduler(
            self.clock,
            critical_hz=critical_hz,
            normal_hz=normal_hz,
            monotonic=self.mono,
            on_tick_done=lambda *args: self.done.append(args),
        )
        self.started_at = 0.0
        self.frame = 0

    def start(self) -> None:
        self.sched.startService()
        self.started_at = self.clock.seconds()
        self.frame = 0

    def to_frame(self, frame: int) -> None:
        """Jump the clock to just past critical frame ``frame`` of this run."""
        self.frame = frame
        target = self.started_at + frame / self.hz + EPS
        self.clock.advance(target - self.clock.seconds())

    def ticks(self, n: int = 1) -> None:
        """Advance one period at a time: no stall."""
        for _ in range(n):
            self.to_frame(self.frame + 1)

    def stall(self, frames: int) -> None:
        """Advance several periods at once, as a blocked reactor would."""
        self.to_frame(self.frame + frames)

    def planned(self, frame: int) -> float:
        return self.started_at + frame / self.hz

    def record(self, group: str, phase: str = "update") -> list[TickInfo]:
        seen: list[TickInfo] = []
        self.sched.add(group, seen.append, phase=phase)
        return seen


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---------------------------------------------------------------- timing


def test_first_tick_comes_one_period_after_start(h: Harness) -> None:
    seen = h.record("critical")
    h.start()
    assert seen == []
    h.clock.advance(1 / 60 - 1e-4)
    assert seen == []
    h.to_frame(1)
    assert len(seen) == 1
    assert seen[0].number == 1
    assert seen[0].planned == h.planned(1)


def test_critical_ticks_at_critical_rate(h: Harness) -> None:
    seen = h.record("critical")
    h.start()
    h.ticks(12)
    assert [t.number for t in seen] == list(range(1, 13))
    assert [t.planned for t in seen] == [h.planned(f) for f in range(1, 13)]
    assert [t.actual for t in seen] == pytest.approx([h.planned(f) + EPS for f in range(1, 13)])
    assert {t.group for t in seen} == {"critical"}
    assert {t.skipped for t in seen} == {0}
    assert {t.dt for t in seen} == {1 / 60}
    assert h.sched.stats("critical") == TickStats(ticks=12)


def test_normal_runs_on_every_sixth_critical_tick(h: Harness) -> None:
    frames: list[tuple[str, int]] = []
    h.sched.add("critical", lambda t: frames.append(("c", t.number)))
    h.sched.add("normal", lambda t: frames.append(("n", t.number)))
    normal = h.record("normal")
    h.start()
    h.ticks(13)
    assert [n for g, n in frames if g == "n"] == [1, 2]
    assert frames.index(("n", 1)) == frames.index(("c", 6)) + 1
    assert frames.index(("n", 2)) == frames.index(("c", 12)) + 1
    assert [t.planned for t in normal] == [h.planned(6), h.planned(12)]
    assert [t.actual for t in normal] == pytest.approx([h.planned(6) + EPS, h.planned(12) + EPS])
    assert [t.dt for t in normal] == [0.1, 0.1]
    assert [t.skipped for t in normal] == [0, 0]
    assert h.sched.stats("normal") == TickStats(ticks=2)


def test_ratio_one_runs_normal_every_tick() -> None:
    h = Harness(critical_hz=30, normal_hz=30)
    normal = h.record("normal")
    h.start()
    h.ticks(3)
    assert [t.number for t in normal] == [1, 2, 3]
    assert [t.dt for t in normal] == [1 / 30] * 3


def test_order_within_a_tick(h: Harness) -> None:
    order: list[str] = []
    # Registered in scrambled order: the phase, then the group, decide.
    h.sched.add("normal", lambda t: order.append("normal flush"), phase="flush")
    h.sched.add("critical", lambda t: order.append("critical flush"), phase="flush")
    h.sched.add("normal", lambda t: order.append("normal update"))
    h.sched.add("critical", lambda t: order.append("critical update"))
    h.start()
    h.ticks(5)
    assert order == ["critical update", "critical flush"] * 5
    order.clear()
    h.ticks(1)
    assert order == ["critical update", "normal update", "critical flush", "normal flush"]


def test_callbacks_run_in_registration_order_within_a_phase(h: Harness) -> None:
    order: list[str] = []
    for name in ("a", "b", "c"):
        h.sched.add("critical", lambda t, name=name: order.append(name))
    h.start()
    h.ticks(2)
    assert order == ["a", "b", "c", "a", "b", "c"]


# ---------------------------------------------------------------- stalls


def test_stall_skips_ticks_without_catch_up(h: Harness) -> None:
    critical = h.record("critical")
    normal = h.record("normal")
    h.start()
    h.ticks(4)
    h.stall(5)  # frames 5..9 were due; frame 6 was a normal tick
    assert [t.number for t in critical] == [1, 2, 3, 4, 9]
    last = critical[-1]
    assert (last.skipped, last.planned) == (4, h.planned(9))
    assert last.dt == pytest.approx(5 / 60)
    assert len(normal) == 1
    assert (normal[0].number, normal[0].skipped, normal[0].dt) == (1, 0, 0.1)
    # Late: it should have run at frame 6, it runs now.
    assert normal[0].planned == h.planned(6)
    assert normal[0].actual == pytest.approx(h.planned(9) + EPS)

    h.clock.advance(0)  # nothing queued to replay the missed ticks
    assert len(critical) == 5
    h.ticks(1)
    assert (critical[-1].number, critical[-1].skipped, critical[-1].dt) == (10, 0, 1 / 60)
    assert h.sched.stats("critical") == TickStats(ticks=6, skipped=4)
    assert h.sched.stats("normal") == TickStats(ticks=1, skipped=0)


def test_stall_across_several_normal_ticks(h: Harness) -> None:
    critical = h.record("critical")
    normal = h.record("normal")
    h.start()
    h.stall(13)
    assert [(t.number, t.skipped) for t in critical] == [(13, 12)]
    assert critical[0].dt == pytest.approx(13 / 60)
    assert [(t.number, t.skipped) for t in normal] == [(2, 1)]
    assert normal[0].dt == pytest.approx(0.2)
    assert normal[0].planned == h.planned(12)
    h.ticks(5)
    assert [(t.number, t.skipped) for t in normal] == [(2, 1), (3, 0)]
    assert normal[-1].planned == h.planned(18)
    assert normal[-1].dt == 0.1
    assert h.sched.stats("normal") == TickStats(ticks=2, skipped=1)
    assert h.sched.stats("critical") == TickStats(ticks=6, skipped=12)


def test_stall_between_normal_boundaries_does_not_run_normal(h: Harness) -> None:
    normal = h.record("normal")
    h.start()
    h.ticks(1)
    h.stall(4)  # frames 2..5: no normal boundary
    assert normal == []
    h.ticks(1)
    assert [(t.number, t.skipped) for t in normal] == [(1, 0)]


def test_tick_done_reports_skipped(h: Harness) -> None:
    h.start()
    h.stall(7)
    assert h.done == [("critical", 0.0, False, 6), ("normal", 0.0, False, 0)]


# ---------------------------------------------------------------- durations


def test_durations_overruns_and_hook(h: Harness) -> None:
    def spend(seconds: float) -> Callable[[TickInfo], None]:
        def callback(info: TickInfo) -> None:
            h.mono.now += seconds

        return callback

    normal_flush = [0.020, 0.080]  # 50 ms fits 10 Hz's 100 ms budget; 110 ms does not
    h.sched.add("critical", spend(0.004))
    h.sched.add("critical", spend(0.002), phase="flush")
    h.sched.add("normal", spend(0.030))
    h.sched.add("normal", lambda t: spend(normal_flush[t.number - 1])(t), phase="flush")
    h.start()
    h.ticks(5)
    assert len(h.done) == 5
    assert all(g == "critical" and d == pytest.approx(0.006) and not o for g, d, o, _ in h.done)
    h.done.clear()
    h.ticks(1)
    # Each group's update and flush are summed; the other group's time is not.
    assert [(g, o, s) for g, _, o, s in h.done] == [("critical", False, 0), ("normal", False, 0)]
    assert h.done[0][1] == pytest.approx(0.006)
    assert h.done[1][1] == pytest.approx(0.050)
    h.done.clear()
    h.ticks(6)
    assert h.done[-1][0] == "normal"
    assert h.done[-1][1] == pytest.approx(0.110)
    assert h.done[-1][2] is True
    normal = h.sched.stats("normal")
    assert (normal.ticks, normal.overruns) == (2, 1)
    assert normal.last_duration == pytest.approx(0.110)
    assert normal.max_duration == pytest.approx(0.110)
    critical = h.sched.stats("critical")
    assert (critical.ticks, critical.overruns) == (12, 0)
    assert critical.max_duration == pytest.approx(0.006)
    assert critical.last_duration == pytest.approx(0.006)


def test_overrun_is_strictly_longer_than_the_period(h: Harness) -> None:
    spend = [1 / 60, 1 / 60 + 0.001, 0.001]

    def callback(info: TickInfo) -> None:
        h.mono.now = spend[info.number - 1]  # from 0.0: the duration is exact

    h.sched.add("critical", callback)
    h.start()
    for _ in spend:
        h.mono.now = 0.0
        h.ticks(1)
    assert [(g, d, o) for g, d, o, _ in h.done] == [
        ("critical", 1 / 60, False),
        ("critical", 1 / 60 + 0.001, True),
        ("critical", 0.001, False),
    ]
    stats = h.sched.stats("critical")
    assert (stats.ticks, stats.overruns, stats.last_duration) == (3, 1, 0.001)
    assert stats.max_duration == 1 / 60 + 0.001


def test_tick_done_once_per_group_per_tick(h: Harness) -> None:
    h.start()
    h.ticks(12)
    groups = [g for g, *_ in h.done]
    assert groups.count("critical") == 12
    assert groups.count("normal") == 2
    assert groups[5:7] == ["critical", "normal"]


# ---------------------------------------------------------------- errors


def test_raising_callback_is_logged_counted_and_isolated(h: Harness) -> None:
    ran: list[str] = []

    def boom(info: TickInfo) -> None:
        ran.append("boom")
        raise ZeroDivisionError("bad plugin")

    h.sched.add("critical", boom, name="bad-plugin")
    h.sched.add("critical", lambda t: ran.append("after"))
    h.sched.add("critical", lambda t: ran.append("flush"), phase="flush")
    h.start()
    with capturedLogs() as events:
        h.ticks(2)
    assert ran == ["boom", "after", "flush"] * 2
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    event = failures[0]
    assert event["log_level"] == LogLevel.critical
    assert event["log_namespace"] == "gateway.tick"
    assert event["log_failure"].check(ZeroDivisionError)
    assert (event["name"], event["group"], event["phase"], event["number"]) == (
        "bad-plugin",
        "critical",
        "update",
        1,
    )
    assert h.sched.stats("critical").errors == 2
    assert h.sched.stats("critical").ticks == 2
    assert h.sched.stats("normal").errors == 0
    assert h.sched.running
    assert len(h.clock.getDelayedCalls()) == 1


def test_failed_deferred_is_logged_and_counted(h: Harness) -> None:
    pending: Deferred[None] = Deferred()
    h.sched.add("critical", lambda t: fail(KeyError("late")))
    h.sched.add("critical", lambda t: pending)
    h.sched.add("critical", lambda t: succeed(None))
    h.start()
    with capturedLogs() as events:
        h.ticks(1)
        assert h.sched.stats("critical").errors == 1
        pending.errback(ValueError("later"))
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert [f.type for f in failures] == [KeyError, ValueError]
    assert h.sched.stats("critical").errors == 2


def test_raising_tick_done_hook_does_not_stop_the_loop() -> None:
    clock = Clock()

    def hook(group: str, duration: float, overran: bool, skipped: int) -> None:
        raise RuntimeError("metrics broke")

    sched = TickScheduler(clock, on_tick_done=hook)
    seen: list[int] = []
    sched.add("critical", lambda t: seen.append(t.number))
    sched.startService()
    with capturedLogs() as events:
        clock.advance(1 / 60 + EPS)
        clock.advance(1 / 60)
    assert seen == [1, 2]
    assert len([e for e in events if "log_failure" in e]) == 2
    assert sched.stats("critical").errors == 0


# ---------------------------------------------------------------- registry


def test_remove_during_tick(h: Harness) -> None:
    ran: list[str] = []
    removers: dict[str, Callable[[], None]] = {}

    def first(info: TickInfo) -> None:
        ran.append("first")
        removers["first"]()  # itself
        removers["second"]()  # a later one in the same snapshot

    removers["first"] = h.sched.add("critical", first)
    removers["second"] = h.sched.add("critical", lambda t: ran.append("second"))
    h.sched.add("critical", lambda t: ran.append("third"))
    h.start()
    h.ticks(2)
    assert ran == ["first", "third", "third"]
    removers["first"]()  # twice is harmless
    removers["second"]()


def test_added_during_tick_runs_from_next_tick(h: Harness) -> None:
    ran: list[int] = []

    def adder(info: TickInfo) -> None:
        if info.number == 1:
            h.sched.add("critical", lambda t: ran.append(t.number))

    h.sched.add("critical", adder)
    h.start()
    h.ticks(3)
    assert ran == [2, 3]


def test_removed_callback_no_longer_runs(h: Harness) -> None:
    seen: list[int] = []
    remove = h.sched.add("normal", lambda t: seen.append(t.number), phase="flush")
    h.start()
    h.ticks(6)
    remove()
    h.ticks(12)
    assert seen == [1]


def test_rejects_unknown_group_phase_and_bad_rates() -> None:
    sched = TickScheduler(Clock())
    with pytest.raises(ValueError, match="group"):
        sched.add("fast", lambda t: None)
    with pytest.raises(ValueError, match="phase"):
        sched.add("critical", lambda t: None, phase="render")
    with pytest.raises(ValueError, match="group"):
        sched.stats("fast")
    with pytest.raises(ValueError, match="divide"):
        TickScheduler(Clock(), critical_hz=60, normal_hz=7)
    with pytest.raises(ValueError, match="at least"):
        TickScheduler(Clock(), critical_hz=0)


def test_rejects_async_callbacks() -> None:
    async def coroutine(info: TickInfo) -> None:
        pass

    with pytest.raises(TypeError, match="synchronous"):
        TickScheduler(Clock()).add("critical", coroutine)


# ---------------------------------------------------------------- lifecycle


def test_added_while_stopped_runs_once_started(h: Harness) -> None:
    seen = h.record("critical")
    h.clock.advance(5)
    assert seen == []
    assert not h.sched.running
    assert h.clock.getDelayedCalls() == []
    h.start()
    assert h.sched.running
    h.ticks(1)
    assert [t.number for t in seen] == [1]


def test_stop_then_start(h: Harness) -> None:
    critical = h.record("critical")
    normal = h.record("normal")
    h.start()
    h.ticks(8)
    assert h.sched.stopService() is None
    assert not h.sched.running
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(3.0)
    assert len(critical) == 8

    h.start()  # a fresh phase: nothing counts as skipped, numbering continues
    h.ticks(6)
    assert [t.number for t in critical[8:]] == [9, 10, 11, 12, 13, 14]
    assert critical[8].planned == h.planned(1)
    assert (critical[8].skipped, critical[8].dt) == (0, 1 / 60)
    assert [(t.number, t.skipped, t.planned) for t in normal] == [
        (1, 0, START + 6 / 60),
        (2, 0, h.planned(6)),
    ]
    assert h.sched.stats("critical") == TickStats(ticks=14)


def test_start_twice_keeps_one_loop(h: Harness) -> None:
    seen = h.record("critical")
    h.start()
    h.sched.startService()
    assert len(h.clock.getDelayedCalls()) == 1
    h.ticks(1)
    assert len(seen) == 1
    h.sched.stopService()
    h.sched.stopService()
    assert not h.sched.running


def test_stop_from_inside_a_tick(h: Harness) -> None:
    ran: list[str] = []

    def stopper(info: TickInfo) -> None:
        ran.append("stop")
        h.sched.stopService()

    h.sched.add("critical", stopper)
    h.sched.add("critical", lambda t: ran.append("flush"), phase="flush")
    h.start()
    h.ticks(3)
    assert ran == ["stop", "flush"]  # the tick in progress completes
    assert not h.sched.running
    assert h.clock.getDelayedCalls() == []


def test_runs_under_a_multiservice(h: Harness) -> None:
    seen = h.record("critical")
    parent = MultiService()
    h.sched.setServiceParent(parent)
    parent.startService()
    assert h.sched.running
    h.started_at = h.clock.seconds()
    h.ticks(2)
    assert [t.number for t in seen] == [1, 2]
    parent.stopService()
    assert not h.sched.running
    assert h.clock.getDelayedCalls() == []


def test_importing_does_not_install_the_global_reactor() -> None:
    code = "import sys, gateway.tick; print('twisted.internet.reactor' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
