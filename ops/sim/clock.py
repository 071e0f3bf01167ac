"""A node's clock inside a simulated world: the world's loop's time.

:class:`SimClock` keeps the :class:`~actors.runtime.clock.Clock` contract
(``now``, ``wall``, ``call_later`` returning a cancellable
:class:`~actors.runtime.clock.TimerHandle`) on the loop's virtual time:
``now()`` is ``loop.time()``, a timer is a ``call_at`` on the loop (so
timers of every node of the world run in one order: by deadline, then by
the order they were set), and ``wall()`` is the world's wall clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from actors.runtime.clock import TimerHandle

__all__ = ["SimClock"]

log = logging.getLogger("huddle.sim")


class SimClock:
    """Virtual time for a node on a simulated loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wall_at_zero: float) -> None:
        self._loop = loop
        self._wall_at_zero = wall_at_zero

    def now(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return self._wall_at_zero + self._loop.time()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle(self._loop.time() + max(0.0, delay), fn, args)
        self._loop.call_at(handle.when, self._fire, handle)
        return handle

    @staticmethod
    def _fire(handle: TimerHandle) -> None:
        if handle.cancelled:
            return
        try:
            handle.fn(*handle.args)
        except Exception:  # noqa: BLE001 - a timer callback must not stop the world
            log.exception("timer callback failed")

    def close(self) -> None:
        return None
