"""The loop's frame clock (``Pacer``): releases of many paced sinks share
one loop timer per grid slot, in order, each told the slot it armed, and
one failing release does not stop the others. Driven through a recording
stand-in for the loop's ``call_at`` and sinks that record their calls; the
real loop is exercised by the sink tests."""

from __future__ import annotations

from typing import Any

import pytest

from actors.sessions.audio.sinks import Pacer


class RecordingLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_at(self, when: float, fn: Any, *args: Any) -> None:
        self.timers.append((when, fn, args))

    def fire_all(self) -> None:
        timers, self.timers = sorted(self.timers, key=lambda t: t[0]), []
        for _, fn, args in timers:
            fn(*args)


class Sink:
    """Stands in for a paced sink: records (name, slot) per call."""

    def __init__(self, name: str, calls: list[tuple[str, int]], *, broken: bool = False) -> None:
        self.name, self.calls, self.broken = name, calls, broken

    def _on_slot(self, slot: int) -> None:
        if self.broken:
            raise RuntimeError("a destination that broke")
        self.calls.append((self.name, slot))


def test_callbacks_due_in_one_slot_share_one_loop_timer_at_or_after_each_due_time() -> None:
    loop = RecordingLoop()
    pacer = Pacer(loop)  # type: ignore[arg-type]
    g = Pacer.GRANULARITY
    calls: list[tuple[str, int]] = []
    slots = [pacer.arm(10 * g + g / 3, Sink("a", calls)), pacer.arm(10 * g + g / 2, Sink("b", calls)),
             pacer.arm(11 * g, Sink("c", calls)),  # exactly on the grid: that slot
             pacer.arm(11 * g + g / 10, Sink("d", calls))]
    assert slots == [11, 11, 11, 12]
    assert [when for when, _, _ in loop.timers] == [pytest.approx(11 * g), pytest.approx(12 * g)]
    loop.fire_all()
    # never before its time, in the order asked, each told the slot it armed
    assert calls == [("a", 11), ("b", 11), ("c", 11), ("d", 12)]
    pacer.arm(11 * g, Sink("e", calls))  # a slot already fired: a new timer
    assert len(loop.timers) == 1


def test_a_release_that_raises_does_not_stop_the_others_in_its_slot() -> None:
    loop = RecordingLoop()
    pacer = Pacer(loop)  # type: ignore[arg-type]
    calls: list[tuple[str, int]] = []
    pacer.arm(1.0, Sink("broken", calls, broken=True))
    slot = pacer.arm(1.0, Sink("next", calls))
    loop.fire_all()
    assert calls == [("next", slot)]
