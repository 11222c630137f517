"""A listening endpoint as a service, exposing the port it bound.

Twisted's ``strports.service`` hides the bound port (tests listen on port 0
and need the real number; ``/readyz`` needs to know we are listening), so
this small service keeps it, and fails start-up synchronously when the
endpoint cannot listen so that ``twistd`` exits non-zero.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ListenerService"]

log = Logger()


class ListenerService(service.Service):
    def __init__(self, description: str, factory: IProtocolFactory, reactor: Any,
                 name: str = "") -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.label = name or description
        self.port: IListeningPort | None = None
        self._waiters: list[defer.Deferred[IListeningPort]] = []

    def startService(self) -> None:  # noqa: N802
        super().startService()
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.factory)
        failure: list[Failure] = []
        d.addCallbacks(self._bound, failure.append)
        if failure:
            self.running = False
            failure[0].raiseException()

    def _bound(self, port: IListeningPort) -> None:
        self.port = port
        log.info("{label} listening on {address}", label=self.label, address=port.getHost())
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def when_listening(self) -> defer.Deferred[IListeningPort]:
        if self.port is not None:
            return defer.succeed(self.port)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, defer.Deferred) else None

    @property
    def address(self) -> Any:
        return self.port.getHost() if self.port is not None else None
