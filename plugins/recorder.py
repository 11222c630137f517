"""Session recording, switchable at run time: the glue between the gateway and the Recorder.

The engine (format, scrubbing, files) is :mod:`gateway.recording`; this
plugin only connects it:

* frames: ``Gateway.frame_observers`` (the hook costs the gateway one
  truthiness check per frame, so the observer is attached only while
  something is being recorded);
* ends: ``Gateway.on_disconnected``; writes: the normal tick's flush phase;
* control: ``[recording] players`` at start-up, ``/admin/recording`` on the
  admin site, and :meth:`RecorderPlugin.start` / :meth:`RecorderPlugin.stop`
  / :meth:`RecorderPlugin.status` from the manhole
  (``plugins["recorder"].start(players=["alice"])``).

It is optional: a debugging aid must never keep a gateway from starting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.web import resource

from gateway.config import read_secret
from gateway.plugin import GatewayPlugin, PluginContext
from gateway.recording import Recorder
from gateway.web.admin import bearer_ok
from protocol import recording_pb2

__all__ = ["RecorderPlugin", "recorder"]

#: Largest JSON body accepted by POST /admin/recording/start.
MAX_BODY = 64 * 1024
MAX_PLAYERS = 1000


class _RecorderService(Service):
    """Closes the files still open when the gateway stops (after its drain)."""

    def __init__(self, plugin: RecorderPlugin) -> None:
        self.plugin = plugin

    def stopService(self) -> defer.Deferred[None] | None:  # Twisted's name
        super().stopService()  # type: ignore[no-untyped-call]
        self.plugin.stop(reason=recording_pb2.END_REASON_SHUTDOWN)
        return None


class RecordingResource(resource.Resource):
    """``GET /admin/recording`` (status), ``POST .../start`` and ``POST .../stop``.

    The admin site's own bearer-token check covers only its built-in
    resources, so this one checks ``admin.token_env`` itself.
    """

    isLeaf = True

    def __init__(self, plugin: RecorderPlugin, token: bytes | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.plugin = plugin
        self.token = token

    def _authorized(self, request: Any) -> bool:
        return self.token is None or bearer_ok(request, self.token)

    def _reply(self, request: Any, status: int, data: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        request.setHeader("cache-control", "no-store")
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    def _refusal(self, request: Any) -> bytes | None:
        """The 401/404 answer when the request cannot go on, else None."""
        if not self._authorized(request):
            request.setHeader("www-authenticate", "Bearer")
            return self._reply(request, 401, {"error": "unauthorized"})
        if _action(request) is None:
            return self._reply(request, 404, {"error": "not found"})
        return None

    def render_GET(self, request: Any) -> bytes:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        action = _action(request)
        if action:
            return self._reply(request, 405, {"error": f"use POST for {action.decode()}"})
        return self._reply(request, 200, self.plugin.status())

    def render_POST(self, request: Any) -> bytes:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        action = _action(request)
        if action == b"stop":
            return self._reply(request, 200, self.plugin.stop())
        if action != b"start":
            return self._reply(request, 405, {"error": "use GET for the status"})
        try:
            players, everyone = _parse_start(request.content.read(MAX_BODY + 1))  # type: ignore[union-attr]
        except ValueError as exc:
            return self._reply(request, 400, {"error": str(exc)})
        status = self.plugin.start(players=players, everyone=everyone)
        return self._reply(request, 200 if status["recording"] else 503, status)


def _action(request: Any) -> bytes | None:
    """b"" for /admin/recording itself, b"start" or b"stop", None for anything else."""
    path = [p for p in (request.postpath or []) if p]
    if not path:
        return b""
    if len(path) == 1 and path[0] in (b"start", b"stop"):
        return bytes(path[0])
    return None


def _parse_start(body: bytes) -> tuple[list[str], bool]:
    """``{"players": ["alice", ...]}`` or ``{"all": true}``; ValueError says what is wrong."""
    usage = 'expected JSON {"players": ["alice", ...]} or {"all": true}'
    if len(body) > MAX_BODY:
        raise ValueError("body too large")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise ValueError(usage)
    if not isinstance(data, dict) or set(data) - {"players", "all"}:
        raise ValueError(usage)
    everyone = data.get("all", False)
    players = data.get("players", [])
    if not isinstance(everyone, bool) or not isinstance(players, list):
        raise ValueError(usage)
    if not all(isinstance(p, str) and 0 < len(p) <= 256 for p in players):
        raise ValueError("players must be non-empty strings")
    if len(players) > MAX_PLAYERS:
        raise ValueError(f"at most {MAX_PLAYERS} players")
    if not everyone and not players:
        raise ValueError(usage)
    return players, everyone


class RecorderPlugin(GatewayPlugin):
    """The ``recorder`` plugin: ``plugins["recorder"]`` in the manhole is this object."""

    name = "recorder"
    version = "1.0"
    optional = True

    def __init__(self) -> None:
        self.context: PluginContext | None = None
        self.recorder: Recorder | None = None
        self._remove_tick: Callable[[], None] | None = None

    def setup(self, context: PluginContext) -> Service:
        self.context = context
        config = context.gateway_config
        gateway = context.gateway
        self.recorder = Recorder(
            config.recording.directory,
            max_bytes=config.recording.max_bytes,
            instance_id=gateway.instance_id,
            max_frame_size=config.limits.max_message_size,
            monotonic_ns=gateway.monotonic_ns,
            wall_time=gateway.clock.seconds,
            on_stopped=self._detach,
        )
        gateway.on_disconnected.append(self._disconnected)
        token = None
        if config.admin.token_env:
            token = read_secret("admin.token_env", env=config.admin.token_env)
        context.admin_resources[b"recording"] = RecordingResource(self, token)
        if config.recording.players:
            self.start(players=config.recording.players)
        return _RecorderService(self)

    # ------------------------------------------------------------------ control (manhole API)

    def start(self, players: Iterable[str] | str = (), *, everyone: bool = False) -> dict[str, Any]:
        """Record these players (``"*"`` or ``everyone=True``: all) from now on.

        Replaces the previous selection; returns :meth:`status`.  Connected
        players are recorded from their next frame (``mid_session`` files).
        """
        recorder = self._recorder()
        chosen = [players] if isinstance(players, str) else list(players)
        if recorder.start(chosen, everyone=everyone):
            self._attach()
        return self.status()

    def stop(
        self, reason: recording_pb2.EndReason = recording_pb2.END_REASON_STOPPED
    ) -> dict[str, Any]:
        """Stop recording; open files get their SessionEnd.  Returns :meth:`status`."""
        recorder = self._recorder()
        recorder.stop(reason)
        self._detach()
        return self.status()

    def status(self) -> dict[str, Any]:
        return self._recorder().status()

    def flush(self) -> None:
        """Write buffered records now (the tick does it ten times a second anyway)."""
        self._recorder().flush()

    # ------------------------------------------------------------------ wiring

    def _recorder(self) -> Recorder:
        if self.recorder is None:
            raise RuntimeError("the recorder plugin is not set up")
        return self.recorder

    def _attach(self) -> None:
        assert self.context is not None
        observers = self.context.gateway.frame_observers
        if self._observe not in observers:
            observers.append(self._observe)
        if self._remove_tick is None:
            self._remove_tick = self.context.ticks.add(
                "normal", self._tick, phase="flush", name="recording writer"
            )

    def _detach(self) -> None:
        if self.context is None:
            return
        observers = self.context.gateway.frame_observers
        if self._observe in observers:
            observers.remove(self._observe)
        if self._remove_tick is not None:
            self._remove_tick()
            self._remove_tick = None

    def _tick(self, _info: object) -> None:
        assert self.context is not None
        hub = self.context.gateway.hub
        self._recorder().flush(alive=lambda connection_id: hub.get(connection_id) is not None)

    def _observe(self, transport: Any, direction: str, data: bytes) -> None:
        self._recorder().frame(transport.connection, direction, data)

    def _disconnected(self, transport: Any) -> None:
        if self.recorder is not None:
            self.recorder.disconnected(transport.connection)


recorder: Any = RecorderPlugin()
