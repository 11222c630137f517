"""Chat: channels and whispers, the built-in social events.

Shipped as a plugin through the same interface a game's own plugin uses.
Identity comes from the connection, never from the payload; text length
and rate are bounded; channels are an allow-list from config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.codes import ErrorCode
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
from protocol import game_pb2


@dataclass(frozen=True)
class ChatConfig:
    # Channels every player joins on connect and may speak in.
    channels: tuple[str, ...] = ("global",)
    max_length: int = 256
    messages_per_second: float = 2.0
    burst: int = 5


class ChatPlugin(GatewayPlugin):
    name = "chat"
    version = "1.0"
    config_class = ChatConfig

    def __init__(self) -> None:
        self.config: ChatConfig = ChatConfig()
        self.context: PluginContext | None = None

    def event_specs(self) -> tuple[EventSpec, ...]:
        return (
            EventSpec(
                type="social.chat.send",
                versions={1: game_pb2.ChatSend},
                category=Category.SOCIAL,
                priority=Priority.NORMAL,
                direction=Direction.CLIENT_TO_SERVER,
                delivery=Delivery.RELIABLE,
                rate_limit=(self.config.messages_per_second, self.config.burst),
                validators=(self._validate,),
                description="Say something in a channel, or whisper to one player.",
            ),
            EventSpec(
                type="social.chat.message",
                versions={1: game_pb2.ChatMessage},
                category=Category.SOCIAL,
                priority=Priority.NORMAL,
                direction=Direction.SERVER_TO_CLIENT,
                delivery=Delivery.RELIABLE,
                description="A chat line; from_player is always the authenticated sender.",
            ),
        )

    def setup(self, context: PluginContext) -> None:
        self.context = context
        gateway = context.gateway

        def join(transport: object) -> None:
            for channel in self.config.channels:
                gateway.hub.subscribe(transport, f"chat:{channel}")  # type: ignore[arg-type]

        gateway.on_authenticated.append(join)

    def _validate(self, ctx: EventContext, msg: game_pb2.ChatSend) -> None:
        text = msg.text.strip()
        if not text:
            raise ValidationError("empty message")
        if len(msg.text) > self.config.max_length:
            raise ValidationError(f"message longer than {self.config.max_length} characters")
        if not msg.to_player and msg.channel not in self.config.channels:
            raise ValidationError(f"unknown channel {msg.channel[:32]!r}")
        if msg.to_player == ctx.player_id:
            raise ValidationError("whispering to yourself")

    @handles("social.chat.send")
    def on_send(self, ctx: EventContext, msg: game_pb2.ChatSend) -> None:
        line = game_pb2.ChatMessage(
            text=msg.text,
            from_player=ctx.player_id,
            sent_at_us=int(time.time() * 1e6),
        )
        if msg.to_player:
            line.whisper = True
            if not ctx.server.is_online(msg.to_player):  # type: ignore[attr-defined]
                raise EventError(ErrorCode.BAD_REQUEST, "that player is not online")
            ctx.send_to_player(msg.to_player, "social.chat.message", line)
            ctx.reply("social.chat.message", line)  # the sender sees their own whisper
            return
        line.channel = msg.channel
        ctx.publish(f"chat:{msg.channel}", "social.chat.message", line)


chat = ChatPlugin()
