"""SIGTERM stops a command whose main thread waits while another thread
takes the signal (ops/signals.py), in a real child process.

The child blocks SIGTERM on its main thread only, so the kernel must deliver
it to the other thread: what happens by chance when the main thread already
has a signal pending (a SIGCONT just before the SIGTERM, as a harness
resuming a paused node sends).

Whether a plain ``Event.wait()`` then hangs depends on the kernel: on
Linux the main thread's wait is not interrupted and it hangs until SIGKILL
(reproduced on a loaded 2-core machine: 5 of 10 graceful stops became
SIGKILL); other kernels and sandboxes interrupt every thread's wait, and it
returns. The test asserts what holds everywhere: the sliced wait stops.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from ops.processes import REPO_ROOT

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0

CHILD = textwrap.dedent("""
    import signal, sys, threading
    from ops import signals
    stop = signals.stop_event()
    other = threading.Thread(target=threading.Event().wait, daemon=True)  # takes SIGTERM: it does not block it
    other.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("ready", flush=True)
    if sys.argv[1] == "plain":
        stop.wait()
    else:
        signals.wait(stop)
    print("stopped", flush=True)
""")


def child(mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_signal_taken_by_another_thread_stops_the_wait() -> None:
    proc = child("sliced")
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=DEADLINE_S)
        assert (proc.returncode, out.strip()) == (0, "stopped")
    finally:
        proc.kill()
        proc.wait()

