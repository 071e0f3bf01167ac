"""The published Webex client socket against the reference service.

``@webex/internal-plugin-mercury`` (pinned in ``tests/integration/webex/``)
is the socket a Webex client opens to its data channel: it authorizes,
waits for the buffer state, pings after every pong, checks the pong's id,
acks every frame and checks that every frame it receives carries the
``sequenceNumber`` that follows the last one (else it emits
``sequence-mismatch``). ``webex/driver.js`` runs that socket, unchanged,
against ``huddle dataserver`` and reports what it does as JSON lines.

The client is installed at test time (``npm ci`` from the committed
lock) into ``.cache/webex-interop/<digest of package.json and lock>/``,
which is ignored by git and reused while the pin is unchanged; its code is
never committed. Without ``node`` and ``npm`` the tests are skipped
(``.ci/run`` installs them).

Every wait is on a line from the driver or on the service's state, with a
deadline; every driver process is ended by its PID at teardown.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.dataserver.harness import DataServerProcess

INSTALL_DEADLINE_S = 600.0
"""``npm ci`` of the pinned client (a cold npm cache downloads ~150
packages); reached only when the registry is unreachable."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(INSTALL_DEADLINE_S + 120)]

DEADLINE = 15.0
REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = Path(__file__).resolve().parent / "webex"
CACHE = REPO_ROOT / ".cache" / "webex-interop"
SOCKET_JS = Path("node_modules/@webex/internal-plugin-mercury/dist/socket/socket.js")
DEVICE_URL = "https://devices.test/webex-interop"
# What the Webex client appends to a data-channel socket URL.
CLIENT_QUERY = "outboundWireFormat=text&bufferStates=true&aliasHttpStatus=true"
ROUNDS = 5


# -- the client, installed once per pin ------------------------------------------------


@pytest.fixture(scope="module")
def webex_client() -> Path:
    """The directory whose ``node_modules`` holds the pinned client."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Webex interop tests need node and npm on PATH (.ci/run installs them with apt-get)")
    manifest = (CLIENT_DIR / "package.json").read_bytes()
    lock = (CLIENT_DIR / "package-lock.json").read_bytes()
    digest = hashlib.sha256(manifest + b"\0" + lock).hexdigest()[:16]
    target = CACHE / digest
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # one install at a time, across processes
        if not (target / "installed").exists():
            for stale in CACHE.iterdir():
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            target.mkdir()
            shutil.copyfile(CLIENT_DIR / "package.json", target / "package.json")
            shutil.copyfile(CLIENT_DIR / "package-lock.json", target / "package-lock.json")
            env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
                   "npm_config_audit": "false"}
            try:
                done = subprocess.run([npm, "ci", "--ignore-scripts", "--loglevel=error"], cwd=target, env=env,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=INSTALL_DEADLINE_S)
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"npm ci of the Webex client did not finish in {INSTALL_DEADLINE_S:g}s: {exc.stderr}")
            if done.returncode != 0:
                pytest.fail(f"npm ci of the Webex client failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            assert (target / SOCKET_JS).is_file(), f"no {SOCKET_JS} after npm ci"
            (target / "installed").write_text(digest + "\n")
    return target


# -- the driver ------------------------------------------------------------------------


class WebexSocket:
    """One ``driver.js`` process: the Webex socket opened on ``url``; what
    it reports, waitable."""

    def __init__(self, modules: Path, url: str, *, ping_interval_ms: int = 50) -> None:
        config = {"url": url, "token": "Bearer webex-interop-user", "trackingId": "webex-interop_1",
                  "pingInterval": ping_interval_ms, "pongTimeout": int(DEADLINE * 1000),
                  "forceCloseDelay": 2000}
        node = shutil.which("node")
        assert node is not None
        self.proc = subprocess.Popen([node, str(CLIENT_DIR / "driver.js"), str(modules), json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=CLIENT_DIR)
        self.pid = self.proc.pid
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._ended = False
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "text": line.rstrip("\n")}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str, *, after: int = -1) -> int:
        """The index of the first reported event past ``after`` for which
        ``predicate`` holds; fails past the deadline or if the driver
        ended without reporting one."""
        found: list[int] = []

        def seen() -> bool:
            found[:] = [i for i, e in enumerate(self.events) if i > after and predicate(e)][:1]
            return bool(found) or self._ended

        with self._cond:
            self._cond.wait_for(seen, DEADLINE)
            if not found:
                raise AssertionError(f"the Webex socket reported no {what} within {DEADLINE:g}s "
                                     f"(driver {'ended' if self._ended else 'running'}); last events "
                                     f"{self.events[-10:]}; stderr {self.stderr[-10:]}")
            return found[0]

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["event"] == kind]

    def close(self) -> int:
        """Ask the socket to close (1000); the driver's exit code once it
        has closed and exited."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        return self.proc.wait(timeout=DEADLINE)

    def stop(self) -> None:
        """End the driver by its PID (closing its stdin first: it then
        closes the socket and exits by itself), SIGKILL past the deadline."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=DEADLINE)
        for reader in self._readers:
            reader.join(DEADLINE)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


@pytest.fixture
def webex(webex_client: Path) -> Iterator[Callable[..., WebexSocket]]:
    """``webex(url)`` starts a driver on ``url``; every one is ended by its
    PID at teardown, pass or fail."""
    started: list[WebexSocket] = []

    def start(url: str, **options: Any) -> WebexSocket:
        sock = WebexSocket(webex_client, url, **options)
        started.append(sock)
        return sock

    try:
        yield start
    finally:
        for sock in reversed(started):
            sock.stop()


def socket_url(server: DataServerProcess, meeting: str = "m1") -> str:
    """Register ``meeting`` as a Webex device would; its socket URL with the
    query the Webex client adds."""
    status, body = server.request("POST", f"/datachannel/{meeting}", {"deviceUrl": DEVICE_URL})
    assert status == 200, body
    return f"{body['webSocketUrl']}?{CLIENT_QUERY}"


def server_frames(sock: WebexSocket) -> list[dict[str, Any]]:
    """Every server frame the socket received, in order (pongs included)."""
    return [e["data"] for e in sock.events if e["event"] in ("message", "pong")]


# -- tests -----------------------------------------------------------------------------


def test_no_sequence_mismatch_across_ping_pong_rounds_and_relayed_events_arrive(
        dataserver_session: DataServerProcess, webex: Callable[..., WebexSocket]) -> None:
    server = dataserver_session
    sock = webex(socket_url(server))
    opened = sock.wait_for(lambda e: e["event"] in ("open", "open-failed"), "open")
    assert sock.events[opened]["event"] == "open", sock.events
    # Each round: an event relayed by the service, then a ping/pong round
    # after it. A pong without the next sequence number is a mismatch for
    # this client (and unsets its expectation until the next numbered frame).
    for i in range(ROUNDS):
        assert server.send({"data": {"eventType": "relay.event", "round": i}}, meeting="m1") == 1
        got = sock.wait_for(lambda e, i=i: e["event"] == "message" and e["data"].get("data", {}).get("round") == i,
                            f"relayed event {i}")
        sock.wait_for(lambda e: e["event"] == "pong", f"a pong after relayed event {i}", after=got)

    assert sock.of("sequence-mismatch") == []
    frames = server_frames(sock)
    assert [f.get("sequenceNumber") for f in frames] == list(range(1, len(frames) + 1))
    assert frames[0]["data"]["eventType"] == "mercury.buffer_state"
    assert [f["data"]["round"] for f in frames if f.get("data", {}).get("eventType") == "relay.event"] == list(
        range(ROUNDS))
    pongs = [f for f in frames if f.get("type") == "pong"]
    assert len(pongs) >= ROUNDS and len({p["id"] for p in pongs}) == len(pongs)
    # The client acked every frame, pongs included, by ids the service sent.
    state = server.wait_for(lambda s: s["counters"].get("acks", 0) >= len(frames), DEADLINE)
    assert state["counters"].get("acks_unknown", 0) == 0
    [record] = state["sockets"]
    assert (record["authorized"], record["tracking_id"], record["query"]["outboundWireFormat"]) == (
        True, "webex-interop_1", "text")
    assert record["pings"] >= ROUNDS

    assert sock.close() == 0
    assert sock.of("close")[-1]["code"] == 1000
    state = server.wait_for(lambda s: not s["sockets"][0]["open"], DEADLINE)
    assert state["sockets"][0]["close"] == {"code": 1000, "reason": "done", "by": "client"}


def test_a_pong_for_another_ping_makes_the_webex_socket_close(dataserver_session: DataServerProcess,
                                                              webex: Callable[..., WebexSocket]) -> None:
    server = dataserver_session
    server.fault(pong_mismatch=True)
    sock = webex(socket_url(server))
    sock.wait_for(lambda e: e["event"] == "close", "close")
    assert (sock.of("close")[0]["code"], sock.of("close")[0]["reason"]) == (1000, "Pong mismatch")
    assert sock.of("sequence-mismatch") == []
    state = server.wait_for(lambda s: s["sockets"] and not s["sockets"][0]["open"], DEADLINE)
    assert state["sockets"][0]["close"] == {"code": 1000, "reason": "Pong mismatch", "by": "client"}


def test_a_refused_socket_fails_the_webex_open_as_not_authorized(dataserver_session: DataServerProcess,
                                                                 webex: Callable[..., WebexSocket]) -> None:
    server = dataserver_session
    server.fault(refuse_next={"code": 4401, "count": 1, "meeting": "m1"})
    sock = webex(socket_url(server))
    failed = sock.wait_for(lambda e: e["event"] in ("open", "open-failed"), "open or open failure")
    assert sock.events[failed]["event"] == "open-failed"
    assert sock.events[failed]["name"] == "NotAuthorized", sock.events
    assert server.state()["sockets"][0]["refused"] == 4401
