"""The Redis backend (txredisapi): the bus and the store shared by many instances.

Follows Synapse's replication design (DESIGN.md, "Cross-instance"):

* Two connections.  The *command* connection carries every store command and
  every PUBLISH; the *bus* connection only subscribes (a subscribed Redis
  connection cannot run other commands).  txredisapi reconnects both with
  capped exponential backoff (``ClientService``).
* Subscriptions are ours to restore: txredisapi does not re-subscribe after a
  reconnect.  :meth:`RedisBackend.subscribe` records the channel in a set;
  every new bus connection subscribes to the whole set first, *then* calls
  ``on_resync``, because whatever was published while it was down is lost.
* Every command has a deadline (``command_timeout``, ``addTimeout`` on the
  injected clock): a command against a dead or frozen server can otherwise
  hang forever (STACK.md).  Unreachable, lost or late means
  :class:`~gateway.backend.base.BackendUnavailable`.
* Health: a PING every ``bus_heartbeat_seconds`` on the command connection
  drives ``ready``.  The same tick PUBLISHes a heartbeat on this instance's own
  channel ``<prefix>hb:<instance_id>``, which the bus connection subscribes
  to; three ticks in a row without it coming back while the command side works
  means the bus connection died without TCP noticing, so it is aborted and
  goes through the usual reconnect, re-subscribe, resync.

This module imports txredisapi, which imports the global reactor: it must
never be imported from the twistd dropin's import path (``gateway.tap``,
``gateway.config``); the service imports it only when ``backend.type`` is
``redis``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer, task
from twisted.internet import error as net_error
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.backend.base import BackendUnavailable, MessageHandler

if TYPE_CHECKING:
    from gateway.backend.base import Backend
from gateway.config import BackendConfig, ConfigError, read_secret

__all__ = ["RedisBackend", "RedisMetrics", "RedisTarget", "parse_target"]

_log = Logger()

#: Heartbeats that may go missing in a row before the bus connection is presumed dead.
MISSED_HEARTBEATS = 3
#: Reconnect backoff (seconds): quick first retry, capped like Synapse's (5 s).
RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0
#: Keys per SCAN step.
SCAN_COUNT = 1000

#: Failures that mean "Redis is not there" (as opposed to a bad command).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    txredisapi.ConnectionError,  # also TimeoutError, "Not connected", "Lost connection"
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    net_error.ConnectError,
)

# Atomic multi-step writes.  EVALSHA first, EVAL after a NOSCRIPT (txredisapi's eval()).
_INCR_TTL = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return value
"""
_HSET_TTL = """
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""
_RPUSH_TRIM = """
local max_len = tonumber(ARGV[1])
if max_len <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
for i = 3, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local length = redis.call('LLEN', KEYS[1])
if length > max_len then
  redis.call('LTRIM', KEYS[1], -max_len, -1)
  length = max_len
end
if length > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return length
"""
# A capped log: list items are b"<seq>:<entry>", the counter lives at KEYS[2] (key + ":n",
# as in memory.py) so numbers are never reused after trimming.
_APPEND_LOG = """
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local max_len = tonumber(ARGV[1])
if max_len <= 0 then
  redis.call('DEL', KEYS[1])
  return seq
end
redis.call('RPUSH', KEYS[1], string.format('%d', seq) .. ':' .. ARGV[3])
if redis.call('LLEN', KEYS[1]) > max_len then
  redis.call('LTRIM', KEYS[1], -max_len, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return seq
"""
_READ_LOG = """
local after = tonumber(ARGV[1])
local out = {0}
for i, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local seq = tonumber(string.sub(item, 1, string.find(item, ':', 1, true) - 1))
  if i == 1 then out[1] = seq end
  if seq > after then out[#out + 1] = item end
end
return out
"""


# --------------------------------------------------------------------------- metrics


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _LabelledCounter(Protocol):
    def labels(self, *labelvalues: str) -> _Counter: ...


class RedisMetrics(Protocol):
    """Where the backend counts its events: one counter labelled by event name.

    A ``prometheus_client.Counter("rtgateway_redis_events", ..., ["event"])``
    attribute named ``redis_events`` fits.  Event names are a fixed set (see
    :data:`EVENTS`), so the label stays bounded.
    """

    @property
    def redis_events(self) -> _LabelledCounter: ...


#: Every event name the backend counts (``RedisBackend.stats`` and ``RedisMetrics``).
EVENTS = (
    "command_connect",  # the command connection came up
    "command_lost",  # ... went down
    "command_timeout",  # a command got no reply within command_timeout
    "command_error",  # a command failed because the connection was missing or lost
    "ping_failure",  # a health PING failed or timed out (connection aborted, not ready)
    "bus_connect",  # the bus (subscriber) connection came up
    "bus_lost",  # ... went down
    "bus_repair",  # heartbeats stopped coming back: bus connection aborted
    "subscribe_timeout",  # SUBSCRIBE/UNSUBSCRIBE unconfirmed in time: bus connection aborted
    "resync",  # on_resync called after the bus re-subscribed
)


# --------------------------------------------------------------------------- where to connect


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect, parsed from :class:`BackendConfig`."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""

    def describe(self) -> str:
        """For logs: never includes the password."""
        if self.sentinels:
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel master {self.sentinel_master!r} via {where} db {self.db}"
        if self.unix_path:
            return f"unix:{self.unix_path} db {self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError("missing host")
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def parse_target(config: BackendConfig) -> RedisTarget:
    """Read ``redis_url``, the password variable and the sentinels; errors name the key.

    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS, needs
    pyOpenSSL) or ``unix:///path/to/socket[?db=N]``.  The password comes from
    the variable named by ``redis_password_env`` when it is set (preferred:
    secrets stay out of the file), else from the URL.  With ``sentinels`` the
    URL only supplies the db, user and password; the address is asked of the
    sentinels.
    """
    key = "backend.redis_url"
    url = config.redis_url or "redis://127.0.0.1:6379/0"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(key, f"not a valid URL: {exc}")
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(key, f"unsupported scheme {parts.scheme!r} (redis://, rediss://, unix://)")
    db_text = parts.path.strip("/") if scheme != "unix" else ""
    for item in parts.query.split("&") if parts.query else ():
        name, _, value = item.partition("=")
        if name == "db":
            db_text = value
        else:
            raise ConfigError(key, f"unsupported URL parameter {name!r} (only db)")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ConfigError(key, f"database must be a number, got {db_text!r}")
    if db < 0:
        raise ConfigError(key, "database must be 0 or greater")
    tls = scheme == "rediss"
    if tls and importlib.util.find_spec("OpenSSL") is None:
        raise ConfigError(key, "rediss:// needs pyOpenSSL (install twisted[tls])")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if config.redis_password_env:
        password = read_secret("backend.redis_password_env", env=config.redis_password_env).decode()
    sentinels: list[tuple[str, int]] = []
    for i, entry in enumerate(config.sentinels):
        try:
            sentinels.append(_split_host_port(entry, 26379))
        except ValueError as exc:
            raise ConfigError(f"backend.sentinels[{i}]", f"expected host:port ({exc})")
    if sentinels:
        if not config.sentinel_master:
            raise ConfigError("backend.sentinel_master", "required with backend.sentinels")
        if tls:
            raise ConfigError(key, "rediss:// is not supported together with backend.sentinels")
        return RedisTarget(db=db, username=username, password=password,
                           sentinels=tuple(sentinels), sentinel_master=config.sentinel_master)
    if scheme == "unix":
        if not parts.path:
            raise ConfigError(key, "unix:// needs a socket path")
        return RedisTarget(unix_path=parts.path, db=db, username=username, password=password)
    if not parts.hostname:
        raise ConfigError(key, "missing host")
    return RedisTarget(host=parts.hostname, port=port or 6379, db=db, tls=tls,
                       username=username, password=password)


# --------------------------------------------------------------------------- protocols


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _is_master(proto: Any) -> defer.Deferred[bool]:
    """ROLE says master (txredisapi's own check compares bytes to str under charset=None)."""
    d: defer.Deferred[Any] = defer.succeed(None)
    if proto.password is not None:
        d.addCallback(lambda _: proto.auth(proto.password, proto.username))
    d.addCallback(lambda _: proto.role())
    d.addCallback(lambda role: bool(role) and _text(role[0]) == "master")
    d.addErrback(lambda _failure: False)
    return d


def _open(proto: Any, base_made: Callable[[], Any], usable: Callable[[Any], None]
          ) -> defer.Deferred[None]:
    """connectionMade: (Sentinel: check the role,) AUTH/SELECT, then tell the backend."""
    if proto.factory.require_master:
        d = _is_master(proto)
    else:
        d = defer.succeed(True)

    def authenticate(is_master: bool) -> Any:
        if not is_master:
            _log.warn("Redis: {peer} is not a master; reconnecting", peer=proto.transport.getPeer())
            proto.transport.loseConnection()
            return False
        return defer.maybeDeferred(base_made).addCallback(lambda _: True)

    def done(opened: bool) -> None:
        if opened and proto._ready and proto.connected:
            usable(proto)

    opened = d.addCallback(authenticate).addCallback(done)
    opened.addErrback(lambda f: _log.failure("Redis connection setup failed", f))
    return opened


class _CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc,name-defined]
    """The command connection: reports itself to the backend when usable and when lost."""

    def connectionMade(self) -> defer.Deferred[None]:
        backend: RedisBackend = self.factory.backend
        return _open(self, super().connectionMade, backend._command_connected)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.backend._command_lost(self)


class _BusProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc,name-defined]
    """The subscribe-only connection: re-subscribes on connect, hands messages over."""

    def connectionMade(self) -> defer.Deferred[None]:
        backend: RedisBackend = self.factory.backend
        return _open(self, super().connectionMade, backend._bus_connected)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.backend._bus_lost(self)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.backend._bus_message(self, channel, message)


def _init_factory(factory: Any, backend: RedisBackend, protocol_class: type) -> None:
    factory.backend = backend
    factory.protocol = protocol_class
    factory.initialDelay = RECONNECT_INITIAL_DELAY
    factory.maxDelay = RECONNECT_MAX_DELAY
    # Errbacks with "could not auth" / "could not set dbid" (txredisapi then stops
    # retrying for good): log it instead of leaving an unhandled error.
    factory.deferred.addErrback(backend._factory_failed)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc,name-defined]
    require_master = False

    def __init__(self, backend: RedisBackend, protocol_class: type, *, dbid: int | None,
                 password: str | None, username: str | None) -> None:
        super().__init__(None, dbid, 1, isLazy=True, charset=None, password=password,
                         replyTimeout=None, convertNumbers=False, username=username)
        _init_factory(self, backend, protocol_class)


class _SentinelFactory(txredisapi.SentinelConnectionFactory):  # type: ignore[misc,name-defined]
    """Built by ``Sentinel.master_for(..., factory_class=_SentinelFactory)``."""

    require_master = True

    def __init__(self, *args: Any, backend: RedisBackend, protocol_class: type,
                 **kwargs: Any) -> None:
        super().__init__(*args, isLazy=True, **kwargs)
        _init_factory(self, backend, protocol_class)
        # Twisted-style retries, but the first one at once: the master may have moved.
        self.initialDelay = RECONNECT_INITIAL_DELAY


# --------------------------------------------------------------------------- the backend


class RedisBackend:
    """The Redis backend (see :class:`gateway.backend.base.Backend` and the module docstring).

    ``reactor`` (default: the global one) makes the connections and, unless
    ``clock`` is given, drives every timer of ours: command deadlines, the
    heartbeat, the start-up deadline.  txredisapi's own internals (reconnect
    backoff, buffering) always use the global reactor.  ``metrics`` is
    anything with a ``redis_events`` counter (:class:`RedisMetrics`); an object
    without one (or None) is fine, ``stats`` counts regardless.
    ``start_timeout`` bounds :meth:`start` (default 5 x command_timeout).
    """

    def __init__(
        self,
        config: BackendConfig,
        *,
        instance_id: str,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        metrics: RedisMetrics | object | None = None,
        start_timeout: float | None = None,
    ) -> None:
        if not instance_id:
            raise ValueError("instance_id must not be empty")
        self.config = config
        self.target = parse_target(config)  # ConfigError now, at build time, not at start
        self.instance_id = instance_id
        self._events: _LabelledCounter | None = getattr(metrics, "redis_events", None)
        self.ready = False
        self.on_message: MessageHandler = lambda channel, payload: None
        self.on_resync: Callable[[], object] = lambda: None
        self.on_ready_change: Callable[[bool], object] = lambda ready: None
        self.stats: dict[str, int] = dict.fromkeys(EVENTS, 0)

        self._reactor = reactor if reactor is not None else _global_reactor()
        self._clock: IReactorTime = clock if clock is not None else self._reactor
        self._prefix = config.key_prefix
        self._timeout = config.command_timeout
        self._interval = config.bus_heartbeat_seconds
        self._start_timeout = start_timeout if start_timeout is not None else 5 * self._timeout
        self._hb_channel = f"{self._prefix}hb:{instance_id}"

        self._started = False
        self._stopped = False
        self._factories: list[Any] = []
        self._sentinel: Any = None
        self._loop: task.LoopingCall | None = None
        self._start_waiter: defer.Deferred[None] | None = None
        self._start_timer: Any = None
        self._start_failed = False

        # command side
        self._command: Any = None
        self._command_waiters: list[defer.Deferred[Any]] = []
        self._pinging: Any = None  # the connection a PING is outstanding on

        # bus side
        self._wanted: set[str] = set()  # channels (unprefixed) we want, connected or not
        self._subscriber: Any = None  # the bus connection once AUTHed
        self._bus_up = False  # ... and subscribed to everything wanted
        self._bus_was_up = False
        self._bus_generation = 0
        self._hb_seq = 0
        self._hb_armed = False  # a heartbeat was published to the current bus connection
        self._hb_seen = False  # ... and came back
        self._hb_missed = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def bus_connected(self) -> bool:
        """True while the bus connection is up and subscribed to every wanted channel."""
        return self._bus_up

    @property
    def channels(self) -> frozenset[str]:
        """The channels this backend subscribes to (restored on every reconnect)."""
        return frozenset(self._wanted)

    def start(self) -> defer.Deferred[None]:
        """Connect both connections; fires once both work.

        Errbacks with BackendUnavailable after ``start_timeout`` if Redis cannot
        be reached, but keeps retrying in the background: the caller decides
        whether to run not-ready.  A later first connection then calls
        ``on_resync`` as after any reconnect.
        """
        if self._started:
            raise RuntimeError("RedisBackend.start() called twice")
        self._started = True
        self._connect()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: _log.failure("Redis heartbeat loop died", f)
        )
        waiter: defer.Deferred[None] = defer.Deferred()
        self._start_waiter = waiter
        self._start_timer = self._clock.callLater(self._start_timeout, self._start_timed_out)
        self._check_started()
        return waiter

    def stop(self) -> defer.Deferred[None]:
        """Close both connections, stop retrying, cancel every timer of ours."""
        if self._stopped:
            return defer.succeed(None)
        self._stopped = True
        if not self._started:
            return defer.succeed(None)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        if self._start_waiter is not None and not self._start_waiter.called:
            self._start_waiter.errback(BackendUnavailable("stopped before Redis was reached"))
        waiters, self._command_waiters = self._command_waiters, []
        for waiter in waiters:
            waiter.errback(BackendUnavailable("the Redis backend is stopping"))
        self._set_ready(False)
        self._wanted.clear()  # as MemoryBackend: a stopped backend subscribes to nothing
        closing = [defer.maybeDeferred(f.disconnect) for f in self._factories]
        if self._sentinel is not None:
            closing.append(defer.maybeDeferred(self._sentinel.disconnect))
        d = defer.gatherResults(closing, consumeErrors=True)
        d.addErrback(lambda f: _log.failure("Redis: error while disconnecting", f))
        # txredisapi hands a new connection to its pool with callLater(0): let those run.
        d.addCallback(lambda _: task.deferLater(self._reactor, 0, lambda: None))
        return d.addCallback(lambda _: None)

    def _connect(self) -> None:
        t = self.target
        if t.sentinels:
            self._sentinel = txredisapi.Sentinel(list(t.sentinels))
            self._sentinel.discovery_timeout = self._timeout
            for protocol_class, dbid in ((_CommandProtocol, t.db or None), (_BusProtocol, None)):
                handler = self._sentinel.master_for(
                    t.sentinel_master, factory_class=_SentinelFactory, dbid=dbid,
                    charset=None, password=t.password, username=t.username,
                    convertNumbers=False, backend=self, protocol_class=protocol_class,
                )
                self._factories.append(handler._factory)
            return
        command = _Factory(self, _CommandProtocol, dbid=t.db or None,
                           password=t.password, username=t.username)
        bus = _Factory(self, _BusProtocol, dbid=None, password=t.password, username=t.username)
        self._factories = [command, bus]
        for factory in self._factories:
            factory.startConnecting(self._endpoint())

    def _endpoint(self) -> IStreamClientEndpoint:
        from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS

        reactor = self._reactor
        t = self.target
        if t.unix_path:
            return UNIXClientEndpoint(  # type: ignore[no-untyped-call]
                reactor, t.unix_path, timeout=self._timeout
            )
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, t.host, t.port, timeout=self._timeout
        )
        if t.tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(t.host), endpoint)
        return endpoint

    def _check_started(self) -> None:
        waiter = self._start_waiter
        if waiter is None or waiter.called or not (self.ready and self._bus_up):
            return
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        _log.info("Redis backend connected to {where}", where=self.target.describe())
        waiter.callback(None)

    def _start_timed_out(self) -> None:
        self._start_failed = True
        waiter = self._start_waiter
        if waiter is not None and not waiter.called:
            waiter.errback(BackendUnavailable(
                f"Redis ({self.target.describe()}) not usable within {self._start_timeout:g} s;"
                " still retrying in the background"
            ))

    def _factory_failed(self, failure: Failure) -> None:
        _log.error("Redis ({where}): {error}; not retrying", where=self.target.describe(),
                   error=failure.getErrorMessage())

    # ------------------------------------------------------------------ bookkeeping

    def _count(self, event: str) -> None:
        self.stats[event] += 1
        if self._events is not None:
            self._events.labels(event).inc()

    def _set_ready(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if not self._stopped:
            _log.info("Redis backend ready={ready}", ready=ready)
        try:
            self.on_ready_change(ready)
        except Exception:
            _log.failure("on_ready_change raised")

    # ------------------------------------------------------------------ command connection

    def _command_connected(self, proto: Any) -> None:
        if self._stopped:
            proto.transport.loseConnection()
            return
        self._command = proto
        self._count("command_connect")
        waiters, self._command_waiters = self._command_waiters, []
        for waiter in waiters:
            waiter.callback(proto)
        self._ping(proto, heartbeat=False)  # ready as soon as it answers, not at the next tick

    def _command_lost(self, proto: Any) -> None:
        if proto is not self._command:
            return
        self._command = None
        self._set_ready(False)
        if not self._stopped:
            self._count("command_lost")
            _log.warn("Redis command connection lost; reconnecting")

    def _command_connection(self) -> defer.Deferred[Any]:
        """The command connection now, or when it comes back (callers add the deadline)."""
        if self._command is not None:
            return defer.succeed(self._command)
        waiter: defer.Deferred[Any] = defer.Deferred(self._forget_waiter)
        self._command_waiters.append(waiter)
        return waiter

    def _forget_waiter(self, waiter: defer.Deferred[Any]) -> None:
        if waiter in self._command_waiters:
            self._command_waiters.remove(waiter)

    def _call(self, what: str, action: Callable[[Any], Any]) -> defer.Deferred[Any]:
        """Run ``action(connection)`` within ``command_timeout`` (waiting to connect included)."""
        if self._stopped or not self._started:
            state = "stopped" if self._stopped else "not started"
            return defer.fail(BackendUnavailable(f"Redis {what}: the backend is {state}"))
        d = self._command_connection()
        d.addCallback(action)
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(self._unavailable, what)
        return d

    def _execute(self, *args: Any) -> defer.Deferred[Any]:
        return self._call(str(args[0]), lambda proto: proto.execute_command(*args))

    def _eval(self, what: str, script: str, keys: Sequence[str], args: Sequence[Any]
              ) -> defer.Deferred[Any]:
        return self._call(what, lambda proto: proto.eval(script, list(keys), list(args)))

    def _unavailable(self, failure: Failure, what: str) -> Failure:
        if isinstance(failure.value, defer.TimeoutError):
            self._count("command_timeout")
            raise BackendUnavailable(f"Redis {what}: no reply within {self._timeout:g} s")
        if isinstance(failure.value, _CONNECTION_ERRORS):
            self._count("command_error")
            raise BackendUnavailable(f"Redis {what}: {failure.getErrorMessage()}")
        return failure  # a bad command (ResponseError, e.g. WRONGTYPE) is a bug, not an outage

    # ------------------------------------------------------------------ health and heartbeat

    def _tick(self) -> None:
        proto = self._command
        if proto is None or self._stopped:
            return
        self._ping(proto, heartbeat=True)

    def _ping(self, proto: Any, *, heartbeat: bool) -> None:
        if self._pinging is proto:
            return  # the previous PING has not answered or timed out yet
        self._pinging = proto
        d = defer.maybeDeferred(proto.execute_command, "PING")
        d.addTimeout(self._timeout, self._clock)

        def answered(_reply: object) -> None:
            if proto is not self._command or self._stopped:
                return
            self._set_ready(True)
            self._check_started()
            if heartbeat:
                self._heartbeat(proto)

        def failed(failure: Failure) -> None:
            if proto is not self._command or self._stopped:
                return
            self._count("ping_failure")
            if isinstance(failure.value, defer.TimeoutError):
                error = f"no reply within {self._timeout:g} s"
            else:
                error = failure.getErrorMessage() or type(failure.value).__name__
            _log.warn("Redis PING failed ({error}); dropping the command connection", error=error)
            self._set_ready(False)
            if proto.transport is not None:
                proto.transport.abortConnection()

        def finished(result: object) -> object:
            if self._pinging is proto:
                self._pinging = None
            return result

        d.addCallbacks(answered, failed).addBoth(finished)
        d.addErrback(lambda f: _log.failure("Redis health check raised", f))

    def _heartbeat(self, proto: Any) -> None:
        """Check the previous bus heartbeat came back, then publish the next one."""
        if not self._bus_up:
            self._hb_missed, self._hb_armed = 0, False
            return
        if self._hb_armed and not self._hb_seen:
            self._hb_missed += 1
            if self._hb_missed >= MISSED_HEARTBEATS:
                self._repair_bus()
                return
        else:
            self._hb_missed = 0
        self._hb_armed = self._hb_seen = False
        self._hb_seq += 1
        generation = self._bus_generation
        d = defer.maybeDeferred(proto.execute_command, "PUBLISH", self._hb_channel,
                                b"%d" % self._hb_seq)
        d.addTimeout(self._timeout, self._clock)

        def published(_receivers: object) -> None:
            if generation == self._bus_generation:
                self._hb_armed = True

        d.addCallbacks(published, lambda _failure: None)  # the PING side reports outages

    def _repair_bus(self) -> None:
        self._count("bus_repair")
        self._hb_missed, self._hb_armed = 0, False
        proto = self._subscriber
        _log.warn("Redis bus: {n} heartbeats did not come back; reconnecting the bus",
                  n=MISSED_HEARTBEATS)
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    # ------------------------------------------------------------------ bus connection

    def _bus_connected(self, proto: Any) -> None:
        if self._stopped:
            proto.transport.loseConnection()
            return
        self._subscriber = proto
        self._bus_up = False
        self._bus_generation += 1
        self._hb_missed, self._hb_armed, self._hb_seen = 0, False, False
        self._count("bus_connect")
        channels = [self._hb_channel, *(self._prefix + c for c in sorted(self._wanted))]
        # One SUBSCRIBE per channel: txredisapi matches one confirmation per command.
        confirmations = [self._bus_command(proto, "SUBSCRIBE", c) for c in channels]
        d = defer.gatherResults(confirmations, consumeErrors=True)
        d.addCallbacks(lambda _: self._bus_subscribed(proto),
                       lambda f: self._bus_setup_failed(proto, f))

    def _bus_subscribed(self, proto: Any) -> None:
        if proto is not self._subscriber or self._stopped:
            return
        self._bus_up = True
        resync = self._bus_was_up or self._start_failed
        self._bus_was_up = True
        self._check_started()
        if resync:
            self._count("resync")
            _log.info("Redis bus re-subscribed to {n} channels; resyncing", n=len(self._wanted))
            try:
                self.on_resync()
            except Exception:
                _log.failure("on_resync raised")

    def _bus_setup_failed(self, proto: Any, failure: Failure) -> None:
        if proto is not self._subscriber or self._stopped:
            return
        _log.warn("Redis bus could not subscribe ({error}); reconnecting",
                  error=failure.getErrorMessage())
        if proto.transport is not None:
            proto.transport.abortConnection()

    def _bus_lost(self, proto: Any) -> None:
        if proto is not self._subscriber:
            return
        self._subscriber = None
        self._bus_up = False
        if not self._stopped:
            self._count("bus_lost")
            _log.warn("Redis bus connection lost; reconnecting")

    def _bus_command(self, proto: Any, verb: str, channel: str) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(proto.execute_command, verb, channel)
        d.addTimeout(self._timeout, self._clock)
        return d

    def _bus_message(self, proto: Any, channel: Any, payload: Any) -> None:
        if proto is not self._subscriber:
            return
        name = _text(channel)
        if name == self._hb_channel:
            self._hb_seen = True
            return
        if not name.startswith(self._prefix):
            return
        name = name[len(self._prefix):]
        if name not in self._wanted:
            return  # unsubscribed, its UNSUBSCRIBE not confirmed yet
        try:
            self.on_message(name, b"" if payload is None else _as_bytes(payload))
        except Exception:
            _log.failure("on_message raised for a message on {channel}", channel=name)

    def _apply_subscription(self, verb: str, channel: str) -> defer.Deferred[None]:
        proto = self._subscriber
        if proto is None or self._stopped:
            return defer.succeed(None)  # remembered: the next bus connection applies it
        d = self._bus_command(proto, verb, self._prefix + channel)

        def failed(failure: Failure) -> Failure | None:
            if isinstance(failure.value, defer.TimeoutError):
                self._count("subscribe_timeout")
                if proto is self._subscriber and proto.transport is not None:
                    proto.transport.abortConnection()  # suspect: reconnect, re-subscribe, resync
                raise BackendUnavailable(
                    f"Redis {verb} {channel}: no reply within {self._timeout:g} s"
                    " (applied again on reconnect)"
                )
            if isinstance(failure.value, _CONNECTION_ERRORS):
                return None  # connection gone: the next one applies the wanted set
            return failure

        d.addCallbacks(lambda _: None, failed)
        return d

    # ------------------------------------------------------------------ bus API

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        """Fires once Redis confirmed, or at once while the bus is down (remembered).

        Either way the channel stays subscribed across reconnects until
        :meth:`unsubscribe`.  Errbacks with BackendUnavailable only when a live
        bus connection did not confirm in time (it is then reconnected).
        """
        if channel in self._wanted:
            return defer.succeed(None)
        self._wanted.add(channel)
        return self._apply_subscription("SUBSCRIBE", channel)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        """Delivery stops at once (late messages are dropped), confirmed or not."""
        if channel not in self._wanted:
            return defer.succeed(None)
        self._wanted.discard(channel)
        return self._apply_subscription("UNSUBSCRIBE", channel)

    def publish(self, channel: str, payload: bytes) -> defer.Deferred[int]:
        """Returns how many bus connections (instances) received it."""
        return self._execute("PUBLISH", self._prefix + channel, _as_bytes(payload)).addCallback(int)

    # ------------------------------------------------------------------ store

    def _key(self, key: str) -> str:
        return self._prefix + key

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        return self._execute("GET", self._key(key)).addCallback(_optional_bytes)

    def set(self, key: str, value: bytes, ttl: float | None = None, *,
            only_if_absent: bool = False) -> defer.Deferred[bool]:
        args: list[Any] = ["SET", self._key(key), _as_bytes(value)]
        if ttl is not None:
            args += ["PX", _ms(ttl)]
        if only_if_absent:
            args.append("NX")
        return self._execute(*args).addCallback(lambda reply: reply is not None)

    def getdel(self, key: str) -> defer.Deferred[bytes | None]:
        return self._execute("GETDEL", self._key(key)).addCallback(_optional_bytes)

    def delete(self, *keys: str) -> defer.Deferred[int]:
        if not keys:
            return defer.succeed(0)
        return self._execute("DEL", *(self._key(k) for k in keys)).addCallback(int)

    def expire(self, key: str, ttl: float) -> defer.Deferred[bool]:
        return self._execute("PEXPIRE", self._key(key), _ms(ttl)).addCallback(bool)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> defer.Deferred[int]:
        """INCRBY keeps an existing TTL; with ``ttl`` the new one is set atomically (Lua)."""
        if ttl is None:
            return self._execute("INCRBY", self._key(key), int(amount)).addCallback(int)
        return self._eval("INCRBY", _INCR_TTL, [self._key(key)],
                          [int(amount), _ms(ttl)]).addCallback(int)

    def hset(self, key: str, mapping: Mapping[str, bytes], ttl: float | None = None
             ) -> defer.Deferred[None]:
        if not mapping:
            if ttl is None:
                return defer.succeed(None)
            return self.expire(key, ttl).addCallback(lambda _: None)
        pairs: list[Any] = []
        for name, value in mapping.items():
            pairs += [name, _as_bytes(value)]
        if ttl is None:
            d = self._execute("HSET", self._key(key), *pairs)
        else:
            d = self._eval("HSET", _HSET_TTL, [self._key(key)], [_ms(ttl), *pairs])
        return d.addCallback(lambda _: None)

    def hgetall(self, key: str) -> defer.Deferred[dict[str, bytes]]:
        def pairs(reply: Any) -> dict[str, bytes]:
            flat = list(reply or ())
            return {_text(k): _as_bytes(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}

        return self._execute("HGETALL", self._key(key)).addCallback(pairs)

    def hdel(self, key: str, *fields: str) -> defer.Deferred[int]:
        if not fields:
            return defer.succeed(0)
        return self._execute("HDEL", self._key(key), *fields).addCallback(int)

    def rpush(self, key: str, values: Sequence[bytes], *, max_len: int, ttl: float
              ) -> defer.Deferred[int]:
        """RPUSH + LTRIM to the newest ``max_len`` + PEXPIRE in one Lua call; returns the length."""
        args: list[Any] = [int(max_len), _ms(ttl), *(_as_bytes(v) for v in values)]
        return self._eval("RPUSH", _RPUSH_TRIM, [self._key(key)], args).addCallback(int)

    def lrange(self, key: str, start: int = 0, stop: int = -1) -> defer.Deferred[list[bytes]]:
        return self._execute("LRANGE", self._key(key), int(start), int(stop)).addCallback(
            lambda reply: [_as_bytes(v) for v in reply or ()]
        )

    def ltrim_left(self, key: str, count: int) -> defer.Deferred[None]:
        if count <= 0:
            return defer.succeed(None)
        return self._execute("LTRIM", self._key(key), int(count), -1).addCallback(lambda _: None)

    def append_log(self, key: str, entry: bytes, *, max_len: int, ttl: float
                   ) -> defer.Deferred[int]:
        """INCR the ``key:n`` counter, RPUSH ``b"<seq>:<entry>"``, trim, PEXPIRE both (Lua)."""
        keys = [self._key(key), self._key(key + ":n")]
        args = [int(max_len), _ms(ttl), _as_bytes(entry)]
        return self._eval("append_log", _APPEND_LOG, keys, args).addCallback(int)

    def read_log(self, key: str, after: int
                 ) -> defer.Deferred[tuple[int, list[tuple[int, bytes]]]]:
        """``(oldest, entries after after)`` from one Lua call (filters server-side)."""

        def parse(reply: Any) -> tuple[int, list[tuple[int, bytes]]]:
            entries: list[tuple[int, bytes]] = []
            for item in reply[1:]:
                seq, _, entry = _as_bytes(item).partition(b":")
                entries.append((int(seq), entry))
            return int(reply[0]), entries

        return self._eval("read_log", _READ_LOG, [self._key(key)], [int(after)]).addCallback(parse)

    def scan(self, prefix: str = "") -> defer.Deferred[list[str]]:
        """SCAN MATCH (glob-escaped prefix) until the cursor is back at 0; sorted, unprefixed."""
        return defer.ensureDeferred(self._scan(prefix))

    async def _scan(self, prefix: str) -> list[str]:
        pattern = _glob_escape(self._prefix + prefix) + "*"
        strip = len(self._prefix)
        found: set[str] = set()  # SCAN may return a key twice
        cursor: Any = 0
        while True:
            reply = await self._execute("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
            cursor, keys = reply[0], reply[1]
            found.update(_text(k)[strip:] for k in keys or ())
            if int(cursor) == 0:
                return sorted(found)

    def ttl(self, key: str) -> defer.Deferred[float | None]:
        def seconds(reply: Any) -> float | None:
            ms = int(reply)
            return None if ms < 0 else ms / 1000.0  # -2 missing, -1 no expiry

        return self._execute("PTTL", self._key(key)).addCallback(seconds)


# --------------------------------------------------------------------------- helpers


def _global_reactor() -> Any:
    """txredisapi connects through the global reactor anyway; import it only when used."""
    from twisted.internet import reactor

    return reactor


def _ms(seconds: float) -> int:
    """Redis refuses a zero or negative PX/PEXPIRE: at least one millisecond."""
    return max(1, round(seconds * 1000))


def _optional_bytes(reply: Any) -> bytes | None:
    return None if reply is None else _as_bytes(reply)


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH's glob characters so a prefix matches literally."""
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


if TYPE_CHECKING:

    def _honours_the_contract(backend: RedisBackend) -> Backend:
        return backend  # mypy checks RedisBackend against the Backend protocol here
