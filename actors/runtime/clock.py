"""Clocks: where time comes from, and how "later" happens.

A timer in huddle is a delayed message: the node asks its clock to call it
back, and the callback sends the message through the bus like any other.
Two clocks keep the same contract:

* :class:`SystemClock`: monotonic time; callbacks run on the node's I/O
  loop (an asyncio loop), so a node has no timer thread of its own.
* :class:`ManualClock`: time moves only when a test calls ``advance`` (or
  ``advance_to``); due callbacks run on the caller's thread, in deadline
  order, each with ``now()`` reading its own deadline, before the call
  returns. Nothing in a test then depends on how busy the machine is.

A callback here only *sends* a timer message: the actor handles it later,
in its own slice. ``ManualClock.advance`` alone therefore never sees the
timers that handlers set in reaction to earlier ones; the test kit's
``TestKit.advance`` jumps from deadline to deadline (``next_deadline`` /
``advance_to``) and lets the actors settle in between.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from bus.loop import IoClosed, LoopThread

__all__ = ["Clock", "ManualClock", "SystemClock", "TimerHandle"]

log = logging.getLogger("huddle.clock")


class TimerHandle:
    """A pending callback; ``cancel()`` makes sure it never runs."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""

    def wall(self) -> float:
        """Unix seconds (for envelope deadlines that cross processes)."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` once, ``delay`` seconds from now."""

    def close(self) -> None: ...


class _Heap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()

    def push(self, handle: TimerHandle) -> None:
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))

    def pop_due(self, now: float) -> TimerHandle | None:
        while self._heap and self._heap[0][0] <= now:
            handle = heapq.heappop(self._heap)[2]
            if not handle.cancelled:
                return handle
        return None

    def next_when(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return sum(1 for _, _, h in self._heap if not h.cancelled)


def _run(handle: TimerHandle) -> None:
    try:
        handle.fn(*handle.args)
    except Exception:  # noqa: BLE001 - a timer callback must not kill the clock
        log.exception("timer callback failed")


class SystemClock:
    """Real time; callbacks run on an asyncio loop: the node's I/O loop when
    given one (``io``), else a loop thread of the clock's own.

    The clock keeps its timers in its own heap and arms one loop timer, for
    the earliest deadline. A timer set from another thread wakes the loop
    only when it becomes the earliest (ask deadlines rarely are), so most
    asks cost no thread switch here.
    """

    def __init__(self, io: LoopThread | None = None) -> None:
        self._io = io if io is not None else LoopThread("huddle-timers")
        self._owns_io = io is None
        self._heap = _Heap()
        self._lock = threading.Lock()
        self._closed = False
        self._armed: asyncio.TimerHandle | None = None
        self._armed_when: float | None = None
        self._rearm_scheduled = False

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), fn, args)
        with self._lock:
            if self._closed:
                return handle  # never runs: the clock has stopped
            self._heap.push(handle)
            if self._rearm_scheduled or (self._armed_when is not None and self._armed_when <= handle.when):
                return handle  # the loop will wake in time anyway
            self._rearm_scheduled = True
        try:
            self._io.call_soon(self._rearm)
        except IoClosed:
            pass  # the loop is gone with its node: nothing fires any more
        return handle

    def _rearm(self) -> None:
        """Loop thread: arm the loop timer for the earliest deadline."""
        with self._lock:
            self._rearm_scheduled = False
            if self._closed:
                return
            when = self._heap.next_when()
            if when == self._armed_when:
                return
            if self._armed is not None:
                self._armed.cancel()
                self._armed = None
            self._armed_when = when
            if when is not None:
                loop = asyncio.get_running_loop()
                self._armed = loop.call_later(max(0.0, when - time.monotonic()), self._fire)

    def _fire(self) -> None:
        """Loop thread: run every callback due now, in deadline order (those
        set by these callbacks for the same instant or earlier included,
        never ones due later), then arm for the next deadline."""
        now = time.monotonic()
        with self._lock:
            self._armed = None
            self._armed_when = None
        while True:
            with self._lock:
                if self._closed:
                    return
                due = self._heap.pop_due(now)
            if due is None:
                break
            _run(due)
        self._rearm()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            armed, self._armed = self._armed, None
        if armed is not None:
            try:
                self._io.call_soon(armed.cancel)
            except (IoClosed, RuntimeError):
                pass  # the loop is already gone, and the timer with it
        if self._owns_io:
            self._io.close()


class ManualClock:
    """Time that moves only when told to (tests)."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._heap = _Heap()
        self._lock = threading.RLock()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_offset + self._now

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle(self._now + max(0.0, delay), fn, args)
        with self._lock:
            self._heap.push(handle)
        return handle

    def advance(self, seconds: float) -> int:
        """Move time forward, running every callback that falls due, each at
        its own deadline (callbacks scheduled by callbacks included). Returns
        how many ran. Raises ``ValueError`` for a negative ``seconds``
        (monotonic time never goes back)."""
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by {seconds!r} seconds")
        return self.advance_to(self._now + seconds)

    def advance_to(self, target: float) -> int:
        """Move time forward to exactly ``target``, as :meth:`advance` does
        (so ``advance_to(next_deadline())`` runs the callbacks due at the
        earliest deadline and leaves ``now()`` reading it). Raises
        ``ValueError`` for a ``target`` in the past."""
        if target < self._now:
            raise ValueError(f"cannot move a clock back from {self._now!r} to {target!r}")
        ran = 0
        while True:
            with self._lock:
                nxt = self._heap.next_when()
                if nxt is None or nxt > target:
                    break
                self._now = max(self._now, nxt)
                handle = self._heap.pop_due(self._now)
            if handle is not None:
                _run(handle)
                ran += 1
        self._now = target
        return ran

    def pending(self) -> int:
        with self._lock:
            return len(self._heap)

    def next_deadline(self) -> float | None:
        with self._lock:
            return self._heap.next_when()

    def close(self) -> None:
        return None
