"""Issue 2 benchmark: rtgateway against a bare Autobahn baseline, one table of ratios.

For each server (``--servers``, default: the bare Autobahn baseline, then
rtgateway) this starts the server as a subprocess on free loopback ports,
runs ``loadgen.py`` against it as another subprocess (its own process tree,
``--procs`` workers), stops the server, and finally prints both servers'
figures side by side with the ratio rtgateway / baseline.  Everything listens
on and connects to 127.0.0.1 only; each step has a deadline and every child
is killed on exit, whatever happens.

    python bench/run_gateway_bench.py --connections 2000
    python bench/run_gateway_bench.py --connections 10000 --json-out /tmp/bench-10k.json

A fresh development signing key is generated in a temporary directory and
handed to the servers and the load generator through RTGATEWAY_DEV_KEY_FILE.
Server logs go to that directory (printed at the end) and are scanned for
tracebacks and error lines.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

SERVERS = {
    "autobahn": [str(HERE / "server_autobahn.py")],
    "autobahn-prepared": [str(HERE / "server_autobahn.py"), "--prepared"],
    "autobahn-direct": [str(HERE / "server_autobahn.py"), "--direct"],
    "rtgateway": [str(HERE / "server_rtgateway.py")],
}

_children: list[subprocess.Popen[Any]] = []


def _kill_children() -> None:
    for proc in _children:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: itself and its workers
            except (ProcessLookupError, PermissionError):
                proc.kill()
    for proc in _children:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


atexit.register(_kill_children)


def _on_signal(signum: int, _frame: Any) -> None:
    _kill_children()
    sys.exit(128 + signum)


NICE = 0  # set from --nice: the scheduling priority of every child


def _child_setup() -> None:
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
        # With sched_autogroup (the default on desktops and VMs), every session is
        # a scheduling group and nice only counts inside it: nice the new session too.
        try:
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(str(NICE))
        except OSError:
            pass


def spawn(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_child_setup, **kw)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def wait_ready(proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    """Read the server's stdout until its READY line."""
    import selectors

    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before READY")
        if sel.select(timeout=0.2):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
            for line in buf.split(b"\n"):
                if line.startswith(b"READY "):
                    return json.loads(line[6:])
    raise TimeoutError(f"server not ready within {timeout}s")


def scan_log(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    bad = [ln for ln in lines if re.search(r"Traceback|Unhandled|\[-\] .*(error|fail)|CRITICAL|"
                                            r"ERROR|exception", ln, re.I)]
    return {
        "lines": len(lines),
        "tracebacks": text.count("Traceback"),
        "suspicious": bad[:15],
        "suspicious_count": len(bad),
    }


def contamination(result: dict[str, Any]) -> float:
    """How starved the server or the load generator were during the busy phases.

    The most time (% of the phase) either spent runnable but waiting for a CPU
    (/proc/PID/schedstat) during an echo or broadcast phase: other processes
    then took the CPU they needed, and throughput and latency figures suffer.
    """
    phases = [result.get("broadcast", {}), *result.get("echo", {}).values()]
    values = [max(p["starved_pct"].values()) for p in phases if "starved_pct" in p]
    return max(values, default=0.0)


def wait_quiet(limit: float, seconds: float = 60.0) -> float:
    """Wait (at most ``seconds``) for a 2 s window with the machine at most ``limit``% busy."""
    from benchcommon import machine_busy_pct, machine_cpu

    deadline = time.monotonic() + seconds
    busy = 0.0
    while True:
        before = machine_cpu()
        time.sleep(2.0)
        busy = machine_busy_pct(before, machine_cpu())
        if busy <= limit or time.monotonic() > deadline:
            return busy
        print(f"   machine {busy:.0f}% busy (other processes): waiting for it to quiet down",
              file=sys.stderr, flush=True)


def run_one(name: str, args: argparse.Namespace, env: dict[str, str], workdir: Path
            ) -> dict[str, Any]:
    py = sys.executable
    if args.wait_quiet > 0:
        busy = wait_quiet(args.quiet_limit, args.wait_quiet)
        print(f"== machine {busy:.0f}% busy before {name}", file=sys.stderr, flush=True)
    log_path = workdir / f"{name}.log"
    extra = args.rtgateway_args.split() if name == "rtgateway" else []
    with open(log_path, "wb") as log_fh:
        server = spawn([py, *SERVERS[name], *extra], env, stdout=subprocess.PIPE, stderr=log_fh)
    try:
        info = wait_ready(server, 30)
        print(f"== {name}: pid {info['pid']} ws {info['ws_port']} control {info['control_port']}",
              file=sys.stderr, flush=True)
        out = workdir / f"{name}.json"
        profiled = name in args.profile
        profile_path = workdir / f"{name}-profile.{args.profile_format}"
        profilers: list[subprocess.Popen[Any]] = []

        def start_profiler(duration: float | None) -> None:
            cmd = [str(Path(py).parent / "py-spy"), "record", "--pid", str(info["pid"]),
                   "--rate", str(args.profile_rate), "--format", args.profile_format,
                   "--output", str(profile_path)]
            if args.profile_nonblocking:
                cmd.append("--nonblocking")
            if duration:
                cmd += ["--duration", str(int(duration))]
            with open(workdir / f"{name}-pyspy.log", "wb") as fh:
                profilers.append(spawn(cmd, env, stdout=subprocess.DEVNULL, stderr=fh))

        if profiled and args.profile_phase == "all":
            start_profiler(None)
        cmd = [
            py, str(HERE / "loadgen.py"),
            "--url", f"ws://127.0.0.1:{info['ws_port']}{info['ws_path']}",
            "--control", f"http://127.0.0.1:{info['control_port']}",
            "--connections", str(args.connections),
            "--procs", str(args.procs),
            "--client", args.client,
            "--echo-rate", str(args.echo_rate),
            "--echo-clients", str(args.echo_clients),
            "--idle-seconds", str(args.phase_seconds),
            "--echo-seconds", str(args.phase_seconds),
            "--broadcast-seconds", str(args.phase_seconds),
            "--hz", str(args.hz),
            "--phases", args.phases,
            "--json-out", str(out),
        ]
        if name == "rtgateway":
            cmd += ["--echo-types", "bench.echo", "bench.echo_now"]
        loadgen = spawn(cmd, env, stderr=subprocess.PIPE)

        def relay() -> None:
            """Echo the loadgen's progress lines; start py-spy when the chosen phase begins."""
            assert loadgen.stderr is not None
            for raw in loadgen.stderr:
                line = raw.decode(errors="replace")
                sys.stderr.write(line)
                if profiled and line.startswith(f"[loadgen] phase {args.profile_phase} begin"):
                    start_profiler(None if args.profile_phase == "connect" else args.phase_seconds)
                if profiled and line.startswith(f"[loadgen] phase {args.profile_phase} end"):
                    for profiler in profilers:
                        if profiler.poll() is None:
                            profiler.send_signal(signal.SIGINT)

        import threading

        relay_thread = threading.Thread(target=relay, daemon=True)
        relay_thread.start()
        try:
            rc = loadgen.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(loadgen.pid, signal.SIGKILL)
            raise TimeoutError(f"loadgen against {name} did not finish in {args.timeout}s")
        relay_thread.join(timeout=5)
        if rc != 0:
            raise RuntimeError(f"loadgen against {name} exited with {rc}")
        result: dict[str, Any] = json.loads(out.read_text())
        for profiler in profilers:
            if profiler.poll() is None:
                profiler.send_signal(signal.SIGINT)
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.kill()
            result["profile"] = str(profile_path)
    finally:
        rc = stop(server)
    result["server_exit"] = rc
    result["log"] = str(log_path)
    result["log_scan"] = scan_log(log_path)
    return result


# ----------------------------------------------------------------------------- the table

ROWS: list[tuple[str, str, tuple[str, ...], str]] = [
    # (label, unit, path in the result, which way is better)
    ("connections established", "", ("connect", "ok"), "="),
    ("handshake rate", "conn/s", ("connect", "handshakes_per_s"), "higher"),
    ("handshake latency p50", "ms", ("connect", "latency_p50_ms"), "lower"),
    ("handshake latency p99", "ms", ("connect", "latency_p99_ms"), "lower"),
    ("server CPU per handshake", "us", ("connect", "server_cpu_us_per_handshake"), "lower"),
    ("RSS per connection", "KiB", ("idle", "rss_per_conn_kib"), "lower"),
    ("server RSS after idle", "KiB", ("idle", "server_rss_after_kib"), "lower"),
    ("idle server CPU", "% core", ("idle", "server_cpu_pct"), "lower"),
    ("echo sent rate", "msg/s", ("echo", "bench.echo", "sent_per_s"), "="),
    ("echo RTT p50 (ctx.reply)", "ms", ("echo", "bench.echo", "rtt_p50_ms"), "lower"),
    ("echo RTT p99 (ctx.reply)", "ms", ("echo", "bench.echo", "rtt_p99_ms"), "lower"),
    ("echo RTT p50 (urgent)", "ms", ("echo", "bench.echo_now", "rtt_p50_ms"), "lower"),
    ("echo RTT p99 (urgent)", "ms", ("echo", "bench.echo_now", "rtt_p99_ms"), "lower"),
    ("echo server CPU per echo (ctx.reply)", "us", ("echo", "bench.echo", "server_cpu_us_per_echo"),
     "lower"),
    ("echo server CPU per echo (urgent)", "us",
     ("echo", "bench.echo_now", "server_cpu_us_per_echo"), "lower"),
    ("echo lost", "msg", ("echo", "bench.echo", "missing"), "lower"),
    ("max GC pause, echo (ctx.reply)", "ms", ("echo", "bench.echo", "server", "gc_max_pause_ms"),
     "lower"),
    ("max GC pause, echo (urgent)", "ms",
     ("echo", "bench.echo_now", "server", "gc_max_pause_ms"), "lower"),
    ("broadcast expected", "ev/s", ("broadcast", "expected_per_s"), "="),
    ("broadcast delivered", "ev/s", ("broadcast", "delivered_per_s"), "higher"),
    ("broadcast delivered fraction", "", ("broadcast", "delivered_fraction"), "higher"),
    ("server CPU per delivered event", "us", ("broadcast", "server_cpu_us_per_delivery"),
     "lower"),
    ("server CPU during broadcast", "% core", ("broadcast", "server_cpu_pct"), "lower"),
    ("  of which kernel (sys)", "% core", ("broadcast", "server_sys_pct"), "lower"),
    ("broadcast latency p50", "ms", ("broadcast", "latency_p50_ms"), "lower"),
    ("broadcast latency p99", "ms", ("broadcast", "latency_p99_ms"), "lower"),
    ("broadcast bytes per frame", "B", ("broadcast", "bytes_per_frame"), "="),
    ("max GC pause, broadcast", "ms", ("broadcast", "server", "gc_max_pause_ms"), "lower"),
    ("loadgen CPU during broadcast", "% core", ("broadcast", "loadgen_cpu_pct"), "="),
    ("server starved (runnable, no CPU), echo", "% time",
     ("echo", "bench.echo", "starved_pct", "server"), "lower"),
    ("server starved (runnable, no CPU), broadcast", "% time",
     ("broadcast", "starved_pct", "server"), "lower"),
    ("loadgen starved, broadcast", "% time", ("broadcast", "starved_pct", "loadgen"), "lower"),
    ("other processes' CPU, idle", "% core", ("idle", "other_cpu_pct"), "="),
    ("other processes' CPU, echo", "% core", ("echo", "bench.echo", "other_cpu_pct"), "="),
    ("other processes' CPU, broadcast", "% core", ("broadcast", "other_cpu_pct"), "="),
    ("connections open at end", "", ("end", "open"), "="),
]

# The baseline has one echo: the urgent rtgateway variant is compared with it too.
BASELINE_ALIASES = {("echo", "bench.echo_now"): ("echo", "bench.echo")}


def dig(result: dict[str, Any], path: tuple[str, ...], baseline: bool = False) -> Any:
    if baseline and path[:2] in BASELINE_ALIASES:
        path = BASELINE_ALIASES[path[:2]] + path[2:]
    node: Any = result
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value else "0"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    names = list(results)
    others = [n for n in names if n != baseline]
    header = ["figure", "unit", *names] + [f"{n}/{baseline}" for n in others] + ["better"]
    rows = [header]
    for label, unit, path, better in ROWS:
        values = [dig(results[n], path, baseline=(n != "rtgateway")) for n in names]
        if all(v is None for v in values):
            continue
        base = dig(results[baseline], path, baseline=True) if baseline in results else None
        ratios = []
        for n in others:
            v = dig(results[n], path, baseline=(n != "rtgateway"))
            if isinstance(v, int | float) and isinstance(base, int | float) and base:
                ratios.append(f"{v / base:.2f}x")
            else:
                ratios.append("-")
        rows.append([label, unit, *[fmt(v) for v in values], *ratios, better])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j])
                                         for j, c in enumerate(r)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def git_state() -> dict[str, Any]:
    """Which code was measured: HEAD plus the uncommitted changes' digest."""
    import hashlib

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD", "--", "gateway", "protocol", "plugins")
    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "dirty_files": [ln[3:] for ln in git("status", "--porcelain", "--", "gateway",
                                              "protocol").splitlines()],
        "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else "",
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import resource

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", "-n", type=int, default=2000)
    parser.add_argument("--servers", default="autobahn,rtgateway",
                        help=f"comma-separated, first is the baseline; known: {', '.join(SERVERS)}")
    parser.add_argument("--procs", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)),
                        help="load-generator worker processes")
    parser.add_argument("--client", choices=("raw", "autobahn"), default="raw")
    parser.add_argument("--echo-rate", type=float, default=1000.0)
    parser.add_argument("--echo-clients", type=int, default=100)
    parser.add_argument("--hz", type=float, default=20.0)
    parser.add_argument("--phase-seconds", type=float, default=5.0)
    parser.add_argument("--rtgateway-args", default="",
                        help="extra arguments for server_rtgateway.py, e.g. "
                             "'--with-plugins --time-calls'")
    parser.add_argument("--phases", default="idle,echo,broadcast",
                        help="phases after connecting, comma-separated (profiling: broadcast)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="deadline for one loadgen run (seconds)")
    parser.add_argument("--profile", default="",
                        help="comma-separated servers to record with py-spy while loaded")
    parser.add_argument("--profile-phase", default="broadcast",
                        help="record only this phase (connect, idle, bench.echo, "
                             "bench.echo_now, broadcast) or all")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--profile-nonblocking", action="store_true",
                        help="py-spy samples without pausing the server (less overhead, "
                             "torn stacks)")
    parser.add_argument("--profile-format", default="raw", choices=("raw", "flamegraph",
                                                                   "speedscope"))
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each server, wait up to this many seconds for the machine "
                             "to be idle (other processes skew throughput figures); 0: don't")
    parser.add_argument("--quiet-limit", type=float, default=15.0,
                        help="%% of one core that counts as idle for --wait-quiet")
    parser.add_argument("--max-other", type=float, default=10.0,
                        help="rerun a server if it or the load generator waited for a CPU more "
                             "than this %% of an echo or broadcast phase (other processes took it)")
    parser.add_argument("--retries", type=int, default=2, help="reruns allowed per server")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the servers and the load generator at this nice value "
                             "(negative needs root): on a machine shared with other work it "
                             "keeps them from being starved; other processes still run")
    parser.add_argument("--json-out", help="write every figure as JSON here")
    parser.add_argument("--from-json", metavar="PATH",
                        help="only print the table of a run saved with --json-out")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(table(saved["results"], next(iter(saved["results"]))))
        return 0
    global NICE
    NICE = args.nice
    args.profile = [p for p in args.profile.split(",") if p]
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in names:
        if n not in SERVERS:
            parser.error(f"unknown server {n!r}")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    from gateway.auth import ensure_dev_key

    workdir = Path(tempfile.mkdtemp(prefix="rtgw-bench-"))
    key = workdir / "dev-signing.key"
    ensure_dev_key(key)
    env = dict(os.environ)
    env["RTGATEWAY_DEV_KEY_FILE"] = str(key)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDEVMODE", None)

    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for name in names:
        best: dict[str, Any] | None = None
        for attempt in range(1, args.retries + 2):
            result = run_one(name, args, env, workdir)
            result["attempt"] = attempt
            result["other_cpu_max"] = contamination(result)
            time.sleep(1.0)  # let the kernel settle closed sockets between runs
            if best is None or result["other_cpu_max"] < best["other_cpu_max"]:
                best = result
            if result["other_cpu_max"] <= args.max_other:
                break
            print(f"== {name}: server or load generator waited for a CPU up to "
                  f"{result['other_cpu_max']:.0f}% of a phase (limit {args.max_other:g}%): "
                  + ("running it again" if attempt <= args.retries else "keeping the cleanest"),
                  file=sys.stderr, flush=True)
        assert best is not None
        results[name] = best
    elapsed = time.monotonic() - started

    info = machine()
    info["git"] = git_state()
    print()
    print(f"N = {args.connections} connections, {args.procs} loadgen process(es), nice "
          f"{args.nice}, client "
          f"{args.client}, echo {args.echo_rate:g} msg/s over {args.echo_clients} clients, "
          f"broadcast {args.hz:g} Hz, {args.phase_seconds:g} s per phase")
    print(f"machine: {info['nproc']} x {info['cpu']}, Python {info['python']}, "
          f"Linux {info['kernel']}; ran {elapsed:.0f} s; logs in {workdir}")
    g = info["git"]
    print(f"code: HEAD {g['head']}" + (f" + uncommitted changes (diff {g['diff_sha1']}) in "
                                       f"{', '.join(g['dirty_files'])}" if g["diff_sha1"] else ""))
    print()
    print(table(results, names[0]))
    print()
    for name, r in results.items():
        end = r.get("end", {})
        notes = []
        if r["connect"]["failed"]:
            notes.append(f"failed handshakes {r['connect']['failures']}")
        if end.get("drops"):
            notes.append(f"dropped connections {end['drops']}")
        if end.get("errors"):
            notes.append(f"system.error {end['errors']}")
        if end.get("disconnects"):
            notes.append(f"system.disconnect {end['disconnects']}")
        if end.get("other"):
            notes.append(f"other events {end['other']}")
        srv = end.get("server", {})
        for k in ("closes", "bad_input", "dropped_by_reason", "handler_failures",
                  "tick_overruns", "ticks_skipped", "auth_failures"):
            if srv.get(k):
                notes.append(f"server {k} {srv[k]}")
        bc = r.get("broadcast", {}).get("server_broadcasts")
        if bc:
            notes.append(f"broadcasts ran {bc['ran']} skipped {bc['skipped']} in "
                         f"{bc['seconds']:.1f}s (busy {bc['busy_seconds']:.2f}s)")
        scan = r["log_scan"]
        if scan["suspicious_count"]:
            notes.append(f"log: {scan['suspicious_count']} suspicious lines, "
                         f"{scan['tracebacks']} tracebacks (see {r['log']})")
        if r.get("other_cpu_max", 0) > args.max_other:
            notes.append(f"CONTAMINATED: server or load generator waited for a CPU up to "
                         f"{r['other_cpu_max']:.0f}% of a phase (attempt {r['attempt']})")
        elif r.get("attempt", 1) > 1:
            notes.append(f"clean on attempt {r['attempt']}")
        if r.get("profile"):
            notes.append(f"profile {r['profile']}")
        print(f"{name}: " + ("; ".join(notes) if notes else "no errors, no drops"))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"machine": info, "args": {k: v for k, v in vars(args).items()},
             "results": results}, indent=2))
        print(f"\nJSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
