"""Facts are idempotent: a fact that changes nothing changes nothing, for
every fact kind, also while a fetch or a register is in flight; and a whole
tree fed duplicates makes the same registers, fetches and sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts import token as tk
from actors.sessions.meeting.machine import MeetingCore

from .world import World

M = "m-1"
ME = "meeting:m-1"
DEFAULT = dc.session_address(M, tk.DEFAULT_SESSION)
PRACTICE = dc.session_address(M, tk.PRACTICE_SESSION)
TOKEN = tk.token_address(M)
LOCUS = "http://svc/locus/m-1"
DC_URL = "http://svc/datachannel/m-1"
PS_URL = "http://svc/datachannel/m-1/practice"


def joined(**kw: Any) -> mt.Joined:
    base: dict[str, Any] = dict(locus_url=LOCUS, self_id="me", datachannel_url=DC_URL, practice_datachannel_url=PS_URL)
    base.update(kw)
    return mt.Joined(**base)


def fresh() -> MeetingCore:
    core, _ = MeetingCore.start(M, ME, 7, None)
    return core


def online(core: MeetingCore, session: str = tk.DEFAULT_SESSION, state: str = dc.ONLINE) -> MeetingCore:
    core, _ = core.step(dc.SessionStateChanged(meeting_id=M, session_id=session, state=state, previous=dc.CONNECTING,
                                               incarnation=1), dc.session_address(M, session))
    return core


# Each fact, after a history that makes it a repeat of what is already known.
REPEATS: list[tuple[str, list[Any], Any]] = [
    ("joined", [joined()], joined()),
    ("joined-in-lobby", [joined(in_lobby=True)], joined(in_lobby=True)),
    ("admitted", [joined(in_lobby=True), mt.Admitted()], mt.Admitted()),
    ("admitted-after-join", [joined()], mt.Admitted()),
    ("lobby", [joined(), mt.Lobby()], mt.Lobby()),
    ("left", [joined(), mt.Left()], mt.Left(reason="again")),
    ("ended", [joined(), mt.MeetingEnded()], mt.MeetingEnded()),
    ("panelist", [joined(), mt.RolesChanged(panelist=True)], mt.RolesChanged(panelist=True)),
    ("attendee", [joined()], mt.RolesChanged(panelist=False)),
    ("practice-on", [joined(panelist=True), mt.PracticeSessionChanged(on=True)], mt.PracticeSessionChanged(on=True)),
    ("practice-off", [joined(panelist=True)], mt.PracticeSessionChanged(on=False)),
    ("captions", [joined(captions_on=True)], mt.CaptionsChanged(on=True)),
    ("same-url", [joined()], mt.DatachannelUrlChanged(url=DC_URL)),
    ("same-practice-url", [joined()], mt.PracticeDatachannelUrlChanged(url=PS_URL)),
    ("same-locus-url", [joined()], mt.LocusUrlReplaced(locus_url=LOCUS)),
    ("equal-snapshot", [mt.LocusSnapshot(joined=True, locus_url=LOCUS, self_id="me", datachannel_url=DC_URL,
                                         practice_datachannel_url=PS_URL, panelist=True, practice_session_on=True)],
     mt.LocusSnapshot(joined=True, locus_url=LOCUS, self_id="me", datachannel_url=DC_URL,
                      practice_datachannel_url=PS_URL, panelist=True, practice_session_on=True)),
]


IN_FLIGHT = ("nothing", "default-connecting", "practice-ensure")
# After a promotion into the practice session these facts are news (a
# demotion, a join that resets roles), not repeats: not cases of this test.
NEWS_AFTER_PROMOTION = {"joined", "joined-in-lobby", "attendee", "practice-off"}
CASES = [pytest.param(history, repeat, in_flight, id=f"{in_flight}-{name}")
         for in_flight in IN_FLIGHT for name, history, repeat in REPEATS
         if not (in_flight == "practice-ensure" and name in NEWS_AFTER_PROMOTION)]


@pytest.mark.parametrize("history,repeat,in_flight", CASES)
def test_a_fact_that_changes_nothing_changes_nothing(history: list[Any], repeat: Any, in_flight: str) -> None:
    core = fresh()
    for fact in history:
        core, _ = core.step(fact, "app:1")
    if in_flight == "default-connecting":
        core = online(core, state=dc.CONNECTING)
    elif in_flight == "practice-ensure":
        core, _ = core.step(mt.RolesChanged(panelist=True), "app:1")
        core, _ = core.step(mt.PracticeSessionChanged(on=True), "app:1")
        core = online(core)
        assert core.practice_token == "ensuring" or not core.facts.admitted
    before = core
    after, effects = core.step(repeat, "app:1")
    assert after.facts == before.facts, "not a repeat: the case list is wrong"
    assert effects == []  # no child message, no event, no checkpoint
    assert after.generation == before.generation
    assert after.commanded == before.commanded and after.practice_token == before.practice_token
    assert after.facts == before.facts


def test_three_admissions_configure_the_token_actor_once() -> None:
    core = fresh()
    core, first = core.step(joined(in_lobby=True), "app:1")
    configures = [e.message for e in first if getattr(e, "to", None) == TOKEN]
    for _ in range(3):
        core, effects = core.step(mt.Admitted(), "app:1")
        configures += [e.message for e in effects if getattr(e, "to", None) == TOKEN]
    assert [type(m) for m in configures] == [tk.TokenConfigure]


def test_a_repeated_join_with_tokens_seeds_them_once() -> None:
    core = fresh()
    core, effects = core.step(joined(datachannel_token="SECRET-A"), "app:1")
    assert [type(e.message) for e in effects if getattr(e, "to", None) == TOKEN] == [tk.TokenConfigure, tk.TokenSeed]
    core, effects = core.step(joined(datachannel_token="SECRET-A"), "app:1")
    assert effects == []


def test_one_admission_makes_one_fetch_one_register_one_socket_however_often_it_is_repeated() -> None:
    world = World()
    world.fact(joined(in_lobby=True))
    world.fact(mt.Admitted(), settle=False)
    world.fact(mt.Admitted())  # while the first is being carried out
    assert world.fetches_in_flight
    world.fact(mt.Admitted())  # while the token fetch is in flight
    world.fact(mt.Admitted())
    world.finish_fetches()
    world.fact(mt.Admitted())  # once online
    assert world.fetches == [tk.DEFAULT_SESSION]
    assert world.registers == [DC_URL] and len(world.sockets) == 1
    assert world.state(tk.DEFAULT_SESSION).state == dc.ONLINE


def test_three_practice_triggers_make_one_practice_fetch() -> None:
    world = World()
    world.fact(joined())
    world.finish_fetches()
    for fact in (mt.RolesChanged(panelist=True), mt.PracticeSessionChanged(on=True), mt.RolesChanged(panelist=True),
                 mt.PracticeSessionChanged(on=True)):
        world.fact(fact)
    world.finish_fetches()
    world.fact(mt.RolesChanged(panelist=True))
    world.finish_fetches()
    assert world.fetches.count(tk.PRACTICE_SESSION) == 1
    assert world.registers.count(PS_URL) == 1 and world.state(tk.PRACTICE_SESSION).state == dc.ONLINE


# -- the property ---------------------------------------------------------------------------

_FACTS = st.sampled_from([
    joined(), joined(in_lobby=True), joined(panelist=True, practice_session_on=True), mt.Lobby(), mt.Admitted(),
    mt.Left(), mt.MeetingEnded(), mt.RolesChanged(panelist=True), mt.RolesChanged(panelist=False),
    mt.PracticeSessionChanged(on=True), mt.PracticeSessionChanged(on=False), mt.CaptionsChanged(on=True),
    mt.CaptionsChanged(on=False), mt.DatachannelUrlChanged(url=DC_URL), mt.DatachannelUrlChanged(url=DC_URL + "-2"),
    mt.DatachannelUrlChanged(url=""), mt.PracticeDatachannelUrlChanged(url=PS_URL),
    mt.LocusUrlReplaced(locus_url=LOCUS), mt.LocusUrlReplaced(locus_url=LOCUS + "-b"),
    mt.LocusSnapshot(joined=True, locus_url=LOCUS, self_id="me", datachannel_url=DC_URL,
                     practice_datachannel_url=PS_URL, panelist=True, practice_session_on=True, captions_on=True),
])
# What happens between facts: nothing, the fetches in flight answer, or the
# default session's socket drops (a transient 1006).
_BETWEEN = st.sampled_from(["", "", "fetch", "drop"])
# Where a duplicate goes: none, at once (while the original is still being
# carried out), or once the tree settled (fetches may still be in flight).
_DUPLICATE = st.sampled_from(["", "", "at-once", "settled", "settled-twice"])


def _run(steps: list[tuple[Any, str, str]], with_duplicates: bool) -> World:
    world = World()
    for fact, between, duplicate in steps:
        at_once = with_duplicates and duplicate == "at-once"
        world.fact(fact, settle=not at_once)
        if at_once:
            world.fact(fact)
        elif with_duplicates and duplicate.startswith("settled"):
            world.fact(fact)
            if duplicate == "settled-twice":
                world.fact(fact)
        if between == "fetch":
            world.finish_fetches()
        elif between == "drop":
            world.drop(tk.DEFAULT_SESSION)
    world.finish_fetches()
    return world


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FACTS, _BETWEEN, _DUPLICATE), max_size=14))
def test_duplicates_inserted_anywhere_make_the_same_registers_fetches_and_sockets(
        steps: list[tuple[Any, str, str]]) -> None:
    plain = _run(steps, with_duplicates=False)
    doubled = _run(steps, with_duplicates=True)
    assert doubled.registers == plain.registers
    assert doubled.fetches == plain.fetches
    assert doubled.sockets == plain.sockets
    assert doubled.to_children == plain.to_children
    for session in (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION):
        assert doubled.state(session).state == plain.state(session).state
