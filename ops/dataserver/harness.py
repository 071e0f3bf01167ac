"""The reference data-channel service as a subprocess, for tests and benches.

::

    with DataServerProcess.start() as server:
        server.fault(withhold={"pong": True})
        ...  # point a client at f"{server.http_url}/datachannel/m1"
        server.wait_for(lambda s: s["online"] == 1, timeout=10)
        server.restart()  # a crash: every socket drops, all state is gone,
                          # a new process listens on the same ports

Synchronous, standard library only (it is called from plain test code).
Every wait has a deadline; the process is ended by its own PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from bus.interrupts import held

__all__ = ["DataServerError", "DataServerProcess"]

REPO_ROOT = Path(__file__).resolve().parents[2]

START_DEADLINE_S = 20.0
"""How long a start (or restart) may take before it counts as failed."""

REQUEST_TIMEOUT_S = 10.0

_PAUSE = threading.Event()
"""Never set: ``_PAUSE.wait(x)`` is a bounded poll interval."""


class DataServerError(RuntimeError):
    """The service did not start, died, or refused a control request."""


class DataServerProcess:
    """One ``huddle dataserver`` process. Use :meth:`start`."""

    def __init__(self, options: dict[str, Any], workdir: Path, owns_workdir: bool) -> None:
        self.options = dict(options)
        self.workdir = workdir
        self._owns_workdir = owns_workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self.http_url = ""
        self.ws_url = ""
        self.pid = 0
        self.http_port = int(options.get("http_port", 0))
        self.ws_port = int(options.get("ws_port", 0))

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def start(cls, *, host: str = "127.0.0.1", http_port: int = 0, ws_port: int = 0,
              token_ttl: float | None = None, require_token: bool = False, token_secret: str | None = None,
              workdir: str | Path | None = None, timeout: float = START_DEADLINE_S) -> DataServerProcess:
        """Start ``huddle dataserver`` and return once its ready file is
        written (raises :class:`DataServerError` past ``timeout`` or if it
        exits first). ``token_secret`` lets a test mint its own tokens."""
        options: dict[str, Any] = {"host": host, "http_port": http_port, "ws_port": ws_port,
                                   "token_ttl": token_ttl, "require_token": require_token,
                                   "token_secret": token_secret}
        owns = workdir is None
        path = Path(tempfile.mkdtemp(prefix="dataserver-")) if workdir is None else Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        server = cls(options, path, owns)
        try:
            server._launch(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _command(self, ready: Path) -> list[str]:
        cmd = [sys.executable, "-m", "ops.cli", "dataserver", "--host", self.options["host"],
               "--http-port", str(self.http_port), "--ws-port", str(self.ws_port), "--ready-file", str(ready)]
        if self.options.get("token_ttl") is not None:
            cmd += ["--token-ttl", str(self.options["token_ttl"])]
        if self.options.get("require_token"):
            cmd.append("--require-token")
        return cmd

    def _launch(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        while True:
            self._starts += 1
            ready = self.workdir / f"ready-{self._starts}.json"
            log = self.workdir / f"dataserver-{self._starts}.log"
            env = dict(os.environ)
            if self.options.get("token_secret"):
                env["HUDDLE_DATASERVER_TOKEN_SECRET"] = self.options["token_secret"]
            with open(log, "wb") as out:
                with held():  # an interrupt waits until the handle is ours (start() then stops it)
                    self._proc = subprocess.Popen(self._command(ready), stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
            self.pid = self._proc.pid
            code = self._wait_ready(ready, deadline)
            if code is None:
                break
            # A restart can race the old process's ports for a moment: try
            # again until the deadline, then report what the process said.
            if time.monotonic() > deadline or "address already in use" not in self._output(log).lower():
                raise DataServerError(f"huddle dataserver exited with {code} before it was ready:\n"
                                      f"{self._output(log)}")
            _PAUSE.wait(0.05)  # let the kernel release the port before the next try
        info = json.loads(ready.read_text())
        self.http_url, self.ws_url, self.pid = info["http"], info["ws"], int(info["pid"])
        self.http_port = int(self.http_url.rsplit(":", 1)[1])
        self.ws_port = int(self.ws_url.rsplit(":", 1)[1])

    def _wait_ready(self, ready: Path, deadline: float) -> int | None:
        """None once ``ready`` exists; the exit code if the process ended."""
        assert self._proc is not None
        while not ready.exists():
            try:
                # Waiting on the process is the poll interval and catches an
                # early exit.
                return self._proc.wait(timeout=0.01)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                log = self.workdir / f"dataserver-{self._starts}.log"
                self._kill()
                raise DataServerError(f"huddle dataserver not ready in time:\n{self._output(log)}")
        return None

    @staticmethod
    def _output(log: Path) -> str:
        try:
            return log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no output)"

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=START_DEADLINE_S)

    def restart(self, timeout: float = START_DEADLINE_S) -> None:
        """Kill the process (SIGKILL: every socket drops without a close
        frame, all state is lost) and start a new one on the same ports."""
        self._kill()
        self._launch(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """End the process by its PID (SIGTERM, SIGKILL past ``timeout``);
        returns its exit code. Idempotent."""
        proc = self._proc
        code = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._kill()
            code = proc.returncode
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DataServerProcess(pid={self.pid}, http={self.http_url!r}, ws={self.ws_url!r})"

    # -- URLs ---------------------------------------------------------------

    def datachannel_url(self, meeting: str, *, practice: bool = False) -> str:
        """The register URL of ``meeting`` (its ``datachannelUrl``, or its
        ``practiceSessionDatachannelUrl`` with ``practice``)."""
        return f"{self.http_url}/datachannel/{meeting}" + ("/practice" if practice else "")

    def locus_url(self, meeting: str) -> str:
        return f"{self.http_url}/locus/{meeting}"

    # -- control API --------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                ) -> tuple[int, Any]:
        """One HTTP request to the service; returns (status, parsed JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return exc.code, json.loads(payload or b"null")
            except ValueError:
                return exc.code, payload.decode(errors="replace")

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.request(method, path, body)
        if status != 200:
            raise DataServerError(f"{method} {path} -> {status}: {payload}")
        return payload

    def state(self, *, detail: bool | Literal["open"] = True) -> dict[str, Any]:
        """``GET /control/state`` (``detail=False``: the cheap summary;
        ``"open"``: the summary and the open sockets, briefly)."""
        query = "?detail=open" if detail == "open" else "" if detail else "?detail=0"
        return self._control("GET", "/control/state" + query)

    def fault(self, **fields: Any) -> dict[str, Any]:
        """``POST /control/faults``: e.g. ``fault(drop={"meeting": "m1"})``."""
        return self._control("POST", "/control/faults", fields)

    def send(self, frame: dict[str, Any] | None = None, *, sequence_skip: int = 0, **where: Any) -> int:
        """``POST /control/send``: push ``frame`` to matching online sockets;
        returns how many it reached."""
        body: dict[str, Any] = dict(where)
        if frame is not None:
            body["frame"] = frame
        if sequence_skip:
            body["sequence_skip"] = sequence_skip
        return int(self._control("POST", "/control/send", body)["sent"])

    def shutdown(self, **where: Any) -> int:
        """``POST /control/shutdown``: ask matching sockets to move; returns
        how many were asked."""
        return int(self._control("POST", "/control/shutdown", where)["sent"])

    def reset(self) -> None:
        """``POST /control/reset``: close every socket (1001), forget all
        state and faults."""
        self._control("POST", "/control/reset", {})

    def mint_token(self, *, self_id: str = "self", session: str = "llm-default-session", meeting: str = "",
                   ttl_s: float | None = None) -> str:
        """A data-channel token signed by the service (negative ``ttl_s``:
        already expired)."""
        body: dict[str, Any] = {"self": self_id, "session": session, "meeting": meeting}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return str(self._control("POST", "/control/mint_token", body)["datachannelToken"])

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0, *,
                 detail: bool | Literal["open"] = True) -> dict[str, Any]:
        """Poll the state until ``predicate(state)`` holds; returns that
        state. Raises ``TimeoutError`` (with the last state) past
        ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            state = self.state(detail=detail)
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"state not reached within {timeout:g}s; last state: {json.dumps(state)[:4000]}")
            if not self.alive():
                raise DataServerError(f"huddle dataserver (pid {self.pid}) is gone")
            _PAUSE.wait(delay)
            delay = min(delay * 2, 0.05)
