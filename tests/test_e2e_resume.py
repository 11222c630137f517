"""Session resume on the embedded backend: replay, catch-up, token rotation."""

from __future__ import annotations

import pytest_twisted

from gateway.client import GatewayClient, registry_for
from plugins.chat import ChatPlugin
from protocol import game_pb2
from tests.conftest import test_config


def make_client(running, token):
    from twisted.internet import reactor

    return GatewayClient(running.url, token, reactor=reactor, reconnect=None,
                         registry=registry_for(ChatPlugin()))


def say(client, text):
    client.send("social.chat.send", game_pb2.ChatSend(channel="global", text=text))


@pytest_twisted.inlineCallbacks
def test_resume_catches_up_exactly_once_in_order(start_gateway, mint):
    running = yield start_gateway(test_config(**{"plugin.chat.burst": 100,
                                                 "plugin.chat.messages_per_second": 100}))
    alice = make_client(running, mint("alice"))
    bob = make_client(running, mint("bob"))
    heard = []
    alice.on("social.chat.message", lambda i: heard.append(i.message.text))
    welcome = yield alice.connect()
    assert welcome.reconnect_token and not welcome.resumed
    yield bob.connect()

    for n in range(3):
        say(bob, f"before-{n}")
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "before-2")
    token = alice.resume_token

    alice.abort()  # a dropped connection, not a goodbye: the session is suspended
    yield alice.when_closed()
    for n in range(4):
        say(bob, f"during-{n}")
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "during-3")

    resumed = yield alice.connect()  # the same client: same ClientSession, resume token
    assert resumed.resumed and not resumed.full_resync
    assert resumed.session_id == welcome.session_id
    assert resumed.reconnect_token != token  # rotated on use
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "during-3")
    say(bob, "after")
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "after")
    assert heard == [f"before-{n}" for n in range(3)] + [f"during-{n}" for n in range(4)] + [
        "after"]

    # The old token was single-use: presenting it again gets a fresh session and a resync.
    thief = make_client(running, mint("alice"))
    thief.resume_token = token
    stolen = yield thief.connect()
    assert not stolen.resumed and stolen.full_resync
    assert stolen.session_id != welcome.session_id
    metrics = running.gateway.metrics
    assert metrics.refused_tokens.labels("reused")._value.get() == 1
    yield thief.close()
    yield alice.close()
    yield bob.close()


@pytest_twisted.inlineCallbacks
def test_second_connection_with_the_token_replaces_the_first(start_gateway, mint):
    running = yield start_gateway()
    first = make_client(running, mint("alice"))
    yield first.connect()
    second = make_client(running, mint("alice"))
    second.resume_token = first.resume_token
    second.session.last_in_seq = first.session.last_in_seq
    closed = first.when_closed()
    welcome = yield second.connect()
    assert welcome.resumed
    reason = yield closed
    assert reason.code == 4006
    yield second.close()


@pytest_twisted.inlineCallbacks
def test_goodbye_ends_the_session_and_nothing_is_left(start_gateway, mint):
    running = yield start_gateway()
    alice = make_client(running, mint("alice"))
    yield alice.connect()
    token = alice.resume_token
    yield alice.close()
    backend = running.service.backend
    leftovers = yield backend.scan("s:")
    assert leftovers == []
    again = make_client(running, mint("alice"))
    again.resume_token = token
    welcome = yield again.connect()
    assert not welcome.resumed and welcome.full_resync
    yield again.close()


@pytest_twisted.inlineCallbacks
def test_session_store_failure_closes_that_connection_with_1011_and_nothing_else(
    start_gateway, mint
):
    from twisted.internet import defer, reactor

    from gateway.backend.base import BackendUnavailable
    from gateway.backend.memory import MemoryBackend

    class FlakyStore(MemoryBackend):
        failing = False

        def set(self, key, value, ttl=None, *, only_if_absent=False):
            if self.failing and key.startswith("s:"):
                return defer.fail(BackendUnavailable("store down"))
            return super().set(key, value, ttl, only_if_absent=only_if_absent)

    backend = FlakyStore(reactor)
    running = yield start_gateway(backend=backend)
    bob = make_client(running, mint("bob"))
    yield bob.connect()

    backend.failing = True
    alice = make_client(running, mint("alice"))
    try:
        yield alice.connect()
    except Exception:
        pass
    else:
        raise AssertionError("connected although the session could not be stored")
    closed = yield alice.when_closed()
    assert closed.code == 1011
    assert [c.player_id for c in running.gateway.hub.connections()] == ["bob"]

    backend.failing = False
    bob.ping()
    yield bob.wait_for("system.pong")  # the others never noticed
    again = make_client(running, mint("alice"))
    welcome = yield again.connect()
    assert welcome.player_id == "alice"
    yield again.close()
    yield bob.close()
