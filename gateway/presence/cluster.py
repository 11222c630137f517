"""This instance's part in the cluster's presence bookkeeping.

Every ``heartbeat`` seconds: refresh the liveness key (``pi:<instance>``),
read the registry, publish this instance's population (``ppop:<instance>``),
sum the live instances' populations into the global figures, and notice
instances whose liveness key expired.  The first survivor to notice one
claims its clean-up, waits the grace period (players reconnecting elsewhere
stay online) and has each of its players settled like a local departure,
with the dead instance's last heartbeat as their last seen.  An instance that
finds itself missing from the registry was taken for dead during a stall: it
claims its players again.

The host (plugins/presence.py) provides what needs the rest of the plugin:
the core's population, the players present here, and ``settle`` /
``reassert`` (serialised per player there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.presence.store import PresenceStore

__all__ = ["OTHER_ZONE", "TOTAL", "Cluster", "PresenceMetrics"]

log = Logger()

TOTAL = "*"  # population hash field of the instance total
OTHER_ZONE = "_other"  # Prometheus label for zones beyond max_zone_labels
#: Players settled at once after an instance died.
CLEANUP_CONCURRENCY = 20


class PresenceMetrics:
    """The presence gauges and counters, in the gateway's own registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.players = Gauge("rtgateway_presence_players",
                             "Players online (instance: held here; global: all live instances)",
                             ["scope"], registry=registry)
        self.zone_players = Gauge("rtgateway_presence_zone_players", "Players online per zone",
                                  ["scope", "zone"], registry=registry)
        self.instances = Gauge("rtgateway_presence_instances", "Live gateway instances",
                               registry=registry)
        self.subjects = Gauge("rtgateway_presence_watched_players",
                              "Players whose presence this instance follows", registry=registry)
        self.transitions = Counter("rtgateway_presence_transitions",
                                   "Announced presence transitions", ["kind"], registry=registry)
        self.updates = Counter("rtgateway_presence_updates_sent",
                               "Presence views queued to connections", registry=registry)
        self.overflow = Counter("rtgateway_presence_watch_overflow",
                                "Watches refused by max_watched", registry=registry)
        self.recovered = Counter("rtgateway_presence_recovered",
                                 "Players released after their instance died", registry=registry)


class Host(Protocol):
    def population_counts(self) -> tuple[int, dict[str, int]]: ...

    def present_players(self) -> list[str]: ...

    def settle(self, player_id: str, last_seen: float) -> defer.Deferred[Any]: ...

    def reassert(self) -> None: ...


class Cluster:
    def __init__(self, store: PresenceStore, instance_id: str, clock: IReactorTime,
                 metrics: PresenceMetrics, host: Host, *, heartbeat: float, grace: float,
                 last_seen: float, max_zone_labels: int,
                 now: Callable[[], float] | None = None) -> None:
        self.store = store
        self.instance_id = instance_id
        self.clock = clock
        self.metrics = metrics
        self.host = host
        self.heartbeat_seconds = heartbeat
        self.grace = grace
        self.last_seen = last_seen
        self.max_zone_labels = max_zone_labels
        self.now = now or clock.seconds
        self.registered = False  # a heartbeat went through
        self.halted = False
        self.global_population: dict[str, int] = {}
        self._loop: task.LoopingCall | None = None
        self._cleanups: dict[str, IDelayedCall] = {}
        self._labels: dict[str, set[str]] = {"instance": set(), "global": set()}
        self._last_zones: set[str] = set()
        self._refresh_cursor = 0
        self._running: defer.Deferred[None] | None = None
        self._waiters: list[defer.Deferred[None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.halted:
            return
        self._loop = task.LoopingCall(self._beat)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat_seconds, now=True)

    def halt(self) -> None:
        """Stop at once, without a word to anyone (a crash, as the cluster sees it)."""
        self.halted = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in self._cleanups.values():
            if call.active():
                call.cancel()
        self._cleanups.clear()

    def retire(self) -> defer.Deferred[None]:
        """Clean shutdown: not alive from now on; survivors release our players after the grace."""
        self.halt()
        d = self.store.retire(self.instance_id)
        d.addErrback(lambda f: log.warn("presence retire failed: {e}", e=f.getErrorMessage()))
        return d.addCallback(lambda _: None)

    # ------------------------------------------------------------------ heartbeat

    def _beat(self) -> defer.Deferred[None]:
        d = self.heartbeat()
        d.addErrback(lambda f: log.warn("presence heartbeat failed: {e}", e=f.getErrorMessage()))
        return d.addCallback(lambda _: None)

    def heartbeat(self) -> defer.Deferred[None]:
        """One beat; a call while one is running waits for that one (single flight)."""
        if self._running is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            return waiter
        d = self._running = self._heartbeat()

        def done(result: Any) -> Any:
            self._running = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
            return result

        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def _heartbeat(self) -> Generator[defer.Deferred[Any], Any, None]:
        store = self.store
        if not store.backend.ready or self.halted:
            return
        me = self.instance_id
        now = self.now()
        total, zones = self.host.population_counts()
        population = {TOTAL: total, **zones}
        stale = self._last_zones - set(population)
        self._last_zones = set(population)
        yield store.live(me, now)
        instances = yield store.instances()  # before our own entry: were we forgotten?
        yield store.beat(me, now, population, stale)
        if self.registered and me not in instances:
            log.warn("presence: this instance was taken for dead; claiming its players again")
            self.host.reassert()
        self.registered = True
        others = sorted(i for i in instances if i != me)
        alive = yield defer.gatherResults([store.alive(i) for i in others], consumeErrors=True)
        live = [me] + [i for i, ok in zip(others, alive, strict=True) if ok]
        for instance, ok in zip(others, alive, strict=True):
            if not ok:
                self._dead(instance, instances[instance])
        pops = yield defer.gatherResults([store.population(i) for i in live if i != me],
                                         consumeErrors=True)
        merged: dict[str, int] = dict(population)
        for pop in pops:
            for zone, count in pop.items():
                merged[zone] = merged.get(zone, 0) + count
        self.global_population = merged
        self.metrics.instances.set(len(live))
        self._export(population, merged)
        self._refresh_some()

    def _export(self, local: dict[str, int], merged: dict[str, int]) -> None:
        m = self.metrics
        m.players.labels("instance").set(local.get(TOTAL, 0))
        m.players.labels("global").set(merged.get(TOTAL, 0))
        for scope, counts in (("instance", local), ("global", merged)):
            labels = self._labels[scope]
            shown: dict[str, int] = {}
            for zone, count in counts.items():
                if zone == TOTAL:
                    continue
                fits = zone in labels or len(labels) < self.max_zone_labels
                label = zone if fits else OTHER_ZONE
                labels.add(label)
                shown[label] = shown.get(label, 0) + count
            for label in tuple(labels):
                if label in shown:
                    m.zone_players.labels(scope, label).set(shown[label])
                else:
                    labels.discard(label)
                    try:
                        m.zone_players.remove(scope, label)
                    except KeyError:
                        pass

    def _refresh_some(self) -> None:
        """Spread TTL refreshes of long-online players' keys over a quarter of the retention."""
        players = sorted(self.host.present_players())
        if not players:
            return
        per_beat = math.ceil(len(players) * self.heartbeat_seconds / (self.last_seen / 4))
        for _ in range(min(per_beat, len(players))):
            self._refresh_cursor = (self._refresh_cursor + 1) % len(players)
            d = self.store.refresh(players[self._refresh_cursor])
            d.addErrback(_warn, "refresh")

    # ------------------------------------------------------------------ dead instances

    def _dead(self, instance: str, last_beat: float) -> None:
        """A registered instance lost its liveness key: one survivor releases its players."""
        if instance in self._cleanups or self.halted:
            return
        d = self.store.claim_cleanup(instance, self.instance_id, self.grace + 60.0)

        def claimed(ok: bool) -> None:
            if not ok or self.halted or instance in self._cleanups:
                return
            log.info("presence: instance {instance} is gone; releasing its players in {grace}s",
                     instance=instance, grace=self.grace)
            self._cleanups[instance] = self.clock.callLater(
                self.grace, self._cleanup, instance, last_beat)

        d.addCallback(claimed)
        d.addErrback(_warn, "dead instance claim")

    def _cleanup(self, instance: str, last_beat: float) -> None:
        self._cleanups.pop(instance, None)
        self.release_instance(instance, last_beat).addErrback(_warn, "dead instance clean-up")

    @defer.inlineCallbacks
    def release_instance(self, instance: str, last_beat: float
                         ) -> Generator[defer.Deferred[Any], Any, int]:
        store = self.store
        alive = yield store.alive(instance)
        if alive:
            return 0  # it came back
        players = yield store.held_by(instance)
        semaphore = defer.DeferredSemaphore(CLEANUP_CONCURRENCY)
        last_seen = last_beat or self.now()

        def release(player_id: str) -> defer.Deferred[Any]:
            d = store.drop_holder(player_id, instance)
            d.addCallback(lambda _: self.host.settle(player_id, last_seen))
            return d

        yield defer.gatherResults([semaphore.run(release, p) for p in players],
                                  consumeErrors=True)
        yield store.forget_instance(instance)
        self.metrics.recovered.inc(len(players))
        log.info("presence: released {count} players of dead instance {instance}",
                 count=len(players), instance=instance)
        return len(players)


def _warn(failure: Failure, what: str) -> None:
    log.warn("presence {what} failed: {error}", what=what, error=failure.getErrorMessage())
