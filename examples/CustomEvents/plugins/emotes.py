"""Emotes: a third-party rtgateway plugin with two custom events.

This file is a dropin: the gateway finds it because the directory holding it
is listed in ``[plugins] paths`` and it defines a module-level object that
provides ``IGatewayPlugin`` (``emotes = EmotesPlugin()`` at the bottom).
The gateway imports it as ``plugins.emotes``, so the generated messages next
to it are imported as ``plugins.emotes_pb2``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.codes import ErrorCode
from gateway.config import ConfigError
from gateway.events import (
    Category,
    Delivery,
    Direction,
    EventContext,
    EventError,
    EventSpec,
    Priority,
    ValidationError,
)
from gateway.plugin import GatewayPlugin, PluginContext, handles
from plugins import emotes_pb2

if TYPE_CHECKING:
    from gateway.server import Gateway

# Every player joins this topic when they connect; an emote for everyone is published to it.
EVERYONE = "emotes:everyone"


@dataclass(frozen=True)
class EmotesConfig:
    """The [plugin.emotes] table of rtgateway.toml."""

    allowed: tuple[str, ...] = ("wave", "dance", "bow", "laugh")
    # Seconds between two emotes of one connection (0: no limit of its own).
    cooldown: float = 1.0
    # Emotes a connection may send in a row before the cooldown applies.
    burst: int = 2

    def __post_init__(self) -> None:
        if not self.allowed:
            raise ConfigError("plugin.emotes.allowed", "must name at least one emote")
        if self.cooldown < 0:
            raise ConfigError("plugin.emotes.cooldown", "must be 0 or greater")
        if self.burst < 1:
            raise ConfigError("plugin.emotes.burst", "must be at least 1")


class EmotesPlugin(GatewayPlugin):
    name = "emotes"
    version = "1.0"
    config_class = EmotesConfig

    def __init__(self) -> None:
        self.config: EmotesConfig = EmotesConfig()
        self.gateway: Gateway | None = None

    def event_specs(self) -> tuple[EventSpec, ...]:
        cooldown = self.config.cooldown
        return (
            EventSpec(
                type="game.emote.request",
                versions={1: emotes_pb2.EmoteRequest},
                category=Category.GAME,
                priority=Priority.NORMAL,
                direction=Direction.CLIENT_TO_SERVER,
                delivery=Delivery.RELIABLE,  # the client resends it until the gateway has it
                rate_limit=(1 / cooldown, self.config.burst) if cooldown else None,
                validators=(self._validate,),
                description="Play an emote for everyone, or for one player (target_player).",
            ),
            EventSpec(
                type="game.emote",
                versions={1: emotes_pb2.Emote},
                category=Category.GAME,
                priority=Priority.LOW,  # the first to go when a client falls behind
                direction=Direction.SERVER_TO_CLIENT,
                delivery=Delivery.UNRELIABLE,  # cosmetic: not replayed after a reconnect
                description="Someone played an emote; from_player is the authenticated sender.",
            ),
        )

    def setup(self, context: PluginContext) -> None:
        gateway = self.gateway = context.gateway
        gateway.on_authenticated.append(lambda t: gateway.hub.subscribe(t, EVERYONE))

    def _validate(self, ctx: EventContext, request: emotes_pb2.EmoteRequest) -> None:
        if request.emote not in self.config.allowed:
            raise ValidationError(f"unknown emote {request.emote[:32]!r}")
        if request.target_player == ctx.player_id:
            raise ValidationError("emoting at yourself")

    @handles("game.emote.request")
    def on_request(self, ctx: EventContext, request: emotes_pb2.EmoteRequest) -> None:
        emote = emotes_pb2.Emote(
            from_player=ctx.player_id,  # who sent it comes from the token, not the payload
            emote=request.emote,
            sent_at_us=int(time.time() * 1e6),
        )
        if not request.target_player:
            ctx.publish(EVERYONE, "game.emote", emote)
            return
        assert self.gateway is not None
        if not self.gateway.is_online(request.target_player):
            raise EventError(ErrorCode.BAD_REQUEST, "that player is not online")
        emote.target_player = request.target_player
        ctx.send_to_player(request.target_player, "game.emote", emote)
        ctx.reply("game.emote", emote)  # the sender sees it too, as the answer to a request


emotes = EmotesPlugin()
