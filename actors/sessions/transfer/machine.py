"""The call-transfer cleanup core (S45): no I/O, no clock.

Phases::

    waiting --TransferMerged--> merged --PartyHungUp(caller|agent)--> deleting --> done

* Before the merge a hang-up is not ours to act on (reported, ignored).
* In ``deleting`` the :class:`DeleteRoom` effect is performed by the shell
  with the job's captured room-service URL and credentials; the core only
  knows the room id. Its outcome comes back as :class:`RoomDeleteDone`,
  tagged with the attempt number; a result of another attempt is stale.
* A failure the room service may get over (unreachable, 5xx) is retried
  after 1, 2, 4, 8, 16 s; then the cleanup gives up. A 404 means the room
  is gone already (done); 401/403 means the credentials are refused (done,
  reported, no retry: the same credentials will not work better later).
* Further hang-ups change nothing. The checkpoint holds the phase and the
  parties, never a credential; an incarnation that starts in ``deleting``
  starts the deletion again (:func:`resume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.sessions.service_errors import Failure
from actors.sessions.contracts.transfer import (
    CleanupOutcome,
    PartyHungUp,
    TransferFinished,
    TransferMerged,
)
from actors.runtime.effects import Effect, Emit, SaveCheckpoint, Send, StartTimer, evolve
from bus.messages import Message, message_kind

__all__ = [
    "RETRY_DELAYS_S",
    "DeleteRoom",
    "RetryDelete",
    "RoomDeleteDone",
    "TransferState",
    "resume",
    "step",
]

#: Waits before the 2nd, 3rd ... attempt to delete the room.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)

WAITING, MERGED, DELETING, DONE = "waiting", "merged", "deleting", "done"


@message_kind("transfer.room-delete-done")
@dataclass(frozen=True, slots=True)
class RoomDeleteDone(Message):
    attempt: int
    failure: str = ""
    status: int = 0


@message_kind("transfer.retry-delete")
@dataclass(frozen=True, slots=True)
class RetryDelete(Message):
    attempt: int


@dataclass(frozen=True, slots=True)
class DeleteRoom(Effect):
    room_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class TransferState:
    transfer_id: str
    room_id: str
    phase: str = WAITING
    caller_id: str = ""
    agent_id: str = ""
    notify: str = ""
    ended_by: str = ""
    attempt: int = 0
    in_flight: bool = False  # attempt ``attempt`` has not reported yet
    outcome: str = ""

    def checkpoint(self) -> dict[str, Any]:
        return {"phase": self.phase, "caller_id": self.caller_id, "agent_id": self.agent_id,
                "notify": self.notify, "ended_by": self.ended_by, "outcome": self.outcome}

    @classmethod
    def restore(cls, transfer_id: str, room_id: str, checkpoint: object) -> TransferState:
        fresh = cls(transfer_id, room_id)
        if not isinstance(checkpoint, dict):
            return fresh
        fields = {k: checkpoint.get(k) for k in ("phase", "caller_id", "agent_id", "notify", "ended_by", "outcome")}
        if not all(isinstance(v, str) for v in fields.values()) or fields["phase"] not in (WAITING, MERGED, DELETING, DONE):
            return fresh
        return cls(transfer_id, room_id, **fields)


Step = tuple[TransferState, list[Effect]]


def step(state: TransferState, message: Message, now: float, sender: str | None = None) -> Step:
    """The core contract (:mod:`actors.runtime.effects`); this core reads no time (its
    waits are timers), ``now`` is taken for the common shape."""
    match message:
        case TransferMerged():
            return _merged(state, message, sender)
        case PartyHungUp():
            return _hung_up(state, message)
        case RoomDeleteDone():
            return _delete_done(state, message)
        case RetryDelete():
            if state.phase != DELETING or state.in_flight or message.attempt != state.attempt + 1:
                return state, []
            return _attempt(state)
    raise TypeError(f"the transfer core does not handle {type(message).__name__}")


def resume(state: TransferState) -> Step:
    """What a new incarnation does first: a deletion in progress starts over
    (its previous attempt's outcome went to the old incarnation)."""
    if state.phase == DELETING:
        return _attempt(evolve(state, attempt=0, in_flight=False))
    return state, []


def _merged(state: TransferState, message: TransferMerged, sender: str | None) -> Step:
    if state.phase != WAITING:
        return state, [Emit("bad-input", reason="merged-twice", detail={"phase": state.phase})]
    if not message.caller_id or not message.agent_id:
        return state, [Emit("bad-input", reason="merge-without-parties")]
    state = evolve(state, phase=MERGED, caller_id=message.caller_id, agent_id=message.agent_id,
                                notify=sender or "")
    return state, [SaveCheckpoint(state.checkpoint()),
                   Emit("transfer-merged", detail={"room_id": state.room_id})]


def _hung_up(state: TransferState, message: PartyHungUp) -> Step:
    who = message.participant_id
    if state.phase == WAITING:
        return state, [Emit("hangup-before-merge", detail={"participant_id": who[:100]})]
    if state.phase != MERGED:
        return state, []  # the call is already ending
    if who not in (state.caller_id, state.agent_id):
        return state, [Emit("hangup-of-bystander", detail={"participant_id": who[:100]})]
    state = evolve(state, phase=DELETING, ended_by=who)
    state, effects = _attempt(state)
    return state, [SaveCheckpoint(state.checkpoint()),
                   Emit("call-ended", detail={"ended_by": "caller" if who == state.caller_id else "agent"}), *effects]


def _attempt(state: TransferState) -> Step:
    state = evolve(state, attempt=state.attempt + 1, in_flight=True)
    return state, [DeleteRoom(state.room_id, state.attempt)]


def _delete_done(state: TransferState, message: RoomDeleteDone) -> Step:
    if state.phase != DELETING or message.attempt != state.attempt or not state.in_flight:
        return state, [Emit("stale-dropped", reason="room-delete", detail={"attempt": message.attempt})]
    state = evolve(state, in_flight=False)
    detail = {"room_id": state.room_id, "attempt": state.attempt, "status": message.status}
    if not message.failure:
        return _finish(state, CleanupOutcome.ROOM_DELETED, Emit("room-deleted", detail=detail))
    if message.failure == Failure.NOT_FOUND:
        return _finish(state, CleanupOutcome.ROOM_ALREADY_GONE, Emit("room-already-gone", detail=detail))
    if message.failure == Failure.REFUSED:
        return _finish(state, CleanupOutcome.REFUSED, Emit("room-delete-refused", reason=message.failure, detail=detail))
    if state.attempt > len(RETRY_DELAYS_S):
        return _finish(state, CleanupOutcome.GAVE_UP, Emit("room-delete-gave-up", reason=message.failure, detail=detail))
    delay = RETRY_DELAYS_S[state.attempt - 1]
    return state, [Emit("room-delete-failed", reason=message.failure, detail={**detail, "retry_in_s": delay}),
                   StartTimer("retry-delete", delay, RetryDelete(state.attempt + 1))]


def _finish(state: TransferState, outcome: str, event: Emit) -> Step:
    state = evolve(state, phase=DONE, outcome=outcome)
    effects: list[Effect] = [SaveCheckpoint(state.checkpoint()), event]
    if state.notify:
        effects.append(Send(state.notify, TransferFinished(state.transfer_id, state.room_id, outcome)))
    return state, effects
