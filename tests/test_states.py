"""gateway.states: the transition table and its observers."""

from __future__ import annotations

import itertools

import pytest

from gateway.states import TRANSITIONS, InvalidTransition, State, StateMachine

S = State
# Written out on purpose: a change to the table must show up here.
ALLOWED = {
    (S.CONNECTING, S.CONNECTED),
    (S.CONNECTING, S.RECONNECTING),
    (S.CONNECTING, S.DISCONNECTED),
    (S.CONNECTED, S.AUTHENTICATING),
    (S.CONNECTED, S.RECONNECTING),
    (S.CONNECTED, S.DISCONNECTED),
    (S.AUTHENTICATING, S.AUTHENTICATED),
    (S.AUTHENTICATING, S.RECONNECTING),
    (S.AUTHENTICATING, S.DISCONNECTED),
    (S.AUTHENTICATED, S.RECONNECTING),
    (S.AUTHENTICATED, S.DISCONNECTED),
    (S.RECONNECTING, S.CONNECTING),
    (S.RECONNECTING, S.DISCONNECTED),
    (S.DISCONNECTED, S.CONNECTING),
}
PAIRS = [(a, b) for a, b in itertools.product(State, State) if a is not b]
REFUSED = [pair for pair in PAIRS if pair not in ALLOWED]


def test_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert set(TRANSITIONS) == set(State)


def test_starts_connecting() -> None:
    assert StateMachine().state is State.CONNECTING
    assert StateMachine(State.AUTHENTICATED).state is State.AUTHENTICATED


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED, key=lambda p: (p[0].value, p[1].value)))
def test_allowed_transition(old: State, new: State) -> None:
    machine = StateMachine(old)
    seen: list[tuple[State, State]] = []
    machine.observe(lambda a, b: seen.append((a, b)))
    assert machine.can(new)
    machine.to(new)
    assert machine.state is new
    assert seen == [(old, new)]


@pytest.mark.parametrize(("old", "new"), REFUSED)
def test_refused_transition_raises_and_changes_nothing(old: State, new: State) -> None:
    machine = StateMachine(old)
    seen: list[tuple[State, State]] = []
    machine.observe(lambda a, b: seen.append((a, b)))
    assert not machine.can(new)
    with pytest.raises(InvalidTransition) as info:
        machine.to(new)
    assert str(info.value) == f"{old.value} -> {new.value}"
    assert machine.state is old
    assert seen == []


def test_same_state_is_a_silent_no_op() -> None:
    machine = StateMachine(State.AUTHENTICATED)
    seen: list[tuple[State, State]] = []
    machine.observe(lambda a, b: seen.append((a, b)))
    machine.to(State.AUTHENTICATED)
    assert machine.state is State.AUTHENTICATED
    assert seen == []


def test_full_server_life_cycle_notifies_in_order() -> None:
    machine = StateMachine()
    seen: list[tuple[State, State]] = []
    machine.observe(lambda a, b: seen.append((a, b)))
    path = [S.CONNECTED, S.AUTHENTICATING, S.AUTHENTICATED, S.RECONNECTING, S.CONNECTING,
            S.DISCONNECTED]
    for state in path:
        machine.to(state)
    assert seen == list(zip([S.CONNECTING, *path[:-1]], path, strict=True))


def test_raising_observer_does_not_stop_others_or_the_transition() -> None:
    machine = StateMachine()
    seen: list[str] = []

    def first(old: State, new: State) -> None:
        seen.append("first")

    def broken(old: State, new: State) -> None:
        seen.append("broken")
        raise RuntimeError("observer bug")

    def last(old: State, new: State) -> None:
        seen.append(f"last {old.value}->{new.value}")

    for observer in (first, broken, last):
        machine.observe(observer)
    machine.to(State.CONNECTED)
    assert machine.state is State.CONNECTED
    assert seen == ["first", "broken", "last connecting->connected"]
    machine.to(State.AUTHENTICATING)
    assert seen[-1] == "last connected->authenticating"


def test_observe_returns_an_unsubscriber() -> None:
    machine = StateMachine()
    seen: list[State] = []
    stop = machine.observe(lambda old, new: seen.append(new))
    machine.to(State.CONNECTED)
    stop()
    machine.to(State.AUTHENTICATING)
    assert seen == [State.CONNECTED]


def test_observer_may_unsubscribe_itself_during_a_transition() -> None:
    machine = StateMachine()
    seen: list[str] = []
    stops: list[object] = []

    def once(old: State, new: State) -> None:
        seen.append("once")
        stops[0]()  # type: ignore[operator]

    stops.append(machine.observe(once))
    machine.observe(lambda old, new: seen.append("other"))
    machine.to(State.CONNECTED)
    machine.to(State.AUTHENTICATING)
    assert seen == ["once", "other", "other"]
