"""The loop's frame clock (``Pacer``): releases of many paced sinks share
one loop timer per grid slot, in order, and one failing release does not
stop the others. Driven through a recording stand-in for the loop's
``call_at``; the real loop is exercised by the sink tests."""

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


def test_callbacks_due_in_one_slot_share_one_loop_timer_at_or_after_each_due_time() -> None:
    loop = RecordingLoop()
    pacer = Pacer(loop)  # type: ignore[arg-type]
    g = Pacer.GRANULARITY
    calls: list[str] = []
    pacer.call_at(10 * g + g / 3, lambda: calls.append("a"))
    pacer.call_at(10 * g + g / 2, lambda: calls.append("b"))
    pacer.call_at(11 * g, lambda: calls.append("c"))  # exactly on the grid: that slot
    pacer.call_at(11 * g + g / 10, lambda: calls.append("d"))
    assert [when for when, _, _ in loop.timers] == [pytest.approx(11 * g), pytest.approx(12 * g)]
    loop.fire_all()
    assert calls == ["a", "b", "c", "d"]  # never before its time, in the order asked
    pacer.call_at(11 * g, lambda: calls.append("e"))  # a slot already fired: a new timer
    assert len(loop.timers) == 1


def test_a_release_that_raises_does_not_stop_the_others_in_its_slot() -> None:
    loop = RecordingLoop()
    pacer = Pacer(loop)  # type: ignore[arg-type]
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("a destination that broke")

    pacer.call_at(1.0, broken)
    pacer.call_at(1.0, lambda: calls.append("next"))
    loop.fire_all()
    assert calls == ["next"]
