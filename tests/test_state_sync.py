"""The sync engine with the client's reconstruction: no desync, whatever the network does.

The server core (SyncEngine) and the client core (StateReplica) exchange bytes
through a simulated network that delays, drops and (like the gateway's keyed
queue) supersedes updates, drops acks, and reconnects clients with their
state wiped.  Every client's state must always be made of versions the server
really produced, and must equal the server's view once the network is quiet.
"""

from __future__ import annotations

import math
import random
from collections import deque

import pytest

from gateway.client.prediction import ReplicaSchema, StateReplica
from gateway.state.codec import decode_records
from gateway.state.provider import GLOBAL, OWNER, EntityState, FieldSpec, Schema
from gateway.state.sync import SyncConfig, SyncEngine
from protocol import state_pb2

SCHEMA = Schema({
    1: (FieldSpec("health"), FieldSpec("name", "bytes"), FieldSpec("speed", "float", 0.01)),
    2: (FieldSpec("weather"),),
})
HZ = 60


def replica_for(config=None):
    config = config or SyncConfig()
    return StateReplica(ReplicaSchema.from_schema(SCHEMA, tick_rate=config.tick_rate,
                                                  position_scale=config.position_scale))


class World:
    """A random little game: movers, turners, teleporters, births, deaths, effects."""

    def __init__(self, rng, n=60, zone=150.0):
        self.rng = rng
        self.zone = zone
        self.next_id = n + 1
        self.ents = {}
        for e in range(1, n + 1):
            self.spawn(e)
        self.frozen = False

    def spawn(self, e):
        r = self.rng
        self.ents[e] = {
            "x": r.uniform(0, self.zone), "y": r.uniform(0, self.zone), "z": 0.0,
            "vx": r.uniform(-4, 4), "vy": r.uniform(-4, 4), "yaw": r.uniform(-3, 3),
            "health": 100, "name": b"e%d" % e, "speed": 1.25, "expires": 0,
        }

    def step(self, tick):
        r = self.rng
        if self.frozen:
            return
        for _e, s in list(self.ents.items()):
            if r.random() < 0.02:
                s["vx"], s["vy"] = r.uniform(-4, 4), r.uniform(-4, 4)
            if r.random() < 0.03:
                s["yaw"] += r.uniform(-1, 1)
            if r.random() < 0.005:
                s["x"], s["y"] = r.uniform(0, self.zone), r.uniform(0, self.zone)  # teleport
            if r.random() < 0.01:
                s["health"] -= r.randint(1, 30)
            if r.random() < 0.002:
                s["name"] = b"renamed%d" % r.randint(0, 99)
            if r.random() < 0.01:
                s["speed"] = r.uniform(0, 3)
            s["x"] = (s["x"] + s["vx"] / HZ) % self.zone
            s["y"] = (s["y"] + s["vy"] / HZ) % self.zone
        if r.random() < 0.02 and len(self.ents) > 20:
            del self.ents[r.choice(sorted(self.ents))]
        if r.random() < 0.02:
            self.spawn(self.next_id)
            if r.random() < 0.5:
                self.ents[self.next_id]["expires"] = tick + r.randint(5, 120)  # an effect
            self.next_id += 1

    def stop(self):
        for s in self.ents.values():
            s["vx"] = s["vy"] = 0.0
        self.frozen = True

    def states(self, tick, players):
        out = [EntityState(0, 2, scope=GLOBAL, fields=(tick // 300,))]
        for p in players:  # each player's private session entity
            out.append(EntityState(10000 + p, 2, scope=OWNER, owner=str(p),
                                   fields=(tick // 200 + p,)))
        for e, s in self.ents.items():
            out.append(EntityState(
                e, 1, s["x"], s["y"], s["z"],
                (0.0, 0.0, math.sin(s["yaw"] / 2), math.cos(s["yaw"] / 2)),
                s["vx"], s["vy"], 0.0, (s["health"], s["name"], s["speed"]),
                expires=s["expires"]))
        return out


class Link:
    """One client over a lossy, delaying link to the engine."""

    def __init__(self, engine, key, player, entity, rng, config, budget=None):
        self.engine = engine
        self.key = key
        self.player = player
        self.entity = entity
        self.rng = rng
        self.config = config
        self.replica = replica_for(config)
        self.budget = budget
        self.down: deque = deque()  # (arrival tick, payload)
        self.up: deque = deque()  # (arrival tick, ack tuple)
        engine.add_viewer(key, player, entity, budget)

    def reconnect(self):
        """A new connection: server forgets the viewer, the client wipes its state."""
        self.engine.remove_viewer(self.key)
        self.engine.add_viewer(self.key, self.player, self.entity, self.budget)
        self.replica = replica_for(self.config)
        self.down.clear()
        self.up.clear()

    def send(self, tick, payload, *, loss, latency):
        if self.rng.random() < loss:
            return
        arrival = tick + self.rng.randint(0, latency)
        if self.down and self.down[-1][0] > arrival:
            arrival = self.down[-1][0]  # in order, like TCP
        self.down.append((arrival, payload))

    def deliver(self, tick, *, ack_loss, latency):
        due = []
        while self.down and self.down[0][0] <= tick:
            due.append(self.down.popleft()[1])
        if len(due) > 1 and self.rng.random() < 0.5:
            due = due[-1:]  # the gateway's keyed queue: a newer update supersedes older ones
        for payload in due:
            self.replica.apply_message(state_pb2.StateUpdate.FromString(payload))
        if self.replica.ack_pending and self.rng.random() >= ack_loss:
            self.up.append((tick + self.rng.randint(0, latency), self.replica.ack()))
        while self.up and self.up[0][0] <= tick:
            self.engine.ack(self.key, *self.up.popleft()[1])


def expected(engine, key):
    return {e: engine.world[e] for e in engine.visible(key)}


def run_chaos(seed, ticks, *, loss=0.15, ack_loss=0.3, latency=4, reconnect=0.002,
              quiet_every=500):
    rng = random.Random(seed)
    config = SyncConfig(cell_size=16, view_radius=40, near_radius=20, full_interval=900,
                        baseline_max_age=90, ring_depth=16)
    engine = SyncEngine(SCHEMA, config)
    world = World(rng)
    links = []
    for p in range(1, 13):
        budget = rng.choice([None, None, 3000, 8000])  # some players on tiny budgets
        links.append(Link(engine, p, str(p), p, rng, config, budget))
    versions: dict[tuple[int, int], tuple] = {}
    checked = 0
    tick = 0

    def one_tick(loss_now, ack_loss_now, latency_now, reconnects):
        nonlocal tick
        tick += 1
        world.step(tick)
        engine.update(tick, world.states(tick, [link.key for link in links]))
        for e, s in engine.world.items():
            versions[(e, s[0])] = s
        for viewer, payload, _full in engine.build(tick, 1 / HZ):
            link = links[viewer.key - 1]
            engine.charge(viewer.key, len(payload) + 20)
            link.send(tick, payload, loss=loss_now, latency=latency_now)
        for link in links:
            link.deliver(tick, ack_loss=ack_loss_now, latency=latency_now)
            if reconnects and rng.random() < reconnect:
                link.reconnect()
            # Invariant at every tick: the client holds only versions the server made.
            for e, s in link.replica.entities.items():
                assert versions.get((e, s[0])) == s, (tick, link.key, e)

    while tick < ticks:
        for _ in range(quiet_every):
            one_tick(loss, ack_loss, latency, True)
        # A quiet network and a still world: every client must converge to the server.
        world.stop()
        for _ in range(600):
            one_tick(0.0, 0.0, 0, False)
            if all(link.replica.entities == expected(engine, link.key) for link in links):
                break
        for link in links:
            assert link.replica.entities == expected(engine, link.key), (tick, link.key)
            checked += 1
        world.frozen = False
        for s in world.ents.values():
            s["vx"], s["vy"] = rng.uniform(-4, 4), rng.uniform(-4, 4)
    return engine, links, checked


@pytest.mark.parametrize("seed", [1, 2])
def test_no_desync_under_loss_delay_supersession_and_reconnects(seed):
    engine, _links, checked = run_chaos(seed, ticks=2000)
    assert checked == 12 * 4
    stats = engine.stats
    assert stats.lost_packets > 100  # the network really was hostile
    assert stats.full_snapshots > 12  # reconnects and periodic snapshots happened
    assert stats.removals > 0
    # Shared fragments: far fewer records encoded than placed in updates.
    assert stats.encoded < stats.records


def test_every_tick_equal_on_a_perfect_network():
    rng = random.Random(9)
    config = SyncConfig(cell_size=16, view_radius=40, bytes_per_second=1_000_000)
    engine = SyncEngine(SCHEMA, config)
    world = World(rng, n=40)
    links = [Link(engine, p, str(p), p, rng, config) for p in range(1, 6)]
    for tick in range(1, 400):
        world.step(tick)
        engine.update(tick, world.states(tick, [1, 2, 3, 4, 5]))
        for viewer, payload, _full in engine.build(tick, 1 / HZ):
            links[viewer.key - 1].replica.apply_message(state_pb2.StateUpdate.FromString(payload))
        for link in links:
            engine.ack(link.key, *link.replica.ack())
            assert link.replica.entities == expected(engine, link.key)


def make(config=None, n=10):
    config = config or SyncConfig(cell_size=250, view_radius=1000)
    engine = SyncEngine(SCHEMA, config)
    return engine, config


def states(n, tick, *, moving=True):
    return [EntityState(e, 1, e + (tick * 0.1 if moving else 0.0), 0.0, fields=(100, b"", 0.0))
            for e in range(1, n + 1)]


def feed(engine, replica, tick, st, key="p"):
    engine.update(tick, st)
    out = [(v, p, f) for v, p, f in engine.build(tick, 1 / 60) if v.key == key]
    for _v, payload, _f in out:
        replica.apply_message(state_pb2.StateUpdate.FromString(payload))
    return out


def test_first_update_is_full_then_deltas_and_idle_means_silence():
    engine, config = make(SyncConfig(cell_size=250, view_radius=1000, keepalive=30))
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    r = replica_for(config)
    [(_v, _p, full)] = feed(engine, r, 1, states(5, 1, moving=False))
    assert full and len(r.entities) == 5
    engine.ack("p", *r.ack())
    # Nothing changes: no update until the keepalive.
    sent = [feed(engine, r, t, states(5, 1, moving=False)) for t in range(2, 31)]
    assert sum(map(len, sent)) == 0
    [(_v, payload, full)] = feed(engine, r, 31, states(5, 1, moving=False))
    assert not full and len(payload) < 12  # header only


def test_a_resync_request_and_a_stalled_client_get_full_snapshots():
    engine, config = make(SyncConfig(cell_size=250, view_radius=1000, baseline_max_age=10))
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    r = replica_for(config)
    feed(engine, r, 1, states(3, 1))
    engine.ack("p", *r.ack())
    engine.ack("p", 0, 0, True)  # the client lost its state
    [(_v, _p, full)] = feed(engine, r, 2, states(3, 2))
    assert full and engine.stats.resyncs == 1
    # no acks at all for longer than baseline_max_age: a new full snapshot
    fulls = [f for t in range(3, 20) for _v, _p, f in feed(engine, r, t, states(3, t))]
    assert fulls.count(True) == 1


def test_a_lost_full_snapshot_makes_later_updates_ignored_until_the_next_one():
    engine, config = make(SyncConfig(cell_size=250, view_radius=1000, baseline_max_age=10))
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    r = replica_for(config)
    engine.update(1, states(3, 1))
    engine.build(1, 1 / 60)  # the full snapshot is lost
    for t in range(2, 8):
        feed(engine, r, t, states(3, t))
    assert not r.synced and r.ignored == 6 and not r.ack_pending
    for t in range(8, 20):
        feed(engine, r, t, states(3, t))
    assert r.synced and r.entities == expected(engine, "p")


def test_a_delta_the_client_cannot_apply_asks_for_a_full_snapshot():
    engine, config = make()
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    r = replica_for(config)
    feed(engine, r, 1, states(3, 1))
    engine.ack("p", *r.ack())
    r._history.clear()  # corrupt the client: it forgot its bases
    feed(engine, r, 2, states(3, 2))
    assert not r.synced
    seq, mask, resync = r.ack()
    assert resync
    engine.ack("p", seq, mask, resync)
    [(_v, _p, full)] = feed(engine, r, 3, states(3, 3))
    assert full and r.entities == expected(engine, "p")


def test_the_players_own_entity_goes_first_under_a_tight_budget():
    engine, config = make(SyncConfig(cell_size=250, view_radius=1000, bytes_per_second=300,
                                     burst_bytes=40))
    engine.add_viewer("p", entity=7)
    r = replica_for(config)
    feed(engine, r, 1, states(30, 1))
    engine.ack("p", *r.ack())
    for t in range(2, 40):
        engine.update(t, [EntityState(e, 1, e + t, 0.0, fields=(100, b"", 0.0))
                          for e in range(1, 31)])
        for v, payload, full in engine.build(t, 1 / 60):
            engine.charge("p", len(payload))
            if not full and v.inflight[-1].entries:
                assert v.inflight[-1].entries[0][0] == 7
            r.apply_message(state_pb2.StateUpdate.FromString(payload))
            engine.ack("p", *r.ack())


def test_leaving_the_view_and_destruction_remove_entities_and_fire_callbacks():
    engine, config = make(SyncConfig(cell_size=10, view_radius=15))
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    r = replica_for(config)
    entered, left = [], []
    r.on_enter.append(entered.append)
    r.on_leave.append(left.append)
    near = [EntityState(1, 1, 1.0, 1.0, fields=(1, b"", 0.0)),
            EntityState(2, 1, 5.0, 1.0, fields=(1, b"", 0.0))]
    feed(engine, r, 1, near)
    engine.ack("p", *r.ack())
    assert sorted(entered) == [1, 2]
    feed(engine, r, 2, [near[0], near[1]._replace(x=500.0)])  # 2 walks away
    engine.ack("p", *r.ack())
    feed(engine, r, 3, [])  # 1 is destroyed
    assert sorted(left) == [1, 2] and r.entities == {}


def test_a_lost_removal_is_sent_again():
    engine, config = make(SyncConfig(cell_size=10, view_radius=15))
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    r = replica_for(config)
    e = [EntityState(1, 1, 1.0, 1.0, fields=(1, b"", 0.0))]
    feed(engine, r, 1, e)
    engine.ack("p", *r.ack())
    engine.update(2, [])
    engine.build(2, 1 / 60)  # the removal is lost
    for t in range(3, 17):
        assert feed(engine, r, t, []) == []  # silence...
    feed(engine, r, 17, [])  # ...then a probe; its ack shows the removal was lost
    engine.ack("p", *r.ack())
    [(_v, _payload, _f)] = feed(engine, r, 18, [])
    assert r.entities == {}


def test_scopes_global_owner_and_ephemeral():
    engine, config = make(SyncConfig(cell_size=10, view_radius=15))
    for p in ("a", "b"):
        engine.add_viewer(p, p)
        engine.set_view_position(p, 1000, 1000)  # nothing spatial in view
    ra, rb = replica_for(config), replica_for(config)
    world = [
        EntityState(0, 2, scope=GLOBAL, fields=(3,)),
        EntityState(50, 2, scope=OWNER, owner="a", fields=(1,)),
        EntityState(51, 2, scope=OWNER, owner="b", fields=(2,)),
        EntityState(52, 1, 1000.0, 1000.0, fields=(1, b"", 0.0), expires=3),
    ]
    for t in (1, 2, 3):
        feed(engine, ra, t, world, "a")
        feed(engine, rb, t, [], "b") if False else None
        engine.ack("a", *ra.ack())
        if t == 2:
            assert set(ra.entities) == {0, 50, 52}
    assert set(ra.entities) == {0, 50}  # the effect expired at tick 3
    assert 51 not in ra.entities


def test_fragments_are_shared_between_players_with_the_same_base():
    engine, config = make(SyncConfig(cell_size=250, view_radius=1000))
    replicas = {}
    for p in range(20):
        engine.add_viewer(p)
        engine.set_view_position(p, 0, 0)
        replicas[p] = replica_for(config)
    for t in range(1, 30):
        engine.update(t, [EntityState(e, 1, e + t * 0.5, 0.0, fields=(100, b"", 0.0))
                          for e in range(1, 51)])
        for v, payload, _f in engine.build(t, 1 / 60):
            replicas[v.key].apply_message(state_pb2.StateUpdate.FromString(payload))
            engine.ack(v.key, *replicas[v.key].ack())
    s = engine.stats
    assert s.records >= 20 * s.encoded / 1.5  # each fragment serves ~20 players


def test_decode_records_of_a_real_update_lists_every_entity_once():
    engine, config = make()
    engine.add_viewer("p")
    engine.set_view_position("p", 0, 0)
    engine.update(1, states(8, 1))
    [(_v, payload, _f)] = engine.build(1, 1 / 60)
    msg = state_pb2.StateUpdate.FromString(payload)
    r = replica_for(config)
    recs = decode_records(msg.records, msg.tick, 60, lambda e, v: None,
                          r._wire_of, r._defaults_of)
    assert sorted(e for _op, e, _s in recs) == list(range(1, 9))
