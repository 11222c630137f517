"""Bot world: a small game simulation served through rtgateway's state sync.

A dropin (``[plugins] paths`` lists this directory) providing a StateProvider:
``bots`` bots wander between random waypoints in a square zone, every player
gets an avatar steered by ``player.input`` commands, and one global entity
carries the world clock and weather.  The state plugin does the rest:
interest management, deltas, budgets, acks, resume.

The movement rule :func:`step` is shared with the client (client.py imports
this module), which predicts its own avatar with it and reconciles with the
server's state, the way a real game shares its simulation code.

Input commands (``InputCommand.data``) are two signed bytes: the direction
of movement, x and y, each -127..127 (0, 0: stand still).  Each command
moves the avatar for ``INPUT_DT`` seconds at ``AVATAR_SPEED``.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from zope.interface import implementer

from gateway.config import ConfigError
from gateway.plugin import GatewayPlugin, PluginContext
from gateway.state.provider import GLOBAL, EntityState, FieldSpec, IStateProvider, Schema
from gateway.state.quantize import yaw_quaternion

KIND_AVATAR = 1
KIND_BOT = 2
KIND_WORLD = 3
WORLD_ENTITY = 0
AVATAR_BASE = 100000  # avatar ids: AVATAR_BASE + n
AVATAR_SPEED = 5.0  # m/s
INPUT_DT = 0.05  # seconds of movement per input command (clients send 20 per second)
BOT_SPEED = 3.0

SCHEMA = Schema({
    KIND_AVATAR: (FieldSpec("health"), FieldSpec("name", "bytes")),
    KIND_BOT: (FieldSpec("health"), FieldSpec("stance")),
    KIND_WORLD: (FieldSpec("time_of_day", "float", 0.01), FieldSpec("weather")),
})


class Avatar(NamedTuple):
    """A player's avatar: what :func:`step` works on (client and server alike)."""

    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0


def encode_input(dx: float, dy: float) -> bytes:
    """A direction (any length; normalised) as the two signed bytes of an input command."""
    length = math.hypot(dx, dy)
    if length < 1e-9:
        return b"\x00\x00"
    return struct.pack("<bb", round(dx / length * 127), round(dy / length * 127))


def decode_input(data: bytes) -> tuple[float, float]:
    if len(data) != 2:
        return 0.0, 0.0
    dx, dy = struct.unpack("<bb", data)
    return dx / 127.0, dy / 127.0


def step(avatar: Avatar, data: bytes, zone: float = 200.0) -> Avatar:
    """One input command applied to an avatar: the shared movement rule."""
    dx, dy = decode_input(data)
    vx, vy = dx * AVATAR_SPEED, dy * AVATAR_SPEED
    x = min(zone, max(0.0, avatar.x + vx * INPUT_DT))
    y = min(zone, max(0.0, avatar.y + vy * INPUT_DT))
    return Avatar(x, y, vx, vy)


@dataclass(frozen=True)
class BotWorldConfig:
    """The [plugin.botworld] table."""

    bots: int = 60
    zone: float = 200.0  # metres; the square the bots and avatars live in
    seed: int = 1
    pause_chance: float = 0.3  # chance a bot rests at a waypoint


@dataclass
class Bot:
    id: int
    x: float
    y: float
    tx: float
    ty: float
    rest: float = 0.0
    health: int = 100


@implementer(IStateProvider)
class BotWorldPlugin(GatewayPlugin):
    name = "botworld"
    version = "1.0"
    requires = ("state",)
    config_class = BotWorldConfig
    schema = SCHEMA

    def __init__(self) -> None:
        self.config: BotWorldConfig = BotWorldConfig()
        self.bots: list[Bot] = []
        self.avatars: dict[str, tuple[int, Avatar]] = {}
        self.moved: set[str] = set()
        self.paused = False  # tests freeze the bots to compare states exactly
        self.clock = 0.0
        self.inputs_applied: dict[str, int] = {}
        self._next_avatar = AVATAR_BASE
        self._rng = random.Random(1)

    def configure(self, config: Any) -> None:
        super().configure(config)
        if self.config.bots < 0 or self.config.zone <= 0:
            raise ConfigError("plugin.botworld", "bots >= 0 and zone > 0")

    def setup(self, context: PluginContext) -> None:
        cfg = self.config
        self._rng = random.Random(cfg.seed)
        rng = self._rng
        self.bots = [
            Bot(i, rng.uniform(0, cfg.zone), rng.uniform(0, cfg.zone),
                rng.uniform(0, cfg.zone), rng.uniform(0, cfg.zone))
            for i in range(1, cfg.bots + 1)
        ]
        context.plugins["state"].register_provider(self)

    # ------------------------------------------------------------------ IStateProvider

    def player_joined(self, player_id: str) -> int | None:
        if player_id not in self.avatars:  # a resume finds its avatar where it left it
            self._next_avatar += 1
            z = self.config.zone
            self.avatars[player_id] = (self._next_avatar, Avatar(z / 2, z / 2))
        return self.avatars[player_id][0]

    def player_left(self, player_id: str) -> None:
        """The avatar stays (the player may resume); a real game would expire it."""

    def apply_input(self, player_id: str, seq: int, tick: int, data: bytes) -> int:
        entry = self.avatars.get(player_id)
        if entry is not None:
            self.avatars[player_id] = (entry[0], step(entry[1], data, self.config.zone))
            self.moved.add(player_id)
            self.inputs_applied[player_id] = seq
        return seq

    def advance(self, tick: int, dt: float) -> None:
        self.clock += dt
        for player_id, (eid, avatar) in self.avatars.items():
            if player_id not in self.moved and (avatar.vx or avatar.vy):
                self.avatars[player_id] = (eid, Avatar(avatar.x, avatar.y))  # no input: stop
        self.moved.clear()
        if self.paused:
            return
        rng = self._rng
        zone = self.config.zone
        for bot in self.bots:
            if bot.rest > 0:
                bot.rest -= dt
                continue
            dx, dy = bot.tx - bot.x, bot.ty - bot.y
            dist = math.hypot(dx, dy)
            move = BOT_SPEED * dt
            if dist <= move:
                bot.x, bot.y = bot.tx, bot.ty
                bot.tx, bot.ty = rng.uniform(0, zone), rng.uniform(0, zone)
                if rng.random() < self.config.pause_chance:
                    bot.rest = rng.uniform(0.5, 3.0)
            else:
                bot.x += dx / dist * move
                bot.y += dy / dist * move

    def entity_states(self, tick: int) -> list[EntityState]:
        out = [EntityState(WORLD_ENTITY, KIND_WORLD, scope=GLOBAL,
                           fields=((self.clock / 60.0) % 24.0, 1))]
        for bot in self.bots:
            moving = bot.rest <= 0 and not self.paused
            dx, dy = bot.tx - bot.x, bot.ty - bot.y
            dist = math.hypot(dx, dy) or 1.0
            vx, vy = (dx / dist * BOT_SPEED, dy / dist * BOT_SPEED) if moving else (0.0, 0.0)
            out.append(EntityState(
                bot.id, KIND_BOT, bot.x, bot.y, 0.0, yaw_quaternion(math.atan2(dy, dx)),
                vx, vy, 0.0, (bot.health, 1 if moving else 0)))
        for player_id, (eid, a) in self.avatars.items():
            out.append(EntityState(
                eid, KIND_AVATAR, a.x, a.y, 0.0, None, a.vx, a.vy, 0.0,
                (100, player_id.encode()[:32])))
        return out

    def view_position(self, player_id: str) -> tuple[float, float] | None:
        return None


botworld = BotWorldPlugin()
