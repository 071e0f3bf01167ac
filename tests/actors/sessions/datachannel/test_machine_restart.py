"""The data-channel core across restarts: write-ahead checkpoints, the
restored session that tells its owner and waits for its re-assertion, and
the owner's complete wanted state (``Assert``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts.datachannel import (
    CONNECTING,
    IDLE,
    OFFLINE,
    RESTORED,
    Assert,
    Disconnect,
    SessionStateChanged,
    Subscribe,
)
from actors.sessions.datachannel.machine import (
    CloseSocket,
    OpenSocket,
    Register,
    ChannelState,
    restore,
)
from actors.runtime.effects import Effect, SaveCheckpoint

from .core_driver import DC_URL, OWNER, Core, timer_message

OTHER_URL = DC_URL + "-other"


def checkpoints(effects: list[Effect]) -> list[Any]:
    return [e.state for e in effects if isinstance(e, SaveCheckpoint)]


def assert_(core: Core, url: str = DC_URL, subs: tuple[str, ...] = (), **kw: Any) -> list[Effect]:
    return core.owner(Assert(epoch=core.state.owner_epoch, datachannel_url=url, subchannels=list(subs), **kw))


def restored(core: Core, *, await_owner: float = 0.0, incarnation: int = 2) -> tuple[Core, list[Effect]]:
    """A new incarnation of ``core`` from its last checkpoint."""
    last = checkpoints(core.log)[-1]
    again = Core(await_owner=await_owner, incarnation=incarnation)
    again.state, fx = restore(again.config, last, seed=3, first_gen=incarnation << 32)
    again.log.extend(fx)
    again.last = fx
    return again, fx


# -- write-ahead -------------------------------------------------------------------------------


def test_the_checkpoint_comes_before_every_effect_that_acts_on_it() -> None:
    core = Core()
    core.claim()
    fx = core.connect()
    assert isinstance(fx[0], SaveCheckpoint) and fx[0].state["target"][0] == DC_URL
    assert any(isinstance(e, Register) for e in fx[1:])
    core.walk_attempt()
    fx = core.owner(Disconnect(epoch=1, permanent=True))
    assert isinstance(fx[0], SaveCheckpoint) and fx[0].state["target"] is None
    assert [e for e in fx if isinstance(e, CloseSocket)] == [CloseSocket(core.state.closing.gen, 1000,
                                                                          "done (permanent)")]
    assert fx.index(core.one(CloseSocket, fx)) > 0


def test_a_crash_while_disconnecting_restarts_disconnected() -> None:
    # The close (an effect after the checkpoint) raised and the actor
    # crashed: the next incarnation starts from the disconnect, not the connect.
    core = Core()
    core.online()
    core.owner(Disconnect(epoch=1, permanent=True, reason="demoted"))
    again, fx = restored(core)
    assert again.state.target is None and again.state.state == IDLE
    assert again.of(Register, fx) == [] and again.of(OpenSocket, fx) == []


# -- a restored session and its owner ----------------------------------------------------------------


def test_a_restored_session_tells_its_owner_with_its_incarnation() -> None:
    core = Core()
    core.online()
    again, fx = restored(core, incarnation=5)
    [note] = again.sent(OWNER, SessionStateChanged, fx)
    assert (note.reason, note.incarnation) == (RESTORED, 5)
    assert again.status.incarnation == 5


def test_a_restored_session_with_await_owner_opens_nothing_until_its_owner_decides() -> None:
    core = Core()
    core.online()
    again, fx = restored(core, await_owner=5.0)
    assert again.of(Register, fx) == [] and again.state.state == IDLE and again.status.awaiting_owner
    # The owner no longer wants it (the checkpoint was older than its last command).
    fx = assert_(again, url="")
    assert again.registers() == [] and again.state.target is None and not again.status.awaiting_owner
    # A late hold timer is stale: nothing opens.
    fx = again.fire(again.timer("owner-silent", again.log))
    assert again.registers() == [] and again.state.state == IDLE


def test_a_restored_session_connects_when_its_owner_re_asserts_the_connection() -> None:
    core = Core()
    core.online()
    again, _ = restored(core, await_owner=5.0)
    fx = assert_(again)
    assert [r.url for r in again.of(Register, fx)] == [DC_URL] and again.state.state == CONNECTING


def test_a_silent_owner_lets_the_restored_session_act_on_its_checkpoint() -> None:
    core = Core()
    core.online()
    again, fx = restored(core, await_owner=5.0)
    hold = again.timer("owner-silent", fx)
    assert timer_message(hold).name == "owner-silent" and hold.delay == 5.0
    fx = again.fire(hold)
    assert [r.url for r in again.of(Register, fx)] == [DC_URL]


# -- Assert ------------------------------------------------------------------------------------


def test_assert_of_what_the_session_already_is_changes_nothing() -> None:
    core = Core()
    core.online()
    core.owner(Subscribe(epoch=1, subchannels=["transcription"]))
    before = core.state
    fx = assert_(core, subs=("transcription",))
    assert core.of(Register, fx) == [] and core.frames(effects=fx) == [] and checkpoints(fx) == []
    assert core.state.link == before.link and core.state.subscriptions == ("transcription",)


def test_assert_disconnected_closes_for_good_and_sets_exact_subchannels() -> None:
    core = Core()
    gen = core.online()
    core.owner(Subscribe(epoch=1, subchannels=["transcription", "reactions"]))
    fx = assert_(core, url="", subs=("transcription",))
    frames = core.frames(gen, fx)
    assert [f["data"]["unsubscribe"] for f in frames if f.get("type") == "subchannelSubscriptionRequest"] == []
    assert core.one(CloseSocket, fx) == CloseSocket(gen, 1000, "done (permanent)")
    assert core.state.subscriptions == ("transcription",) and core.state.target is None
    core.closed(1000, "done (permanent)", gen=gen)
    assert core.state.state == OFFLINE


def test_assert_disconnected_of_an_idle_session_changes_nothing() -> None:
    core = Core()
    core.claim()
    fx = assert_(core, url="")
    assert core.state.state == IDLE and checkpoints(fx) == [] and core.sent(OWNER, SessionStateChanged, fx) == []


_COMMANDS = st.lists(st.sampled_from(["connect", "connect-other", "disconnect", "sub", "unsub", "online",
                                      "drop"]), max_size=12)


@settings(max_examples=150, deadline=None)
@given(_COMMANDS, st.sampled_from([(DC_URL, ("transcription",)), (OTHER_URL, ()), ("", ("transcription",)),
                                   ("", ())]))
def test_an_assert_repeated_changes_nothing_whatever_came_before(commands: list[str],
                                                                 want: tuple[str, tuple[str, ...]]) -> None:
    core = Core(jitter=False)
    core.claim()
    for command in commands:
        if command == "connect":
            core.connect()
        elif command == "connect-other":
            core.connect(OTHER_URL)
        elif command == "disconnect":
            core.owner(Disconnect(epoch=1))
        elif command == "sub":
            core.owner(Subscribe(epoch=1, subchannels=["transcription"]))
        elif command == "unsub":
            assert_(core, url=core.state.target.datachannel_url if core.state.target else "")
        elif command == "online" and core.state.attempt is not None and core.state.attempt.phase == "register":
            core.walk_attempt()
        elif command == "drop" and core.state.link is not None:
            core.closed(1006)
    url, subs = want
    assert_(core, url=url, subs=subs)
    state: ChannelState = core.state
    assert (state.target.datachannel_url if state.target else "") == url
    assert state.subscriptions == subs
    fx = assert_(core, url=url, subs=subs)
    assert core.state == state and fx == []
