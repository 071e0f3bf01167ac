"""Actors every node can host without extra code (demos, smoke checks)."""

from __future__ import annotations

from typing import Any

from actors.node import ActorContext, HuddleActor
from bus.envelope import Envelope
from bus.messages import Message, Ping, Pong

__all__ = ["Echo"]


class Echo(HuddleActor):
    """Answers ``sys.ping`` with ``sys.pong`` (same ``n`` and payload).

    An ask gets the pong as its reply; a tell with a sender gets a pong told
    back to the sender. Counts what it handled in ``handled``.
    """

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx)
        self.handled = 0

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Ping):
            self.handled += 1
            pong = Pong(n=message.n, payload=message.payload)
            if envelope.reply_to is not None:
                return pong
            if envelope.sender:
                self.tell(envelope.sender, pong)
            return None
        return super().on_message(message, envelope)
