"""gateway.hub: registry of local connections, topics and the per-tick flush."""

from __future__ import annotations

from typing import Any

from gateway.codes import CloseCode
from gateway.config import HeartbeatConfig, LimitsConfig
from gateway.connection import Connection, Disconnect
from gateway.hub import Hub
from gateway.states import State
from gateway.wire import OutEvent, decode_frame, make_event
from protocol import events_pb2

Envelope = events_pb2.Envelope
ZLIB = events_pb2.COMPRESSION_ZLIB
_ids = iter(range(1, 1_000_000))


def prepare(data: bytes) -> tuple[str, bytes]:
    return ("prepared", data)


class FakeTransport:
    """Records what the hub asks of the adapter (gateway.ws.GatewayProtocol's side)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.frames: list[bytes] = []
        self.prepared: list[tuple[Any, int]] = []
        self.closed: list[tuple[CloseCode, str]] = []

    def send_frame(self, data: bytes) -> None:
        self.frames.append(data)

    def send_prepared(self, prepared: Any, size: int) -> None:
        self.prepared.append((prepared, size))

    def close(self, code: CloseCode, reason: str, *, reconnect: bool = True) -> None:
        self.closed.append((code, reason))

    def abort(self) -> None:
        raise AssertionError("not expected")

    @property
    def writes(self) -> int:
        return len(self.frames) + len(self.prepared)


def make_conn(player: str = "p", *, authenticated: bool = True, **limits: Any) -> Connection:
    conn = Connection("peer", LimitsConfig(**limits), HeartbeatConfig(), 0.0,
                      connection_id=next(_ids))
    conn.player_id = player
    if authenticated:
        for state in (State.CONNECTED, State.AUTHENTICATING, State.AUTHENTICATED):
            conn.machine.to(state)
    return conn


def transport(hub: Hub, player: str = "p", **kwargs: Any) -> FakeTransport:
    t = FakeTransport(make_conn(player, **kwargs))
    hub.add(t)
    hub.bind_player(t)
    return t


def decode(data: bytes) -> list[Envelope]:
    return decode_frame(data, max_events=1 << 16, max_size=1 << 24,
                        accepted_compression=frozenset({ZLIB}))


def types(data: bytes) -> list[str]:
    return [e.type for e in decode(data)]


def state(type_: str, payload: bytes = b"s") -> OutEvent:
    return make_event(type_, payload, reliable=False)


def test_registry() -> None:
    hub = Hub()
    a, b1, b2 = transport(hub, "alice"), transport(hub, "bob"), transport(hub, "bob")
    assert len(hub) == 3
    assert hub.get(a.connection.id) is a
    assert set(hub.for_player("bob")) == {b1, b2}
    assert set(hub.players()) == {"alice", "bob"}
    assert set(hub.connections()) == {a.connection, b1.connection, b2.connection}
    assert set(hub.transports()) == {a, b1, b2}
    hub.remove(b1)
    assert hub.for_player("bob") == (b2,)
    hub.remove(b2)
    assert hub.for_player("bob") == () and set(hub.players()) == {"alice"}
    assert hub.get(b2.connection.id) is None and len(hub) == 1
    hub.remove(b2)  # twice is harmless


def test_deliver_and_flush_one_frame_per_connection_per_flush() -> None:
    hub = Hub(prepare)
    a, b = transport(hub), transport(hub)
    assert hub.deliver(a, make_event("chat.one", b"1"))
    assert hub.deliver(a, make_event("chat.two", b"2", reliable=False))
    assert hub.deliver(b, make_event("chat.three", b"3"))
    assert a.writes == 0  # nothing leaves before the flush
    hub.flush(1.0)
    assert len(a.frames) == 1 and len(b.frames) == 1
    assert [(e.type, e.seq) for e in decode(a.frames[0])] == [("chat.one", 1), ("chat.two", 0)]
    assert types(b.frames[0]) == ["chat.three"]
    hub.flush(2.0)
    assert a.writes == 1 and b.writes == 1  # nothing new: nothing sent
    hub.deliver(a, make_event("chat.four", b"4"))
    hub.flush(3.0)
    assert [e.seq for e in decode(a.frames[1])] == [2]
    assert b.writes == 1


def test_urgent_delivery_is_flushed_at_once() -> None:
    hub = Hub()
    a = transport(hub)
    hub.deliver(a, make_event("system.error", b"", priority=1), urgent=True)
    assert types(a.frames[0]) == ["system.error"]
    hub.flush(1.0)
    assert len(a.frames) == 1


def test_pending_ack_keeps_a_connection_dirty_until_sent() -> None:
    hub = Hub()
    a = transport(hub)
    a.connection.receive(b"\x0a\x02\x08\x01", 10.0)  # one envelope with seq 1
    hub.deliver(a, state("zone.x"), urgent=False)
    hub.flush(10.0)
    assert [(e.type, e.ack) for e in decode(a.frames[0])] == [("zone.x", 1)]


def test_share_frames_once_for_every_reader_with_nothing_private() -> None:
    hub = Hub(prepare)
    a, b, c = transport(hub, "a"), transport(hub, "b"), transport(hub, "c")
    for t in (a, b, c):
        hub.subscribe(t, "zone:1")
    hub.deliver(c, make_event("chat.private", b"mine"))
    hub.share("zone:1", state("zone.pos", b"p1"))
    hub.share("zone:1", state("zone.pos", b"p2"))
    hub.flush(1.0)
    # a and b: the SAME prepared object, framed once.
    assert a.frames == [] and b.frames == []
    [(prepared_a, size_a)] = a.prepared
    [(prepared_b, size_b)] = b.prepared
    assert prepared_a is prepared_b
    assert prepared_a[0] == "prepared" and size_a == size_b == len(prepared_a[1])
    assert [(e.payload, e.seq, e.ack) for e in decode(prepared_a[1])] == [
        (b"p1", 0, 0), (b"p2", 0, 0)]
    assert a.connection.stats.messages_out == 1 and a.connection.stats.events_out == 2
    # c has a private event: one frame carrying both.
    assert c.prepared == []
    [frame] = c.frames
    assert [(e.type, e.payload) for e in decode(frame)] == [
        ("chat.private", b"mine"), ("zone.pos", b"p1"), ("zone.pos", b"p2")]
    hub.flush(2.0)
    assert a.writes == b.writes == c.writes == 1  # the batch went out once


def test_share_skips_unauthenticated_and_unknown_topics() -> None:
    hub = Hub(prepare)
    ok, anon = transport(hub), transport(hub, authenticated=False)
    hub.subscribe(ok, "zone:1")
    hub.subscribe(anon, "zone:1")
    hub.share("zone:9", state("zone.pos"))  # nobody here subscribes
    hub.share("zone:1", state("zone.pos"))
    hub.flush(1.0)
    assert ok.writes == 1 and anon.writes == 0
    hub.flush(2.0)
    assert ok.writes == 1


def test_two_topics_in_one_tick() -> None:
    hub = Hub(prepare)
    only1, both_a, both_b, only2 = (transport(hub, n) for n in ("o1", "ba", "bb", "o2"))
    for t in (only1, both_a, both_b):
        hub.subscribe(t, "zone:1")
    for t in (both_a, both_b, only2):
        hub.subscribe(t, "zone:2")
    hub.share("zone:1", state("zone.one"))
    hub.share("zone:2", state("zone.two"))
    hub.flush(1.0)
    for t in (only1, both_a, both_b, only2):
        assert t.frames == [] and len(t.prepared) == 1
    assert types(only1.prepared[0][0][1]) == ["zone.one"]
    assert types(only2.prepared[0][0][1]) == ["zone.two"]
    assert sorted(types(both_a.prepared[0][0][1])) == ["zone.one", "zone.two"]
    assert both_a.prepared[0][0] is both_b.prepared[0][0]
    assert only1.prepared[0][0] is not both_a.prepared[0][0]
    assert both_a.connection.stats.events_out == 2


def test_shared_frames_compressed_per_codec() -> None:
    hub = Hub(prepare)
    z1, z2, plain = transport(hub, "z1"), transport(hub, "z2"), transport(hub, "plain")
    for t in (z1, z2):
        t.connection.compression = ZLIB
        t.connection.compression_threshold = 64
    for t in (z1, z2, plain):
        hub.subscribe(t, "zone:1")
    hub.share("zone:1", state("zone.big", b"x" * 500))
    hub.flush(1.0)
    assert z1.prepared[0][0] is z2.prepared[0][0]
    assert events_pb2.Frame.FromString(z1.prepared[0][0][1]).compression == ZLIB
    assert events_pb2.Frame.FromString(plain.prepared[0][0][1]).compression == 0
    assert decode(z1.prepared[0][0][1]) == decode(plain.prepared[0][0][1])
    assert z1.prepared[0][1] < plain.prepared[0][1]


def test_shared_state_for_a_paused_reader_is_dropped() -> None:
    hub = Hub(prepare)
    paused, ok = transport(hub, "paused"), transport(hub, "ok")
    for t in (paused, ok):
        hub.subscribe(t, "zone:1")
    paused.connection.pause(0.5)
    hub.share("zone:1", state("zone.pos"))
    hub.share("zone:1", state("zone.pos"))
    hub.flush(1.0)
    assert paused.writes == 0
    assert paused.connection.stats.dropped_out == 2
    assert ok.writes == 1


def test_subscribe_unsubscribe_fire_topic_callbacks_once() -> None:
    hub = Hub()
    added: list[str] = []
    removed: list[str] = []
    hub.on_topic_added = added.append
    hub.on_topic_removed = removed.append
    a, b = transport(hub, "a"), transport(hub, "b")
    hub.subscribe(a, "zone:1")
    hub.subscribe(b, "zone:1")
    hub.subscribe(a, "zone:1")  # again: no second callback
    hub.subscribe(a, "zone:2")
    assert added == ["zone:1", "zone:2"]
    assert set(hub.subscribers("zone:1")) == {a, b}
    assert hub.topics_of(a) == {"zone:1", "zone:2"}
    hub.unsubscribe(a, "zone:1")
    assert removed == [] and hub.subscribers("zone:1") == (b,)
    hub.unsubscribe(b, "zone:1")
    assert removed == ["zone:1"] and not hub.has_topic("zone:1")
    hub.unsubscribe(b, "zone:1")  # not subscribed: harmless, no second callback
    hub.unsubscribe(a, "never:subscribed")
    assert removed == ["zone:1"]
    assert hub.topics_of(a) == {"zone:2"} and hub.topics_of(b) == frozenset()


def test_remove_cleans_topic_membership() -> None:
    hub = Hub(prepare)
    added: list[str] = []
    removed: list[str] = []
    hub.on_topic_added = added.append
    hub.on_topic_removed = removed.append
    a, b = transport(hub, "a"), transport(hub, "b")
    for topic in ("zone:1", "zone:2"):
        hub.subscribe(a, topic)
    hub.subscribe(b, "zone:2")
    hub.share("zone:1", state("zone.pos"))
    hub.deliver(a, make_event("chat.x", b""))
    hub.remove(a)
    assert removed == ["zone:1"]
    assert not hub.has_topic("zone:1") and hub.subscribers("zone:2") == (b,)
    assert hub.topics_of(a) == frozenset()
    hub.flush(1.0)
    assert a.writes == 0 and b.writes == 0  # its batch and its dirty mark went with it
    hub.remove(b)
    assert removed == ["zone:1", "zone:2"]
    assert added == ["zone:1", "zone:2"]
    hub.subscribe(b, "zone:2")
    assert added == ["zone:1", "zone:2", "zone:2"]


def test_deliver_over_the_hard_limit_closes_that_transport_only() -> None:
    hub = Hub()
    closes: list[tuple[Any, Disconnect]] = []
    hub.on_close = lambda t, exc: closes.append((t, exc))
    slow = transport(hub, "slow", outbound_soft_bytes=4096, outbound_hard_bytes=8192)
    fine = transport(hub, "fine")
    accepted = [hub.deliver(slow, make_event("bulk.x", b"x" * 1000)) for _ in range(9)]
    hub.deliver(fine, make_event("chat.x", b""))
    assert accepted[-1] is False
    assert slow.closed == [(CloseCode.SLOW_CONSUMER, "outbound buffer over the limit")]
    assert [(t, exc.code) for t, exc in closes] == [(slow, CloseCode.SLOW_CONSUMER)]
    hub.flush(1.0)
    assert fine.writes == 1 and fine.closed == []


class ExplodingConnection(Connection):
    def take_frame(self, now: float, shared: bytes = b"") -> bytes | None:
        raise Disconnect(CloseCode.SLOW_CONSUMER, "boom")


def test_disconnect_during_flush_closes_that_transport_only() -> None:
    hub = Hub(prepare)
    closes: list[Any] = []
    hub.on_close = lambda t, exc: closes.append((t, exc.code))
    bad_conn = ExplodingConnection("peer", LimitsConfig(), HeartbeatConfig(), 0.0,
                                   connection_id=next(_ids))
    for s in (State.CONNECTED, State.AUTHENTICATING, State.AUTHENTICATED):
        bad_conn.machine.to(s)
    bad = FakeTransport(bad_conn)
    hub.add(bad)
    good, shared_only = transport(hub, "good"), transport(hub, "shared")
    for t in (bad, good, shared_only):
        hub.subscribe(t, "zone:1")
    for t in (bad, good):
        hub.deliver(t, make_event("chat.x", b""))
    hub.share("zone:1", state("zone.pos"))
    hub.flush(1.0)
    assert bad.closed == [(CloseCode.SLOW_CONSUMER, "boom")] and bad.writes == 0
    assert closes == [(bad, CloseCode.SLOW_CONSUMER)]
    assert types(good.frames[0]) == ["chat.x", "zone.pos"] and good.closed == []
    assert len(shared_only.prepared) == 1 and shared_only.closed == []
    hub.flush(2.0)
    assert len(bad.closed) == 1  # not retried: it is no longer dirty


def test_a_connection_whose_send_raises_does_not_cost_the_others_their_frames() -> None:
    from gateway.hub import Hub as _Hub

    hub = _Hub()
    sent: list[int] = []
    aborted: list[int] = []

    class Boom:
        def __init__(self, conn: Any, fail: bool) -> None:
            self.connection = conn
            self.fail = fail

        def send_frame(self, data: bytes) -> None:
            if self.fail:
                raise RuntimeError("transport exploded")
            sent.append(self.connection.id)

        def send_prepared(self, prepared: Any, size: int) -> None:
            self.send_frame(b"")

        def close(self, code: Any, reason: str, *, reconnect: bool = True) -> None:
            pass

        def abort(self) -> None:
            aborted.append(self.connection.id)

    transports = [Boom(make_conn(), fail=(i == 0)) for i in range(3)]
    for t in transports:
        hub.add(t)  # type: ignore[arg-type]
        hub.deliver(t, make_event("test.x", b"x", reliable=False))  # type: ignore[arg-type]
    hub.flush(0.0)
    assert sorted(sent) == sorted(t.connection.id for t in transports[1:])
    assert aborted == [transports[0].connection.id]
