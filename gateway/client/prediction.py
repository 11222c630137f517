"""Client side of state sync: reconstruction, acks, prediction, interpolation.

The sans-io pieces (no reactor, no sockets; times and ticks are arguments):

:class:`StateReplica`
    Rebuilds the server's entity versions from ``state.snapshot`` /
    ``state.delta`` payloads (records against versions it holds, see
    gateway.state.codec), keeps the few older versions the server may still
    use as bases, reports entries and exits of the view, and produces the
    ``state.ack`` (newest seq + a mask of the 64 before it).  An update it
    cannot apply (a missing base) makes it ask for a full snapshot.

:class:`InputBuffer`
    Numbers the player's input commands and repeats the ones the server has
    not confirmed in every ``player.input`` message, so a lost message is
    repaired by the next one.

:class:`Reconciler`
    Client-side prediction: applies each input locally at once with the
    game's own step function, and when an authoritative state arrives with
    the last input the server applied, restarts from it and replays the
    inputs still unconfirmed (smoothing the visible correction is the game's choice:
    ``corrections`` counts them).

:class:`Interpolator`
    Remote entities are drawn ``delay`` seconds in the past, between the two
    snapshots around that time (positions linearly, rotations by normalised
    quaternion lerp), so they move smoothly at any frame rate whatever the
    update rate and jitter.

:class:`StateClient` binds them to a :class:`~gateway.client.GatewayClient`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway.state.codec import (
    REMOVED,
    WIRE_BYTES,
    WIRE_INT,
    StateDecodeError,
    Version,
    decode_records,
)
from gateway.state.provider import FieldSpec, Schema
from gateway.state.quantize import extrapolate, unpack_rotation
from protocol import state_pb2

if TYPE_CHECKING:
    from gateway.client.client import GatewayClient
    from gateway.client.session import Incoming

__all__ = [
    "EntityView",
    "InputBuffer",
    "Interpolator",
    "Reconciler",
    "ReplicaSchema",
    "StateClient",
    "StateReplica",
]

_MASK64 = (1 << 64) - 1
S = TypeVar("S")
I = TypeVar("I")  # noqa: E741


# ---------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ReplicaSchema:
    """What a client needs to decode records (the ``state.schema`` event)."""

    tick_rate: int = 60
    position_scale: int = 64
    sync_interval: int = 1
    kinds: Mapping[int, Sequence[FieldSpec]] = field(default_factory=dict)
    entity_id: int | None = None
    position_tolerance: int = 2

    @classmethod
    def from_message(cls, msg: state_pb2.StateSchema) -> ReplicaSchema:
        kinds = {
            k.kind: tuple(FieldSpec(f.name, f.kind, f.step or 1.0) for f in k.fields)
            for k in msg.kinds
        }
        return cls(
            tick_rate=msg.tick_rate or 60,
            position_scale=msg.position_scale or 64,
            sync_interval=msg.sync_interval or 1,
            kinds=kinds,
            entity_id=msg.entity_id if msg.HasField("entity_id") else None,
            position_tolerance=msg.position_tolerance,
        )

    @classmethod
    def from_schema(cls, schema: Schema, *, tick_rate: int = 60, position_scale: int = 64,
                    sync_interval: int = 1, entity_id: int | None = None,
                    position_tolerance: int = 2) -> ReplicaSchema:
        return cls(tick_rate, position_scale, sync_interval, dict(schema.kinds), entity_id,
                   position_tolerance)

    def to_message(self) -> state_pb2.StateSchema:
        msg = state_pb2.StateSchema(
            tick_rate=self.tick_rate,
            position_scale=self.position_scale,
            sync_interval=self.sync_interval,
            position_tolerance=self.position_tolerance,
        )
        for kind, specs in sorted(self.kinds.items()):
            k = msg.kinds.add(kind=kind)
            for f in specs:
                k.fields.add(name=f.name, kind=f.kind, step=f.step)
        if self.entity_id is not None:
            msg.entity_id = self.entity_id
        return msg


@dataclass(slots=True)
class EntityView:
    """An entity materialised at a tick: metres, m/s, a quaternion, decoded fields."""

    id: int
    kind: int
    x: float
    y: float
    z: float
    rotation: tuple[float, float, float, float]
    vx: float
    vy: float
    vz: float
    fields: dict[str, Any]


# ---------------------------------------------------------------------------- replica


class StateReplica:
    """The client's copy of what the server sends it (sans-io)."""

    def __init__(self, schema: ReplicaSchema | None = None, *, max_history: int = 64) -> None:
        self.schema = schema or ReplicaSchema()
        self.max_history = max_history
        #: entity id -> current version tuple (gateway.state.codec layout)
        self.entities: dict[int, Version] = {}
        self._history: dict[int, dict[int, Version]] = {}
        # entity -> newest base version used by this update (pruned after it)
        self._last_base: dict[int, int] = {}
        self.epoch = 0
        self.tick = 0
        self.seq = 0
        self.input_seq = 0
        self.updates = 0
        self.ignored = 0  # updates of another epoch (waiting for a full snapshot)
        self.full_snapshots = 0
        self._ack_seq = 0
        self._ack_mask = 0
        self.ack_pending = False
        self._resync = False
        self.on_enter: list[Callable[[int], object]] = []
        self.on_leave: list[Callable[[int], object]] = []
        self._set_schema(self.schema)

    def _set_schema(self, schema: ReplicaSchema) -> None:
        self.schema = schema
        self._wire = {
            kind: tuple(WIRE_BYTES if f.kind == "bytes" else WIRE_INT for f in specs)
            for kind, specs in schema.kinds.items()
        }
        self._defaults = {
            kind: tuple(b"" if f.kind == "bytes" else 0 for f in specs)
            for kind, specs in schema.kinds.items()
        }

    def set_schema(self, schema: ReplicaSchema) -> None:
        """A new schema (``state.schema``): state decoded with the old one is dropped."""
        self._set_schema(schema)
        self.reset()

    @property
    def synced(self) -> bool:
        return self.epoch != 0

    def reset(self) -> None:
        """Forget the epoch (a new connection): updates are ignored until a full snapshot."""
        self.epoch = 0
        self._ack_seq = 0
        self._ack_mask = 0
        self.ack_pending = False

    # ------------------------------------------------------------------ applying

    def apply_message(self, msg: state_pb2.StateUpdate) -> bool:
        return self.apply(msg.seq, msg.tick, msg.input_seq, msg.full, msg.records,
                          msg.epoch)

    def apply(self, seq: int, tick: int, input_seq: int, full: bool, records: bytes,
              epoch: int) -> bool:
        """Apply one update; False when it was ignored (another epoch, or undecodable)."""
        if not full and (epoch != self.epoch or not self.epoch):
            self.ignored += 1
            return False
        history = self._history
        try:
            decoded = decode_records(records, tick, self.schema.tick_rate, self._base,
                                     self._wire_of, self._defaults_of)
        except StateDecodeError:
            # Something we cannot apply: wait for a full snapshot, and ask for one.
            self.epoch = 0
            self._resync = True
            self.ack_pending = True
            return False
        entered: list[int] = []
        left: list[int] = []
        entities = self.entities
        if full:
            before = set(entities)
            entities.clear()
            history.clear()
            self.epoch = seq
            self._ack_seq = 0
            self._ack_mask = 0
            self._resync = False
            self.full_snapshots += 1
        else:
            before = set()
        for op, eid, state in decoded:
            if op == REMOVED:
                if entities.pop(eid, None) is not None:
                    left.append(eid)
                history.pop(eid, None)
                continue
            assert state is not None
            versions = history.get(eid)
            if versions is None:
                versions = history[eid] = {}
            versions[state[0]] = state
            if eid not in entities and (not full or eid not in before):
                entered.append(eid)
            entities[eid] = state
            if len(versions) > self.max_history:
                for old in sorted(versions)[: len(versions) - self.max_history]:
                    del versions[old]
        if full:
            left.extend(before - entities.keys())
        self._prune_bases()
        self.seq = seq
        self.tick = tick
        if input_seq > self.input_seq or full:
            self.input_seq = input_seq
        self.updates += 1
        self._received(seq)
        for eid in entered:
            for callback in tuple(self.on_enter):
                callback(eid)
        for eid in left:
            for callback in tuple(self.on_leave):
                callback(eid)
        return True

    def _base(self, eid: int, version: int) -> Version | None:
        versions = self._history.get(eid)
        if versions is None:
            return None
        base = versions.get(version)
        if base is not None:
            self._last_base[eid] = version
        return base

    def _prune_bases(self) -> None:
        """The server's base for an entity only moves forward: versions older than the
        latest base it used are never needed again."""
        last = self._last_base
        if not last:
            return
        for eid, version in last.items():
            versions = self._history.get(eid)
            if versions:
                for old in [v for v in versions if v < version]:
                    del versions[old]
        last.clear()

    def _wire_of(self, kind: int) -> Sequence[int]:
        return self._wire.get(kind, ())

    def _defaults_of(self, kind: int) -> tuple[int | bytes, ...]:
        return self._defaults.get(kind, ())

    # ------------------------------------------------------------------ acks

    def _received(self, seq: int) -> None:
        if seq > self._ack_seq:
            shift = seq - self._ack_seq
            if self._ack_seq and shift <= 64:
                self._ack_mask = ((self._ack_mask << shift) | (1 << (shift - 1))) & _MASK64
            else:
                self._ack_mask = 0
            self._ack_seq = seq
        else:
            gap = self._ack_seq - seq
            if 1 <= gap <= 64:
                self._ack_mask |= 1 << (gap - 1)
        self.ack_pending = True

    def ack(self) -> tuple[int, int, bool]:
        """(seq, received mask, resync) to send now; clears ``ack_pending``."""
        self.ack_pending = False
        resync, self._resync = self._resync, False
        return self._ack_seq, self._ack_mask, resync

    def ack_message(self) -> state_pb2.StateAck:
        seq, mask, resync = self.ack()
        return state_pb2.StateAck(seq=seq, received=mask, resync=resync)

    def request_resync(self) -> None:
        self.epoch = 0
        self._resync = True
        self.ack_pending = True

    # ------------------------------------------------------------------ reading

    def quantized_position(self, eid: int, tick: int | None = None) -> tuple[int, int, int]:
        s = self.entities[eid]
        n = (self.tick if tick is None else tick) - s[0]
        hz = self.schema.tick_rate
        return (extrapolate(s[2], s[5], n, hz), extrapolate(s[3], s[6], n, hz),
                extrapolate(s[4], s[7], n, hz))

    def view(self, eid: int, tick: float | None = None) -> EntityView:
        """Entity ``eid`` materialised at ``tick`` (default: the latest update's tick).

        A fractional tick extrapolates smoothly (floats), an integer one gives
        exactly the server's dead-reckoned position.
        """
        s = self.entities[eid]
        scale = self.schema.position_scale
        t = self.tick if tick is None else tick
        if isinstance(t, int):
            px, py, pz = self.quantized_position(eid, t)
            x, y, z = px / scale, py / scale, pz / scale
        else:
            secs = (t - s[0]) / self.schema.tick_rate
            x = (s[2] + s[5] * secs) / scale
            y = (s[3] + s[6] * secs) / scale
            z = (s[4] + s[7] * secs) / scale
        specs = self.schema.kinds.get(s[1], ())
        fields: dict[str, Any] = {}
        for i, spec in enumerate(specs):
            value = s[9 + i]
            fields[spec.name] = value * spec.step if spec.kind == "float" else value
        return EntityView(eid, s[1], x, y, z, unpack_rotation(s[8]), s[5] / scale,
                          s[6] / scale, s[7] / scale, fields)

    def views(self, tick: float | None = None) -> dict[int, EntityView]:
        return {eid: self.view(eid, tick) for eid in self.entities}


# ---------------------------------------------------------------------------- inputs


@dataclass(slots=True)
class PendingInput:
    seq: int
    tick: int
    data: bytes


class InputBuffer:
    """Numbered inputs, kept until the server says it applied them (``input_seq``)."""

    def __init__(self, redundancy: int = 8, max_pending: int = 256) -> None:
        if redundancy < 1:
            raise ValueError("redundancy must be at least 1")
        self.redundancy = redundancy
        self.max_pending = max_pending
        self.next_seq = 1
        self.pending: deque[PendingInput] = deque()
        self.confirmed = 0

    def add(self, data: bytes, tick: int) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.pending.append(PendingInput(seq, tick, data))
        while len(self.pending) > self.max_pending:
            self.pending.popleft()  # the server is far behind; the oldest cannot matter now
        return seq

    def acknowledge(self, input_seq: int) -> None:
        if input_seq > self.confirmed:
            self.confirmed = input_seq
        pending = self.pending
        while pending and pending[0].seq <= input_seq:
            pending.popleft()

    def message(self, ack: state_pb2.StateAck | None = None) -> state_pb2.PlayerInput:
        """A ``player.input`` with the newest ``redundancy`` unconfirmed inputs."""
        msg = state_pb2.PlayerInput()
        start = max(0, len(self.pending) - self.redundancy)
        for i in range(start, len(self.pending)):
            p = self.pending[i]
            msg.inputs.add(seq=p.seq, tick=p.tick, data=p.data)
        if ack is not None:
            msg.ack.CopyFrom(ack)
        return msg


class Reconciler(Generic[S, I]):
    """Prediction of the player's own state, reconciled with the server's.

    ``step(state, input)`` must be the same simulation the server runs for
    one input (the example shares it between its provider and its client).
    """

    def __init__(self, step: Callable[[S, I], S], initial: S) -> None:
        self.step = step
        self.state: S = initial
        self.inputs: deque[tuple[int, I]] = deque()
        self.replayed = 0  # inputs replayed by reconciliations (statistics)
        self.corrections = 0

    def predict(self, seq: int, command: I) -> S:
        """Apply ``command`` (already sent with ``seq``) at once."""
        self.inputs.append((seq, command))
        self.state = self.step(self.state, command)
        return self.state

    def reconcile(self, authoritative: S, last_applied: int) -> S:
        """Restart from the server's state and replay what it has not applied yet."""
        inputs = self.inputs
        while inputs and inputs[0][0] <= last_applied:
            inputs.popleft()
        previous = self.state
        state = authoritative
        for _seq, command in inputs:
            state = self.step(state, command)
        self.replayed += len(inputs)
        if state != previous:
            self.corrections += 1
        self.state = state
        return state


# ---------------------------------------------------------------------------- interpolation

Pose = tuple[float, float, float, tuple[float, float, float, float]]


class Interpolator:
    """Renders remote entities ``delay`` seconds behind the newest update.

    ``push(tick, poses, now)`` after each update (``now``: the client's
    monotonic clock); ``sample(now)`` gives each entity's pose at the render
    time, interpolated between the two buffered snapshots around it.  The
    server tick is estimated from the arrival times, so jitter is absorbed
    by the delay (choose it above the update interval plus jitter; 100 ms
    suits 20 Hz updates).
    """

    def __init__(self, tick_rate: int, delay: float = 0.1, capacity: int = 64) -> None:
        self.tick_rate = tick_rate
        self.delay = delay
        self._snapshots: deque[tuple[int, Mapping[int, Pose]]] = deque(maxlen=capacity)
        self._offset: float | None = None  # server tick - now * tick_rate, smoothed

    def push(self, tick: int, poses: Mapping[int, Pose], now: float) -> None:
        if self._snapshots and tick <= self._snapshots[-1][0]:
            return
        self._snapshots.append((tick, poses))
        offset = tick - now * self.tick_rate
        if self._offset is None or offset > self._offset:
            self._offset = offset  # an early arrival: the fastest path is the truth
        else:
            self._offset += (offset - self._offset) * 0.05

    def render_tick(self, now: float) -> float:
        if self._offset is None:
            return 0.0
        return now * self.tick_rate + self._offset - self.delay * self.tick_rate

    def sample(self, now: float) -> dict[int, Pose]:
        return self.sample_tick(self.render_tick(now))

    def sample_tick(self, t: float) -> dict[int, Pose]:
        snaps = self._snapshots
        if not snaps:
            return {}
        if t <= snaps[0][0]:
            return dict(snaps[0][1])
        if t >= snaps[-1][0]:
            return dict(snaps[-1][1])
        lo = 0
        hi = len(snaps) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if snaps[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        t0, a = snaps[lo]
        t1, b = snaps[hi]
        f = (t - t0) / (t1 - t0)
        out: dict[int, Pose] = {}
        for eid, pb in b.items():
            pa = a.get(eid)
            out[eid] = pb if pa is None else _lerp_pose(pa, pb, f)
        return out


def _lerp_pose(a: Pose, b: Pose, f: float) -> Pose:
    qa, qb = a[3], b[3]
    dot = qa[0] * qb[0] + qa[1] * qb[1] + qa[2] * qb[2] + qa[3] * qb[3]
    sign = -1.0 if dot < 0 else 1.0
    q = [qa[i] + (qb[i] * sign - qa[i]) * f for i in range(4)]
    norm = math.sqrt(sum(c * c for c in q)) or 1.0
    return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f,
            (q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm))


# ---------------------------------------------------------------------------- adapter


class StateClient:
    """State sync on a :class:`~gateway.client.GatewayClient`.

    Decodes ``state.schema``/``state.snapshot``/``state.delta`` into
    :attr:`replica`, acknowledges updates (at most every ``ack_delay``
    seconds, or riding on the next input), numbers and resends inputs
    (:meth:`send_input`), and feeds :attr:`interpolator`.  Every new
    connection starts from a full snapshot (the server sends one after the
    welcome; :meth:`when_synced` fires when it is applied).  Register the
    state events on the client: ``registry_for(state_event_specs())``.
    """

    def __init__(self, client: GatewayClient, *, schema: ReplicaSchema | None = None,
                 interpolation_delay: float = 0.1, ack_delay: float = 0.02,
                 input_redundancy: int = 8) -> None:
        from gateway.state.events import DELTA, SCHEMA, SNAPSHOT

        self.client = client
        self.reactor = client.reactor
        self.replica = StateReplica(schema)
        self.inputs = InputBuffer(input_redundancy)
        self.interpolator = Interpolator(self.replica.schema.tick_rate, interpolation_delay)
        self.ack_delay = ack_delay
        self.on_update: list[Callable[[StateReplica], object]] = []
        self._ack_call: Any = None
        self._synced_waiters: list[Any] = []
        self.connected_at: float | None = None
        self.synced_after: float | None = None  # seconds from welcome to the first full snapshot
        client.on("system.welcome", self._welcome)
        client.on(SCHEMA, self._schema)
        client.on(SNAPSHOT, self._update)
        client.on(DELTA, self._update)

    @property
    def tick(self) -> int:
        return self.replica.tick

    def when_synced(self) -> Any:
        """A Deferred firing with the replica once the next full snapshot is applied."""
        from twisted.internet import defer

        d: defer.Deferred[StateReplica] = defer.Deferred()
        self._synced_waiters.append(d)
        return d

    def send_input(self, data: bytes, tick: int | None = None) -> int:
        """Number ``data``, send it (with the unconfirmed ones before it); returns its seq."""
        seq = self.inputs.add(data, self.replica.tick if tick is None else tick)
        ack = self.replica.ack_message() if self.replica.ack_pending else None
        if ack is not None:
            self._cancel_ack()
        self.client.send("player.input", self.inputs.message(ack))
        return seq

    # ------------------------------------------------------------------ handlers

    def _welcome(self, _incoming: Incoming) -> None:
        self.replica.reset()
        self.connected_at = self.reactor.seconds()

    def _schema(self, incoming: Incoming) -> None:
        msg = incoming.message
        if isinstance(msg, state_pb2.StateSchema):
            schema = ReplicaSchema.from_message(msg)
            self.replica.set_schema(schema)
            self.interpolator.tick_rate = schema.tick_rate

    def _update(self, incoming: Incoming) -> None:
        msg = incoming.message
        if not isinstance(msg, state_pb2.StateUpdate):
            return
        replica = self.replica
        applied = replica.apply_message(msg)
        if applied:
            self.inputs.acknowledge(msg.input_seq)
            now = self.reactor.seconds()
            poses = {eid: _pose(v) for eid, v in replica.views().items()}
            self.interpolator.push(msg.tick, poses, now)
            if msg.full:
                if self.connected_at is not None and self.synced_after is None:
                    self.synced_after = now - self.connected_at
                waiters, self._synced_waiters = self._synced_waiters, []
                for d in waiters:
                    d.callback(replica)
            for callback in tuple(self.on_update):
                callback(replica)
        if replica.ack_pending:
            self._schedule_ack()

    def _schedule_ack(self) -> None:
        if self._ack_call is None or not self._ack_call.active():
            self._ack_call = self.reactor.callLater(self.ack_delay, self._send_ack)

    def _cancel_ack(self) -> None:
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None

    def _send_ack(self) -> None:
        self._ack_call = None
        # Offline, an ack would wait in the offline queue and reach the next connection,
        # whose updates it does not describe: drop it (that connection starts afresh).
        if self.replica.ack_pending and self.client.online:
            self.client.send("state.ack", self.replica.ack_message())

    def stop(self) -> None:
        self._cancel_ack()


def _pose(v: EntityView) -> Pose:
    return (v.x, v.y, v.z, v.rotation)
