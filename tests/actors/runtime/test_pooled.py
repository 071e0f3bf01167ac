"""The pooled pykka runtime: ordering, exclusivity, bounded mailboxes,
nested blocking asks, asyncio, exit reports, the registry, StopFlag.

Most tests run on a private pool so that the number of threads is known;
a handler that must hold the pool waits on a ``threading.Event`` (with a
deadline), and is always released in ``finally``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pykka import ActorDeadError, ActorRegistry

from actors.runtime.pooled import (
    SLICE_BUDGET,
    BlockingOnLoop,
    LoopDispatcher,
    Mailbox,
    PooledActor,
    PooledFuture,
    StopFlag,
    ThreadPoolDispatcher,
    _IndexedRefs,
    default_dispatcher,
    install_indexed_registry,
)
from bus.errors import HuddleError, MailboxFull
from bus.loop import LoopThread
from tests.actors.conftest import DEADLINE, Pools, Recorder


@pytest.fixture
def pool(make_pool: Pools) -> ThreadPoolDispatcher:
    """A private one-thread pool: the hardest case for starvation."""
    return make_pool(1)


def on(pool: ThreadPoolDispatcher, cls: type[PooledActor], **attrs: Any) -> type[PooledActor]:
    """``cls`` bound to ``pool`` (and other class settings)."""
    return type(cls.__name__, (cls,), {"dispatcher": pool, **attrs})


class Log(PooledActor):
    """Records what happens to it, in order."""

    def __init__(self, log: Recorder) -> None:
        super().__init__()
        self.log = log

    def on_start(self) -> None:
        self.log.add("start")

    def on_receive(self, message: Any) -> Any:
        self.log.add(message)
        return message


class Gate(PooledActor):
    """Holds its pool thread until ``opened`` is set (or the deadline passes)."""

    def __init__(self, entered: threading.Event, opened: threading.Event) -> None:
        super().__init__()
        self.entered = entered
        self.opened = opened

    def on_receive(self, message: Any) -> Any:
        self.entered.set()
        return self.opened.wait(DEADLINE)


@pytest.fixture
def gate_events() -> Iterator[tuple[threading.Event, threading.Event]]:
    entered, opened = threading.Event(), threading.Event()
    try:
        yield entered, opened
    finally:
        opened.set()


def hold_only_thread(pool: ThreadPoolDispatcher, gate_events: tuple[threading.Event, threading.Event]) -> threading.Event:
    """Park a Gate actor on the pool's only thread; set the returned event
    to let it go."""
    entered, opened = gate_events
    on(pool, Gate).start(entered, opened).tell("hold")
    assert entered.wait(DEADLINE)
    return opened


# --------------------------------------------------------------------------
# Start, order, exclusivity


def test_on_start_runs_before_messages_queued_before_it_ran(
    pool: ThreadPoolDispatcher, gate_events: tuple[threading.Event, threading.Event], recorder: type[Recorder]
) -> None:
    opened = hold_only_thread(pool, gate_events)
    # The only pool thread is held: the actor cannot have started yet.
    log = recorder()
    ref = on(pool, Log).start(log)
    ref.tell("a")
    ref.tell("b")
    assert log.snapshot() == []
    opened.set()
    assert ref.ask("c", timeout=DEADLINE) == "c"
    assert log.snapshot() == ["start", "a", "b", "c"]


def test_messages_from_concurrent_senders_keep_each_senders_order(make_pool: Pools, recorder: type[Recorder]) -> None:
    log = recorder()
    ref = on(make_pool(2), Log).start(log)
    senders, per_sender = 4, 500
    barrier = threading.Barrier(senders)

    def send(sender: int) -> None:
        barrier.wait(DEADLINE)
        for i in range(per_sender):
            ref.tell((sender, i))

    threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert ref.ask("end", timeout=DEADLINE) == "end"

    received = [m for m in log.snapshot() if isinstance(m, tuple)]
    assert len(received) == senders * per_sender
    for sender in range(senders):
        assert [i for s, i in received if s == sender] == list(range(per_sender))


class Exclusive(PooledActor):
    """Counts how many threads are inside its handler at once."""

    def __init__(self, stats: dict[str, Any], lock: threading.Lock) -> None:
        super().__init__()
        self.stats = stats
        self.lock = lock
        self.inside = 0

    def on_receive(self, message: Any) -> Any:
        with self.lock:
            self.inside += 1
            self.stats["max"] = max(self.stats["max"], self.inside)
            self.stats["threads"].add(threading.current_thread().name)
        sum(range(2000))  # some work, so the GIL changes hands mid-handler
        with self.lock:
            self.inside -= 1
            self.stats["handled"] += 1
        return None


def test_an_actor_never_runs_two_messages_at_once(make_pool: Pools) -> None:
    pool = make_pool(4)
    lock = threading.Lock()
    stats_per_actor = [{"max": 0, "handled": 0, "threads": set()} for _ in range(8)]
    refs = [on(pool, Exclusive).start(stats, lock) for stats in stats_per_actor]
    barrier = threading.Barrier(4)

    def flood() -> None:
        barrier.wait(DEADLINE)
        for i in range(300):
            for ref in refs:
                ref.tell(i)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert pool.wait_idle(DEADLINE)

    for stats in stats_per_actor:
        assert stats["handled"] == 4 * 300
        assert stats["max"] == 1
    # The pool really ran handlers on several threads, so overlap was possible.
    assert len(set().union(*(s["threads"] for s in stats_per_actor))) > 1


def test_a_busy_actor_yields_its_thread_after_one_slice(
    pool: ThreadPoolDispatcher, gate_events: tuple[threading.Event, threading.Event], recorder: type[Recorder]
) -> None:
    opened = hold_only_thread(pool, gate_events)
    log = recorder()
    busy = on(pool, Log).start(log)
    other = on(pool, Log).start(log)
    flood = 4 * SLICE_BUDGET
    for i in range(flood):
        busy.tell(("busy", i))
    other.tell("other")
    opened.set()
    assert pool.wait_idle(DEADLINE)
    handled = [m for m in log.snapshot() if m != "start"]
    assert len(handled) == flood + 1
    # "other" ran after at most one slice of "busy", not after all of it.
    assert handled.index("other") <= SLICE_BUDGET


# --------------------------------------------------------------------------
# Bounded mailbox


def test_a_full_mailbox_refuses_with_mailbox_full_and_accepts_again_once_drained(
    pool: ThreadPoolDispatcher, recorder: type[Recorder]
) -> None:
    entered, opened = threading.Event(), threading.Event()

    class Bounded(PooledActor):
        mailbox_capacity = 3
        dispatcher = pool

        def __init__(self, log: Recorder) -> None:
            super().__init__()
            self.log = log

        def on_receive(self, message: Any) -> Any:
            if message == "hold":
                entered.set()
                opened.wait(DEADLINE)
            self.log.add(message)

    log = recorder()
    ref = Bounded.start(log)
    try:
        ref.tell("hold")
        assert entered.wait(DEADLINE)
        for i in range(3):
            ref.tell(i)
        assert len(ref.actor_inbox) == 3
        with pytest.raises(MailboxFull) as info:
            ref.tell("one too many")
        assert info.value.address == ref.actor_urn
        with pytest.raises(MailboxFull):
            ref.ask("ask too many", block=False)
    finally:
        opened.set()
    assert pool.wait_idle(DEADLINE)
    ref.tell("after")
    assert pool.wait_idle(DEADLINE)
    assert log.snapshot() == ["hold", 0, 1, 2, "after"]


# --------------------------------------------------------------------------
# Stopping


def test_tell_after_stop_raises_actor_dead_error(pool: ThreadPoolDispatcher, recorder: type[Recorder]) -> None:
    ref = on(pool, Log).start(recorder())
    assert ref.stop(timeout=DEADLINE) is True
    assert not ref.is_alive()
    with pytest.raises(ActorDeadError):
        ref.tell("late")


def test_ask_after_stop_fails_with_actor_dead_error(pool: ThreadPoolDispatcher, recorder: type[Recorder]) -> None:
    ref = on(pool, Log).start(recorder())
    ref.stop(timeout=DEADLINE)
    with pytest.raises(ActorDeadError):
        ref.ask("late", timeout=DEADLINE)
    future = ref.ask("late", block=False)
    with pytest.raises(ActorDeadError):
        future.get(timeout=DEADLINE)
    assert ref.stop(timeout=DEADLINE) is False


def test_messages_queued_behind_a_stop_are_refused_not_lost(
    pool: ThreadPoolDispatcher, gate_events: tuple[threading.Event, threading.Event]
) -> None:
    entered, opened = gate_events
    dead: list[Any] = []

    class Holder(Gate):
        dispatcher = pool

        def _on_dead_letter(self, message: Any) -> None:
            dead.append(message)

    ref = Holder.start(entered, opened)
    ref.tell("hold")
    assert entered.wait(DEADLINE)
    stopped = ref.stop(block=False)
    ref.tell("told after stop")
    asked = ref.ask("asked after stop", block=False)
    opened.set()
    assert stopped.get(timeout=DEADLINE) is True
    with pytest.raises(ActorDeadError):
        asked.get(timeout=DEADLINE)
    assert pool.wait_idle(DEADLINE)
    # A tell that the actor never handled reaches the dead-letter hook.
    assert dead == ["told after stop"]


# --------------------------------------------------------------------------
# Blocking inside handlers


class Relay(PooledActor):
    """Asks the next actor and blocks on the answer inside its handler."""

    def __init__(self, next_ref: Any) -> None:
        super().__init__()
        self.next_ref = next_ref

    def on_receive(self, message: Any) -> Any:
        if self.next_ref is None:
            return [message]
        return [message, *self.next_ref.ask(message, block=False).get(timeout=DEADLINE)]


@pytest.mark.parametrize("which", ["private", "default"])
def test_nested_blocking_asks_do_not_deadlock_a_one_thread_pool(which: str, make_pool: Pools) -> None:
    if which == "private":
        pool = make_pool(1)
        cls = on(pool, Relay)
    else:
        pool = default_dispatcher()
        assert isinstance(pool, ThreadPoolDispatcher)
        cls = Relay
    assert pool.size == 1
    c = cls.start(None)
    b = cls.start(c)
    a = cls.start(b)
    assert a.ask("x", timeout=DEADLINE) == ["x", "x", "x"]
    # The pool still works (and still has its own thread) afterwards.
    assert a.ask("y", timeout=DEADLINE) == ["y", "y", "y"]
    assert pool.threads >= pool.size


def test_blocking_on_a_future_grows_the_pool_and_the_extra_thread_retires(
    pool: ThreadPoolDispatcher, recorder: type[Recorder]
) -> None:
    class CountThreads(PooledActor):
        dispatcher = pool

        def on_receive(self, message: Any) -> Any:
            return [pool.threads]

    c = CountThreads.start()
    b = on(pool, Relay).start(c)
    # While b waits on c, a compensating thread runs c.
    assert b.ask("x", timeout=DEADLINE) == ["x", 2]
    # The extra thread leaves once it finishes a slice and is not needed.
    pinged = on(pool, Log).start(recorder())
    for _ in range(100):
        if pool.threads == pool.size:
            break
        pinged.ask("ping", timeout=DEADLINE)
    assert pool.threads == pool.size


# --------------------------------------------------------------------------
# Futures and asyncio


class Slow(PooledActor):
    """Answers once ``opened`` is set; says whether it was."""

    def __init__(self, opened: threading.Event) -> None:
        super().__init__()
        self.opened = opened

    def on_receive(self, message: Any) -> Any:
        if message == "fail":
            raise KeyError("no such thing")
        return ("opened" if self.opened.wait(DEADLINE) else "gate timed out", message)


def test_awaiting_a_future_does_not_block_the_event_loop(pool: ThreadPoolDispatcher) -> None:
    opened = threading.Event()
    ref = on(pool, Slow).start(opened)
    ticks: list[int] = []

    async def ticker() -> None:
        # Runs only if the loop is free while main() awaits the actor.
        for i in range(3):
            ticks.append(i)
            await asyncio.sleep(0)
        opened.set()

    async def main() -> Any:
        future = ref.ask("hello", block=False)
        task = asyncio.get_running_loop().create_task(ticker())
        value = await future
        await task
        return value

    try:
        assert asyncio.run(main()) == ("opened", "hello")
    finally:
        opened.set()
    assert ticks == [0, 1, 2]


def test_awaiting_a_future_raises_the_handlers_exception(pool: ThreadPoolDispatcher) -> None:
    ref = on(pool, Slow).start(threading.Event())

    async def main() -> Any:
        return await ref.ask("fail", block=False)

    with pytest.raises(KeyError, match="no such thing"):
        asyncio.run(main())


def test_a_future_set_on_the_awaiting_loops_thread_resumes_it_without_a_hand_over() -> None:
    """Set by the loop the coroutine awaits on (a node's loop reading a
    reply for a task on that loop): no call_soon_threadsafe, which writes
    the loop's self-pipe and wakes its selector; from another thread: one."""
    handed_over: list[str] = []

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        threadsafe = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            handed_over.append(threading.current_thread().name)
            return threadsafe(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        same: PooledFuture[int] = PooledFuture()
        loop.call_soon(same.set, 1)
        first = await same
        assert handed_over == []
        other: PooledFuture[int] = PooledFuture()
        go = threading.Event()

        def set_later() -> None:
            assert go.wait(DEADLINE)
            other.set(2)

        setter = threading.Thread(target=set_later, name="setter")
        setter.start()
        loop.call_soon(go.set)  # runs once the await below is parked
        second = await other
        setter.join(DEADLINE)
        return first, second

    assert asyncio.run(main()) == (1, 2)
    assert handed_over == ["setter"]


def test_awaiting_done_and_derived_futures(pool: ThreadPoolDispatcher) -> None:
    opened = threading.Event()
    opened.set()
    ref = on(pool, Slow).start(opened)

    async def main() -> tuple[Any, Any]:
        done = ref.ask("x", block=False)
        done.get(timeout=DEADLINE)
        already = await done
        stopped = await ref.stop(block=False)  # a future with a get hook
        return already, stopped

    assert asyncio.run(main()) == (("opened", "x"), True)


def test_done_callbacks_run_once_when_set_or_at_once_if_already_set() -> None:
    future: PooledFuture[int] = PooledFuture()
    seen: list[Any] = []

    def broken(_f: PooledFuture[int]) -> None:
        raise RuntimeError("a callback failing does not stop the others")

    future.add_done_callback(lambda f: seen.append(("first", f.get(timeout=0))))
    future.add_done_callback(broken)
    future.add_done_callback(lambda f: seen.append(("second", f.get(timeout=0))))
    assert not future.done()
    assert seen == []
    future.set(7)
    assert future.done()
    assert seen == [("first", 7), ("second", 7)]
    future.add_done_callback(lambda f: seen.append(("late", f.get(timeout=0))))
    assert seen[-1] == ("late", 7)


def test_done_callbacks_see_exceptions() -> None:
    future: PooledFuture[int] = PooledFuture()
    seen: list[BaseException] = []

    def check(f: PooledFuture[int]) -> None:
        try:
            f.get(timeout=0)
        except ValueError as exc:
            seen.append(exc)

    future.add_done_callback(check)
    try:
        raise ValueError("bad")
    except ValueError:
        future.set_exception()
    assert [str(e) for e in seen] == ["bad"]


# --------------------------------------------------------------------------
# Exit reports


class Reporting(PooledActor):
    """Reports its exit through the runtime's hook, like the node does."""

    def __init__(self, exits: Recorder, fail_on_start: bool = False) -> None:
        super().__init__()
        self.fail_on_start = fail_on_start
        self._exit_hook = lambda actor, error: exits.add((actor, error))

    def on_start(self) -> None:
        if self.fail_on_start:
            raise RuntimeError("cannot start")

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise ValueError("crashed on purpose")
        return message


def test_exit_hook_reports_a_crash_with_its_exception(pool: ThreadPoolDispatcher, recorder: type[Recorder]) -> None:
    exits = recorder()
    ref = on(pool, Reporting).start(exits)
    ref.tell("crash")
    assert exits.wait_count(1)
    actor, error = exits.snapshot()[0]
    assert actor.actor_urn == ref.actor_urn
    assert isinstance(error, ValueError)
    assert str(error) == "crashed on purpose"
    assert not ref.is_alive()
    assert pool.wait_idle(DEADLINE)
    assert len(exits.snapshot()) == 1


def test_exit_hook_reports_a_failed_start_as_a_crash(pool: ThreadPoolDispatcher, recorder: type[Recorder]) -> None:
    exits = recorder()
    ref = on(pool, Reporting).start(exits, fail_on_start=True)
    assert exits.wait_count(1)
    assert isinstance(exits.snapshot()[0][1], RuntimeError)
    with pytest.raises(ActorDeadError):
        ref.ask("anything", timeout=DEADLINE)


def test_exit_hook_reports_a_normal_stop_with_none(pool: ThreadPoolDispatcher, recorder: type[Recorder]) -> None:
    exits = recorder()
    ref = on(pool, Reporting).start(exits)
    assert ref.ask("hi", timeout=DEADLINE) == "hi"
    ref.stop(timeout=DEADLINE)
    assert exits.wait_count(1)
    assert exits.snapshot()[0][1] is None
    assert pool.wait_idle(DEADLINE)
    assert len(exits.snapshot()) == 1


def test_an_exception_raised_to_an_asker_does_not_stop_the_actor(
    pool: ThreadPoolDispatcher, recorder: type[Recorder]
) -> None:
    exits = recorder()
    ref = on(pool, Reporting).start(exits)
    with pytest.raises(ValueError, match="crashed on purpose"):
        ref.ask("crash", timeout=DEADLINE)
    assert ref.ask("still here", timeout=DEADLINE) == "still here"
    assert exits.snapshot() == []


# --------------------------------------------------------------------------
# Registry


def test_registry_holds_and_forgets_twenty_thousand_actors_in_order() -> None:
    install_indexed_registry()
    install_indexed_registry()  # idempotent
    assert isinstance(ActorRegistry._actor_refs, _IndexedRefs)
    # Actors that are constructed but never started: registration only.
    refs = [PooledActor().actor_ref for _ in range(20_000)]
    mine = set(refs)
    for ref in refs:
        ActorRegistry.register(ref)
    try:
        assert [r for r in ActorRegistry.get_all() if r in mine] == refs
        assert ActorRegistry.get_by_urn(refs[12_345].actor_urn) is refs[12_345]
        for ref in refs[::2]:
            ActorRegistry.unregister(ref)
        kept = refs[1::2]
        assert [r for r in ActorRegistry.get_all() if r in mine] == kept
        assert ActorRegistry.get_by_urn(refs[0].actor_urn) is None
        ActorRegistry.unregister(refs[0])  # already gone: no error
    finally:
        for ref in refs[1::2]:
            ActorRegistry.unregister(ref)
    assert not any(r in mine for r in ActorRegistry.get_all())


def test_stop_all_stops_pooled_actors_newest_first(pool: ThreadPoolDispatcher, recorder: type[Recorder]) -> None:
    stops = recorder()

    class Named(PooledActor):
        dispatcher = pool

        def __init__(self, name: int) -> None:
            super().__init__()
            self.name = name

        def on_stop(self) -> None:
            stops.add(self.name)

    refs = [Named.start(i) for i in range(50)]
    assert all(r in ActorRegistry.get_all() for r in refs)
    ActorRegistry.stop_all(timeout=DEADLINE)
    assert stops.snapshot() == list(reversed(range(50)))
    assert not any(r.is_alive() for r in refs)


# --------------------------------------------------------------------------
# StopFlag and the dispatcher


def test_stop_flag_wait_times_out_until_set_and_wakes_every_waiter() -> None:
    flag = StopFlag()
    assert not flag.is_set()
    assert flag.wait(timeout=0.01) is False
    results: list[bool] = []
    waiting = threading.Barrier(4)

    def waiter() -> None:
        waiting.wait(DEADLINE)
        results.append(flag.wait(timeout=DEADLINE))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    waiting.wait(DEADLINE)
    flag.set()
    for t in threads:
        t.join(DEADLINE)
    assert results == [True, True, True]
    assert flag.is_set()
    assert flag.wait(timeout=0) is True
    flag.clear()
    assert not flag.is_set()
    assert flag.wait(timeout=0.01) is False


def test_stop_flag_wait_from_a_pool_thread_does_not_starve_the_pool(pool: ThreadPoolDispatcher) -> None:
    flag = StopFlag()

    class Waiter(PooledActor):
        dispatcher = pool

        def on_receive(self, message: Any) -> Any:
            return flag.wait(timeout=DEADLINE)

    class Setter(PooledActor):
        dispatcher = pool

        def on_receive(self, message: Any) -> Any:
            flag.set()

    waiting = Waiter.start().ask("wait", block=False)
    # The only pool thread now waits on the flag; the setter still runs.
    Setter.start().tell("set")
    assert waiting.get(timeout=DEADLINE) is True


def test_wait_idle_is_true_only_once_every_slice_has_finished(
    pool: ThreadPoolDispatcher, gate_events: tuple[threading.Event, threading.Event]
) -> None:
    entered, opened = gate_events
    ref = on(pool, Gate).start(entered, opened)
    ref.tell("hold")
    assert entered.wait(DEADLINE)
    assert pool.wait_idle(timeout=0.05) is False
    opened.set()
    assert pool.wait_idle(DEADLINE) is True


def test_mailbox_reports_its_capacity_and_length(pool: ThreadPoolDispatcher) -> None:
    ref = on(pool, PooledActor, mailbox_capacity=5).start()
    inbox = ref.actor_inbox
    assert isinstance(inbox, Mailbox)
    assert inbox.capacity == 5
    assert len(inbox) == 0
    assert inbox.empty()


def test_slices_do_not_accumulate_tracebacks() -> None:
    """Ending a slice must not keep frames alive (it once leaked a traceback
    entry per slice into one shared exception object)."""
    import gc
    import weakref

    from actors import PooledActor

    class Sink(PooledActor):
        pass

    class Marker:
        pass

    ref = Sink.start()
    marker = Marker()
    probe = weakref.ref(marker)
    ref.ask(marker)  # handled in a slice whose frame saw the marker
    del marker
    for _ in range(50):
        ref.ask(None)
    gc.collect()
    ref.stop()
    assert probe() is None


# --------------------------------------------------------------------------
# Slices on an asyncio loop (LoopDispatcher)


@pytest.fixture
def loop_dispatcher() -> Iterator[LoopDispatcher]:
    io = LoopThread("test-slices-loop")
    try:
        yield LoopDispatcher(io)
    finally:
        ActorRegistry.stop_all(timeout=DEADLINE)
        io.close()


def test_slices_on_a_loop_run_on_its_thread_and_yield_to_the_loop_between_slices(
    loop_dispatcher: LoopDispatcher,
) -> None:
    io = loop_dispatcher.io
    handled: list[tuple[int, str]] = []
    marker_saw: list[int] = []
    done = threading.Event()
    total = 3 * SLICE_BUDGET

    class Busy(PooledActor):
        dispatcher = loop_dispatcher

        def on_receive(self, message: Any) -> Any:
            handled.append((message, threading.current_thread().name))
            if message == total - 1:
                done.set()

    ref = Busy.start()
    assert ref.ask("warm-up", block=False).get(timeout=DEADLINE) is None
    handled.clear()
    held, go = threading.Event(), threading.Event()
    io.call_soon(lambda: (held.set(), go.wait(DEADLINE)))  # the loop is busy: what follows queues up
    assert held.wait(DEADLINE)
    for n in range(total):
        ref.tell(n)
    # Another callback on the loop (a socket's reader, a lease renewal),
    # scheduled after the actor's first slice.
    io.call_soon(lambda: marker_saw.append(len(handled)))
    go.set()

    assert done.wait(DEADLINE)
    assert [n for n, _ in handled] == list(range(total))
    assert {thread for _, thread in handled} == {"test-slices-loop"}
    # The busy actor handled one budget, then the loop ran the other callback.
    assert marker_saw == [SLICE_BUDGET]
    assert loop_dispatcher.wait_idle(DEADLINE)


def test_a_blocking_wait_on_the_loop_raises_a_typed_error_naming_the_fix(
    loop_dispatcher: LoopDispatcher,
) -> None:
    never: PooledFuture[int] = PooledFuture()
    flag = StopFlag()

    class Blocks(PooledActor):
        dispatcher = loop_dispatcher

        def on_receive(self, message: Any) -> Any:
            if message == "future":
                return never.get(timeout=DEADLINE)
            return flag.wait(timeout=DEADLINE)

    ref = Blocks.start()
    for what in ("future", "flag"):
        with pytest.raises(BlockingOnLoop, match="await the future, or ask and handle the reply as a message"):
            ref.ask(what, block=False).get(timeout=DEADLINE)
    # A done future is no wait at all, and get(timeout=0) keeps pykka's meaning.
    never.set(7)
    assert ref.ask("future", block=False).get(timeout=DEADLINE) == 7
    assert isinstance(BlockingOnLoop("x"), HuddleError)


def test_huddle_actors_run_on_the_nodes_loop_unless_they_declare_they_block() -> None:
    from actors.runtime.actor import HuddleActor
    from actors.runtime.node import Node
    from bus.envelope import Envelope
    from bus.messages import Message, Ping
    from bus.transport import InProcessHub, InProcessTransport

    class Where(HuddleActor):
        def on_message(self, message: Message, envelope: Envelope) -> Any:
            return threading.current_thread().name

    class WhereBlocking(Where):
        blocking = True

    node = Node(InProcessTransport(InProcessHub()), node_id="where").start()
    try:
        node.spawn("where:loop", Where)
        node.spawn("where:pool", WhereBlocking)
        assert node.ask("where:loop", Ping(n=1)).get(timeout=DEADLINE) == node.io.name
        assert node.ask("where:pool", Ping(n=1)).get(timeout=DEADLINE) != node.io.name
        plain = Log.start(Recorder())  # a plain PooledActor: the pool, as before
        assert plain.actor_inbox._dispatcher is default_dispatcher()  # type: ignore[attr-defined]
    finally:
        node.shutdown()


def test_a_round_of_slices_on_the_loop_ends_when_its_time_is_spent(
    loop_dispatcher: LoopDispatcher, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import actors.runtime.pooled

    monkeypatch.setattr(actors.runtime.pooled, "ROUND_BUDGET_S", 0.0)  # every round is spent after one slice
    io = loop_dispatcher.io
    handled: list[str] = []
    marker_saw: list[list[str]] = []

    class Named(PooledActor):
        dispatcher = loop_dispatcher

        def on_receive(self, message: Any) -> Any:
            handled.append(message)

    first, second = Named.start(), Named.start()
    first.ask("warm-up", block=False).get(timeout=DEADLINE)
    second.ask("warm-up", block=False).get(timeout=DEADLINE)
    handled.clear()
    held, go = threading.Event(), threading.Event()
    io.call_soon(lambda: (held.set(), go.wait(DEADLINE)))
    assert held.wait(DEADLINE)
    first.tell("first")
    second.tell("second")  # both ready when the round begins
    io.call_soon(lambda: marker_saw.append(list(handled)))
    go.set()
    assert second.ask("last", block=False).get(timeout=DEADLINE) is None

    assert marker_saw == [["first"]]  # the loop got its turn between the two slices
    assert handled == ["first", "second", "last"]


def test_future_wakes_every_waiter_once_set_and_times_out_the_rest() -> None:
    # PooledFuture parks each waiting thread on a lock of its own: no wait
    # may be lost whatever the interleaving of waits, timeouts and set.
    import queue as queue_module
    import random

    from pykka import Timeout

    rng = random.Random(7)
    for round_ in range(40):
        future: PooledFuture[int] = PooledFuture()
        outcomes: list[object] = []
        lock = threading.Lock()
        start = threading.Barrier(6)

        def wait(timeout: float | None, future: PooledFuture[int] = future) -> None:
            start.wait()
            try:
                value: object = future.get(timeout=timeout)
            except Timeout:
                value = "timeout"
            with lock:
                outcomes.append((timeout, value))

        timeouts = [None, None, 0.0005, 0.001, 5.0]
        threads = [threading.Thread(target=wait, args=(t,)) for t in timeouts]
        for t in threads:
            t.start()
        start.wait()
        if rng.random() < 0.5:
            threading.Event().wait(rng.random() * 0.002)
        future.set(round_)
        for t in threads:
            t.join(DEADLINE)
            assert not t.is_alive()
        for timeout, value in outcomes:
            assert value == round_ or (value == "timeout" and timeout is not None and timeout < 1)
        assert [v for t, v in outcomes if t is None or t >= 1] == [round_] * 3
        assert future.get(timeout=0) == round_
        with pytest.raises(queue_module.Full):
            future.set(0)
        with pytest.raises(queue_module.Full):
            future.set_exception((ValueError, ValueError("x"), None))


def test_puts_from_the_loop_thread_and_other_threads_at_once_are_each_handled_once_in_order(
    loop_dispatcher: LoopDispatcher,
) -> None:
    # On its loop thread a put to an idle actor takes no lock, and a round
    # may be run early (run_pending, as the transport does after a read):
    # under any mix of the two with puts from other threads, every message
    # is handled exactly once, each producer's in the order it sent them.
    import random

    io = loop_dispatcher.io
    producers, per_producer, actors_count = 3, 400, 7
    seen: list[list[tuple[int, int]]] = [[] for _ in range(actors_count)]
    done = threading.Event()
    expected = (producers + 1) * per_producer
    counter = [0]

    class Sink(PooledActor):
        dispatcher = loop_dispatcher

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        def on_receive(self, message: Any) -> Any:
            assert threading.current_thread().name == io.name
            seen[self.index].append(message)
            counter[0] += 1
            if counter[0] == expected:
                done.set()

    refs = [Sink.start(i) for i in range(actors_count)]
    for ref in refs:
        ref.ask("warm-up", block=False).get(timeout=DEADLINE)
    for s in seen:
        s.clear()
    start = threading.Barrier(producers + 1)

    def produce(who: int) -> None:
        rng = random.Random(who)
        start.wait()
        for n in range(per_producer):
            refs[rng.randrange(actors_count)].tell((who, n))

    def produce_on_loop(n: int = 0) -> None:
        rng = random.Random(99 + n)
        for k in range(n, min(per_producer, n + rng.randint(1, 20))):
            refs[rng.randrange(actors_count)].tell((producers, k))
            if rng.random() < 0.2:
                loop_dispatcher.run_pending()
            n = k + 1
        if n < per_producer:
            io.call_soon(produce_on_loop, n)

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(producers)]
    for t in threads:
        t.start()
    start.wait()
    io.call_soon(produce_on_loop)
    for t in threads:
        t.join(DEADLINE)
    assert done.wait(DEADLINE)
    assert loop_dispatcher.wait_idle(DEADLINE)
    everything = sorted(m for s in seen for m in s)
    assert everything == sorted((w, n) for w in range(producers + 1) for n in range(per_producer))
    for s in seen:
        for who in range(producers + 1):
            mine = [n for w, n in s if w == who]
            assert mine == sorted(mine)
