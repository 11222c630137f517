"""The game clock: one reactor-driven loop for the 60 Hz and 10 Hz groups.

A single ``LoopingCall`` at the critical rate drives both groups, so they
can never drift apart: the normal group runs on every
``critical_hz // normal_hz``-th critical tick, inside that tick.  Everything
takes an injected ``IReactorTime`` so tests step time with ``task.Clock``.

**Stalls.**  When the reactor is blocked (GC pause, a slow callback, a busy
VM) ``LoopingCall.withCount`` tells us how many ticks were due.  We do not
replay them: a catch-up burst would only deepen the stall.  Each callback
runs once, with ``TickInfo.skipped`` saying how many ticks were missed and
``TickInfo.dt`` covering the whole gap.  Game code must therefore advance
its simulation by ``dt``, never by a constant "one tick".

**Order within a tick.**  critical update, normal update, critical flush,
normal flush.  The flush phase is where the hub sends the outbound batches;
running every flush after every update means events produced by a 10 Hz
update leave in the same tick rather than waiting 16 ms for the next
critical flush.

**Time.**  ``planned`` and ``actual`` are clock seconds (the reactor's
clock is wall time); durations are measured with ``monotonic`` because wall
time can jump.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "CRITICAL",
    "FLUSH",
    "GROUPS",
    "NORMAL",
    "PHASES",
    "UPDATE",
    "TickInfo",
    "TickScheduler",
    "TickStats",
]

CRITICAL = "critical"
NORMAL = "normal"
#: Groups in the order their callbacks run within one phase of a tick.
GROUPS = (CRITICAL, NORMAL)

UPDATE = "update"
FLUSH = "flush"
#: Phases in the order they run within a tick (see the module docstring).
PHASES = (UPDATE, FLUSH)

#: (group, duration_seconds, overran, skipped): the metrics hook.
TickDoneHook = Callable[[str, float, bool, int], None]

log = Logger()


@dataclass(frozen=True, slots=True)
class TickInfo:
    """What a tick callback needs to know about the tick it runs in.

    ``number`` counts skipped ticks too, so it is a stable game-time index
    (``number / hz`` seconds since the scheduler first started, pauses
    excluded) that snapshots and replays can key on.
    """

    group: str
    number: int
    planned: float
    actual: float
    skipped: int
    dt: float


@dataclass(frozen=True, slots=True)
class TickStats:
    """A snapshot of one group's counters since the scheduler was created.

    A snapshot rather than the live counters, so a reader (``/metrics``,
    the debug console) can never corrupt them and sees one consistent view.
    ``overruns`` compares a tick's duration with the group's own period; a
    whole frame that is too slow shows up as ``skipped`` critical ticks.
    """

    ticks: int = 0
    skipped: int = 0
    overruns: int = 0
    errors: int = 0
    last_duration: float = 0.0
    max_duration: float = 0.0


class _Entry:
    """A registered callback; ``active`` lets removal win over a snapshot."""

    __slots__ = ("active", "callback", "name")

    def __init__(self, callback: Callable[[TickInfo], object], name: str) -> None:
        self.callback = callback
        self.name = name
        self.active = True


class _Group:
    """Per-group registry and counters (mutable; exposed as TickStats)."""

    __slots__ = ("callbacks", "hz", "name", "number", "overrun_limit", "stats")

    def __init__(self, name: str, hz: int) -> None:
        self.name = name
        self.hz = hz
        self.overrun_limit = 1.0 / hz
        self.number = 0
        self.callbacks: dict[str, list[_Entry]] = {phase: [] for phase in PHASES}
        self.stats = TickStats()


class _Run:
    """One start..stop of the loop: planned times are phase-locked to its start."""

    __slots__ = ("frames", "start")

    def __init__(self) -> None:
        self.start = 0.0
        self.frames = 0


class TickScheduler(Service):
    """Runs registered callbacks in the critical and normal tick groups.

    Callbacks are synchronous: the tick does not wait for a returned
    Deferred (a slow one would stall every game on this instance); its
    failure is logged and counted.  A callback that raises is logged and
    counted, and the tick carries on, because one broken plugin must not
    freeze the loop for everybody.
    """

    def __init__(
        self,
        clock: IReactorTime,
        critical_hz: int = 60,
        normal_hz: int = 10,
        monotonic: Callable[[], float] = time.monotonic,
        on_tick_done: TickDoneHook | None = None,
    ) -> None:
        if critical_hz < 1 or normal_hz < 1:
            raise ValueError("tick rates must be at least 1 Hz")
        if critical_hz % normal_hz:
            raise ValueError(
                f"normal_hz ({normal_hz}) must divide critical_hz ({critical_hz}):"
                " one loop drives both groups"
            )
        self._clock = clock
        self._critical_hz = critical_hz
        self._ratio = critical_hz // normal_hz
        self._monotonic = monotonic
        self._on_tick_done = on_tick_done
        self._groups = {CRITICAL: _Group(CRITICAL, critical_hz), NORMAL: _Group(NORMAL, normal_hz)}
        self._loop: LoopingCall | None = None
        self._running = False

    # ------------------------------------------------------------------ service

    @property
    def running(self) -> bool:
        return self._running

    @running.setter
    def running(self, value: int) -> None:
        # IService declares a writable attribute (Service stores 1 and 0).
        self._running = bool(value)

    def startService(self) -> None:
        """Start the loop; the first tick comes one period later, not now.

        Not ``now=True``: ticking inside ``startService`` would run callbacks
        of sibling services that the parent ``MultiService`` has not started
        yet.
        """
        if self._loop is not None:
            return
        # Service.startService only sets the flag, and is untyped.
        self._running = True
        run = _Run()
        loop = LoopingCall.withCount(partial(self._frame, run))
        loop.clock = self._clock
        self._loop = loop
        done = loop.start(1.0 / self._critical_hz, now=False)
        assert loop.starttime is not None
        run.start = loop.starttime
        done.addErrback(self._loop_died, loop)

    def stopService(self) -> None:
        """Stop the loop; counters and tick numbers carry over to a restart."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self._running = False

    # ------------------------------------------------------------------ registry

    def add(
        self,
        group: str,
        callback: Callable[[TickInfo], object],
        *,
        phase: str = UPDATE,
        name: str = "",
    ) -> Callable[[], None]:
        """Register ``callback``; returns a function that unregisters it.

        Callbacks run in registration order.  One added during a tick first
        runs on the next tick; one removed during a tick is not called again,
        even later in the same tick.  Removing twice is harmless, so owners
        can call it from every shutdown path.
        """
        target = self._group(group)
        if phase not in PHASES:
            raise ValueError(f"unknown tick phase {phase!r}; known: {', '.join(PHASES)}")
        if inspect.iscoroutinefunction(callback):
            # Calling it would only create a coroutine that never runs.
            raise TypeError("tick callbacks must be synchronous, not async def")
        entry = _Entry(callback, name or getattr(callback, "__qualname__", repr(callback)))
        entries = target.callbacks[phase]
        entries.append(entry)

        def remove() -> None:
            if entry.active:
                entry.active = False
                entries.remove(entry)

        return remove

    def stats(self, group: str) -> TickStats:
        return self._group(group).stats

    def _group(self, group: str) -> _Group:
        try:
            return self._groups[group]
        except KeyError:
            raise ValueError(f"unknown tick group {group!r}; known: {', '.join(GROUPS)}")

    # ------------------------------------------------------------------ the loop

    def _frame(self, run: _Run, count: int) -> None:
        """One LoopingCall invocation; ``count`` > 1 means ticks were missed.

        Must never raise: an exception here would stop the LoopingCall.
        """
        previous = run.frames
        run.frames += count
        actual = self._clock.seconds()
        critical = self._groups[CRITICAL]
        due = [self._advance(critical, run, run.frames, count, actual)]
        # Normal ticks fall on critical frames ratio, 2*ratio, ...; after a
        # stall the latest one that fell due runs now, late, rather than
        # waiting for the next boundary.
        normal_now = run.frames // self._ratio
        normal_steps = normal_now - previous // self._ratio
        if normal_steps > 0:
            normal = self._groups[NORMAL]
            frame = normal_now * self._ratio
            due.append(self._advance(normal, run, frame, normal_steps, actual))
        durations = [0.0] * len(due)
        for phase in PHASES:
            for i, (group, info) in enumerate(due):
                durations[i] += self._run_phase(group, phase, info)
        for (group, info), duration in zip(due, durations, strict=True):
            self._finish(group, info, duration)

    def _advance(
        self, group: _Group, run: _Run, frame: int, steps: int, actual: float
    ) -> tuple[_Group, TickInfo]:
        group.number += steps
        info = TickInfo(
            group=group.name,
            number=group.number,
            planned=run.start + frame / self._critical_hz,
            actual=actual,
            skipped=steps - 1,
            dt=steps / group.hz,
        )
        return group, info

    def _run_phase(self, group: _Group, phase: str, info: TickInfo) -> float:
        entries = group.callbacks[phase]
        if not entries:
            return 0.0
        started = self._monotonic()
        # A snapshot: callbacks may add or remove callbacks while we iterate.
        for entry in tuple(entries):
            if not entry.active:
                continue
            try:
                result = entry.callback(info)
            except Exception:
                self._count_error(group)
                log.failure(
                    "tick callback {name} failed ({group} {phase} tick {number})",
                    name=entry.name,
                    group=group.name,
                    phase=phase,
                    number=info.number,
                )
            else:
                if isinstance(result, Deferred):
                    result.addErrback(self._async_failed, group, entry.name, info.number)
        return self._monotonic() - started

    def _finish(self, group: _Group, info: TickInfo, duration: float) -> None:
        overran = duration > group.overrun_limit
        old = group.stats
        group.stats = TickStats(
            ticks=old.ticks + 1,
            skipped=old.skipped + info.skipped,
            overruns=old.overruns + overran,
            errors=old.errors,
            last_duration=duration,
            max_duration=max(old.max_duration, duration),
        )
        if self._on_tick_done is None:
            return
        try:
            self._on_tick_done(group.name, duration, overran, info.skipped)
        except Exception:
            log.failure(
                "tick metrics hook failed ({group} tick {number})",
                group=group.name,
                number=info.number,
            )

    def _count_error(self, group: _Group) -> None:
        group.stats = dataclasses.replace(group.stats, errors=group.stats.errors + 1)

    def _async_failed(self, failure: Failure, group: _Group, name: str, number: int) -> None:
        self._count_error(group)
        log.failure(
            "tick callback {name} failed asynchronously ({group} tick {number})",
            failure,
            name=name,
            group=group.name,
            number=number,
        )

    def _loop_died(self, failure: Failure, loop: LoopingCall) -> None:
        # Only a BaseException escaping a callback gets here; say so loudly.
        log.failure("tick loop stopped by an unexpected error", failure)
        if self._loop is loop:
            self._loop = None
            self._running = False
