"""Message kinds the runtime itself sends (supervision, timers)."""

from __future__ import annotations

from dataclasses import dataclass

from bus.messages import Message, message_kind

__all__ = ["ChildExit", "RestartChild"]


@message_kind("sys.child-exit")
@dataclass(frozen=True, slots=True)
class ChildExit(Message):
    """Sent by the node (never by the child) to a child's supervisor when the
    child stops. ``crashed`` is true for an abnormal exit; ``reason`` names
    the exception type; ``incarnation`` tells which start of the child it was;
    ``parent_epoch`` is the lease epoch of the supervisor that started it (0
    outside a cluster): a supervisor takes only its own children's exits.
    """

    address: str
    crashed: bool
    reason: str = ""
    incarnation: int = 0
    parent_epoch: int = 0


@message_kind("sys.restart-child")
@dataclass(frozen=True, slots=True)
class RestartChild(Message):
    """A supervisor's own timer: restart ``address`` now (after backoff)."""

    address: str
    generation: int
