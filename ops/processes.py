"""``huddle node`` processes, for the demo, the benchmarks and the tests: the
one harness that starts them.

A node is started with a ready file (``--ready-file``: the node writes its
id there once every channel it hosts is subscribed) and its output in a log
file, and it is ended by its own PID: :meth:`NodeProcess.stop` is a graceful
stop (SIGCONT in case it is paused, SIGTERM, SIGKILL past a deadline),
:meth:`NodeProcess.kill` the crash a fault injects (SIGKILL at once, no
goodbye to anyone), :meth:`NodeProcess.pause` a hung host (SIGSTOP,
returning once every thread of it is stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bus.embedded import pause_process
from bus.interrupts import held

__all__ = ["REPO_ROOT", "NodeProcess", "NodeStartError", "huddle_command"]

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


class NodeStartError(RuntimeError):
    """A node exited before it was ready, or was not ready in time."""


def huddle_command(*args: str) -> list[str]:
    """``huddle ARGS`` as this interpreter runs it (no installed script needed)."""
    return [sys.executable, "-m", "ops.cli", *args]


class NodeProcess:
    """One ``huddle node`` process (use :meth:`start`)."""

    def __init__(self, node_id: str, proc: subprocess.Popen[bytes], ready_file: Path, log: Path) -> None:
        self.node_id = node_id
        self.proc = proc
        self.pid = proc.pid
        self.ready_file = ready_file
        self.log = log
        self.killed_at: float | None = None

    @classmethod
    def start(cls, node_id: str, redis_url: str, workdir: Path, options: Sequence[str] = (), *,
              env: Mapping[str, str] | None = None) -> NodeProcess:
        """Start ``huddle node --node-id NODE_ID --redis-url REDIS_URL`` with
        ``options``, its ready file and log in ``workdir``; ``env`` is added
        to this process's environment. Returns at once (see :meth:`wait_ready`)."""
        ready = workdir / f"{node_id}.ready"
        log = workdir / f"{node_id}.log"
        cmd = huddle_command("node", "--node-id", node_id, "--redis-url", redis_url, "--ready-file", str(ready),
                             *options)
        proc = None
        try:
            with open(log, "wb") as out, held():  # an interrupt waits until the handle is ours
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=REPO_ROOT, env=None if env is None else {**os.environ, **env})
        except BaseException:
            if proc is not None:  # interrupted while it started: end it before the interrupt goes on
                proc.kill()
                proc.wait()
            raise
        return cls(node_id, proc, ready, log)

    def wait_ready(self, timeout: float = READY_DEADLINE_S) -> None:
        """Until the node wrote its id to its ready file; raises
        :class:`NodeStartError` (with its output) at once if it exits
        first, or past ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            try:
                # Waiting on the process doubles as the poll interval and
                # catches a node that dies during start-up.
                code: int | None = self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                raise NodeStartError(f"node {self.node_id} exited with {code} before it was ready:\n{self.output()}")
            if time.monotonic() > deadline:
                raise NodeStartError(f"node {self.node_id} not ready within {timeout:g}s:\n{self.output()}")

    def _ready(self) -> bool:
        try:
            return self.ready_file.read_text().strip() == self.node_id
        except OSError:
            return False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` by PID if the process still runs."""
        if self.alive:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        """SIGSTOP; returns once every thread of it is stopped."""
        if self.alive:
            pause_process(self.pid)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self, timeout: float = STOP_DEADLINE_S) -> float:
        """SIGKILL by PID, now, and reap it; returns the monotonic time the
        signal was sent."""
        self.killed_at = time.monotonic()
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout)
        return self.killed_at

    def stop(self, timeout: float = STOP_DEADLINE_S) -> int | None:
        """A graceful stop: SIGCONT (in case it is paused), SIGTERM, SIGKILL
        past ``timeout``; returns the exit code. Idempotent."""
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGUSR1)  # its threads' stacks into its log, to say where it hung
                try:
                    self.proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode

    def output(self, limit: int = 3000) -> str:
        """The end of its log (stdout and stderr)."""
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no output)"
