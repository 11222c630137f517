"""Sans-io presence rules: who is online here, who watches whom, who may see what.

No reactor, no backend, no sockets: every call takes the data it needs (and
``now`` where time matters) and returns what the adapter (plugins/presence.py)
must do next.  The pieces:

* :class:`LocalPresence` counts each player's connections on this instance
  and runs the grace period: presence changes only on the first connect and
  after the last disconnect plus ``grace`` seconds, so a reconnect inside the
  grace (several tabs, a flaky network, a resume) is never seen as
  offline-then-online.
* :class:`Presence` is one player's whole state as stored; :func:`view` cuts
  from it what one viewer may see, given the relation between them
  (:func:`relation`) and the subject's per-field audiences.
* :class:`PresenceCore` is one instance's index: local viewers, the subjects
  they watch (friends, explicit subscriptions, group mates, themselves), the
  cached state of those subjects, group memberships and zone populations.
  :meth:`PresenceCore.apply` turns a state change into "this view to these
  viewers", computing each distinct view once.

Visibility is decided here, for each recipient, on the recipient's instance:
the subject's audiences and groups travel with its state; the viewer's
friends (the FRIEND watch reason: friendship is mutual), groups and the
players who block it are held by the viewer's instance.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

__all__ = [
    "AUDIENCE_NAMES",
    "FRIEND",
    "GUILD",
    "HIDDEN",
    "PARTY",
    "PUBLIC",
    "SELF",
    "Arrival",
    "Change",
    "LocalPresence",
    "Presence",
    "PresenceCore",
    "View",
    "Viewer",
    "audience_mask",
    "audience_names",
    "check_text",
    "expired_count",
    "group_topic",
    "is_presence_topic",
    "relation",
    "subject_topic",
    "view",
    "view_mask",
]

# ---------------------------------------------------------------------- relations and audiences

#: Relation bits between a viewer and a subject (also audience bits).
FRIEND = 1
GUILD = 2
PARTY = 4
#: The subject is the viewer (a player sees all of their own presence).
SELF = 8
#: Audience bit: anyone who watches.
PUBLIC = 16

AUDIENCE_NAMES = {"public": PUBLIC, "friends": FRIEND, "guild": GUILD, "party": PARTY,
                  "nobody": 0}

#: Why a viewer watches a subject (bits of PresenceCore.watchers values).
W_FRIEND = 1
W_SUBSCRIBED = 2
W_GROUP = 4
W_SELF = 8

#: View mask bits.
M_ONLINE = 1
M_LOCATION = 2
M_STATUS = 4
M_SELF = 8

GUILD_KIND = "guild"
PARTY_KIND = "party"

_TOPIC = "presence:"
_GROUP_TOPIC = "presence-group:"


def subject_topic(player_id: str) -> str:
    """Bus topic of one player's presence (state changes and relation changes)."""
    return _TOPIC + player_id


def group_topic(group_id: str) -> str:
    """Bus topic of one group's membership changes."""
    return _GROUP_TOPIC + group_id


def is_presence_topic(topic: str) -> bool:
    return topic.startswith(_TOPIC) or topic.startswith(_GROUP_TOPIC)


def audience_mask(names: Iterable[str]) -> int:
    """``("friends", "guild")`` -> bits; ``"public"`` wins, ``"nobody"`` alone is 0."""
    mask = 0
    for name in names:
        if name not in AUDIENCE_NAMES:
            raise ValueError(f"unknown audience {name!r} (known: {', '.join(AUDIENCE_NAMES)})")
        mask |= AUDIENCE_NAMES[name]
    return PUBLIC if mask & PUBLIC else mask


def audience_names(mask: int) -> list[str]:
    if mask & PUBLIC:
        return ["public"]
    names = [n for n, bit in AUDIENCE_NAMES.items() if bit and bit != PUBLIC and mask & bit]
    return names or ["nobody"]


def check_text(value: str, limit: int, what: str) -> str | None:
    """Why a client-supplied text is refused (length, control characters), or None."""
    if len(value) > limit:
        return f"{what} longer than {limit} characters"
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value):
        return f"{what} contains control characters"
    return None


def expired_count(times: Iterable[float], cutoff: float) -> int:
    """How many leading entries (oldest first) are older than ``cutoff``."""
    count = 0
    for at in times:
        if at >= cutoff:
            break
        count += 1
    return count


# ---------------------------------------------------------------------- state and views


@dataclass(slots=True, frozen=True)
class Presence:
    """One player's whole presence, as stored and as carried between instances."""

    player_id: str
    version: int = 0  # 0: read from the store (any bus version supersedes it)
    online: bool = False
    since: float = 0.0
    last_seen: float = 0.0
    zone: str = ""
    region: str = ""
    status: str = ""
    activity: str = ""
    vis_online: int = PUBLIC
    vis_location: int = FRIEND | PARTY
    vis_status: int = PUBLIC
    invisible: bool = False
    invisible_since: float = 0.0
    guilds: frozenset[str] = frozenset()
    parties: frozenset[str] = frozenset()

    def changed(self, **changes: object) -> Presence:
        return replace(self, **changes)  # type: ignore[arg-type]


class View(NamedTuple):
    """What one viewer sees of one subject (player id and version are added on the wire)."""

    online: bool
    last_seen: float
    zone: str
    region: str
    status: str
    activity: str


#: Nothing visible: what a blocked viewer, or one outside every audience, is shown.
HIDDEN = View(False, 0.0, "", "", "", "")


@dataclass(slots=True)
class Viewer:
    """A player present on this instance (connected, or inside the grace period)."""

    player_id: str
    guilds: frozenset[str] = frozenset()
    parties: frozenset[str] = frozenset()
    blocked_by: frozenset[str] = frozenset()  # replaced on change: usually empty, shared
    watching: list[str] = field(default_factory=list)  # a list: 8 bytes an entry
    subscriptions: int = 0


def relation(reasons: int, viewer: Viewer, subject: Presence) -> int:
    """Relation bits of ``viewer`` to ``subject``: FRIEND, GUILD, PARTY, SELF."""
    rel = reasons & (W_FRIEND | W_SELF)  # W_FRIEND == FRIEND, W_SELF == SELF
    if viewer.guilds and subject.guilds and not viewer.guilds.isdisjoint(subject.guilds):
        rel |= GUILD
    if viewer.parties and subject.parties and not viewer.parties.isdisjoint(subject.parties):
        rel |= PARTY
    return rel


def _allowed(audience: int, rel: int) -> bool:
    return bool(audience & PUBLIC) or bool(audience & rel)


def view_mask(subject: Presence, rel: int) -> int:
    """Which parts of ``subject`` a viewer with relation ``rel`` may see."""
    if rel & SELF:
        return M_ONLINE | M_LOCATION | M_STATUS | M_SELF
    mask = 0
    if _allowed(subject.vis_online, rel):
        mask |= M_ONLINE
        if _allowed(subject.vis_location, rel):
            mask |= M_LOCATION
        if _allowed(subject.vis_status, rel):
            mask |= M_STATUS
    return mask


def view(subject: Presence, mask: int) -> View:
    """Cut the visible parts; an invisible subject is offline to everyone but itself.

    Location and status are shown only while the subject appears online.  An
    invisible subject's last seen is when it was last visibly online
    (``invisible_since``), whether it is connected or not, so the timestamp
    does not give it away either.
    """
    if not mask & M_ONLINE:
        return HIDDEN
    if mask & M_SELF:
        online = subject.online
        last_seen = subject.last_seen
    elif subject.invisible:
        online = False
        last_seen = subject.invisible_since
    else:
        online = subject.online
        last_seen = subject.last_seen
    if not online:
        return View(False, last_seen, "", "", "", "")
    location = mask & M_LOCATION
    status = mask & M_STATUS
    return View(
        True,
        0.0,
        subject.zone if location else "",
        subject.region if location else "",
        subject.status if status else "",
        subject.activity if status else "",
    )


# ---------------------------------------------------------------------- local connections


class Arrival(enum.Enum):
    NEW = "new"  # first connection here: load relations, maybe announce online
    RETURNED = "returned"  # reconnected inside the grace period: nothing to announce
    ANOTHER = "another"  # one more connection (tab, device): send it the snapshot


class LocalPresence:
    """Connection counts per player on this instance, and the grace period after the last.

    Deadlines are kept in arrival order (the grace is constant), so finding
    the expired ones costs nothing while none are due.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.counts: dict[str, int] = {}
        self.grace_until: dict[str, float] = {}
        self._queue: deque[tuple[float, str]] = deque()

    def connect(self, player_id: str) -> Arrival:
        count = self.counts.get(player_id)
        if count is not None:
            self.counts[player_id] = count + 1
            return Arrival.ANOTHER
        self.counts[player_id] = 1
        if self.grace_until.pop(player_id, None) is not None:
            return Arrival.RETURNED
        return Arrival.NEW

    def disconnect(self, player_id: str, now: float) -> bool:
        """True when this was the player's last connection here (the grace starts)."""
        count = self.counts.get(player_id)
        if count is None:
            return False
        if count > 1:
            self.counts[player_id] = count - 1
            return False
        del self.counts[player_id]
        deadline = now + self.grace
        self.grace_until[player_id] = deadline
        self._queue.append((deadline, player_id))
        return True

    def due(self, now: float) -> list[str]:
        """Players whose grace ended without a reconnect here: they leave this instance."""
        out: list[str] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            deadline, player_id = queue.popleft()
            if self.grace_until.get(player_id) == deadline:
                del self.grace_until[player_id]
                out.append(player_id)
        return out

    def next_deadline(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def present(self, player_id: str) -> bool:
        return player_id in self.counts or player_id in self.grace_until

    def connected(self, player_id: str) -> int:
        return self.counts.get(player_id, 0)

    def players(self) -> list[str]:
        return [*self.counts, *self.grace_until]

    def clear(self) -> list[str]:
        """Forget everyone (shutdown); returns who was present."""
        everyone = self.players()
        self.counts.clear()
        self.grace_until.clear()
        self._queue.clear()
        return everyone


def holding_elsewhere(holders: Mapping[str, bytes], me: str) -> list[str]:
    """Other instances that say they hold the player (``pr:<id>:c`` fields)."""
    out = []
    for instance, count in holders.items():
        if instance == me:
            continue
        try:
            if int(count) > 0:
                out.append(instance)
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------------- the instance's index


@dataclass
class Change:
    """What the adapter must do after a change to the watch graph."""

    subscribe: list[str] = field(default_factory=list)  # bus topics now needed
    unsubscribe: list[str] = field(default_factory=list)  # bus topics no longer needed
    load: list[str] = field(default_factory=list)  # subjects whose state is not held here
    show: list[tuple[str, str]] = field(default_factory=list)  # (viewer, subject): send view
    unwatched: list[tuple[str, str]] = field(default_factory=list)  # (viewer, subject)
    overflow: int = 0  # watches refused by max_watched

    def merge(self, other: Change) -> Change:
        self.subscribe += other.subscribe
        self.unsubscribe += other.unsubscribe
        self.load += other.load
        self.show += other.show
        self.unwatched += other.unwatched
        self.overflow += other.overflow
        return self


@dataclass(slots=True)
class _Group:
    kind: str
    members: set[str]
    local: set[str] = field(default_factory=set)  # members present here


Delivery = tuple[Presence, View, list[str]]


class PresenceCore:
    """One instance's presence index: local viewers, watch edges, cached subjects, groups."""

    def __init__(self, *, max_watched: int = 1000) -> None:
        self.max_watched = max_watched
        self.viewers: dict[str, Viewer] = {}
        #: subject -> {viewer: watch reasons}
        self.watchers: dict[str, dict[str, int]] = {}
        #: state of every watched subject (kept while someone here watches it)
        self.states: dict[str, Presence] = {}
        self.groups: dict[str, _Group] = {}
        self.zones: dict[str, int] = {}  # local players per zone (population)

    # ------------------------------------------------------------------ viewers

    def add_viewer(
        self,
        player_id: str,
        *,
        friends: Iterable[str] = (),
        groups: Mapping[str, str] | None = None,
        members: Mapping[str, Iterable[str]] | None = None,
        blocked_by: Iterable[str] = (),
        subscriptions: Iterable[str] = (),
    ) -> Change:
        """A player arrived here; ``members`` holds member lists of groups not known here."""
        change = Change()
        if player_id in self.viewers:
            return change
        groups = dict(groups or {})
        viewer = Viewer(
            player_id,
            guilds=frozenset(g for g, k in groups.items() if k == GUILD_KIND),
            parties=frozenset(g for g, k in groups.items() if k == PARTY_KIND),
            blocked_by=frozenset(blocked_by),
        )
        self.viewers[player_id] = viewer
        state = self.states.get(player_id)
        if state is not None:
            self._count_zone(state.zone, 1)
        self._watch(viewer, player_id, W_SELF, change, limit=False)
        for friend in friends:
            if friend != player_id:
                self._watch(viewer, friend, W_FRIEND, change)
        for subject in subscriptions:
            if subject != player_id:
                if self._watch(viewer, subject, W_SUBSCRIBED, change):
                    viewer.subscriptions += 1
        for group_id, kind in groups.items():
            self._enter_group(viewer, group_id, kind, (members or {}).get(group_id), change)
        return change

    def remove_viewer(self, player_id: str) -> Change:
        change = Change()
        viewer = self.viewers.pop(player_id, None)
        if viewer is None:
            return change
        state = self.states.get(player_id)
        if state is not None:
            self._count_zone(state.zone, -1)
        for group_id in (*viewer.guilds, *viewer.parties):
            group = self.groups.get(group_id)
            if group is not None:
                group.local.discard(player_id)
                if not group.local:
                    del self.groups[group_id]
                    change.unsubscribe.append(group_topic(group_id))
        for subject in viewer.watching:
            self._drop_edge(viewer, subject, change, notify=False, listed=False)
        viewer.watching = []
        return change

    def viewer(self, player_id: str) -> Viewer | None:
        return self.viewers.get(player_id)

    # ------------------------------------------------------------------ watch edges

    def watch(self, viewer_id: str, subject: str, reason: int) -> Change:
        viewer = self.viewers.get(viewer_id)
        if viewer is None or subject == viewer_id:
            return Change()
        change = Change()
        if self._watch(viewer, subject, reason, change) and reason == W_SUBSCRIBED:
            viewer.subscriptions += 1
        return change

    def unwatch(self, viewer_id: str, subject: str, reason: int) -> Change:
        change = Change()
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return change
        reasons = self.watchers.get(subject, {}).get(viewer_id)
        if reasons is None or not reasons & reason:
            return change
        if reason == W_SUBSCRIBED:
            viewer.subscriptions -= 1
        reasons &= ~reason
        if reasons:
            self.watchers[subject][viewer_id] = reasons
            change.show.append((viewer_id, subject))  # the relation changed: the view may too
            return change
        self._drop_edge(viewer, subject, change, notify=True)
        return change

    def reasons(self, viewer_id: str, subject: str) -> int:
        return self.watchers.get(subject, {}).get(viewer_id, 0)

    def _watch(self, viewer: Viewer, subject: str, reason: int, change: Change, *,
               limit: bool = True) -> bool:
        """Add ``reason`` to the edge (creating it); False when refused or already there."""
        watchers = self.watchers.get(subject)
        current = watchers.get(viewer.player_id) if watchers is not None else None
        if current is not None:
            if current & reason:
                return False
            watchers[viewer.player_id] = current | reason  # type: ignore[index]
            if reason == W_FRIEND:
                change.show.append((viewer.player_id, subject))
            return True
        if limit and len(viewer.watching) > self.max_watched:  # the self-watch is extra
            change.overflow += 1
            return False
        if watchers is None:
            watchers = self.watchers[subject] = {}
            change.subscribe.append(subject_topic(subject))
        watchers[viewer.player_id] = reason
        viewer.watching.append(subject)
        if subject in self.states:
            change.show.append((viewer.player_id, subject))
        else:
            change.load.append(subject)
        return True

    def _drop_edge(self, viewer: Viewer, subject: str, change: Change, *, notify: bool,
                   listed: bool = True) -> None:
        watchers = self.watchers.get(subject)
        if listed:
            viewer.watching.remove(subject)
        if watchers is None:
            return
        watchers.pop(viewer.player_id, None)
        if notify:
            change.unwatched.append((viewer.player_id, subject))
        if not watchers:
            del self.watchers[subject]
            self.states.pop(subject, None)
            change.unsubscribe.append(subject_topic(subject))

    # ------------------------------------------------------------------ blocks

    def set_blocked_by(self, viewer_id: str, blocker: str, blocked: bool) -> bool:
        """``blocker`` (un)blocks ``viewer_id``; True when the viewer watches the blocker."""
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return False
        if blocked:
            viewer.blocked_by = viewer.blocked_by | {blocker}
        else:
            viewer.blocked_by = viewer.blocked_by - {blocker}
        return viewer_id in self.watchers.get(blocker, ())

    def is_blocked(self, viewer_id: str, subject: str) -> bool:
        viewer = self.viewers.get(viewer_id)
        return viewer is not None and subject in viewer.blocked_by

    # ------------------------------------------------------------------ groups

    def knows_group(self, group_id: str) -> bool:
        return group_id in self.groups

    def join_group(self, viewer_id: str, group_id: str, kind: str,
                   members: Iterable[str] | None) -> Change:
        """A local viewer joined a group (``members``: the list, if the group is new here)."""
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return Change()
        if kind == GUILD_KIND:
            viewer.guilds = viewer.guilds | {group_id}
        else:
            viewer.parties = viewer.parties | {group_id}
        change = Change()
        self._enter_group(viewer, group_id, kind, members, change)
        return change

    def leave_group(self, viewer_id: str, group_id: str) -> Change:
        change = Change()
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return change
        viewer.guilds = viewer.guilds - {group_id}
        viewer.parties = viewer.parties - {group_id}
        group = self.groups.get(group_id)
        if group is None:
            return change
        group.local.discard(viewer_id)
        for member in group.members:
            if member != viewer_id and not self._share_group(viewer, member):
                change.merge(self.unwatch(viewer_id, member, W_GROUP))
            elif member != viewer_id:
                change.show.append((viewer_id, member))
        if not group.local:
            del self.groups[group_id]
            change.unsubscribe.append(group_topic(group_id))
        return change

    def member_joined(self, group_id: str, member: str) -> Change:
        """Someone joined a group that has members here: they all watch the newcomer."""
        change = Change()
        group = self.groups.get(group_id)
        if group is None:
            return change
        group.members.add(member)
        for local in tuple(group.local):
            viewer = self.viewers.get(local)
            if viewer is not None and local != member:
                self._watch(viewer, member, W_GROUP, change)
        return change

    def member_left(self, group_id: str, member: str) -> Change:
        change = Change()
        group = self.groups.get(group_id)
        if group is None:
            return change
        group.members.discard(member)
        for local in tuple(group.local):
            viewer = self.viewers.get(local)
            if viewer is None or local == member:
                continue
            if self._share_group(viewer, member):
                change.show.append((local, member))
            else:
                change.merge(self.unwatch(local, member, W_GROUP))
        return change

    def local_members(self, group_id: str) -> list[str]:
        group = self.groups.get(group_id)
        return sorted(group.local) if group is not None else []

    def _enter_group(self, viewer: Viewer, group_id: str, kind: str,
                     members: Iterable[str] | None, change: Change) -> None:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = _Group(kind, set(members or ()))
            change.subscribe.append(group_topic(group_id))
        group.local.add(viewer.player_id)
        group.members.add(viewer.player_id)
        for member in tuple(group.members):
            if member != viewer.player_id:
                self._watch(viewer, member, W_GROUP, change)

    def _share_group(self, viewer: Viewer, member: str) -> bool:
        for group_id in (*viewer.guilds, *viewer.parties):
            group = self.groups.get(group_id)
            if group is not None and member in group.members:
                return True
        return False

    # ------------------------------------------------------------------ subject states

    def apply(self, record: Presence, *, force: bool = False) -> list[Delivery]:
        """A subject's new state: the views that changed, grouped by view.

        Versions order the updates of one subject: an older (or repeated)
        version is ignored, except a state read from the store (version 0)
        with ``force`` (a resync).  Each distinct (old mask, new mask) pair
        is computed once, however many viewers share it.
        """
        subject = record.player_id
        watchers = self.watchers.get(subject)
        if watchers is None:
            return []
        old = self.states.get(subject)
        if old is not None and not force and old.version and record.version <= old.version:
            return []
        self.states[subject] = record
        if subject in self.viewers:
            self._count_zone(old.zone if old is not None else "", -1 if old is not None else 0)
            self._count_zone(record.zone, 1)
        # Without groups on either side the relation is just the watch reasons, so views
        # are computed once per distinct (old relation, new relation) pair.
        grouped = bool(record.guilds or record.parties
                       or (old is not None and (old.guilds or old.parties)))
        computed: dict[tuple[int, int], tuple[View | None, View]] = {}
        out: dict[View, list[str]] = {}
        viewers = self.viewers
        for viewer_id, reasons in watchers.items():
            viewer = viewers.get(viewer_id)
            if viewer is None or (viewer.blocked_by and subject in viewer.blocked_by):
                continue
            if grouped:
                rel_new = relation(reasons, viewer, record)
                rel_old = relation(reasons, viewer, old) if old is not None else -1
            else:
                rel_new = reasons & (W_FRIEND | W_SELF)
                rel_old = rel_new if old is not None else -1
            pair = computed.get((rel_old, rel_new))
            if pair is None:
                before = view(old, view_mask(old, rel_old)) if old is not None else None
                pair = computed[(rel_old, rel_new)] = (before, view(record, view_mask(record,
                                                                                     rel_new)))
            if pair[0] != pair[1]:
                ids = out.get(pair[1])
                if ids is None:
                    out[pair[1]] = [viewer_id]
                else:
                    ids.append(viewer_id)
        return [(record, v, ids) for v, ids in out.items()]

    def forget(self, subject: str) -> list[str]:
        """The subject's data was erased: drop the cached state; its watchers (to re-show)."""
        self.states.pop(subject, None)
        return [v for v in self.watchers.get(subject, {}) if v != subject]

    def view_of(self, viewer_id: str, subject: str) -> View | None:
        """What ``viewer_id`` sees of ``subject`` now; None when it does not watch it."""
        viewer = self.viewers.get(viewer_id)
        reasons = self.watchers.get(subject, {}).get(viewer_id)
        if viewer is None or reasons is None:
            return None
        if subject in viewer.blocked_by:
            return HIDDEN
        state = self.states.get(subject)
        if state is None:
            return HIDDEN
        return view(state, view_mask(state, relation(reasons, viewer, state)))

    def snapshot(self, viewer_id: str) -> list[tuple[str, int, View]]:
        """(subject, version, view) of everything the viewer watches, itself first."""
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return []
        out = []
        for subject in sorted(viewer.watching, key=lambda s: (s != viewer_id, s)):
            seen = self.view_of(viewer_id, subject)
            if seen is not None:
                state = self.states.get(subject)
                out.append((subject, state.version if state is not None else 0, seen))
        return out

    # ------------------------------------------------------------------ population

    def _count_zone(self, zone: str, delta: int) -> None:
        if not zone or not delta:
            return
        count = self.zones.get(zone, 0) + delta
        if count > 0:
            self.zones[zone] = count
        else:
            self.zones.pop(zone, None)

    def population(self) -> tuple[int, dict[str, int]]:
        """Players present here, and per zone."""
        return len(self.viewers), dict(self.zones)
