"""The admin site: ``/healthz``, ``/readyz``, ``/metrics``, ``/debug/*``, ``/admin/*``.

It listens on its own endpoint (loopback by default) so that a load balancer's
health checks and Prometheus never share a port with players.  ``/debug`` and
``/admin`` can additionally require a bearer token (``admin.token_env``);
health and metrics stay open to the scraper.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import pages, resource, server
from twisted.web.iweb import IRequest

from gateway.server import Gateway

__all__ = ["make_admin_site"]


Answer = Callable[[IRequest], tuple[int, str, bytes]]


def bearer_ok(request: IRequest, token: bytes) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (constant time)."""
    header = request.getHeader("authorization") or ""
    if not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token)


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, get: Callable[[IRequest], tuple[int, str, bytes]] | None = None,
                 post: Callable[[IRequest], tuple[int, str, bytes]] | None = None,
                 token: bytes | None = None) -> None:
        super().__init__()
        self._get = get
        self._post = post
        self._token = token

    def _authorized(self, request: IRequest) -> bool:
        return self._token is None or bearer_ok(request, self._token)

    def _answer(self, request: IRequest, handler: Answer | None) -> bytes:
        if handler is None:
            request.setResponseCode(405)
            request.setHeader("content-type", "text/plain")
            return b"method not allowed\n"
        if not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader("www-authenticate", "Bearer")
            return b"unauthorized\n"
        status, content_type, body = handler(request)
        request.setResponseCode(status)
        request.setHeader("content-type", content_type)
        request.setHeader("cache-control", "no-store")
        return body

    def render_GET(self, request: IRequest) -> bytes:  # noqa: N802
        return self._answer(request, self._get)

    def render_HEAD(self, request: IRequest) -> bytes:  # noqa: N802
        return self._answer(request, self._get)

    def render_POST(self, request: IRequest) -> bytes:  # noqa: N802
        return self._answer(request, self._post)


class _Dir(resource.Resource):
    """A container whose unknown children are a plain 404 (Twisted's default is deprecated)."""

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:  # noqa: N802
        return pages.notFound()


class _Guarded(resource.Resource):
    """Wraps a plugin's resource (and its children) with the admin bearer-token check."""

    def __init__(self, inner: resource.IResource, token: bytes) -> None:
        super().__init__()
        self.inner = inner
        self.token = token
        # A leaf handles the rest of the path itself: traversal must stop here too.
        self.isLeaf = bool(getattr(inner, "isLeaf", False))

    def _authorized(self, request: IRequest) -> bool:
        return bearer_ok(request, self.token)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> resource.IResource:  # noqa: N802
        if not self._authorized(request):
            return self  # render() answers 401
        child = self.inner.getChildWithDefault(path, request)
        return _Guarded(child, self.token) if child is not self.inner else child

    def render(self, request: IRequest) -> bytes:
        if not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader("www-authenticate", "Bearer")
            return b"unauthorized\n"
        return self.inner.render(request)  # type: ignore[no-any-return]


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


def make_admin_site(
    gateway: Gateway,
    *,
    token: bytes | None = None,
    extra: dict[bytes, resource.Resource] | None = None,
) -> server.Site:
    """Build the admin Site; ``extra`` lets subsystems add their own children under /admin."""
    root = _Dir()

    def healthz(_r: IRequest) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def readyz(_r: IRequest) -> tuple[int, str, bytes]:
        checks = {
            "listening": gateway.listening,
            "backend": gateway.backend_ready(),
            "not_draining": not gateway.draining,
        }
        ready = all(checks.values())
        return _json(200 if ready else 503, {"ready": ready, "checks": checks})

    def metrics(_r: IRequest) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(gateway.metrics.registry)

    def connections(_r: IRequest) -> tuple[int, str, bytes]:
        now = gateway.now()
        rows = [c.snapshot(now) for c in gateway.hub.connections()]
        rows.sort(key=lambda row: row["id"])  # type: ignore[arg-type, return-value]
        return _json(200, {"instance_id": gateway.instance_id, "count": len(rows),
                           "connections": rows})

    def drain(_r: IRequest) -> tuple[int, str, bytes]:
        d = gateway.drain()
        d.addErrback(lambda f: None)
        return _json(202, {"draining": True, "connections": len(gateway.hub)})

    root.putChild(b"healthz", _Leaf(healthz))
    root.putChild(b"readyz", _Leaf(readyz))
    root.putChild(b"metrics", _Leaf(metrics))
    debug = _Dir()
    debug.putChild(b"connections", _Leaf(connections, token=token))
    root.putChild(b"debug", debug)
    admin = _Dir()
    admin.putChild(b"drain", _Leaf(post=drain, token=token))
    for name, child in (extra or {}).items():
        # Plugins' admin resources sit behind the same token as ours.
        admin.putChild(name, _Guarded(child, token) if token is not None else child)
    root.putChild(b"admin", admin)
    site = server.Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
