"""The built-in system events, registered like any plugin's events.

They are the protocol's own vocabulary (handshake, heartbeat, acks, errors,
shutdown), so the core handles them; they still live in the registry so that
validation, negotiation and the generated catalog treat them like any other.
"""

from __future__ import annotations

from gateway.events import Category, Delivery, Direction, EventRegistry, EventSpec, Priority
from protocol import events_pb2

__all__ = ["SYSTEM_SPECS", "register"]

C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT


def _s(type_: str, message: type, direction: Direction, description: str, *,
       reliable: bool = False, priority: Priority = Priority.CRITICAL) -> EventSpec:
    return EventSpec(
        type=type_,
        versions={1: message},
        category=Category.SYSTEM,
        priority=priority,
        direction=direction,
        delivery=Delivery.RELIABLE if reliable else Delivery.UNRELIABLE,
        description=description,
    )


SYSTEM_SPECS = (
    _s("system.hello", events_pb2.Hello, C2S,
       "First message of every connection: versions, compression, optional token or resume."),
    _s("system.welcome", events_pb2.Welcome, S2C,
       "The connection is authenticated; carries the session, limits and negotiated versions."),
    _s("system.error", events_pb2.Error, S2C,
       "A request failed; the connection stays open.", reliable=True, priority=Priority.HIGH),
    _s("system.ping", events_pb2.Ping, Direction.BOTH,
       "Heartbeat; the receiver answers system.pong echoing nonce and sent_ns."),
    _s("system.pong", events_pb2.Pong, Direction.BOTH, "Answer to system.ping."),
    _s("system.ack", events_pb2.Ack, Direction.BOTH,
       "Carries Envelope.ack when there is nothing else to send."),
    EventSpec(
        type="system.auth_refresh", versions={1: events_pb2.AuthRefresh},
        category=Category.SYSTEM, priority=Priority.CRITICAL, direction=C2S,
        delivery=Delivery.UNRELIABLE, rate_limit=(1.0, 3),
        description="Replace the connection's token before it expires.",
    ),
    _s("system.auth_refreshed", events_pb2.AuthRefreshed, S2C, "The new token was accepted."),
    _s("system.disconnect", events_pb2.Disconnect, S2C,
       "Why the server is about to close the connection (the close code follows)."),
    _s("server.draining", events_pb2.Draining, S2C,
       "This instance is shutting down: reconnect (elsewhere) within grace_ms."),
)


def register(registry: EventRegistry) -> None:
    registry.register(*SYSTEM_SPECS)
