"""The service tree of one gateway instance, built whole by :func:`build_service`.

Everything is constructed up front (listeners, tick scheduler, admin site,
manhole, plugins), as Twisted's own ``tap.py`` modules do; ``startService``
only starts what exists.  ``stopService`` is the graceful shutdown: stop
accepting, drain, then stop the rest.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
from collections.abc import Iterable
from typing import Any

import txaio
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway.auth import TokenVerifier, build_verifier
from gateway.backend.memory import MemoryBackend
from gateway.bus import Fanout
from gateway.config import Config, read_secret
from gateway.listener import ListenerService
from gateway.metrics import Metrics
from gateway.plugin import load_plugins
from gateway.server import Gateway
from gateway.session.manager import SessionManager
from gateway.tick import TickScheduler
from gateway.web.admin import make_admin_site
from gateway.ws import GatewayFactory

__all__ = ["GatewayService", "build_service"]

log = Logger()


class GatewayService(service.MultiService):
    """Root of one instance: the gateway, its listeners and its periodic work."""

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any = None,
        verifier: TokenVerifier | None = None,
        plugins: Iterable[Any] | None = None,
        backend: Any = None,
    ) -> None:
        """``plugins``: plugin objects to load instead of discovering them; ``backend``: a
        backend to use instead of the configured one (tests, embedding)."""
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        # Unique even for several instances in one process: bus echoes are dropped by it.
        self.instance_id = config.server.instance_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        )
        self.metrics = Metrics()
        self.verifier = verifier or build_verifier(config, clock=reactor)
        self.gateway = Gateway(
            config,
            self.verifier,
            clock=reactor,
            metrics=self.metrics,
            instance_id=self.instance_id,
        )
        self.factory = GatewayFactory(self.gateway, reactor=reactor)

        self.backend = backend if backend is not None else self._make_backend(config, reactor)
        self.fanout = Fanout(self.backend, self.instance_id, self.metrics, clock=reactor)
        self.sessions = SessionManager(
            self.backend, config.session, self.metrics, self.instance_id, self.gateway.registry
        )
        self.gateway.attach(self.backend, self.sessions, self.fanout)
        self.backend.on_ready_change = self._chain_ready(self.backend.on_ready_change)

        self.ticks = TickScheduler(
            reactor,
            config.tick.critical_hz,
            config.tick.normal_hz,
            on_tick_done=self._tick_done,
        )
        self.ticks.add("critical", lambda _info: self.gateway.flush(), phase="flush",
                       name="outbound flush")
        self.ticks.add("normal", self._housekeeping, phase="flush", name="session write-behind")
        self._housekeeping_count = 0
        self.ticks.setServiceParent(self)

        # Plugins register their events and handlers before anything listens.
        self.admin_resources: dict[bytes, Any] = {}
        self.plugins, plugin_services = load_plugins(
            config,
            self.gateway,
            reactor=reactor,
            ticks=self.ticks,
            admin_resources=self.admin_resources,
            candidates=plugins,
        )
        for plugin_service in plugin_services:
            plugin_service.setServiceParent(self)

        self.ws = ListenerService(config.server.listen, self.factory, reactor, "websocket")
        self.ws.setServiceParent(self)

        self.admin: ListenerService | None = None
        if config.admin.listen:
            token = None
            if config.admin.token_env:
                token = read_secret("admin.token_env", env=config.admin.token_env)
            site = make_admin_site(self.gateway, token=token, extra=self.admin_resources)
            self.admin = ListenerService(config.admin.listen, site, reactor, "admin")
            self.admin.setServiceParent(self)

        if config.manhole.listen:
            from gateway.manhole import make_manhole_service

            make_manhole_service(config.manhole, self.manhole_namespace, reactor).setServiceParent(
                self
            )

    def _make_backend(self, config: Config, reactor: Any) -> Any:
        if config.backend.type == "redis":
            # Imported here: txredisapi imports the reactor (see STACK.md).
            from gateway.backend.redis import RedisBackend

            return RedisBackend(config.backend, reactor=reactor, instance_id=self.instance_id,
                                metrics=self.metrics)
        return MemoryBackend(reactor)

    def _chain_ready(self, previous: Any) -> Any:
        def changed(ready: bool) -> None:
            previous(ready)
            self.metrics.backend_ready.set(1 if ready else 0)
            log.info("backend {state}", state="ready" if ready else "NOT ready")

        return changed

    def _housekeeping(self, _info: Any) -> None:
        # Every ~60 s hand over all live connections so long sessions refresh their TTLs.
        self._housekeeping_count += 1
        live = self.gateway.hub.connections() if self._housekeeping_count % 600 == 0 else ()
        d = self.sessions.housekeeping(live)
        d.addErrback(lambda f: log.warn("session write-behind failed: {e}",
                                        e=f.getErrorMessage()))

    def manhole_namespace(self) -> dict[str, Any]:
        """What an operator sees in the manhole: live objects, not copies."""
        return {
            "service": self,
            "gateway": self.gateway,
            "hub": self.gateway.hub,
            "config": self.config,
            "metrics": self.metrics,
            "ticks": self.ticks,
            "drain": self.gateway.drain,
            "plugins": {p.name: p for p in self.plugins},
            "backend": self.backend,
            "sessions": self.sessions,
        }

    def _tick_done(self, group: str, duration: float, overran: bool, skipped: int) -> None:
        self.metrics.tick_seconds.labels(group).observe(duration)
        if overran:
            self.metrics.tick_overruns.labels(group).inc()
        if skipped:
            self.metrics.ticks_skipped.labels(group).inc(skipped)

    def startService(self) -> None:  # noqa: N802
        txaio.use_twisted()
        # Never Autobahn's debug lines: they carry request URLs (access_token).
        txaio.set_global_log_level("info")  # type: ignore[attr-defined]
        if self.verifier.is_dev:
            log.warn(
                "DEVELOPMENT MODE: no auth.keys or auth.jwks_url configured; tokens are signed "
                "with a local key (rtgateway-token mints them) and only loopback listeners "
                "are allowed"
            )
        self.gateway.start()
        d = self.backend.start()
        d.addCallback(lambda _: self.metrics.backend_ready.set(1 if self.backend.ready else 0))
        d.addErrback(lambda f: log.warn("backend not reachable yet ({error}); retrying",
                                        error=f.getErrorMessage()))
        super().startService()
        self.ws.when_listening().addCallback(self._listening)

    def _listening(self, _port: object) -> None:
        self.gateway.listening = True
        log.info("rtgateway instance {instance} ready", instance=self.instance_id)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """Graceful shutdown: stop accepting, drain (server.draining, 1001), stop the rest."""
        self.gateway.listening = False
        yield defer.maybeDeferred(self.ws.stopService)
        yield self.gateway.drain()
        self.gateway.flush()
        self.gateway.stop()
        yield defer.maybeDeferred(super().stopService)
        yield self.backend.stop()
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            # twistd re-raises the signal that stopped the reactor (exit status -15).
            # SIGTERM is our graceful shutdown and it completed: exit 0 instead.
            self.reactor._exitSignal = None
        log.info("rtgateway instance {instance} stopped", instance=self.instance_id)


def build_service(config: Config, *, reactor: Any = None) -> GatewayService:
    return GatewayService(config, reactor=reactor)
