"""The Python client SDK (the reference client of wire protocol v1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.client.backoff import Backoff, ReconnectPolicy
from gateway.client.client import (
    DEFAULT_RECONNECT,
    ClientClosed,
    GatewayClient,
    QueueFull,
    ServerError,
)
from gateway.client.session import ClientSession, Incoming
from gateway.events import EventRegistry, EventSpec
from gateway.system_events import register as _register_system

__all__ = [
    "DEFAULT_RECONNECT",
    "Backoff",
    "ClientClosed",
    "ClientSession",
    "GatewayClient",
    "Incoming",
    "QueueFull",
    "ReconnectPolicy",
    "ServerError",
    "registry_for",
]


def registry_for(*sources: Any) -> EventRegistry:
    """A client registry: system events plus the specs of ``sources``.

    A source is a plugin object (its ``event_specs()`` are used) or an
    iterable of EventSpecs: the client decodes payloads with the same
    message classes the server registered.
    """
    registry = EventRegistry()
    _register_system(registry)
    for source in sources:
        specs: Iterable[EventSpec] = (
            source.event_specs() if hasattr(source, "event_specs") else source
        )
        registry.register(*specs)
    return registry
