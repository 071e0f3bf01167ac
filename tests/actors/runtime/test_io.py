"""The node's I/O loop: outcomes come back as messages, idleness covers I/O."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from actors.runtime.actor import HuddleActor
from actors.runtime.io import IoClosed, IoLoop, Outcome, confined
from actors.runtime.testkit import TestKit
from bus.messages import Message, message_kind


@message_kind("test.io-start")
@dataclass(frozen=True, slots=True)
class IoStart(Message):
    value: int
    fail: bool = False


@message_kind("test.io-done")
@dataclass(frozen=True, slots=True)
class IoDone(Message):
    value: int
    error: str = ""


class Fetcher(HuddleActor):
    def __init__(self, ctx, gate: asyncio.Event | None = None) -> None:
        super().__init__(ctx)
        self.results: list[IoDone] = []
        self.gate = gate

    def on_message(self, message, envelope):
        if isinstance(message, IoStart):
            self.run_io(self._work(message), lambda o, v=message.value: _done(v, o))
            return None
        if isinstance(message, IoDone):
            self.results.append(message)
            return None
        return super().on_message(message, envelope)

    async def _work(self, message: IoStart) -> int:
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if message.fail:
            raise ValueError("boom")
        return message.value * 2


def _done(value: int, outcome: Outcome[int]) -> IoDone:
    if outcome.ok:
        return IoDone(value=int(outcome.value or 0))
    return IoDone(value=value, error=type(outcome.error).__name__)


def test_outcome_of_an_io_request_arrives_as_a_message_and_settle_waits_for_it() -> None:
    with TestKit() as kit:
        actor = kit.spawn("fetch:1", Fetcher)
        kit.inject_message("fetch:1", IoStart(value=21))
        kit.inject_message("fetch:1", IoStart(value=5, fail=True))
        kit.settle()
        assert sorted(actor.results, key=lambda r: r.value) == [IoDone(value=5, error="ValueError"), IoDone(value=42)]


def test_settle_times_out_while_a_request_is_still_in_flight() -> None:
    with TestKit() as kit:
        loop = kit.node.io.loop
        gate = asyncio.run_coroutine_threadsafe(_make_event(), loop).result(5)
        actor = kit.spawn("fetch:2", Fetcher, gate)
        kit.inject_message("fetch:2", IoStart(value=1))
        assert not kit.node.wait_idle(0.2)  # a deadline, not a settle: the request is held on purpose
        loop.call_soon_threadsafe(gate.set)
        kit.settle()
        assert actor.results == [IoDone(value=2)]


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


def test_closed_loop_refuses_new_work_and_cancels_running_tasks() -> None:
    io = IoLoop("test-io").start()
    never = asyncio.Event()

    async def wait_forever() -> None:
        await never.wait()

    fut = io.submit(wait_forever(), tracked=False)
    io.close()
    assert fut.cancelled()

    async def nothing() -> None:
        return None

    coro = nothing()
    with pytest.raises(IoClosed):
        io.submit(coro)
    assert coro.cr_frame is None  # closed, not left un-awaited


# -- state confined to the loop ---------------------------------------------------------


class Confined:
    """An object whose state only its loop touches."""

    def __init__(self, io: IoLoop) -> None:
        self.io = io
        self.threads: list[threading.Thread] = []

    @confined
    def touch(self, value: int) -> int:
        self.threads.append(threading.current_thread())
        if value < 0:
            raise ValueError("negative")
        return value * 2


def test_a_confined_method_runs_on_the_loop_whoever_calls_it() -> None:
    io = IoLoop("test-confined")
    try:
        obj = Confined(io)
        loop_thread = io.call(threading.current_thread)
        assert loop_thread is not threading.current_thread()
        assert obj.touch(21) == 42  # from this thread: handed to the loop, answered here
        with pytest.raises(ValueError, match="negative"):
            obj.touch(-1)  # its exception comes back too
        pool = threading.Thread(target=obj.touch, args=(1,))
        pool.start()
        pool.join(5)

        async def on_loop() -> int:
            return obj.touch(3)  # on the loop: runs at once, no hand-over

        assert io.submit(on_loop()).result(5) == 6
        assert obj.threads == [loop_thread] * 4
    finally:
        io.close()
    # The loop is gone: nothing else touches the state, the caller runs it.
    assert obj.touch(5) == 10 and obj.threads[-1] is threading.current_thread()


def test_a_call_handed_to_the_loop_from_a_pool_thread_lets_the_pool_grow() -> None:
    # A blocking actor on the pool waits for the loop: counted as blocked,
    # so the pool compensates instead of starving.
    from actors.runtime.pooled import ThreadPoolDispatcher

    pool = ThreadPoolDispatcher(size=1, name="test-confined-pool")
    io = IoLoop("test-confined-pool-loop")
    gate = threading.Event()
    ran: list[str] = []

    class Runner:
        def __init__(self, name: str, fn: Any) -> None:
            self.name, self.fn = name, fn

        def _run_slice(self) -> None:
            self.fn()
            ran.append(self.name)

    try:
        obj = Confined(io)
        io.call_soon(gate.wait, 5)  # the loop is busy until the second runner opens the gate
        pool.submit(Runner("waits-for-the-loop", lambda: obj.touch(1)))
        pool.submit(Runner("opens-the-gate", gate.set))
        assert pool.wait_idle(10)
        assert ran == ["opens-the-gate", "waits-for-the-loop"]
    finally:
        gate.set()
        io.close()
