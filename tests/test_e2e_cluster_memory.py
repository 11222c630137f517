"""Two instances sharing one in-memory broker and store: the cluster logic without Redis.

The same scenarios run against a real redis-server in test_e2e_cluster_redis.py.
"""

from __future__ import annotations

import pytest_twisted

from gateway.backend.memory import MemoryBackend, MemoryBroker, MemoryStore
from gateway.client import GatewayClient, registry_for
from plugins.chat import ChatPlugin
from protocol import game_pb2
from tests.conftest import test_config

FAST_CHAT = {"plugin.chat.burst": 200, "plugin.chat.messages_per_second": 200}


def client(running, token, **kw):
    from twisted.internet import reactor

    return GatewayClient(running.url, token, reactor=reactor, reconnect=None,
                         registry=registry_for(ChatPlugin()), **kw)


def shared_backends(n):
    from twisted.internet import reactor

    broker, store = MemoryBroker(), MemoryStore(reactor)
    return [MemoryBackend(reactor, broker=broker, store=store) for _ in range(n)]


@pytest_twisted.inlineCallbacks
def test_event_published_on_b_reaches_player_on_a(start_gateway, mint):
    a_backend, b_backend = shared_backends(2)
    a = yield start_gateway(test_config(**FAST_CHAT), backend=a_backend)
    b = yield start_gateway(test_config(**FAST_CHAT), backend=b_backend)
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    yield alice.connect()
    yield bob.connect()
    heard = alice.wait_for("social.chat.message")
    bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text="across"))
    line = yield heard
    assert (line.message.text, line.message.from_player) == ("across", "bob")
    # Echoes are dropped by origin: bob hears his own line once, from his own instance.
    mine = []
    bob.on("social.chat.message", lambda i: mine.append(i.message.text))
    at_alice = alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "once")
    at_bob = bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "once")
    bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text="once"))
    yield at_alice
    yield at_bob
    assert mine.count("once") == 1
    yield alice.close()
    yield bob.close()


@pytest_twisted.inlineCallbacks
def test_session_moves_to_another_instance_without_loss_or_duplicates(start_gateway, mint):
    a_backend, b_backend = shared_backends(2)
    a = yield start_gateway(test_config(**FAST_CHAT), backend=a_backend)
    b = yield start_gateway(test_config(**FAST_CHAT), backend=b_backend)
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    heard = []
    alice.on("social.chat.message", lambda i: heard.append(i.message.text))
    first = yield alice.connect()
    yield bob.connect()
    for n in range(5):
        bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text=f"m{n}"))
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "m4")

    # Instance A dies without a goodbye: its connections drop.
    alice.abort()
    yield alice.when_closed()
    for n in range(5, 10):
        bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text=f"m{n}"))
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "m9")

    alice.url = b.url  # the load balancer sends the reconnect to B
    moved = yield alice.connect()
    assert moved.resumed and not moved.full_resync
    assert moved.session_id == first.session_id and moved.instance_id == b.gateway.instance_id
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "m9")
    bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text="m10"))
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "m10")
    assert heard == [f"m{n}" for n in range(11)]
    yield alice.close()
    yield bob.close()


@pytest_twisted.inlineCallbacks
def test_resume_on_b_replaces_the_connection_still_open_on_a(start_gateway, mint):
    a_backend, b_backend = shared_backends(2)
    a = yield start_gateway(backend=a_backend)
    b = yield start_gateway(backend=b_backend)
    first = client(a, mint("alice"))
    yield first.connect()
    closed = first.when_closed()
    second = client(b, mint("alice"))
    second.resume_token = first.resume_token
    second.session.last_in_seq = first.session.last_in_seq
    welcome = yield second.connect()
    assert welcome.resumed
    reason = yield closed
    assert reason.code == 4006
    yield second.close()


@pytest_twisted.inlineCallbacks
def test_drain_hands_sessions_over_with_nothing_lost(start_gateway, mint):
    a_backend, b_backend = shared_backends(2)
    a = yield start_gateway(test_config(**FAST_CHAT), backend=a_backend)
    b = yield start_gateway(test_config(**FAST_CHAT), backend=b_backend)
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    heard = []
    alice.on("social.chat.message", lambda i: heard.append(i.message.text))
    first = yield alice.connect()
    yield bob.connect()
    bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text="m0"))
    yield alice.wait_for("social.chat.message")

    draining = alice.wait_for("server.draining")
    closed = alice.when_closed()
    drained = a.gateway.drain(grace=0.2)
    notice = yield draining
    assert notice.message.grace_ms == 200
    bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text="m1"))
    reason = yield closed
    assert reason.code == 1001
    yield drained
    for n in (2, 3):
        bob.send("social.chat.send", game_pb2.ChatSend(channel="global", text=f"m{n}"))
    yield bob.wait_for("social.chat.message", predicate=lambda i: i.message.text == "m3")

    alice.url = b.url
    moved = yield alice.connect()
    assert moved.resumed and not moved.full_resync and moved.session_id == first.session_id
    yield alice.wait_for("social.chat.message", predicate=lambda i: i.message.text == "m3")
    assert heard == ["m0", "m1", "m2", "m3"]
    yield alice.close()
    yield bob.close()
