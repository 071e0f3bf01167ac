"""Actors every node can host without extra code (demos, smoke checks,
cluster tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.io import Outcome
from bus.envelope import Envelope
from bus.messages import Message, Ping, Pong, message_kind

__all__ = ["BUILTIN_FACTORIES", "Counter", "CounterAck", "CounterAdd", "CounterGet", "Echo", "Relay"]


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


class Relay(HuddleActor):
    """Answers ``sys.ping`` with the answer of ``target`` to the same ping:
    a smoke check that an ask from this node reaches another and comes back
    (``huddle node --relay relay:1=echo:2``), and that the trace of the
    first ask follows both. Its handler is ``async``: it awaits the ask,
    taking its next message once the answer is in.

    Start arguments: ``target`` (the address asked).
    """

    def __init__(self, ctx: ActorContext, target: str) -> None:
        super().__init__(ctx)
        self.target = target

    async def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Ping):
            return await self.ask(self.target, message)
        return super().on_message(message, envelope)


@message_kind("counter.add")
@dataclass(frozen=True, slots=True)
class CounterAdd(Message):
    """Add ``n``; a non-empty ``tag`` is remembered (to check exactly-once).
    With ``ack_to``, a :class:`CounterAck` is told to that address once the
    new state is durable (its checkpoint is stored)."""

    n: int = 1
    tag: str = ""
    ack_to: str = ""


@message_kind("counter.ack")
@dataclass(frozen=True, slots=True)
class CounterAck(Message):
    """The addition tagged ``tag`` is durable: ``count`` after it, under the
    counter's ``epoch``."""

    address: str
    tag: str
    count: int
    epoch: int


@message_kind("counter.durable")
@dataclass(frozen=True, slots=True)
class _Durable(Message):
    """A counter's own note: the checkpoint holding ``tag`` is (not) stored."""

    tag: str
    ack_to: str
    count: int
    stored: bool


@runtime_checkable
class _ConfirmingStore(Protocol):
    """A checkpoint store that can say when a saved state is stored."""

    def confirm(self, address: str) -> Awaitable[bool]: ...


@message_kind("counter.get")
@dataclass(frozen=True, slots=True)
class CounterGet(Message):
    """Answered with ``{"count", "tags", "epoch", "node"}``."""


class Counter(HuddleActor):
    """A generic stateful actor: a count, and the tags of the additions that
    carried one (the last ``keep_tags``). It checkpoints after every change,
    so a new incarnation (a restart, a failover, a hand-off) goes on from
    there. An ask of ``counter.add`` is answered with the new count.

    Start arguments: ``start`` (the first count).
    """

    keep_tags = 10_000

    def __init__(self, ctx: ActorContext, start: int = 0) -> None:
        super().__init__(ctx)
        saved = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else {}
        self.count: int = int(saved.get("count", start))
        self.tags: list[str] = list(saved.get("tags", []))

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, CounterAdd):
            self.count += message.n
            if message.tag:
                self.tags.append(message.tag)
                del self.tags[: -self.keep_tags]
            saved = self.checkpoint({"count": self.count, "tags": self.tags})
            if message.ack_to and saved:
                self._ack_when_stored(message.tag, message.ack_to)
            return self.count
        if isinstance(message, _Durable):
            if message.stored:
                self.tell(message.ack_to, CounterAck(address=self.address, tag=message.tag, count=message.count,
                                                     epoch=self.epoch))
            return None
        if isinstance(message, CounterGet):
            return {"count": self.count, "tags": list(self.tags), "epoch": self.epoch, "node": self.node.node_id}
        return super().on_message(message, envelope)


    def _ack_when_stored(self, tag: str, ack_to: str) -> None:
        store = self.node.checkpoints
        count = self.count
        if not isinstance(store, _ConfirmingStore):
            self.tell(ack_to, CounterAck(address=self.address, tag=tag, count=count, epoch=self.epoch))
            return

        def stored(outcome: Outcome[bool]) -> Message:
            return _Durable(tag=tag, ack_to=ack_to, count=count, stored=bool(outcome.ok and outcome.value))

        self.run_io(store.confirm(self.address), stored)


#: Actors ``huddle node --actors KIND`` can start by address kind.
BUILTIN_FACTORIES: dict[str, type[HuddleActor]] = {"counter": Counter, "echo": Echo}
