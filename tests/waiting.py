"""Waiting on a condition in tests: explicit, bounded, never a bare sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll an explicit condition that has no event to wait on (e.g. a
    Redis query, another process's state) until it holds; fails past
    ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    pause = threading.Event()  # never set: wait() is a bounded poll interval
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g}s: {what}")
        pause.wait(delay)
        delay = min(delay * 2, 0.05)
