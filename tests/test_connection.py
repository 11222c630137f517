"""gateway.connection: the sans-io model of one client connection."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codes import CloseCode
from gateway.config import HeartbeatConfig, LimitsConfig
from gateway.connection import ACK_DELAY, Connection, Disconnect
from gateway.states import State
from gateway.wire import OutEvent, decode_frame, encode_fragment, make_event
from protocol import events_pb2

Envelope = events_pb2.Envelope
CRITICAL = events_pb2.PRIORITY_CRITICAL
HIGH = events_pb2.PRIORITY_HIGH
NORMAL = events_pb2.PRIORITY_NORMAL
LOW = events_pb2.PRIORITY_LOW
ZLIB = events_pb2.COMPRESSION_ZLIB
LZ4 = events_pb2.COMPRESSION_LZ4
HEARTBEAT = HeartbeatConfig(interval=10, timeout=5)


def make_conn(*, max_unacked: int = 1024, **limits: object) -> Connection:
    return Connection("203.0.113.9", LimitsConfig(**limits), HEARTBEAT, 0.0,  # type: ignore[arg-type]
                      max_unacked=max_unacked, connection_id=7)


def frame(*envs: Envelope) -> bytes:
    return b"".join(encode_fragment(e) for e in envs)


def env(seq: int = 0, ack: int = 0, type_: str = "game.move", payload: bytes = b"") -> Envelope:
    return Envelope(seq=seq, ack=ack, type=type_, payload=payload)


def decode(data: bytes | None) -> list[Envelope]:
    assert data is not None
    return decode_frame(data, max_events=1 << 20, max_size=1 << 30,
                        accepted_compression=frozenset({ZLIB, LZ4}))


def ev(type_: str = "game.x", *, priority: int = NORMAL, reliable: bool = True,
       key: str | None = None, size: int = 0) -> OutEvent:
    return make_event(type_, b"x" * size, priority=priority, reliable=reliable, key=key)


def sent(conn: Connection, now: float = 0.0) -> list[Envelope]:
    return decode(conn.take_frame(now))


# ---------------------------------------------------------------- inbound


def test_receive_counts_and_returns_events() -> None:
    conn = make_conn()
    data = frame(env(type_="a.b"), env(type_="c.d"))
    out = conn.receive(data, 3.0)
    assert [e.type for e in out] == ["a.b", "c.d"]
    assert (conn.stats.messages_in, conn.stats.bytes_in, conn.stats.events_in) == (1, len(data), 2)
    assert conn.last_received == 3.0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xff", CloseCode.BAD_FRAME),
        (frame(*[env()] * 9), CloseCode.FRAME_LIMIT),
        (frame(env(payload=b"x" * 2000)), CloseCode.TOO_BIG),
    ],
)
def test_receive_turns_wire_errors_into_disconnect(data: bytes, code: CloseCode) -> None:
    conn = make_conn(max_events_per_frame=8, max_message_size=1024)
    with pytest.raises(Disconnect) as info:
        conn.receive(data, 0.0)
    assert info.value.code is code


def test_receive_refuses_compression_not_negotiated() -> None:
    from gateway.wire import compress_frame

    conn = make_conn()
    packed = compress_frame(frame(env()), ZLIB)
    with pytest.raises(Disconnect) as info:
        conn.receive(packed, 0.0)
    assert info.value.code is CloseCode.BAD_FRAME
    conn.accepted_compression = frozenset({ZLIB})
    assert len(conn.receive(packed, 0.0)) == 1


def test_rate_limit_counts_events_not_messages() -> None:
    conn = make_conn(messages_per_second=1.0, messages_burst=10, max_events_per_frame=64)
    # One message of eleven events is over a burst of ten.
    with pytest.raises(Disconnect) as info:
        conn.receive(frame(*[env()] * 11), 0.0)
    assert info.value.code is CloseCode.RATE_LIMITED
    assert conn.stats.rate_limited == 1


def test_rate_limit_spans_messages_and_refills() -> None:
    conn = make_conn(messages_per_second=2.0, messages_burst=10, max_events_per_frame=64)
    conn.receive(frame(*[env()] * 6), 0.0)
    conn.receive(frame(*[env()] * 4), 0.0)
    with pytest.raises(Disconnect):
        conn.receive(frame(env()), 0.0)
    conn = make_conn(messages_per_second=2.0, messages_burst=10, max_events_per_frame=64)
    conn.receive(frame(*[env()] * 10), 0.0)
    conn.receive(frame(env()), 0.5)  # one token back after half a second
    conn.receive(b"", 1.0)  # an empty message still costs one
    with pytest.raises(Disconnect):
        conn.receive(b"", 1.0)


def test_duplicate_reliable_seqs_are_dropped() -> None:
    conn = make_conn()
    assert [e.seq for e in conn.receive(frame(env(1), env(2)), 0.0)] == [1, 2]
    assert [e.seq for e in conn.receive(frame(env(2), env(1), env(3), env(0)), 0.0)] == [3, 0]
    assert conn.stats.duplicates_in == 2
    assert conn.last_in_seq == 3
    assert conn.stats.events_in == 6


def test_duplicates_are_acknowledged_again() -> None:
    """A resend means the peer missed our ack: it must get one, or it keeps (or gives up) events
    we already have."""
    conn = make_conn()
    conn.receive(frame(env(1), env(2)), 0.0)
    assert [e.ack for e in sent(conn, 1.0)] == [2]
    assert not conn.has_pending
    assert conn.receive(frame(env(1), env(2)), 2.0) == []
    assert conn.has_pending
    assert conn.take_frame(2.0) is None  # still delayed, hoping to piggyback
    [ack] = sent(conn, 3.0)
    assert (ack.type, ack.ack, ack.seq) == ("system.ack", 2, 0)


def test_inbound_ack_releases_and_system_ack_is_not_routed() -> None:
    conn = make_conn()
    for _ in range(3):
        conn.enqueue(ev())
    sent(conn)
    assert conn.receive(frame(env(ack=2, type_="system.ack")), 0.0) == []
    assert [seq for seq, _ in conn.unacked] == [3]
    assert conn.peer_ack == 2
    assert not conn.has_pending  # an unsequenced ack needs no ack


def test_ack_piggybacks_on_the_first_outbound_envelope() -> None:
    conn = make_conn()
    conn.receive(frame(env(1), env(2), env(3)), 0.0)
    conn.enqueue(ev("a.one"))
    conn.enqueue(ev("a.two", reliable=False))
    out = sent(conn, 0.001)
    assert [(e.type, e.ack) for e in out] == [("a.one", 3), ("a.two", 0)]
    assert not conn.has_pending
    assert conn.take_frame(10.0) is None


def test_standalone_ack_only_after_the_delay() -> None:
    conn = make_conn()
    conn.receive(frame(env(1)), 0.0)
    conn.receive(frame(env(2)), 0.03)  # the delay runs from the first unacked event
    assert conn.has_pending
    assert conn.take_frame(0.0) is None
    assert conn.take_frame(ACK_DELAY * 0.9) is None
    [ack] = sent(conn, ACK_DELAY)
    assert (ack.type, ack.seq, ack.ack) == ("system.ack", 0, 2)
    assert conn.stats.events_out == 1
    assert not conn.has_pending


def test_pending_ack_goes_at_once_with_a_shared_batch() -> None:
    conn = make_conn()
    conn.receive(frame(env(1)), 0.0)
    shared = ev("zone.state", reliable=False).plain_fragment()
    out = decode(conn.take_frame(0.0, shared))
    assert [(e.type, e.ack) for e in out] == [("system.ack", 1), ("zone.state", 0)]


def test_unsequenced_events_need_no_ack() -> None:
    conn = make_conn()
    conn.receive(frame(env(0), env(0)), 0.0)
    assert not conn.has_pending
    assert conn.take_frame(1.0) is None


# ---------------------------------------------------------------- outbound


def test_priority_order_in_one_frame() -> None:
    conn = make_conn()
    conn.enqueue(ev("p.low1", priority=LOW))
    conn.enqueue(ev("p.normal1", priority=NORMAL))
    conn.enqueue(ev("p.unspecified", priority=0))  # the registry default: normal
    conn.enqueue(ev("p.high", priority=HIGH, reliable=False))
    conn.enqueue(ev("p.critical", priority=CRITICAL))
    conn.enqueue(ev("p.low2", priority=LOW))
    conn.enqueue(ev("p.normal2", priority=NORMAL))
    out = sent(conn)
    assert [e.type for e in out] == [
        "p.critical", "p.high", "p.normal1", "p.unspecified", "p.normal2", "p.low1", "p.low2"
    ]
    assert conn.queued_bytes == 0
    assert conn.stats.messages_out == 1 and conn.stats.events_out == 7


def test_reliable_events_get_consecutive_seqs_and_are_retained() -> None:
    conn = make_conn()
    conn.enqueue(ev("a.r1"))
    conn.enqueue(ev("a.u", reliable=False))
    conn.enqueue(ev("a.r2"))
    assert [(e.type, e.seq) for e in sent(conn)] == [("a.r1", 1), ("a.u", 0), ("a.r2", 2)]
    conn.enqueue(ev("a.r3"))
    assert [e.seq for e in sent(conn)] == [3]
    assert [seq for seq, _ in conn.unacked] == [1, 2, 3]
    assert conn.unacked_bytes == sum(e.size for _, e in conn.unacked)
    assert conn.next_out_seq == 4


def test_acknowledge_releases_and_reports() -> None:
    conn = make_conn()
    acked: list[int] = []
    conn.on_ack = lambda _conn, ack: acked.append(ack)
    for _ in range(4):
        conn.enqueue(ev(size=10))
    sent(conn)
    conn.acknowledge(2)
    assert [seq for seq, _ in conn.unacked] == [3, 4]
    assert conn.unacked_bytes == 2 * ev(size=10).size
    conn.acknowledge(4)
    assert not conn.unacked and conn.unacked_bytes == 0
    assert acked == [2, 4]


def test_acknowledge_ignores_stale_acks_and_acks_beyond_what_was_sent() -> None:
    conn = make_conn()
    acked: list[int] = []
    conn.on_ack = lambda _conn, ack: acked.append(ack)
    for _ in range(3):
        conn.enqueue(ev())
    sent(conn)
    conn.acknowledge(4)  # never sent
    conn.acknowledge(2**63)
    assert conn.peer_ack == 0 and len(conn.unacked) == 3
    conn.acknowledge(2)
    conn.acknowledge(2)  # stale: same
    conn.acknowledge(1)  # stale: older
    conn.acknowledge(0)
    assert conn.peer_ack == 2
    assert [seq for seq, _ in conn.unacked] == [3]
    assert acked == [2]
    conn.acknowledge(3)
    assert acked == [2, 3]


def test_keyed_unreliable_events_supersede() -> None:
    conn = make_conn()
    first = make_event("pos.update", b"old", reliable=False, key="pos:42")
    other = ev("chat.say")
    newest = make_event("pos.update", b"newest!", reliable=False, key="pos:42")
    conn.enqueue(first)
    conn.enqueue(other)
    conn.enqueue(make_event("pos.update", b"mid", reliable=False, key="pos:42"))
    conn.enqueue(newest)
    assert conn.stats.superseded_out == 2
    assert conn.queued_bytes == newest.size + other.size
    out = sent(conn)
    # One sent, in the first one's place, carrying the newest state.
    assert [(e.type, e.payload) for e in out] == [("pos.update", b"newest!"), ("chat.say", b"")]
    assert conn.queued_bytes == 0
    conn.enqueue(make_event("pos.update", b"next", reliable=False, key="pos:42"))
    assert [e.payload for e in sent(conn)] == [b"next"]


def test_keyed_reliable_events_are_not_superseded() -> None:
    conn = make_conn()
    conn.enqueue(make_event("a.b", b"1", reliable=True, key="k"))
    conn.enqueue(make_event("a.b", b"2", reliable=True, key="k"))
    assert [(e.seq, e.payload) for e in sent(conn)] == [(1, b"1"), (2, b"2")]
    assert conn.stats.superseded_out == 0


def fill_past_soft(conn: Connection) -> None:
    while not conn.degraded:
        assert conn.enqueue(ev("bulk.reliable", size=200))


def test_degrade_above_soft_limit() -> None:
    conn = make_conn(outbound_soft_bytes=4096, outbound_hard_bytes=1 << 20)
    assert conn.enqueue(make_event("pos.update", b"p", reliable=False, key="pos:1"))
    assert conn.enqueue(ev("state.unreliable", reliable=False, priority=HIGH))
    assert conn.enqueue(ev("chat.low", priority=LOW))
    assert conn.enqueue(ev("chat.normal"))
    fill_past_soft(conn)
    # Queued low-priority and unreliable events were purged ...
    assert conn.stats.dropped_out == 3
    # ... new ones are refused ...
    assert not conn.enqueue(ev("state.unreliable", reliable=False))
    assert not conn.enqueue(make_event("pos.update", b"q", reliable=False, key="pos:1"))
    assert not conn.enqueue(ev("chat.low", priority=LOW))
    assert conn.stats.dropped_out == 6
    # ... while reliable events of normal priority and above still queue.
    assert conn.enqueue(ev("chat.normal2"))
    assert conn.enqueue(ev("chat.high", priority=HIGH))
    types = [e.type for e in sent(conn)]
    assert "state.unreliable" not in types and "chat.low" not in types
    assert "pos.update" not in types
    assert types[:2] == ["chat.high", "chat.normal"]
    assert conn.queued_bytes == 0
    assert not conn.degraded  # drained: back to normal
    assert conn.enqueue(make_event("pos.update", b"r", reliable=False, key="pos:1"))
    assert [e.payload for e in sent(conn)] == [b"r"]


def test_critical_control_events_survive_degrade() -> None:
    """system.disconnect, server.draining, pings and pongs are critical and unreliable: shedding
    them would hide from a slow reader why it is being closed."""
    conn = make_conn(outbound_soft_bytes=4096, outbound_hard_bytes=1 << 20)
    conn.enqueue(make_event("system.pong", b"", priority=CRITICAL, reliable=False, key="pong"))
    fill_past_soft(conn)
    assert conn.enqueue(make_event("system.disconnect", b"", priority=CRITICAL, reliable=False))
    assert not conn.enqueue(ev("state.unreliable", reliable=False, priority=HIGH))
    types = [e.type for e in sent(conn)]
    assert types[:2] == ["system.pong", "system.disconnect"]


def test_hard_limit_disconnects_slow_consumer() -> None:
    conn = make_conn(outbound_soft_bytes=4096, outbound_hard_bytes=8192)
    with pytest.raises(Disconnect) as info:
        for _ in range(100):
            conn.enqueue(ev(size=500))
    assert info.value.code is CloseCode.SLOW_CONSUMER
    assert conn.queued_bytes > 8192


def test_pause_stops_take_frame_and_degrades() -> None:
    conn = make_conn(outbound_soft_bytes=4096, outbound_hard_bytes=1 << 20)
    conn.enqueue(ev("a.reliable"))
    conn.enqueue(ev("a.unreliable", reliable=False))
    conn.pause(3.0)
    assert conn.degraded and conn.paused_since == 3.0
    assert conn.stats.dropped_out == 1
    assert conn.take_frame(4.0) is None
    assert conn.take_frame(4.0, ev("shared.x", reliable=False).plain_fragment()) is None
    assert conn.enqueue(ev("a.reliable2"))
    # Still paused, so still degraded, however little is queued.
    assert not conn.enqueue(ev("a.unreliable", reliable=False))
    assert conn.degraded
    conn.pause(5.0)
    assert conn.paused_since == 3.0  # a second pause does not restart the stall clock
    conn.resume()
    assert conn.paused_since is None and not conn.degraded
    assert [e.type for e in sent(conn, 6.0)] == ["a.reliable", "a.reliable2"]


def test_resume_keeps_degrade_while_much_is_queued() -> None:
    conn = make_conn(outbound_soft_bytes=4096, outbound_hard_bytes=1 << 20)
    conn.pause(0.0)
    for _ in range(15):
        conn.enqueue(ev(size=200))  # ~3.2 KB: over half the soft limit
    conn.resume()
    assert conn.degraded
    sent(conn)
    assert not conn.degraded


def test_is_stalled_after_the_limit() -> None:
    conn = make_conn(stalled_seconds=10.0)
    assert not conn.is_stalled(100.0)
    conn.pause(1.0)
    assert not conn.is_stalled(11.0)
    assert conn.is_stalled(11.01)
    conn.resume()
    assert not conn.is_stalled(50.0)


def test_unacked_bounded_by_count() -> None:
    conn = make_conn(max_unacked=3)
    for _ in range(5):
        conn.enqueue(ev())
    sent(conn)
    assert [seq for seq, _ in conn.unacked] == [3, 4, 5]
    assert conn.replay_overflow
    assert conn.unacked_bytes == 3 * ev().size


def test_unacked_bounded_by_bytes() -> None:
    conn = make_conn(outbound_soft_bytes=4096, outbound_hard_bytes=8192)
    for _ in range(5):
        conn.enqueue(ev(size=3000))
        sent(conn)
    assert [seq for seq, _ in conn.unacked] == [4, 5]
    assert conn.unacked_bytes <= 8192
    assert conn.replay_overflow


def test_unacked_within_bounds_is_no_overflow() -> None:
    conn = make_conn(max_unacked=3)
    for _ in range(3):
        conn.enqueue(ev())
    sent(conn)
    assert not conn.replay_overflow


# ---------------------------------------------------------------- heartbeat


def pong_for(event: OutEvent) -> events_pb2.Pong:
    ping = events_pb2.Ping.FromString(Envelope.FromString(event.body).payload)
    return events_pb2.Pong(nonce=ping.nonce, sent_ns=ping.sent_ns)


def test_ping_carries_mono_ns_and_pong_measures_rtt() -> None:
    conn = make_conn()
    event = conn.make_ping(20.0, mono_ns=5_000_000_000)
    body = Envelope.FromString(event.body)
    assert (event.type, event.reliable, event.priority) == ("system.ping", False, CRITICAL)
    ping = events_pb2.Ping.FromString(body.payload)
    assert (ping.nonce, ping.sent_ns, ping.rtt_us) == (1, 5_000_000_000, 0)
    assert conn.last_ping_sent == 20.0
    # The reactor clock (now) may jump; only mono_ns measures the RTT.
    assert conn.on_pong(pong_for(event), 5_080_000_000) == pytest.approx(0.08)
    assert conn.rtt.samples == 1
    assert conn.on_pong(pong_for(event), 6_000_000_000) is None  # answered already


def test_forged_or_unknown_pongs_are_ignored() -> None:
    conn = make_conn()
    conn.make_ping(0.0, mono_ns=1_000)
    assert conn.on_pong(events_pb2.Pong(nonce=1, sent_ns=1), 2_000_000) is None
    assert conn.on_pong(events_pb2.Pong(nonce=99, sent_ns=1_000), 2_000_000) is None
    assert conn.rtt.samples == 0 and conn.rtt.srtt == 0.0


def test_rtt_ewma_and_jitter() -> None:
    conn = make_conn()
    for i, rtt_ms in enumerate((100, 200, 50)):
        start = 10_000_000_000 * (i + 1)
        event = conn.make_ping(float(i), start)
        conn.on_pong(pong_for(event), start + rtt_ms * 1_000_000)
    # RFC 6298: srtt = r1, jitter = r1 / 2; then jitter += (|srtt - r| - jitter) / 4 (old srtt),
    # srtt += (r - srtt) / 8.
    # 0.1 -> srtt 0.1, jitter 0.05; 0.2 -> jitter 0.0625, srtt 0.1125; 0.05 -> jitter 0.0625,
    # srtt 0.1046875.
    assert conn.rtt.srtt == pytest.approx(0.1046875)
    assert conn.rtt.jitter == pytest.approx(0.0625)
    assert conn.rtt.last == pytest.approx(0.05)
    ping = events_pb2.Ping.FromString(Envelope.FromString(conn.make_ping(9.0, 1).body).payload)
    assert ping.rtt_us == 104687


def test_loss_after_expire_pings() -> None:
    conn = make_conn()  # heartbeat timeout 5 s
    answered = conn.make_ping(0.0, 1_000)
    for t in (1.0, 2.0, 3.0):
        conn.make_ping(t, int(t * 1e9))
    conn.on_pong(pong_for(answered), 2_000)
    conn.expire_pings(6.0)  # the ping sent at 1.0 is exactly at the timeout: not yet lost
    assert conn.rtt.loss == pytest.approx(0.0)
    conn.expire_pings(6.5)
    assert conn.rtt.loss == pytest.approx(1 / 2)
    conn.expire_pings(100.0)
    assert conn.rtt.loss == pytest.approx(3 / 4)
    conn.expire_pings(200.0)  # each ping is lost once
    assert conn.rtt.loss == pytest.approx(3 / 4)


def test_ping_due_after_the_interval() -> None:
    conn = make_conn()
    # The first ping falls somewhere in the first interval (spread, not in lockstep).
    assert conn.ping_due(10.0)
    conn.make_ping(10.0, 0)
    assert not conn.ping_due(19.9)
    assert conn.ping_due(20.0)


def test_first_pings_of_simultaneous_connections_are_spread() -> None:
    due = []
    for _ in range(50):
        conn = make_conn()
        due.append(next(t / 10 for t in range(0, 101) if conn.ping_due(t / 10)))
    assert len(set(due)) > 10  # not all in the same sweep
    assert max(due) <= 10.0


def test_is_dead_after_interval_plus_timeout() -> None:
    conn = make_conn()
    assert not conn.is_dead(15.0)
    assert conn.is_dead(15.01)
    conn.receive(b"", 12.0)
    assert not conn.is_dead(27.0)
    assert conn.is_dead(27.01)


# ---------------------------------------------------------------- compression, stats


def test_compression_above_threshold_only() -> None:
    conn = make_conn()
    conn.enqueue(ev(size=300))
    plain = conn.take_frame(0.0)
    assert plain is not None
    for codec in (ZLIB, LZ4):
        conn = make_conn()
        conn.compression = codec
        conn.compression_threshold = len(plain) + 1
        conn.enqueue(ev(size=300))
        below = conn.take_frame(0.0)
        assert below is not None
        assert events_pb2.Frame.FromString(below).compression == 0
        conn.compression_threshold = len(plain)
        conn.enqueue(ev(size=300))
        at = conn.take_frame(0.0)
        assert at is not None
        assert events_pb2.Frame.FromString(at).compression == codec
        assert len(at) < len(plain)
        assert [e.seq for e in decode(at)] == [2]
        assert conn.stats.bytes_out == len(below) + len(at)


def test_zlib_level_is_applied() -> None:
    frames = []
    for level in (1, 9):
        conn = make_conn()
        conn.compression = ZLIB
        conn.compression_threshold = 64
        conn.zlib_level = level
        conn.enqueue(make_event("a.b", bytes(range(256)) * 20))
        frames.append(conn.take_frame(0.0))
    assert frames[0] != frames[1]


def test_per_type_stats() -> None:
    conn = make_conn()
    conn.count_in("chat.say", 12)
    conn.count_in("chat.say", 3)
    conn.enqueue(ev("chat.say", size=10))
    sent(conn)
    stats = conn.stats.by_type["chat.say"]
    assert (stats.messages_in, stats.bytes_in, stats.messages_out) == (2, 15, 1)
    assert stats.bytes_out == ev("chat.say", size=10).size
    conn.count_shared(100, 4)
    assert conn.stats.messages_out == 2 and conn.stats.events_out == 5


def test_snapshot_row() -> None:
    conn = make_conn()
    conn.player_id, conn.session_id = "alice", "s1"
    conn.machine.to(State.CONNECTED)
    conn.count_in("chat.say", 5)
    conn.enqueue(ev())
    sent(conn)
    row = conn.snapshot(2.5)
    assert set(row) == {
        "id", "player_id", "session_id", "peer", "state", "connected_at", "age_seconds",
        "rtt_ms", "jitter_ms", "loss", "messages_in", "messages_out", "bytes_in", "bytes_out",
        "events_in", "events_out", "dropped_out", "queued_bytes", "unacked", "degraded",
        "paused", "by_type",
    }
    assert row["id"] == 7 and row["peer"] == "203.0.113.9"
    assert row["state"] == "connected" and row["age_seconds"] == 2.5
    assert row["unacked"] == 1 and row["paused"] is False
    assert row["by_type"] == {
        "chat.say": {"messages_in": 1, "bytes_in": 5, "messages_out": 0, "bytes_out": 0},
        "game.x": {"messages_in": 0, "bytes_in": 0, "messages_out": 1, "bytes_out": ev().size},
    }
    assert "claims" not in row and "token" not in str(sorted(row))


def test_connection_ids_are_unique_by_default() -> None:
    a = Connection("p", LimitsConfig(), HEARTBEAT, 0.0)
    b = Connection("p", LimitsConfig(), HEARTBEAT, 0.0)
    assert a.id != b.id
    assert a.state is State.CONNECTING and not a.authenticated


# ---------------------------------------------------------------- invariants

ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.booleans(), st.sampled_from([0, 1, 2, 3, 4]),
                  st.sampled_from([None, "k1", "k2"])),
        st.tuples(st.just("take")),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=40)),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None, database=None)
@given(ops)
def test_outbound_seq_ack_invariants(operations: list[tuple[Any, ...]]) -> None:
    conn = make_conn()
    emitted: list[int] = []
    for op in operations:
        if op[0] == "enqueue":
            _, reliable, priority, key = op
            if key is not None:  # a superseding event takes its key's slot: one priority per key
                priority = HIGH if key == "k1" else LOW
            assert conn.enqueue(make_event("a.b", b"p", priority=priority, reliable=reliable,
                                           key=key))
        elif op[0] == "take":
            data = conn.take_frame(0.0)
            if data is not None:
                envs = decode(data)
                emitted += [e.seq for e in envs if e.seq]
                priorities = [e.priority or NORMAL for e in envs]
                assert priorities == sorted(priorities)
            assert conn.queued_bytes == 0
        else:
            before = conn.peer_ack
            conn.acknowledge(op[1])
            assert conn.peer_ack >= before
        # Reliable seqs are 1, 2, 3, ... with no gap, across frames.
        assert emitted == list(range(1, len(emitted) + 1))
        assert conn.next_out_seq == len(emitted) + 1
        assert conn.peer_ack < conn.next_out_seq
        # Exactly the sent-but-unacknowledged events are retained, in order.
        assert [seq for seq, _ in conn.unacked] == [s for s in emitted if s > conn.peer_ack]
        assert conn.unacked_bytes == sum(e.size for _, e in conn.unacked)
        assert conn.queued_bytes >= 0


@settings(max_examples=80, deadline=None, database=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=12), max_size=6), max_size=10))
def test_inbound_seq_invariants(messages: list[list[int]]) -> None:
    conn = make_conn(max_events_per_frame=64, messages_burst=1000)
    delivered: list[int] = []
    highest = 0
    duplicates = 0
    for seqs in messages:
        out = conn.receive(frame(*[env(seq) for seq in seqs]), 0.0)
        delivered += [e.seq for e in out if e.seq]
        for seq in seqs:
            if seq and seq <= highest:
                duplicates += 1
            highest = max(highest, seq)
    assert delivered == sorted(set(delivered))  # never twice, never backwards
    assert conn.last_in_seq == highest
    assert conn.stats.duplicates_in == duplicates
    assert conn.has_pending == bool(highest)
