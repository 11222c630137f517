"""Who is related to whom: the relationship provider behind presence.

Friends decide whose presence a player receives by default; guilds and
parties add group mates and the GUILD/PARTY audiences; blocks take a player
out of another's audience everywhere.  A game with its own friend service
implements :class:`IRelationshipProvider` (or subclasses
:class:`BackendRelations` and overrides what it owns) and hands it to the
presence plugin (``[plugin.presence] provider = "module:attribute"`` or
``PresencePlugin.use_provider``).  When its data changes outside the
gateway, it tells the plugin (``PresencePlugin.relation_changed``) so every
instance updates at once.

Friendship is mutual: ``b in friends(a)`` exactly when ``a in friends(b)``.
Presence relies on it: the viewer's instance decides "friends only"
audiences from the viewer's own friend list.

The default, :class:`BackendRelations`, keeps everything in the backend as
hashes, each relation stored from both sides so that an erase (GDPR) can
find and remove every mention of a player::

    pf:<player>    friends          field = friend id
    pb:<player>    blocks           field = blocked id
    pbb:<player>   blocked by       field = blocker id
    pg:<player>    groups           field = group id, value = b"guild" | b"party"
    pgm:<group>    group members    field = player id, value = kind

Every key carries the ``relations_seconds`` TTL, refreshed on each write and
when the player connects (:meth:`touch`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from gateway.backend.base import Backend

__all__ = ["BackendRelations", "IRelationshipProvider", "RelationEdit"]

GROUP_KINDS = ("guild", "party")


@dataclass(frozen=True)
class RelationEdit:
    """One relation of ``player_id`` that changed: what instances holding it must learn.

    ``kind``: "friend", "blocked_by" (``other`` blocks ``player_id``) or
    "group" (``other`` is the group id, ``group_kind`` its kind).
    """

    kind: str
    player_id: str
    other: str
    added: bool
    group_kind: str = ""


class IRelationshipProvider(Interface):
    """Friends, groups and blocks, as the presence plugin reads and changes them."""

    writable = Attribute("True when the change methods work (admin API, server calls)")

    def friends(player_id: str) -> defer.Deferred[set[str]]:
        """The player's friends (mutual)."""

    def groups(player_id: str) -> defer.Deferred[dict[str, str]]:
        """Group id -> "guild" or "party", for every group the player is in."""

    def group_members(group_id: str) -> defer.Deferred[set[str]]:
        """Every member of the group."""

    def blocks(player_id: str) -> defer.Deferred[set[str]]:
        """The players ``player_id`` blocks."""

    def blocked_by(player_id: str) -> defer.Deferred[set[str]]:
        """The players who block ``player_id``."""

    def add_friend(player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        """Make them friends; returns what changed (empty when nothing did)."""

    def remove_friend(player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        """End the friendship."""

    def block(player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        """``player_id`` blocks ``other``."""

    def unblock(player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        """``player_id`` stops blocking ``other``."""

    def join_group(player_id: str, group_id: str, kind: str
                   ) -> defer.Deferred[list[RelationEdit]]:
        """Add the player to a guild or party."""

    def leave_group(player_id: str, group_id: str) -> defer.Deferred[list[RelationEdit]]:
        """Remove the player from a group."""

    def touch(player_id: str) -> defer.Deferred[None]:
        """The player connected: refresh retention of what is kept about them."""

    def export(player_id: str) -> defer.Deferred[dict[str, Any]]:
        """Everything held about the player's relations (JSON-ready)."""

    def erase(player_id: str) -> defer.Deferred[list[RelationEdit]]:
        """Remove every relation of the player, from both sides; returns what changed."""


def _fields(table: dict[str, bytes]) -> set[str]:
    return set(table)


@implementer(IRelationshipProvider)
class BackendRelations:
    """The default provider: relations in the backend, managed by server calls and admin API."""

    writable = True

    def __init__(self, backend: Backend, *, ttl: float = 365 * 86400.0) -> None:
        self.backend = backend
        self.ttl = ttl

    # ------------------------------------------------------------------ reading

    def friends(self, player_id: str) -> defer.Deferred[set[str]]:
        return self.backend.hgetall("pf:" + player_id).addCallback(_fields)

    def groups(self, player_id: str) -> defer.Deferred[dict[str, str]]:
        return self.backend.hgetall("pg:" + player_id).addCallback(
            lambda table: {g: k.decode() for g, k in table.items()})

    def group_members(self, group_id: str) -> defer.Deferred[set[str]]:
        return self.backend.hgetall("pgm:" + group_id).addCallback(_fields)

    def blocks(self, player_id: str) -> defer.Deferred[set[str]]:
        return self.backend.hgetall("pb:" + player_id).addCallback(_fields)

    def blocked_by(self, player_id: str) -> defer.Deferred[set[str]]:
        return self.backend.hgetall("pbb:" + player_id).addCallback(_fields)

    # ------------------------------------------------------------------ changing

    @defer.inlineCallbacks
    def _link(self, key_a: str, field_a: str, key_b: str, field_b: str, value: bytes = b"1"
              ) -> Generator[defer.Deferred[Any], Any, bool]:
        before = yield self.backend.hgetall(key_a)
        yield defer.gatherResults([
            self.backend.hset(key_a, {field_a: value}, self.ttl),
            self.backend.hset(key_b, {field_b: value}, self.ttl),
        ], consumeErrors=True)
        return field_a not in before

    @defer.inlineCallbacks
    def _unlink(self, key_a: str, field_a: str, key_b: str, field_b: str
                ) -> Generator[defer.Deferred[Any], Any, bool]:
        removed = yield defer.gatherResults([
            self.backend.hdel(key_a, field_a),
            self.backend.hdel(key_b, field_b),
        ], consumeErrors=True)
        return bool(removed[0] or removed[1])

    @defer.inlineCallbacks
    def add_friend(self, player_id: str, other: str
                   ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        if player_id == other:
            return []
        added = yield self._link("pf:" + player_id, other, "pf:" + other, player_id)
        if not added:
            return []
        return [RelationEdit("friend", player_id, other, True),
                RelationEdit("friend", other, player_id, True)]

    @defer.inlineCallbacks
    def remove_friend(self, player_id: str, other: str
                      ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        removed = yield self._unlink("pf:" + player_id, other, "pf:" + other, player_id)
        if not removed:
            return []
        return [RelationEdit("friend", player_id, other, False),
                RelationEdit("friend", other, player_id, False)]

    @defer.inlineCallbacks
    def block(self, player_id: str, other: str
              ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        if player_id == other:
            return []
        added = yield self._link("pb:" + player_id, other, "pbb:" + other, player_id)
        return [RelationEdit("blocked_by", other, player_id, True)] if added else []

    @defer.inlineCallbacks
    def unblock(self, player_id: str, other: str
                ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        removed = yield self._unlink("pb:" + player_id, other, "pbb:" + other, player_id)
        return [RelationEdit("blocked_by", other, player_id, False)] if removed else []

    @defer.inlineCallbacks
    def join_group(self, player_id: str, group_id: str, kind: str
                   ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        if kind not in GROUP_KINDS:
            raise ValueError(f"group kind must be one of {GROUP_KINDS}")
        added = yield self._link("pg:" + player_id, group_id, "pgm:" + group_id, player_id,
                                 kind.encode())
        return [RelationEdit("group", player_id, group_id, True, kind)] if added else []

    @defer.inlineCallbacks
    def leave_group(self, player_id: str, group_id: str
                    ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        groups = yield self.groups(player_id)
        kind = groups.get(group_id, "")
        removed = yield self._unlink("pg:" + player_id, group_id, "pgm:" + group_id, player_id)
        return [RelationEdit("group", player_id, group_id, False, kind)] if removed else []

    def touch(self, player_id: str) -> defer.Deferred[None]:
        keys = ("pf:", "pb:", "pbb:", "pg:")
        ds = [self.backend.expire(prefix + player_id, self.ttl) for prefix in keys]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # ------------------------------------------------------------------ GDPR

    @defer.inlineCallbacks
    def export(self, player_id: str) -> Generator[defer.Deferred[Any], Any, dict[str, Any]]:
        friends, blocks, blocked_by, groups = yield defer.gatherResults([
            self.friends(player_id), self.blocks(player_id), self.blocked_by(player_id),
            self.groups(player_id),
        ], consumeErrors=True)
        return {
            "friends": sorted(friends),
            "blocks": sorted(blocks),
            "blocked_by": sorted(blocked_by),
            "groups": [{"id": g, "kind": k} for g, k in sorted(groups.items())],
        }

    @defer.inlineCallbacks
    def erase(self, player_id: str
              ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        friends, blocks, blocked_by, groups = yield defer.gatherResults([
            self.friends(player_id), self.blocks(player_id), self.blocked_by(player_id),
            self.groups(player_id),
        ], consumeErrors=True)
        edits: list[RelationEdit] = []
        ds = []
        for friend in friends:
            ds.append(self.backend.hdel("pf:" + friend, player_id))
            edits.append(RelationEdit("friend", friend, player_id, False))
        for blocked in blocks:  # they are no longer blocked by the erased player
            ds.append(self.backend.hdel("pbb:" + blocked, player_id))
            edits.append(RelationEdit("blocked_by", blocked, player_id, False))
        for blocker in blocked_by:
            ds.append(self.backend.hdel("pb:" + blocker, player_id))
        for group_id, kind in groups.items():
            ds.append(self.backend.hdel("pgm:" + group_id, player_id))
            edits.append(RelationEdit("group", player_id, group_id, False, kind))
        ds.append(self.backend.delete(*(p + player_id for p in ("pf:", "pb:", "pbb:", "pg:"))))
        yield defer.gatherResults(ds, consumeErrors=True)
        return edits


def parse_group_kind(kind: str) -> str:
    if kind not in GROUP_KINDS:
        raise ValueError(f"group kind must be one of {', '.join(GROUP_KINDS)}")
    return kind


def unique(ids: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i, None)
    return list(seen)
