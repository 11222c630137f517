"""State sync: bandwidth and CPU in the documented scenario (docs/StateSync.md#benchmarks).

Scenario: ``--players`` players (200) moving in a square zone sized so each
sees about 50 others (view radius 50 m, cells 25 m).  Every player walks to
random waypoints at 1.5-5 m/s, facing where it goes, resting 0.5-3 s at
30% of the waypoints; health, ammo and stance change now and then; each has
a name.  Clients acknowledge every update 100 ms after it was sent.

Measured through the real core (SyncEngine) and the plugin's event
construction (the Envelope bytes the connection queues), so "bytes" are
bytes on the wire before frame compression:

* full vs delta: every player gets a full snapshot every tick, against the
  normal delta sync (also with lz4 applied to the full snapshots, a stronger
  baseline);
* per player KB/s, active (everyone moving) and idle (everyone standing);
* CPU per player per tick at 20 Hz and 60 Hz (update + build + events; process CPU
  time, so other processes on the machine do not inflate it);
* the largest player count one core sustains at 20 Hz: the density stays
  the same and the player count grows until the 95th percentile of a tick's CPU
  time passes 50 ms.

    python bench/bench_state.py            # the table (about a minute)
    python bench/bench_state.py --quick    # fewer ticks, no capacity search
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lz4.frame

from gateway.state.provider import EntityState, FieldSpec, Schema
from gateway.state.quantize import yaw_quaternion
from gateway.state.sync import SyncConfig, SyncEngine
from plugins.state import StatePlugin

SCHEMA = Schema({1: (FieldSpec("health"), FieldSpec("ammo"), FieldSpec("stance"),
                     FieldSpec("weapon"), FieldSpec("name", "bytes"))})
CELL = 25.0
RADIUS = 50.0
TICK_NUMBERING = 60  # the critical tick rate: tick numbers per second
#: Zone area per player for about 50 visible (measured and printed).
AREA_PER_PLAYER = 185.0


class Player:
    __slots__ = ("ammo", "health", "id", "name", "rest", "speed", "stance", "tx", "ty",
                 "weapon", "x", "y", "yaw")

    def __init__(self, pid: int, rng: random.Random, zone: float) -> None:
        self.id = pid
        self.x, self.y = rng.uniform(0, zone), rng.uniform(0, zone)
        self.tx, self.ty = rng.uniform(0, zone), rng.uniform(0, zone)
        self.speed = rng.uniform(1.5, 5.0)
        self.rest = 0.0
        self.yaw = 0.0
        self.health, self.ammo, self.stance, self.weapon = 100, 30, 0, rng.randint(1, 6)
        self.name = b"player-%d" % pid


class Scenario:
    def __init__(self, players: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.zone = math.sqrt(players * AREA_PER_PLAYER)
        self.players = [Player(i, self.rng, self.zone) for i in range(1, players + 1)]
        self.idle = False

    def step(self, dt: float) -> None:
        rng = self.rng
        zone = self.zone
        for p in self.players:
            if self.idle:
                continue
            if rng.random() < 0.002 * dt * 60:
                p.health = max(1, p.health - rng.randint(5, 30))
            if rng.random() < 0.01 * dt * 60:
                p.ammo = max(0, p.ammo - 1) or 30
            if p.rest > 0:
                p.rest -= dt
                p.stance = 1
                continue
            p.stance = 0
            dx, dy = p.tx - p.x, p.ty - p.y
            dist = math.hypot(dx, dy)
            move = p.speed * dt
            if dist <= move:
                p.x, p.y = p.tx, p.ty
                p.tx, p.ty = rng.uniform(0, zone), rng.uniform(0, zone)
                if rng.random() < 0.3:
                    p.rest = rng.uniform(0.5, 3.0)
            else:
                p.x += dx / dist * move
                p.y += dy / dist * move
                p.yaw = math.atan2(dy, dx)

    def states(self) -> list[EntityState]:
        out = []
        for p in self.players:
            moving = p.rest <= 0 and not self.idle
            if moving:
                dx, dy = p.tx - p.x, p.ty - p.y
                dist = math.hypot(dx, dy) or 1.0
                vx, vy = dx / dist * p.speed, dy / dist * p.speed
            else:
                vx = vy = 0.0
            out.append(EntityState(p.id, 1, p.x, p.y, 0.0, yaw_quaternion(p.yaw), vx, vy, 0.0,
                                   (p.health, p.ammo, p.stance, p.weapon, p.name)))
        return out


def engine_for(players: int, rate: int, budget: int) -> SyncEngine:
    config = SyncConfig(tick_rate=TICK_NUMBERING, bytes_per_second=budget, cell_size=CELL,
                        view_radius=RADIUS, near_radius=RADIUS, keepalive=TICK_NUMBERING,
                        full_interval=0, ring_depth=32)
    engine = SyncEngine(SCHEMA, config)
    for p in range(1, players + 1):
        engine.add_viewer(p, str(p), p)
    return engine


class Run:
    """One simulated run: bytes and CPU per tick."""

    def __init__(self, players: int, rate: int, *, full_every_tick: bool = False,
                 idle: bool = False, budget: int = 1_000_000, rtt: float = 0.1,
                 seed: int = 7) -> None:
        self.players = players
        self.rate = rate
        self.interval = TICK_NUMBERING // rate
        self.scenario = Scenario(players, seed)
        self.scenario.idle = idle
        self.engine = engine_for(players, rate, budget)
        self.full_every_tick = full_every_tick
        self.plugin = StatePlugin()
        self.ack_ticks = max(1, round(rtt * rate))
        self.acks: deque[tuple[int, list[tuple[int, int]]]] = deque()
        self.tick = 0
        self.bytes: list[int] = []
        self.lz4_bytes: list[int] = []
        self.cpu: list[float] = []
        self.visible: list[int] = []

    def warm(self, ticks: int) -> None:
        for _ in range(ticks):
            self.one()
        self.bytes.clear()
        self.lz4_bytes.clear()
        self.cpu.clear()
        s = self.engine.stats
        s.records = s.encoded = 0

    def one(self, measure_lz4: bool = False) -> None:
        self.tick += self.interval
        dt = 1.0 / self.rate
        self.scenario.step(dt)
        states = self.scenario.states()
        engine = self.engine
        if self.full_every_tick:
            for key in engine.viewers:
                engine.viewers[key].epoch = 0
        started = time.process_time()
        engine.update(self.tick, states)
        built = engine.build(self.tick, dt)
        event = self.plugin._event
        total = 0
        sizes = []
        for viewer, payload, full in built:
            ev = event("state.snapshot" if full else "state.delta", 1, payload)
            engine.charge(viewer.key, ev.size)
            total += len(ev.plain_fragment())
            sizes.append((viewer.key, viewer.seq))
            if measure_lz4:
                frag = ev.plain_fragment()
                self.lz4_bytes.append(min(len(frag), len(lz4.frame.compress(frag)) + 6))
        self.cpu.append(time.process_time() - started)
        self.bytes.append(total)
        # Acks come back one RTT later (everything arrives: sizes only).
        self.acks.append((self.tick + self.ack_ticks * self.interval, sizes))
        while self.acks and self.acks[0][0] <= self.tick:
            for key, seq in self.acks.popleft()[1]:
                engine.ack(key, seq, (1 << 64) - 1)

    def run(self, ticks: int, measure_lz4: bool = False) -> Run:
        for _ in range(ticks):
            self.one(measure_lz4)
        self.visible = [len(self.engine.grid.visible(k)) for k in self.engine.viewers]
        return self

    @property
    def bytes_per_tick(self) -> float:
        return statistics.fmean(self.bytes)

    @property
    def kb_per_player_second(self) -> float:
        return self.bytes_per_tick / self.players * self.rate / 1000

    @property
    def us_per_player_tick(self) -> float:
        return statistics.fmean(self.cpu) / self.players * 1e6


def capacity(rate: int, limit: float, ticks: int) -> list[tuple[int, float, float]]:
    """Grow the player count at constant density until a tick's CPU time exceeds ``limit``
    (the 95th percentile, so that one preemption by another process does not decide)."""
    rows = []
    players = 200
    while True:
        run = Run(players, rate)
        run.warm(10)
        run.run(ticks)
        p95 = sorted(run.cpu)[int(0.95 * (len(run.cpu) - 1))]
        mean = statistics.fmean(run.cpu)
        rows.append((players, mean, p95, max(run.cpu)))
        if p95 > limit or players >= 20000:
            return rows
        players = int(players * 1.25 // 50 * 50)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model or platform.processor()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=200, help="measured ticks per run")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    ticks = 60 if args.quick else args.ticks
    n = args.players
    print(f"machine: {machine()}")
    print(f"scenario: {n} players, zone {math.sqrt(n * AREA_PER_PLAYER):.0f} m square, "
          f"view radius {RADIUS:.0f} m, cells {CELL:.0f} m, acks after 100 ms\n")

    rows = []
    results = {}
    for rate in (20, 60):
        delta = Run(n, rate)
        delta.warm(20)
        delta.run(ticks)
        full = Run(n, rate, full_every_tick=True)
        full.warm(5)
        full.run(max(20, ticks // 4), measure_lz4=True)
        idle = Run(n, rate, idle=True)
        idle.warm(40)
        idle.run(ticks)
        results[rate] = (delta, full, idle)
        saving = 1 - delta.bytes_per_tick / full.bytes_per_tick
        lz4_full = sum(full.lz4_bytes) / len(full.bytes)
        rows.append((rate, delta, full, idle, saving, 1 - delta.bytes_per_tick / lz4_full,
                     lz4_full))

    visible = statistics.fmean(results[20][0].visible)
    print(f"visible per player: mean {visible:.1f}, "
          f"min {min(results[20][0].visible)}, max {max(results[20][0].visible)}\n")
    print("| rate | full snapshots B/tick | (lz4) | delta B/tick | saving | (vs lz4 full) "
          "| active KB/s/player | idle KB/s/player | CPU us/player/tick | shared |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rate, delta, full, idle, saving, saving_lz4, lz4_full in rows:
        s = delta.engine.stats
        shared = s.records / max(1, s.encoded)
        print(f"| {rate} Hz | {full.bytes_per_tick:,.0f} | {lz4_full:,.0f} "
              f"| {delta.bytes_per_tick:,.0f} | {saving:.1%} | {saving_lz4:.1%} "
              f"| {delta.kb_per_player_second:.2f} | {idle.kb_per_player_second:.3f} "
              f"| {delta.us_per_player_tick:.1f} | {shared:.1f} records/encoding |")
    print()
    for rate, delta, full, _idle, _s, _l, _f in rows:
        print(f"{rate} Hz: full-snapshot CPU {full.us_per_player_tick:.1f} us/player/tick, "
              f"delta tick mean {statistics.fmean(delta.cpu) * 1000:.2f} ms, "
              f"max {max(delta.cpu) * 1000:.2f} ms")
    if not args.quick:
        print("\ncapacity at 20 Hz (one core, a tick must stay under 50 ms):")
        print("| players | mean tick ms | p95 tick ms | worst tick ms |")
        print("|---|---|---|---|")
        found = capacity(20, 0.050, 60)
        for players, mean, p95, worst in found:
            print(f"| {players} | {mean * 1000:.1f} | {p95 * 1000:.1f} | {worst * 1000:.1f} |")
        ok = [p for p, _m, p95, _w in found if p95 <= 0.050]
        print(f"\nlargest player count without a tick overrun: {max(ok) if ok else 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
