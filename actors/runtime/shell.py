"""The shell of a sans-I/O core: :class:`MachineActor`.

A session actor is two parts (README.md, "Session actors"): a **core** with
no I/O and no clock of its own (:mod:`actors.runtime.effects`), and a **shell** that
feeds the core its messages and carries the effects out. ``MachineActor``
is that shell's common part: it calls :meth:`MachineActor.step` with the
node's clock and performs the effects every actor needs (those of
:mod:`actors.runtime.effects`). Anything else (open a socket, send a frame, fetch a
token) is the concern of one actor kind: its shell overrides
:meth:`MachineActor.perform`, handles its own effect types and passes the
rest to ``super().perform``. A timer that fires after it was replaced or
cancelled is not delivered; cores still tag timer messages with a
generation, because a message may already be in the mailbox when its timer
is cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from actors.runtime.actor import HuddleActor
from actors.runtime.clock import TimerHandle
from actors.runtime.effects import Answer, CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["MachineActor"]


class MachineActor(HuddleActor):
    """A :class:`HuddleActor` whose behaviour is a sans-I/O core.

    Which messages reach the core is decided here, once, for every shell:

    * a kind in :attr:`public_kinds` goes to :meth:`step`, from anyone;
    * a kind in :attr:`internal_kinds` (I/O outcomes, timers: what only the
      actor itself sends) goes to :meth:`step` only from the actor's own
      address; from anyone else it is refused with a ``bad-input`` event
      (reason ``not-from-self``) and the actor goes on: nobody plants a
      token, a socket frame or a timer in another actor. It must carry this
      incarnation's lease epoch too: what an earlier incarnation elsewhere
      sent itself (a socket of its closing after the address moved) is
      refused the same way (reason ``other-incarnation``);
    * any other kind is an ``unhandled-kind`` dead letter (an ask fails
      with ``UnhandledMessage``).

    What :meth:`step` raises (a core that raises) is a crash: the
    supervisor restarts the actor. It is never taken for an unknown kind.
    """

    #: Message types the core takes from any sender.
    public_kinds: ClassVar[frozenset[type[Message]]] = frozenset()
    #: Message types the core takes only from this actor itself.
    internal_kinds: ClassVar[frozenset[type[Message]]] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timers: dict[str, TimerHandle] = {}

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        """Feed ``message`` (one of :attr:`public_kinds` or
        :attr:`internal_kinds`, already checked) to the core; return the
        effects to perform."""
        raise NotImplementedError(f"{type(self).__name__} has no core to step")

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        kind = type(message)
        if kind in self.internal_kinds:
            if envelope.sender != self.address:
                self.node.emit("bad-input", self.address, reason="not-from-self",
                               detail={"kind": message.KIND, "sender": envelope.sender or ""})
                return None
            if envelope.epoch != self.ctx.epoch:
                # News of another incarnation at this address (one that ran
                # elsewhere under another lease: its socket closing, its
                # timer): its generations may be this one's too.
                self.node.emit("bad-input", self.address, reason="other-incarnation",
                               detail={"kind": message.KIND, "epoch": envelope.epoch})
                return None
        elif kind not in self.public_kinds:
            return super().on_message(message, envelope)  # raises UnhandledMessage: a dead letter
        return self.perform_all(self.step(message, envelope, self.node.clock.now()))

    def perform_all(self, effects: Iterable[Effect]) -> Any:
        """Perform ``effects``; returns the :class:`Answer` value.

        Write-ahead: a step's checkpoint (its last :class:`SaveCheckpoint`:
        the state the step ended in) is written **before** any other effect,
        which then run in order. If an effect raises midway, the actor
        restarts from what it wanted, not from what it had before the
        command, and does the rest again."""
        ordered = list(effects)
        saves = [e for e in ordered if type(e) is SaveCheckpoint]
        if saves:
            ordered = [saves[-1], *(e for e in ordered if type(e) is not SaveCheckpoint)]
        answer = None
        for effect in ordered:
            if type(effect) is Answer:
                answer = effect.value
            else:
                self.perform(effect)
        return answer

    def perform(self, effect: Effect) -> None:
        """Carry out one common effect; shells extend this for their own."""
        match effect:
            case Send(to=to, message=message):
                self.tell(to, message)
            case Emit(event=event, reason=reason, detail=detail, address=address):
                self.node.emit(event, address or self.address, reason=reason, detail=dict(detail))
            case StartTimer(key=key, delay=delay, message=message):
                self._cancel_timer(key)
                self._timers[key] = self.send_later(delay, message)
            case CancelTimer(key=key):
                self._cancel_timer(key)
            case SaveCheckpoint(state=state):
                self.checkpoint(state)
            case _:
                raise TypeError(f"{type(self).__name__} cannot perform {effect!r}")

    def _cancel_timer(self, key: str) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _cancel_all_timers(self) -> None:
        for key in list(self._timers):
            self._cancel_timer(key)

    def on_stop(self) -> None:
        self._cancel_all_timers()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._cancel_all_timers()
        super().on_failure(*exc_info)
