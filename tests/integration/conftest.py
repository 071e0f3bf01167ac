"""Fixtures for integration tests: a real redis-server, real ``huddle node``
processes, and the test process as one more node on the same bus.

Rules kept here so the tests need not repeat them:

- everything started is stopped at teardown by its PID, pass or fail
  (node processes: SIGTERM, then SIGKILL past a deadline);
- nothing waits by sleeping: every wait is on an explicit condition (a ready
  file, an event on ``sys:events``, a reply) with a deadline that is only
  reached when something is broken.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis

from actors.runtime.node import Node
from bus.address import SYS_EVENTS, channel_for
from bus.embedded import EmbeddedRedis
from bus.envelope import Codec
from bus.errors import DecodeError
from bus.messages import Event
from bus.redis_transport import RedisTransport
from bus.sharded import transport_for
from bus.transport import Transport
from bus.signing import CLUSTER_KEY_ENV
from ops import processes
from ops.processes import REPO_ROOT
from ops.processes import huddle_command as huddle_cmd
from tests.waiting import wait_until

DEADLINE = 15.0
"""Upper bound for any wait; reached only when something is broken."""



def unique(prefix: str) -> str:
    """A fresh id, so that tests sharing one Redis never see each other."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- Redis --------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client, to look at the server and to send raw bytes."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def subscriber_channels(client: redis.Redis, node_id: str) -> int | None:
    """How many channels the subscriber connection of node ``node_id``
    holds, as the server sees it (``CLIENT LIST``); None if not connected."""
    name = f"huddle:{node_id}:subscriber"
    for entry in client.client_list():
        if entry.get("name") == name:
            return int(entry.get("sub", 0))
    return None


# -- node processes -----------------------------------------------------------


class NodeProcess(processes.NodeProcess):
    """A ``huddle node`` process started by a test (:mod:`ops.processes`,
    the one node harness), and how many subscriber channels the server
    must confirm before it counts as up (0: its ready file says enough)."""

    channels: int = 0


class NodeProcesses:
    """Starts ``huddle node`` processes; :meth:`stop_all` ends them by PID."""

    def __init__(self, redis_url: str, client: redis.Redis, workdir: Path) -> None:
        self.redis_url = redis_url
        self.client = client
        self.workdir = workdir
        self.started: list[NodeProcess] = []

    def start(self, *echo: str, node_id: str | None = None, wait: bool = True, options: Sequence[str] = (),
              env: Mapping[str, str] | None = None, redis_url: str | None = None) -> NodeProcess:
        """Start a node hosting an Echo at each of ``echo`` (more ``huddle
        node`` ``options``, environment ``env`` and another bus
        ``redis_url`` if given); with ``wait``, return once it is ready (see
        :meth:`wait_ready`)."""
        node_id = node_id or unique("node")
        clustered = any(o.startswith(("--cluster", "--actors", "--lease-ttl", "--heartbeat")) for o in options)
        if clustered and "--cluster-key-file" not in options and CLUSTER_KEY_ENV not in (env or {}):
            # Tests that are not about signing talk to the fleet with plain
            # codecs: say so explicitly (a cluster node refuses to start
            # without a key otherwise). tests/integration/test_signed_cluster.py
            # runs the signed fleet.
            options = [*options, "--insecure-no-signing"]
        options = [*options, *(arg for address in echo for arg in ("--echo", address))]
        node = NodeProcess.start(node_id, redis_url or self.redis_url, self.workdir, options, env=env)
        assert isinstance(node, NodeProcess)
        # Its own channel, sys:taps (taps announce themselves there), one per
        # Echo. A cluster node also listens on sys:nodes, node:<id>/cluster
        # and its actors' channels: its ready file is written once those are live.
        node.channels = 0 if clustered else 2 + len(echo)
        self.started.append(node)
        if wait:
            self.wait_ready(node)
        return node

    def wait_ready(self, node: NodeProcess) -> None:
        """The ready file is there AND the server confirms every channel of
        the node (its own, sys:taps and one per Echo). ``huddle node`` writes the
        ready file before its Echo subscriptions are confirmed, so the file
        alone does not mean a message to ``echo:1`` would be heard."""
        node.wait_ready()
        if node.channels:
            wait_until(lambda: subscriber_channels(self.client, node.node_id) == node.channels,
                       f"node {node.node_id} subscribed to {node.channels} channels")

    def stop_all(self) -> None:
        errors = []
        for node in reversed(self.started):
            try:
                node.stop(DEADLINE)
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                errors.append(f"{node.node_id} (pid {node.pid}): {exc}")
        self.started.clear()
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


@pytest.fixture
def node_procs(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[NodeProcesses]:
    """``node_procs.start("echo:1")`` starts a ``huddle node`` hosting an Echo
    at ``echo:1`` and waits until it is up; all are ended at teardown."""
    procs = NodeProcesses(redis_url, redis_client, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# -- sys:events ---------------------------------------------------------------


class EventLog:
    """Every event published on ``sys:events`` while it listens, decoded
    (with ``codec``: e.g. one holding the cluster key)."""

    def __init__(self, codec: Codec | None = None) -> None:
        self.events: list[Event] = []
        self.undecodable = 0
        self._codec = codec or Codec()
        self._cond = threading.Condition()

    def __call__(self, channel: str, data: bytes) -> None:
        try:
            env = self._codec.decode(data)
        except DecodeError:
            with self._cond:
                self.undecodable += 1
            return
        if isinstance(env.message, Event):
            with self._cond:
                self.events.append(env.message)
                self._cond.notify_all()

    def matching(self, **fields: object) -> list[Event]:
        with self._cond:
            return [e for e in self.events if _matches(e, fields)]

    def wait_match(self, predicate: Callable[[Event], bool], what: str, timeout: float = DEADLINE) -> Event:
        """The first event for which ``predicate`` holds; fails after ``timeout``."""
        found: list[Event] = []

        def seen() -> bool:
            found[:] = [e for e in self.events if predicate(e)]
            return bool(found)

        with self._cond:
            if not self._cond.wait_for(seen, timeout):
                recent = [(e.event, e.node, e.address, e.reason) for e in self.events[-10:]]
                raise AssertionError(f"no event {what} within {timeout:g}s; last events: {recent}")
        return found[0]

    def wait_for(self, timeout: float = DEADLINE, **fields: object) -> Event:
        """The first event whose fields equal ``fields`` (``detail_*`` keys
        match inside ``detail``); fails after ``timeout`` seconds."""
        found: list[Event] = []

        def seen() -> bool:
            found[:] = [e for e in self.events if _matches(e, fields)]
            return bool(found)

        with self._cond:
            if not self._cond.wait_for(seen, timeout):
                recent = [(e.event, e.node, e.address, e.reason) for e in self.events[-10:]]
                raise AssertionError(f"no event {fields} within {timeout:g}s; last events: {recent}")
        return found[0]


def _matches(event: Event, fields: dict[str, object]) -> bool:
    for key, want in fields.items():
        if key.startswith("detail_"):
            if event.detail.get(key.removeprefix("detail_")) != want:
                return False
        elif getattr(event, key) != want:
            return False
    return True


@contextlib.contextmanager
def listening(redis_url: str, receiver: Callable[[str, bytes], None], *channels: str) -> Iterator[Transport]:
    """A transport that gives ``receiver`` everything on ``channels``,
    subscribed (confirmed by the server) on entry, closed on exit."""
    transport = transport_for(redis_url, name=unique("test-listener"))
    transport.set_receiver(receiver)
    transport.subscribe(*channels)
    transport.start()
    try:
        assert transport.wait_subscribed(DEADLINE), f"could not subscribe to {channels}"
        yield transport
    finally:
        transport.close()


@contextlib.contextmanager
def listening_events(redis_url: str, namespace: str = "", codec: Codec | None = None) -> Iterator[EventLog]:
    """An :class:`EventLog` of ``<namespace>sys:events``, subscribed before
    this returns (decoded with ``codec``, e.g. one holding the cluster key)."""
    log = EventLog(codec)
    with listening(redis_url, log, channel_for(SYS_EVENTS, namespace)):
        yield log


@pytest.fixture
def events(redis_url: str) -> Iterator[EventLog]:
    """Listens on ``sys:events`` from before the test starts anything."""
    with listening_events(redis_url) as log:
        yield log


# -- the test process as a node -----------------------------------------------


@pytest.fixture
def local_node(redis_url: str) -> Iterator[Node]:
    """A Node in the test process, on its own RedisTransport."""
    node_id = unique("test")
    transport = RedisTransport(redis_url, name=node_id)
    node = Node(transport, node_id=node_id)
    node.start()
    try:
        assert transport.wait_subscribed(DEADLINE), "test node could not subscribe"
        yield node
    finally:
        node.shutdown()


# -- commands that run alongside a test -------------------------------------------


class Command:
    """A ``huddle`` subprocess whose stdout and stderr lines a test can wait
    on while it runs (one reader thread per stream)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "HUDDLE_CLUSTER_KEY")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(huddle_cmd(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=full_env)
        self.pid = self.proc.pid
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], *, stream: str = "stdout",
                  timeout: float = DEADLINE) -> str:
        """The first line of ``stream`` that matches; fails past ``timeout``
        or when the process ended without printing one."""
        lines = self.stdout if stream == "stdout" else self.stderr
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in lines if predicate(line)]
            return bool(found) or self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)

        with self._cond:
            self._cond.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"no matching {stream} line within {timeout:g}s; stdout {self.stdout[-10:]}, "
                                 f"stderr {self.stderr[-10:]}")
        return found[0]

    def wait(self, timeout: float = DEADLINE) -> int:
        """Its exit code, once it ended and its output was read."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self, timeout: float = DEADLINE) -> None:
        """SIGTERM by PID, SIGKILL past ``timeout``."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)


@pytest.fixture
def commands() -> Iterator[Callable[..., Command]]:
    """``commands(*args, env=...)`` runs ``huddle ARGS`` alongside the test;
    each is ended by its PID at teardown."""
    started: list[Command] = []

    def run(*args: str, env: Mapping[str, str] | None = None) -> Command:
        command = Command(args, env)
        started.append(command)
        return command

    try:
        yield run
    finally:
        for command in reversed(started):
            command.stop()
