"""Presence: who is online, where and doing what, across every instance; friends,
groups, blocks and privacy.

The rules live in the sans-io core (gateway/presence/core.py); persistence in
gateway/presence/store.py; relations behind IRelationshipProvider
(gateway/presence/relations.py).  This plugin is the adapter: gateway hooks,
client events, the bus, timers, metrics and the admin API.  docs/Presence.md
is the chapter; in short:

* Online is cluster-wide: each instance records the players it holds
  (``prc:<player>``) and keeps a liveness key (``pi:<instance>``).  A player
  goes offline only when the last instance holding them lets go, after the
  grace period, under a per-player lock; a crashed instance's players are
  released by a survivor once its liveness key expires.
* Changes travel on bus topics ``presence:<player>`` (state and relation
  changes of that player) and ``presence-group:<group>`` (membership), which
  an instance subscribes while a local player watches that player or belongs
  to that group.  The whole state travels; each receiving instance cuts it
  per viewer (audiences, blocks, invisibility) before anything is encoded.
* State goes to clients unreliably (``presence.update``, keyed per player so
  a newer one replaces a queued older one), with a snapshot at every
  connect and resume: cheap, and a missed update heals at the next one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.codes import ErrorCode
from gateway.config import read_secret
from gateway.events import (
    Category,
    Delivery,
    Direction,
    EventContext,
    EventError,
    EventSpec,
    Priority,
    ValidationError,
)
from gateway.plugin import GatewayPlugin, PluginContext, PluginError, handles
from gateway.presence.admin import MAX_ID_LENGTH, PlayerOnline, PresenceAdmin
from gateway.presence.cluster import TOTAL, Cluster, PresenceMetrics
from gateway.presence.core import (
    FRIEND,
    GUILD,
    HIDDEN,
    PARTY,
    PUBLIC,
    W_FRIEND,
    W_SUBSCRIBED,
    Arrival,
    Change,
    LocalPresence,
    Presence,
    PresenceCore,
    View,
    audience_mask,
    audience_names,
    check_text,
    group_topic,
    holding_elsewhere,
    is_presence_topic,
    subject_topic,
)
from gateway.presence.relations import (
    BackendRelations,
    IRelationshipProvider,
    RelationEdit,
    parse_group_kind,
    unique,
)
from gateway.presence.store import (
    PresenceStore,
    Retention,
    ids_field,
    record_from_proto,
    record_to_proto,
    settings_fields,
    with_settings,
)
from protocol import internal_pb2, presence_pb2

__all__ = ["PresenceConfig", "PresencePlugin", "presence"]

log = Logger()

#: The bus event type of presence messages (never a client event).
BUS_TYPE = "presence.bus"
SNAPSHOT_CHUNK = 200

_AUDIENCE_BITS: dict[int, int] = {
    presence_pb2.AUDIENCE_PUBLIC: PUBLIC,
    presence_pb2.AUDIENCE_FRIENDS: FRIEND,
    presence_pb2.AUDIENCE_GUILD: GUILD,
    presence_pb2.AUDIENCE_PARTY: PARTY,
    presence_pb2.AUDIENCE_NOBODY: 0,
}
_KIND_NAMES: dict[int, str] = {
    presence_pb2.GROUP_KIND_GUILD: "guild",
    presence_pb2.GROUP_KIND_PARTY: "party",
}
_KIND_VALUES: dict[str, int] = {v: k for k, v in _KIND_NAMES.items()}
_RELATION_KINDS = {
    "friend": presence_pb2.PresenceRelationChange.KIND_FRIEND,
    "blocked_by": presence_pb2.PresenceRelationChange.KIND_BLOCKED_BY,
    "subscription": presence_pb2.PresenceRelationChange.KIND_SUBSCRIPTION,
    "group": presence_pb2.PresenceRelationChange.KIND_GROUP,
}


def _check(test: Callable[[Any], str | None]) -> Any:
    return {"check": test}


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _audiences(value: tuple[str, ...]) -> str | None:
    try:
        audience_mask(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class PresenceConfig:
    """``[plugin.presence]``: every option is described in docs/Presence.md."""

    grace_seconds: float = field(default=10.0, metadata=_check(_non_negative))
    client_location: bool = False
    max_status_length: int = field(default=128, metadata=_check(_positive))
    max_activity_length: int = field(default=64, metadata=_check(_positive))
    max_location_length: int = field(default=64, metadata=_check(_positive))
    status_per_second: float = field(default=0.5, metadata=_check(_positive))
    status_burst: int = field(default=5, metadata=_check(_positive))
    requests_per_second: float = field(default=2.0, metadata=_check(_positive))
    requests_burst: int = field(default=10, metadata=_check(_positive))
    max_subscriptions: int = field(default=100, metadata=_check(_positive))
    max_watched: int = field(default=1000, metadata=_check(_positive))
    max_blocks: int = field(default=1000, metadata=_check(_positive))
    default_online: tuple[str, ...] = field(default=("public",), metadata=_check(_audiences))
    default_location: tuple[str, ...] = field(default=("friends", "party"),
                                              metadata=_check(_audiences))
    default_status: tuple[str, ...] = field(default=("public",), metadata=_check(_audiences))
    last_seen_seconds: float = field(default=30 * 86400.0, metadata=_check(_positive))
    history_seconds: float = field(default=90 * 86400.0, metadata=_check(_positive))
    history_max_entries: int = field(default=1000, metadata=_check(_positive))
    settings_seconds: float = field(default=365 * 86400.0, metadata=_check(_positive))
    subscription_seconds: float = field(default=30 * 86400.0, metadata=_check(_positive))
    relations_seconds: float = field(default=365 * 86400.0, metadata=_check(_positive))
    heartbeat_seconds: float = field(default=5.0, metadata=_check(_positive))
    instance_ttl_seconds: float = field(default=15.0, metadata=_check(_positive))
    max_zone_labels: int = field(default=200, metadata=_check(_positive))
    max_concurrent_arrivals: int = field(default=20, metadata=_check(_positive))
    provider: str = ""


# ---------------------------------------------------------------------- helpers


def _after(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A new Deferred firing (with None) when ``d`` fires, leaving ``d``'s result alone."""
    out: defer.Deferred[None] = defer.Deferred()

    def relay(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(relay)
    return out


def _valid_id(value: str, what: str = "player id") -> None:
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{what} must be 1..{MAX_ID_LENGTH} characters")
    problem = check_text(value, MAX_ID_LENGTH, what)
    if problem:
        raise ValidationError(problem)


def _audience_bits(audiences: Iterable[int]) -> int:
    values = list(audiences)
    if not values:
        raise ValidationError("an audience set needs at least one audience")
    mask = 0
    for value in values:
        if value not in _AUDIENCE_BITS:
            raise ValidationError(f"unknown audience {value}")
        mask |= _AUDIENCE_BITS[value]
    if presence_pb2.AUDIENCE_NOBODY in values and len(set(values)) > 1:
        raise ValidationError("AUDIENCE_NOBODY cannot be combined with other audiences")
    return PUBLIC if mask & PUBLIC else mask


def _audience_set(mask: int) -> presence_pb2.AudienceSet:
    out = presence_pb2.AudienceSet()
    for name in audience_names(mask):
        out.audiences.append(getattr(presence_pb2, f"AUDIENCE_{name.upper()}"))
    return out


def _load_provider(path: str, backend: Any, config: PresenceConfig) -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise PluginError("presence: provider must look like 'package.module:attribute'")
    target = getattr(importlib.import_module(module_name), attribute)
    provider = target(backend, config) if callable(target) and not \
        IRelationshipProvider.providedBy(target) else target
    if not IRelationshipProvider.providedBy(provider):
        raise PluginError(f"presence: {path} does not provide IRelationshipProvider")
    return provider


class _PresenceService(Service):
    """Starts the heartbeat with the gateway; a clean stop hands players to the survivors."""

    def __init__(self, plugin: PresencePlugin) -> None:
        self.plugin = plugin

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.plugin.start()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.plugin.stop()


# ---------------------------------------------------------------------- the plugin


class PresencePlugin(GatewayPlugin):
    name = "presence"
    version = "1.0"
    config_class = PresenceConfig

    def __init__(self) -> None:
        self.config: PresenceConfig = PresenceConfig()
        self.context: PluginContext | None = None
        self.gateway: Any = None  # set at setup (not properties: setup scans members)
        self.instance_id = ""
        self.provider: Any = None
        self.core = PresenceCore()
        self.local = LocalPresence(self.config.grace_seconds)
        self.store: PresenceStore | None = None
        self.defaults = Presence("")
        self._chains: dict[str, defer.Deferred[None]] = {}
        self._topic_refs: dict[str, int] = {}
        self._early_blocks: dict[str, dict[str, bool]] = {}
        self.cluster: Cluster | None = None
        self._loading: dict[str, list[defer.Deferred[Presence]]] = {}
        self._arrivals = defer.DeferredSemaphore(self.config.max_concurrent_arrivals)
        self._halted = False
        self._remove_tick: Callable[[], None] | None = None

    # ------------------------------------------------------------------ configuration

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.local = LocalPresence(self.config.grace_seconds)
        self.core = PresenceCore(max_watched=self.config.max_watched)
        self._arrivals = defer.DeferredSemaphore(self.config.max_concurrent_arrivals)

    def use_provider(self, provider: Any) -> None:
        """Replace the default (backend) relationship provider; call before start-up."""
        if not IRelationshipProvider.providedBy(provider):
            raise TypeError("the provider must provide IRelationshipProvider")
        self.provider = provider

    def event_specs(self) -> tuple[EventSpec, ...]:
        c = self.config
        requests = (c.requests_per_second, c.requests_burst)
        status = (c.status_per_second, c.status_burst)

        def c2s(type_: str, message: type[Message], text: str, rate: tuple[float, int],
                validator: Callable[[EventContext, Any], None]) -> EventSpec:
            return EventSpec(type=type_, versions={1: message}, category=Category.SOCIAL,
                             priority=Priority.NORMAL, direction=Direction.CLIENT_TO_SERVER,
                             delivery=Delivery.RELIABLE, rate_limit=rate,
                             validators=(validator,), description=text)

        def s2c(type_: str, message: type[Message], text: str, *, reliable: bool = False,
                priority: Priority = Priority.NORMAL) -> EventSpec:
            return EventSpec(type=type_, versions={1: message}, category=Category.SOCIAL,
                             priority=priority, direction=Direction.SERVER_TO_CLIENT,
                             delivery=Delivery.RELIABLE if reliable else Delivery.UNRELIABLE,
                             description=text)

        return (
            c2s("presence.subscribe", presence_pb2.PresenceSubscribe,
                "Watch these players' presence too (bounded per player); answered with "
                "presence.snapshot, refused for a player who blocks you.",
                requests, self._validate_ids),
            c2s("presence.unsubscribe", presence_pb2.PresenceUnsubscribe,
                "Stop watching these players; answered with presence.snapshot (unwatched).",
                requests, self._validate_ids),
            c2s("presence.set_status", presence_pb2.PresenceSetStatus,
                "Set your custom status message and activity (length- and rate-limited).",
                status, self._validate_status),
            c2s("presence.set_location", presence_pb2.PresenceSetLocation,
                "Set your zone and region: refused unless client_location is enabled.",
                status, self._validate_location),
            c2s("presence.set_privacy", presence_pb2.PresencePrivacy,
                "Who sees your online state, location and status; invisible mode. "
                "Answered with presence.privacy.",
                requests, self._validate_privacy),
            c2s("presence.block", presence_pb2.PresenceBlock,
                "Block or unblock a player: a blocked player never sees your presence. "
                "Answered with presence.block_list.",
                requests, self._validate_block),
            s2c("presence.update", presence_pb2.PresenceView,
                "One player's presence as you may see it; a newer one supersedes."),
            s2c("presence.snapshot", presence_pb2.PresenceSnapshot,
                "Everything you watch, at connect and resume, and answers to (un)subscribe.",
                priority=Priority.HIGH),
            s2c("presence.privacy", presence_pb2.PresencePrivacy,
                "Your privacy settings (answer to presence.set_privacy).", reliable=True),
            s2c("presence.block_list", presence_pb2.PresenceBlockList,
                "The players you block (answer to presence.block).", reliable=True),
            s2c("presence.group", presence_pb2.PresenceGroupEvent,
                "A member joined or left one of your guilds or parties.", reliable=True),
        )

    # ------------------------------------------------------------------ set-up

    def setup(self, context: PluginContext) -> Service:
        self.context = context
        gateway = self.gateway = context.gateway
        self.instance_id = str(gateway.instance_id)
        fanout = gateway.fanout
        if fanout is None:
            raise PluginError("presence needs the gateway's backend (bus and store)")
        backend = fanout.backend
        c = self.config
        retention = Retention(
            last_seen=c.last_seen_seconds,
            history=c.history_seconds,
            history_max=c.history_max_entries,
            settings=c.settings_seconds,
            subscriptions=c.subscription_seconds,
            instance_ttl=c.instance_ttl_seconds,
            lock=5.0,
        )
        self.defaults = Presence(
            "",
            vis_online=audience_mask(c.default_online),
            vis_location=audience_mask(c.default_location),
            vis_status=audience_mask(c.default_status),
        )
        self.store = PresenceStore(backend, retention, self.defaults)
        if self.provider is None:
            self.provider = (_load_provider(c.provider, backend, c) if c.provider
                             else BackendRelations(backend, ttl=c.relations_seconds))
        self.metrics = PresenceMetrics(gateway.metrics.registry)
        self.cluster = Cluster(
            self.store, self.instance_id, context.reactor, self.metrics, self,
            heartbeat=c.heartbeat_seconds, grace=c.grace_seconds,
            last_seen=c.last_seen_seconds, max_zone_labels=c.max_zone_labels, now=self.now)
        gateway.on_authenticated.append(self._connected)
        gateway.on_disconnected.append(self._disconnected)
        previous = fanout.on_event

        def on_event(event: internal_pb2.BusEvent) -> object:
            if is_presence_topic(event.topic):
                self._bus(event)
                return None
            return previous(event)

        fanout.on_event = on_event
        fanout.on_resync.append(self._resync)
        self._remove_tick = context.ticks.add("normal", self._tick, name="presence grace")
        token = None
        if context.gateway_config.admin.token_env:
            token = read_secret("admin.token_env", env=context.gateway_config.admin.token_env)
        context.admin_resources[b"presence"] = PresenceAdmin(self, token)
        return _PresenceService(self)

    # ------------------------------------------------------------------ plumbing

    def now(self) -> float:
        assert self.context is not None
        return float(self.context.reactor.seconds())

    def _store(self) -> PresenceStore:
        if self.store is None:
            raise RuntimeError("the presence plugin is not set up")
        return self.store

    def _serial(self, player_id: str, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``fn`` after everything already queued for this player on this instance.

        Returns ``fn``'s own result (failures included); the queue itself
        never stalls on a failure.
        """
        previous = self._chains.get(player_id)
        start: defer.Deferred[Any] = defer.succeed(None) if previous is None else _after(previous)
        result = start.addCallback(lambda _: fn(*args))
        tail = _after(result)
        self._chains[player_id] = tail

        def done(_: object) -> None:
            if self._chains.get(player_id) is tail:
                del self._chains[player_id]

        tail.addCallback(done)
        return result

    def _background(self, d: defer.Deferred[Any], what: str) -> None:
        def failed(failure: Failure) -> None:
            if failure.check(EventError):
                return
            log.warn("presence {what} failed: {error}", what=what,
                     error=failure.getErrorMessage())

        d.addErrback(failed)

    def _ref(self, topics: Iterable[str]) -> list[str]:
        fanout = self.gateway.fanout
        added = []
        for topic in topics:
            count = self._topic_refs.get(topic, 0)
            self._topic_refs[topic] = count + 1
            if not count:
                fanout.subscribe(topic)
                added.append(topic)
        return added

    def _unref(self, topics: Iterable[str]) -> None:
        fanout = self.gateway.fanout
        for topic in topics:
            count = self._topic_refs.get(topic, 0) - 1
            if count > 0:
                self._topic_refs[topic] = count
            elif count == 0:
                del self._topic_refs[topic]
                fanout.unsubscribe(topic)

    def _subscribed(self, topics: list[str]) -> defer.Deferred[None]:
        """Pin ``topics`` and fire once the bus delivers them ("subscribe first, then read")."""
        self._ref(topics)
        waiting: defer.Deferred[None] = self.gateway.fanout.subscribed(topics)
        return waiting

    def _publish(self, topic: str, message: presence_pb2.PresenceBusMessage) -> None:
        self.gateway.fanout.publish_event(topic, BUS_TYPE, message.SerializeToString())

    # ------------------------------------------------------------------ sending to clients

    def _view_message(self, subject: str, version: int, seen: View,
                      unwatched: bool = False) -> presence_pb2.PresenceView:
        return presence_pb2.PresenceView(
            player_id=subject,
            online=seen.online,
            last_seen_ms=int(seen.last_seen * 1000),
            zone=seen.zone,
            region=seen.region,
            status=seen.status,
            activity=seen.activity,
            version=version,
            unwatched=unwatched,
        )

    def _deliver(self, subject: str, version: int, seen: View, viewers: Iterable[str], *,
                 exclude: str | None = None, unwatched: bool = False) -> None:
        """One view to many viewers: encoded once per client version, queued per connection."""
        gateway = self.gateway
        hub = gateway.hub
        message: presence_pb2.PresenceView | None = None
        encoded: dict[int, Any] = {}
        sent = 0
        for viewer in viewers:
            if viewer == exclude:
                continue
            for transport in hub.for_player(viewer):
                version_spoken = transport.connection.versions.get("presence.update")
                if version_spoken is None:
                    continue
                event = encoded.get(version_spoken)
                if event is None:
                    if message is None:
                        message = self._view_message(subject, version, seen, unwatched)
                    event = encoded[version_spoken] = gateway.registry.encode(
                        "presence.update", message, version_spoken, key="presence:" + subject)
                hub.deliver(transport, event)
                sent += 1
        if sent:
            self.metrics.updates.inc(sent)

    def _deliver_all(self, deliveries: Iterable[tuple[Presence, View, list[str]]],
                     exclude: str | None = None) -> None:
        for record, seen, viewers in deliveries:
            self._deliver(record.player_id, record.version, seen, viewers, exclude=exclude)

    def _show(self, viewer: str, subject: str) -> None:
        seen = self.core.view_of(viewer, subject)
        if seen is not None:
            state = self.core.states.get(subject)
            self._deliver(subject, state.version if state is not None else 0, seen, (viewer,))

    def _snapshot_messages(self, views: list[tuple[str, int, View]]
                           ) -> list[presence_pb2.PresenceSnapshot]:
        out = []
        for start in range(0, len(views), SNAPSHOT_CHUNK):
            chunk = views[start:start + SNAPSHOT_CHUNK]
            out.append(presence_pb2.PresenceSnapshot(
                players=[self._view_message(s, v, seen) for s, v, seen in chunk]))
        return out

    def _send_snapshot(self, transport: Any) -> None:
        conn = transport.connection
        if self.gateway.hub.get(conn.id) is None:
            return  # gone meanwhile
        views = self.core.snapshot(conn.player_id)
        if len(views) <= 1:
            return  # only the player: nothing to show (and no traffic for loners)
        for msg in self._snapshot_messages(views):
            self.gateway.send_to_connection(conn, "presence.snapshot", msg)

    # ------------------------------------------------------------------ executing core changes

    def _load(self, subject: str) -> defer.Deferred[Presence]:
        """The stored state of a subject; concurrent loads of one subject share one read.

        Sharing is safe for "subscribe first, then read": every caller holds the
        subject's topic, which was subscribed before the shared read was issued.
        """
        out: defer.Deferred[Presence] = defer.Deferred()
        waiting = self._loading.get(subject)
        if waiting is not None:
            waiting.append(out)
            return out
        waiting = self._loading[subject] = [out]

        def done(result: Any) -> None:
            del self._loading[subject]
            for waiter in waiting:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        self._store().load(subject).addBoth(done)
        return out

    @defer.inlineCallbacks
    def _execute(self, change: Change, exclude: str | None = None
                 ) -> Generator[defer.Deferred[Any], Any, None]:
        """Carry out a watch-graph change: bus topics, missing states, views to send."""
        self._ref(change.subscribe)
        self._unref(change.unsubscribe)
        if change.overflow:
            self.metrics.overflow.inc(change.overflow)
        for viewer, subject in change.unwatched:
            if viewer != exclude:
                self._deliver(subject, 0, HIDDEN, (viewer,), unwatched=True)
        for viewer, subject in change.show:
            if viewer != exclude:
                self._show(viewer, subject)
        load = sorted(set(change.load))
        if load:
            yield self.gateway.fanout.subscribed([subject_topic(s) for s in load])
            records = yield defer.gatherResults([self._load(s) for s in load],
                                                consumeErrors=True)
            for record in records:
                self._deliver_all(self.core.apply(record), exclude=exclude)
        self.metrics.subjects.set(len(self.core.states))

    # ------------------------------------------------------------------ connections

    def _connected(self, transport: Any) -> None:
        if self._halted:
            return
        player_id = transport.connection.player_id
        if self.local.connect(player_id) is Arrival.NEW:
            # A login storm (an instance died, its players arrive here) must not flood the
            # backend: at most max_concurrent_arrivals arrivals talk to it at once.
            arrival = self._serial(player_id, self._arrivals.run, self._arrive, player_id)
            self._background(arrival, "arrival")
        self._background(self._serial(player_id, self._send_snapshot, transport), "snapshot")

    def _disconnected(self, transport: Any) -> None:
        if self._halted:
            return
        if self.local.disconnect(transport.connection.player_id, self.now()):
            if self.local.grace <= 0:
                self._release_due()

    def _tick(self, _info: object) -> None:
        if not self._halted and self.local.grace_until:
            self._release_due()

    def _release_due(self) -> None:
        for player_id in self.local.due(self.now()):
            self._background(self._serial(player_id, self._depart, player_id), "departure")

    @defer.inlineCallbacks
    def _arrive(self, player_id: str) -> Generator[defer.Deferred[Any], Any, None]:
        """First connection here: hold the player, load relations, announce, watch."""
        store = self._store()
        if self.cluster is not None and not self.cluster.registered:
            yield self.cluster.heartbeat()  # our liveness key first: holders must look alive
        own = [subject_topic(player_id)]
        yield self._subscribed(own)  # relation changes about the player reach us from now on
        pinned = list(own)
        try:
            yield store.hold(player_id, self.instance_id)
            friends, groups, blocked_by, subscriptions = yield defer.gatherResults([
                self.provider.friends(player_id), self.provider.groups(player_id),
                self.provider.blocked_by(player_id), store.subscriptions(player_id),
            ], consumeErrors=True)
            self._background(self.provider.touch(player_id), "relations touch")
            self._background(store.touch(player_id), "settings touch")
            new_groups = sorted(g for g in groups if not self.core.knows_group(g))
            members: dict[str, set[str]] = {}
            if new_groups:
                topics = [group_topic(g) for g in new_groups]
                pinned += topics
                yield self._subscribed(topics)
                lists = yield defer.gatherResults(
                    [self.provider.group_members(g) for g in new_groups], consumeErrors=True)
                members = dict(zip(new_groups, lists, strict=True))
            record = yield self._announce(player_id, groups)
            blocked = set(blocked_by)
            for blocker, on in self._early_blocks.pop(player_id, {}).items():
                (blocked.add if on else blocked.discard)(blocker)
            change = self.core.add_viewer(
                player_id, friends=sorted(friends), groups=groups, members=members,
                blocked_by=blocked, subscriptions=sorted(subscriptions))
            self._deliver_all(self.core.apply(record), exclude=player_id)
            yield self._execute(change, exclude=player_id)
        finally:
            self._unref(pinned)

    @defer.inlineCallbacks
    def _announce(self, player_id: str, groups: dict[str, str]
                  ) -> Generator[defer.Deferred[Any], Any, Presence]:
        """Under the player's lock: online if nobody had announced it yet; groups up to date."""
        store = self._store()
        locked = yield self._lock(player_id)
        try:
            record, settings = yield defer.gatherResults(
                [store.load(player_id), store.load_settings(player_id)], consumeErrors=True)
            now = self.now()
            fields: dict[str, bytes] = {}
            guilds = frozenset(g for g, k in groups.items() if k == "guild")
            parties = frozenset(g for g, k in groups.items() if k == "party")
            if record.guilds != guilds or record.parties != parties:
                fields["gu"] = ids_field(guilds)
                fields["pa"] = ids_field(parties)
            if settings and any(settings.get(k) != v for k, v in
                                settings_fields(record).items() if k in settings):
                fields.update(settings)  # the durable copy outlives the state
            history = None
            if not record.online:
                fields.update({"on": b"1", "since": repr(now).encode()})
                history = "online"
                self.metrics.transitions.labels("online").inc()
            if fields:
                written: Presence = yield self._write_and_publish(player_id, fields, history)
                return written
            loaded: Presence = record
            return loaded
        finally:
            if locked:
                yield store.unlock(player_id)

    @defer.inlineCallbacks
    def _depart(self, player_id: str) -> Generator[defer.Deferred[Any], Any, None]:
        """The grace ended with no connection here: let go, then settle online/offline."""
        if self.local.present(player_id):
            return  # reconnected while this waited in the queue
        change = self.core.remove_viewer(player_id)
        self._early_blocks.pop(player_id, None)
        yield self._execute(change)
        yield self._store().release(player_id, self.instance_id)
        yield self._settle(player_id, self.now())

    @defer.inlineCallbacks
    def _settle(self, player_id: str, last_seen: float
                ) -> Generator[defer.Deferred[Any], Any, bool]:
        """Announce offline unless a live instance still holds the player; True if announced."""
        store = self._store()
        locked = yield self._lock(player_id)
        try:
            if self.local.present(player_id):
                return False
            holders = yield store.holders(player_id)
            others = holding_elsewhere(holders, self.instance_id)
            if others:
                alive = yield defer.gatherResults([store.alive(i) for i in others],
                                                  consumeErrors=True)
                if any(alive):
                    return False
                for instance in others:  # dead holders: their claim is void
                    yield store.drop_holder(player_id, instance)
            record = yield store.load(player_id)
            if not record.online:
                return False
            yield self._write_and_publish(
                player_id, {"on": b"0", "ls": repr(float(last_seen)).encode()}, "offline")
            self.metrics.transitions.labels("offline").inc()
            yield store.trim_history(player_id, self.now())
            return True
        finally:
            if locked:
                yield store.unlock(player_id)

    @defer.inlineCallbacks
    def _lock(self, player_id: str) -> Generator[defer.Deferred[Any], Any, bool]:
        """The player's transition lock, retried with backoff; False: went ahead without it."""
        assert self.context is not None
        store = self._store()
        delay = 0.005
        waited = 0.0
        while waited < store.retention.lock:
            token = yield store.try_lock(player_id)
            if token is not None:
                return True
            yield task.deferLater(self.context.reactor, delay, lambda: None)
            waited += delay
            delay = min(delay * 2, 0.25)
        log.warn("presence lock of {player} not obtained; going ahead", player=player_id)
        return False

    # ------------------------------------------------------------------ state changes

    @defer.inlineCallbacks
    def _write_and_publish(self, player_id: str, fields: dict[str, bytes],
                           history: str | None = None
                           ) -> Generator[defer.Deferred[Any], Any, Presence]:
        """Write fields, take the next version, read the whole state back and publish it."""
        store = self._store()
        now = self.now()
        yield store.write(player_id, fields)
        version = yield store.next_version(player_id, now)
        record: Presence = yield store.read(player_id, version)
        self._on_state(record)
        self._publish(subject_topic(player_id),
                      presence_pb2.PresenceBusMessage(state=record_to_proto(record)))
        if history is not None:
            entry = presence_pb2.PresenceHistoryEntry(
                at=now, kind=history, instance=self.instance_id,
                zone=record.zone, region=record.region)
            self._background(store.append_history(player_id, entry), "history")
        return record

    def _on_state(self, record: Presence) -> None:
        self._deliver_all(self.core.apply(record))

    # ------------------------------------------------------------------ the bus

    def _bus(self, event: internal_pb2.BusEvent) -> None:
        if self._halted:
            return
        msg = presence_pb2.PresenceBusMessage()
        try:
            msg.ParseFromString(event.payload)
        except DecodeError:
            log.warn("undecodable presence message on {topic}", topic=event.topic)
            return
        kind = msg.WhichOneof("body")
        if kind == "state":
            self._on_state(record_from_proto(msg.state))
        elif kind == "relation":
            self._on_relation(msg.relation)
        elif kind == "group":
            self._on_group(msg.group)
        elif kind == "erased":
            self._on_erased(msg.erased)

    def _on_relation(self, change: presence_pb2.PresenceRelationChange) -> None:
        viewer = change.player_id
        kinds = presence_pb2.PresenceRelationChange
        if change.kind == kinds.KIND_BLOCKED_BY:
            # At once, never queued: the blocker's next update must already be filtered.
            if self.core.viewer(viewer) is not None:
                if self.core.set_blocked_by(viewer, change.other, change.added):
                    if change.added:
                        state = self.core.states.get(change.other)
                        self._deliver(change.other, state.version if state else 0, HIDDEN,
                                      (viewer,))
                    else:
                        self._show(viewer, change.other)
            elif self.local.present(viewer):
                self._early_blocks.setdefault(viewer, {})[change.other] = change.added
            return
        if not self.local.present(viewer):
            return
        self._background(self._serial(viewer, self._relation, change), "relation change")

    @defer.inlineCallbacks
    def _relation(self, change: presence_pb2.PresenceRelationChange
                  ) -> Generator[defer.Deferred[Any], Any, None]:
        viewer, other, added = change.player_id, change.other, change.added
        kinds = presence_pb2.PresenceRelationChange
        if self.core.viewer(viewer) is None:
            return
        if change.kind in (kinds.KIND_FRIEND, kinds.KIND_SUBSCRIPTION):
            reason = W_FRIEND if change.kind == kinds.KIND_FRIEND else W_SUBSCRIBED
            has = bool(self.core.reasons(viewer, other) & reason)
            if added and not has:
                yield self._execute(self.core.watch(viewer, other, reason))
            elif not added and has:
                yield self._execute(self.core.unwatch(viewer, other, reason))
        elif change.kind == kinds.KIND_GROUP:
            kind = _KIND_NAMES.get(change.group_kind, "guild")
            if added:
                members = None
                pinned: list[str] = []
                if not self.core.knows_group(other):
                    pinned = [group_topic(other)]
                    yield self._subscribed(pinned)
                    members = yield self.provider.group_members(other)
                try:
                    yield self._execute(self.core.join_group(viewer, other, kind, members))
                finally:
                    self._unref(pinned)
            else:
                yield self._execute(self.core.leave_group(viewer, other))
            event = presence_pb2.PresenceGroupEvent(group_id=other, kind=change.group_kind,
                                                    player_id=viewer, joined=added)
            self._send_group_event(event, (viewer,))

    def _on_group(self, event: presence_pb2.PresenceGroupEvent) -> None:
        group_id, member = event.group_id, event.player_id
        if not self.core.knows_group(group_id):
            return
        members = [m for m in self.core.local_members(group_id) if m != member]
        if event.joined:
            change = self.core.member_joined(group_id, member)
        else:
            change = self.core.member_left(group_id, member)
        self._send_group_event(event, members)
        self._background(self._execute(change), "group change")

    def _send_group_event(self, event: presence_pb2.PresenceGroupEvent,
                          players: Iterable[str]) -> None:
        gateway = self.gateway
        for player_id in players:
            for transport in gateway.hub.for_player(player_id):
                gateway.send_to_connection(transport.connection, "presence.group", event)

    def _on_erased(self, player_id: str) -> None:
        viewers = self.core.forget(player_id)
        self._deliver(player_id, 0, HIDDEN, viewers)

    def _resync(self) -> None:
        """The bus was away: what it carried meanwhile is lost, so read states and blocks again."""
        if self._halted or self.store is None:
            return
        self._background(self._reload(), "resync")

    @defer.inlineCallbacks
    def _reload(self) -> Generator[defer.Deferred[Any], Any, None]:
        store = self._store()
        subjects = sorted(self.core.states)
        records = yield defer.gatherResults([store.load(s) for s in subjects], consumeErrors=True)
        for record in records:
            self._deliver_all(self.core.apply(record, force=True))
        viewers = sorted(self.core.viewers)
        blocks = yield defer.gatherResults([self.provider.blocked_by(v) for v in viewers],
                                           consumeErrors=True)
        for viewer_id, blocked_by in zip(viewers, blocks, strict=True):
            viewer = self.core.viewer(viewer_id)
            if viewer is None:
                continue
            for blocker in set(blocked_by) ^ viewer.blocked_by:
                on = blocker in blocked_by
                if self.core.set_blocked_by(viewer_id, blocker, on):
                    if on:
                        self._deliver(blocker, 0, HIDDEN, (viewer_id,))
                    else:
                        self._show(viewer_id, blocker)

    # ------------------------------------------------------------------ lifecycle (cluster)

    def start(self) -> None:
        if self.cluster is not None and not self._halted:
            self.cluster.start()

    def halt(self) -> None:
        """Stop all presence work at once, with no clean-up: what a crash looks like to the
        rest of the cluster (tests and fault drills).  The instance's players are released
        by a survivor once its liveness key expires."""
        self._halted = True
        self._stop()
        if self.cluster is not None:
            self.cluster.halt()

    def stop(self) -> defer.Deferred[None] | None:
        """Clean shutdown (after the drain): stop counting as alive, at once.

        Players still held here are released by a survivor after the grace
        period, so those who reconnect elsewhere meanwhile never flicker offline.
        """
        already = self._halted
        self._halted = True
        self._stop()
        if already or self.cluster is None:
            return None
        return self.cluster.retire()

    def _stop(self) -> None:
        if self._remove_tick is not None:
            self._remove_tick()
            self._remove_tick = None

    # The cluster's host interface.

    def population_counts(self) -> tuple[int, dict[str, int]]:
        return self.core.population()

    def present_players(self) -> list[str]:
        return list(self.core.viewers)

    def settle(self, player_id: str, last_seen: float) -> defer.Deferred[Any]:
        return self._serial(player_id, self._settle, player_id, last_seen)

    def reassert(self) -> None:
        for player_id in self.local.players():
            self._background(self._serial(player_id, self._rehold, player_id), "reassert")

    @defer.inlineCallbacks
    def _rehold(self, player_id: str) -> Generator[defer.Deferred[Any], Any, None]:
        if not self.local.present(player_id):
            return
        yield self._store().hold(player_id, self.instance_id)
        groups = yield self.provider.groups(player_id)
        record = yield self._announce(player_id, groups)
        self._deliver_all(self.core.apply(record))

    # ------------------------------------------------------------------ validators

    def _validate_ids(self, ctx: EventContext, msg: Any) -> None:
        ids = list(msg.player_ids)
        if not ids:
            raise ValidationError("player_ids is empty")
        if len(ids) > self.config.max_subscriptions:
            raise ValidationError(f"at most {self.config.max_subscriptions} players per request")
        for player_id in ids:
            _valid_id(player_id)
            if player_id == ctx.player_id:
                raise ValidationError("you always see your own presence")

    def _validate_status(self, ctx: EventContext, msg: presence_pb2.PresenceSetStatus) -> None:
        for value, limit, what in ((msg.status, self.config.max_status_length, "status"),
                                   (msg.activity, self.config.max_activity_length, "activity")):
            problem = check_text(value, limit, what)
            if problem:
                raise ValidationError(problem)

    def _validate_location(self, ctx: EventContext,
                           msg: presence_pb2.PresenceSetLocation) -> None:
        for value, what in ((msg.zone, "zone"), (msg.region, "region")):
            problem = check_text(value, self.config.max_location_length, what)
            if problem:
                raise ValidationError(problem)

    def _validate_privacy(self, ctx: EventContext, msg: presence_pb2.PresencePrivacy) -> None:
        for name in ("online", "location", "status"):
            if msg.HasField(name):
                _audience_bits(getattr(msg, name).audiences)

    def _validate_block(self, ctx: EventContext, msg: presence_pb2.PresenceBlock) -> None:
        _valid_id(msg.player_id)
        if msg.player_id == ctx.player_id:
            raise ValidationError("you cannot block yourself")

    # ------------------------------------------------------------------ client events

    @handles("presence.subscribe")
    def on_subscribe(self, ctx: EventContext, msg: presence_pb2.PresenceSubscribe
                     ) -> defer.Deferred[None]:
        return self._serial(ctx.player_id, self._subscribe, ctx, unique(msg.player_ids))

    @defer.inlineCallbacks
    def _subscribe(self, ctx: EventContext, wanted: list[str]
                   ) -> Generator[defer.Deferred[Any], Any, None]:
        player_id = ctx.player_id
        viewer = self.core.viewer(player_id)
        if viewer is None:
            raise EventError(ErrorCode.UNAVAILABLE, "presence is not ready for you yet")
        new = [s for s in wanted if not self.core.reasons(player_id, s) & W_SUBSCRIBED]
        if viewer.subscriptions + len(new) > self.config.max_subscriptions:
            raise EventError(ErrorCode.BAD_REQUEST,
                             f"at most {self.config.max_subscriptions} subscriptions")
        topics = [subject_topic(s) for s in new]
        yield self._subscribed(topics)  # then read the blocks: none slips in between
        try:
            blocked_by = yield self.provider.blocked_by(player_id)
            for blocker in blocked_by:
                self.core.set_blocked_by(player_id, blocker, True)
            refused = sorted(s for s in wanted if s in blocked_by)
            if refused:
                raise EventError(
                    ErrorCode.BAD_REQUEST,
                    f"{refused[0][:64]} blocks you: you cannot subscribe to their presence")
            if new:
                yield self._store().subscribe(player_id, new)
                change = Change()
                for subject in new:
                    change.merge(self.core.watch(player_id, subject, W_SUBSCRIBED))
                yield self._execute(change, exclude=player_id)
                for subject in new:
                    self._notify_relation(RelationEdit("subscription", player_id, subject, True))
        finally:
            self._unref(topics)
        views = []
        for subject in wanted:
            seen = self.core.view_of(player_id, subject)
            if seen is not None:
                state = self.core.states.get(subject)
                views.append((subject, state.version if state else 0, seen))
        for message in self._snapshot_messages(views) or [presence_pb2.PresenceSnapshot()]:
            ctx.reply("presence.snapshot", message)

    @handles("presence.unsubscribe")
    def on_unsubscribe(self, ctx: EventContext, msg: presence_pb2.PresenceUnsubscribe
                       ) -> defer.Deferred[None]:
        return self._serial(ctx.player_id, self._unsubscribe, ctx, unique(msg.player_ids))

    @defer.inlineCallbacks
    def _unsubscribe(self, ctx: EventContext, subjects: list[str]
                     ) -> Generator[defer.Deferred[Any], Any, None]:
        player_id = ctx.player_id
        had = [s for s in subjects if self.core.reasons(player_id, s) & W_SUBSCRIBED]
        if had:
            yield self._store().unsubscribe(player_id, had)
        change = Change()
        for subject in had:
            change.merge(self.core.unwatch(player_id, subject, W_SUBSCRIBED))
            self._notify_relation(RelationEdit("subscription", player_id, subject, False))
        yield self._execute(change, exclude=player_id)
        reply = presence_pb2.PresenceSnapshot()
        for subject in subjects:
            seen = self.core.view_of(player_id, subject)
            if seen is None:
                reply.players.append(self._view_message(subject, 0, HIDDEN, unwatched=True))
            else:
                state = self.core.states.get(subject)
                reply.players.append(
                    self._view_message(subject, state.version if state else 0, seen))
        ctx.reply("presence.snapshot", reply)

    @handles("presence.set_status")
    def on_set_status(self, ctx: EventContext, msg: presence_pb2.PresenceSetStatus
                      ) -> defer.Deferred[Presence]:
        return self.set_status(ctx.player_id, msg.status, msg.activity)

    @handles("presence.set_location")
    def on_set_location(self, ctx: EventContext, msg: presence_pb2.PresenceSetLocation
                        ) -> defer.Deferred[Presence]:
        if not self.config.client_location:
            raise EventError(ErrorCode.BAD_REQUEST, "locations are set by the server")
        return self.set_location(ctx.player_id, msg.zone, msg.region)

    @handles("presence.set_privacy")
    def on_set_privacy(self, ctx: EventContext, msg: presence_pb2.PresencePrivacy
                       ) -> defer.Deferred[None]:
        def bits(name: str) -> int | None:
            return _audience_bits(getattr(msg, name).audiences) if msg.HasField(name) else None

        d = self.set_privacy(ctx.player_id, online=bits("online"), location=bits("location"),
                             status=bits("status"),
                             invisible=msg.invisible if msg.HasField("invisible") else None)

        def answer(record: Presence) -> None:
            ctx.reply("presence.privacy", presence_pb2.PresencePrivacy(
                online=_audience_set(record.vis_online),
                location=_audience_set(record.vis_location),
                status=_audience_set(record.vis_status),
                invisible=record.invisible,
            ))

        return d.addCallback(answer)

    @handles("presence.block")
    @defer.inlineCallbacks
    def on_block(self, ctx: EventContext, msg: presence_pb2.PresenceBlock
                 ) -> Generator[defer.Deferred[Any], Any, None]:
        player_id = ctx.player_id
        if msg.blocked:
            blocks = yield self.provider.blocks(player_id)
            if msg.player_id not in blocks and len(blocks) >= self.config.max_blocks:
                raise EventError(ErrorCode.BAD_REQUEST,
                                 f"at most {self.config.max_blocks} blocked players")
            yield self.block(player_id, msg.player_id)
        else:
            yield self.unblock(player_id, msg.player_id)
        blocks = yield self.provider.blocks(player_id)
        ctx.reply("presence.block_list", presence_pb2.PresenceBlockList(player_ids=sorted(blocks)))

    # ------------------------------------------------------------------ server-side API

    def set_location(self, player_id: str, zone: str, region: str = ""
                     ) -> defer.Deferred[Presence]:
        """Where the player is (set by a handler or a plugin; clients only if allowed)."""
        return self._write_and_publish(
            player_id, {"z": zone.encode(), "r": region.encode()}, "location")

    def set_status(self, player_id: str, status: str, activity: str = ""
                   ) -> defer.Deferred[Presence]:
        return self._write_and_publish(
            player_id, {"st": status.encode(), "ac": activity.encode()})

    @defer.inlineCallbacks
    def set_privacy(self, player_id: str, *, online: int | None = None,
                    location: int | None = None, status: int | None = None,
                    invisible: bool | None = None
                    ) -> Generator[defer.Deferred[Any], Any, Presence]:
        """Change audiences (bitmasks of gateway.presence.core) and invisible mode."""
        store = self._store()
        record, settings = yield defer.gatherResults(
            [store.load(player_id), store.load_settings(player_id)], consumeErrors=True)
        record = with_settings(record, settings)
        changes: dict[str, Any] = {}
        if online is not None:
            changes["vis_online"] = online
        if location is not None:
            changes["vis_location"] = location
        if status is not None:
            changes["vis_status"] = status
        history = None
        fields: dict[str, bytes] = {}
        if invisible is not None and invisible != record.invisible:
            changes["invisible"] = invisible
            history = "invisible" if invisible else "visible"
            if invisible:  # from now on, others see the last time it was visibly online
                since = self.now() if record.online else record.last_seen
                fields["invs"] = repr(float(since)).encode()
        if not changes:
            return record
        updated = record.changed(**changes)
        fields.update(settings_fields(updated))
        yield store.save_settings(player_id, settings_fields(updated))
        result: Presence = yield self._write_and_publish(player_id, fields, history)
        return result

    def add_friend(self, player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        return self._change(self.provider.add_friend(player_id, other))

    def remove_friend(self, player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        return self._change(self.provider.remove_friend(player_id, other))

    @defer.inlineCallbacks
    def block(self, player_id: str, other: str
              ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
        """``player_id`` blocks ``other``: every instance stops showing them ``player_id``."""
        edits: list[RelationEdit] = yield self._change(self.provider.block(player_id, other))
        subscribed = yield self._store().subscriptions(other)
        if player_id in subscribed:  # a blocked player cannot keep a subscription either
            yield self._store().unsubscribe(other, [player_id])
            self._notify_relation(RelationEdit("subscription", other, player_id, False))
        return edits

    def unblock(self, player_id: str, other: str) -> defer.Deferred[list[RelationEdit]]:
        return self._change(self.provider.unblock(player_id, other))

    def join_group(self, player_id: str, group_id: str, kind: str
                   ) -> defer.Deferred[list[RelationEdit]]:
        parse_group_kind(kind)
        return self._change(self.provider.join_group(player_id, group_id, kind))

    def leave_group(self, player_id: str, group_id: str) -> defer.Deferred[list[RelationEdit]]:
        return self._change(self.provider.leave_group(player_id, group_id))

    def relation_changed(self, edits: Iterable[RelationEdit]) -> defer.Deferred[None]:
        """A provider's data changed outside the gateway: tell every instance."""
        return self._change(defer.succeed(list(edits))).addCallback(lambda _: None)

    def _change(self, d: defer.Deferred[list[RelationEdit]]
                ) -> defer.Deferred[list[RelationEdit]]:
        @defer.inlineCallbacks
        def notify(edits: list[RelationEdit]
                   ) -> Generator[defer.Deferred[Any], Any, list[RelationEdit]]:
            regroup = set()
            for edit in edits:
                self._notify_relation(edit)
                if edit.kind == "group":
                    regroup.add(edit.player_id)
            for player_id in sorted(regroup):
                yield self._republish_groups(player_id)
            return edits

        return d.addCallback(notify)

    def _notify_relation(self, edit: RelationEdit) -> None:
        change = presence_pb2.PresenceRelationChange(
            player_id=edit.player_id, kind=_RELATION_KINDS[edit.kind], other=edit.other,
            added=edit.added,
            group_kind=_KIND_VALUES.get(edit.group_kind, 0))  # type: ignore[arg-type]
        self._on_relation(change)
        self._publish(subject_topic(edit.player_id),
                      presence_pb2.PresenceBusMessage(relation=change))
        if edit.kind == "group":
            event = presence_pb2.PresenceGroupEvent(
                group_id=edit.other, kind=change.group_kind, player_id=edit.player_id,
                joined=edit.added)
            self._on_group(event)
            self._publish(group_topic(edit.other), presence_pb2.PresenceBusMessage(group=event))

    @defer.inlineCallbacks
    def _republish_groups(self, player_id: str) -> Generator[defer.Deferred[Any], Any, None]:
        """The player's groups travel with its state (GUILD/PARTY audiences): refresh them."""
        groups = yield self.provider.groups(player_id)
        yield self._write_and_publish(player_id, {
            "gu": ids_field(g for g, k in groups.items() if k == "guild"),
            "pa": ids_field(g for g, k in groups.items() if k == "party"),
        })

    def get(self, player_id: str) -> defer.Deferred[Presence]:
        """The player's stored presence (unfiltered: for server code, not for clients)."""
        return self._store().load(player_id)

    def population(self) -> dict[str, Any]:
        total, zones = self.core.population()
        merged = dict(self.cluster.global_population if self.cluster is not None else {})
        return {
            "instance_id": self.instance_id,
            "instance": {"players": total, "zones": zones},
            "global": {"players": merged.pop(TOTAL, total), "zones": merged},
        }

    # ------------------------------------------------------------------ GDPR

    @defer.inlineCallbacks
    def export(self, player_id: str) -> Generator[defer.Deferred[Any], Any, dict[str, Any]]:
        """Everything held about the player's presence and relations, JSON-ready."""
        data: dict[str, Any] = yield self._store().export(player_id, self.now())
        relations = yield self.provider.export(player_id)
        data["relations"] = relations
        return data

    @defer.inlineCallbacks
    def erase(self, player_id: str) -> Generator[defer.Deferred[Any], Any, dict[str, Any]]:
        """Erase the player's presence data everywhere; refused while they are online."""
        store = self._store()
        holders = yield store.holders(player_id)
        held = holding_elsewhere(holders, "")
        alive = yield defer.gatherResults([store.alive(i) for i in held], consumeErrors=True)
        if self.local.present(player_id) or any(alive):
            raise PlayerOnline(player_id)
        edits = yield self.provider.erase(player_id)
        subscribers = yield store.erase(player_id)
        for edit in edits:
            self._notify_relation(edit)
        for viewer in subscribers:
            self._notify_relation(RelationEdit("subscription", viewer, player_id, False))
        self._on_erased(player_id)
        self._publish(subject_topic(player_id), presence_pb2.PresenceBusMessage(erased=player_id))
        log.info("presence data of a player erased ({count} relations)", count=len(edits))
        return {"erased": True, "relations": len(edits), "subscribers": len(subscribers)}


presence: Any = PresencePlugin()
