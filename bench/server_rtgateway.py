"""rtgateway under benchmark: a real GatewayService plus a small bench plugin.

Development mode (the signing key comes from ``RTGATEWAY_DEV_KEY_FILE``, shared
with the load generator), loopback only.  Registered before start:

* ``bench.echo`` (both directions, unreliable, ``Ping`` payload): the handler
  answers the sender with ``ctx.reply`` -- queued, so it leaves in the next
  60 Hz flush like any ordinary reply;
* ``bench.echo_now``: the same, sent ``urgent=True`` (flushed at once), to
  separate tick batching from the rest of the round trip;
* ``bench.tick`` (server to client, unreliable): every connection subscribes
  to topic ``bench`` when it authenticates; ``/broadcast/start?hz=20`` then
  publishes one ``bench.tick`` per period with ``gateway.publish``.

The control channel (see ``benchcommon``) reports this process's CPU time and
RSS.  Prints ``READY {"ws_port": ..., "control_port": ...}`` once listening.

    RTGATEWAY_DEV_KEY_FILE=/tmp/k python bench/server_rtgateway.py --port 0
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcommon import (
    Broadcaster,
    GcMonitor,
    listen_control,
    process_stats,
    raise_nofile,
    ready,
)


def counter_values(metric: Any) -> dict[str, float]:
    """A labelled prometheus Counter as {label value: count}."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = ",".join(sample.labels.values()) or "-"
                out[key] = out.get(key, 0) + sample.value
    return out


class TickBroadcaster:
    """Publishes from the critical tick's update phase, every ``critical_hz / hz``-th tick.

    That is how game code publishes: the event leaves in the same tick's flush.
    """

    def __init__(self, ticks: Any, critical_hz: int, send: Any) -> None:
        self.ticks = ticks
        self.critical_hz = critical_hz
        self.send = send
        self.remove: Any = None
        self.ran = self.skipped = self.frames = 0
        self.every = 1
        self.busy = 0.0
        self.started = 0.0

    def start(self, hz: float) -> dict[str, Any]:
        self.stop()
        self.every = max(1, round(self.critical_hz / hz))
        self.ran = self.skipped = self.frames = 0
        self.busy = 0.0
        self.started = time.monotonic()
        self.remove = self.ticks.add("critical", self._tick, phase="update", name="bench")
        return {"hz": self.critical_hz / self.every, "every": self.every, "clock": "tick"}

    def _tick(self, info: Any) -> None:
        before = self.frames
        self.frames += 1 + info.skipped
        if self.frames // self.every == before // self.every:
            return
        self.skipped += self.frames // self.every - before // self.every - 1
        self.ran += 1
        t0 = time.perf_counter()
        self.send(self.ran)
        self.busy += time.perf_counter() - t0

    def stop(self) -> dict[str, Any]:
        if self.remove is not None:
            self.remove()
            self.remove = None
        elapsed = time.monotonic() - self.started if self.started else 0.0
        return {"ran": self.ran, "skipped": self.skipped, "seconds": elapsed,
                "busy_seconds": self.busy}


class Timed:
    """Wraps a callable: count, total and max duration, and the slowest calls (with when)."""

    def __init__(self, func: Any, slow: float = 0.005) -> None:
        self.func = func
        self.slow = slow
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.slow_calls: list[tuple[float, float]] = []  # (monotonic time, seconds)

    def __call__(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.func(*a, **kw)
        finally:
            d = time.perf_counter() - t0
            self.count += 1
            self.total += d
            if d > self.max:
                self.max = d
            if d >= self.slow and len(self.slow_calls) < 1000:
                self.slow_calls.append((round(time.monotonic(), 3), round(d * 1e3, 2)))

    def snapshot(self, reset: bool) -> dict[str, Any]:
        out = {"count": self.count, "total_ms": round(self.total * 1e3, 1),
               "max_ms": round(self.max * 1e3, 2), "slow_calls_ms": self.slow_calls[-50:]}
        if reset:
            self.max = 0.0
            self.slow_calls = []
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free one)")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024, help="listen(2) backlog")
    parser.add_argument("--max-connections", type=int, default=100_000)
    parser.add_argument(
        "--broadcast-clock", choices=("tick", "loop"), default="tick",
        help="tick: publish from the critical tick's update phase (every 60/hz-th tick, so the "
             "flush of the same tick sends it); loop: an independent LoopingCall (the event "
             "then waits for the next flush: 0..16.7 ms, a constant offset per run)",
    )
    parser.add_argument(
        "--with-plugins", action="store_true",
        help="also load the installed plugins (world, chat, ...); default: the bench plugin only",
    )
    parser.add_argument(
        "--time-calls", action="store_true",
        help="time Gateway.sweep and Gateway.flush (GET /stats shows counts, max, slow calls)",
    )
    parser.add_argument(
        "--tracemalloc", type=int, default=0, metavar="FRAMES",
        help="trace allocations (this many frames) for GET /tracemalloc; slows everything",
    )
    args = parser.parse_args(argv)

    nofile = raise_nofile()
    gcmon = GcMonitor()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(args.tracemalloc)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    from gateway.config import load
    from gateway.events import Delivery, Direction, spec
    from gateway.service import GatewayService
    from protocol import events_pb2

    config = load(
        None,
        {
            "server.listen": f"tcp:{args.port}:interface=127.0.0.1:backlog={args.backlog}",
            "admin.listen": "",
            "limits.max_connections": args.max_connections,
            "limits.max_connections_per_ip": args.max_connections,
            "shutdown.grace_seconds": 0.0,
        },
    )
    if args.with_plugins:
        service = GatewayService(config, reactor=reactor)
    else:
        try:
            service = GatewayService(config, reactor=reactor, plugins=[])
        except TypeError:  # a GatewayService without plugin support
            service = GatewayService(config, reactor=reactor)
    gateway = service.gateway

    timed: dict[str, Timed] = {}
    if args.time_calls:
        for name in ("sweep", "flush"):
            timed[name] = Timed(getattr(gateway, name))
            setattr(gateway, name, timed[name])  # instance attribute: looked up at call time

    # ------------------------------------------------------------ the bench plugin
    gateway.registry.register(
        spec("bench.echo", events_pb2.Ping, direction=Direction.BOTH,
             delivery=Delivery.UNRELIABLE, description="bench: echoed with ctx.reply"),
        spec("bench.echo_now", events_pb2.Ping, direction=Direction.BOTH,
             delivery=Delivery.UNRELIABLE, description="bench: echoed urgently"),
        spec("bench.tick", events_pb2.Ping, direction=Direction.SERVER_TO_CLIENT,
             delivery=Delivery.UNRELIABLE, description="bench: the 20 Hz broadcast"),
    )
    gateway.router.add("bench.echo", lambda ctx, msg: ctx.reply("bench.echo", msg))
    gateway.router.add(
        "bench.echo_now",
        lambda ctx, msg: gateway.send_to_connection(
            ctx.connection, "bench.echo_now", msg, correlation_id=ctx.correlation_id, urgent=True
        ),
    )
    gateway.on_authenticated.append(lambda t: gateway.hub.subscribe(t, "bench"))

    def publish(tick: int) -> None:
        gateway.publish(
            "bench", "bench.tick", events_pb2.Ping(nonce=tick, sent_ns=time.monotonic_ns())
        )

    if args.broadcast_clock == "tick":
        broadcaster: Any = TickBroadcaster(service.ticks, config.tick.critical_hz, publish)
    else:
        broadcaster = Broadcaster(reactor, publish)

    # ------------------------------------------------------------ control channel
    def stats(_args: dict[str, str]) -> dict[str, Any]:
        out = process_stats()
        out.update(gcmon.snapshot(reset_max=_args.get("reset") == "1"))
        conns = gateway.hub.connections()
        out["connections"] = len(conns)
        out["authenticated"] = sum(1 for c in conns if c.authenticated)
        out["subscribers"] = len(gateway.hub.subscribers("bench"))
        out["degraded"] = sum(1 for c in conns if c.degraded)
        out["paused"] = sum(1 for c in conns if c.paused_since is not None)
        out["dropped_out"] = sum(c.stats.dropped_out for c in conns)
        out["events_out"] = sum(c.stats.events_out for c in conns)
        m = service.metrics
        out["closes"] = counter_values(m.closes)
        out["handshakes"] = counter_values(m.handshakes)
        out["auth_failures"] = counter_values(m.auth_failures)
        out["bad_input"] = counter_values(m.bad_input)
        out["dropped_by_reason"] = counter_values(m.dropped_out)
        out["handler_failures"] = counter_values(m.handler_failures)
        out["tick_overruns"] = counter_values(m.tick_overruns)
        out["ticks_skipped"] = counter_values(m.ticks_skipped)
        out["gc_objects"] = len(gc.get_objects()) if _args.get("objects") else None
        if _args.get("objtypes"):  # GC-tracked objects by type: what a full collection walks
            from collections import Counter

            counts = Counter(type(o).__qualname__ for o in gc.get_objects())
            out["gc_object_types"] = dict(counts.most_common(int(_args["objtypes"])))
        for name, t in timed.items():
            out[f"timed_{name}"] = t.snapshot(reset=_args.get("reset") == "1")
        for family in m.tick_seconds.collect():
            for sample in family.samples:
                if sample.labels.get("group") == "critical" and sample.name.endswith("_sum"):
                    out["tick_seconds_sum"] = sample.value
                if sample.labels.get("group") == "critical" and sample.name.endswith("_count"):
                    out["tick_count"] = sample.value
        return out

    marks: dict[str, Any] = {}

    def tracemalloc_mark(_a: dict[str, str]) -> Any:
        import tracemalloc

        if not tracemalloc.is_tracing():
            return {"error": "start with --tracemalloc FRAMES"}
        marks["base"] = tracemalloc.take_snapshot()
        return {"ok": True}

    def tracemalloc_top(a: dict[str, str]) -> Any:
        """Top allocations (or growth since /tracemalloc/mark), grouped by line or traceback."""
        import tracemalloc

        if not tracemalloc.is_tracing():
            return {"error": "start with --tracemalloc FRAMES"}
        group = a.get("by", "lineno")
        limit = int(a.get("limit", "40"))
        per = max(1, int(a.get("per", "1")))  # divide by this (e.g. the connection count)
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        snap = tracemalloc.take_snapshot().filter_traces(ignore)
        rows = []
        base = marks.get("base")
        if base is not None:
            stats = snap.compare_to(base.filter_traces(ignore), group)
            total = sum(st.size_diff for st in stats)
            for st in stats[:limit]:
                rows.append({"bytes_per": round(st.size_diff / per, 1),
                             "count_per": round(st.count_diff / per, 2),
                             "where": [f"{f.filename}:{f.lineno}" for f in st.traceback]})
        else:
            stats = snap.statistics(group)
            total = sum(st.size for st in stats)
            for st in stats[:limit]:
                rows.append({"bytes_per": round(st.size / per, 1),
                             "count_per": round(st.count / per, 2),
                             "where": [f"{f.filename}:{f.lineno}" for f in st.traceback]})
        return {"total_bytes_per": round(total / per, 1), "diff": base is not None, "top": rows}

    def quit_(_args: dict[str, str]) -> dict[str, Any]:
        reactor.callLater(0.05, reactor.stop)
        return {"ok": True}

    handlers = {
        "stats": stats,
        "broadcast/start": lambda a: broadcaster.start(float(a.get("hz", "20"))),
        "broadcast/stop": lambda a: broadcaster.stop(),
        "tracemalloc": tracemalloc_top,
        "tracemalloc/mark": tracemalloc_mark,
        "quit": quit_,
    }
    control = listen_control(reactor, args.control_port, handlers)

    def listening(port: Any) -> None:
        ready(
            server="rtgateway",
            ws_port=port.getHost().port,
            ws_path=config.server.path,
            control_port=control.getHost().port,
            pid=os.getpid(),
            nofile=nofile,
        )

    service.startService()
    service.ws.when_listening().addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
