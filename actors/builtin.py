"""Actors every node can host without extra code (demos, smoke checks,
cluster tests and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.node import ActorContext, HuddleActor
from bus.envelope import Envelope
from bus.messages import Message, Ping, Pong, message_kind

__all__ = ["BUILTIN_FACTORIES", "Counter", "CounterAdd", "CounterGet", "Echo"]


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


@message_kind("counter.add")
@dataclass(frozen=True, slots=True)
class CounterAdd(Message):
    """Add ``n``; a non-empty ``tag`` is remembered (to check exactly-once)."""

    n: int = 1
    tag: str = ""


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
            self.checkpoint({"count": self.count, "tags": self.tags})
            return self.count
        if isinstance(message, CounterGet):
            return {"count": self.count, "tags": list(self.tags), "epoch": self.epoch, "node": self.node.node_id}
        return super().on_message(message, envelope)


#: Actors ``huddle node --actors KIND`` can start by address kind.
BUILTIN_FACTORIES: dict[str, type[HuddleActor]] = {"counter": Counter, "echo": Echo}
