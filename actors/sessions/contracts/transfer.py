"""Messages of the ``transfer:<id>`` actor: cleanup after a call transfer (S45).

A call transfer brings a caller and a (human or agent) party together in
the caller's room. Once they are merged, whichever of them hangs up ends
the call: the caller's room is deleted at the room service, with the room
service URL and credentials the transfer's job captured at start, however
long after the start that is.

* :class:`TransferMerged` (tell): caller and agent are merged; the sender
  is told :class:`TransferFinished` when the cleanup is over.
* :class:`PartyHungUp` (tell): a participant left. Only the caller or the
  agent of the merge ends the call; anyone else leaving changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.messages import Message, message_kind

__all__ = ["CleanupOutcome", "PartyHungUp", "TransferFinished", "TransferMerged", "transfer_address"]


def transfer_address(transfer_id: str) -> str:
    return f"transfer:{transfer_id}"


class CleanupOutcome:
    """The ``outcome`` values of :class:`TransferFinished`."""

    ROOM_DELETED = "room-deleted"
    ROOM_ALREADY_GONE = "room-already-gone"
    REFUSED = "refused"  # the room service refused the credentials
    GAVE_UP = "gave-up"  # still failing after every retry


@message_kind("transfer.merged")
@dataclass(frozen=True, slots=True)
class TransferMerged(Message):
    caller_id: str
    agent_id: str


@message_kind("transfer.party-hung-up")
@dataclass(frozen=True, slots=True)
class PartyHungUp(Message):
    participant_id: str


@message_kind("transfer.finished")
@dataclass(frozen=True, slots=True)
class TransferFinished(Message):
    transfer_id: str
    room_id: str
    outcome: str
