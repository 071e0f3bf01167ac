"""The demo's worker nodes: ``huddle node --meetings`` processes.

Each is started with a ready file and ended by its own PID: SIGTERM (a
graceful stop: its meetings close their sockets), SIGKILL past a deadline;
:meth:`WorkerNode.kill` is the crash the demo injects (SIGKILL at once, no
goodbye to anyone). Output goes to a log file in the demo's work
directory, shown when a worker fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["WorkerNode", "WorkerStartError"]

READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0

_PAUSE = threading.Event()
"""Never set: ``_PAUSE.wait(x)`` is a bounded poll interval."""


class WorkerStartError(RuntimeError):
    """A worker exited, or was not ready in time."""


class WorkerNode:
    """One ``huddle node --meetings`` process (use :meth:`start`)."""

    def __init__(self, node_id: str, proc: subprocess.Popen[bytes], ready: Path, log: Path) -> None:
        self.node_id = node_id
        self.proc = proc
        self.pid = proc.pid
        self.ready = ready
        self.log = log
        self.killed_at: float | None = None

    @classmethod
    def start(cls, node_id: str, redis_url: str, workdir: Path, *, extra: tuple[str, ...] = ()) -> WorkerNode:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        ready = workdir / f"{node_id}.ready"
        log = workdir / f"{node_id}.log"
        cmd = [sys.executable, "-m", "ops.cli", "node", "--meetings", "--node-id", node_id,
               "--redis-url", redis_url, "--ready-file", str(ready), *extra]
        env = {**os.environ, "HUDDLE_LOG": os.environ.get("HUDDLE_LOG", "ERROR")}
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        return cls(node_id, proc, ready, log)

    def wait_ready(self, timeout: float = READY_DEADLINE_S) -> None:
        """Until the node wrote its ready file (every channel it hosts is
        subscribed); raises :class:`WorkerStartError` if it exits first or
        is not ready in time."""
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            code = self.proc.poll()
            if code is not None:
                raise WorkerStartError(f"worker {self.node_id} exited with {code}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise WorkerStartError(f"worker {self.node_id} not ready within {timeout:g}s:\n{self.output()}")
            _PAUSE.wait(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL by PID, now; returns the monotonic time it was sent."""
        self.killed_at = time.monotonic()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(STOP_DEADLINE_S)
        return self.killed_at

    def stop(self, timeout: float = STOP_DEADLINE_S) -> int | None:
        """SIGTERM by PID, SIGKILL past ``timeout``; returns the exit code.
        Idempotent."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode

    def output(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no output)"
