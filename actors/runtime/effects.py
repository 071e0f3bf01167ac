"""The one vocabulary of every sans-I/O core, and the helper they share.

The core contract. A core (meeting, datachannel, token, audio, transfer)
is a module-level function

    step(state, message, now, sender=None) -> (state, effects)

with no I/O and no clock of its own: ``now`` is the time its shell passes
in, ``sender`` the envelope's sender (the core decides who may say what),
and the effects are plain data its shell carries out. Which message kinds
reach it is decided before, by the shell base (:mod:`actors.runtime.shell`); a
kind it does not take is a ``TypeError`` (a bug of its shell, a crash).
The cluster's core has the same shape without ``sender``: its inputs come
from its own shell only. The datachannel core also takes ``asked`` (the
message is an ask: answer with its status). The
effects every shell knows are here, defined once:

=====================  ===================================================
:class:`Send`          tell another address (through the bus)
:class:`Emit`          publish an event on ``sys:events`` (about the actor,
                       or about the address it names)
:class:`StartTimer`    deliver a message to this actor after a delay; a
                       timer with the same key is replaced
:class:`CancelTimer`   cancel the timer with that key, if any
:class:`SaveCheckpoint` checkpoint state for the next incarnation
                       (written first: write-ahead)
:class:`Answer`        the reply to the ask being handled
=====================  ===================================================

A core with effects of its own (open a socket, write to a sink, claim a
lease) subclasses :class:`Effect` next to its step; its shell performs
them. :func:`evolve` is how cores copy their frozen state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from bus.messages import Message

__all__ = ["Answer", "CancelTimer", "Effect", "Emit", "SaveCheckpoint", "Send", "StartTimer", "evolve"]

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
    """An event on ``sys:events`` (no secrets in ``detail``) about
    ``address``: by default ("") the actor whose core emitted it; a core
    that speaks for others (the cluster's, about the addresses it holds)
    names them."""

    event: str
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    address: str = ""


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
