"""The call-transfer cleanup core, driven directly (S45)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.sessions.contracts.transfer import (
    CleanupOutcome,
    PartyHungUp,
    TransferFinished,
    TransferMerged,
)
from actors.runtime.effects import Effect, Emit, SaveCheckpoint, Send, StartTimer
from actors.sessions.service_errors import Failure
from actors.sessions.transfer.machine import (
    RETRY_DELAYS_S,
    DeleteRoom,
    RetryDelete,
    RoomDeleteDone,
    TransferState,
    resume,
    step,
)
from bus.messages import Message

MEETING = "meeting:call-1"


class Core:
    def __init__(self, state: TransferState | None = None) -> None:
        self.state = state or TransferState("t-1", "room-caller")
        self.effects: list[Effect] = []

    def feed(self, message: Message, sender: str | None = "transfer:t-1") -> list[Effect]:
        self.state, effects = step(self.state, message, 0.0, sender)
        self.effects += effects
        return effects

    def merge(self) -> list[Effect]:
        return self.feed(TransferMerged(caller_id="PA_caller", agent_id="PA_agent"), MEETING)


def of(effects: list[Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def events(effects: list[Effect]) -> list[str]:
    return [e.event for e in of(effects, Emit)]


def test_s45_after_the_merge_a_hang_up_deletes_the_callers_room_and_reports() -> None:
    core = Core()
    core.merge()
    effects = core.feed(PartyHungUp("PA_caller"), MEETING)
    assert of(effects, DeleteRoom) == [DeleteRoom("room-caller", 1)]
    effects = core.feed(RoomDeleteDone(1))
    assert [(s.to, s.message) for s in of(effects, Send)] == [
        (MEETING, TransferFinished("t-1", "room-caller", CleanupOutcome.ROOM_DELETED))]
    assert "room-deleted" in events(effects)
    assert core.state.phase == "done"


def test_the_agent_hanging_up_ends_the_call_too() -> None:
    core = Core()
    core.merge()
    assert of(core.feed(PartyHungUp("PA_agent"), MEETING), DeleteRoom) == [DeleteRoom("room-caller", 1)]


def test_hang_ups_before_the_merge_or_by_bystanders_delete_nothing() -> None:
    core = Core()
    assert events(core.feed(PartyHungUp("PA_caller"))) == ["hangup-before-merge"]
    core.merge()
    assert events(core.feed(PartyHungUp("PA_someone_else"))) == ["hangup-of-bystander"]
    assert not of(core.effects, DeleteRoom)


def test_a_second_hang_up_changes_nothing() -> None:
    core = Core()
    core.merge()
    core.feed(PartyHungUp("PA_caller"))
    assert core.feed(PartyHungUp("PA_agent")) == []
    core.feed(RoomDeleteDone(1))
    assert core.feed(PartyHungUp("PA_agent")) == []
    assert len(of(core.effects, DeleteRoom)) == 1


def test_transient_failures_are_retried_with_backoff_then_given_up() -> None:
    core = Core()
    core.merge()
    [delete] = of(core.feed(PartyHungUp("PA_caller")), DeleteRoom)
    delays = []
    while True:
        effects = core.feed(RoomDeleteDone(delete.attempt, failure=Failure.http(503), status=503))
        timers = of(effects, StartTimer)
        if not timers:
            break
        delays.append(timers[0].delay)
        [delete] = of(core.feed(timers[0].message), DeleteRoom)
    assert delays == list(RETRY_DELAYS_S)
    assert delete.attempt == len(RETRY_DELAYS_S) + 1
    assert of(effects, Send)[0].message.outcome == CleanupOutcome.GAVE_UP


@pytest.mark.parametrize(("failure", "outcome"), [
    (Failure.NOT_FOUND, CleanupOutcome.ROOM_ALREADY_GONE),
    (Failure.REFUSED, CleanupOutcome.REFUSED),
])
def test_gone_or_refused_is_final(failure: str, outcome: str) -> None:
    core = Core()
    core.merge()
    core.feed(PartyHungUp("PA_caller"))
    effects = core.feed(RoomDeleteDone(1, failure=failure, status=404))
    assert not of(effects, StartTimer)
    assert of(effects, Send)[0].message.outcome == outcome


def test_a_stale_outcome_or_retry_is_dropped() -> None:
    core = Core()
    core.merge()
    core.feed(PartyHungUp("PA_caller"))
    [timer] = of(core.feed(RoomDeleteDone(1, failure=Failure.UNREACHABLE)), StartTimer)
    assert events(core.feed(RoomDeleteDone(1))) == ["stale-dropped"]  # attempt 1 again: stale
    core.feed(timer.message)
    assert core.feed(timer.message) == []  # the same retry twice
    assert core.feed(RetryDelete(7)) == []
    assert core.state.attempt == 2


def test_merged_twice_or_without_parties_is_bad_input() -> None:
    core = Core()
    assert events(core.feed(TransferMerged("", "PA_agent"))) == ["bad-input"]
    core.merge()
    assert events(core.merge()) == ["bad-input"]


def test_checkpoint_restores_and_a_deletion_in_progress_starts_over() -> None:
    core = Core()
    core.merge()
    core.feed(PartyHungUp("PA_caller"))
    saved = of(core.effects, SaveCheckpoint)[-1].state
    restored = TransferState.restore("t-1", "room-caller", msgpack.unpackb(msgpack.packb(saved)))
    assert (restored.phase, restored.caller_id, restored.notify) == ("deleting", "PA_caller", MEETING)
    resumed, effects = resume(restored)
    assert effects == [DeleteRoom("room-caller", 1)]
    assert of(step(resumed, RoomDeleteDone(1), 0.0)[1], Send)[0].message.outcome == CleanupOutcome.ROOM_DELETED
    assert resume(TransferState("t-1", "room-caller")) == (TransferState("t-1", "room-caller"), [])


@given(st.one_of(st.none(), st.integers(), st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers())))
def test_any_checkpoint_restores_to_a_valid_state(checkpoint: object) -> None:
    state = TransferState.restore("t-1", "room-caller", checkpoint)
    assert state.phase in ("waiting", "merged", "deleting", "done")
    assert (state.transfer_id, state.room_id) == ("t-1", "room-caller")
