"""World clock and operator announcements, the built-in world events.

``world.time`` goes to every player once a second from the normal tick
group; ``world.announcement`` is sent by operators through
``POST /admin/announce`` (JSON ``{"text": ..., "level": ...}``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from gateway.events import Category, Delivery, Direction, EventSpec, Priority
from gateway.plugin import GatewayPlugin, PluginContext
from gateway.tick import TickInfo
from protocol import game_pb2

WORLD_TOPIC = "world"
LEVELS = ("info", "warning", "maintenance")


@dataclass(frozen=True)
class WorldConfig:
    time_scale: float = 1.0
    # Seconds between world.time events (0 disables them).
    time_interval: float = 1.0


class _Announce(resource.Resource):
    isLeaf = True

    def __init__(self, plugin: WorldPlugin) -> None:
        super().__init__()
        self.plugin = plugin

    def render_POST(self, request: IRequest) -> bytes:  # noqa: N802
        request.setHeader("content-type", "application/json")
        try:
            body = json.loads(request.content.read(8192) or b"{}")  # type: ignore[union-attr]
            text = str(body["text"])
            level = str(body.get("level", "info"))
        except (ValueError, KeyError, TypeError):
            request.setResponseCode(400)
            return b'{"error": "expected JSON {\\"text\\": ..., \\"level\\": ...}"}\n'
        if not text or len(text) > 1000 or level not in LEVELS:
            request.setResponseCode(400)
            return b'{"error": "text must be 1..1000 characters; level info|warning|maintenance"}\n'
        sent = self.plugin.announce(text, level)
        request.setResponseCode(202)
        return json.dumps({"sent_to": sent}).encode() + b"\n"


class WorldPlugin(GatewayPlugin):
    name = "world"
    version = "1.0"
    config_class = WorldConfig

    def __init__(self) -> None:
        self.config: WorldConfig = WorldConfig()
        self.context: PluginContext | None = None
        self.game_time = 0.0
        self._since_sent = 0.0

    def event_specs(self) -> tuple[EventSpec, ...]:
        return (
            EventSpec(
                type="world.time",
                versions={1: game_pb2.WorldTime},
                category=Category.WORLD,
                priority=Priority.LOW,
                direction=Direction.SERVER_TO_CLIENT,
                delivery=Delivery.UNRELIABLE,
                description="The world clock, once a second; a newer one supersedes.",
            ),
            EventSpec(
                type="world.announcement",
                versions={1: game_pb2.Announcement},
                category=Category.WORLD,
                priority=Priority.HIGH,
                direction=Direction.SERVER_TO_CLIENT,
                delivery=Delivery.RELIABLE,
                description="An operator message to every player on this instance.",
            ),
        )

    def setup(self, context: PluginContext) -> None:
        self.context = context
        gateway = context.gateway
        gateway.on_authenticated.append(lambda t: gateway.hub.subscribe(t, WORLD_TOPIC))
        context.ticks.add("normal", self._tick, name="world clock")
        context.admin_resources[b"announce"] = _Announce(self)

    def _tick(self, info: TickInfo) -> None:
        self.game_time += info.dt * self.config.time_scale
        self._since_sent += info.dt
        if not self.config.time_interval or self._since_sent < self.config.time_interval:
            return
        self._since_sent = 0.0
        assert self.context is not None
        msg = game_pb2.WorldTime(
            tick=info.number,
            game_time=self.game_time,
            time_scale=self.config.time_scale,
            server_time_us=int(time.time() * 1e6),
        )
        self.context.gateway.publish(WORLD_TOPIC, "world.time", msg)

    def announce(self, text: str, level: str = "info") -> int:
        assert self.context is not None
        gateway = self.context.gateway
        msg = game_pb2.Announcement(text=text, level=level)
        gateway.publish(WORLD_TOPIC, "world.announcement", msg)
        return len(gateway.hub.subscribers(WORLD_TOPIC))


world: Any = WorldPlugin()
