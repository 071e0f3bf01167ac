"""Stopping a command on SIGTERM / SIGINT when it has threads.

A handler set with :func:`signal.signal` runs on the main thread, but the
kernel delivers a process-directed signal to any thread that does not block
it, and picks another thread whenever the main thread already has a signal
pending (a SIGCONT right before the SIGTERM is enough). The C-level handler
then only marks the signal; a main thread blocked in ``Event.wait()`` with no
timeout may never return to run it (Linux does not interrupt it; some
sandboxes do), and the command hangs until SIGKILL.
:func:`wait` therefore waits in short slices: the main thread runs Python
code at least every :data:`SLICE_S` and the handler with it.
"""

from __future__ import annotations

import signal
import threading
import time

#: The longest the main thread sleeps between chances to run a signal handler.
SLICE_S = 0.2


def stop_event(*signums: signal.Signals) -> threading.Event:
    """An event set by any of ``signums`` (default: SIGTERM and SIGINT)."""
    event = threading.Event()
    for signum in signums or (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: event.set())
    return event


def wait(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)`` that lets the main thread run signal handlers
    while it waits; returns whether ``event`` is set."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
        if remaining <= 0:
            return event.is_set()
        if event.wait(remaining):
            return True
