"""gateway.client.session: the client SDK's sans-io half of wire protocol v1."""

from __future__ import annotations

import pytest

from gateway.client.session import ClientSession
from gateway.events import Delivery, Direction, EventRegistry, EventSpec, spec
from gateway.wire import WireError, compress_frame, decode_frame, encode_fragment, make_event
from protocol import events_pb2

Envelope = events_pb2.Envelope
ZLIB = events_pb2.COMPRESSION_ZLIB
LZ4 = events_pb2.COMPRESSION_LZ4
V1, V2 = events_pb2.AuthRefresh, events_pb2.Error


def registry() -> EventRegistry:
    reg = EventRegistry()
    reg.register(
        EventSpec(type="chat.say", versions={1: V1, 2: V2},
                  upgraders={1: lambda m: V2(message=m.token)},
                  downgraders={2: lambda m: V1(token=m.message)},
                  direction=Direction.CLIENT_TO_SERVER),
        spec("chat.message", V2, direction=Direction.SERVER_TO_CLIENT),
        spec("game.pos", V1, delivery=Delivery.UNRELIABLE),
    )
    return reg


def session(**kwargs: object) -> ClientSession:
    return ClientSession(registry=registry(), **kwargs)  # type: ignore[arg-type]


def decode(data: bytes | None) -> list[Envelope]:
    assert data is not None
    return decode_frame(data, max_events=1 << 16, max_size=1 << 24,
                        accepted_compression=frozenset({ZLIB, LZ4}))


def server_frame(*envs: Envelope) -> bytes:
    return b"".join(encode_fragment(e) for e in envs)


def msg(seq: int = 0, ack: int = 0, type_: str = "chat.message", text: str = "") -> Envelope:
    return Envelope(seq=seq, ack=ack, type=type_, version=1,
                    payload=V2(message=text).SerializeToString())


def say(s: ClientSession, text: str = "hi") -> None:
    s.queue(s.event("chat.say", V2(message=text)))


# ---------------------------------------------------------------- handshake


def test_hello_carries_versions_from_the_registry() -> None:
    s = session()
    s.last_in_seq = 41
    [env] = decode(s.hello(token="jwt", resume_token="rt"))
    assert (env.type, env.seq, env.ack) == ("system.hello", 0, 0)
    hello = events_pb2.Hello.FromString(env.payload)
    assert {k: list(v.versions) for k, v in hello.versions.items()} == {
        spec_.type: sorted(spec_.versions) for spec_ in s.registry
    }
    assert list(hello.versions["chat.say"].versions) == [1, 2]
    assert "system.ping" in hello.versions  # system events registered automatically
    assert list(hello.compression) == [LZ4, ZLIB]
    assert (hello.token, hello.resume_token, hello.last_seq) == ("jwt", "rt", 41)
    assert hello.client_name == "rtgateway-python/0.1"


def test_hello_with_no_compression() -> None:
    [env] = decode(session(compression=()).hello())
    assert list(events_pb2.Hello.FromString(env.payload).compression) == []


def test_on_welcome_applies_negotiation() -> None:
    s = session()
    s.on_welcome(events_pb2.Welcome(
        versions={"chat.say": 1}, compression=ZLIB, compression_threshold=100,
        limits=events_pb2.Limits(max_message_size=4096),
    ))
    assert s.versions == {"chat.say": 1}
    assert s.max_message_size == 4096
    say(s, "x" * 300)
    data = s.take_frame(0.0)
    assert data is not None
    assert events_pb2.Frame.FromString(data).compression == ZLIB
    [env] = decode(data)
    # Negotiated v1: converted down from the newest version the client code speaks.
    assert env.version == 1 and V1.FromString(env.payload) == V1(token="x" * 300)


# ---------------------------------------------------------------- inbound


def test_receive_decodes_to_the_newest_version() -> None:
    s = session()
    [incoming] = s.receive(server_frame(msg(text="hello")))
    assert (incoming.type, incoming.version, incoming.message) == (
        "chat.message", 1, V2(message="hello"))
    old = Envelope(type="chat.say", version=1, payload=V1(token="t").SerializeToString())
    [converted] = s.receive(server_frame(old))
    assert (converted.version, converted.message) == (1, V2(message="t"))


def test_receive_unknown_or_undecodable_events_have_no_message() -> None:
    s = session()
    out = s.receive(server_frame(
        Envelope(type="no.such", payload=b"\x01"),
        Envelope(type="chat.message", version=7),
        Envelope(type="chat.message", version=1, payload=b"\x0a\x09x"),
    ))
    assert [(i.type, i.message) for i in out] == [
        ("no.such", None), ("chat.message", None), ("chat.message", None)]
    assert out[0].envelope.payload == b"\x01"


def test_receive_raises_wire_error_on_garbage() -> None:
    with pytest.raises(WireError):
        session().receive(b"\xff\xff")


def test_receive_accepts_only_its_own_compression() -> None:
    packed = compress_frame(server_frame(msg(text="z")), ZLIB)
    assert [i.message for i in session().receive(packed)] == [V2(message="z")]
    with pytest.raises(WireError):
        session(compression=("lz4",)).receive(packed)


def test_receive_drops_duplicate_seqs_and_schedules_an_ack() -> None:
    s = session()
    assert not s.has_output
    out = s.receive(server_frame(msg(1, text="a"), msg(2, text="b")))
    assert [i.envelope.seq for i in out] == [1, 2]
    assert s.has_output and s.last_in_seq == 2
    out = s.receive(server_frame(msg(2, text="b"), msg(1, text="a"), msg(3, text="c")))
    assert [i.message.message for i in out] == ["c"]  # type: ignore[union-attr]
    [ack] = decode(s.take_frame(0.0))
    assert (ack.type, ack.seq, ack.ack) == ("system.ack", 0, 3)
    assert not s.has_output and s.take_frame(0.0) is None


def test_duplicates_are_acknowledged_again() -> None:
    """A replay after a resume means the server missed our ack: without a new one it keeps
    those events (and replays them again) until something else is acknowledged."""
    s = session()
    s.receive(server_frame(msg(1), msg(2)))
    s.take_frame(0.0)
    assert s.receive(server_frame(msg(1), msg(2))) == []
    assert s.has_output
    [ack] = decode(s.take_frame(1.0))
    assert (ack.type, ack.ack) == ("system.ack", 2)


def test_unsequenced_and_ack_only_events_need_no_ack() -> None:
    s = session()
    out = s.receive(server_frame(msg(0), Envelope(type="system.ack", ack=0)))
    assert [i.type for i in out] == ["chat.message"]
    assert not s.has_output


# ---------------------------------------------------------------- outbound


def test_event_checks_the_registry_and_direction() -> None:
    s = session()
    with pytest.raises(KeyError):
        s.event("no.such", V1())
    with pytest.raises(ValueError, match="server-to-client"):
        s.event("chat.message", V2())
    event = s.event("game.pos", V1(token="p"), key="pos:me", correlation_id=5)
    assert (event.reliable, event.key) == (False, "pos:me")
    assert s.event("game.pos", V1(), reliable=True).reliable
    assert s.event("game.pos", V1(), priority=1).priority == 1
    assert Envelope.FromString(event.body).correlation_id == 5


def test_take_frame_retains_reliable_events_until_acknowledged() -> None:
    s = session()
    say(s, "one")
    s.queue(s.event("game.pos", V1(token="pos")))
    say(s, "two")
    out = decode(s.take_frame(10.0))
    assert [(e.type, e.seq) for e in out] == [("chat.say", 1), ("game.pos", 0), ("chat.say", 2)]
    assert [p.seq for p in s.pending] == [1, 2]
    assert all(p.first_sent == 10.0 for p in s.pending)
    say(s, "three")
    assert [e.seq for e in decode(s.take_frame(11.0))] == [3]
    s.receive(server_frame(Envelope(type="system.ack", ack=2)))
    assert [p.seq for p in s.pending] == [3]
    s.receive(server_frame(msg(ack=3)))
    assert not s.pending


def test_take_frame_orders_by_priority_and_piggybacks_the_ack() -> None:
    s = session()
    s.receive(server_frame(msg(5)))
    s.queue(make_event("game.low", b"", priority=4, reliable=False))
    s.queue(make_event("game.crit", b"", priority=1, reliable=False))
    s.queue(make_event("game.normal", b"", priority=0, reliable=False))
    out = decode(s.take_frame(0.0))
    assert [(e.type, e.ack) for e in out] == [
        ("game.crit", 5), ("game.normal", 0), ("game.low", 0)]


def test_resend_frame_replays_unacknowledged_in_order() -> None:
    s = session()
    assert s.resend_frame() is None
    for text in ("a", "b", "c"):
        say(s, text)
    s.take_frame(0.0)
    s.acknowledge(1)
    out = decode(s.resend_frame())
    assert [(e.seq, e.ack, V2.FromString(e.payload).message) for e in out] == [
        (2, 0, "b"), (3, 0, "c")]
    assert [p.seq for p in s.pending] == [2, 3]  # still retained until acknowledged
    assert s.next_out_seq == 4


def test_expire_gives_up_after_the_reliable_timeout() -> None:
    s = session(reliable_timeout=30.0)
    give_up: list[tuple[str, int]] = []
    say(s, "old")
    s.take_frame(0.0, on_give_up=lambda t, seq: give_up.append((t, seq)))
    say(s, "new")
    s.take_frame(20.0)
    assert s.expire(30.0) == []
    expired = s.expire(30.5)
    assert [p.seq for p in expired] == [1]
    assert expired[0].on_give_up is not None and expired[0].event.type == "chat.say"
    assert [p.seq for p in s.pending] == [2]
    assert [p.seq for p in s.expire(1000.0)] == [2]
    assert not s.pending


# ---------------------------------------------------------------- heartbeat


def test_ping_pong_rtt() -> None:
    s = session()
    event = s.ping(mono_ns=1_000_000_000)
    ping = events_pb2.Ping.FromString(Envelope.FromString(event.body).payload)
    pong_event = ClientSession.pong_for(ping)
    pong = events_pb2.Pong.FromString(Envelope.FromString(pong_event.body).payload)
    assert (pong.nonce, pong.sent_ns) == (ping.nonce, 1_000_000_000)
    assert s.on_pong(events_pb2.Pong(nonce=ping.nonce, sent_ns=5), 2_000_000_000) is None
    second = events_pb2.Ping.FromString(Envelope.FromString(s.ping(3_000_000_000).body).payload)
    assert second.nonce != ping.nonce
    assert s.on_pong(events_pb2.Pong(nonce=second.nonce, sent_ns=3_000_000_000),
                     3_040_000_000) == pytest.approx(0.04)
    assert s.rtt.samples == 1


def test_unanswered_pings_are_bounded_and_count_as_lost() -> None:
    s = session()
    for i in range(70):
        s.ping(i)
    assert len(s._pings) == 64
    assert s.rtt.loss == 1.0
