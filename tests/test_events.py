"""gateway.events: specs, the registry, negotiation, inbound parsing and the router."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.codes import ErrorCode
from gateway.config import HeartbeatConfig, LimitsConfig
from gateway.connection import Connection
from gateway.events import (
    Category,
    Delivery,
    Direction,
    EventContext,
    EventError,
    EventRegistry,
    EventSpec,
    Priority,
    Router,
    spec,
)
from gateway.system_events import SYSTEM_SPECS
from gateway.system_events import register as register_system
from protocol import events_pb2

# Three "versions" of one event, borrowed from messages the protocol already has:
# v1 AuthRefresh(token) -> v2 Error(message, code) -> v3 Disconnect(reason, code).
V1, V2, V3 = events_pb2.AuthRefresh, events_pb2.Error, events_pb2.Disconnect


def make_versioned(calls: list[str] | None = None, **kwargs: Any) -> EventSpec:
    log = calls if calls is not None else []

    def up1(m: Any) -> Any:
        log.append("up1")
        return V2(message=m.token, code=0)

    def up2(m: Any) -> Any:
        log.append("up2")
        return V3(reason=m.message, code=m.code)

    def down3(m: Any) -> Any:
        log.append("down3")
        return V2(message=m.reason, code=m.code)

    def down2(m: Any) -> Any:
        log.append("down2")
        return V1(token=m.message)

    return EventSpec(
        type="game.thing",
        versions={1: V1, 2: V2, 3: V3},
        upgraders={1: up1, 2: up2},
        downgraders={3: down3, 2: down2},
        **kwargs,
    )


# ---------------------------------------------------------------- EventSpec


@pytest.mark.parametrize(
    "name",
    ["chat", "Chat.say", "chat.Say", "chat..say", ".chat.say", "chat.say.", "1chat.say",
     "chat.1say", "chat.say!", "chat-room.say", "chat say", "", "a." + "b" * 63],
)
def test_bad_type_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="dotted lower-case"):
        EventSpec(type=name, versions={1: V1})


@pytest.mark.parametrize("name", ["a.b", "chat.say", "player.move_to", "a1.b2.c3", "a." + "b" * 62])
def test_good_type_names(name: str) -> None:
    assert EventSpec(type=name, versions={1: V1}).type == name


def test_versions_required_and_start_at_one() -> None:
    with pytest.raises(ValueError, match="at least one version"):
        EventSpec(type="a.b", versions={})
    with pytest.raises(ValueError, match="start at 1"):
        EventSpec(type="a.b", versions={0: V1})
    with pytest.raises(ValueError, match="start at 1"):
        EventSpec(type="a.b", versions={-1: V1, 1: V2}, upgraders={-1: lambda m: m})


def test_missing_upgrader_or_downgrader_is_refused() -> None:
    with pytest.raises(ValueError, match="no upgrader from v1 to v2"):
        EventSpec(type="a.b", versions={1: V1, 2: V2}, downgraders={2: lambda m: m})
    with pytest.raises(ValueError, match="no downgrader from v2 to v1"):
        EventSpec(type="a.b", versions={1: V1, 2: V2}, upgraders={1: lambda m: m})
    with pytest.raises(ValueError, match="no upgrader from v2 to v3"):
        EventSpec(type="a.b", versions={1: V1, 2: V2, 3: V3},
                  upgraders={1: lambda m: m}, downgraders={2: lambda m: m, 3: lambda m: m})


def test_version_gaps_are_refused() -> None:
    """Conversion walks one version at a time: {1, 3} could never convert between them."""
    with pytest.raises(ValueError, match="consecutive"):
        EventSpec(type="a.b", versions={1: V1, 3: V3})
    # A retired first version is fine: the range need not start at 1.
    assert EventSpec(type="a.b", versions={2: V2, 3: V3}, upgraders={2: lambda m: m},
                     downgraders={3: lambda m: m}).latest == 3


@pytest.mark.parametrize("limit", [(0, 1), (-1.0, 5), (1.0, 0)])
def test_bad_rate_limit_is_refused(limit: tuple[float, int]) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        EventSpec(type="a.b", versions={1: V1}, rate_limit=limit)


def test_spec_defaults_and_shorthand() -> None:
    s = spec("chat.say", V1, direction=Direction.CLIENT_TO_SERVER)
    assert s.versions == {1: V1} and s.latest == 1
    assert (s.category, s.priority, s.delivery, s.owner) == (
        Category.GAME, Priority.NORMAL, Delivery.RELIABLE, "core")
    assert s.reliable
    assert not spec("a.b", V1, delivery=Delivery.UNRELIABLE).reliable
    assert spec("a.b", {1: V1}).latest == 1
    assert make_versioned().latest == 3


def test_direction_permissions() -> None:
    assert Direction.CLIENT_TO_SERVER.client_may_send
    assert not Direction.CLIENT_TO_SERVER.server_may_send
    assert not Direction.SERVER_TO_CLIENT.client_may_send
    assert Direction.SERVER_TO_CLIENT.server_may_send
    assert Direction.BOTH.client_may_send and Direction.BOTH.server_may_send


def test_convert_up_through_the_chain() -> None:
    calls: list[str] = []
    s = make_versioned(calls)
    assert s.convert(V1(token="hi"), 1, 3) == V3(reason="hi")
    assert calls == ["up1", "up2"]


def test_convert_down_through_the_chain() -> None:
    calls: list[str] = []
    s = make_versioned(calls)
    assert s.convert(V3(reason="bye", code=4), 3, 1) == V1(token="bye")
    assert calls == ["down3", "down2"]
    calls.clear()
    assert s.convert(V3(reason="x", code=9), 3, 2) == V2(message="x", code=9)
    assert calls == ["down3"]


def test_convert_to_same_version_is_identity() -> None:
    calls: list[str] = []
    message = V2(message="same")
    assert make_versioned(calls).convert(message, 2, 2) is message
    assert calls == []


# ---------------------------------------------------------------- registry


def test_duplicate_registration_names_the_owner() -> None:
    registry = EventRegistry()
    registry.register(spec("chat.say", V1, owner="plugins.chat"))
    with pytest.raises(ValueError, match=r"'chat.say' is already registered by plugins.chat"):
        registry.register(spec("chat.say", V2, owner="plugins.other"))
    assert registry["chat.say"].owner == "plugins.chat"


def test_registry_lookup_and_iteration() -> None:
    registry = EventRegistry()
    registry.register(spec("z.last", V1), spec("a.first", V1))
    assert "a.first" in registry and "nope.x" not in registry
    assert registry.get("nope.x") is None
    assert [s.type for s in registry] == ["a.first", "z.last"]
    assert len(registry) == 2
    with pytest.raises(KeyError):
        registry["nope.x"]


def test_system_events_register_like_any_plugin() -> None:
    registry = EventRegistry()
    register_system(registry)
    assert len(registry) == len(SYSTEM_SPECS)
    assert not registry["system.welcome"].direction.client_may_send
    assert registry["system.hello"].direction is Direction.CLIENT_TO_SERVER
    assert registry["system.error"].reliable
    with pytest.raises(ValueError):
        register_system(registry)


def negotiation_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(
        make_versioned(),  # game.thing v1..3
        spec("game.single", V1),
        EventSpec(type="game.later", versions={2: V2, 3: V3}, upgraders={2: lambda m: m},
                  downgraders={3: lambda m: m}),
    )
    return registry


def test_negotiate_picks_the_newest_common_version() -> None:
    chosen = negotiation_registry().negotiate(
        {"game.thing": [2, 1, 7], "game.single": [1], "game.later": [3, 2]}
    )
    assert chosen == {"game.thing": 2, "game.single": 1, "game.later": 3}


def test_negotiate_undeclared_type_gets_the_latest() -> None:
    assert negotiation_registry().negotiate({}) == {
        "game.thing": 3, "game.single": 1, "game.later": 3,
    }


def test_negotiate_omits_types_without_a_common_version() -> None:
    chosen = negotiation_registry().negotiate(
        {"game.later": [1], "game.thing": [], "unknown.type": [1]}
    )
    assert chosen == {"game.single": 1}


def test_encode_converts_to_the_negotiated_version() -> None:
    registry = negotiation_registry()
    event = registry.encode("game.thing", V3(reason="r", code=5), 1, correlation_id=9,
                            key="k", timestamp_us=11)
    env = events_pb2.Envelope.FromString(event.body)
    assert (env.type, env.version, env.correlation_id, env.timestamp_us) == (
        "game.thing", 1, 9, 11)
    assert V1.FromString(env.payload) == V1(token="r")
    assert event.reliable and event.key == "k"
    assert event.priority == Priority.NORMAL == env.priority


def test_encode_priority_and_delivery_from_the_spec() -> None:
    registry = EventRegistry()
    registry.register(spec("game.pos", V1, priority=Priority.LOW, delivery=Delivery.UNRELIABLE))
    event = registry.encode("game.pos", V1(token="t"), 1)
    assert (event.priority, event.reliable) == (Priority.LOW, False)
    assert registry.encode("game.pos", V1(), 1, priority=Priority.HIGH).priority == Priority.HIGH


# ---------------------------------------------------------------- parse_inbound


def inbound_registry() -> EventRegistry:
    registry = EventRegistry()
    register_system(registry)
    registry.register(make_versioned(direction=Direction.CLIENT_TO_SERVER))
    return registry


def envelope(type_: str, payload: bytes = b"", version: int = 0) -> events_pb2.Envelope:
    return events_pb2.Envelope(type=type_, version=version, payload=payload)


def refused(env: events_pb2.Envelope, negotiated: dict[str, int] | None = None) -> EventError:
    from gateway.events import parse_inbound

    with pytest.raises(EventError) as info:
        parse_inbound(inbound_registry(), env, negotiated or {})
    return info.value


def test_parse_inbound_unknown_type() -> None:
    err = refused(envelope("no.such" + "x" * 200))
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert len(err.message) < 100  # the echoed name is truncated


@pytest.mark.parametrize("type_", ["system.welcome", "system.disconnect", "server.draining"])
def test_parse_inbound_forbidden_direction(type_: str) -> None:
    assert refused(envelope(type_)).code is ErrorCode.FORBIDDEN_DIRECTION


def test_parse_inbound_unknown_version() -> None:
    assert refused(envelope("game.thing", version=9)).code is ErrorCode.UNKNOWN_VERSION
    # Version 0 means the negotiated one, which must exist too.
    err = refused(envelope("game.thing"), {"game.thing": 4})
    assert err.code is ErrorCode.UNKNOWN_VERSION


def test_parse_inbound_bad_payload() -> None:
    err = refused(envelope("game.thing", b"\x0a\x05ab", version=1))  # length past the end
    assert err.code is ErrorCode.BAD_PAYLOAD
    assert refused(envelope("system.ping", b"\xff")).code is ErrorCode.BAD_PAYLOAD


def test_parse_inbound_converts_to_latest() -> None:
    from gateway.events import parse_inbound

    registry = inbound_registry()
    s, version, message, _size = parse_inbound(
        registry, envelope("game.thing", V1(token="old").SerializeToString(), 1), {}
    )
    assert (s.type, version, message) == ("game.thing", 1, V3(reason="old"))
    # Version 0: the negotiated version, else the latest.
    _, version, message, _size = parse_inbound(
        registry, envelope("game.thing", V2(message="m", code=3).SerializeToString()),
        {"game.thing": 2},
    )
    assert (version, message) == (2, V3(reason="m", code=3))
    _, version, message, _size = parse_inbound(
        registry, envelope("game.thing", V3(reason="new").SerializeToString()), {}
    )
    assert (version, message) == (3, V3(reason="new"))


def test_parse_inbound_accepts_both_directions() -> None:
    from gateway.events import parse_inbound

    s, version, message, _size = parse_inbound(
        inbound_registry(), envelope("system.ping", events_pb2.Ping(nonce=5).SerializeToString()),
        {},
    )
    assert (s.type, version, message.nonce) == ("system.ping", 1, 5)


# ---------------------------------------------------------------- Router


class NoServer:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call to {name}")


def context(type_: str = "chat.say") -> EventContext:
    conn = Connection("peer", LimitsConfig(), HeartbeatConfig(), 0.0, connection_id=1)
    conn.player_id = "alice"
    return EventContext(conn, spec(type_, V1), 1, 4, 0, NoServer())  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failures: list[tuple[EventContext, Failure]] = []

    def router(self) -> Router:
        return Router(on_failure=lambda ctx, f: self.failures.append((ctx, f)))


def test_several_handlers_run_in_order() -> None:
    rec = Recorder()
    router = rec.router()
    router.add("chat.say", lambda ctx, m: rec.calls.append(f"one {m.token}"))
    router.add("chat.say", lambda ctx, m: rec.calls.append(f"two {ctx.player_id}"))
    router.add("other.type", lambda ctx, m: rec.calls.append("other"))
    assert router.dispatch(context(), V1(token="t")) == 2
    assert rec.calls == ["one t", "two alice"]
    assert rec.failures == []


def test_no_handler_returns_zero() -> None:
    assert Router().dispatch(context("nobody.listens"), V1()) == 0


def test_raising_handler_fails_once_and_others_still_run() -> None:
    rec = Recorder()
    router = rec.router()

    def broken(ctx: EventContext, m: Any) -> None:
        rec.calls.append("broken")
        raise ValueError("handler bug")

    router.add("chat.say", broken)
    router.add("chat.say", lambda ctx, m: rec.calls.append("after"))
    ctx = context()
    assert router.dispatch(ctx, V1()) == 2
    assert rec.calls == ["broken", "after"]
    assert len(rec.failures) == 1
    failed_ctx, failure = rec.failures[0]
    assert failed_ctx is ctx
    assert failure.check(ValueError)


def test_failed_deferred_fails_once_and_others_still_run() -> None:
    rec = Recorder()
    router = rec.router()
    router.add("chat.say", lambda ctx, m: defer.fail(EventError(ErrorCode.BAD_REQUEST, "no")))
    router.add("chat.say", lambda ctx, m: rec.calls.append("after"))
    router.dispatch(context(), V1())
    assert rec.calls == ["after"]
    assert len(rec.failures) == 1
    assert rec.failures[0][1].check(EventError)


def test_later_failing_deferred_fails_once_when_it_fires() -> None:
    rec = Recorder()
    router = rec.router()
    pending: defer.Deferred[None] = defer.Deferred()
    router.add("chat.say", lambda ctx, m: pending)
    router.add("chat.say", lambda ctx, m: rec.calls.append("after"))
    router.dispatch(context(), V1())
    assert rec.calls == ["after"] and rec.failures == []
    pending.errback(RuntimeError("late"))
    assert len(rec.failures) == 1
    assert rec.failures[0][1].check(RuntimeError)


def test_succeeding_deferred_is_no_failure() -> None:
    rec = Recorder()
    router = rec.router()
    pending: defer.Deferred[str] = defer.Deferred()
    router.add("chat.say", lambda ctx, m: pending)
    router.dispatch(context(), V1())
    pending.callback("done")
    assert rec.failures == []


def test_failure_without_on_failure_is_still_consumed() -> None:
    router = Router()
    router.add("chat.say", lambda ctx, m: 1 / 0)
    assert router.dispatch(context(), V1()) == 1  # logged, not raised


def test_decorator_registration() -> None:
    rec = Recorder()
    router = rec.router()

    @router.on("chat.say")
    def handler(ctx: EventContext, m: Any) -> None:
        rec.calls.append("decorated")

    assert router.handlers("chat.say") == [handler]
    assert handler.__name__ == "handler"  # returned unchanged
    router.dispatch(context(), V1())
    assert rec.calls == ["decorated"]


def test_add_returns_a_remover() -> None:
    rec = Recorder()
    router = rec.router()
    remove = router.add("chat.say", lambda ctx, m: rec.calls.append("x"))
    remove()
    assert router.dispatch(context(), V1()) == 0
    assert rec.calls == []


def test_async_def_handlers() -> None:
    rec = Recorder()
    router = rec.router()
    gate: defer.Deferred[str] = defer.Deferred()

    @router.on("chat.say")
    async def waits(ctx: EventContext, m: Any) -> None:
        rec.calls.append("start")
        rec.calls.append(await gate)

    @router.on("chat.say")
    async def fails(ctx: EventContext, m: Any) -> None:
        await gate
        raise EventError(ErrorCode.BAD_REQUEST, "refused")

    @router.on("chat.say")
    async def immediate(ctx: EventContext, m: Any) -> None:
        rec.calls.append("immediate")

    assert router.dispatch(context(), V1()) == 3
    assert rec.calls == ["start", "immediate"]
    assert rec.failures == []
    gate.callback("resumed")
    assert rec.calls == ["start", "immediate", "resumed"]
    assert len(rec.failures) == 1
    assert rec.failures[0][1].value.code is ErrorCode.BAD_REQUEST


def test_async_handler_raising_before_await() -> None:
    rec = Recorder()
    router = rec.router()

    @router.on("chat.say")
    async def broken(ctx: EventContext, m: Any) -> None:
        raise KeyError("x")

    router.add("chat.say", lambda ctx, m: rec.calls.append("after"))
    router.dispatch(context(), V1())
    assert rec.calls == ["after"]
    assert len(rec.failures) == 1 and rec.failures[0][1].check(KeyError)


def test_context_reply_goes_through_the_server() -> None:
    replies: list[tuple[Any, ...]] = []

    class Server:
        def send_to_connection(self, conn: Connection, type_: str, message: Any, *,
                               correlation_id: int = 0) -> None:
            replies.append(("conn", conn.id, type_, correlation_id))

        def send_to_player(self, player_id: str, type_: str, message: Any) -> None:
            replies.append(("player", player_id, type_))

        def send_to_players(self, player_ids: Any, type_: str, message: Any) -> None:
            replies.append(("players", tuple(player_ids), type_))

        def publish(self, topic: str, type_: str, message: Any) -> None:
            replies.append(("topic", topic, type_))

    conn = Connection("peer", LimitsConfig(), HeartbeatConfig(), 0.0, connection_id=3)
    conn.player_id, conn.session_id = "bob", "s9"
    ctx = EventContext(conn, spec("chat.say", V1), 1, 4, 77, Server())
    ctx.reply("chat.ok", V1())
    ctx.send_to_player("carol", "chat.msg", V1())
    ctx.send_to_players(["a", "b"], "chat.msg", V1())
    ctx.publish("zone:1", "chat.msg", V1())
    assert (ctx.player_id, ctx.session_id) == ("bob", "s9")
    assert replies == [
        ("conn", 3, "chat.ok", 77),
        ("player", "carol", "chat.msg"),
        ("players", ("a", "b"), "chat.msg"),
        ("topic", "zone:1", "chat.msg"),
    ]
