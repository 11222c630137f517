"""State sync: the thin adapter between the tick scheduler, the game and the sans-io core.

The logic lives in gateway/state/ (docs/StateSync.md); this plugin only:

* finds the game's StateProvider(s): ``[plugin.state] provider =
  "module:attribute"``, loaded plugins that provide ``IStateProvider``, or a
  plugin that calls :meth:`StatePlugin.register_provider` in its setup
  (declaring ``requires = ("state",)``);
* on every ``rate``-th critical tick: hands the inputs received since the
  last sync to the provider, advances it, feeds its entities to the
  :class:`~gateway.state.sync.SyncEngine` and queues each player's update
  (``state.snapshot`` / ``state.delta``, unreliable, keyed ``"state"`` so a
  newer one replaces one still queued), debiting the player's byte budget
  with the bytes actually queued;
* on every authenticated connection (new or resumed): asks the provider for
  the player's entity, sends ``state.schema`` and starts a new viewer, whose
  first update is a full snapshot; on disconnect: drops it.

With no provider the plugin does nothing at all (no events, no tick work).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from zope.interface.verify import verifyObject

from gateway.config import ConfigError
from gateway.events import EventContext, EventSpec
from gateway.plugin import GatewayPlugin, PluginContext, handles
from gateway.state.codec import varint
from gateway.state.events import (
    ACK,
    DELTA,
    INPUT,
    SCHEMA,
    SNAPSHOT,
    UPDATE_KEY,
    state_event_specs,
)
from gateway.state.provider import EntityState, FieldSpec, IStateProvider, Schema
from gateway.state.ring import REJECT_LATE, classify_input
from gateway.state.sync import KindRate, SyncConfig, SyncEngine
from gateway.tick import TickInfo
from gateway.wire import OutEvent
from protocol import events_pb2, state_pb2

__all__ = ["BudgetOverride", "KindConfig", "StateConfig", "StatePlugin"]

log = Logger()


@dataclass(frozen=True)
class BudgetOverride:
    """[[plugin.state.budgets]]: one player's own budget."""

    player: str
    bytes_per_second: int


@dataclass(frozen=True)
class KindConfig:
    """[[plugin.state.kinds]]: update rate and priority of one entity kind."""

    kind: int
    hz: float = 0.0  # 0: every sync tick; e.g. 10 for the "normal" rate
    priority: float = 1.0


@dataclass(frozen=True)
class StateConfig:
    """The [plugin.state] table (conf/rtgateway.toml documents every option)."""

    # "module:attribute" of a provider object (or a factory called with no argument);
    # empty: providers come from the plugin system.
    provider: str = ""
    # Updates per second; must divide tick.critical_hz (60: 1, 2, 3, 4, 5, 6, 10, 12, 15, 20...).
    rate: int = 20
    # Per-player bandwidth for state, bytes per second, and the bucket size (0: rate / 4).
    bytes_per_second: int = 24000
    burst_bytes: int = 0
    # Per-player budgets: [[plugin.state.budgets]] player = "..." bytes_per_second = ...
    budgets: tuple[BudgetOverride, ...] = ()
    # A token claim (integer bytes per second) overriding the budget for its player ("": none).
    budget_claim: str = "state_budget"
    # Interest grid (metres): cell size, view radius, and the radius beyond which
    # entities are updated far_divisor times less often.
    cell_size: float = 32.0
    view_radius: float = 96.0
    near_radius: float = 48.0
    far_divisor: int = 2
    kinds: tuple[KindConfig, ...] = ()
    # Seconds between periodic full snapshots (0: never), and the age of the oldest
    # unacknowledged update after which a client gets a full snapshot.
    full_snapshot_interval: float = 30.0
    baseline_max_age: float = 2.0
    # World states kept for lag compensation, in sync ticks; inputs made for an older
    # tick are rejected as late.
    ring_depth: int = 32
    # Quantisation: units per metre, and the dead-reckoning tolerances in those units.
    position_scale: int = 64
    position_tolerance: int = 2
    velocity_tolerance: int = 4
    # Seconds between updates to an idle player (they carry the tick and input acks).
    keepalive: float = 1.0


class StatePlugin(GatewayPlugin):
    name = "state"
    version = "1.0"
    config_class = StateConfig

    def __init__(self) -> None:
        self.config: StateConfig = StateConfig()
        self.context: PluginContext | None = None
        self.providers: list[Any] = []
        self.engine: SyncEngine | None = None
        self.interval = 1
        self._last_sync: int | None = None
        self._dt = 0.0
        self._inputs: dict[int, list[state_pb2.InputCommand]] = {}  # connection id -> queued
        self._applied: dict[int, int] = {}  # connection id -> highest input seq taken
        self._owner: dict[int, Any] = {}  # connection id -> provider owning its entity
        self._joined: dict[int, tuple[Any, str]] = {}  # connection id -> (transport, player)
        self._prefix: dict[tuple[str, int], bytes] = {}
        self.late_inputs = 0
        self.last_tick_seconds = 0.0

    def event_specs(self) -> tuple[EventSpec, ...]:
        return state_event_specs()

    # ------------------------------------------------------------------ providers

    def register_provider(self, provider: Any) -> None:
        """Add a StateProvider (from a plugin's setup, or an embedding application).

        Call it before players connect: the engine is rebuilt with the merged schema.
        """
        if not hasattr(provider, "entity_states") or not hasattr(provider, "schema"):
            raise TypeError(f"{provider!r} is not a StateProvider")
        if IStateProvider.providedBy(provider):
            verifyObject(IStateProvider, provider)
        if provider in self.providers:
            return
        self.providers.append(provider)
        if self.context is not None:
            self._build_engine()

    def _configured_provider(self) -> Any:
        spec = self.config.provider
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ConfigError("plugin.state.provider", "expected 'module:attribute'")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError("plugin.state.provider", f"cannot load {spec!r}: {exc}")
        return target() if isinstance(target, type) or (
            callable(target) and not hasattr(target, "entity_states")) else target

    def _schema(self) -> Schema:
        kinds: dict[int, tuple[FieldSpec, ...]] = {}
        for provider in self.providers:
            for kind, specs in provider.schema.kinds.items():
                if kind in kinds and tuple(kinds[kind]) != tuple(specs):
                    raise ConfigError("plugin.state", f"two providers define entity kind {kind}")
                kinds[kind] = tuple(specs)
        return Schema(kinds)

    def _build_engine(self) -> None:
        assert self.context is not None
        cfg = self.config
        hz = self.context.gateway_config.tick.critical_hz
        kinds = tuple(
            KindRate(k.kind, max(1, round(hz / k.hz)) if k.hz else 1, k.priority)
            for k in cfg.kinds
        )
        sync = SyncConfig(
            tick_rate=hz,
            position_scale=cfg.position_scale,
            position_tolerance=cfg.position_tolerance,
            velocity_tolerance=cfg.velocity_tolerance,
            bytes_per_second=cfg.bytes_per_second,
            burst_bytes=cfg.burst_bytes,
            full_interval=round(cfg.full_snapshot_interval * hz),
            baseline_max_age=max(1, round(cfg.baseline_max_age * hz)),
            keepalive=round(cfg.keepalive * hz),
            ring_depth=cfg.ring_depth,
            cell_size=cfg.cell_size,
            view_radius=cfg.view_radius,
            near_radius=cfg.near_radius,
            far_interval=cfg.far_divisor,
            kinds=kinds,
        )
        self.engine = SyncEngine(self._schema(), sync)

    # ------------------------------------------------------------------ setup

    def setup(self, context: PluginContext) -> None:
        self.context = context
        cfg = self.config
        hz = context.gateway_config.tick.critical_hz
        if cfg.rate < 1 or hz % cfg.rate:
            raise ConfigError("plugin.state.rate", f"must divide tick.critical_hz ({hz})")
        if cfg.bytes_per_second < 256:
            raise ConfigError("plugin.state.bytes_per_second", "must be at least 256")
        if cfg.cell_size <= 0 or cfg.view_radius <= 0:
            raise ConfigError("plugin.state", "cell_size and view_radius must be > 0")
        if cfg.ring_depth < 1:
            raise ConfigError("plugin.state.ring_depth", "must be at least 1")
        self.interval = hz // cfg.rate
        if cfg.provider:
            self.providers.append(self._configured_provider())
        for plugin in context.plugins.values():
            if IStateProvider.providedBy(plugin) and plugin not in self.providers:
                self.providers.append(plugin)
        self._build_engine()
        gateway = context.gateway
        gateway.on_authenticated.append(self._joined_hook)
        gateway.on_disconnected.append(self._left_hook)
        context.ticks.add("critical", self._tick, name="state sync")

    # ------------------------------------------------------------------ players

    def _joined_hook(self, transport: Any) -> None:
        if not self.providers or self.engine is None:
            return
        conn = transport.connection
        entity = None
        owner = self.providers[0]
        for provider in self.providers:
            found = provider.player_joined(conn.player_id)
            if found is not None and entity is None:
                entity, owner = found, provider
        budget = self._budget_for(conn)
        self.engine.add_viewer(conn.id, conn.player_id, entity, budget)
        self._owner[conn.id] = owner
        self._joined[conn.id] = (transport, conn.player_id)
        self._applied[conn.id] = 0
        schema = self._schema_message(entity)
        assert self.context is not None
        self.context.gateway.send_to_connection(conn, SCHEMA, schema)

    def _left_hook(self, transport: Any) -> None:
        conn = transport.connection
        if self._joined.pop(conn.id, None) is None:
            return
        self._inputs.pop(conn.id, None)
        self._applied.pop(conn.id, None)
        self._owner.pop(conn.id, None)
        if self.engine is not None:
            self.engine.remove_viewer(conn.id)
        for provider in self.providers:
            provider.player_left(conn.player_id)

    def _budget_for(self, conn: Any) -> int:
        cfg = self.config
        for override in cfg.budgets:
            if override.player == conn.player_id:
                return override.bytes_per_second
        if cfg.budget_claim:
            claimed = conn.claims.get(cfg.budget_claim)
            if isinstance(claimed, int) and not isinstance(claimed, bool) and claimed >= 256:
                return claimed
        return cfg.bytes_per_second

    def set_budget(self, player_id: str, bytes_per_second: int) -> int:
        """Change a connected player's budget now; returns how many connections changed."""
        changed = 0
        if self.engine is None:
            return 0
        for key, (_transport, player) in self._joined.items():
            if player == player_id:
                self.engine.set_budget(key, bytes_per_second)
                changed += 1
        return changed

    def _schema_message(self, entity: int | None) -> state_pb2.StateSchema:
        assert self.engine is not None
        cfg = self.engine.config
        msg = state_pb2.StateSchema(
            tick_rate=cfg.tick_rate,
            position_scale=cfg.position_scale,
            sync_interval=self.interval,
            position_tolerance=cfg.position_tolerance,
        )
        for kind, specs in sorted(self.engine.schema.kinds.items()):
            k = msg.kinds.add(kind=kind)
            for f in specs:
                k.fields.add(name=f.name, kind=f.kind, step=f.step)
        if entity is not None:
            msg.entity_id = entity
        return msg

    # ------------------------------------------------------------------ inbound

    @handles(ACK)
    def on_ack(self, ctx: EventContext, msg: state_pb2.StateAck) -> None:
        if self.engine is not None:
            self.engine.ack(ctx.connection.id, msg.seq, msg.received, msg.resync)

    @handles(INPUT)
    def on_input(self, ctx: EventContext, msg: state_pb2.PlayerInput) -> None:
        key = ctx.connection.id
        if key not in self._joined:
            return
        if msg.HasField("ack") and self.engine is not None:
            self.engine.ack(key, msg.ack.seq, msg.ack.received, msg.ack.resync)
        taken = self._applied.get(key, 0)
        queue = self._inputs.setdefault(key, [])
        for command in msg.inputs:
            if command.seq > taken:  # repeats of inputs already taken are dropped here
                queue.append(command)
                taken = command.seq
        self._applied[key] = taken
        if len(queue) > 256:
            del queue[:-256]

    # ------------------------------------------------------------------ the tick

    def _tick(self, info: TickInfo) -> None:
        self._dt += info.dt
        if not self.providers or self.engine is None:
            self._dt = 0.0
            return
        if self._last_sync is not None and info.number - self._last_sync < self.interval:
            return
        self._last_sync = info.number
        dt, self._dt = self._dt, 0.0
        started = time.perf_counter()
        engine = self.engine
        tick = info.number
        self._apply_inputs(tick)
        for provider in self.providers:
            provider.advance(tick, dt)
        engine.update(tick, self._states(tick))
        for key, (_transport, player) in self._joined.items():
            viewer = engine.viewers.get(key)
            if viewer is not None and viewer.entity is None:
                where = self._owner[key].view_position(player)
                if where is not None:
                    engine.set_view_position(key, where[0], where[1])
        self._send(engine.build(tick, dt))
        self.last_tick_seconds = time.perf_counter() - started

    def _states(self, tick: int) -> Iterator[EntityState]:
        for provider in self.providers:
            yield from provider.entity_states(tick)

    def _apply_inputs(self, tick: int) -> None:
        assert self.engine is not None
        ring = self.engine.ring
        for key, queue in self._inputs.items():
            if not queue:
                continue
            joined = self._joined.get(key)
            if joined is None:
                continue
            provider = self._owner[key]
            player = joined[1]
            last = 0
            for command in queue:
                if classify_input(command.tick, ring) == REJECT_LATE:
                    self.late_inputs += 1
                    continue
                last = provider.apply_input(player, command.seq, command.tick, command.data)
            queue.clear()
            if last:
                self.engine.set_input_seq(key, last)

    def _send(self, built: Iterable[tuple[Any, bytes, bool]]) -> None:
        assert self.context is not None and self.engine is not None
        gateway = self.context.gateway
        hub = gateway.hub
        engine = self.engine
        for viewer, payload, full in built:
            transport = hub.get(viewer.key)
            if transport is None:
                continue
            type_ = SNAPSHOT if full else DELTA
            version = transport.connection.versions.get(type_)
            if version is None:
                continue
            event = self._event(type_, version, payload)
            if hub.deliver(transport, event):
                engine.charge(viewer.key, event.size)

    def _event(self, type_: str, version: int, payload: bytes) -> OutEvent:
        """The Envelope body, joined from a cached prefix: no protobuf object per player."""
        prefix = self._prefix.get((type_, version))
        if prefix is None:
            spec = self.context.registry[type_] if self.context is not None else None
            priority = int(spec.priority) if spec is not None else events_pb2.PRIORITY_HIGH
            prefix = events_pb2.Envelope(type=type_, version=version).SerializeToString()
            self._prefix[(type_, version)] = prefix
            self._priority = priority
        body = prefix + b"\x2a" + varint(len(payload)) + payload + b"\x30" + bytes(
            (self._priority,))
        return OutEvent(type_, body, self._priority, False, UPDATE_KEY)

    _priority: int = events_pb2.PRIORITY_HIGH


state: Any = StatePlugin()
