"""Presence end to end: two instances, real sockets, the SDK decoding presence events.

Most scenarios run on two instances sharing one in-memory broker and store
(the cluster logic without Redis); broadcast, block enforcement, population
after a killed instance, and export/erase run against a real redis-server too
(``@pytest.mark.redis``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, task

from gateway.backend.memory import MemoryBackend, MemoryBroker, MemoryStore
from gateway.client import GatewayClient, ServerError, registry_for
from gateway.codes import ErrorCode
from gateway.presence.core import FRIEND
from plugins.presence import PresencePlugin
from protocol import presence_pb2
from tests.conftest import test_config

FAST = {
    "plugin.presence.grace_seconds": 0.3,
    "plugin.presence.heartbeat_seconds": 0.2,
    "plugin.presence.instance_ttl_seconds": 1.0,
}


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def client(running: Any, token: str) -> GatewayClient:
    return GatewayClient(running.url, token, reactor=reactor(),
                         registry=registry_for(PresencePlugin()), reconnect=None)


def presence_of(running: Any) -> PresencePlugin:
    [plugin] = [p for p in running.service.plugins if p.name == "presence"]
    return plugin


def shared_backends(n: int) -> list[MemoryBackend]:
    broker, store = MemoryBroker(), MemoryStore(reactor())
    return [MemoryBackend(reactor(), broker=broker, store=store) for _ in range(n)]


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor(), seconds, lambda: None)


@defer.inlineCallbacks
def until(condition: Any, timeout: float = 5.0, step: float = 0.02) -> Any:
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        yield sleep(step)
        waited += step


def view_of(subject: str, **expected: Any) -> Any:
    """A wait_for predicate: a presence.update about ``subject`` with these field values."""

    def match(incoming: Any) -> bool:
        m = incoming.message
        return m.player_id == subject and all(getattr(m, k) == v for k, v in expected.items())

    return match


class Views:
    """Every presence.update a client received, per subject."""

    def __init__(self, c: GatewayClient) -> None:
        self.seen: dict[str, list[presence_pb2.PresenceView]] = {}
        c.on("presence.update", self._add)

    def _add(self, incoming: Any) -> None:
        self.seen.setdefault(incoming.message.player_id, []).append(incoming.message)

    def of(self, subject: str) -> list[presence_pb2.PresenceView]:
        return self.seen.get(subject, [])


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cluster(request: Any, start_gateway: Any) -> Any:
    """cluster(**overrides) -> Deferred[(a, b)]: two instances on one backend."""

    @defer.inlineCallbacks
    def start(**overrides: Any) -> Any:
        settings = {**FAST, **overrides}
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            settings.update({"backend.type": "redis", "backend.redis_url": url})
            a = yield start_gateway(test_config(**settings))
            b = yield start_gateway(test_config(**settings))
        else:
            a_backend, b_backend = shared_backends(2)
            a = yield start_gateway(test_config(**settings), backend=a_backend)
            b = yield start_gateway(test_config(**settings), backend=b_backend)
        return a, b

    return start


memory_only = pytest.mark.parametrize("cluster", ["memory"], indirect=True)


# ---------------------------------------------------------------------- broadcast


@pytest_twisted.inlineCallbacks
def test_friends_see_online_and_offline_across_instances_once(cluster, mint):
    a, b = yield cluster()
    yield presence_of(a).add_friend("alice", "bob")
    bob = client(b, mint("bob"))
    views = Views(bob)
    snapshot = bob.wait_for("presence.snapshot")
    yield bob.connect()
    first = (yield snapshot).message
    assert [v.player_id for v in first.players] == ["bob", "alice"]
    assert not first.players[1].online

    online = bob.wait_for("presence.update", predicate=view_of("alice", online=True))
    alice = client(a, mint("alice"))
    alice_snapshot = alice.wait_for("presence.snapshot")
    yield alice.connect()
    yield online
    mine = (yield alice_snapshot).message
    assert {v.player_id: v.online for v in mine.players} == {"alice": True, "bob": True}

    # A second tab, then closing one tab: nothing is broadcast.
    tab = client(b, mint("alice"))
    yield tab.connect()
    yield tab.close()
    offline = bob.wait_for("presence.update", predicate=view_of("alice", online=False))
    yield alice.close()  # the last connection: offline after the grace
    gone = (yield offline).message
    assert gone.last_seen_ms > 0
    assert [v.online for v in views.of("alice")] == [True, False]
    assert gone.version > views.of("alice")[0].version
    yield bob.close()


@memory_only
@pytest_twisted.inlineCallbacks
def test_a_reconnect_inside_the_grace_is_not_broadcast(cluster, mint):
    a, b = yield cluster(**{"plugin.presence.grace_seconds": 1.5})
    yield presence_of(a).add_friend("alice", "bob")
    bob = client(b, mint("bob"))
    views = Views(bob)
    yield bob.connect()
    alice = client(a, mint("alice"))
    yield alice.connect()
    yield until(lambda: views.of("alice"))
    alice.abort()  # the network drops
    yield alice.when_closed()
    yield sleep(0.2)
    again = client(b, mint("alice"))  # back within the grace, on the other instance
    yield again.connect()
    yield sleep(1.6)  # past the first instance's grace: it re-checks and stays quiet
    assert not presence_of(a).local.present("alice")
    assert [v.online for v in views.of("alice")] == [True]
    yield again.close()
    yield bob.wait_for("presence.update", predicate=view_of("alice", online=False))
    yield bob.close()


# ---------------------------------------------------------------------- status, location, privacy


@memory_only
@pytest_twisted.inlineCallbacks
def test_status_location_and_per_audience_privacy(cluster, mint):
    a, b = yield cluster(**{"plugin.presence.status_burst": 3,
                            "plugin.presence.status_per_second": 0.1})
    plugin = presence_of(a)
    yield plugin.add_friend("alice", "bob")
    alice, bob, carol = client(a, mint("alice")), client(b, mint("bob")), client(b, mint("carol"))
    for c in (alice, bob, carol):
        yield c.connect()
    answer = yield carol.request("presence.subscribe",
                                 presence_pb2.PresenceSubscribe(player_ids=["alice"]))
    assert [(v.player_id, v.online) for v in answer.message.players] == [("alice", True)]

    # Status is public by default: the friend and the stranger both see it.
    at_bob = bob.wait_for("presence.update", predicate=view_of("alice", status="raiding"))
    at_carol = carol.wait_for("presence.update", predicate=view_of("alice", status="raiding"))
    alice.send("presence.set_status", presence_pb2.PresenceSetStatus(status="raiding",
                                                                     activity="boss 3"))
    assert (yield at_bob).message.activity == "boss 3"
    yield at_carol

    # The server sets the location; friends see it, a stranger does not (friends+party).
    at_bob = bob.wait_for("presence.update", predicate=view_of("alice", zone="docks"))
    at_carol = carol.wait_for("presence.update", predicate=view_of("alice", region="eu"))
    yield presence_of(b).set_location("alice", "docks", "eu")
    assert (yield at_bob).message.region == "eu"
    with pytest.raises(defer.TimeoutError):
        yield carol.wait_for("presence.update", predicate=view_of("alice", zone="docks"),
                             timeout=0.3)
    at_carol.cancel()

    # Clients cannot claim a location (client_location is off), nor send junk.
    for event, message, code in [
        ("presence.set_location", presence_pb2.PresenceSetLocation(zone="vault"),
         ErrorCode.BAD_REQUEST),
        ("presence.set_status", presence_pb2.PresenceSetStatus(status="x" * 129),
         ErrorCode.VALIDATION_FAILED),
        ("presence.subscribe", presence_pb2.PresenceSubscribe(player_ids=["alice"]),
         ErrorCode.VALIDATION_FAILED),
    ]:
        with pytest.raises(ServerError) as refused:
            yield alice.request(event, message)
        assert refused.value.code == code, event
    # The status rate limit (burst 3, one used above, one refused by validation).
    errors = []
    alice.on("system.error", lambda i: errors.append(i.message.code))
    for n in range(3):
        alice.send("presence.set_status", presence_pb2.PresenceSetStatus(status=f"s{n}"))
    yield until(lambda: ErrorCode.RATE_LIMITED in errors)

    # Status for friends only: the stranger's view loses it, the friend keeps it.
    privacy = presence_pb2.PresencePrivacy(
        status=presence_pb2.AudienceSet(audiences=[presence_pb2.AUDIENCE_FRIENDS]))
    hidden = carol.wait_for("presence.update", predicate=view_of("alice", status=""))
    settings = yield alice.request("presence.set_privacy", privacy)
    assert list(settings.message.status.audiences) == [presence_pb2.AUDIENCE_FRIENDS]
    assert (yield hidden).message.online
    assert (yield plugin.get("alice")).vis_status == FRIEND
    yield alice.close()
    yield bob.close()
    yield carol.close()


@memory_only
@pytest_twisted.inlineCallbacks
def test_invisible_players_look_offline_and_keep_receiving(cluster, mint):
    a, b = yield cluster()
    yield presence_of(a).add_friend("alice", "bob")
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    yield alice.connect()
    yield bob.connect()
    went = bob.wait_for("presence.update", predicate=view_of("alice", online=False))
    answer = yield alice.request("presence.set_privacy",
                                 presence_pb2.PresencePrivacy(invisible=True))
    assert answer.message.invisible
    assert not (yield went).message.zone
    # Alice still hears about bob.
    heard = alice.wait_for("presence.update", predicate=view_of("bob", status="hi"))
    bob.send("presence.set_status", presence_pb2.PresenceSetStatus(status="hi"))
    yield heard
    # Alice's own status change is not shown to bob while she is invisible.
    views = Views(bob)
    alice.send("presence.set_status", presence_pb2.PresenceSetStatus(status="secret"))
    yield alice.wait_for("presence.update", predicate=view_of("alice", status="secret"))
    yield sleep(0.2)
    assert views.of("alice") == []
    # Visible again: online, and the status shows.
    back = bob.wait_for("presence.update", predicate=view_of("alice", online=True,
                                                             status="secret"))
    yield alice.request("presence.set_privacy", presence_pb2.PresencePrivacy(invisible=False))
    yield back
    yield alice.close()
    yield bob.close()


# ---------------------------------------------------------------------- blocks


@pytest_twisted.inlineCallbacks
def test_a_block_is_enforced_on_every_instance(cluster, mint):
    a, b = yield cluster()
    plugin = presence_of(a)
    for friend in ("bob", "carol"):
        yield plugin.add_friend("alice", friend)
    alice, bob, carol = client(a, mint("alice")), client(b, mint("bob")), client(b, mint("carol"))
    yield bob.connect()
    yield carol.connect()
    sees = bob.wait_for("presence.update", predicate=view_of("alice", online=True))
    yield alice.connect()
    yield sees
    views = Views(bob)
    hidden = bob.wait_for("presence.update", predicate=view_of("alice", online=False))
    listed = yield alice.request("presence.block", presence_pb2.PresenceBlock(player_id="bob",
                                                                             blocked=True))
    assert list(listed.message.player_ids) == ["bob"]
    seen = (yield hidden).message
    assert not seen.online and not seen.last_seen_ms and not seen.status

    # carol, on bob's instance, hears alice's news; bob does not.
    at_carol = carol.wait_for("presence.update", predicate=view_of("alice", status="secret"))
    alice.send("presence.set_status", presence_pb2.PresenceSetStatus(status="secret"))
    yield at_carol
    yield sleep(0.1)
    assert [v.status for v in views.of("alice")] == [""]

    # bob cannot subscribe to alice either, on any instance.
    for where in (a, b):
        other = client(where, mint("bob"))
        yield other.connect()
        with pytest.raises(ServerError) as refused:
            yield other.request("presence.subscribe",
                                presence_pb2.PresenceSubscribe(player_ids=["alice"]))
        assert refused.value.code == ErrorCode.BAD_REQUEST
        assert "blocks you" in str(refused.value)
        yield other.close()

    # Unblocked: bob sees alice as she is.
    back = bob.wait_for("presence.update", predicate=view_of("alice", online=True,
                                                             status="secret"))
    yield alice.request("presence.block", presence_pb2.PresenceBlock(player_id="bob"))
    yield back
    for c in (alice, bob, carol):
        yield c.close()


# ---------------------------------------------------------------------- subscriptions


@memory_only
@pytest_twisted.inlineCallbacks
def test_subscriptions_answer_at_once_are_bounded_and_survive_a_move(cluster, mint):
    a, b = yield cluster(**{"plugin.presence.max_subscriptions": 2})
    dave = client(b, mint("dave"))
    yield dave.connect()
    yield presence_of(b).set_status("dave", "around")
    eve = client(a, mint("eve"))
    yield eve.connect()
    answer = yield eve.request("presence.subscribe",
                               presence_pb2.PresenceSubscribe(player_ids=["dave", "zed"]))
    got = {v.player_id: v for v in answer.message.players}
    assert got["dave"].online and got["dave"].status == "around"
    assert not got["zed"].online
    with pytest.raises(ServerError) as refused:
        yield eve.request("presence.subscribe", presence_pb2.PresenceSubscribe(player_ids=["x"]))
    assert "at most 2 subscriptions" in str(refused.value)
    # Changes follow, across instances.
    heard = eve.wait_for("presence.update", predicate=view_of("dave", status="busy"))
    dave.send("presence.set_status", presence_pb2.PresenceSetStatus(status="busy"))
    yield heard
    # Subscriptions belong to the player: they come back on another instance.
    yield eve.close()
    again = client(b, mint("eve"))
    snapshot = again.wait_for("presence.snapshot")
    yield again.connect()
    assert {v.player_id for v in (yield snapshot).message.players} == {"eve", "dave", "zed"}
    gone = yield again.request("presence.unsubscribe",
                               presence_pb2.PresenceUnsubscribe(player_ids=["dave"]))
    assert [(v.player_id, v.unwatched) for v in gone.message.players] == [("dave", True)]
    yield again.close()
    yield dave.close()


# ---------------------------------------------------------------------- groups


@memory_only
@pytest_twisted.inlineCallbacks
def test_guild_members_see_each_other_and_join_leave_events(cluster, mint):
    a, b = yield cluster()
    plugin = presence_of(a)
    yield plugin.join_group("alice", "g1", "guild")
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    yield alice.connect()
    yield bob.connect()
    # Only guild mates see alice's status.
    yield plugin.set_privacy("alice", status=2)  # GUILD
    joined = alice.wait_for("presence.group", predicate=lambda i: i.message.player_id == "bob")
    mine = bob.wait_for("presence.group", predicate=lambda i: i.message.player_id == "bob")
    sees = bob.wait_for("presence.update", predicate=view_of("alice", online=True))
    response = yield treq.post(a.admin_url + "/admin/presence/bob/groups",
                               json.dumps({"join": [{"id": "g1", "kind": "guild"}]}).encode())
    assert response.code == 200, (yield response.text())
    yield response.content()
    event = (yield joined).message
    assert (event.group_id, event.kind, event.joined) == ("g1", presence_pb2.GROUP_KIND_GUILD,
                                                          True)
    yield mine
    yield sees
    status = bob.wait_for("presence.update", predicate=view_of("alice", status="guild only"))
    alice.send("presence.set_status", presence_pb2.PresenceSetStatus(status="guild only"))
    yield status
    left = alice.wait_for("presence.group", predicate=lambda i: not i.message.joined)
    unwatched = bob.wait_for("presence.update", predicate=view_of("alice", unwatched=True))
    yield plugin.leave_group("bob", "g1")
    assert (yield left).message.player_id == "bob"
    yield unwatched
    yield alice.close()
    yield bob.close()


# ---------------------------------------------------------------------- population, crashes


def gauge(running: Any, name: str, **labels: str) -> float | None:
    return running.service.metrics.registry.get_sample_value(name, labels)


@pytest_twisted.inlineCallbacks
def test_population_recovers_after_an_instance_is_killed(cluster, mint):
    a, b = yield cluster()
    pa, pb = presence_of(a), presence_of(b)
    yield pa.add_friend("alice", "bob")
    yield pa.join_group("alice", "g1", "guild")
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    yield alice.connect()
    yield bob.connect()
    yield pa.set_location("alice", "docks")
    yield pb.set_location("bob", "docks")
    yield until(lambda: pb.cluster.global_population.get("docks") == 2)
    assert gauge(b, "rtgateway_presence_players", scope="global") == 2
    assert gauge(b, "rtgateway_presence_players", scope="instance") == 1
    assert gauge(b, "rtgateway_presence_zone_players", scope="global", zone="docks") == 2
    assert pb.population()["global"]["players"] == 2

    # Instance A dies: no clean-up of any kind, its connections just drop.
    offline = bob.wait_for("presence.update", predicate=view_of("alice", online=False),
                           timeout=10)
    pa.halt()
    alice.abort()
    yield offline  # after its liveness key expired, B released alice
    yield until(lambda: pb.cluster.global_population.get("*") == 1)
    assert gauge(b, "rtgateway_presence_players", scope="global") == 1
    assert gauge(b, "rtgateway_presence_zone_players", scope="global", zone="docks") == 1
    yield until(lambda: gauge(b, "rtgateway_presence_recovered_total") == 1)
    store = pb.store
    assert (yield store.holders("alice")) == {}
    assert (yield store.held_by(a.gateway.instance_id)) == []
    assert a.gateway.instance_id not in (yield store.instances())
    record = yield pb.get("alice")
    assert not record.online and record.last_seen > 0
    yield bob.close()


# ---------------------------------------------------------------------- GDPR and retention


@defer.inlineCallbacks
def everything_mentioning(backend: Any, needle: str) -> Any:
    """Keys whose name or content mentions ``needle`` (any value type)."""
    found = []
    raw = needle.encode()
    for key in (yield backend.scan("")):
        if needle in key:
            found.append(key)
            continue
        contents: list[bytes] = []
        for read in (backend.get, backend.hgetall, backend.lrange):
            try:
                value = yield read(key)
            except Exception:
                continue
            if isinstance(value, bytes):
                contents.append(value)
            elif isinstance(value, dict):
                contents += [k.encode() for k in value] + list(value.values())
            elif isinstance(value, list):
                contents += list(value)
        if any(raw in item for item in contents):
            found.append(key)
    return found


@pytest_twisted.inlineCallbacks
def test_export_then_erase_leaves_nothing_in_the_backend(cluster, mint):
    a, b = yield cluster()
    pa = presence_of(a)
    yield pa.add_friend("alice", "bob")
    yield pa.block("alice", "mallory")
    yield pa.block("trudy", "alice")
    yield pa.join_group("alice", "g1", "party")
    alice, bob = client(a, mint("alice")), client(b, mint("bob"))
    yield alice.connect()
    yield bob.connect()
    yield alice.request("presence.subscribe", presence_pb2.PresenceSubscribe(player_ids=["dan"]))
    yield bob.request("presence.subscribe", presence_pb2.PresenceSubscribe(player_ids=["alice"]))
    yield pa.set_location("alice", "docks", "eu")
    alice.send("presence.set_status", presence_pb2.PresenceSetStatus(status="bye"))
    yield alice.wait_for("presence.update", predicate=view_of("alice", status="bye"))

    busy = yield treq.post(b.admin_url + "/admin/presence/alice/erase", b"")
    assert busy.code == 409  # online: disconnect first
    yield busy.content()
    offline = bob.wait_for("presence.update", predicate=view_of("alice", online=False))
    yield alice.close()  # goodbye: the session is gone too
    yield offline

    response = yield treq.get(b.admin_url + "/admin/presence/alice/export")
    assert response.code == 200
    exported = json.loads((yield response.content()))
    assert exported["player_id"] == "alice"
    assert exported["state"]["zone"] == "docks" and exported["state"]["status"] == "bye"
    assert exported["last_seen"] > 0
    assert [e["kind"] for e in exported["history"]] == ["online", "location", "offline"]
    assert exported["subscriptions"] == ["dan"] and exported["subscribers"] == ["bob"]
    assert exported["relations"] == {
        "friends": ["bob"], "blocks": ["mallory"], "blocked_by": ["trudy"],
        "groups": [{"id": "g1", "kind": "party"}],
    }

    backend = b.service.backend
    assert (yield everything_mentioning(backend, "alice"))
    response = yield treq.post(b.admin_url + "/admin/presence/alice/erase", b"")
    assert response.code == 200, (yield response.text())
    yield response.content()
    assert (yield everything_mentioning(backend, "alice")) == []
    # bob's instance learnt it at once: alice is no longer his friend or subscription.
    yield until(lambda: presence_of(b).core.viewer("bob").watching == ["bob"])
    response = yield treq.get(a.admin_url + "/admin/presence/alice/export")
    empty = json.loads((yield response.content()))
    assert empty["state"] is None and empty["history"] == []
    assert empty["relations"]["friends"] == []
    yield bob.close()


@memory_only
@pytest_twisted.inlineCallbacks
def test_retention_is_enforced_by_ttls_and_history_is_trimmed(cluster, mint):
    a, _b = yield cluster(**{"plugin.presence.last_seen_seconds": 600.0,
                             "plugin.presence.history_seconds": 0.4,
                             "plugin.presence.history_max_entries": 3,
                             "plugin.presence.grace_seconds": 0.0})
    pa = presence_of(a)
    backend = a.service.backend
    for _ in range(3):
        alice = client(a, mint("alice"))
        yield alice.connect()
        yield alice.close()
        yield until(lambda: not pa.local.present("alice"))
        yield until(lambda: not pa._chains)
    assert 0 < (yield backend.ttl("pr:alice")) <= 600.0
    assert 0 < (yield backend.ttl("ph:alice")) <= 0.4
    assert len((yield backend.lrange("ph:alice"))) == 3  # history_max_entries
    yield sleep(0.5)
    alice = client(a, mint("alice"))
    yield alice.connect()
    yield alice.close()
    yield until(lambda: not pa._chains)
    history = yield pa.store.history("alice", pa.now())
    assert [e.kind for e in history] == ["online", "offline"]  # older ones trimmed


@memory_only
@pytest_twisted.inlineCallbacks
def test_admin_api_needs_the_admin_token_and_checks_input(cluster, mint, monkeypatch):
    monkeypatch.setenv("RTGW_TEST_ADMIN", "s3cret")
    a, _b = yield cluster(**{"admin.token_env": "RTGW_TEST_ADMIN"})
    url = a.admin_url + "/admin/presence/alice"
    denied = yield treq.get(url)
    assert denied.code == 401
    yield denied.content()
    auth = {"Authorization": "Bearer s3cret"}
    ok = yield treq.get(url, headers=auth)
    assert ok.code == 200 and json.loads((yield ok.content()))["online"] is False
    for path, body, code in [
        ("/friends", b'{"add": "bob"}', 400),
        ("/groups", b'{"join": [{"id": "g", "kind": "clan"}]}', 400),
        ("/nonsense", b"{}", 404),
        ("/location", b"[1]", 400),
    ]:
        response = yield treq.post(url + path, body, headers=auth)
        assert response.code == code, path
        yield response.content()
    summary = yield treq.get(a.admin_url + "/admin/presence", headers=auth)
    assert json.loads((yield summary.content()))["instance_id"] == a.gateway.instance_id
