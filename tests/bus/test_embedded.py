"""bus.embedded's process helpers, on real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bus.embedded import pause_process

# A child with a second thread that never sleeps: the thread the kernel
# would stop last if a stop were only queued.
_BUSY_CHILD = """
import threading, sys
def spin():
    while True:
        pass
threading.Thread(target=spin, daemon=True).start()
sys.stdout.write("up\\n"); sys.stdout.flush()
spin()
"""


def _states(pid: int) -> list[str]:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        states.append(stat[stat.rindex(")") + 2])
    return states


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to read thread states")
def test_pause_process_returns_with_every_thread_stopped() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BUSY_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        assert len(_states(child.pid)) >= 2
        pause_process(child.pid)
        # Read right after return, no wait: each thread already reads stopped.
        assert set(_states(child.pid)) <= {"T", "t"}
        os.kill(child.pid, signal.SIGCONT)
        assert child.poll() is None
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
