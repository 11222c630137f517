"""Reconnection policy and schedule, on a task.Clock with the connect step stubbed out;
the sans-io parts of reconnecting (offline queue, resend after a welcome, frame limits)."""

from __future__ import annotations

import random

import pytest
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from gateway.client import ClientClosed, GatewayClient, ReconnectPolicy
from gateway.client.backoff import Backoff
from gateway.client.session import ClientSession
from gateway.codes import CloseCode
from gateway.events import Delivery, Direction, EventRegistry, spec
from gateway.states import State
from gateway.wire import decode_frame, encode_fragment
from protocol import events_pb2

Envelope = events_pb2.Envelope
MSG = events_pb2.AuthRefresh  # any small message will do as a payload


class FixedRng:
    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def registry() -> EventRegistry:
    reg = EventRegistry()
    reg.register(
        spec("game.say", MSG, direction=Direction.CLIENT_TO_SERVER),
        spec("game.pos", MSG, direction=Direction.CLIENT_TO_SERVER,
             delivery=Delivery.UNRELIABLE),
        spec("game.news", MSG, direction=Direction.SERVER_TO_CLIENT),
    )
    return reg


# --------------------------------------------------------------------------- the policy


def test_full_jitter_ceiling_doubles_up_to_the_cap() -> None:
    policy = ReconnectPolicy(base=0.1, cap=1.0)
    assert [policy.ceiling(n) for n in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.ceiling(10_000) == 1.0  # no overflow however long the outage
    assert policy.delay(3, FixedRng(1.0)) == pytest.approx(0.8)
    assert policy.delay(3, FixedRng(0.0)) == 0.0
    rng = random.Random(7)
    delays = [policy.delay(5, rng) for _ in range(1000)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.5  # spread over the window, not clustered


def test_policy_validates_and_counts_attempts() -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(base=0)
    with pytest.raises(ValueError):
        ReconnectPolicy(base=2, cap=1)
    with pytest.raises(ValueError):
        ReconnectPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        ReconnectPolicy().ceiling(-1)
    assert not ReconnectPolicy().exhausted(10**9)  # unlimited by default
    backoff = Backoff(ReconnectPolicy(base=1, cap=8, max_attempts=3), FixedRng(1.0))
    assert backoff.next_delay() == 1
    assert backoff.failed() and backoff.next_delay() == 2
    assert backoff.failed() and backoff.next_delay() == 4
    assert not backoff.failed()  # the third failure reaches the limit
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() == 1
    assert backoff.spread(2.0) == 2.0


# --------------------------------------------------------------------------- the schedule


def state(client: GatewayClient) -> State:
    return client.state  # a call: mypy must not narrow the state across our own actions


class Harness:
    """A client on a task.Clock whose connect step (``_dial``) is a stub."""

    def __init__(self, urls: list[str], *, policy: ReconnectPolicy | None,
                 outcomes: list[object] | None = None, **kw: object) -> None:
        self.clock = task.Clock()
        self.client = GatewayClient(urls, "jwt", reactor=self.clock, registry=registry(),
                                    reconnect=policy, rng=FixedRng(1.0), **kw)  # type: ignore[arg-type]
        self.dials: list[tuple[float, str, str]] = []
        self.outcomes = list(outcomes or [])
        self.states: list[State] = []
        self.client.on_state(lambda _old, new: self.states.append(new))
        self.client._dial = self.dial  # type: ignore[method-assign]

    def dial(self, url: str) -> defer.Deferred[events_pb2.Welcome]:
        self.dials.append((self.clock.seconds(), url, self.client.token))
        outcome = self.outcomes.pop(0) if self.outcomes else ConnectionRefusedError()
        if isinstance(outcome, BaseException):
            return defer.fail(outcome)
        if outcome == "welcome":
            return defer.succeed(self.authenticate())
        assert isinstance(outcome, defer.Deferred)
        return outcome

    def authenticate(self) -> events_pb2.Welcome:
        machine = self.client.session.machine
        for state in (State.CONNECTED, State.AUTHENTICATING, State.AUTHENTICATED):
            machine.to(state)
        return events_pb2.Welcome(session_id="s")

    def established(self) -> None:
        """As if connect() had succeeded earlier: AUTHENTICATED on the first URL."""
        self.authenticate()

    def drop(self, code: int | None = 1006) -> None:
        self.client._connection_lost(code, "dropped")


def test_reconnect_schedule_rotates_the_pool_and_stops_at_the_limit() -> None:
    h = Harness(["ws://a", "ws://b", "ws://c"],
                policy=ReconnectPolicy(base=0.5, cap=4.0, max_attempts=5))
    ended: list[ClientClosed] = []
    h.client.on_closed = ended.append
    h.established()
    closed: list[ClientClosed] = []
    h.client.when_closed().addCallback(closed.append)
    h.drop()
    assert state(h.client) is State.RECONNECTING
    h.clock.advance(0.49)
    assert h.dials == []
    h.clock.advance(0.01)  # the first retry: full jitter at its ceiling, base
    assert len(h.dials) == 1
    h.clock.pump([4.0] * 10)  # >= every later delay of this policy
    assert [url for _, url, _ in h.dials] == ["ws://a", "ws://b", "ws://c", "ws://a", "ws://b"]
    assert state(h.client) is State.DISCONNECTED
    assert [c.attempts for c in closed] == [5]
    assert [e.attempts for e in ended] == [5]
    assert h.states.count(State.CONNECTING) == 5
    assert h.clock.getDelayedCalls() == []  # nothing left behind


def test_exact_backoff_gaps_between_attempts() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=0.1, cap=1.0, max_attempts=6))
    h.established()
    h.drop()
    h.clock.pump([0.05] * 200)
    times = [t for t, _, _ in h.dials]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], abs=0.051)
    assert state(h.client) is State.DISCONNECTED


def test_success_resets_the_count_and_the_first_retry_is_quick_again() -> None:
    pending: defer.Deferred[events_pb2.Welcome] = defer.Deferred()
    h = Harness(["ws://a", "ws://b"], policy=ReconnectPolicy(base=0.1, cap=10.0),
                outcomes=[ConnectionRefusedError(), ConnectionRefusedError(), pending])
    h.established()
    h.drop()
    h.clock.pump([0.1, 0.2, 0.4])
    assert len(h.dials) == 3 and h.client.reconnect_attempts == 2
    assert state(h.client) is State.CONNECTING
    pending.callback(h.authenticate())
    assert state(h.client) is State.AUTHENTICATED
    assert h.client.reconnect_attempts == 0
    h.drop()
    h.clock.advance(0.1)
    assert len(h.dials) == 4
    assert h.dials[-1][1] == "ws://a"  # retries where it was last connected first


def test_initial_connect_tries_each_endpoint_once_then_fails() -> None:
    h = Harness(["ws://a", "ws://b"], policy=ReconnectPolicy())
    d = h.client.connect()
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert [url for _, url, _ in h.dials] == ["ws://a", "ws://b"]  # at once, no backoff
    assert failures and failures[0].check(ConnectionRefusedError)
    assert state(h.client) is State.DISCONNECTED
    assert h.clock.getDelayedCalls() == []


def test_initial_connect_fails_over() -> None:
    h = Harness(["ws://a", "ws://b"], policy=ReconnectPolicy(),
                outcomes=[ConnectionRefusedError(), "welcome"])
    welcomes: list[events_pb2.Welcome] = []
    h.client.connect().addCallback(welcomes.append)
    assert welcomes and [url for _, url, _ in h.dials] == ["ws://a", "ws://b"]
    h.client.close()
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("code", sorted(CloseCode(c) for c in
                                        (4001, 4002, 4005, 4006, 4013)))
def test_no_reconnect_codes_end_the_client(code: CloseCode) -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy())
    h.established()
    h.drop(code)
    assert state(h.client) is State.DISCONNECTED
    assert h.dials == [] and h.clock.getDelayedCalls() == []


def test_disconnect_reconnect_false_ends_the_client() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy())
    h.established()
    h.client.disconnect = events_pb2.Disconnect(code=4009, reconnect=False)
    h.drop(4009)
    assert state(h.client) is State.DISCONNECTED and h.dials == []


def test_a_refusal_during_reconnect_that_would_repeat_is_final() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(),
                outcomes=[ClientClosed(4001, "invalid token")])
    h.established()
    h.drop()
    h.clock.advance(0.1)
    assert len(h.dials) == 1 and state(h.client) is State.DISCONNECTED
    assert h.client.last_close is not None and h.client.last_close.code == 4001


def test_token_provider_is_asked_before_every_reconnect_attempt() -> None:
    tokens = iter(["t1", "t2", "t3"])
    asked: list[defer.Deferred[str]] = []

    def provider() -> defer.Deferred[str]:
        d: defer.Deferred[str] = defer.Deferred()
        asked.append(d)
        return d

    upgrade_401 = ClientClosed(1006, "WebSocket connection upgrade failed [401]: Unauthorized",
                               http_status=401)
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=0.1), token_provider=provider,
                outcomes=[upgrade_401, "welcome"])
    h.established()
    h.drop()
    h.clock.advance(0.1)
    assert len(asked) == 1 and h.dials == []  # waiting for the token
    asked[0].callback(next(tokens))
    h.clock.advance(0.2)
    asked[1].callback(next(tokens))  # the 401 was not final: a provider may fix it
    assert [token for _, _, token in h.dials] == ["t1", "t2"]
    assert state(h.client) is State.AUTHENTICATED


def test_http_401_without_a_token_provider_is_final() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(),
                outcomes=[ClientClosed(1006, "upgrade failed [401]", http_status=401)])
    h.established()
    h.drop()
    h.clock.advance(0.1)
    assert state(h.client) is State.DISCONNECTED


def test_draining_spreads_the_reconnect_and_prefers_its_url() -> None:
    h = Harness(["ws://a", "ws://b"], policy=ReconnectPolicy(base=0.1))
    h.established()
    h.client._drain(events_pb2.Draining(grace_ms=500, retry_after_ms=2000,
                                        reconnect_url="ws://elsewhere"))
    h.clock.advance(0.5)
    h.drop(1001)  # the server closed first (grace < our point in the window)
    h.clock.advance(1.49)
    assert h.dials == []
    h.clock.advance(0.01)  # FixedRng(1.0): the end of the 2 s window
    assert [url for _, url, _ in h.dials] == ["ws://elsewhere"]


def test_draining_without_a_url_moves_to_the_next_endpoint() -> None:
    h = Harness(["ws://a", "ws://b"], policy=ReconnectPolicy(base=0.1),
                outcomes=["welcome"])
    h.established()
    h.client._drain(events_pb2.Draining(grace_ms=100, retry_after_ms=0))
    h.drop(1001)
    h.clock.advance(0)
    assert [url for _, url, _ in h.dials] == ["ws://b"]


def test_close_while_reconnecting_cancels_every_timer() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=5, cap=5))
    h.established()
    h.client._start_housekeeping()  # as connect() does
    h.drop()
    assert h.clock.getDelayedCalls()
    closed = h.client.close()
    assert closed.called and state(h.client) is State.DISCONNECTED
    assert h.clock.getDelayedCalls() == []


def test_reconnect_none_never_retries() -> None:
    h = Harness(["ws://a"], policy=None)
    h.established()
    h.drop()
    assert state(h.client) is State.DISCONNECTED and h.dials == []


# --------------------------------------------------------------------------- offline queue


def test_offline_queue_is_bounded_and_reports_drops() -> None:
    full: list[str] = []
    h = Harness(["ws://a"], policy=ReconnectPolicy(), offline_queue_limit=3,
                on_queue_full=full.append)
    c = h.client
    assert c.send("game.pos", MSG(token="p1"), key="pos")
    assert c.send("game.pos", MSG(token="p2"), key="pos")  # supersedes p1: not a drop
    assert [q.message.token for q in c.session.offline] == ["p2"]  # type: ignore[attr-defined]
    assert c.send("game.say", MSG(token="s1"))
    assert c.send("game.say", MSG(token="s2"))
    assert c.send("game.say", MSG(token="s3"))  # full: the unreliable p2 goes
    assert full == ["game.pos"]
    assert not c.send("game.say", MSG(token="s4"))  # only reliable ones left: refused
    assert full == ["game.pos", "game.say"]
    assert [q.message.token for q in c.session.offline] == ["s1", "s2", "s3"]  # type: ignore[attr-defined]


def test_offline_events_are_encoded_with_the_versions_negotiated_later() -> None:
    s = ClientSession(registry=registry())
    item = s.prepare("game.say", MSG(token="x"), now=0.0)
    assert s.queue_offline(item) == []
    s.on_welcome(events_pb2.Welcome(versions={"game.say": 1}))
    assert s.flush_offline() == 1
    [env] = decode(s.take_frame(1.0))
    assert (env.type, env.seq, env.version) == ("game.say", 1, 1)


def test_reliable_events_expire_in_the_queue_and_in_flight_across_reconnects() -> None:
    gave_up: list[tuple[str, int]] = []
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=100, cap=100),
                reliable_timeout=5.0, on_give_up=lambda t, seq: gave_up.append((t, seq)))
    c = h.client
    h.established()
    c._start_housekeeping()  # as connect() does
    c.session.queue(c.session.event("game.say", MSG(token="in flight")))
    c.session.take_frame(h.clock.seconds())  # sent as seq 1, never acknowledged
    h.drop()
    c.send("game.say", MSG(token="queued"))
    h.clock.pump([1.0] * 7)
    assert sorted(gave_up) == [("game.say", 0), ("game.say", 1)]  # 0: never sent
    assert not c.session.pending and not c.session.offline
    c.close()
    assert h.clock.getDelayedCalls() == []


# --------------------------------------------------------------------------- resend after a welcome


def server_frame(*envs: Envelope) -> bytes:
    return b"".join(encode_fragment(e) for e in envs)


def decode(data: bytes | None) -> list[Envelope]:
    assert data is not None
    return decode_frame(data, max_events=1 << 16, max_size=1 << 24,
                        accepted_compression=frozenset())


def welcome_env(**kw: object) -> Envelope:
    return Envelope(type="system.welcome",
                    payload=events_pb2.Welcome(**kw).SerializeToString())  # type: ignore[arg-type]


def news(seq: int) -> Envelope:
    return Envelope(type="game.news", seq=seq, payload=MSG(token=str(seq)).SerializeToString())


def with_pending(texts: list[str]) -> ClientSession:
    s = ClientSession(registry=registry(), compression=())
    s.receive(server_frame(news(1), news(2), news(3)))
    for text in texts:
        s.queue(s.event("game.say", MSG(token=text)))
    s.take_frame(0.0)
    return s


def test_resumed_welcome_resends_pending_with_original_seqs() -> None:
    s = with_pending(["a", "b", "c"])
    s.acknowledge(1)
    s.queue(s.event("game.say", MSG(token="new")))
    s.on_welcome(events_pb2.Welcome(resumed=True))
    out = decode(s.take_frame(1.0))
    assert [(e.seq, MSG.FromString(e.payload).token) for e in out] == [
        (2, "b"), (3, "c"), (4, "new")]
    assert s.last_in_seq == 3  # what we had received survives a resume (hello.last_seq)


def test_new_session_welcome_renumbers_pending_and_resets_the_inbound_seq() -> None:
    s = with_pending(["a", "b"])
    assert s.last_in_seq == 3
    # The welcome and the new session's first events in one frame: seq 1 is not a duplicate.
    out = s.receive(server_frame(welcome_env(resumed=False, full_resync=True), news(1)))
    assert [i.type for i in out] == ["system.welcome", "game.news"]
    assert s.last_in_seq == 1
    s.on_welcome(events_pb2.Welcome(resumed=False, full_resync=True))
    assert not s.pending
    sent = decode(s.take_frame(2.0))
    assert [(e.seq, MSG.FromString(e.payload).token) for e in sent if e.payload] == [
        (1, "a"), (2, "b")]  # renumbered: at-least-once, the old session may have had them
    assert [p.first_sent for p in s.pending] == [0.0, 0.0]  # the give-up clock keeps running


def decode_frame_bytes(s: ClientSession) -> bytes:
    """The bytes one queued event takes in a frame (probed on a copy of its queue)."""
    probe = ClientSession(registry=registry(), compression=())
    probe.next_out_seq = s.next_out_seq
    probe.queue(s._queue[0])
    data = probe.take_frame(0.0)
    assert data is not None
    return data


def test_take_frame_respects_event_and_byte_limits() -> None:
    s = ClientSession(registry=registry(), compression=())
    for n in range(10):
        s.queue(s.event("game.say", MSG(token=f"{n:03d}" * 10)))
    first = decode(s.take_frame(0.0, max_events=4))
    assert [e.seq for e in first] == [1, 2, 3, 4] and s.last_frame_events == 4
    size = len(decode_frame_bytes(s))
    second = decode(s.take_frame(0.0, max_bytes=2 * size + 1))
    assert len(second) == 2
    rest = decode(s.take_frame(0.0))
    assert [e.seq for e in rest] == [7, 8, 9, 10]


def test_flush_paces_frames_to_the_servers_rate_limit() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy())
    sent: list[bytes] = []

    class Proto:
        state = WebSocketClientProtocol.STATE_OPEN

        def sendMessage(self, data: bytes, isBinary: bool) -> None:  # noqa: N802, N803
            sent.append(data)

    c = h.client
    c.session.compression = ()
    for n in range(100):
        c.send("game.say", MSG(token=str(n)))  # offline: queued
    limits = events_pb2.Limits(max_events_per_frame=8, messages_per_second=20,
                               messages_burst=12)
    c._proto = Proto()  # type: ignore[assignment]
    c.session.machine.to(State.CONNECTED)
    c.session.machine.to(State.AUTHENTICATING)
    c._welcomed(events_pb2.Welcome(limits=limits, heartbeat_interval_s=30))
    counts = [len(decode(f)) for f in sent]
    assert all(n <= 8 for n in counts) and sum(counts) == 10  # burst 12 minus the margin
    h.clock.pump([0.1] * 60)
    counts = [len(decode(f)) for f in sent]
    assert sum(counts) == 100  # everything, in order, at <= 18 per second
    seqs = [e.seq for f in sent for e in decode(f)]
    assert seqs == list(range(1, 101))
    assert h.clock.seconds() >= (100 - 10) / 18 - 0.2
    c._proto = None
    c.close()


def test_abort_while_reconnecting_ends_the_client() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=5, cap=5))
    h.established()
    h.drop()
    h.client.abort()
    assert state(h.client) is State.DISCONNECTED
    assert h.clock.getDelayedCalls() == []


def test_connect_while_waiting_out_the_backoff_retries_at_once() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=5, cap=5), outcomes=["welcome"])
    h.established()
    h.drop()
    assert h.dials == []
    welcomes: list[events_pb2.Welcome] = []
    h.client.connect().addCallback(welcomes.append)
    assert len(h.dials) == 1 and welcomes
    assert state(h.client) is State.AUTHENTICATED
    h.client._proto = None
    h.client.close()
    assert h.clock.getDelayedCalls() == []


def test_heartbeat_silence_drops_and_reconnects() -> None:
    h = Harness(["ws://a"], policy=ReconnectPolicy(base=0.1))
    dropped: list[bool] = []

    class Proto:
        factory = None
        state = WebSocketClientProtocol.STATE_OPEN

        def sendMessage(self, data: bytes, isBinary: bool) -> None:  # noqa: N802, N803
            pass

        def dropConnection(self, abort: bool) -> None:  # noqa: N802
            dropped.append(abort)

    c = h.client
    proto = Proto()
    c._proto = proto  # type: ignore[assignment]
    c.session.machine.to(State.CONNECTED)
    c.session.machine.to(State.AUTHENTICATING)
    c._welcomed(events_pb2.Welcome(heartbeat_interval_s=2, heartbeat_timeout_s=2))
    h.clock.advance(4)
    assert dropped == []  # 4 s of silence: not yet over interval + timeout
    h.clock.advance(2)
    assert dropped == [True]
    c._closed(proto, 1006, "dropped")  # type: ignore[arg-type]
    assert state(c) is State.RECONNECTING
    h.clock.advance(0.1)
    assert len(h.dials) == 1
