"""The per-tick state sync engine (sans-io: ticks and bytes in, payload bytes out).

One :class:`SyncEngine` per gateway instance.  Each sync tick the adapter
(plugins/state.py) calls :meth:`SyncEngine.update` with the provider's entity
states and :meth:`SyncEngine.build`, which returns one ``StateUpdate``
payload per player that has something to receive; acknowledgements come back
through :meth:`SyncEngine.ack`.  Nothing here knows about sockets, reactors
or clocks: ticks are numbers and ``dt`` is seconds.

**Versions.**  :meth:`update` quantises every entity and keeps its current
*version* (a tuple, gateway.state.codec) unless it changed: a field, the
rotation, the velocity by more than ``velocity_tolerance``, or the position
by more than ``position_tolerance`` from where dead reckoning puts the
version.  An entity moving in a straight line keeps one version for seconds,
and costs nothing on the wire meanwhile.

**Per-entity baselines.**  For every player the engine remembers which
version of each entity the client has acknowledged (``acked``) and which it
has been sent (``known``).  An update carries, for each visible entity whose
current version is not the one known, a delta against the acknowledged
version (a full record when there is none): "a delta against the last
snapshot the client acknowledged", entity by entity, so a lost update costs
only what it carried.  Acks name packets by sequence number plus a bit mask
of the 64 before it; a packet the mask reports missing is *lost*, and its
entities become pending again.

**Shared fragments.**  A record depends only on (entity, base version) and
the tick, so it is encoded once per tick and the bytes are shared by every
player with that base: encoding grows with entities x distinct baselines,
and a player's payload is a join of ready-made fragments plus a short header.

**Full snapshots** open an *epoch*: the first update of a connection, one
every ``full_interval`` ticks, one after a client asks (``resync``: it lost
state, e.g. after a reconnect) and one when the oldest unacknowledged update
is older than ``baseline_max_age`` ticks (the client stalled or vanished).
A full snapshot replaces the client's whole state; the updates after it name
its epoch, and a client that missed it ignores them until the next one.

**Budgets.**  See gateway.state.priority: pending entities are sent in
decreasing accumulated priority (kind priority / (1 + distance in cells))
while the player's byte budget is positive; kinds can be throttled to one
update every ``interval`` ticks, and entities beyond ``near_radius`` to
``far_interval`` times less often.  Removals and the player's own entity
go first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field

from gateway.state.codec import (
    WIRE_BYTES,
    WIRE_INT,
    Version,
    encode_delta,
    encode_full,
    encode_removed,
    encode_update,
)
from gateway.state.grid import InterestGrid
from gateway.state.priority import ByteBudget
from gateway.state.provider import GLOBAL, OWNER, SPATIAL, EntityState, Schema
from gateway.state.quantize import ROT_IDENTITY, extrapolate, pack_rotation
from gateway.state.ring import StateRing

__all__ = ["KindRate", "Packet", "SyncConfig", "SyncEngine", "SyncStats", "Viewer"]

#: Bytes of StateUpdate header (seq, tick, input seq, epoch, records tag) assumed per update.
HEADER_ESTIMATE = 16
#: Packets an ack can describe: its seq and the 64 before it.
ACK_WINDOW = 64
_INF = float("inf")


@dataclass(frozen=True)
class KindRate:
    """Throttling and priority of one entity kind."""

    kind: int
    interval: int = 1  # at most one update every `interval` ticks (tick numbering units)
    priority: float = 1.0


@dataclass(frozen=True)
class SyncConfig:
    """Everything in ticks of the tick numbering (``tick_rate`` per second) and bytes."""

    tick_rate: int = 60
    position_scale: int = 64
    position_tolerance: int = 2
    velocity_tolerance: int = 4
    bytes_per_second: int = 24000
    burst_bytes: int = 0  # 0: a quarter second of budget (at least 1200)
    full_interval: int = 0  # ticks between periodic full snapshots (0: never)
    baseline_max_age: int = 120
    keepalive: int = 60  # an (empty) update at least this often; 0: only when needed
    probe: int = 15  # ticks of silence after which unacknowledged records are probed
    ring_depth: int = 64
    cell_size: float = 32.0
    view_radius: float = 96.0
    near_radius: float = 48.0
    far_interval: int = 2
    kinds: tuple[KindRate, ...] = ()


@dataclass(slots=True)
class Packet:
    """An update in flight: what it carried, to settle on ack or loss."""

    seq: int
    tick: int
    entries: list[tuple[int, Version | None]]


@dataclass(slots=True)
class SyncStats:
    updates: int = 0
    full_snapshots: int = 0
    records: int = 0  # records placed in updates
    encoded: int = 0  # records actually encoded (the rest were shared fragments)
    removals: int = 0
    bytes: int = 0  # payload bytes built
    lost_packets: int = 0
    resyncs: int = 0


@dataclass(eq=False)
class Viewer:
    """One player's sync state (one per connection)."""

    key: Hashable
    player: str
    entity: int | None
    budget: ByteBudget
    known: dict[int, Version | None] = field(default_factory=dict)
    acked: dict[int, Version] = field(default_factory=dict)
    acc: dict[int, float] = field(default_factory=dict)
    last_sent: dict[int, int] = field(default_factory=dict)
    inflight: deque[Packet] = field(default_factory=deque)
    seq: int = 0
    epoch: int = 0  # seq of the full snapshot the client builds on (0: needs one)
    next_full: int = 0
    input_seq: int = 0
    sent_input_seq: int = 0
    last_update_tick: int = -(1 << 62)
    last_ack_tick: int = 0
    position: tuple[float, float] | None = None  # for viewers without an entity
    # True when, after the last update, the client had (or was sent) the current version
    # of everything visible: then only entities that changed since need a look.
    clean: bool = False


class SyncEngine:
    def __init__(self, schema: Schema | None = None, config: SyncConfig | None = None) -> None:
        self.schema = schema or Schema()
        self.config = config = config or SyncConfig()
        self.grid = InterestGrid(config.cell_size, config.view_radius)
        self.ring = StateRing(max(1, config.ring_depth))
        self.world: dict[int, Version] = {}
        self.stats = SyncStats()
        self.viewers: dict[Hashable, Viewer] = {}
        self.globals: dict[int, None] = {}  # ordered set
        self.owned: dict[str, dict[int, None]] = {}
        self._scope: dict[int, tuple[int, str]] = {}
        self._expires: dict[int, int] = {}
        self._rot: dict[int, tuple[tuple[float, float, float, float], int]] = {}
        self._xy: dict[int, tuple[float, float]] = {}  # raw position of viewers' entities
        self._viewer_entities: dict[int, int] = {}  # entity -> number of viewers on it
        self._changed: set[int] = set()  # entities with a new version at this tick
        self._kind_rate = {k.kind: (k.interval, k.priority) for k in config.kinds}
        self._wire: dict[int, tuple[int, ...]] = {}
        self._defaults: dict[int, tuple[int | bytes, ...]] = {}
        self._float_steps: dict[int, tuple[float | None, ...]] = {}
        for kind, specs in self.schema.kinds.items():
            self._wire[kind] = tuple(WIRE_BYTES if f.kind == "bytes" else WIRE_INT
                                     for f in specs)
            self._defaults[kind] = self.schema.defaults(kind)
            if any(f.kind == "float" for f in specs):
                self._float_steps[kind] = tuple(f.step if f.kind == "float" else None
                                                for f in specs)
        cells = config.near_radius / config.cell_size
        self._near_cells = math.floor(cells + 1e-9)
        self.tick = 0

    # ------------------------------------------------------------------ viewers

    def add_viewer(self, key: Hashable, player: str = "", entity: int | None = None,
                   bytes_per_second: float | None = None) -> Viewer:
        """A player joins (a connection, a resume): its first update is a full snapshot."""
        if key in self.viewers:
            self.remove_viewer(key)
        cfg = self.config
        rate = bytes_per_second or cfg.bytes_per_second
        budget = ByteBudget(rate, cfg.burst_bytes or None)
        viewer = Viewer(key, player, entity, budget)
        viewer.last_ack_tick = self.tick
        self.viewers[key] = viewer
        if entity is not None:
            self._viewer_entities[entity] = self._viewer_entities.get(entity, 0) + 1
        return viewer

    def remove_viewer(self, key: Hashable) -> None:
        viewer = self.viewers.pop(key, None)
        if viewer is None:
            return
        self.grid.remove_viewer(key)
        if viewer.entity is not None:
            count = self._viewer_entities.get(viewer.entity, 0) - 1
            if count > 0:
                self._viewer_entities[viewer.entity] = count
            else:
                self._viewer_entities.pop(viewer.entity, None)
                self._xy.pop(viewer.entity, None)

    def set_budget(self, key: Hashable, bytes_per_second: float,
                   burst: float | None = None) -> None:
        self.viewers[key].budget.set_rate(bytes_per_second, burst)

    def set_view_position(self, key: Hashable, x: float, y: float) -> None:
        """Where a viewer without an entity looks from."""
        self.viewers[key].position = (x, y)

    def set_input_seq(self, key: Hashable, seq: int) -> None:
        """The last input of this player the provider applied (sent with every update)."""
        viewer = self.viewers.get(key)
        if viewer is not None and seq > viewer.input_seq:
            viewer.input_seq = seq

    def request_full(self, key: Hashable) -> None:
        viewer = self.viewers.get(key)
        if viewer is not None:
            viewer.epoch = 0
            self.stats.resyncs += 1

    def charge(self, key: Hashable, size: int) -> None:
        """Debit ``size`` bytes actually queued for this viewer from its budget."""
        viewer = self.viewers.get(key)
        if viewer is not None:
            viewer.budget.charge(size)

    # ------------------------------------------------------------------ the world

    def update(self, tick: int, states: Iterable[EntityState]) -> None:
        """Quantise the provider's entities at ``tick``; keep versions that still hold."""
        if tick <= self.tick and self.world:
            raise ValueError(f"tick {tick} is not after {self.tick}")
        self.tick = tick
        cfg = self.config
        scale = cfg.position_scale
        ptol = cfg.position_tolerance
        vtol = cfg.velocity_tolerance
        hz2 = 2 * cfg.tick_rate
        hz = cfg.tick_rate
        world = self.world
        floor = math.floor
        move = self.grid.move
        rotcache = self._rot
        scopes = self._scope
        watched = self._viewer_entities
        xy = self._xy
        float_steps = self._float_steps
        seen: set[int] = set()
        add_seen = seen.add
        changed_now = self._changed  # accumulates until build() consumes it
        for s in states:
            e, kind, x, y, z, r, vx, vy, vz, fields, scope, owner, expires = s
            if expires:
                if tick >= expires:
                    continue
                self._expires[e] = expires
            add_seen(e)
            qx = floor(x * scale + 0.5)
            qy = floor(y * scale + 0.5)
            qz = floor(z * scale + 0.5)
            qvx = floor(vx * scale + 0.5)
            qvy = floor(vy * scale + 0.5)
            qvz = floor(vz * scale + 0.5)
            if r is None:
                rot = ROT_IDENTITY
            else:
                cached = rotcache.get(e)
                if cached is not None and cached[0] == r:
                    rot = cached[1]
                else:
                    rot = pack_rotation(*r)
                    rotcache[e] = (r, rot)
            if fields and kind in float_steps:
                fields = _quantize_fields(fields, float_steps[kind])
            cur = world.get(e)
            changed = (
                cur is None
                or cur[1] != kind
                or cur[8] != rot
                or cur[9:] != fields
                or abs(qvx - cur[5]) > vtol
                or abs(qvy - cur[6]) > vtol
                or abs(qvz - cur[7]) > vtol
            )
            if not changed:
                assert cur is not None
                n = tick - cur[0]
                bvx, bvy, bvz = cur[5], cur[6], cur[7]
                changed = (
                    abs(qx - (cur[2] + (2 * bvx * n + hz) // hz2 if bvx else cur[2])) > ptol
                    or abs(qy - (cur[3] + (2 * bvy * n + hz) // hz2 if bvy else cur[3])) > ptol
                    or abs(qz - (cur[4] + (2 * bvz * n + hz) // hz2 if bvz else cur[4])) > ptol
                )
            if changed:
                world[e] = (tick, kind, qx, qy, qz, qvx, qvy, qvz, rot, *fields)
                changed_now.add(e)
            if scope:
                if scopes.get(e) != (scope, owner):
                    self._rescope(e, scope, owner)
            else:
                if e in scopes and scopes[e][0] != SPATIAL:
                    self._rescope(e, scope, owner)
                move(e, x, y)
            if e in watched:
                xy[e] = (x, y)
        if len(seen) != len(world):
            for e in world.keys() - seen:
                self._destroy(e)
        # Viewers look from their entity (or their explicit position).
        set_viewer = self.grid.set_viewer
        for viewer in self.viewers.values():
            ent = viewer.entity
            pos = xy.get(ent) if ent is not None else viewer.position
            if pos is None:
                pos = viewer.position
            if pos is not None:
                set_viewer(viewer.key, pos[0], pos[1])
        # Whose visible set changed: they look at everything they see next build.
        viewers = self.viewers
        for key in self.grid.take_changes():
            changed_viewer = viewers.get(key)
            if changed_viewer is not None:
                changed_viewer.clean = False
        if cfg.ring_depth:
            self.ring.push(tick, dict(world))

    def _rescope(self, e: int, scope: int, owner: str) -> None:
        old = self._scope.get(e)
        if old is not None:
            if old[0] == GLOBAL:
                self.globals.pop(e, None)
            elif old[0] == OWNER:
                self.owned.get(old[1], {}).pop(e, None)
        if scope == GLOBAL:
            self.grid.remove(e)
            self.globals[e] = None
        elif scope == OWNER:
            self.grid.remove(e)
            self.owned.setdefault(owner, {})[e] = None
        self._scope[e] = (scope, owner)

    def _destroy(self, e: int) -> None:
        self.world.pop(e, None)
        self.grid.remove(e)
        self._rot.pop(e, None)
        self._expires.pop(e, None)
        scope = self._scope.pop(e, None)
        for viewer in self.viewers.values():
            if e in viewer.known:
                viewer.clean = False
        if scope is not None:
            if scope[0] == GLOBAL:
                self.globals.pop(e, None)
            elif scope[0] == OWNER:
                owned = self.owned.get(scope[1])
                if owned is not None:
                    owned.pop(e, None)
                    if not owned:
                        del self.owned[scope[1]]

    def position(self, entity: int, tick: int) -> tuple[int, int, int] | None:
        """Quantised dead-reckoned position of ``entity`` at ``tick`` (current version)."""
        s = self.world.get(entity)
        if s is None:
            return None
        hz = self.config.tick_rate
        n = tick - s[0]
        return (extrapolate(s[2], s[5], n, hz), extrapolate(s[3], s[6], n, hz),
                extrapolate(s[4], s[7], n, hz))

    def visible(self, key: Hashable) -> Iterator[int]:
        """Everything ``key`` may see now: its interest area, global and owned entities."""
        viewer = self.viewers[key]
        yield from self.grid.visible(key)
        yield from self.globals
        yield from self.owned.get(viewer.player, ())

    # ------------------------------------------------------------------ updates

    def build(self, tick: int, dt: float) -> list[tuple[Viewer, bytes, bool]]:
        """Every viewer's update for ``tick`` (after :meth:`update`), budgets refilled by ``dt``.

        ``(viewer, StateUpdate payload, full)`` for each viewer with something to send.
        """
        cache: dict[tuple[int, int], bytes] = {}
        out = []
        for viewer in self.viewers.values():
            viewer.budget.refill(dt)
            epoch = viewer.epoch
            payload = self._build_one(viewer, tick, cache)
            if payload is not None:
                out.append((viewer, payload, viewer.epoch != epoch))  # a full opens an epoch
        self._changed = set()
        return out

    def _build_one(self, v: Viewer, tick: int, cache: dict[tuple[int, int], bytes]
                   ) -> bytes | None:
        cfg = self.config
        if (
            not v.epoch
            or (v.next_full and tick >= v.next_full)
            or (v.inflight and tick - v.inflight[0].tick > cfg.baseline_max_age)
        ):
            return self._full(v, tick, cache)
        world = self.world
        known = v.known
        acked = v.acked
        acc = v.acc
        last_sent = v.last_sent
        kind_rate = self._kind_rate
        vis = self.grid.visible(v.key)
        extra = self.globals
        owned = self.owned.get(v.player)
        own = v.entity
        cands: list[tuple[float, int, Version]] = []
        append = cands.append
        vc = self.grid.viewer_cell(v.key)
        near = self._near_cells
        far_interval = cfg.far_interval
        cell_of = self.grid._cell_of
        skipped = False
        for e in (vis & self._changed) if v.clean else vis:
            st = world[e]
            if known.get(e) is st:
                continue
            rate = kind_rate.get(st[1])
            interval, prio = rate if rate is not None else (1, 1.0)
            c = cell_of[e]
            if vc is not None:
                dx = c[0] - vc[0]
                dy = c[1] - vc[1]
                d = max(dx if dx >= 0 else -dx, dy if dy >= 0 else -dy)
            else:
                d = 0
            if d > near:
                interval *= far_interval
            if interval > 1 and tick - last_sent.get(e, -interval) < interval:
                skipped = True
                continue
            a = _INF if e == own else acc.get(e, 0.0) + prio / (1 + d)
            acc[e] = a
            append((a, e, st))
        for group in (extra, owned):
            if not group:
                continue
            for e in group:
                st = world[e]
                if known.get(e) is st:
                    continue
                rate = kind_rate.get(st[1])
                interval, prio = rate if rate is not None else (1, 1.0)
                if interval > 1 and tick - last_sent.get(e, -interval) < interval:
                    skipped = True
                    continue
                a = acc.get(e, 0.0) + prio
                acc[e] = a
                append((a, e, st))
        parts: list[bytes] = []
        entries: list[tuple[int, Version | None]] = []
        tokens = v.budget.tokens - HEADER_ESTIMATE
        if len(known) > len(vis):
            for e in known.keys() - vis:
                if known[e] is None or e in extra or (owned and e in owned):
                    continue
                frag = encode_removed(e)
                parts.append(frag)
                tokens -= len(frag)
                entries.append((e, None))
                known[e] = None
                acc.pop(e, None)
                self.stats.removals += 1
        if cands:
            cands.sort(reverse=True)
            hz = cfg.tick_rate
            wire = self._wire
            stats = self.stats
            for _a, e, st in cands:
                if tokens <= 0:
                    skipped = True
                    break
                base = acked.get(e) if known.get(e) is not None else None
                key = (e, base[0] if base is not None else -1)
                frag = cache.get(key)  # type: ignore[assignment]
                if frag is None:
                    kind = st[1]
                    if base is None:
                        frag = encode_full(e, st, tick, hz, wire.get(kind, ()),
                                           self._defaults.get(kind, ()))
                    else:
                        frag = encode_delta(e, st, base, tick, hz, wire.get(kind, ()))
                    cache[key] = frag
                    stats.encoded += 1
                parts.append(frag)
                tokens -= len(frag)
                entries.append((e, st))
                known[e] = st
                del acc[e]
                last_sent[e] = tick
            stats.records += len(entries)
        v.clean = not skipped
        if not parts:
            quiet = tick - v.last_update_tick
            if (
                v.input_seq == v.sent_input_seq
                and (not cfg.keepalive or quiet < cfg.keepalive)
                # Records still unacknowledged: a header-only update makes the client ack,
                # which tells whether they were lost (and must be sent again).
                and (quiet < cfg.probe or not any(p.entries for p in v.inflight))
            ):
                return None
        v.seq += 1
        v.inflight.append(Packet(v.seq, tick, entries))
        return self._finish(v, tick, b"".join(parts), False)

    def _full(self, v: Viewer, tick: int, cache: dict[tuple[int, int], bytes]) -> bytes:
        cfg = self.config
        world = self.world
        hz = cfg.tick_rate
        wire = self._wire
        defaults = self._defaults
        parts = []
        known: dict[int, Version | None] = {}
        owned = self.owned.get(v.player, {})
        for group in (self.grid.visible(v.key), self.globals, owned):
            for e in group:
                st = world[e]
                key = (e, -1)
                frag = cache.get(key)
                if frag is None:
                    kind = st[1]
                    frag = encode_full(e, st, tick, hz, wire.get(kind, ()),
                                       defaults.get(kind, ()))
                    cache[key] = frag
                    self.stats.encoded += 1
                parts.append(frag)
                known[e] = st
        v.known = known
        v.acked = dict(known)  # type: ignore[arg-type]  # the epoch's optimistic base
        v.acc.clear()
        v.last_sent = dict.fromkeys(known, tick)
        v.inflight.clear()
        v.seq += 1
        v.epoch = v.seq
        v.inflight.append(Packet(v.seq, tick, []))
        v.clean = True
        v.next_full = tick + cfg.full_interval if cfg.full_interval else 0
        self.stats.full_snapshots += 1
        self.stats.records += len(parts)
        return self._finish(v, tick, b"".join(parts), True)

    def _finish(self, v: Viewer, tick: int, records: bytes, full: bool) -> bytes:
        payload = encode_update(v.seq, tick, v.input_seq, full, records, v.epoch)
        v.sent_input_seq = v.input_seq
        v.last_update_tick = tick
        self.stats.updates += 1
        self.stats.bytes += len(payload)
        return payload

    # ------------------------------------------------------------------ acks

    def ack(self, key: Hashable, seq: int, received: int = 0, resync: bool = False) -> None:
        """The client got update ``seq``; bit i of ``received`` = it got ``seq - 1 - i``.

        Updates older than ``seq`` that the mask does not report are lost:
        their entities become pending again.  ``resync``: the client lost its
        state (or could not apply an update) and needs a full snapshot.
        """
        v = self.viewers.get(key)
        if v is None:
            return
        if resync:
            self.request_full(key)
            return
        if seq < v.epoch or seq > v.seq:
            return  # from before the current epoch, or never sent: ignore
        v.last_ack_tick = self.tick
        inflight = v.inflight
        acked = v.acked
        known = v.known
        while inflight and inflight[0].seq <= seq:
            pkt = inflight.popleft()
            gap = seq - pkt.seq
            if gap == 0 or (gap <= ACK_WINDOW and (received >> (gap - 1)) & 1):
                for e, st in pkt.entries:
                    if st is None:
                        acked.pop(e, None)
                        if e in known and known[e] is None:
                            del known[e]
                    else:
                        old = acked.get(e)
                        if old is None or old[0] < st[0]:
                            acked[e] = st
            else:
                self.stats.lost_packets += 1
                v.clean = False
                for e, st in pkt.entries:
                    if e in known and known[e] is st:
                        base = acked.get(e)
                        if base is not None:
                            known[e] = base
                        else:
                            del known[e]


def _quantize_fields(fields: Version, steps: tuple[float | None, ...]) -> Version:
    return tuple(
        v if step is None else math.floor(v / step + 0.5)
        for v, step in zip(fields, steps, strict=False)
    )

