"""The state sync event types, shared by plugins/state.py and the client SDK.

Kept here (pure data) so a client builds its registry with
``registry_for(state_event_specs())`` without importing the plugin.
"""

from __future__ import annotations

from gateway.events import Category, Delivery, Direction, EventSpec, Priority
from protocol import state_pb2

__all__ = ["ACK", "DELTA", "INPUT", "SCHEMA", "SNAPSHOT", "UPDATE_KEY", "state_event_specs"]

SNAPSHOT = "state.snapshot"
DELTA = "state.delta"
ACK = "state.ack"
INPUT = "player.input"
SCHEMA = "state.schema"
#: Outbound key of both update types: a newer update replaces one still queued.
UPDATE_KEY = "state"


def state_event_specs(input_rate: tuple[float, int] | None = (120.0, 240)) -> tuple[EventSpec, ...]:
    return (
        EventSpec(
            type=SNAPSHOT,
            versions={1: state_pb2.StateUpdate},
            category=Category.PLAYER,
            priority=Priority.HIGH,  # droppable for a degraded (slow) reader; acks recover
            direction=Direction.SERVER_TO_CLIENT,
            delivery=Delivery.UNRELIABLE,
            description="A full snapshot of what the player sees (records replace all state); "
            "keyed: a newer update supersedes it while queued.",
        ),
        EventSpec(
            type=DELTA,
            versions={1: state_pb2.StateUpdate},
            category=Category.PLAYER,
            priority=Priority.HIGH,  # droppable for a degraded (slow) reader; acks recover
            direction=Direction.SERVER_TO_CLIENT,
            delivery=Delivery.UNRELIABLE,
            description="Entity records against the versions the client acknowledged, entries "
            "and exits of the view, the last input applied; keyed like state.snapshot.",
        ),
        EventSpec(
            type=ACK,
            versions={1: state_pb2.StateAck},
            category=Category.PLAYER,
            priority=Priority.CRITICAL,
            direction=Direction.CLIENT_TO_SERVER,
            delivery=Delivery.UNRELIABLE,
            rate_limit=input_rate,
            description="Which state updates arrived (seq + mask of the 64 before); "
            "resync asks for a full snapshot.",
        ),
        EventSpec(
            type=INPUT,
            versions={1: state_pb2.PlayerInput},
            category=Category.PLAYER,
            priority=Priority.CRITICAL,
            direction=Direction.CLIENT_TO_SERVER,
            delivery=Delivery.UNRELIABLE,
            rate_limit=input_rate,
            description="Numbered player input commands (the unconfirmed ones repeated), "
            "optionally with a state ack.",
        ),
        EventSpec(
            type=SCHEMA,
            versions={1: state_pb2.StateSchema},
            category=Category.PLAYER,
            priority=Priority.CRITICAL,
            direction=Direction.SERVER_TO_CLIENT,
            delivery=Delivery.RELIABLE,
            description="How to decode state records: tick rate, position scale, game fields "
            "per entity kind, the player's own entity.",
        ),
    )
