"""The shell for a sans-I/O state machine.

A session actor is two parts (README.md, "Session actors"): a **core** with no I/O
and no clock of its own, ``step(state, message, now) -> (state, effects)``,
where effects are plain data; and a **shell** that feeds the core its
messages and carries the effects out. :class:`MachineActor` is that shell's
common part: it calls :meth:`MachineActor.step` with the node's clock and
performs the effects every actor needs:

=====================  ===================================================
:class:`Send`          tell another address (through the bus)
:class:`Emit`          publish an event on ``sys:events`` for this address
:class:`StartTimer`    deliver a message to this actor after a delay; a
                       timer with the same key is replaced
:class:`CancelTimer`   cancel the timer with that key, if any
:class:`SaveCheckpoint` checkpoint state for the next incarnation
                       (written first: write-ahead)
:class:`Answer`        the reply to the ask being handled
=====================  ===================================================

Anything else (open a socket, send a frame, fetch a token) is the concern of
one actor kind: its shell overrides :meth:`MachineActor.perform`, handles its
own effect types and passes the rest to ``super().perform``. A timer that
fires after it was replaced or cancelled is not delivered; cores still tag
timer messages with a generation, because a message may already be in the
mailbox when its timer is cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from actors.actor import HuddleActor
from actors.clock import TimerHandle
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["Answer", "CancelTimer", "Effect", "Emit", "MachineActor", "SaveCheckpoint", "Send", "StartTimer", "evolve"]

V = TypeVar("V")

_EVOLVERS: dict[type, Any] = {}


def evolve(value: V, **changes: Any) -> V:
    """A copy of the frozen dataclass ``value`` with ``changes``: what
    :func:`dataclasses.replace` does, at a third of its cost. Cores keep
    their state as frozen values and make several copies per message (a
    session's state has two dozen fields), so this is on every message's
    path. Like ``replace`` it refuses a name that is not a field; unlike it,
    it does not call ``__init__`` (no core's state has a ``__post_init__``
    or an ``init=False`` field)."""
    cls = type(value)
    copy = _EVOLVERS.get(cls)
    if copy is None:
        copy = _EVOLVERS[cls] = _evolver(cls)
    return copy(value, changes)  # type: ignore[no-any-return]


def _evolver(cls: type) -> Any:
    """``copy(value, changes)`` for ``cls``: one straight line per field
    (no loop, no ``getattr``), then the changes, each checked to be a field.
    Generated once per class, from the class's own field names only."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    for name in names:
        if not name.isidentifier():  # a dataclass field always is; the source below relies on it
            raise TypeError(f"{cls.__name__}: field {name!r} is not an identifier")
    lines = ["def copy(value, changes):", "    new = new_(cls)"]
    lines += [f"    put(new, {name!r}, value.{name})" for name in names]
    lines += ["    for name, item in changes.items():",
              "        if name not in names:",
              "            raise TypeError(f'{cls.__name__} has no field {name!r}')",
              "        put(new, name, item)",
              "    return new"]
    scope: dict[str, Any] = {"new_": object.__new__, "put": object.__setattr__, "cls": cls,
                             "names": frozenset(names)}
    exec(compile("\n".join(lines), f"<evolve {cls.__qualname__}>", "exec"), scope)  # noqa: S102 - field names only
    return scope["copy"]


class Effect:
    """Marker base: a plain-data instruction from a core to its shell."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Send(Effect):
    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class Emit(Effect):
    """An event about this actor (no secrets in ``detail``)."""

    event: str
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StartTimer(Effect):
    key: str
    delay: float
    message: Message


@dataclass(frozen=True, slots=True)
class CancelTimer(Effect):
    key: str


@dataclass(frozen=True, slots=True)
class SaveCheckpoint(Effect):
    """msgpack primitives only, and never a secret."""

    state: Any


@dataclass(frozen=True, slots=True)
class Answer(Effect):
    """The value that answers the ask being handled (ignored for a tell)."""

    value: Any


class MachineActor(HuddleActor):
    """A :class:`HuddleActor` whose behaviour is a sans-I/O core."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timers: dict[str, TimerHandle] = {}

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        """Feed ``message`` to the core; return the effects to perform.
        Unknown kinds: ``return super().step(...)`` (a dead letter)."""
        return super().on_message(message, envelope)  # raises UnhandledMessage

    def on_message(self, message: Message, envelope: Envelope) -> Any:
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
            case Emit(event=event, reason=reason, detail=detail):
                self.node.emit(event, self.address, reason=reason, detail=dict(detail))
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
