"""The embedded backend: everything in this process's memory.

The default for one instance: no Redis to run.  A :class:`MemoryBroker` and
a :class:`MemoryStore` may be shared by several backends in one process,
which behaves like several instances on one Redis (used by tests, and
useful for embedding).  Expiry follows the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from gateway.backend.base import MessageHandler

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryStore"]


class MemoryBroker:
    """Channels to subscribed backends; delivery is synchronous, like a local Redis."""

    def __init__(self) -> None:
        self._channels: dict[str, set[MemoryBackend]] = {}

    def subscribe(self, backend: MemoryBackend, channel: str) -> None:
        self._channels.setdefault(channel, set()).add(backend)

    def unsubscribe(self, backend: MemoryBackend, channel: str) -> None:
        members = self._channels.get(channel)
        if members is not None:
            members.discard(backend)
            if not members:
                del self._channels[channel]

    def publish(self, channel: str, payload: bytes) -> int:
        members = tuple(self._channels.get(channel, ()))
        for backend in members:
            backend.on_message(channel, payload)
        return len(members)


class MemoryStore:
    """Keys to values with optional expiry deadlines (clock seconds)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.data: dict[str, Any] = {}
        self.expires: dict[str, float] = {}

    def alive(self, key: str) -> bool:
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= self.clock.seconds():
            self.data.pop(key, None)
            del self.expires[key]
            return False
        return key in self.data

    def lookup(self, key: str) -> Any:
        return self.data[key] if self.alive(key) else None

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        self.data[key] = value
        if ttl is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = self.clock.seconds() + ttl

    def remove(self, key: str) -> bool:
        self.expires.pop(key, None)
        return self.data.pop(key, None) is not None

    def sweep(self) -> None:
        now = self.clock.seconds()
        for key in [k for k, t in self.expires.items() if t <= now]:
            self.data.pop(key, None)
            del self.expires[key]


class MemoryBackend:
    """The embedded default backend (see :class:`gateway.backend.base.Backend`)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        broker: MemoryBroker | None = None,
        store: MemoryStore | None = None,
    ) -> None:
        self.clock = clock
        self.broker = broker or MemoryBroker()
        self.store = store or MemoryStore(clock)
        self.ready = True
        self.on_message: MessageHandler = lambda channel, payload: None
        self.on_resync: Callable[[], object] = lambda: None
        self.on_ready_change: Callable[[bool], object] = lambda ready: None
        self._channels: set[str] = set()
        self._sweeper: task.LoopingCall | None = None

    def start(self) -> defer.Deferred[None]:
        self._sweeper = task.LoopingCall(self.store.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(10.0, now=False)
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for channel in tuple(self._channels):
            self.broker.unsubscribe(self, channel)
        self._channels.clear()
        return defer.succeed(None)

    # ------------------------------------------------------------------ bus

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        self._channels.add(channel)
        self.broker.subscribe(self, channel)
        return defer.succeed(None)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        self._channels.discard(channel)
        self.broker.unsubscribe(self, channel)
        return defer.succeed(None)

    def publish(self, channel: str, payload: bytes) -> defer.Deferred[int]:
        return defer.succeed(self.broker.publish(channel, payload))

    # ------------------------------------------------------------------ store

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        value = self.store.lookup(key)
        return defer.succeed(value if isinstance(value, bytes) else None)

    def set(self, key: str, value: bytes, ttl: float | None = None, *,
            only_if_absent: bool = False) -> defer.Deferred[bool]:
        if only_if_absent and self.store.alive(key):
            return defer.succeed(False)
        self.store.put(key, bytes(value), ttl)
        return defer.succeed(True)

    def getdel(self, key: str) -> defer.Deferred[bytes | None]:
        value = self.store.lookup(key)
        if value is not None:
            self.store.remove(key)
        return defer.succeed(value if isinstance(value, bytes) else None)

    def delete(self, *keys: str) -> defer.Deferred[int]:
        return defer.succeed(sum(1 for k in keys if self.store.alive(k) and self.store.remove(k)))

    def expire(self, key: str, ttl: float) -> defer.Deferred[bool]:
        if not self.store.alive(key):
            return defer.succeed(False)
        self.store.expires[key] = self.clock.seconds() + ttl
        return defer.succeed(True)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> defer.Deferred[int]:
        current = self.store.lookup(key)
        value = int(current or b"0") + amount
        deadline = self.store.expires.get(key)
        self.store.put(key, str(value).encode(), ttl)
        if ttl is None and deadline is not None:
            self.store.expires[key] = deadline  # INCR keeps an existing TTL, as Redis does
        return defer.succeed(value)

    def hset(self, key: str, mapping: Mapping[str, bytes], ttl: float | None = None
             ) -> defer.Deferred[None]:
        current = self.store.lookup(key)
        table = dict(current) if isinstance(current, dict) else {}
        table.update({k: bytes(v) for k, v in mapping.items()})
        deadline = self.store.expires.get(key)
        self.store.put(key, table, ttl)
        if ttl is None and deadline is not None:
            self.store.expires[key] = deadline
        return defer.succeed(None)

    def hgetall(self, key: str) -> defer.Deferred[dict[str, bytes]]:
        current = self.store.lookup(key)
        return defer.succeed(dict(current) if isinstance(current, dict) else {})

    def hdel(self, key: str, *fields: str) -> defer.Deferred[int]:
        current = self.store.lookup(key)
        if not isinstance(current, dict):
            return defer.succeed(0)
        removed = sum(1 for f in fields if current.pop(f, None) is not None)
        if not current:
            self.store.remove(key)
        return defer.succeed(removed)

    def rpush(self, key: str, values: Sequence[bytes], *, max_len: int, ttl: float
              ) -> defer.Deferred[int]:
        current = self.store.lookup(key)
        items: list[bytes] = list(current) if isinstance(current, list) else []
        items.extend(bytes(v) for v in values)
        if len(items) > max_len:
            del items[: len(items) - max_len]
        self.store.put(key, items, ttl)
        return defer.succeed(len(items))

    def lrange(self, key: str, start: int = 0, stop: int = -1) -> defer.Deferred[list[bytes]]:
        current = self.store.lookup(key)
        items = list(current) if isinstance(current, list) else []
        end = None if stop == -1 else stop + 1
        return defer.succeed(items[start:end])

    def ltrim_left(self, key: str, count: int) -> defer.Deferred[None]:
        current = self.store.lookup(key)
        if isinstance(current, list) and count > 0:
            del current[:count]
            if not current:
                self.store.remove(key)
        return defer.succeed(None)

    def append_log(self, key: str, entry: bytes, *, max_len: int, ttl: float
                   ) -> defer.Deferred[int]:
        counter_key = key + ":n"
        seq = int(self.store.lookup(counter_key) or b"0") + 1
        self.store.put(counter_key, str(seq).encode(), ttl)
        current = self.store.lookup(key)
        entries: list[tuple[int, bytes]] = list(current) if isinstance(current, list) else []
        entries.append((seq, bytes(entry)))
        if len(entries) > max_len:
            del entries[: len(entries) - max_len]
        self.store.put(key, entries, ttl)
        return defer.succeed(seq)

    def read_log(self, key: str, after: int
                 ) -> defer.Deferred[tuple[int, list[tuple[int, bytes]]]]:
        current = self.store.lookup(key)
        entries: list[tuple[int, bytes]] = list(current) if isinstance(current, list) else []
        oldest = entries[0][0] if entries else 0
        return defer.succeed((oldest, [(s, e) for s, e in entries if s > after]))

    def scan(self, prefix: str = "") -> defer.Deferred[list[str]]:
        self.store.sweep()
        return defer.succeed(sorted(k for k in self.store.data if k.startswith(prefix)))

    def ttl(self, key: str) -> defer.Deferred[float | None]:
        if not self.store.alive(key):
            return defer.succeed(None)
        deadline = self.store.expires.get(key)
        return defer.succeed(None if deadline is None else deadline - self.clock.seconds())
