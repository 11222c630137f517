"""Shared pieces of the gateway benchmark: the control channel and process figures.

Both bench servers (``server_rtgateway.py`` and ``server_autobahn.py``) expose
the same tiny HTTP control channel on a loopback port, so that the load
generator drives and measures them the same way:

    GET  /stats             process CPU (rusage), RSS (/proc/self/status), server counters
    POST /broadcast/start   ?hz=20: start broadcasting one event to every connection
    POST /broadcast/stop    stop it; answers how many broadcasts ran and were skipped
    POST /quit              stop the reactor (the process exits)

Everything answers JSON.  Nothing here imports the reactor at module level.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.web import resource as web_resource

__all__ = [
    "Broadcaster",
    "ControlResource",
    "bench_tick_frame",
    "process_stats",
    "raise_nofile",
    "ready",
]

def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _status_kb(field: str) -> int:
    with open("/proc/self/status", "rb") as fh:
        for line in fh:
            if line.startswith(field.encode() + b":"):
                return int(line.split()[1])
    return 0


def process_stats() -> dict[str, Any]:
    """CPU seconds (user, system) of this process and its resident memory."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "pid": os.getpid(),
        "mono": time.monotonic(),
        "utime": ru.ru_utime,
        "stime": ru.ru_stime,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rss_kb": _status_kb("VmRSS"),
        "hwm_kb": _status_kb("VmHWM"),
        "nvcsw": ru.ru_nvcsw,
        "nivcsw": ru.ru_nivcsw,
        "rq_wait": _runqueue_wait(),
    }


def _runqueue_wait() -> float:
    """Seconds this process's main thread spent runnable but waiting for a CPU (schedstat)."""
    try:
        with open("/proc/self/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return (total - idle) / hz, total / hz


def machine_busy_pct(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Busy CPU between two machine_cpu() readings, in % of one core (2 cores: 0..200)."""
    wall_cores = (after[1] - before[1])
    if wall_cores <= 0:
        return 0.0
    ncpu = os.cpu_count() or 1
    return (after[0] - before[0]) / wall_cores * ncpu * 100


class GcMonitor:
    """Time every garbage collection (gc.callbacks): free when no collection runs.

    A full (generation 2) collection walks every tracked object, so its pause
    grows with the number of connections; it shows up as latency outliers.
    """

    def __init__(self) -> None:
        import gc

        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.max_pause = 0.0
        self.max_pause_gen = -1
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        pause = time.perf_counter() - self._t0
        gen = info["generation"]
        self.count[gen] += 1
        self.seconds[gen] += pause
        if pause > self.max_pause:
            self.max_pause = pause
            self.max_pause_gen = gen

    def snapshot(self, reset_max: bool = False) -> dict[str, Any]:
        import gc

        out = {
            "gc_count": list(self.count),
            "gc_ms": [round(s * 1e3, 3) for s in self.seconds],
            "gc_max_pause_ms": round(self.max_pause * 1e3, 3),
            "gc_max_pause_gen": self.max_pause_gen,
            "gc_tracked_gen_counts": list(gc.get_count()),
        }
        if reset_max:
            self.max_pause = 0.0
            self.max_pause_gen = -1
        return out


def bench_tick_frame(tick: int, sent_ns: int) -> bytes:
    """The broadcast frame, byte for byte what rtgateway sends for ``bench.tick`` v1.

    A wire protocol v1 Frame holding one unsequenced Envelope (type, version
    1, Ping payload, PRIORITY_NORMAL): the bare Autobahn baseline sends
    exactly these bytes so that both servers move the same message sizes.
    """
    from protocol import events_pb2

    payload = events_pb2.Ping(nonce=tick, sent_ns=sent_ns).SerializeToString()
    env = events_pb2.Envelope(
        type="bench.tick", version=1, payload=payload, priority=events_pb2.PRIORITY_NORMAL
    )
    return events_pb2.Frame(envelopes=[env]).SerializeToString()


class Broadcaster:
    """A ``hz`` LoopingCall calling ``send(tick_number)``; counts what ran and what was missed."""

    def __init__(self, reactor: Any, send: Callable[[int], object]) -> None:
        self.reactor = reactor
        self.send = send
        self.loop: Any = None
        self.ran = 0
        self.skipped = 0
        self.busy = 0.0  # seconds spent inside send()
        self.started = 0.0

    def start(self, hz: float) -> dict[str, Any]:
        from twisted.internet import task

        self.stop()
        self.ran = self.skipped = 0
        self.busy = 0.0
        self.started = time.monotonic()
        self.loop = task.LoopingCall.withCount(self._tick)
        self.loop.clock = self.reactor
        self.loop.start(1.0 / hz, now=True)
        return {"hz": hz}

    def _tick(self, count: int) -> None:
        self.skipped += max(0, count - 1)
        self.ran += 1
        t0 = time.perf_counter()
        self.send(self.ran)
        self.busy += time.perf_counter() - t0

    def stop(self) -> dict[str, Any]:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
        elapsed = time.monotonic() - self.started if self.started else 0.0
        return {
            "ran": self.ran,
            "skipped": self.skipped,
            "seconds": elapsed,
            "busy_seconds": self.busy,
        }


class ControlResource(web_resource.Resource):
    """Routes ``/name`` to ``handlers[name](args)``; answers JSON."""

    isLeaf = True

    def __init__(self, handlers: dict[str, Callable[[dict[str, str]], Any]]) -> None:
        super().__init__()
        self.handlers = handlers

    def render(self, request: Any) -> bytes:
        path = request.path.decode().strip("/")
        handler = self.handlers.get(path)
        request.setHeader(b"content-type", b"application/json")
        if handler is None:
            request.setResponseCode(404)
            return json.dumps({"error": f"no such control {path!r}"}).encode()
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        try:
            result = handler(args)
        except Exception as exc:  # the control channel must never take the server down
            request.setResponseCode(500)
            return json.dumps({"error": repr(exc)}).encode()
        return json.dumps(result).encode()


def ready(**info: Any) -> None:
    """The line the orchestrator waits for: ``READY {json}`` on stdout."""
    sys.stdout.write("READY " + json.dumps(info) + "\n")
    sys.stdout.flush()


def listen_control(reactor: Any, port: int, handlers: dict[str, Callable[..., Any]]) -> Any:
    """Serve the control channel on 127.0.0.1:``port`` (0: any free port)."""
    from twisted.web import server

    site = server.Site(ControlResource(handlers))
    site.noisy = False
    site.log = lambda request: None  # no access log lines
    return reactor.listenTCP(port, site, interface="127.0.0.1")
