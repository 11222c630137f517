"""The built-in chat and world plugins, through real sockets."""

from __future__ import annotations

import json

import pytest_twisted
import treq

from gateway.client import GatewayClient, ServerError, registry_for
from gateway.codes import ErrorCode
from plugins.chat import ChatPlugin
from plugins.world import WorldPlugin
from protocol import game_pb2
from tests.conftest import test_config


def client(running, token):
    from twisted.internet import reactor

    return GatewayClient(running.url, token, reactor=reactor, reconnect=None,
                         registry=registry_for(ChatPlugin(), WorldPlugin()))


@pytest_twisted.inlineCallbacks
def test_chat_channel_whisper_and_refusals(start_gateway, mint):
    running = yield start_gateway(test_config(**{"plugin.chat.burst": 20}))
    alice, bob = client(running, mint("alice")), client(running, mint("bob"))
    yield alice.connect()
    yield bob.connect()

    heard = bob.wait_for("social.chat.message")
    # The payload cannot claim another identity: from_player comes from the token.
    alice.send("social.chat.send", game_pb2.ChatSend(channel="global", text="hi all"))
    line = yield heard
    assert (line.message.from_player, line.message.text, line.message.channel) == (
        "alice", "hi all", "global")

    whisper = bob.wait_for("social.chat.message", predicate=lambda i: i.message.whisper)
    echo = yield alice.request("social.chat.send",
                               game_pb2.ChatSend(to_player="bob", text="psst"))
    assert echo.message.whisper and echo.message.from_player == "alice"
    got = yield whisper
    assert got.message.text == "psst"

    for bad, code in [
        (game_pb2.ChatSend(channel="global", text="   "), ErrorCode.VALIDATION_FAILED),
        (game_pb2.ChatSend(channel="secret", text="x"), ErrorCode.VALIDATION_FAILED),
        (game_pb2.ChatSend(channel="global", text="x" * 257), ErrorCode.VALIDATION_FAILED),
        (game_pb2.ChatSend(to_player="nobody", text="x"), ErrorCode.BAD_REQUEST),
    ]:
        try:
            yield alice.request("social.chat.send", bad)
        except ServerError as exc:
            assert exc.code == code, (bad, exc)
        else:
            raise AssertionError(f"{bad} was accepted")
    yield alice.close()
    yield bob.close()


@pytest_twisted.inlineCallbacks
def test_chat_rate_limit_answers_with_an_error_and_keeps_the_connection(start_gateway, mint):
    config = test_config(**{"plugin.chat.messages_per_second": 0.5, "plugin.chat.burst": 2})
    running = yield start_gateway(config)
    alice = client(running, mint("alice"))
    yield alice.connect()
    errors = []
    alice.on("system.error", lambda i: errors.append(i.message.code))
    for n in range(4):
        alice.send("social.chat.send", game_pb2.ChatSend(channel="global", text=f"m{n}"))
    yield alice.wait_for("system.error")
    yield alice.wait_for("system.error") if len(errors) < 2 else None
    assert errors == [ErrorCode.RATE_LIMITED, ErrorCode.RATE_LIMITED]
    alice.ping()
    yield alice.wait_for("system.pong")
    yield alice.close()


@pytest_twisted.inlineCallbacks
def test_world_clock_and_operator_announcement(start_gateway, mint):
    config = test_config(**{"plugin.world.time_interval": 0.1, "plugin.world.time_scale": 2.0})
    running = yield start_gateway(config)
    alice = client(running, mint("alice"))
    yield alice.connect()
    first = yield alice.wait_for("world.time")
    second = yield alice.wait_for("world.time")
    assert second.message.game_time > first.message.game_time
    assert first.message.time_scale == 2.0

    heard = alice.wait_for("world.announcement")
    response = yield treq.post(running.admin_url + "/admin/announce",
                               json.dumps({"text": "restart in 5", "level": "maintenance"})
                               .encode())
    assert response.code == 202
    assert json.loads((yield response.content())) == {"sent_to": 1}
    note = yield heard
    assert (note.message.text, note.message.level) == ("restart in 5", "maintenance")

    bad = yield treq.post(running.admin_url + "/admin/announce", b'{"level": "info"}')
    assert bad.code == 400
    yield bad.content()
    yield alice.close()
