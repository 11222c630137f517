"""How steady is the tick loop on this machine's real reactor?

Runs TickScheduler at --hz for --seconds with --work-us of busy work in every
critical tick (and --normal-work-us in every normal tick), then prints the
period statistics, the lateness (actual - planned) percentiles, and the
overrun and skipped counts.  Stops by itself.

    python bench/bench_tick.py --work-us 2000
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.interfaces import IReactorCore, IReactorTime

from gateway.tick import TickInfo, TickScheduler


def busy(microseconds: float) -> None:
    """Burn CPU like game logic would (sleeping would let the reactor run)."""
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-us", type=float, default=0.0, help="busy work per critical tick")
    parser.add_argument(
        "--normal-work-us", type=float, default=0.0, help="busy work per normal tick"
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hz", type=int, default=60, help="critical rate")
    parser.add_argument("--normal-hz", type=int, default=10)
    args = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor

    reactor = cast(Any, _reactor)
    sched = TickScheduler(cast(IReactorTime, reactor), args.hz, args.normal_hz)
    seen: list[tuple[float, TickInfo]] = []  # (monotonic at tick start, info)

    def critical(info: TickInfo) -> None:
        seen.append((time.monotonic(), info))
        busy(args.work_us)

    sched.add("critical", critical)
    sched.add("normal", lambda info: busy(args.normal_work_us))

    def finish() -> None:
        sched.stopService()
        cast(IReactorCore, reactor).stop()

    reactor.callWhenRunning(sched.startService)
    reactor.callLater(args.seconds, finish)
    reactor.run()

    if len(seen) < 3:
        print(f"only {len(seen)} ticks ran; nothing to measure")
        return 1
    nominal = 1.0 / args.hz
    periods = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    late = [info.actual - info.planned for _, info in seen]
    deviation = [abs(p - nominal) for p in periods]
    ms = 1000.0
    print(
        f"reactor {type(reactor).__name__}, {args.hz} Hz / {args.normal_hz} Hz for "
        f"{args.seconds:g} s, work {args.work_us:g} us/critical tick, "
        f"{args.normal_work_us:g} us/normal tick"
    )
    print(
        f"ticks run        {len(seen)} (expected about {int(args.seconds * args.hz)}), "
        f"last number {seen[-1][1].number}"
    )
    print(
        f"period           mean {statistics.fmean(periods) * ms:.3f} ms, "
        f"stdev {statistics.stdev(periods) * ms:.3f} ms (nominal {nominal * ms:.3f} ms)"
    )
    print(
        f"period jitter    p50 {percentile(deviation, 0.50) * ms:.3f} ms, "
        f"p99 {percentile(deviation, 0.99) * ms:.3f} ms, max {max(deviation) * ms:.3f} ms"
    )
    print(
        f"lateness         p50 {percentile(late, 0.50) * ms:.3f} ms, "
        f"p99 {percentile(late, 0.99) * ms:.3f} ms, max {max(late) * ms:.3f} ms"
    )
    for group in ("critical", "normal"):
        stats = sched.stats(group)
        print(
            f"{group:<8}         ticks {stats.ticks}, skipped {stats.skipped}, "
            f"overruns {stats.overruns}, errors {stats.errors}, "
            f"max duration {stats.max_duration * ms:.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
