"""One suite, both backends: what gateway code may rely on from any Backend.

``memory`` runs on a ``task.Clock`` (time moves only when a test moves it);
``redis`` runs against the suite's own redis-server on the real reactor, so
TTLs there are short real ones and pub/sub delivery is awaited.  Two backend
instances share one broker/store (memory) or one server (redis), like two
gateway instances.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from redis_server import until
from twisted.internet import defer, task

from gateway.backend.base import Backend
from gateway.backend.memory import MemoryBackend, MemoryBroker, MemoryStore
from gateway.config import BackendConfig

_prefixes = itertools.count()
BINARY = bytes(range(256)) + b"\xff\xfe\x00 not utf-8 \xc3\x28"


class Pair:
    """Two backends on one broker/store or server, with received messages recorded."""

    def __init__(self, kind: str, a: Any, b: Any, clock: task.Clock | None) -> None:
        self.kind = kind
        self.a = a
        self.b = b
        self.clock = clock
        self.got: dict[int, list[tuple[str, bytes]]] = {id(a): [], id(b): []}
        for backend in (a, b):
            backend.on_message = self._recorder(backend)

    def _recorder(self, backend: Any) -> Callable[[str, bytes], None]:
        box = self.got[id(backend)]
        return lambda channel, payload: box.append((channel, payload))

    def received(self, backend: Any) -> list[tuple[str, bytes]]:
        return self.got[id(backend)]

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass: advance the fake clock, or really wait (redis)."""
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            from twisted.internet import reactor

            await task.deferLater(reactor, seconds, lambda: None)

    async def delivered(self, backend: Any, count: int) -> list[tuple[str, bytes]]:
        """Wait until ``backend`` received ``count`` messages in all (immediate for memory)."""
        box = self.received(backend)
        await until(lambda: len(box) >= count, 3.0, f"{count} messages")
        return box


def _redis_backend(url: str, prefix: str, instance_id: str) -> Any:
    from twisted.internet import reactor

    from gateway.backend.redis import RedisBackend

    config = BackendConfig(type="redis", redis_url=url, key_prefix=prefix,
                           command_timeout=0.5, bus_heartbeat_seconds=0.2)
    return RedisBackend(config, clock=reactor, instance_id=instance_id)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    if request.param == "memory":
        clock = task.Clock()
        broker, store = MemoryBroker(), MemoryStore(clock)
        a = MemoryBackend(clock, broker=broker, store=store)
        b = MemoryBackend(clock, broker=broker, store=store)
        result = Pair("memory", a, b, clock)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"ct{next(_prefixes)}:"
        a = _redis_backend(url, prefix, "a")
        b = _redis_backend(url, prefix, "b")
        result = Pair("redis", a, b, None)
    backends: list[Backend] = [a, b]
    pytest_twisted.blockon(defer.gatherResults([x.start() for x in backends]))
    yield result
    pytest_twisted.blockon(defer.gatherResults([x.stop() for x in backends]))


# --------------------------------------------------------------------------- bus


@pytest_twisted.ensureDeferred
async def test_both_backends_are_ready_after_start(pair: Pair) -> None:
    assert pair.a.ready and pair.b.ready


@pytest_twisted.ensureDeferred
async def test_publish_reaches_every_subscriber_and_counts_them(pair: Pair) -> None:
    await pair.a.subscribe("zone:1")
    await pair.b.subscribe("zone:1")
    assert await pair.a.publish("zone:1", b"hello") == 2
    assert await pair.delivered(pair.a, 1) == [("zone:1", b"hello")]
    assert await pair.delivered(pair.b, 1) == [("zone:1", b"hello")]
    assert await pair.b.publish("zone:nobody", b"x") == 0


@pytest_twisted.ensureDeferred
async def test_subscribe_is_idempotent(pair: Pair) -> None:
    await pair.a.subscribe("zone:1")
    await pair.a.subscribe("zone:1")
    assert await pair.b.publish("zone:1", b"once") == 1
    await pair.delivered(pair.a, 1)
    # A marker on another channel arrives after anything still in flight on zone:1.
    await pair.a.subscribe("marker")
    await pair.b.publish("marker", b"m")
    assert await pair.delivered(pair.a, 2) == [("zone:1", b"once"), ("marker", b"m")]


@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_delivery(pair: Pair) -> None:
    await pair.a.subscribe("zone:1")
    await pair.a.subscribe("marker")
    await pair.b.subscribe("zone:1")
    await pair.a.unsubscribe("zone:1")
    assert await pair.b.publish("zone:1", b"after") == 1  # b only
    await pair.b.publish("marker", b"m")
    assert await pair.delivered(pair.a, 1) == [("marker", b"m")]
    assert await pair.delivered(pair.b, 1) == [("zone:1", b"after")]
    await pair.a.unsubscribe("never-subscribed")  # harmless


@pytest_twisted.ensureDeferred
async def test_binary_payloads_arrive_as_exact_bytes(pair: Pair) -> None:
    await pair.b.subscribe("bin")
    payloads = [BINARY, b"", b"12345", b"-1.5", "h\xe9llo".encode()]
    for payload in payloads:
        assert await pair.a.publish("bin", payload) == 1
    box = await pair.delivered(pair.b, len(payloads))
    assert [p for _, p in box] == payloads
    assert all(type(p) is bytes for _, p in box)


# --------------------------------------------------------------------------- strings


@pytest_twisted.ensureDeferred
async def test_get_set_roundtrip_keeps_bytes(pair: Pair) -> None:
    assert await pair.a.get("missing") is None
    assert await pair.a.set("k", BINARY) is True
    assert await pair.b.get("k") == BINARY
    assert await pair.a.set("n", b"42") is True
    value = await pair.b.get("n")
    assert value == b"42" and type(value) is bytes  # never converted to a number
    assert await pair.a.set("k", b"v2") is True
    assert await pair.b.get("k") == b"v2"


@pytest_twisted.ensureDeferred
async def test_set_only_if_absent(pair: Pair) -> None:
    assert await pair.a.set("lock", b"a", only_if_absent=True) is True
    assert await pair.b.set("lock", b"b", only_if_absent=True) is False
    assert await pair.a.get("lock") == b"a"
    await pair.a.delete("lock")
    assert await pair.b.set("lock", b"b", 10.0, only_if_absent=True) is True
    assert await pair.a.get("lock") == b"b"
    assert 9.0 < (await pair.a.ttl("lock") or 0) <= 10.0


@pytest_twisted.ensureDeferred
async def test_set_with_ttl_expires(pair: Pair) -> None:
    await pair.a.set("short", b"v", 0.2)
    assert await pair.a.get("short") == b"v"
    assert 0 < (await pair.a.ttl("short") or 0) <= 0.2
    await pair.elapse(0.3)
    assert await pair.a.get("short") is None
    assert await pair.a.ttl("short") is None
    assert await pair.a.set("short", b"again", only_if_absent=True) is True  # expired = absent


@pytest_twisted.ensureDeferred
async def test_set_without_ttl_clears_an_old_one(pair: Pair) -> None:
    await pair.a.set("k", b"v", 10.0)
    await pair.a.set("k", b"w")
    assert await pair.a.ttl("k") is None


@pytest_twisted.ensureDeferred
async def test_getdel_is_single_use(pair: Pair) -> None:
    await pair.a.set("token", b"secret", 30.0)
    assert await pair.b.getdel("token") == b"secret"
    assert await pair.a.getdel("token") is None
    assert await pair.a.get("token") is None
    assert await pair.a.getdel("never") is None


@pytest_twisted.ensureDeferred
async def test_delete_counts_existing_keys(pair: Pair) -> None:
    await pair.a.set("x", b"1")
    await pair.a.hset("h", {"f": b"1"})
    assert await pair.b.delete("x", "h", "missing") == 2
    assert await pair.b.delete("x") == 0
    assert await pair.b.delete() == 0
    assert await pair.a.get("x") is None


@pytest_twisted.ensureDeferred
async def test_expire_and_ttl(pair: Pair) -> None:
    assert await pair.a.ttl("missing") is None
    assert await pair.a.expire("missing", 5.0) is False
    await pair.a.set("k", b"v")
    assert await pair.a.ttl("k") is None  # no expiry
    assert await pair.a.expire("k", 5.0) is True
    assert 4.0 < (await pair.a.ttl("k") or 0) <= 5.0
    assert await pair.a.expire("k", 0.2) is True
    await pair.elapse(0.3)
    assert await pair.a.get("k") is None


# --------------------------------------------------------------------------- counters


@pytest_twisted.ensureDeferred
async def test_incr(pair: Pair) -> None:
    assert await pair.a.incr("c") == 1
    assert await pair.b.incr("c", 5) == 6
    assert await pair.a.incr("c", -10) == -4
    assert await pair.a.get("c") == b"-4"
    assert await pair.a.ttl("c") is None


@pytest_twisted.ensureDeferred
async def test_incr_sets_and_keeps_ttl(pair: Pair) -> None:
    assert await pair.a.incr("rate", 1, ttl=10.0) == 1
    assert 9.0 < (await pair.a.ttl("rate") or 0) <= 10.0
    assert await pair.a.incr("rate") == 2  # no ttl given: the existing one stays
    assert 9.0 < (await pair.a.ttl("rate") or 0) <= 10.0
    assert await pair.a.incr("rate", 1, ttl=0.2) == 3  # a given ttl replaces it
    await pair.elapse(0.3)
    assert await pair.a.incr("rate") == 1  # expired: starts again
    assert await pair.a.ttl("rate") is None


# --------------------------------------------------------------------------- hashes


@pytest_twisted.ensureDeferred
async def test_hash_set_get_delete(pair: Pair) -> None:
    assert await pair.a.hgetall("h") == {}
    await pair.a.hset("h", {"name": b"alice", "bin": BINARY, "n": b"7"})
    await pair.b.hset("h", {"name": b"bob", "z\xe9": b"1"})  # merges, overwrites
    table = await pair.a.hgetall("h")
    assert table == {"name": b"bob", "bin": BINARY, "n": b"7", "z\xe9": b"1"}
    assert all(type(k) is str and type(v) is bytes for k, v in table.items())
    assert await pair.a.hdel("h", "name", "missing") == 1
    assert await pair.a.hdel("h") == 0
    assert await pair.a.hdel("nothing", "f") == 0
    assert await pair.a.hdel("h", "bin", "n", "z\xe9") == 3
    assert await pair.a.hgetall("h") == {}
    assert await pair.a.scan("h") == []  # an emptied hash is gone


@pytest_twisted.ensureDeferred
async def test_hash_ttl(pair: Pair) -> None:
    await pair.a.hset("h", {"f": b"1"}, ttl=10.0)
    assert 9.0 < (await pair.a.ttl("h") or 0) <= 10.0
    await pair.a.hset("h", {"g": b"2"})  # no ttl given: kept
    assert 9.0 < (await pair.a.ttl("h") or 0) <= 10.0
    await pair.a.hset("h", {"g": b"3"}, ttl=0.2)
    assert await pair.a.hgetall("h") == {"f": b"1", "g": b"3"}
    await pair.elapse(0.3)
    assert await pair.a.hgetall("h") == {}


# --------------------------------------------------------------------------- lists


@pytest_twisted.ensureDeferred
async def test_rpush_trims_to_max_len_and_returns_length(pair: Pair) -> None:
    assert await pair.a.lrange("q") == []
    assert await pair.a.rpush("q", [b"1", b"2", b"3"], max_len=5, ttl=30.0) == 3
    assert await pair.b.rpush("q", [b"4", b"5", b"6", b"7"], max_len=5, ttl=30.0) == 5
    assert await pair.a.lrange("q") == [b"3", b"4", b"5", b"6", b"7"]  # oldest dropped
    assert await pair.a.lrange("q", 1, 2) == [b"4", b"5"]
    assert await pair.a.lrange("q", -2, -1) == [b"6", b"7"]
    assert await pair.a.lrange("q", 3) == [b"6", b"7"]
    assert 29.0 < (await pair.a.ttl("q") or 0) <= 30.0
    assert await pair.a.rpush("q", [BINARY], max_len=2, ttl=30.0) == 2
    assert await pair.a.lrange("q") == [b"7", BINARY]


@pytest_twisted.ensureDeferred
async def test_rpush_refreshes_ttl(pair: Pair) -> None:
    await pair.a.rpush("q", [b"1"], max_len=10, ttl=0.2)
    await pair.a.rpush("q", [b"2"], max_len=10, ttl=30.0)
    assert 29.0 < (await pair.a.ttl("q") or 0) <= 30.0
    await pair.a.rpush("q", [b"3"], max_len=10, ttl=0.2)
    await pair.elapse(0.3)
    assert await pair.a.lrange("q") == []


@pytest_twisted.ensureDeferred
async def test_ltrim_left_drops_the_oldest(pair: Pair) -> None:
    await pair.a.rpush("q", [b"1", b"2", b"3", b"4"], max_len=10, ttl=30.0)
    await pair.a.ltrim_left("q", 0)
    assert await pair.a.lrange("q") == [b"1", b"2", b"3", b"4"]
    await pair.a.ltrim_left("q", 2)
    assert await pair.b.lrange("q") == [b"3", b"4"]
    await pair.a.ltrim_left("q", 5)
    assert await pair.b.lrange("q") == []
    assert await pair.a.scan("q") == []  # an emptied list is gone
    await pair.a.ltrim_left("missing", 3)


# --------------------------------------------------------------------------- scan


@pytest_twisted.ensureDeferred
async def test_scan_returns_unprefixed_keys_under_the_prefix(pair: Pair) -> None:
    await pair.a.set("session:alice", b"1")
    await pair.a.set("session:bob", b"1")
    await pair.a.hset("session:carol:meta", {"f": b"1"})
    await pair.a.rpush("sessionx", [b"1"], max_len=5, ttl=30.0)
    await pair.a.set("presence:alice", b"1")
    assert await pair.b.scan("session:") == ["session:alice", "session:bob", "session:carol:meta"]
    assert await pair.b.scan("session") == [
        "session:alice", "session:bob", "session:carol:meta", "sessionx",
    ]
    assert await pair.b.scan("nothing:") == []
    assert await pair.b.scan() == [
        "presence:alice", "session:alice", "session:bob", "session:carol:meta", "sessionx",
    ]


@pytest_twisted.ensureDeferred
async def test_scan_prefix_is_literal_not_a_glob(pair: Pair) -> None:
    await pair.a.set("g*[x]?\\:1", b"1")
    await pair.a.set("gA[x]?\\:2", b"1")
    await pair.a.set("g*x", b"1")
    assert await pair.a.scan("g*[x]?\\:") == ["g*[x]?\\:1"]
    assert await pair.a.scan("g*") == ["g*[x]?\\:1", "g*x"]


@pytest_twisted.ensureDeferred
async def test_scan_skips_expired_keys(pair: Pair) -> None:
    await pair.a.set("t:gone", b"1", 0.2)
    await pair.a.set("t:kept", b"1")
    await pair.elapse(0.3)
    assert await pair.a.scan("t:") == ["t:kept"]


@pytest_twisted.ensureDeferred
async def test_scan_many_keys(pair: Pair) -> None:
    names = [f"many:{i:04d}" for i in range(1500)]  # more than one SCAN step
    await defer.gatherResults([pair.a.set(n, b"1") for n in names])
    assert await pair.b.scan("many:") == names


# --------------------------------------------------------------------------- capped logs


@pytest_twisted.ensureDeferred
async def test_append_log_numbers_entries_and_reads_after_a_position(pair: Pair) -> None:
    assert await pair.a.read_log("log", 0) == (0, [])
    entries = [b"first", BINARY, b"", b"a:b:c"]  # colons and binary survive
    seqs = [await pair.a.append_log("log", e, max_len=10, ttl=30.0) for e in entries]
    assert seqs == [1, 2, 3, 4]
    assert await pair.b.read_log("log", 0) == (1, list(zip(seqs, entries, strict=True)))
    assert await pair.b.read_log("log", 2) == (1, [(3, b""), (4, b"a:b:c")])
    assert await pair.b.read_log("log", 4) == (1, [])
    assert await pair.b.read_log("log", 99) == (1, [])
    assert 29.0 < (await pair.a.ttl("log") or 0) <= 30.0


@pytest_twisted.ensureDeferred
async def test_append_log_trims_but_never_reuses_numbers(pair: Pair) -> None:
    for i in range(1, 6):
        assert await pair.a.append_log("log", b"e%d" % i, max_len=3, ttl=30.0) == i
    oldest, entries = await pair.b.read_log("log", 1)
    assert oldest == 3  # a reader at 1 missed entry 2
    assert entries == [(3, b"e3"), (4, b"e4"), (5, b"e5")]
    assert await pair.b.append_log("log", b"e6", max_len=3, ttl=30.0) == 6
    assert await pair.a.read_log("log", 5) == (4, [(6, b"e6")])
    assert await pair.a.scan("log") == ["log", "log:n"]  # the log and its counter


@pytest_twisted.ensureDeferred
async def test_append_log_expires_as_a_whole(pair: Pair) -> None:
    await pair.a.append_log("log", b"old", max_len=10, ttl=0.2)
    await pair.a.append_log("log", b"old2", max_len=10, ttl=0.2)
    await pair.elapse(0.3)
    assert await pair.a.read_log("log", 0) == (0, [])
    assert await pair.a.append_log("log", b"new", max_len=10, ttl=30.0) == 1
    assert await pair.a.read_log("log", 0) == (1, [(1, b"new")])
