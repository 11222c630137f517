"""The sans-io presence rules: multi-session, grace, visibility, blocks, invisibility, groups.

Plain functions over plain data: no reactor, no backend.
"""

from __future__ import annotations

import pytest

from gateway.presence.core import (
    FRIEND,
    GUILD,
    HIDDEN,
    PARTY,
    PUBLIC,
    W_FRIEND,
    W_GROUP,
    W_SUBSCRIBED,
    Arrival,
    LocalPresence,
    Presence,
    PresenceCore,
    View,
    audience_mask,
    audience_names,
    check_text,
    expired_count,
    group_topic,
    holding_elsewhere,
    subject_topic,
    view,
    view_mask,
)

ONLINE = Presence("alice", version=10, online=True, since=100.0, last_seen=50.0,
                  zone="docks", region="eu", status="fishing", activity="idle")


# ---------------------------------------------------------------------- connections and grace


def test_presence_changes_only_on_first_connect_and_after_last_disconnect():
    local = LocalPresence(grace=5.0)
    assert local.connect("alice") is Arrival.NEW
    assert local.connect("alice") is Arrival.ANOTHER  # a second tab
    assert not local.disconnect("alice", now=10.0)  # one tab left: nothing changes
    assert local.due(100.0) == []
    assert local.disconnect("alice", now=20.0)  # the last one: the grace starts
    assert local.present("alice")
    assert local.due(24.9) == []
    assert local.due(25.0) == ["alice"]
    assert not local.present("alice")
    assert local.due(99.0) == []


def test_a_reconnect_inside_the_grace_is_not_a_departure():
    local = LocalPresence(grace=5.0)
    local.connect("alice")
    local.disconnect("alice", now=0.0)
    assert local.connect("alice") is Arrival.RETURNED
    assert local.due(10.0) == []  # the stale deadline is ignored
    local.disconnect("alice", now=20.0)
    assert local.due(24.0) == [] and local.due(25.0) == ["alice"]


def test_grace_zero_departs_at_once_and_unknown_disconnects_are_ignored():
    local = LocalPresence(grace=0.0)
    assert not local.disconnect("ghost", now=0.0)
    local.connect("bob")
    assert local.disconnect("bob", now=3.0)
    assert local.due(3.0) == ["bob"]
    assert local.players() == []


def test_deadlines_come_out_in_order_and_clear_forgets_everyone():
    local = LocalPresence(grace=1.0)
    for n, name in enumerate(["a", "b", "c"]):
        local.connect(name)
        local.disconnect(name, now=float(n))
    assert local.next_deadline() == 1.0
    assert local.due(2.5) == ["a", "b"]
    local.connect("d")
    assert sorted(local.clear()) == ["c", "d"]
    assert local.due(100.0) == []


def test_holders_on_other_instances():
    holders = {"me": b"1", "a": b"1", "b": b"0", "c": b"junk"}
    assert holding_elsewhere(holders, "me") == ["a"]
    assert holding_elsewhere({}, "me") == []


# ---------------------------------------------------------------------- visibility


def test_audiences_parse_and_print():
    assert audience_mask(["friends", "guild"]) == FRIEND | GUILD
    assert audience_mask(["party", "public"]) == PUBLIC
    assert audience_mask(["nobody"]) == 0
    assert audience_names(FRIEND | PARTY) == ["friends", "party"]
    assert audience_names(0) == ["nobody"]
    assert audience_names(PUBLIC | FRIEND) == ["public"]
    with pytest.raises(ValueError, match="unknown audience"):
        audience_mask(["everyone"])


def test_each_part_has_its_own_audience():
    subject = ONLINE.changed(vis_online=PUBLIC, vis_location=FRIEND, vis_status=GUILD)
    stranger = view(subject, view_mask(subject, 0))
    assert stranger == View(True, 0.0, "", "", "", "")
    friend = view(subject, view_mask(subject, FRIEND))
    assert (friend.zone, friend.region, friend.status) == ("docks", "eu", "")
    guildmate = view(subject, view_mask(subject, GUILD))
    assert (guildmate.zone, guildmate.status, guildmate.activity) == ("", "fishing", "idle")
    # Online state shared with nobody: nothing else shows either.
    hidden = ONLINE.changed(vis_online=0, vis_location=PUBLIC, vis_status=PUBLIC)
    assert view(hidden, view_mask(hidden, FRIEND)) == HIDDEN
    # Party-only online state.
    party = ONLINE.changed(vis_online=PARTY)
    assert view(party, view_mask(party, FRIEND | GUILD)) == HIDDEN
    assert view(party, view_mask(party, PARTY)).online


def test_offline_shows_last_seen_only():
    offline = ONLINE.changed(online=False, last_seen=200.0)
    assert view(offline, view_mask(offline, FRIEND)) == View(False, 200.0, "", "", "", "")


def test_invisible_looks_offline_to_others_and_keeps_its_last_seen():
    ghost = ONLINE.changed(invisible=True, invisible_since=90.0)
    for rel in (0, FRIEND, GUILD | PARTY):
        seen = view(ghost, view_mask(ghost, rel))
        assert seen in (View(False, 90.0, "", "", "", ""), HIDDEN)
        assert not seen.online and not seen.zone and not seen.status
    # It disconnects while invisible: the last seen others get does not move.
    gone = ghost.changed(online=False, last_seen=500.0)
    assert view(gone, view_mask(gone, FRIEND)).last_seen == 90.0
    # The player itself sees the truth.
    from gateway.presence.core import SELF

    me = view(ghost, view_mask(ghost, SELF))
    assert me.online and me.zone == "docks" and me.status == "fishing"


def test_text_limits_and_retention_helpers():
    assert check_text("hi", 10, "status") is None
    assert "longer than 3" in (check_text("four", 3, "status") or "")
    assert "control characters" in (check_text("a\nb", 10, "status") or "")
    assert expired_count([1.0, 2.0, 5.0, 1.0], cutoff=3.0) == 2
    assert expired_count([], cutoff=3.0) == 0


# ---------------------------------------------------------------------- the index


def core_with(*viewers: str, **kw) -> PresenceCore:
    core = PresenceCore(max_watched=kw.pop("max_watched", 1000))
    for name in viewers:
        core.add_viewer(name, **kw)
    return core


def test_watching_subscribes_topics_once_and_loads_unknown_states():
    core = PresenceCore()
    change = core.add_viewer("bob", friends=["alice", "carol"])
    assert sorted(change.subscribe) == sorted(subject_topic(p) for p in ("bob", "alice", "carol"))
    assert sorted(change.load) == ["alice", "bob", "carol"]
    change = core.add_viewer("dave", friends=["alice"])
    assert change.subscribe == [subject_topic("dave")]  # alice's topic is already there
    assert sorted(change.load) == ["alice", "dave"]  # still loading: asked again, harmless
    core.apply(ONLINE)
    change = core.add_viewer("erin", friends=["alice"])
    assert change.show == [("erin", "alice")] and change.load == ["erin"]
    # The last watcher leaving drops the topic and the cached state.
    for name in ("bob", "dave"):
        core.remove_viewer(name)
    assert "alice" in core.states
    change = core.remove_viewer("erin")
    assert subject_topic("alice") in change.unsubscribe and "alice" not in core.states


def test_a_change_reaches_only_viewers_whose_view_changed():
    core = PresenceCore()
    core.add_viewer("friend", friends=["alice"])
    core.add_viewer("fan", subscriptions=["alice"])
    subject = ONLINE.changed(vis_location=FRIEND)
    first = core.apply(subject)
    got = {v: viewers for _r, v, viewers in first}
    assert sorted(v for ids in got.values() for v in ids) == ["fan", "friend"]
    assert [v.zone for v, ids in got.items() if ids == ["friend"]] == ["docks"]
    # A new zone: only the friend may see zones, so only the friend hears of it.
    moved = core.apply(subject.changed(version=11, zone="market"))
    assert [(v.zone, ids) for _r, v, ids in moved] == [("market", ["friend"])]
    # Older or repeated versions are ignored.
    assert core.apply(subject.changed(version=11, zone="old")) == []
    assert core.apply(subject.changed(version=5, zone="older")) == []


def test_one_view_is_computed_once_for_many_viewers():
    core = PresenceCore()
    for n in range(50):
        core.add_viewer(f"v{n}", friends=["alice"])
    deliveries = core.apply(ONLINE)
    assert len(deliveries) == 1 and len(deliveries[0][2]) == 50


def test_a_blocked_viewer_receives_nothing():
    core = PresenceCore()
    core.add_viewer("bob", friends=["alice"], blocked_by=["alice"])
    core.add_viewer("carol", friends=["alice"])
    assert [ids for _r, _v, ids in core.apply(ONLINE)] == [["carol"]]
    assert core.view_of("bob", "alice") == HIDDEN
    # Unblocked: the current view is due, blocked again: hidden.
    assert core.set_blocked_by("bob", "alice", False)
    assert core.view_of("bob", "alice") is not None and core.view_of("bob", "alice").online
    core.set_blocked_by("bob", "alice", True)
    assert core.is_blocked("bob", "alice")
    assert core.apply(ONLINE.changed(version=11, status="x")) == [
        (ONLINE.changed(version=11, status="x"),
         view(ONLINE.changed(version=11, status="x"), view_mask(ONLINE, FRIEND)), ["carol"])]


def test_the_friend_audience_follows_the_friend_watch_reason():
    core = PresenceCore()
    core.add_viewer("bob", friends=["alice"], subscriptions=["alice"])
    subject = ONLINE.changed(vis_location=FRIEND)
    core.apply(subject)
    assert core.view_of("bob", "alice").zone == "docks"
    change = core.unwatch("bob", "alice", W_FRIEND)  # unfriended, still subscribed
    assert change.show == [("bob", "alice")] and not change.unwatched
    assert core.view_of("bob", "alice").zone == ""
    change = core.unwatch("bob", "alice", W_SUBSCRIBED)
    assert change.unwatched == [("bob", "alice")]
    assert core.view_of("bob", "alice") is None


def test_subscriptions_are_counted_and_watches_bounded():
    core = PresenceCore(max_watched=3)
    change = core.add_viewer("bob", friends=["a", "b", "c", "d", "e"])
    assert change.overflow == 2
    assert len(core.viewer("bob").watching) == 4  # three plus itself
    core2 = PresenceCore()
    core2.add_viewer("bob", subscriptions=["x", "y"])
    assert core2.viewer("bob").subscriptions == 2
    core2.watch("bob", "z", W_SUBSCRIBED)
    core2.unwatch("bob", "x", W_SUBSCRIBED)
    assert core2.viewer("bob").subscriptions == 2
    assert core2.watch("bob", "bob", W_SUBSCRIBED).subscribe == []  # never yourself


def test_group_mates_watch_each_other_and_see_the_guild_audience():
    core = PresenceCore()
    change = core.add_viewer("bob", groups={"g1": "guild"}, members={"g1": ["alice", "bob"]})
    assert group_topic("g1") in change.subscribe
    assert core.reasons("bob", "alice") == W_GROUP
    subject = ONLINE.changed(vis_status=GUILD, guilds=frozenset({"g1"}))
    core.apply(subject)
    assert core.view_of("bob", "alice").status == "fishing"
    # carol joins: local members start watching her.
    change = core.member_joined("g1", "carol")
    assert "carol" in change.load and core.reasons("bob", "carol") == W_GROUP
    # alice leaves: bob stops watching her (no other shared group, not a friend).
    change = core.member_left("g1", "alice")
    assert change.unwatched == [("bob", "alice")]
    # bob leaves: the group is gone from this instance.
    change = core.leave_group("bob", "g1")
    assert group_topic("g1") in change.unsubscribe and not core.knows_group("g1")


def test_a_shared_second_group_keeps_the_watch():
    core = PresenceCore()
    core.add_viewer("bob", groups={"g1": "guild", "p1": "party"},
                    members={"g1": ["alice"], "p1": ["alice"]})
    change = core.leave_group("bob", "g1")
    assert not change.unwatched and core.reasons("bob", "alice") == W_GROUP
    change = core.join_group("bob", "g2", "guild", ["carol"])
    assert core.reasons("bob", "carol") == W_GROUP and group_topic("g2") in change.subscribe


def test_snapshot_lists_the_viewer_first_then_everyone_it_watches():
    core = PresenceCore()
    core.add_viewer("bob", friends=["alice", "zed"])
    core.apply(ONLINE)
    core.apply(Presence("bob", version=3, online=True))
    snap = core.snapshot("bob")
    assert [s for s, _v, _view in snap] == ["bob", "alice", "zed"]
    assert snap[1][1] == 10 and snap[1][2].online
    assert snap[2][2] == HIDDEN  # nothing known about zed yet
    assert core.forget("alice") == ["bob"] and core.view_of("bob", "alice") == HIDDEN


def test_zone_population_counts_local_players_and_follows_moves():
    core = PresenceCore()
    core.add_viewer("alice")
    core.add_viewer("bob")
    core.apply(Presence("alice", version=1, online=True, zone="docks"))
    core.apply(Presence("bob", version=1, online=True, zone="docks"))
    assert core.population() == (2, {"docks": 2})
    core.apply(Presence("bob", version=2, online=True, zone="market"))
    assert core.population() == (2, {"docks": 1, "market": 1})
    core.remove_viewer("alice")
    assert core.population() == (1, {"market": 1})
    # A watched, non-local player does not count.
    core.add_viewer("carol", friends=["dave"])
    core.apply(Presence("dave", version=1, online=True, zone="docks"))
    assert core.population() == (2, {"market": 1})
