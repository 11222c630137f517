"""Typed, versioned events: the registry, inbound validation and the router.

Every event type the gateway carries is an :class:`EventSpec` in an
:class:`EventRegistry`: the built-in system events are registered exactly the
way a third-party plugin registers its own.  The registry is the single
source for validation (what a client may send), negotiation (which version
each client speaks), conversion between versions and the generated catalog.
"""

from __future__ import annotations

import builtins
import enum
import inspect
import re
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from google.protobuf.message import DecodeError, Message
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.codes import ErrorCode
from gateway.wire import OutEvent, make_event
from protocol import events_pb2

if TYPE_CHECKING:
    from gateway.connection import Connection

__all__ = [
    "Category",
    "Delivery",
    "Direction",
    "EventContext",
    "EventError",
    "EventRegistry",
    "EventSpec",
    "Priority",
    "Router",
    "ValidationError",
    "spec",
]

log = Logger()

_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class Category(enum.Enum):
    SYSTEM = "system"
    PLAYER = "player"
    WORLD = "world"
    SOCIAL = "social"
    GAME = "game"


class Priority(enum.IntEnum):
    CRITICAL = events_pb2.PRIORITY_CRITICAL
    HIGH = events_pb2.PRIORITY_HIGH
    NORMAL = events_pb2.PRIORITY_NORMAL
    LOW = events_pb2.PRIORITY_LOW


class Direction(enum.Enum):
    CLIENT_TO_SERVER = "client-to-server"
    SERVER_TO_CLIENT = "server-to-client"
    BOTH = "both"

    @property
    def client_may_send(self) -> bool:
        return self is not Direction.SERVER_TO_CLIENT

    @property
    def server_may_send(self) -> bool:
        return self is not Direction.CLIENT_TO_SERVER


class Delivery(enum.Enum):
    RELIABLE = "reliable"  # sequenced, kept until acknowledged, replayed on resume
    UNRELIABLE = "unreliable"  # latest state wins; may be dropped or superseded


class ValidationError(Exception):
    """Raised by a validator: the event is refused with this message."""


class EventError(Exception):
    """An inbound event was refused; ``code`` goes back to the sender in system.error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Converter = Callable[[Message], Message]
Validator = Callable[["EventContext", Message], None]


@dataclass(frozen=True)
class EventSpec:
    """Everything the gateway knows about one event type."""

    type: str
    versions: Mapping[int, builtins.type[Message]]
    category: Category = Category.GAME
    priority: Priority = Priority.NORMAL
    direction: Direction = Direction.BOTH
    delivery: Delivery = Delivery.RELIABLE
    description: str = ""
    # Per-connection limit for this type: (events per second, burst).
    rate_limit: tuple[float, int] | None = None
    validators: tuple[Validator, ...] = ()
    # upgraders[v] turns a version v message into version v + 1; downgraders[v] into v - 1.
    upgraders: Mapping[int, Converter] = field(default_factory=dict)
    downgraders: Mapping[int, Converter] = field(default_factory=dict)
    # Which plugin registered it (for the catalog and error messages).
    owner: str = "core"

    def __post_init__(self) -> None:
        if not _TYPE_NAME.match(self.type) or len(self.type) > 64:
            raise ValueError(f"event type {self.type!r}: use dotted lower-case names like a.b")
        if not self.versions:
            raise ValueError(f"event type {self.type!r}: at least one version")
        if any(v < 1 for v in self.versions):
            raise ValueError(f"event type {self.type!r}: versions start at 1")
        if max(self.versions) - min(self.versions) + 1 != len(self.versions):
            # convert() steps one version at a time: a gap could never be crossed.
            raise ValueError(f"{self.type}: versions must be consecutive (no gaps)")
        for v in sorted(self.versions)[:-1]:
            if v + 1 in self.versions and v not in self.upgraders:
                raise ValueError(f"{self.type}: no upgrader from v{v} to v{v + 1}")
            if v + 1 in self.versions and v + 1 not in self.downgraders:
                raise ValueError(f"{self.type}: no downgrader from v{v + 1} to v{v}")
        if self.rate_limit is not None and (self.rate_limit[0] <= 0 or self.rate_limit[1] < 1):
            raise ValueError(f"{self.type}: rate_limit is (per second > 0, burst >= 1)")

    @property
    def latest(self) -> int:
        return max(self.versions)

    @property
    def reliable(self) -> bool:
        return self.delivery is Delivery.RELIABLE

    def convert(self, message: Message, from_version: int, to_version: int) -> Message:
        """Walk the upgrader/downgrader chain one version at a time."""
        version = from_version
        while version < to_version:
            message = self.upgraders[version](message)
            version += 1
        while version > to_version:
            message = self.downgraders[version](message)
            version -= 1
        return message


def spec(
    type_: str,
    message: type[Message] | Mapping[int, type[Message]],
    **kwargs: Any,
) -> EventSpec:
    """Shorthand: ``spec("chat.say", ChatSay, direction=Direction.CLIENT_TO_SERVER)``."""
    versions = message if isinstance(message, Mapping) else {1: message}
    return EventSpec(type=type_, versions=versions, **kwargs)


class EventRegistry:
    """Event specs by type name.  Registration happens at start-up, before any traffic."""

    def __init__(self) -> None:
        self._specs: dict[str, EventSpec] = {}

    def register(self, *specs: EventSpec) -> None:
        for s in specs:
            existing = self._specs.get(s.type)
            if existing is not None:
                raise ValueError(f"event type {s.type!r} is already registered by {existing.owner}")
            self._specs[s.type] = s

    def get(self, type_: str) -> EventSpec | None:
        return self._specs.get(type_)

    def __getitem__(self, type_: str) -> EventSpec:
        return self._specs[type_]

    def __contains__(self, type_: object) -> bool:
        return type_ in self._specs

    def __iter__(self) -> Iterator[EventSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.type))

    def __len__(self) -> int:
        return len(self._specs)

    def negotiate(self, offered: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """Pick, per type, the newest version both sides speak.

        A type the client did not mention gets the server's newest version
        (a client ignores types it does not know).  A type whose offered
        versions are all unknown is left out: the client cannot receive it,
        so the gateway will not send it.
        """
        chosen: dict[str, int] = {}
        for s in self._specs.values():
            versions = offered.get(s.type)
            if versions is None:
                chosen[s.type] = s.latest
                continue
            common = set(versions) & set(s.versions)
            if common:
                chosen[s.type] = max(common)
        return chosen

    def encode(
        self,
        type_: str,
        message: Message,
        version: int,
        *,
        priority: int | None = None,
        correlation_id: int = 0,
        key: str | None = None,
        timestamp_us: int = 0,
    ) -> OutEvent:
        """Serialise ``message`` (given at the spec's newest version) for ``version``."""
        s = self._specs[type_]
        if version != s.latest:
            message = s.convert(message, s.latest, version)
        return make_event(
            type_,
            message.SerializeToString(),
            version=version,
            priority=int(priority or s.priority),
            reliable=s.reliable,
            correlation_id=correlation_id,
            key=key,
            timestamp_us=timestamp_us,
        )


class Replier(Protocol):
    """What a handler context needs from the server (implemented by gateway.server.Gateway)."""

    def send_to_connection(
        self, conn: Connection, type_: str, message: Message, *, correlation_id: int = 0
    ) -> None: ...

    def send_to_player(self, player_id: str, type_: str, message: Message) -> None: ...

    def send_to_players(self, player_ids: Iterable[str], type_: str, message: Message) -> None: ...

    def publish(self, topic: str, type_: str, message: Message) -> None: ...


@dataclass
class EventContext:
    """Handed to every handler: who sent the event and how to answer.

    The sender is always the authenticated connection's player: identity is
    never read from a payload.
    """

    connection: Connection
    spec: EventSpec
    version: int  # the version the client sent (handlers always see the newest)
    seq: int
    correlation_id: int
    server: Replier

    @property
    def player_id(self) -> str:
        return self.connection.player_id

    @property
    def session_id(self) -> str:
        return self.connection.session_id

    def reply(self, type_: str, message: Message) -> None:
        """Answer the sender, echoing the request's correlation id."""
        self.server.send_to_connection(
            self.connection, type_, message, correlation_id=self.correlation_id
        )

    def send_to_player(self, player_id: str, type_: str, message: Message) -> None:
        self.server.send_to_player(player_id, type_, message)

    def send_to_players(self, player_ids: Iterable[str], type_: str, message: Message) -> None:
        self.server.send_to_players(player_ids, type_, message)

    def publish(self, topic: str, type_: str, message: Message) -> None:
        self.server.publish(topic, type_, message)


Handler = Callable[[EventContext, Any], object]


def parse_inbound(
    registry: EventRegistry, env: events_pb2.Envelope, negotiated: Mapping[str, int]
) -> tuple[EventSpec, int, Message, int]:
    """Validate an inbound envelope's type, direction, version and payload.

    Returns the spec, the version sent, the message converted to the newest
    version and the payload size.  Raises :class:`EventError` with the code
    for the sender.  Each envelope field is read once: with upb every read
    builds a new Python object (and copies the payload).
    """
    type_ = env.type
    s = registry.get(type_)
    if s is None:
        raise EventError(ErrorCode.UNKNOWN_TYPE, f"unknown event type {type_[:64]!r}")
    if not s.direction.client_may_send:
        raise EventError(ErrorCode.FORBIDDEN_DIRECTION, f"{s.type} is server-to-client only")
    version = env.version or negotiated.get(s.type, s.latest)
    cls = s.versions.get(version)
    if cls is None:
        raise EventError(ErrorCode.UNKNOWN_VERSION, f"{s.type} has no version {version}")
    message = cls()
    payload = env.payload
    try:
        message.ParseFromString(payload)
    except DecodeError:
        raise EventError(ErrorCode.BAD_PAYLOAD, f"payload is not a valid {s.type} v{version}")
    if version != s.latest:
        try:
            message = s.convert(message, version, s.latest)
        except Exception:
            log.failure("upgrading {type} v{version} failed", type=s.type, version=version)
            raise EventError(ErrorCode.BAD_PAYLOAD, f"{s.type} v{version} could not be upgraded")
    return s, version, message, len(payload)


class Router:
    """Handlers by event type; several may observe one type.

    Each handler runs isolated: one that raises or returns a failed
    Deferred yields an error event to the sender, a log entry and a metric,
    and the others still run.
    """

    def __init__(self, on_failure: Callable[[EventContext, Failure], None] | None = None) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self.on_failure = on_failure

    def add(self, type_: str, handler: Handler) -> Callable[[], None]:
        self._handlers.setdefault(type_, []).append(handler)
        return lambda: self._handlers[type_].remove(handler)

    def on(self, type_: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def register(handler: Handler) -> Handler:
            self.add(type_, handler)
            return handler

        return register

    def handlers(self, type_: str) -> Sequence[Handler]:
        return self._handlers.get(type_, ())

    def dispatch(self, ctx: EventContext, message: Message) -> int:
        """Run every handler for ``ctx.spec.type``; return how many there were."""
        handlers = self._handlers.get(ctx.spec.type, ())
        for handler in tuple(handlers):
            try:
                result = handler(ctx, message)
            except Exception:
                self._failed(Failure(), ctx, handler)
                continue
            if result is None:
                continue  # the common synchronous case: no Deferred machinery
            if isinstance(result, defer.Deferred) or inspect.isawaitable(result):
                d = (
                    result
                    if isinstance(result, defer.Deferred)
                    else defer.ensureDeferred(cast(Coroutine[Any, Any, Any], result))
                )
                d.addErrback(self._failed, ctx, handler)
        return len(handlers)

    def _failed(self, failure: Failure, ctx: EventContext, handler: Handler) -> None:
        if failure.check(EventError):
            # A deliberate refusal (bad request), reported to the sender, not logged as a crash.
            if self.on_failure is not None:
                self.on_failure(ctx, failure)
            return
        log.failure(
            "handler {handler} failed for {type} from {player}",
            failure,
            handler=getattr(handler, "__qualname__", repr(handler)),
            type=ctx.spec.type,
            player=ctx.player_id,
        )
        if self.on_failure is not None:
            self.on_failure(ctx, failure)
