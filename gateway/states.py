"""The six connection states, shared by the server and the client SDK.

A pure state machine: it knows nothing of sockets or time.  Observers
(metrics, plugins, SDK callbacks) subscribe to transitions; a transition
that the table does not allow is a programming error and raises.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.logger import Logger

__all__ = ["TRANSITIONS", "InvalidTransition", "State", "StateMachine"]

log = Logger()


class State(enum.Enum):
    CONNECTING = "connecting"  # TCP and WebSocket handshake under way
    CONNECTED = "connected"  # WebSocket open, nothing said yet
    AUTHENTICATING = "authenticating"  # hello sent/received, token being checked
    AUTHENTICATED = "authenticated"  # welcome sent/received: events flow
    RECONNECTING = "reconnecting"  # transport lost, session kept (client retrying / server waiting)
    DISCONNECTED = "disconnected"  # final for this connection


TRANSITIONS: dict[State, frozenset[State]] = {
    State.CONNECTING: frozenset({State.CONNECTED, State.RECONNECTING, State.DISCONNECTED}),
    State.CONNECTED: frozenset({State.AUTHENTICATING, State.RECONNECTING, State.DISCONNECTED}),
    State.AUTHENTICATING: frozenset(
        {State.AUTHENTICATED, State.RECONNECTING, State.DISCONNECTED}
    ),
    State.AUTHENTICATED: frozenset({State.RECONNECTING, State.DISCONNECTED}),
    State.RECONNECTING: frozenset({State.CONNECTING, State.DISCONNECTED}),
    State.DISCONNECTED: frozenset({State.CONNECTING}),
}

Observer = Callable[[State, State], object]


class InvalidTransition(RuntimeError):
    pass


class StateMachine:
    """Current state plus observers called as ``observer(old, new)`` after each change."""

    __slots__ = ("_observers", "state")

    def __init__(self, initial: State = State.CONNECTING) -> None:
        self.state = initial
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> Callable[[], None]:
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def can(self, new: State) -> bool:
        return new in TRANSITIONS[self.state]

    def to(self, new: State) -> None:
        old = self.state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"{old.value} -> {new.value}")
        self.state = new
        for observer in tuple(self._observers):
            try:
                observer(old, new)
            except Exception:
                # An observer is a plugin or a metric: it must not change the connection's fate.
                log.failure("state observer failed on {old} -> {new}", old=old.value, new=new.value)
