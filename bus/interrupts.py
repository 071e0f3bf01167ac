"""Steps an interrupt must not cut in two.

Ctrl-C (``KeyboardInterrupt``) or a SIGTERM handler that raises can land
between any two bytecodes. Inside ``subprocess.Popen`` that is after the
fork: the child runs, and no one holds its handle to stop it. The same
holds between starting a service and registering its stop. :func:`held`
makes such a step whole: SIGINT and SIGTERM that arrive during it are
noted, and raised again, through the handler that was in place, as soon as
the step is done, when its owner holds the handle.

Keep held steps short (a spawn, a start with a deadline, a registration):
an interrupt waits for the step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["held"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the ``with`` block; one that came
    meanwhile is raised again once the block is done (even if it failed).
    Off the main thread signals are not this thread's to handle: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    saved: dict[int, Any] = {}
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous is None:  # set outside Python: cannot be put back
            continue
        saved[signum] = previous
        signal.signal(signum, lambda n, _frame: came.append(n))
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)
        for signum in dict.fromkeys(came):  # each once, in order of arrival
            signal.raise_signal(signum)
