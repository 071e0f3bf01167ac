"""Async handlers: a loop actor's ``async def on_message`` runs on the
node's loop, one message at a time (mailbox order holds across its awaits),
may await asks and I/O, is cancelled when the actor is stopped, and what it
raises is a crash its supervisor sees, as for a plain handler."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import pytest
from pykka import ActorDeadError

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.builtin import Echo
from actors.runtime.sending import RemoteError
from actors.runtime.supervisor import ChildSpec
from actors.runtime.testkit import TestKit
from bus.envelope import Envelope
from bus.messages import Message, Ping, Pong

DEADLINE = 5.0


class Gates:
    """asyncio events a test opens from its own thread, by name."""

    def __init__(self, kit: TestKit) -> None:
        self.loop = kit.node.io.loop
        self.events: dict[int, asyncio.Event] = {}
        self.entered: dict[int, threading.Event] = {}

    def gate(self, n: int) -> asyncio.Event:
        event = self.events.get(n)
        if event is None:
            event = self.events[n] = asyncio.Event()
        self.entered.setdefault(n, threading.Event()).set()
        return event

    def wait_entered(self, n: int) -> None:
        assert self.entered.setdefault(n, threading.Event()).wait(DEADLINE), f"handler {n} never started"

    def open(self, n: int) -> None:
        self.loop.call_soon_threadsafe(lambda: self.gate(n).set())


class Waiter(HuddleActor):
    """Handles Ping(n) by awaiting gate n (and, for n >= 100, an ask to
    ``echo:1``); records starts and ends in order."""

    log: ClassVar[list[str]] = []
    cancelled: ClassVar[list[int]] = []

    def __init__(self, ctx: ActorContext, gates: Gates) -> None:
        super().__init__(ctx)
        self.gates = gates

    async def on_message(self, message: Message, envelope: Envelope) -> Any:
        if not isinstance(message, Ping):
            return await super().on_message(message, envelope)
        n = message.n
        Waiter.log.append(f"start {n}")
        try:
            await self.gates.gate(n).wait()
        except asyncio.CancelledError:
            Waiter.cancelled.append(n)
            raise
        if n == 13:
            raise RuntimeError("an async handler that fails")
        if n >= 100:
            pong = await self.ask("echo:1", Ping(n=n))
            n = pong.n + 1
        Waiter.log.append(f"end {n}")
        return Pong(n=n)


@pytest.fixture
def kit() -> Any:
    Waiter.log.clear()
    Waiter.cancelled.clear()
    with TestKit() as k:
        yield k


def test_one_message_at_a_time_across_awaits_in_mailbox_order(kit: TestKit) -> None:
    gates = Gates(kit)
    kit.spawn("w:1", Waiter, gates)
    first = kit.ask("w:1", Ping(n=1))
    second = kit.ask("w:1", Ping(n=2))
    gates.wait_entered(1)
    gates.open(2)  # the second's gate opens first: it must still wait its turn
    gates.open(1)
    assert first.get(timeout=DEADLINE) == Pong(n=1)
    assert second.get(timeout=DEADLINE) == Pong(n=2)
    assert Waiter.log == ["start 1", "end 1", "start 2", "end 2"]


def test_an_async_handler_awaits_an_ask_to_another_actor(kit: TestKit) -> None:
    gates = Gates(kit)
    kit.spawn("echo:1", Echo)
    kit.spawn("w:2", Waiter, gates)
    answer = kit.ask("w:2", Ping(n=100))
    gates.open(100)
    assert answer.get(timeout=DEADLINE) == Pong(n=101)


def test_what_an_async_handler_raises_is_a_crash_its_supervisor_restarts(kit: TestKit) -> None:
    gates = Gates(kit)
    kit.supervise("sup:w", [ChildSpec("w:3", Waiter, (gates,))])
    kit.settle()
    kit.node.tell("w:3", Ping(n=13))
    gates.open(13)
    kit.expect_event("crashed", "w:3", reason="RuntimeError")
    kit.advance(1)  # the restart backoff
    kit.expect_event("restarted", "w:3")
    answer = kit.ask("w:3", Ping(n=4))  # the new incarnation answers
    gates.open(4)
    assert answer.get(timeout=DEADLINE) == Pong(n=4)


def test_an_ask_whose_async_handler_raises_fails_with_the_remote_error(kit: TestKit) -> None:
    gates = Gates(kit)
    kit.spawn("w:4", Waiter, gates)
    answer = kit.ask("w:4", Ping(n=13))
    gates.open(13)
    with pytest.raises(RemoteError) as caught:
        answer.get(timeout=DEADLINE)
    assert caught.value.error_type == "RuntimeError"


def test_a_stop_cancels_the_handler_under_way_and_the_actor_stops(kit: TestKit) -> None:
    gates = Gates(kit)
    kit.spawn("w:5", Waiter, gates)
    pending = kit.ask("w:5", Ping(n=5))
    gates.wait_entered(5)  # never opened: only the stop ends it
    kit.node.stop_actor("w:5")
    kit.expect_event("stopped", "w:5")
    assert Waiter.cancelled == [5]
    with pytest.raises((ActorDeadError, RemoteError)):
        pending.get(timeout=DEADLINE)
    assert kit.node.lookup("w:5") is None


def test_an_unknown_kind_in_an_async_handler_is_a_dead_letter(kit: TestKit) -> None:
    gates = Gates(kit)
    actor = kit.spawn("w:6", Waiter, gates)
    kit.node.tell("w:6", Pong(n=1))
    kit.expect_event("dead-letter", "w:6", reason="unhandled-kind")
    assert actor.actor_ref.is_alive()


class BlockingWaiter(Waiter):
    blocking = True  # runs on the thread pool: no loop to await on


def test_an_async_handler_on_a_blocking_actor_is_refused_as_a_crash(kit: TestKit) -> None:
    gates = Gates(kit)
    kit.spawn("w:7", BlockingWaiter, gates)
    kit.node.tell("w:7", Ping(n=7))
    kit.expect_event("crashed", "w:7", reason="TypeError")
