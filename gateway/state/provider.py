"""The game's side of state sync: what a StateProvider gives the gateway.

The game owns the simulation; the gateway owns getting it to clients.  A
provider is any object with the methods of :class:`IStateProvider` (a zope
Interface for discovery and documentation; :class:`StateProvider` is the
matching typing Protocol).  The state plugin finds providers among the
loaded gateway plugins (any plugin with ``state_provider = True`` and these
methods) or by the dotted name in ``[plugin.state] provider``.

Each sync tick the plugin, in this order: hands the inputs received since the
last tick to :meth:`apply_input`, calls :meth:`advance`, reads
:meth:`entity_states`, and sends every player what changed in their view.

State types and how they map onto entities
    * player state: an entity per avatar (``scope=SPATIAL``): position,
      rotation, velocity, plus the kind's game-defined fields;
    * world state (time, weather): an entity with ``scope=GLOBAL`` (every
      player sees it, wherever they are) and game fields; one-off world
      *events* are ordinary reliable events (see plugins/world.py);
    * session state (connection info, settings): an entity with
      ``scope=OWNER`` and ``owner=<player id>``: only that player sees it;
    * view state: what the player can see, computed by the interest grid
      from the player's entity (:meth:`player_joined`) or
      :meth:`view_position`;
    * ephemeral state (temporary effects): any entity with ``expires`` (a
      tick number): it disappears from every client at that tick even if the
      provider still reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from zope.interface import Attribute, Interface

__all__ = [
    "GLOBAL",
    "OWNER",
    "SPATIAL",
    "EntityState",
    "FieldSpec",
    "IStateProvider",
    "Schema",
    "StateProvider",
]

#: Entity scopes: who may see an entity.
SPATIAL = 0  # players whose interest area holds it (the grid)
GLOBAL = 1  # every player
OWNER = 2  # only ``owner``

FIELD_KINDS = ("int", "float", "bytes")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One game-defined field of an entity kind.

    ``int``: any integer (sent as a zigzag varint of the change);
    ``float``: quantised to ``step`` (an integer number of steps on the wire);
    ``bytes``: opaque, sent whole when it changes (names, small blobs).
    """

    name: str
    kind: str = "int"
    step: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field {self.name}: kind must be one of {FIELD_KINDS}")
        if self.kind == "float" and self.step <= 0:
            raise ValueError(f"field {self.name}: step must be > 0")


@dataclass(frozen=True)
class Schema:
    """The game-defined fields of each entity kind (kind number -> fields, in wire order).

    Kinds not listed have no game fields.  The schema is sent to every
    client (``state.schema``) so a generic client can decode any game.
    """

    kinds: Mapping[int, Sequence[FieldSpec]] = field(default_factory=dict)

    def fields(self, kind: int) -> Sequence[FieldSpec]:
        return self.kinds.get(kind, ())

    def defaults(self, kind: int) -> tuple[int | bytes, ...]:
        return tuple(b"" if f.kind == "bytes" else 0 for f in self.fields(kind))


class EntityState(NamedTuple):
    """One entity as the provider sees it at a tick (floats; the gateway quantises).

    ``rotation`` is a quaternion ``(x, y, z, w)``; ``fields`` follow the
    schema of ``kind`` (ints, floats, bytes).  Interest uses ``x`` and ``y``.
    """

    id: int
    kind: int = 0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    rotation: tuple[float, float, float, float] | None = None
    vx: float = 0.0
    vy: float = 0.0
    vz: float = 0.0
    fields: tuple[int | float | bytes, ...] = ()
    scope: int = SPATIAL
    owner: str = ""
    expires: int = 0  # tick at which an ephemeral entity disappears (0: never)


class IStateProvider(Interface):
    """A game simulation, as the state plugin drives it."""

    schema = Attribute("Schema: the game-defined fields of each entity kind")

    def player_joined(player_id: str) -> int | None:
        """A player connected (or resumed): return their avatar's entity id, or None."""

    def player_left(player_id: str) -> None:
        """The player's connection is gone (the session may still resume)."""

    def apply_input(player_id: str, seq: int, tick: int, data: bytes) -> int:
        """Apply one input (``seq`` increases per player; ``tick`` is the client's
        estimate of the server tick it was made for); return the last seq applied."""

    def advance(tick: int, dt: float) -> None:
        """Step the simulation to ``tick`` (``dt`` seconds since the previous call)."""

    def entity_states(tick: int) -> Iterable[EntityState]:
        """Every live entity, now."""

    def view_position(player_id: str) -> tuple[float, float] | None:
        """Where a player without an avatar looks from (None: only global/owned state)."""


@runtime_checkable
class StateProvider(Protocol):
    """The typing view of :class:`IStateProvider` (structural)."""

    schema: Schema

    def player_joined(self, player_id: str) -> int | None: ...

    def player_left(self, player_id: str) -> None: ...

    def apply_input(self, player_id: str, seq: int, tick: int, data: bytes) -> int: ...

    def advance(self, tick: int, dt: float) -> None: ...

    def entity_states(self, tick: int) -> Iterable[EntityState]: ...

    def view_position(self, player_id: str) -> tuple[float, float] | None: ...
