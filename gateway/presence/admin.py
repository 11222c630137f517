"""``/admin/presence/...``: operator and GDPR operations of the presence plugin (JSON).

    GET  /admin/presence                      this instance and the population
    GET  /admin/presence/<player>             stored presence, unfiltered
    GET  /admin/presence/<player>/export      everything held about the player (GDPR export)
    POST /admin/presence/<player>/erase       erase it (409 while the player is online)
    POST /admin/presence/<player>/friends     {"add": [...], "remove": [...]}
    POST /admin/presence/<player>/blocks      {"add": [...], "remove": [...]}
    POST /admin/presence/<player>/groups      {"join": [{"id", "kind"}], "leave": [...]}
    POST /admin/presence/<player>/location    {"zone": ..., "region": ...}

A resource tree (directory, player, action), so that a wrapper around it
(the admin site's token guard) traverses it like any Twisted resource.  The
resource also checks ``admin.token_env`` itself, so it stays protected
whichever way the admin site mounts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages, resource, server
from twisted.web.iweb import IRequest

from gateway.web.admin import bearer_ok

__all__ = ["MAX_ID_LENGTH", "PlayerOnline", "PresenceAdmin"]

log = Logger()

MAX_ID_LENGTH = 128
MAX_BODY = 64 * 1024
GET_ACTIONS = ("", "export")
POST_ACTIONS = ("erase", "friends", "blocks", "groups", "location")

Answer = tuple[int, Any]


class PlayerOnline(Exception):  # noqa: N818 - a condition callers branch on
    """Erase refused: the player is connected (disconnect them first)."""


class _Base(resource.Resource):
    def __init__(self, plugin: Any, token: bytes | None) -> None:
        super().__init__()
        self.plugin = plugin
        self.token = token

    def _authorized(self, request: IRequest) -> bool:
        return self.token is None or bearer_ok(request, self.token)

    def render(self, request: Any) -> Any:
        if not self._authorized(request):
            request.setHeader("www-authenticate", "Bearer")
            _write(request, 401, {"error": "unauthorized"})
            return server.NOT_DONE_YET
        method = (request.method or b"GET").decode()
        d = defer.maybeDeferred(self.answer, request, method)
        request.notifyFinish().addErrback(lambda _: None)

        def failed(failure: Failure) -> Answer:
            if failure.check(PlayerOnline):
                return 409, {"error": "the player is online: disconnect them first"}
            if failure.check(ValueError, KeyError, TypeError):
                return 400, {"error": str(failure.value)[:200]}
            log.failure("presence admin request failed", failure)
            return 500, {"error": "internal error"}

        d.addErrback(failed)
        d.addCallback(lambda answer: _write(request, *answer))
        return server.NOT_DONE_YET

    def answer(self, request: IRequest, method: str) -> Any:
        raise NotImplementedError


def _write(request: Any, status: int, data: Any) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    request.setHeader("content-type", "application/json")
    request.setHeader("cache-control", "no-store")
    request.write(json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
    request.finish()


class PresenceAdmin(_Base):
    """``/admin/presence``: the population; its children are players."""

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:  # noqa: N802
        player_id = unquote(path.decode("utf-8", "replace"))
        if not player_id or len(player_id) > MAX_ID_LENGTH:
            return pages.notFound()
        return _Player(self.plugin, self.token, player_id)

    def answer(self, request: IRequest, method: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return 405, {"error": "use GET"}
        return 200, self.plugin.population()


class _Player(_Base):
    def __init__(self, plugin: Any, token: bytes | None, player_id: str,
                 action: str = "") -> None:
        super().__init__(plugin, token)
        self.player_id = player_id
        self.action = action

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:  # noqa: N802
        action = path.decode("utf-8", "replace")
        if self.action or action not in GET_ACTIONS + POST_ACTIONS:
            return pages.notFound()
        if not action:
            return self  # a trailing slash
        return _Player(self.plugin, self.token, self.player_id, action)

    @defer.inlineCallbacks
    def answer(self, request: IRequest, method: str
               ) -> Generator[defer.Deferred[Any], Any, Answer]:
        plugin, player_id, action = self.plugin, self.player_id, self.action
        if action in GET_ACTIONS:
            if method not in ("GET", "HEAD"):
                return 405, {"error": "use GET"}
            if action == "export":
                data = yield plugin.export(player_id)
                return 200, data
            record = yield plugin.get(player_id)
            holders = yield plugin.store.holders(player_id)
            return 200, {
                "player_id": player_id, "online": record.online,
                "since": record.since or None, "last_seen": record.last_seen or None,
                "zone": record.zone, "region": record.region, "status": record.status,
                "activity": record.activity, "invisible": record.invisible,
                "version": record.version, "instances": sorted(holders),
            }
        if method != "POST":
            return 405, {"error": "use POST"}
        if action == "erase":
            result = yield plugin.erase(player_id)
            return 200, result
        body = _body(request)
        if action == "location":
            zone, region = body.get("zone", ""), body.get("region", "")
            if not isinstance(zone, str) or not isinstance(region, str):
                raise ValueError("zone and region must be strings")
            limit = plugin.config.max_location_length
            if len(zone) > limit or len(region) > limit:
                raise ValueError(f"zone and region are at most {limit} characters")
            record = yield plugin.set_location(player_id, zone, region)
            return 200, {"zone": record.zone, "region": record.region}
        calls: list[Callable[[], defer.Deferred[list[Any]]]] = []
        if action == "friends":
            calls += [_bind(plugin.add_friend, player_id, o) for o in _ids(body, "add")]
            calls += [_bind(plugin.remove_friend, player_id, o) for o in _ids(body, "remove")]
        elif action == "blocks":
            calls += [_bind(plugin.block, player_id, o) for o in _ids(body, "add")]
            calls += [_bind(plugin.unblock, player_id, o) for o in _ids(body, "remove")]
        else:  # groups
            joins = body.get("join", [])
            if not isinstance(joins, list) or not all(
                    isinstance(j, dict) and isinstance(j.get("id"), str)
                    and 0 < len(j["id"]) <= MAX_ID_LENGTH for j in joins):
                raise ValueError('join must be a list of {"id": ..., "kind": ...}')
            for join in joins:
                kind = join.get("kind")
                if kind not in ("guild", "party"):
                    raise ValueError("kind must be guild or party")
            calls += [_bind(plugin.join_group, player_id, j["id"], j["kind"]) for j in joins]
            calls += [_bind(plugin.leave_group, player_id, g) for g in _ids(body, "leave")]
        changed = 0
        for call in calls:  # validated first, applied in order
            edits = yield call()
            changed += len(edits)
        return 200, {"changed": changed}


def _bind(fn: Callable[..., defer.Deferred[list[Any]]], *args: Any
          ) -> Callable[[], defer.Deferred[list[Any]]]:
    return lambda: fn(*args)


def _body(request: IRequest) -> dict[str, Any]:
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise ValueError("body too large")
    data = json.loads(raw or b"{}")
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _ids(data: dict[str, Any], key: str) -> list[str]:
    values = data.get(key, [])
    if not isinstance(values, list) or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_ID_LENGTH for v in values):
        raise ValueError(f"{key} must be a list of player ids")
    return values
