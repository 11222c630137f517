"""Sans-io session rules: tokens, keys and the resume plan.

Pure functions and data: the manager (gateway.session.manager) does the
I/O, this module decides.  Everything here is unit-tested without a backend.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from protocol import internal_pb2

__all__ = [
    "ResumePlan",
    "hash_token",
    "keys",
    "new_session_id",
    "new_token",
    "plan_resume",
]

#: Reconnection tokens carry 192 random bits (the issue asks for at least 128).
TOKEN_BYTES = 24


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_session_id() -> str:
    return secrets.token_hex(16)


def hash_token(token: str) -> str:
    """Only this hash is stored: a backend dump does not hand out live tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


class keys:  # noqa: N801 - a namespace of key builders
    """Backend key names (the backend adds the deployment prefix)."""

    @staticmethod
    def record(session_id: str) -> str:
        return f"s:{session_id}"

    @staticmethod
    def queue(session_id: str) -> str:
        return f"s:{session_id}:q"

    @staticmethod
    def token(token_hash: str) -> str:
        return f"tok:{token_hash}"

    @staticmethod
    def used_token(token_hash: str) -> str:
        return f"tokused:{token_hash}"

    @staticmethod
    def topic_log(topic: str) -> str:
        return f"tl:{topic}"


def session_topic(session_id: str) -> str:
    """The bus topic the instance holding a session listens on (control messages)."""
    return f"session:{session_id}"


def player_topic(player_id: str) -> str:
    return f"player:{player_id}"


@dataclass
class ResumePlan:
    """What a resume must do, decided from the stored session and the client's position."""

    next_out_seq: int
    replay: list[internal_pb2.QueuedEvent] = field(default_factory=list)
    full_resync: bool = False
    reason: str = ""


def plan_resume(
    record: internal_pb2.SessionRecord,
    queue: list[internal_pb2.QueuedEvent],
    last_seq: int,
) -> ResumePlan:
    """Which queued reliable events to replay, or why the client must resync.

    ``last_seq`` is the highest server seq the client says it received.
    The client may be *ahead* of the record (it received events sent just
    before an instance died, whose bookkeeping was persisted first but the
    ack not yet trimmed): numbering then continues after what it has.
    """
    stored_next = record.next_out_seq or 1
    if last_seq >= stored_next:
        # Ahead of the store: persistence was skipped while the backend was down, so
        # the stored cursors may be behind too. Say so rather than risk duplicates.
        return ResumePlan(last_seq + 1, [], full_resync=True, reason="client ahead of the store")
    missing = stored_next - 1 - last_seq  # sent, and not received by the client
    pending = [e for e in queue if e.seq > last_seq]
    if len(pending) != missing or (pending and pending[0].seq != last_seq + 1):
        return ResumePlan(stored_next, [], full_resync=True, reason="replay queue trimmed")
    return ResumePlan(stored_next, pending)
