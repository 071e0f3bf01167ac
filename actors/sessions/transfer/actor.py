"""The call-transfer cleanup shell, at ``transfer:<id>``.

Start arguments: the job's :class:`~actors.sessions.context.JobContext` (captured
when the job started; it names the caller's room, the room service and its
credentials) and optionally a :class:`~actors.sessions.transfer.rooms.RoomService`
(default: :meth:`HttpRoomService.for_job <actors.sessions.transfer.rooms.HttpRoomService.for_job>`).
A hang-up handled hours later, or by a restarted incarnation, uses exactly
that context: there is no other to reach for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

from actors.runtime.actor import ActorContext
from actors.sessions.context import JobContext
from actors.sessions.contracts.transfer import PartyHungUp, TransferMerged
from actors.runtime.io import Outcome
from actors.runtime.effects import Effect
from actors.runtime.shell import MachineActor
from actors.sessions.transfer import machine
from actors.sessions.service_errors import Failure
from actors.sessions.transfer.machine import (
    DeleteRoom,
    RetryDelete,
    RoomDeleteDone,
)
from actors.sessions.service_errors import ServiceError
from actors.sessions.transfer.rooms import HttpRoomService, RoomService
from bus.address import parse_address
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["TransferActor", "delete_outcome"]

log = logging.getLogger("huddle.transfer")

_PUBLIC = (TransferMerged, PartyHungUp)
_OWN = (RoomDeleteDone, RetryDelete)


def delete_outcome(attempt: int, outcome: Outcome[None]) -> RoomDeleteDone:
    if outcome.ok:
        return RoomDeleteDone(attempt)
    error = outcome.error
    if isinstance(error, ServiceError):
        return RoomDeleteDone(attempt, failure=error.cause, status=error.status)
    log.warning("room deletion failed with %s", type(error).__name__)
    return RoomDeleteDone(attempt, failure=Failure.UNREACHABLE)


class TransferActor(MachineActor):
    public_kinds = frozenset(_PUBLIC)
    internal_kinds = frozenset(_OWN)  # the room deletion's outcome and its retry timer

    def __init__(self, ctx: ActorContext, job: JobContext, rooms: RoomService | None = None) -> None:
        super().__init__(ctx)
        self.job = job
        self.rooms: RoomService = rooms if rooms is not None else HttpRoomService.for_job(job)
        transfer_id = parse_address(ctx.address).id
        self.state = machine.TransferState.restore(transfer_id, job.room_id, ctx.checkpoint)

    def on_start(self) -> None:
        super().on_start()
        self.state, effects = machine.resume(self.state)
        self.perform_all(effects)

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        self.state, effects = machine.step(self.state, message, now, envelope.sender)
        return effects

    def perform(self, effect: Effect) -> None:
        if type(effect) is DeleteRoom:
            self.run_io(self.rooms.delete_room(effect.room_id), functools.partial(delete_outcome, effect.attempt))
            return
        super().perform(effect)

    def __repr__(self) -> str:
        return f"TransferActor({self.address}, phase={self.state.phase})"
