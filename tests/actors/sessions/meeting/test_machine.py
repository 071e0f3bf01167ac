"""The meeting core (docs/protocol.md §2), scenario by scenario, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts import token as tk
from actors.runtime.effects import CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer
from actors.sessions.meeting.machine import PRACTICE_TOKEN_RETRY_CAP_S, MeetingCore

from .world import World

M = "m-1"
ME = "meeting:m-1"
DEFAULT = dc.session_address(M, tk.DEFAULT_SESSION)
PRACTICE = dc.session_address(M, tk.PRACTICE_SESSION)
TOKEN = tk.token_address(M)
DC_URL = "http://svc/datachannel/m-1"
PS_URL = "http://svc/datachannel/m-1/practice"


def start(**kw: Any) -> tuple[MeetingCore, list[Effect]]:
    return MeetingCore.start(M, ME, 7, kw.pop("checkpoint", None), **kw)


def sends(effects: list[Effect], to: str | None = None, kind: type | None = None) -> list[Any]:
    return [e.message for e in effects if isinstance(e, Send) and (to is None or e.to == to)
            and (kind is None or isinstance(e.message, kind))]


def joined(**kw: Any) -> mt.Joined:
    base = dict(locus_url="http://svc/locus/m-1", self_id="me", datachannel_url=DC_URL)
    base.update(kw)
    return mt.Joined(**base)


def online(core: MeetingCore, session: str = tk.DEFAULT_SESSION, state: str = dc.ONLINE, previous: str = dc.CONNECTING):
    return core.step(dc.SessionStateChanged(meeting_id=M, session_id=session, state=state, previous=previous),
                     dc.session_address(M, session))


def admitted_online() -> MeetingCore:
    core, _ = start()
    core, _ = core.step(joined(), "app:1")
    core, _ = online(core)
    return core


def test_start_claims_watches_asserts_and_queries_both_sessions_with_its_epoch() -> None:
    _, effects = start()
    for session in (DEFAULT, PRACTICE):
        claim, watch, asserted, status = sends(effects, session)
        assert claim == dc.ClaimSession(epoch=7)
        assert watch == dc.Watch(epoch=7, watcher=ME)
        # A fresh meeting wants nothing: said so, completely.
        assert asserted == dc.Assert(epoch=7, datachannel_url="", token_auth=True, subchannels=[],
                                     reason="meeting idle")
        assert status == dc.GetStatus()


def test_joined_and_admitted_connects_the_default_session_only() -> None:
    core, _ = start()
    core, effects = core.step(joined(), "app:1")
    assert sends(effects, DEFAULT, dc.Connect) == [dc.Connect(epoch=7, datachannel_url=DC_URL, token_auth=True)]
    assert sends(effects, PRACTICE) == []
    configure = sends(effects, TOKEN, tk.TokenConfigure)
    assert configure == [tk.TokenConfigure(locus_url="http://svc/locus/m-1", self_id="me", generation=core.generation)]


def test_s2_same_facts_again_changes_nothing() -> None:
    core = admitted_online()
    core, effects = core.step(mt.DatachannelUrlChanged(url=DC_URL), "app:1")
    assert sends(effects, DEFAULT) == []


def test_s16_session_commands_carry_the_owner_epoch_and_only_go_to_own_sessions() -> None:
    core = admitted_online()
    core, effects = core.step(mt.Left(), "app:1")
    targets = {e.to for e in effects if isinstance(e, Send) and e.to.startswith("datachannel:")}
    assert targets <= {DEFAULT, PRACTICE}
    assert all(m.epoch == 7 for m in sends(effects, DEFAULT))


def test_s17_cleared_datachannel_url_keeps_the_connection() -> None:
    core = admitted_online()
    core, effects = core.step(mt.DatachannelUrlChanged(url=""), "app:1")
    assert sends(effects, DEFAULT) == []
    assert core.commanded[tk.DEFAULT_SESSION].url == DC_URL


def panelist_both_online() -> MeetingCore:
    """Admitted panelist with captions, both sessions commanded and online."""
    core, _ = start(token_auth=False)
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True,
                               captions_on=True), "app:1")
    core, _ = online(core)
    core, _ = online(core, tk.PRACTICE_SESSION)
    assert core.commanded[tk.PRACTICE_SESSION].url == PS_URL
    return core


def snapshot(**kw: Any) -> mt.LocusSnapshot:
    base: dict[str, Any] = dict(joined=True, locus_url="http://svc/locus/m-1", self_id="me", datachannel_url=DC_URL,
                                practice_datachannel_url=PS_URL, panelist=True, practice_session_on=True,
                                captions_on=True)
    base.update(kw)
    return mt.LocusSnapshot(**base)


# Every source of a URL fact that can arrive without one (S17).
CLEARED = [
    pytest.param(snapshot(datachannel_url=""), id="snapshot-default"),
    pytest.param(snapshot(practice_datachannel_url=""), id="snapshot-practice"),
    pytest.param(snapshot(datachannel_url="", practice_datachannel_url=""), id="snapshot-both"),
    pytest.param(mt.DatachannelUrlChanged(url=""), id="delta-default"),
    pytest.param(mt.PracticeDatachannelUrlChanged(url=""), id="delta-practice"),
    pytest.param(joined(datachannel_url="", practice_datachannel_url="", practice_session_on=True, panelist=True,
                        captions_on=True), id="join"),
]


@pytest.mark.parametrize("fact", CLEARED)
def test_s17_an_empty_url_from_any_source_keeps_the_known_url_and_the_connection(fact: Any) -> None:
    core = panelist_both_online()
    before = core.facts
    core, effects = core.step(fact, "app:1")
    assert sends(effects, DEFAULT) == [] and sends(effects, PRACTICE) == []
    assert core.facts.datachannel_url == DC_URL and core.facts.practice_datachannel_url == PS_URL
    assert core.facts == before
    assert core.commanded[tk.DEFAULT_SESSION].url == DC_URL
    assert core.commanded[tk.PRACTICE_SESSION].url == PS_URL


def test_s17_a_snapshot_without_urls_still_takes_its_other_facts() -> None:
    core = panelist_both_online()
    core, effects = core.step(snapshot(datachannel_url="", practice_datachannel_url="", captions_on=False), "app:1")
    assert not sends(effects, DEFAULT, dc.Disconnect) and not sends(effects, DEFAULT, dc.Connect)
    assert sends(effects, DEFAULT, dc.Unsubscribe) == [dc.Unsubscribe(epoch=7, subchannels=["transcription"])]
    assert sends(effects, PRACTICE, dc.Unsubscribe) == [dc.Unsubscribe(epoch=7, subchannels=["transcription"])]
    assert core.facts.datachannel_url == DC_URL and not core.facts.captions_on
    # A demotion in the same snapshot still ends the practice session, and
    # only it: the empty URL is not what disconnects.
    core, effects = core.step(snapshot(datachannel_url="", practice_datachannel_url="", captions_on=False,
                                       panelist=False), "app:1")
    assert sends(effects, DEFAULT) == []
    assert [d.permanent for d in sends(effects, PRACTICE, dc.Disconnect)] == [True]


def test_s17_a_snapshot_with_a_new_url_still_moves_the_session() -> None:
    core = panelist_both_online()
    core, effects = core.step(snapshot(datachannel_url=DC_URL + "-new", practice_datachannel_url=""), "app:1")
    assert sends(effects, DEFAULT, dc.Connect) == [dc.Connect(epoch=7, datachannel_url=DC_URL + "-new",
                                                              token_auth=False)]
    assert sends(effects, PRACTICE) == []


def test_s17_in_the_tree_a_snapshot_without_urls_keeps_both_sockets() -> None:
    world = World()
    world.fact(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True))
    world.finish_fetches()
    world.finish_fetches()
    links = [world.state(s).link for s in (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)]
    assert all(link is not None for link in links)
    registers = list(world.registers)
    world.fact(snapshot(datachannel_url="", practice_datachannel_url=""))
    world.finish_fetches()
    assert [world.state(s).link for s in (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)] == links
    assert [world.state(s).state for s in (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)] == [dc.ONLINE, dc.ONLINE]
    assert world.registers == registers


def test_s18_changed_datachannel_url_reconnects_to_the_new_one_without_rebinding() -> None:
    core = admitted_online()
    core, effects = core.step(mt.DatachannelUrlChanged(url=DC_URL + "-new"), "app:1")
    assert sends(effects, DEFAULT) == [dc.Connect(epoch=7, datachannel_url=DC_URL + "-new", token_auth=True)]
    assert sends(effects, DEFAULT, dc.Watch) == []  # listeners bound once, at start


def test_s20_s22_after_leave_late_locus_updates_reconnect_nothing() -> None:
    core = admitted_online()
    core, effects = core.step(mt.Left(reason="hangup"), "app:1")
    assert sends(effects, DEFAULT, dc.Disconnect) == [dc.Disconnect(epoch=7, permanent=True, reason="meeting left")]
    assert sends(effects, TOKEN, tk.TokenForget) == [tk.TokenForget(generation=core.generation)]
    for late in (mt.DatachannelUrlChanged(url=DC_URL + "-2"), mt.Admitted(), mt.CaptionsChanged(on=True),
                 mt.RolesChanged(panelist=True), mt.PracticeSessionChanged(on=True)):
        core, effects = core.step(late, "app:1")
        assert sends(effects, DEFAULT, dc.Connect) == [] and sends(effects, PRACTICE, dc.Connect) == []


def test_lobby_disconnects_own_sessions_and_admission_reconnects() -> None:
    core = admitted_online()
    core, effects = core.step(mt.Lobby(), "app:1")
    assert sends(effects, DEFAULT, dc.Disconnect)
    core, effects = core.step(mt.Admitted(), "app:1")
    assert sends(effects, DEFAULT, dc.Connect) == [dc.Connect(epoch=7, datachannel_url=DC_URL, token_auth=True)]


def test_s23_admission_is_announced_at_once_and_the_connect_does_not_wait_for_a_token() -> None:
    core, _ = start()
    core, _ = core.step(mt.Subscribe(address="app:1"), "app:1")
    core, _ = core.step(joined(in_lobby=True), "app:1")
    core, effects = core.step(mt.Admitted(), "app:1")
    first_to_app = sends(effects, "app:1")
    assert first_to_app == [mt.MeetingState(meeting=M, phase="admitted")]
    assert sends(effects, DEFAULT, dc.Connect)  # the session fetches its token itself
    assert not sends(effects, TOKEN, tk.TokenEnsure)


def test_s27_promoted_panelist_ensures_the_practice_token_then_connects_once_default_is_online() -> None:
    core, _ = start()
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True), "app:1")
    core, effects = core.step(mt.RolesChanged(panelist=True), "app:1")
    assert sends(effects, PRACTICE) == []  # the default session is not online yet
    core, effects = online(core)
    ensure = sends(effects, TOKEN, tk.TokenEnsure)
    assert ensure == [tk.TokenEnsure(session_type=tk.PRACTICE_SESSION, request_id=f"g{core.generation}")]
    assert sends(effects, PRACTICE) == []  # not before the token is held
    core, effects = core.step(tk.TokenHeld(session_type=tk.PRACTICE_SESSION, request_id=ensure[0].request_id,
                                           expires_at=1e10), TOKEN)
    assert sends(effects, PRACTICE, dc.Connect) == [dc.Connect(epoch=7, datachannel_url=PS_URL, token_auth=True)]
    # The moment is an event, with what the meeting knew of the default
    # session then (the simulation checks it on every start).
    assert [e.detail for e in effects if isinstance(e, Emit) and e.event == "practice-session-started"] == [
        {"default_session": dc.ONLINE}]


def test_s27_a_default_session_that_dropped_during_the_token_await_holds_the_practice_start_back() -> None:
    core, _ = start()
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, effects = online(core)
    [ensure] = sends(effects, TOKEN, tk.TokenEnsure)
    core, _ = online(core, state=dc.BACKOFF, previous=dc.ONLINE)
    core, effects = core.step(tk.TokenHeld(session_type=tk.PRACTICE_SESSION, request_id=ensure.request_id,
                                           expires_at=1e10), TOKEN)
    assert sends(effects, PRACTICE) == []
    assert not [e for e in effects if isinstance(e, Emit) and e.event == "practice-session-started"]
    core, effects = online(core, previous=dc.CONNECTING)
    assert sends(effects, PRACTICE, dc.Connect) == [dc.Connect(epoch=7, datachannel_url=PS_URL, token_auth=True)]


def test_an_unavailable_practice_token_is_asked_for_again_on_a_timer_with_backoff() -> None:
    """A failed fetch (an endpoint outage, a failover) never gives the
    wanted practice session up: the meeting's own timer asks again, each
    time later, until the token is held; then it connects."""
    core, _ = start()
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, effects = online(core)
    delays = []
    for _ in range(8):
        ensure = sends(effects, TOKEN, tk.TokenEnsure)
        assert len(ensure) == 1
        core, effects = core.step(tk.TokenUnavailable(session_type=tk.PRACTICE_SESSION,
                                                      request_id=ensure[0].request_id,
                                                      reason="fetch-failed:timeout"), TOKEN)
        assert sends(effects, PRACTICE) == [] and sends(effects, TOKEN) == []
        [timer] = [e for e in effects if isinstance(e, StartTimer)]
        delays.append(timer.delay)
        core, effects = core.step(timer.message, ME)
    assert delays == sorted(delays) and delays[0] < 1 and delays[-1] == PRACTICE_TOKEN_RETRY_CAP_S
    ensure = sends(effects, TOKEN, tk.TokenEnsure)
    core, effects = core.step(tk.TokenHeld(session_type=tk.PRACTICE_SESSION, request_id=ensure[0].request_id,
                                           expires_at=1e10), TOKEN)
    assert sends(effects, PRACTICE, dc.Connect) == [dc.Connect(epoch=7, datachannel_url=PS_URL, token_auth=True)]
    assert core.practice_token_failures == 0 and CancelTimer("practice-token-retry") in effects


def test_a_practice_token_retry_counts_only_under_its_generation() -> None:
    core, _ = start()
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, effects = online(core)
    ensure = sends(effects, TOKEN, tk.TokenEnsure)[0]
    core, effects = core.step(tk.TokenUnavailable(session_type=tk.PRACTICE_SESSION, request_id=ensure.request_id,
                                                  reason="fetch-failed:http-500"), TOKEN)
    [timer] = [e for e in effects if isinstance(e, StartTimer)]
    # (From anyone but the meeting the shell refuses it before the core sees
    # it: tests/actors/sessions/meeting/test_tree_shell.py.)
    # A newer generation asked already: the old timer is stale.
    core, effects = core.step(mt.LocusUrlReplaced(locus_url="http://svc/locus/m-1b"), "app:1")
    assert sends(effects, TOKEN, tk.TokenEnsure)
    core, effects = core.step(timer.message, ME)
    assert sends(effects, TOKEN) == [] and core.counters["stale-token-retry"] == 1


def test_a_token_answer_of_an_older_generation_is_dropped() -> None:
    core, _ = start()
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, effects = online(core)
    stale = sends(effects, TOKEN, tk.TokenEnsure)[0]
    core, effects = core.step(mt.LocusUrlReplaced(locus_url="http://svc/locus/m-1b"), "app:1")
    fresh = sends(effects, TOKEN, tk.TokenEnsure)
    assert fresh and fresh[0].request_id != stale.request_id
    core, effects = core.step(tk.TokenHeld(session_type=tk.PRACTICE_SESSION, request_id=stale.request_id,
                                           expires_at=1e10), TOKEN)
    assert sends(effects, PRACTICE) == [] and core.counters["stale-token-answer"] == 1


def test_demotion_disconnects_the_practice_session_only() -> None:
    core, _ = start(token_auth=False)
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, effects = online(core)
    assert sends(effects, PRACTICE, dc.Connect)
    core, effects = core.step(mt.RolesChanged(panelist=False), "app:1")
    assert sends(effects, PRACTICE, dc.Disconnect)
    assert sends(effects, DEFAULT) == []


def test_s35_captions_subscribe_both_sessions_once() -> None:
    core, _ = start(token_auth=False)
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, _ = online(core)
    core, effects = core.step(mt.CaptionsChanged(on=True), "app:1")
    assert sends(effects, DEFAULT, dc.Subscribe) == [dc.Subscribe(epoch=7, subchannels=["transcription"])]
    assert sends(effects, PRACTICE, dc.Subscribe) == [dc.Subscribe(epoch=7, subchannels=["transcription"])]
    core, effects = core.step(mt.CaptionsChanged(on=True), "app:1")
    assert sends(effects) == []


def test_s36_the_announcement_goes_on_each_session_as_it_comes_online() -> None:
    core, _ = start(token_auth=False)
    core, _ = core.step(joined(practice_datachannel_url=PS_URL, practice_session_on=True, panelist=True), "app:1")
    core, _ = online(core)
    core, effects = core.step(mt.Announce(frame={"type": "hello"}), "app:1")
    assert sends(effects, DEFAULT, dc.SendFrame) == [dc.SendFrame(epoch=7, frame={"type": "hello"})]
    core, effects = online(core, tk.PRACTICE_SESSION)
    assert sends(effects, PRACTICE, dc.SendFrame) == [dc.SendFrame(epoch=7, frame={"type": "hello"})]


def test_state_and_events_from_a_session_that_is_not_ours_are_refused() -> None:
    core = admitted_online()
    before = core.session_states
    core, effects = core.step(dc.SessionStateChanged(meeting_id=M, session_id=tk.DEFAULT_SESSION, state=dc.OFFLINE,
                                                     previous=dc.ONLINE), "datachannel:m-2/llm-default-session")
    assert core.session_states == before
    assert [e.reason for e in effects if isinstance(e, Emit)] == ["not-my-session"]


def test_relayed_events_reach_subscribers_tagged_by_session() -> None:
    core = admitted_online()
    core, _ = core.step(mt.Subscribe(address="app:1"), "app:1")
    event = dc.RelayedEvent(meeting_id=M, session_id=tk.PRACTICE_SESSION, event_type="relay.event", data={"x": 1})
    core, effects = core.step(event, PRACTICE)
    assert sends(effects, "app:1") == [mt.RelayedEvent(meeting=M, session=tk.PRACTICE_SESSION,
                                                        event_type="relay.event", data={"x": 1})]


def test_join_tokens_are_handed_to_the_token_actor_and_never_checkpointed() -> None:
    core, _ = start()
    core, effects = core.step(joined(datachannel_token="SECRET-A", practice_datachannel_token="SECRET-B"), "app:1")
    assert sends(effects, TOKEN, tk.TokenSeed)[0].default_token == "SECRET-A"
    for e in effects:
        if isinstance(e, SaveCheckpoint):
            assert "SECRET" not in repr(e.state)
    assert "SECRET" not in repr(core)


def test_restart_from_checkpoint_recommands_the_same_wanted_state() -> None:
    core = admitted_online()
    core, _ = core.step(mt.CaptionsChanged(on=True), "app:1")
    again, effects = MeetingCore.start(M, ME, 8, core.checkpoint())
    assert sends(effects, DEFAULT, dc.ClaimSession) == [dc.ClaimSession(epoch=8)]
    assert sends(effects, DEFAULT, dc.Assert) == [dc.Assert(epoch=8, datachannel_url=DC_URL, token_auth=True,
                                                            subchannels=["transcription"])]
    assert sends(effects, DEFAULT, dc.Connect) == [] and sends(effects, DEFAULT, dc.Subscribe) == []
    assert again.generation > core.generation


_EVENTS = st.sampled_from([
    mt.Lobby(), mt.Admitted(), mt.Left(), mt.DatachannelUrlChanged(url=""), mt.DatachannelUrlChanged(url=DC_URL + "-x"),
    mt.RolesChanged(panelist=True), mt.RolesChanged(panelist=False), mt.PracticeSessionChanged(on=True),
    mt.PracticeSessionChanged(on=False), mt.CaptionsChanged(on=True), mt.CaptionsChanged(on=False),
    mt.LocusUrlReplaced(locus_url="http://svc/locus/other"), "online", "offline", "practice-online",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(_EVENTS, max_size=25))
def test_commands_always_reach_the_wanted_state_and_never_come_after_leaving(events: list[Any]) -> None:
    core, _ = start(token_auth=False)
    core, _ = core.step(joined(practice_datachannel_url=PS_URL), "app:1")
    for event in events:
        if event == "online":
            core, effects = online(core)
        elif event == "offline":
            core, effects = online(core, state=dc.BACKOFF, previous=dc.ONLINE)
        elif event == "practice-online":
            core, effects = online(core, tk.PRACTICE_SESSION)
        else:
            core, effects = core.step(event, "app:1")
        if core.facts.left:
            assert not sends(effects, DEFAULT, dc.Connect) and not sends(effects, PRACTICE, dc.Connect)
        # The practice session is never wanted while the default is not online.
        if core.session_states.get(tk.DEFAULT_SESSION) != dc.ONLINE:
            assert not sends(effects, PRACTICE, dc.Connect)
