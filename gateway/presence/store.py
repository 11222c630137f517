"""Presence data in the backend: key layout, retention, cluster bookkeeping, export and erase.

Everything here is written against the Backend contract
(gateway/backend/base.py), so the memory and Redis backends behave alike.
Keys (the backend adds the deployment prefix); ``<p>`` a player id,
``<i>`` an instance id.  Each key type has its own prefix and the id is the
whole rest of the name, so ids containing ``:`` cannot collide::

    pr:<p>      hash   the player's presence (online, since, last seen, zone,
                       region, status, activity, visibility, invisible, groups)
                       TTL last_seen_seconds, refreshed on every write
    prv:<p>     int    version counter (orders updates between instances)
    prc:<p>     hash   instances holding the player: field <i>, value 1
    prl:<p>     string transition lock (a few seconds)
    prs:<p>     hash   privacy settings, durable copy (settings_seconds)
    ph:<p>      list   presence history, oldest first (history_seconds, history_max)
    psub:<p>    hash   explicit subscriptions of <p> (field = subject)
    psubr:<p>   hash   who subscribes to <p> (field = viewer)
    pi:<i>      string instance liveness (instance_ttl_seconds, refreshed each beat)
    pinst       hash   known instances: field <i>, value = last beat (unix seconds)
    pin:<i>     hash   players the instance holds (its crash clean-up list)
    ppop:<i>    hash   the instance's population: field zone ("" = total)
    pclean:<i>  string clean-up claim for a dead instance (one survivor does it)

Relations (friends, blocks, groups) belong to the relationship provider
(gateway/presence/relations.py).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet import defer

from gateway.backend.base import Backend
from gateway.presence.core import Presence, audience_names, expired_count
from protocol import presence_pb2

__all__ = [
    "PresenceStore",
    "Retention",
    "record_from_hash",
    "record_from_proto",
    "record_to_proto",
    "with_settings",
]

#: Entries read per history age-trim (bounded work per offline transition).
TRIM_BATCH = 64
#: A version counter below this was just created (see PresenceStore.next_version).
FRESH_COUNTER = 10**11


@dataclass(frozen=True)
class Retention:
    """How long presence data lives (seconds), enforced by TTLs and trims."""

    last_seen: float = 30 * 86400.0
    history: float = 90 * 86400.0
    history_max: int = 1000
    settings: float = 365 * 86400.0
    subscriptions: float = 30 * 86400.0
    instance_ttl: float = 15.0
    registry: float = 7 * 86400.0
    lock: float = 5.0


# ---------------------------------------------------------------------- encoding


def _f(value: float) -> bytes:
    return repr(float(value)).encode()


def _num(table: Mapping[str, bytes], key: str) -> float:
    try:
        return float(table.get(key, b"0") or b"0")
    except ValueError:
        return 0.0


def _text(table: Mapping[str, bytes], key: str) -> str:
    return table.get(key, b"").decode("utf-8", "replace")


def _ids(table: Mapping[str, bytes], key: str) -> frozenset[str]:
    raw = table.get(key)
    if not raw:
        return frozenset()
    try:
        data = json.loads(raw)
    except ValueError:
        return frozenset()
    return frozenset(str(x) for x in data) if isinstance(data, list) else frozenset()


def ids_field(ids: Iterable[str]) -> bytes:
    return json.dumps(sorted(ids)).encode()


def state_fields(record: Presence) -> dict[str, bytes]:
    """Every field of ``pr:<p>`` for ``record``."""
    return {
        "on": b"1" if record.online else b"0",
        "since": _f(record.since),
        "ls": _f(record.last_seen),
        "z": record.zone.encode(),
        "r": record.region.encode(),
        "st": record.status.encode(),
        "ac": record.activity.encode(),
        **settings_fields(record),
        "invs": _f(record.invisible_since),
        "gu": ids_field(record.guilds),
        "pa": ids_field(record.parties),
    }


def settings_fields(record: Presence) -> dict[str, bytes]:
    return {
        "vo": str(record.vis_online).encode(),
        "vl": str(record.vis_location).encode(),
        "vs": str(record.vis_status).encode(),
        "inv": b"1" if record.invisible else b"0",
    }


def record_from_hash(player_id: str, table: Mapping[str, bytes], defaults: Presence,
                     version: int = 0) -> Presence:
    """A stored hash as a record; missing settings come from ``defaults``."""

    def vis(key: str, default: int) -> int:
        try:
            return int(table[key]) if key in table else default
        except ValueError:
            return default

    return Presence(
        player_id=player_id,
        version=version,
        online=table.get("on") == b"1",
        since=_num(table, "since"),
        last_seen=_num(table, "ls"),
        zone=_text(table, "z"),
        region=_text(table, "r"),
        status=_text(table, "st"),
        activity=_text(table, "ac"),
        vis_online=vis("vo", defaults.vis_online),
        vis_location=vis("vl", defaults.vis_location),
        vis_status=vis("vs", defaults.vis_status),
        invisible=(table.get("inv") == b"1") if "inv" in table else defaults.invisible,
        invisible_since=_num(table, "invs"),
        guilds=_ids(table, "gu"),
        parties=_ids(table, "pa"),
    )


def with_settings(record: Presence, settings: Mapping[str, bytes]) -> Presence:
    """``record`` with the durable settings copy (``prs:<p>``) applied, when there is one."""
    if not settings:
        return record
    table = {**settings_fields(record), **settings}
    merged = record_from_hash(record.player_id, table, record)
    return record.changed(vis_online=merged.vis_online, vis_location=merged.vis_location,
                          vis_status=merged.vis_status, invisible=merged.invisible)


def record_to_proto(record: Presence) -> presence_pb2.PresenceRecord:
    return presence_pb2.PresenceRecord(
        player_id=record.player_id,
        version=record.version,
        online=record.online,
        since=record.since,
        last_seen=record.last_seen,
        zone=record.zone,
        region=record.region,
        status=record.status,
        activity=record.activity,
        vis_online=record.vis_online,
        vis_location=record.vis_location,
        vis_status=record.vis_status,
        invisible=record.invisible,
        invisible_since=record.invisible_since,
        guilds=sorted(record.guilds),
        parties=sorted(record.parties),
    )


def record_from_proto(msg: presence_pb2.PresenceRecord) -> Presence:
    return Presence(
        player_id=msg.player_id,
        version=msg.version,
        online=msg.online,
        since=msg.since,
        last_seen=msg.last_seen,
        zone=msg.zone,
        region=msg.region,
        status=msg.status,
        activity=msg.activity,
        vis_online=msg.vis_online,
        vis_location=msg.vis_location,
        vis_status=msg.vis_status,
        invisible=msg.invisible,
        invisible_since=msg.invisible_since,
        guilds=frozenset(msg.guilds),
        parties=frozenset(msg.parties),
    )


# ---------------------------------------------------------------------- the store


class PresenceStore:
    def __init__(self, backend: Backend, retention: Retention, defaults: Presence) -> None:
        self.backend = backend
        self.retention = retention
        self.defaults = defaults  # default visibility for players without settings

    # ------------------------------------------------------------------ state

    @defer.inlineCallbacks
    def load(self, player_id: str) -> Generator[defer.Deferred[Any], Any, Presence]:
        """The stored state, with a version no newer than its content.

        The version is read first: writers bump it after writing their fields
        (:meth:`next_version`), so every write it counts is in the hash read
        next, and any later write arrives on the bus with a higher version.
        """
        raw = yield self.backend.get("prv:" + player_id)
        table = yield self.backend.hgetall("pr:" + player_id)
        try:
            version = int(raw or b"0")
        except ValueError:
            version = 0
        return record_from_hash(player_id, table, self.defaults, version)

    def read(self, player_id: str, version: int) -> defer.Deferred[Presence]:
        """The stored state as of ``version`` (the caller just took that version)."""
        return self.backend.hgetall("pr:" + player_id).addCallback(
            lambda table: record_from_hash(player_id, table, self.defaults, version))

    def load_settings(self, player_id: str) -> defer.Deferred[dict[str, bytes]]:
        return self.backend.hgetall("prs:" + player_id)

    def write(self, player_id: str, fields: Mapping[str, bytes]) -> defer.Deferred[None]:
        return self.backend.hset("pr:" + player_id, fields, self.retention.last_seen)

    def save_settings(self, player_id: str, fields: Mapping[str, bytes]) -> defer.Deferred[None]:
        return self.backend.hset("prs:" + player_id, fields, self.retention.settings)

    @defer.inlineCallbacks
    def next_version(self, player_id: str, now: float
                     ) -> Generator[defer.Deferred[Any], Any, int]:
        """The next version of the player's state (call after writing the fields).

        A new counter starts from the current time in milliseconds, so that
        versions keep growing even after the counter expired or was erased
        and instances still cache an old state with a high version.
        """
        ttl = self.retention.settings
        version = yield self.backend.incr("prv:" + player_id, 1, ttl)
        if version < FRESH_COUNTER:
            version = yield self.backend.incr("prv:" + player_id, int(now * 1000), ttl)
        return int(version)

    # ------------------------------------------------------------------ holders and locks

    def hold(self, player_id: str, instance: str) -> defer.Deferred[Any]:
        return defer.gatherResults([
            self.backend.hset("prc:" + player_id, {instance: b"1"}, self.retention.last_seen),
            self.backend.hset("pin:" + instance, {player_id: b"1"}, self.retention.registry),
        ], consumeErrors=True)

    def release(self, player_id: str, instance: str) -> defer.Deferred[Any]:
        return defer.gatherResults([
            self.backend.hdel("prc:" + player_id, instance),
            self.backend.hdel("pin:" + instance, player_id),
        ], consumeErrors=True)

    def holders(self, player_id: str) -> defer.Deferred[dict[str, bytes]]:
        return self.backend.hgetall("prc:" + player_id)

    def drop_holder(self, player_id: str, instance: str) -> defer.Deferred[int]:
        return self.backend.hdel("prc:" + player_id, instance)

    def refresh(self, player_id: str) -> defer.Deferred[Any]:
        """Keep a long-online player's keys alive (called rarely, spread over time)."""
        return defer.gatherResults([
            self.backend.expire("pr:" + player_id, self.retention.last_seen),
            self.backend.expire("prc:" + player_id, self.retention.last_seen),
        ], consumeErrors=True)

    def try_lock(self, player_id: str) -> defer.Deferred[str | None]:
        """A token when this caller now holds the player's transition lock, else None."""
        token = secrets.token_hex(8)
        d = self.backend.set("prl:" + player_id, token.encode(), self.retention.lock,
                             only_if_absent=True)
        return d.addCallback(lambda ok: token if ok else None)

    def unlock(self, player_id: str) -> defer.Deferred[int]:
        return self.backend.delete("prl:" + player_id)

    # ------------------------------------------------------------------ history

    def append_history(self, player_id: str, entry: presence_pb2.PresenceHistoryEntry
                       ) -> defer.Deferred[int]:
        return self.backend.rpush("ph:" + player_id, [entry.SerializeToString()],
                                  max_len=self.retention.history_max,
                                  ttl=self.retention.history)

    @defer.inlineCallbacks
    def history(self, player_id: str, now: float
                ) -> Generator[defer.Deferred[Any], Any, list[presence_pb2.PresenceHistoryEntry]]:
        """Entries within the retention window, oldest first."""
        raw = yield self.backend.lrange("ph:" + player_id)
        cutoff = now - self.retention.history
        out = []
        for item in raw:
            entry = presence_pb2.PresenceHistoryEntry()
            try:
                entry.ParseFromString(item)
            except DecodeError:
                continue
            if entry.at >= cutoff:
                out.append(entry)
        return out

    @defer.inlineCallbacks
    def trim_history(self, player_id: str, now: float
                     ) -> Generator[defer.Deferred[Any], Any, int]:
        """Drop entries older than the retention from the head (at most TRIM_BATCH)."""
        raw = yield self.backend.lrange("ph:" + player_id, 0, TRIM_BATCH - 1)
        times = []
        for item in raw:
            entry = presence_pb2.PresenceHistoryEntry()
            try:
                entry.ParseFromString(item)
            except DecodeError:
                times.append(0.0)  # unreadable: trim it too
                continue
            times.append(entry.at)
        count = expired_count(times, now - self.retention.history)
        if count:
            yield self.backend.ltrim_left("ph:" + player_id, count)
        return count

    # ------------------------------------------------------------------ subscriptions

    def subscriptions(self, player_id: str) -> defer.Deferred[set[str]]:
        return self.backend.hgetall("psub:" + player_id).addCallback(set)

    def subscribe(self, viewer: str, subjects: Iterable[str]) -> defer.Deferred[Any]:
        subjects = list(subjects)
        ttl = self.retention.subscriptions
        ds = [self.backend.hset("psub:" + viewer, dict.fromkeys(subjects, b"1"), ttl)]
        ds += [self.backend.hset("psubr:" + s, {viewer: b"1"}, ttl) for s in subjects]
        return defer.gatherResults(ds, consumeErrors=True)

    def unsubscribe(self, viewer: str, subjects: Iterable[str]) -> defer.Deferred[Any]:
        subjects = list(subjects)
        ds = [self.backend.hdel("psub:" + viewer, *subjects)]
        ds += [self.backend.hdel("psubr:" + s, viewer) for s in subjects]
        return defer.gatherResults(ds, consumeErrors=True)

    def touch(self, player_id: str) -> defer.Deferred[Any]:
        return defer.gatherResults([
            self.backend.expire("psub:" + player_id, self.retention.subscriptions),
            self.backend.expire("prs:" + player_id, self.retention.settings),
        ], consumeErrors=True)

    # ------------------------------------------------------------------ instances

    def beat(self, instance: str, now: float, population: Mapping[str, int],
             stale_zones: Iterable[str]) -> defer.Deferred[Any]:
        """Registry entry and population of this instance (after :meth:`live`)."""
        r = self.retention
        pop = {zone: str(count).encode() for zone, count in population.items()}
        ds: list[defer.Deferred[Any]] = [
            self.backend.hset("pinst", {instance: _f(now)}, r.registry),
            self.backend.expire("pin:" + instance, r.registry),
            self.backend.hset("ppop:" + instance, pop, r.instance_ttl),
        ]
        stale = list(stale_zones)
        if stale:
            ds.append(self.backend.hdel("ppop:" + instance, *stale))
        return defer.gatherResults(ds, consumeErrors=True)

    def live(self, instance: str, now: float) -> defer.Deferred[bool]:
        """Refresh the instance's liveness key (first: the registry entry comes after it)."""
        return self.backend.set("pi:" + instance, _f(now), self.retention.instance_ttl)

    def instances(self) -> defer.Deferred[dict[str, float]]:
        """Known instances and their last beat (unix seconds)."""
        return self.backend.hgetall("pinst").addCallback(
            lambda table: {i: _num(table, i) for i in table})

    def alive(self, instance: str) -> defer.Deferred[bool]:
        return self.backend.get("pi:" + instance).addCallback(lambda v: v is not None)

    def population(self, instance: str) -> defer.Deferred[dict[str, int]]:
        def parse(table: dict[str, bytes]) -> dict[str, int]:
            out = {}
            for zone, raw in table.items():
                try:
                    out[zone] = int(raw)
                except ValueError:
                    continue
            return out

        return self.backend.hgetall("ppop:" + instance).addCallback(parse)

    def claim_cleanup(self, instance: str, me: str, ttl: float) -> defer.Deferred[bool]:
        return self.backend.set("pclean:" + instance, me.encode(), ttl, only_if_absent=True)

    def held_by(self, instance: str) -> defer.Deferred[list[str]]:
        return self.backend.hgetall("pin:" + instance).addCallback(lambda t: sorted(t))

    def forget_instance(self, instance: str) -> defer.Deferred[Any]:
        return defer.gatherResults([
            self.backend.delete("pin:" + instance, "ppop:" + instance, "pi:" + instance),
            self.backend.hdel("pinst", instance),
        ], consumeErrors=True)

    def retire(self, instance: str) -> defer.Deferred[Any]:
        """A clean shutdown: stop counting as alive now (survivors clean up after the grace)."""
        return defer.gatherResults([
            self.backend.delete("pi:" + instance, "ppop:" + instance),
        ], consumeErrors=True)

    # ------------------------------------------------------------------ GDPR

    @defer.inlineCallbacks
    def export(self, player_id: str, now: float
               ) -> Generator[defer.Deferred[Any], Any, dict[str, Any]]:
        b = self.backend
        state, settings, holders, subs, subscribers, version, history = yield defer.gatherResults([
            b.hgetall("pr:" + player_id), b.hgetall("prs:" + player_id),
            b.hgetall("prc:" + player_id), b.hgetall("psub:" + player_id),
            b.hgetall("psubr:" + player_id), b.get("prv:" + player_id),
            self.history(player_id, now),
        ], consumeErrors=True)
        record = record_from_hash(player_id, state, self.defaults) if state else None
        stored_settings = (record_from_hash(player_id, settings, self.defaults)
                           if settings else None)
        return {
            "player_id": player_id,
            "state": _record_json(record) if record is not None else None,
            "last_seen": record.last_seen if record is not None and record.last_seen else None,
            "settings": _settings_json(stored_settings) if stored_settings else None,
            "version": int(version) if version else 0,
            "connected_instances": sorted(holders),
            "subscriptions": sorted(subs),
            "subscribers": sorted(subscribers),
            "history": [
                {"at": e.at, "kind": e.kind, "instance": e.instance, "zone": e.zone,
                 "region": e.region}
                for e in history
            ],
        }

    @defer.inlineCallbacks
    def erase(self, player_id: str) -> Generator[defer.Deferred[Any], Any, list[str]]:
        """Delete the player's presence data and their mentions in others' subscription lists.

        Returns the players whose subscription lists mentioned them.
        """
        b = self.backend
        subs, subscribers = yield defer.gatherResults([
            b.hgetall("psub:" + player_id), b.hgetall("psubr:" + player_id),
        ], consumeErrors=True)
        ds = [b.hdel("psubr:" + s, player_id) for s in subs]
        ds += [b.hdel("psub:" + v, player_id) for v in subscribers]
        ds.append(b.delete(*(prefix + player_id for prefix in (
            "pr:", "prv:", "prc:", "prl:", "prs:", "ph:", "psub:", "psubr:"))))
        yield defer.gatherResults(ds, consumeErrors=True)
        return sorted(subscribers)


def _record_json(record: Presence) -> dict[str, Any]:
    return {
        "online": record.online,
        "since": record.since or None,
        "last_seen": record.last_seen or None,
        "zone": record.zone,
        "region": record.region,
        "status": record.status,
        "activity": record.activity,
        "guilds": sorted(record.guilds),
        "parties": sorted(record.parties),
        **_settings_json(record),
    }


def _settings_json(record: Presence) -> dict[str, Any]:
    return {
        "visibility": {
            "online": audience_names(record.vis_online),
            "location": audience_names(record.vis_location),
            "status": audience_names(record.vis_status),
        },
        "invisible": record.invisible,
    }
