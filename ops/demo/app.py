"""The demo's own actors, on the driver's node: the application that
subscribes to every meeting, and the incoming call.

Both are ordinary huddle actors at addresses on the bus: what reaches them
crossed Redis from the worker nodes, through the codec, like any message.
"""

from __future__ import annotations

from typing import Any

from actors.runtime.actor import ActorContext, HuddleActor
from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, PlaybackStarted
from bus.envelope import Envelope
from bus.messages import Message
from ops.demo.observed import AppLedger

__all__ = ["IncomingCall", "WebinarApp"]


class WebinarApp(HuddleActor):
    """``WebinarApp(ctx, ledger)``: the application's address. Records every
    meeting output (:class:`~actors.sessions.contracts.meeting.MeetingState`,
    ``SessionState``, ``RelayedEvent``) and what the agent's audio output
    reports (``playback_started`` / ``playback_finished``) in ``ledger``;
    anything else is a dead letter, as for any actor."""

    def __init__(self, ctx: ActorContext, ledger: AppLedger) -> None:
        super().__init__(ctx)
        self.ledger = ledger

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, mt.MeetingState | mt.SessionState | mt.RelayedEvent | PlaybackStarted
                      | PlaybackFinished):
            self.ledger.record(message)
            return None
        return super().on_message(message, envelope)


class IncomingCall(HuddleActor):
    """``IncomingCall(ctx, target, ledger)`` at ``meeting:<call id>``: a
    meeting that was never joined (an incoming call) and reaches for the
    data-channel session ``target``, which another meeting owns: it claims
    the session, then tells it to disconnect for good. The session must
    refuse both (``refused-not-owner`` events, a ``Refusal`` back here,
    recorded in ``ledger``) and keep its owner's socket."""

    def __init__(self, ctx: ActorContext, target: str, ledger: AppLedger) -> None:
        super().__init__(ctx)
        self.target = target
        self.ledger = ledger

    def on_start(self) -> None:
        self.tell(self.target, dc.ClaimSession(epoch=1))
        self.tell(self.target, dc.Disconnect(epoch=1, permanent=True, reason="incoming call takes the data channel"))

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, dc.Refusal):
            self.ledger.record(message)
            return None
        return super().on_message(message, envelope)
