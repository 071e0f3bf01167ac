"""Garbage collection in a node process: fewer, larger young collections,
start-up's objects out of the full ones, and every pause measured.

A node allocates fast (envelopes, frames, effects, state copies) and almost
none of it forms reference cycles: reference counting frees it at once.
CPython's default thresholds (700, 10, 10) still run a young collection
every 700 net container allocations and a middle one every tenth of those.
In the ``failover-meetings`` benchmark a survivor ran about 800 young and
75 middle collections that found next to nothing (about 2,500 objects in
all), and its full collections held the interpreter lock (the renewal
lane's thread waits too) for up to 0.3 s each: about 2.6 s of its time in
a 20 s run went to the collector.

:func:`tune` (what ``huddle node`` does, unless ``--gc default``) raises the
young threshold to :data:`YOUNG_THRESHOLD` and freezes what start-up
allocated (modules, classes, functions: never garbage) so the full
collections walk only what the node made since. Cyclic garbage is still
collected, later. :class:`GcWatch` counts collections, the seconds they
took and the longest pause, as gauges on the node's metrics
(``sys.metrics``, Prometheus).

Process-wide, like :mod:`gc` itself: an application that embeds a node
decides for its own process (call :func:`tune`, or not).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.runtime.metrics import GC_COLLECTIONS, GC_PAUSE_MAX, GC_SECONDS

__all__ = ["GC_PAUSE_MAX", "YOUNG_THRESHOLD", "GcWatch", "tune"]

#: Container allocations (net) between two young collections.
YOUNG_THRESHOLD = 50_000
#: Young collections between two middle ones (the default is 10).
MIDDLE_THRESHOLD = 20


def tune(young: int = YOUNG_THRESHOLD, middle: int = MIDDLE_THRESHOLD, *, freeze: bool = True) -> tuple[int, int, int]:
    """Set the collector's thresholds for a node process and, with
    ``freeze``, move every object alive now to the permanent generation
    (call it once start-up is done). Returns the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(young, middle, before[2])
    if freeze:
        gc.collect()  # what start-up left as garbage is not kept for ever
        gc.freeze()
    return before


class GcWatch:
    """Counts the collector's runs and pauses (``gc.callbacks``; thread-safe:
    a collection runs on whichever thread allocated, holding the GIL)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: float | None = None
        self.collections = 0
        self.seconds = 0.0
        self.collected = 0
        self._longest = 0.0  # since the last read of the gauge

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        started, self._started = self._started, None
        if started is None:
            return
        pause = self._clock() - started
        with self._lock:
            self.collections += 1
            self.seconds += pause
            self.collected += int(info.get("collected", 0))
            self._longest = max(self._longest, pause)

    def longest_pause(self) -> float:
        """The longest pause since the last call (seconds); resets it."""
        with self._lock:
            longest, self._longest = self._longest, 0.0
        return longest

    def install(self) -> Callable[[], None]:
        """Start watching; returns the function that stops it."""
        gc.callbacks.append(self)

        def remove() -> None:
            if self in gc.callbacks:
                gc.callbacks.remove(self)

        return remove

    def add_gauges(self, metrics: Any) -> Callable[[], None]:
        """``gc_collections``, ``gc_seconds`` (since the watch began) and
        ``gc_pause_max_s`` (the longest since the previous sample) on a
        :class:`~actors.runtime.metrics.MetricsRegistry`; returns the
        function that removes them."""
        removers = [metrics.add_source(GC_COLLECTIONS, lambda: self.collections),
                    metrics.add_source(GC_SECONDS, lambda: self.seconds),
                    metrics.add_source(GC_PAUSE_MAX, self.longest_pause)]

        def remove() -> None:
            for r in removers:
                r()

        return remove
