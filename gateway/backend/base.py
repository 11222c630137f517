"""The backend contract: a bus (publish/subscribe) and a store (keys with TTLs).

Two implementations honour it: ``memory`` (the embedded default, one
instance) and ``redis`` (txredisapi, many instances).  Everything above this
line (sessions, fan-out, presence) is written once against it, and the
shared test suite in ``tests/test_backend_contract.py`` runs against both.

Keys and channels are given without the deployment prefix; a backend adds
``backend.key_prefix`` itself so that a shared Redis can host several
deployments and a test can scan for anything left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

__all__ = ["Backend", "BackendUnavailable", "MessageHandler"]

#: ``handler(channel, payload)`` for every message on a subscribed channel.
MessageHandler = Callable[[str, bytes], None]


class BackendUnavailable(Exception):  # noqa: N818 - a condition callers branch on
    """The backend could not be reached (or did not answer in time)."""


class Backend(Protocol):
    #: True while the backend answers; ``/readyz`` reports it.
    ready: bool
    #: Set by the gateway: called for every bus message on a subscribed channel.
    on_message: MessageHandler
    #: Set by the gateway: called after the bus reconnected and re-subscribed,
    #: because pub/sub drops whatever was published while disconnected.
    on_resync: Callable[[], object]
    #: Called with True/False when ``ready`` changes.
    on_ready_change: Callable[[bool], object]

    def start(self) -> Deferred[None]: ...

    def stop(self) -> Deferred[None]: ...

    # ------------------------------------------------------------------ bus

    def subscribe(self, channel: str) -> Deferred[None]: ...

    def unsubscribe(self, channel: str) -> Deferred[None]: ...

    def publish(self, channel: str, payload: bytes) -> Deferred[int]:
        """Returns how many subscribers (instances) received it."""
        ...

    # ------------------------------------------------------------------ store

    def get(self, key: str) -> Deferred[bytes | None]: ...

    def set(
        self, key: str, value: bytes, ttl: float | None = None, *, only_if_absent: bool = False
    ) -> Deferred[bool]:
        """False only when ``only_if_absent`` and the key existed."""
        ...

    def getdel(self, key: str) -> Deferred[bytes | None]:
        """Atomically read and delete: single-use values (reconnection tokens)."""
        ...

    def delete(self, *keys: str) -> Deferred[int]: ...

    def expire(self, key: str, ttl: float) -> Deferred[bool]: ...

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> Deferred[int]: ...

    def hset(self, key: str, mapping: Mapping[str, bytes], ttl: float | None = None
             ) -> Deferred[None]: ...

    def hgetall(self, key: str) -> Deferred[dict[str, bytes]]: ...

    def hdel(self, key: str, *fields: str) -> Deferred[int]: ...

    def rpush(self, key: str, values: Sequence[bytes], *, max_len: int, ttl: float
              ) -> Deferred[int]:
        """Append, keep only the newest ``max_len``, refresh the TTL; returns the length."""
        ...

    def lrange(self, key: str, start: int = 0, stop: int = -1) -> Deferred[list[bytes]]: ...

    def ltrim_left(self, key: str, count: int) -> Deferred[None]:
        """Drop the ``count`` oldest elements (acknowledged events)."""
        ...

    def append_log(self, key: str, entry: bytes, *, max_len: int, ttl: float) -> Deferred[int]:
        """Append to a capped log; returns the entry's sequence number.

        Numbers run 1, 2, 3 ... per key and are never reused, even after
        the oldest entries are trimmed: a reader holding a position can tell
        whether it missed anything.  ``ttl`` applies to the whole log.
        """
        ...

    def read_log(self, key: str, after: int) -> Deferred[tuple[int, list[tuple[int, bytes]]]]:
        """``(oldest, entries)``: entries with seq > ``after`` in order, and the seq of
        the oldest entry still held (0 when the log is empty or gone).  When
        ``oldest > after + 1`` the reader missed ``oldest - after - 1`` entries."""
        ...

    def scan(self, prefix: str = "") -> Deferred[list[str]]:
        """Every key (without the deployment prefix) that starts with ``prefix``."""
        ...

    def ttl(self, key: str) -> Deferred[float | None]:
        """Seconds left, or None for a key without expiry (or missing)."""
        ...
