"""RedisBackend beyond the shared contract: outages, repair, resync, clean stop, config.

Failure tests get a redis-server of their own (``own_server``) so that
restarting, killing or freezing it never disturbs other tests.  Timings use
command_timeout 0.5 s and a 0.2 s bus heartbeat.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from redis_server import RedisServer, SentinelServer, find_redis_server, until
from twisted.internet import defer, reactor, task

from gateway.backend.base import BackendUnavailable
from gateway.backend.redis import EVENTS, RedisBackend, RedisTarget, parse_target
from gateway.config import BackendConfig, ConfigError

TIMEOUT = 0.5
HEARTBEAT = 0.2
_ids = itertools.count()




def config(url: str, **overrides: Any) -> BackendConfig:
    values: dict[str, Any] = {
        "type": "redis", "redis_url": url, "key_prefix": "rt:",
        "command_timeout": TIMEOUT, "bus_heartbeat_seconds": HEARTBEAT,
    }
    values.update(overrides)
    return BackendConfig(**values)


class Watch:
    """Records what a backend reports: messages, ready changes, resyncs."""

    def __init__(self, backend: RedisBackend) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ready: list[bool] = []
        self.resyncs = 0
        backend.on_message = lambda channel, payload: self.messages.append((channel, payload))
        backend.on_ready_change = self.ready.append
        backend.on_resync = self._resynced

    def _resynced(self) -> None:
        self.resyncs += 1


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def make() -> Iterator[Callable[..., RedisBackend]]:
    """make(url, **config_overrides) -> an unstarted backend, stopped after the test."""
    made: list[RedisBackend] = []

    def _make(url: str, *, start_timeout: float | None = None, metrics: Any = None,
              instance_id: str | None = None, **overrides: Any) -> RedisBackend:
        backend = RedisBackend(
            config(url, **overrides), reactor=reactor, instance_id=instance_id or f"i{next(_ids)}",
            start_timeout=start_timeout, metrics=metrics,
        )
        made.append(backend)
        return backend

    yield _make
    pytest_twisted.blockon(defer.gatherResults([b.stop() for b in made]))


def new_delayed_calls(before: set[Any]) -> list[Any]:
    return [c for c in reactor.getDelayedCalls() if c not in before and c.active()]


async def client_count(server: RedisServer) -> int:
    """Connections on the server besides the one asking."""
    listing = server.command("CLIENT", "LIST").decode()
    return sum(1 for line in listing.splitlines() if "cmd=client|list" not in line)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# --------------------------------------------------------------------------- outages


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_server_restart_mid_subscription(own_server: RedisServer, make: Any) -> None:
    a, b = make(own_server.url), make(own_server.url)
    watch = Watch(a)
    await defer.gatherResults([a.start(), b.start()])
    await a.subscribe("zone:1")
    assert a.ready and watch.ready == [True] and watch.resyncs == 0  # no resync on first connect
    assert await b.publish("zone:1", b"before") == 1
    await until(lambda: len(watch.messages) == 1)

    own_server.restart()  # stop, start on the same port: both connections drop

    await until(lambda: False in watch.ready, 3, "not ready")
    await until(lambda: a.ready and a.bus_connected and watch.resyncs == 1, 5, "back and resynced")
    assert watch.ready == [True, False, True]
    await until(lambda: b.ready and b.bus_connected, 5)
    assert await b.publish("zone:1", b"after") == 1  # re-subscribed by itself
    await until(lambda: len(watch.messages) == 2)
    assert watch.messages == [("zone:1", b"before"), ("zone:1", b"after")]
    assert a.stats["command_lost"] == 1 and a.stats["bus_lost"] == 1
    assert a.stats["resync"] == 1 and a.stats["bus_repair"] == 0


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_requests_made_while_down_are_applied_on_reconnect(
    own_server: RedisServer, make: Any
) -> None:
    a, b = make(own_server.url), make(own_server.url)
    watch = Watch(a)
    await defer.gatherResults([a.start(), b.start()])
    await a.subscribe("old")
    own_server.kill()
    await until(lambda: not a.ready and not a.bus_connected, 3)
    await a.subscribe("new")  # remembered: fires at once
    await a.unsubscribe("old")
    assert a.channels == {"new"}
    own_server.start()
    await until(lambda: watch.resyncs == 1 and b.ready, 5)
    assert await b.publish("old", b"x") == 0
    assert await b.publish("new", b"y") == 1
    await until(lambda: watch.messages == [("new", b"y")])


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_commands_against_a_killed_server_fail_in_time(
    own_server: RedisServer, make: Any
) -> None:
    a = make(own_server.url)
    await a.start()
    own_server.kill()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await a.get("k")  # in flight when the connection resets
    assert time.monotonic() - started < TIMEOUT + 0.3
    await until(lambda: not a.ready, 3)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="no reply within"):
        await a.set("k", b"v")  # no connection at all: waits at most command_timeout
    assert TIMEOUT - 0.05 <= time.monotonic() - started < TIMEOUT + 0.3
    with pytest.raises(BackendUnavailable):
        await a.publish("zone:1", b"x")
    await a.subscribe("later")  # the bus is down: remembered, not an error


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_commands_against_a_hung_server_time_out(own_server: RedisServer, make: Any) -> None:
    a = make(own_server.url)
    watch = Watch(a)
    await a.start()
    own_server.pause()  # SIGSTOP: sockets stay open, nothing answers
    try:
        started = time.monotonic()
        results = await defer.DeferredList([a.get("k"), a.subscribe("zone:9")], consumeErrors=True)
        assert TIMEOUT - 0.05 <= time.monotonic() - started < TIMEOUT + 0.3
        for ok, failure in results:
            assert not ok and failure.check(BackendUnavailable)
            assert "no reply within" in failure.getErrorMessage()
        await until(lambda: not a.ready, 3, "the PING to time out")
        assert a.stats["ping_failure"] >= 1 and a.stats["command_timeout"] >= 1
        assert a.stats["subscribe_timeout"] == 1 and not a.bus_connected  # dropped: suspect
    finally:
        own_server.resume()
    await until(lambda: a.ready and a.bus_connected, 5, "ready again after resume")
    assert watch.ready[:2] == [True, False] and watch.ready[-1] is True
    assert watch.resyncs >= 1
    assert await a.get("k") is None
    assert await a.publish("zone:9", b"kept") == 1  # the timed-out subscription was kept


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_killed_bus_connection_is_restored(own_server: RedisServer, make: Any) -> None:
    a, b = make(own_server.url), make(own_server.url)
    watch = Watch(a)
    await defer.gatherResults([a.start(), b.start()])
    await a.subscribe("zone:1")
    killed = own_server.command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed == 2  # a's and b's bus connections
    await until(lambda: watch.resyncs == 1 and a.bus_connected, 3)
    assert watch.ready == [True]  # the command connection was never touched
    assert await b.publish("zone:1", b"again") == 1
    await until(lambda: watch.messages == [("zone:1", b"again")])


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_silent_bus_death_is_detected_by_the_heartbeat(
    own_server: RedisServer, make: Any
) -> None:
    a, b = make(own_server.url), make(own_server.url)
    watch = Watch(a)
    await defer.gatherResults([a.start(), b.start()])
    await a.subscribe("zone:1")
    await sleep(3 * HEARTBEAT)
    assert a.stats["bus_repair"] == 0  # heartbeats come back while all is well
    # The bus connection stops delivering but TCP says nothing: bytes just vanish.
    dead = a._subscriber
    dead.dataReceived = lambda data, unpause=False: None
    started = time.monotonic()
    await b.publish("zone:1", b"lost")
    await until(lambda: a.stats["bus_repair"] == 1, 3, "the heartbeat to notice")
    noticed = time.monotonic() - started
    assert noticed < (3 + 2) * HEARTBEAT + TIMEOUT
    await until(lambda: a.bus_connected and a._subscriber is not dead and watch.resyncs == 1, 3)
    assert watch.ready == [True]
    assert await b.publish("zone:1", b"after") == 1
    await until(lambda: watch.messages == [("zone:1", b"after")])


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_start_gives_up_in_bounded_time_and_keeps_trying(
    own_server: RedisServer, make: Any
) -> None:
    own_server.stop()
    a = make(own_server.url, start_timeout=0.4)
    watch = Watch(a)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="still retrying"):
        await a.start()
    assert 0.35 <= time.monotonic() - started < 1.0
    assert not a.ready
    await a.subscribe("zone:1")
    own_server.start()
    await until(lambda: a.ready and a.bus_connected, 5, "a late first connection")
    assert watch.resyncs == 1  # whatever happened before it was missed
    assert await a.publish("zone:1", b"x") == 1


# --------------------------------------------------------------------------- clean stop


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_stop_leaves_no_delayed_calls_and_no_connections(
    own_server: RedisServer, make: Any
) -> None:
    before = set(reactor.getDelayedCalls())
    a = make(own_server.url)
    await a.start()
    await a.subscribe("zone:1")
    await a.set("k", b"v", 30.0)
    await a.incr("n", 1, ttl=30.0)
    assert await a.publish("zone:1", b"x") == 1
    await sleep(2 * HEARTBEAT)
    assert await client_count(own_server) == 2  # the command and the bus connection
    await a.stop()
    assert new_delayed_calls(before) == []
    await until(lambda: own_server.command("CLIENT", "LIST").count(b"\n") == 1, 2, "closed")
    assert not a.ready
    with pytest.raises(BackendUnavailable, match="stopped"):
        await a.get("k")
    await a.stop()  # twice is fine


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_stop_while_reconnecting_leaves_no_delayed_calls(
    own_server: RedisServer, make: Any
) -> None:
    before = set(reactor.getDelayedCalls())
    own_server.stop()
    a = make(own_server.url, start_timeout=5.0)
    starting = a.start()
    await sleep(0.3)  # a few refused attempts; a retry is scheduled
    pending = a.get("k")
    await a.stop()
    with pytest.raises(BackendUnavailable, match="stopped"):
        await starting
    with pytest.raises(BackendUnavailable):
        await pending
    assert new_delayed_calls(before) == []


# --------------------------------------------------------------------------- on the server


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_keys_and_channels_carry_the_prefix(redis_server: Any, redis_url: str,
                                                  make: Any) -> None:
    a = make(redis_url, key_prefix="dep1:", instance_id="gw1")
    other = make(redis_url, key_prefix="dep2:")
    watch = Watch(a)
    await defer.gatherResults([a.start(), other.start()])
    await a.set("session:x", b"1")
    await a.rpush("events:x", [b"e"], max_len=3, ttl=30.0)
    await other.set("session:y", b"1")
    assert sorted(redis_server.command("KEYS", "*")) == [
        b"dep1:events:x", b"dep1:session:x", b"dep2:session:y",
    ]
    assert await a.scan() == ["events:x", "session:x"]  # never another deployment's keys
    await a.subscribe("zone:1")
    assert b"dep1:hb:gw1" in redis_server.command("PUBSUB", "CHANNELS", "dep1:*")
    assert redis_server.command("PUBLISH", "zone:1", b"raw") == 0
    assert await other.publish("zone:1", b"other deployment") == 0
    assert redis_server.command("PUBLISH", "dep1:zone:1", b"raw") == 1
    await until(lambda: watch.messages == [("zone:1", b"raw")])


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_database_number_from_the_url(redis_server: Any, redis_url: str,
                                            make: Any) -> None:
    a = make(redis_url.rsplit("/", 1)[0] + "/3")
    await a.start()
    await a.set("k", b"v")
    assert redis_server.command("GET", "rt:k", db=3) == b"v"
    assert redis_server.command("GET", "rt:k") is None


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_password_from_the_environment(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisServer(extra_args=("--requirepass", "s3cret pass")) as server:
        monkeypatch.setenv("RTGW_TEST_REDIS_PASSWORD", "s3cret pass")
        a = make(server.url, redis_password_env="RTGW_TEST_REDIS_PASSWORD")
        await a.start()
        await a.subscribe("zone:1")
        assert await a.publish("zone:1", b"x") == 1
        monkeypatch.setenv("RTGW_TEST_REDIS_PASSWORD", "wrong")
        bad = make(server.url, redis_password_env="RTGW_TEST_REDIS_PASSWORD", start_timeout=0.3)
        with pytest.raises(BackendUnavailable):
            await bad.start()
        assert not bad.ready
        await defer.gatherResults([a.stop(), bad.stop()])


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_lua_scripts_survive_a_script_flush(redis_server: Any, redis_url: str,
                                                  make: Any) -> None:
    a = make(redis_url)
    await a.start()
    assert await a.incr("n", 1, ttl=30.0) == 1
    assert await a.rpush("q", [b"1"], max_len=2, ttl=30.0) == 1
    assert redis_server.command("SCRIPT", "FLUSH") == "OK"
    assert await a.incr("n", 1, ttl=30.0) == 2  # NOSCRIPT: sent again with EVAL
    assert await a.rpush("q", [b"2", b"3"], max_len=2, ttl=30.0) == 2


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_wrong_type_is_a_bug_not_an_outage(redis_url: str, make: Any) -> None:
    import txredisapi

    a = make(redis_url)
    await a.start()
    await a.hset("h", {"f": b"1"})
    with pytest.raises(txredisapi.ResponseError, match="WRONGTYPE"):
        await a.get("h")
    assert a.ready


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_events_are_counted_in_metrics(own_server: RedisServer, make: Any) -> None:
    class Counter:
        def __init__(self) -> None:
            self.counts: dict[str, float] = {}

        def labels(self, *values: str) -> Any:
            counts = self.counts

            class Child:
                def inc(self, amount: float = 1) -> None:
                    counts[values[0]] = counts.get(values[0], 0) + amount

            return Child()

    class Metrics:
        redis_events = Counter()

    metrics = Metrics()
    a = make(own_server.url, metrics=metrics)
    await a.start()
    own_server.command("CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: a.stats["resync"] == 1, 3)
    assert set(metrics.redis_events.counts) <= set(EVENTS)
    assert metrics.redis_events.counts == {k: v for k, v in a.stats.items() if v}
    assert metrics.redis_events.counts["bus_connect"] == 2


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_metrics_without_a_redis_counter_are_ignored(redis_url: str, make: Any) -> None:
    from gateway.metrics import Metrics

    a = make(redis_url, metrics=Metrics())  # what the service passes before it has the counter
    await a.start()
    assert a.stats["command_connect"] == 1


# --------------------------------------------------------------------------- Sentinel


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_sentinel_finds_the_master(own_server: RedisServer, make: Any) -> None:
    assert own_server.port is not None
    with SentinelServer(own_server.port, "gwmaster") as sentinel:
        before = set(reactor.getDelayedCalls())
        a = make("redis://ignored:1/0", sentinels=(f"127.0.0.1:{sentinel.port}",),
                 sentinel_master="gwmaster", start_timeout=5.0)
        watch = Watch(a)
        await a.start()
        await a.subscribe("zone:1")
        await a.set("k", b"v")
        assert own_server.command("GET", "rt:k") == b"v"
        assert own_server.command("PUBLISH", "rt:zone:1", b"via sentinel") == 1
        await until(lambda: watch.messages == [("zone:1", b"via sentinel")])
        await a.stop()
        assert new_delayed_calls(before) == []


# --------------------------------------------------------------------------- config (no server)


def test_parse_target_plain_url() -> None:
    target = parse_target(BackendConfig(redis_url="redis://redis.internal:6380/2"))
    assert target == RedisTarget(host="redis.internal", port=6380, db=2)
    assert target.describe() == "redis://redis.internal:6380/2"


def test_parse_target_defaults_and_credentials_in_the_url() -> None:
    target = parse_target(BackendConfig(redis_url="redis://gw:p%40ss@[::1]"))
    assert (target.host, target.port, target.db) == ("::1", 6379, 0)
    assert (target.username, target.password) == ("gw", "p@ss")
    assert "p@ss" not in repr(target) and "p@ss" not in target.describe()
    assert parse_target(BackendConfig(redis_url="redis://:only@h")).username is None


def test_parse_target_password_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_PW", "from-env")
    target = parse_target(
        BackendConfig(redis_url="redis://:inurl@h/0", redis_password_env="RTGW_PW")
    )
    assert target.password == "from-env"
    monkeypatch.delenv("RTGW_PW")
    with pytest.raises(ConfigError) as err:
        parse_target(BackendConfig(redis_password_env="RTGW_PW"))
    assert err.value.key == "backend.redis_password_env"


def test_parse_target_tls_and_unix() -> None:
    assert parse_target(BackendConfig(redis_url="rediss://h:6390")).tls is True
    target = parse_target(BackendConfig(redis_url="unix:///run/redis.sock?db=4"))
    assert (target.unix_path, target.db) == ("/run/redis.sock", 4)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h:1/0", "unsupported scheme"),
        ("redis://h:1/x", "database must be a number"),
        ("redis://h:99999/0", "not a valid URL"),
        ("redis:///0", "missing host"),
        ("redis://h/0?ssl=true", "unsupported URL parameter"),
    ],
)
def test_parse_target_rejects(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as err:
        parse_target(BackendConfig(redis_url=url))
    assert err.value.key == "backend.redis_url"


def test_parse_target_sentinels() -> None:
    target = parse_target(BackendConfig(
        redis_url="redis://:pw@ignored/1", sentinels=("s1:26380", "[::1]", "s3"),
        sentinel_master="main",
    ))
    assert target.sentinels == (("s1", 26380), ("::1", 26379), ("s3", 26379))
    assert (target.sentinel_master, target.db, target.password) == ("main", 1, "pw")
    with pytest.raises(ConfigError) as err:
        parse_target(BackendConfig(sentinels=("s1:x",), sentinel_master="main"))
    assert err.value.key == "backend.sentinels[0]"
    with pytest.raises(ConfigError) as err:
        parse_target(BackendConfig(sentinels=("s1",)))
    assert err.value.key == "backend.sentinel_master"


def test_config_errors_surface_at_construction() -> None:
    with pytest.raises(ConfigError):
        RedisBackend(BackendConfig(redis_url="mongodb://h"), clock=task.Clock(), instance_id="x")
    with pytest.raises(ValueError, match="instance_id"):
        RedisBackend(BackendConfig(), clock=task.Clock(), instance_id="")


def test_endpoints_for_tls_and_unix_sockets() -> None:
    from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

    plain = RedisBackend(BackendConfig(redis_url="redis://h:1"), instance_id="x")
    assert isinstance(plain._endpoint(), HostnameEndpoint)
    tls = RedisBackend(BackendConfig(redis_url="rediss://h:1"), instance_id="x")
    endpoint = tls._endpoint()
    assert not isinstance(endpoint, HostnameEndpoint)
    assert isinstance(endpoint._wrappedEndpoint, HostnameEndpoint)  # wrapClientTLS
    unix = RedisBackend(BackendConfig(redis_url="unix:///tmp/r.sock"), instance_id="x")
    assert isinstance(unix._endpoint(), UNIXClientEndpoint)


def test_commands_before_start_fail_fast() -> None:
    backend = RedisBackend(BackendConfig(), clock=task.Clock(), instance_id="x")
    failures: list[Any] = []
    backend.get("k").addErrback(failures.append)
    assert failures and failures[0].check(BackendUnavailable)
    assert not backend.ready


# --------------------------------------------------------------------------- wiring


@pytest.mark.redis
@pytest_twisted.ensureDeferred
async def test_the_gateway_service_runs_on_redis(start_gateway: Any, redis_url: str) -> None:
    from conftest import test_config as make_config

    running = await start_gateway(make_config(**{
        "backend.type": "redis", "backend.redis_url": redis_url,
        "backend.command_timeout": TIMEOUT, "backend.bus_heartbeat_seconds": HEARTBEAT,
    }))
    backend = running.service.backend
    assert isinstance(backend, RedisBackend)
    await until(lambda: backend.ready and backend.bus_connected, 3)
