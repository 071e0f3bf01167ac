"""Clocks: the manual clock runs due callbacks in deadline order, each at
its own time; the system clock really calls back."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from actors.runtime.clock import ManualClock, SystemClock
from tests.actors.conftest import DEADLINE

# --------------------------------------------------------------------------
# ManualClock


def test_manual_clock_runs_callbacks_in_deadline_order_each_at_its_deadline() -> None:
    clock = ManualClock(start=100.0)
    seen: list[tuple[str, float]] = []

    def record(name: str) -> None:
        seen.append((name, clock.now()))

    clock.call_later(3.0, record, "c")
    clock.call_later(1.0, record, "a")
    clock.call_later(2.0, record, "b")
    clock.call_later(2.0, record, "b2")  # same deadline: order of scheduling
    assert clock.advance(10.0) == 4
    assert seen == [("a", 101.0), ("b", 102.0), ("b2", 102.0), ("c", 103.0)]
    assert clock.now() == 110.0


def test_manual_clock_runs_nothing_before_its_deadline() -> None:
    clock = ManualClock(start=0.0)
    seen: list[float] = []
    clock.call_later(5.0, lambda: seen.append(clock.now()))
    assert clock.advance(4.999) == 0
    assert seen == []
    assert clock.pending() == 1
    assert clock.next_deadline() == 5.0
    assert clock.advance(0.001) == 1
    assert seen == [5.0]
    assert clock.pending() == 0
    assert clock.next_deadline() is None


def test_a_cancelled_callback_never_runs() -> None:
    clock = ManualClock(start=0.0)
    seen: list[str] = []
    keep = clock.call_later(1.0, seen.append, "kept")
    gone = clock.call_later(1.0, seen.append, "cancelled")
    gone.cancel()
    assert clock.pending() == 1
    assert clock.advance(2.0) == 1
    assert seen == ["kept"]
    keep.cancel()  # cancelling after it ran is harmless
    assert clock.advance(2.0) == 0


def test_advance_returns_how_many_ran_and_moves_time_when_none_did() -> None:
    clock = ManualClock(start=10.0, wall_offset=1_000.0)
    assert clock.advance(0.5) == 0
    assert clock.now() == 10.5
    assert clock.wall() == 1_010.5
    for i in range(5):
        clock.call_later(i, lambda: None)
    assert clock.advance(2.0) == 3  # delays 0, 1 and 2
    assert clock.advance(2.0) == 2


def test_callbacks_scheduled_by_callbacks_run_in_the_same_advance_if_due() -> None:
    clock = ManualClock(start=0.0)
    seen: list[tuple[str, float]] = []

    def first() -> None:
        seen.append(("first", clock.now()))
        clock.call_later(1.0, lambda: seen.append(("chained", clock.now())))
        clock.call_later(10.0, lambda: seen.append(("too late", clock.now())))

    clock.call_later(1.0, first)
    clock.call_later(2.5, lambda: seen.append(("second", clock.now())))
    assert clock.advance(3.0) == 3
    assert seen == [("first", 1.0), ("chained", 2.0), ("second", 2.5)]
    assert clock.pending() == 1


def test_a_failing_callback_does_not_stop_the_others() -> None:
    clock = ManualClock(start=0.0)
    seen: list[str] = []

    def boom() -> None:
        raise RuntimeError("timer bug")

    clock.call_later(1.0, boom)
    clock.call_later(2.0, seen.append, "after")
    assert clock.advance(3.0) == 2
    assert seen == ["after"]


def test_a_negative_delay_is_due_at_once() -> None:
    clock = ManualClock(start=0.0)
    seen: list[float] = []
    clock.call_later(-5.0, lambda: seen.append(clock.now()))
    assert clock.advance(0.0) == 1
    assert seen == [0.0]


def test_a_manual_clock_never_goes_back() -> None:
    clock = ManualClock(start=10.0)
    seen: list[float] = []
    clock.call_later(1.0, lambda: seen.append(clock.now()))
    with pytest.raises(ValueError):
        clock.advance(-1.0)
    assert clock.now() == 10.0
    assert clock.advance(1.0) == 1
    assert seen == [11.0]


def test_advance_to_the_next_deadline_runs_only_what_is_due_then_and_stops_there() -> None:
    clock = ManualClock(start=0.0)
    seen: list[tuple[str, float]] = []
    clock.call_later(1.25, lambda: seen.append(("a", clock.now())))
    clock.call_later(1.25, lambda: seen.append(("a2", clock.now())))
    clock.call_later(2.0, lambda: seen.append(("b", clock.now())))
    assert clock.next_deadline() == 1.25
    assert clock.advance_to(1.25) == 2
    assert seen == [("a", 1.25), ("a2", 1.25)] and clock.now() == 1.25
    assert clock.advance_to(clock.next_deadline() or 0.0) == 1
    assert seen[-1] == ("b", 2.0) and clock.now() == 2.0
    with pytest.raises(ValueError):
        clock.advance_to(1.0)
    assert clock.advance_to(2.0) == 0 and clock.now() == 2.0


# --------------------------------------------------------------------------
# SystemClock


@pytest.fixture
def system_clock() -> Iterator[SystemClock]:
    clock = SystemClock()
    try:
        yield clock
    finally:
        clock.close()


def test_system_clock_calls_back(system_clock: SystemClock) -> None:
    fired = threading.Event()
    args: list[object] = []

    def callback(a: object, b: object) -> None:
        args.extend([a, b])
        fired.set()

    start = system_clock.now()
    system_clock.call_later(0.01, callback, "x", 2)
    assert fired.wait(DEADLINE)
    assert args == ["x", 2]
    assert system_clock.now() >= start + 0.01


def test_system_clock_runs_due_callbacks_in_deadline_order_and_skips_cancelled(system_clock: SystemClock) -> None:
    entered, go, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[str] = []

    def hold() -> None:
        entered.set()
        go.wait(DEADLINE)

    system_clock.call_later(0.0, hold)
    assert entered.wait(DEADLINE)
    # The timer thread is held: everything below is queued, scheduled in
    # reverse order of delay.
    handles = {
        name: system_clock.call_later(delay, seen.append, name)
        for name, delay in [("c", 0.03), ("b", 0.02), ("cancelled", 0.015), ("a", 0.01)]
    }
    handles["cancelled"].cancel()
    last = max(h.when for h in handles.values())
    system_clock.call_later(last - system_clock.now() + 0.001, done.set)
    go.set()
    assert done.wait(DEADLINE)
    # Deadlines are taken at each call; a stall between calls may reorder
    # them, so the expectation is read from the handles.
    expected = sorted((h.when, name) for name, h in handles.items() if name != "cancelled")
    assert seen == [name for _, name in expected]
    assert "cancelled" not in seen


def test_system_clock_survives_a_failing_callback(system_clock: SystemClock) -> None:
    fired = threading.Event()

    def boom() -> None:
        raise RuntimeError("timer bug")

    system_clock.call_later(0.0, boom)
    system_clock.call_later(0.001, fired.set)
    assert fired.wait(DEADLINE)


def test_system_clock_wall_is_unix_time(system_clock: SystemClock) -> None:
    import time

    before = time.time()
    assert before <= system_clock.wall() <= time.time()


def test_system_clock_on_a_given_loop_calls_back_on_that_loops_thread_from_any_thread() -> None:
    from bus.loop import LoopThread

    io = LoopThread("test-clock-loop")
    clock = SystemClock(io)
    try:
        seen: list[tuple[str, str]] = []
        done = threading.Event()

        def record(name: str) -> None:
            seen.append((name, threading.current_thread().name))
            if len(seen) == 3:
                done.set()

        # From this thread, and from the loop itself (as a timer set by a
        # timer, or by a socket's handler, is).
        clock.call_later(0.02, record, "late")
        clock.call_later(0.0, record, "soon")
        io.call_soon(lambda: clock.call_later(0.0, record, "from the loop"))
        assert done.wait(DEADLINE)
        assert {thread for _, thread in seen} == {"test-clock-loop"}
        assert sorted(name for name, _ in seen) == ["from the loop", "late", "soon"]
        clock.close()
        assert not io.closed  # the loop belongs to whoever gave it
    finally:
        clock.close()
        io.close()


def test_system_clock_close_ends_its_own_loop_and_later_timers_never_run() -> None:
    clock = SystemClock()
    fired = threading.Event()
    clock.call_later(0.0, fired.set)  # starts the clock's own loop
    assert fired.wait(DEADLINE)
    thread = clock._io._thread
    assert thread is not None and thread.is_alive()

    clock.close()

    assert clock._io.closed and not thread.is_alive()
    clock.call_later(0.0, lambda: None)  # after close: accepted without raising (nothing runs it)
