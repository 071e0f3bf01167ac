"""One benchmark node process: a :class:`~actors.runtime.node.Node` on a
:class:`~bus.redis_transport.RedisTransport`, driven by its parent.

    python ops/bench/nodeproc.py ROLE --redis-url URL --node-id ID [options]

The parent talks to it with one JSON object per line: commands on stdin,
answers on stdout (logs go to stderr). The first line the process prints is
``{"ready": true, "pid": ...}`` once its actors are spawned and every
channel is confirmed subscribed; the process ends on ``{"cmd": "quit"}`` or
when stdin closes (and the parent kills it by PID if it does not).

Roles:

``sink``    hosts ``--actors`` counting actors at ``sink:s0..``. Commands:
            ``expect`` (``n``): print ``{"event": "all-received", ...}`` once
            ``n`` messages were handled; ``report``: print the counts now.
``sender``  hosts ``--actors`` sender actors at ``sender:k0..``. ``start``
            (``total``, ``targets``, ``chunk``, ``payload``): the senders tell
            ``total`` Pings round-robin over ``targets`` addresses
            (``sink:s<i>``), ``chunk`` per handler run, then a message to
            themselves to go on; the process flushes its transport and prints
            ``{"event": "sent", ...}``.
``echo``    hosts :class:`actors.runtime.builtin.Echo` at every ``--echo`` address.
``asker``   ``run`` (``target``, ``n``, ``warmup``): ``n`` sequential
            ``node.ask(target, Ping(i)).get()`` after ``warmup`` of them;
            prints the latency percentiles in microseconds. With
            ``on_loop``: the same asks awaited by a coroutine on the node's
            own loop; with ``samples``, every round trip too.

Every time is ``time.time()`` (one clock for all processes on the host);
latencies are ``time.perf_counter()`` differences inside one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from common import Profile, tune_node_gc

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.builtin import Echo
from actors.runtime.node import Node
from bus.envelope import Codec, Envelope
from bus.messages import Message, Ping, Pong, message_kind
from bus.sharded import transport_for
from bus.transport import Transport
from bus.signing import cluster_signer

READY_TIMEOUT = 30.0
SEND_TIMEOUT = 600.0
FLUSH_TIMEOUT = 120.0

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """One JSON line to the parent."""
    line = json.dumps(obj)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# -- message kinds of the benchmark (registered in every node process) -------


@message_kind("bench.start")
@dataclass(frozen=True, slots=True)
class StartSending(Message):
    """Tell ``count`` Pings, starting at target index ``offset``."""

    count: int
    offset: int
    chunk: int


@message_kind("bench.more")
@dataclass(frozen=True, slots=True)
class More(Message):
    """A sender's note to itself: the next chunk."""


# -- sink ---------------------------------------------------------------------


class SinkStats:
    """Shared by every sink in the process. ``next()`` on an
    ``itertools.count`` is atomic under the GIL, so no lock per message."""

    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.received = 0
        self.first = 0.0
        self.last = 0.0
        self.expect = 0
        self.announced = False
        self.lock = threading.Lock()

    def snapshot(self, event: str) -> dict[str, Any]:
        return {"event": event, "received": self.received, "first_receipt": self.first, "last_receipt": self.last}

    def arm(self, n: int) -> None:
        with self.lock:
            self.expect = n
            done = self.received >= n and not self.announced
            self.announced = self.announced or done
        if done:
            emit(self.snapshot("all-received"))


SINK = SinkStats()


class Sink(HuddleActor):
    """Counts what it gets; the ``expect``-th message overall announces itself."""

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if type(message) is Ping:
            stats = SINK
            n = next(stats.counter)
            now = time.time()
            if n > stats.received:
                stats.received = n
                stats.last = now
            if n == 1:
                stats.first = now
            if n == stats.expect:
                with stats.lock:
                    announce = not stats.announced
                    stats.announced = True
                if announce:
                    emit(stats.snapshot("all-received"))
            return None
        return super().on_message(message, envelope)


# -- sender -------------------------------------------------------------------


class SendStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first_send = 0.0
        self.sent = 0
        self.active = 0
        self.done = threading.Event()

    def begin(self, actors: int) -> None:
        with self.lock:
            self.first_send = 0.0
            self.sent = 0
            self.active = actors
            self.done.clear()

    def started(self, now: float) -> None:
        with self.lock:
            if self.first_send == 0.0 or now < self.first_send:
                self.first_send = now

    def finished(self, sent: int) -> None:
        with self.lock:
            self.sent += sent
            self.active -= 1
            if self.active == 0:
                self.done.set()


SEND = SendStats()


class Sender(HuddleActor):
    """On ``bench.start``: tell Pings round-robin over ``targets``, ``chunk``
    per handler run (a handler never runs long), then ``bench.more`` to itself."""

    def __init__(self, ctx: ActorContext, targets: list[str], payload: bytes) -> None:
        super().__init__(ctx)
        self.targets = targets
        self.payload = payload
        self.remaining = 0
        self.position = 0
        self.chunk = 1
        self.sent = 0

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        t = type(message)
        if t is StartSending:
            self.remaining = message.count
            self.position = message.offset
            self.chunk = max(1, message.chunk)
            self.sent = 0
            SEND.started(time.time())
            self._burst()
            return None
        if t is More:
            self._burst()
            return None
        return super().on_message(message, envelope)

    def _burst(self) -> None:
        k = min(self.chunk, self.remaining)
        targets = self.targets
        count = len(targets)
        payload = self.payload
        tell = self.tell
        base = self.sent
        pos = self.position
        for j in range(k):
            tell(targets[(pos + j) % count], Ping(n=base + j, payload=payload))
        self.position = (pos + k) % count
        self.sent += k
        self.remaining -= k
        if self.remaining > 0:
            self.tell(self.address, More())
        else:
            SEND.finished(self.sent)


# -- asker --------------------------------------------------------------------


class _Tally:
    """Round trips timed one by one (``time.perf_counter()``), and the
    answers that were not the Pong asked for."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.clock = time.perf_counter

    def record(self, started: float, pong: Any, n: int) -> None:
        self.latencies.append(self.clock() - started)
        if type(pong) is not Pong or pong.n != n:
            self.errors += 1

    def summary(self, samples: bool = False) -> dict[str, Any]:
        """Percentiles; with ``samples``, every round trip too (``rtts_s``,
        in the order taken), for a caller that pools several runs."""
        latencies = sorted(self.latencies)
        n = len(latencies)
        out = {
            "event": "asked",
            "n": n,
            "errors": self.errors,
            "p50_us": statistics.median(latencies) * 1e6,
            "p99_us": latencies[min(n - 1, int(n * 0.99))] * 1e6,
            "mean_us": statistics.fmean(latencies) * 1e6,
            "max_us": latencies[-1] * 1e6,
        }
        if samples:
            out["rtts_s"] = self.latencies
        return out


def run_asks(node: Node, target: str, n: int, warmup: int, timeout: float, samples: bool = False) -> dict[str, Any]:
    """``n`` sequential asks from this (the main) thread, each blocking on
    ``get()``: the reply is read on the node's loop, which wakes this thread."""
    ask, tally = node.ask, _Tally()
    for i in range(warmup):
        ask(target, Ping(n=i)).get(timeout=timeout)
    for i in range(n):
        started = tally.clock()
        tally.record(started, ask(target, Ping(n=i), timeout=timeout).get(timeout=timeout + 1), i)
    return tally.summary(samples)


async def _asks_on_loop(node: Node, target: str, n: int, warmup: int, timeout: float,
                        samples: bool) -> dict[str, Any]:
    ask, tally = node.ask, _Tally()
    for i in range(warmup):
        await ask(target, Ping(n=i), timeout=timeout)
    for i in range(n):
        started = tally.clock()
        tally.record(started, await ask(target, Ping(n=i), timeout=timeout), i)
    return tally.summary(samples)


def run_asks_on_loop(node: Node, target: str, n: int, warmup: int, timeout: float,
                     samples: bool = False) -> dict[str, Any]:
    """The same asks from a coroutine on the node's own loop, awaiting each
    answer: the loop that reads the reply resumes the asker, one thread."""
    return node.io.submit(_asks_on_loop(node, target, n, warmup, timeout, samples)).result(  # type: ignore[union-attr]
        timeout=(n + warmup) * (timeout + 1))


# -- the parent's handle on a node process -----------------------------------


class ScriptedNode:
    """A node process running this script (not ``huddle node``: a benchmark
    role, driven by JSON lines both ways), and an
    end by PID (``stop``) that the parent calls in a ``finally``."""

    def __init__(self, role: str, redis_url: str, node_id: str, *options: str,
                 env: dict[str, str] | None = None) -> None:
        self.node_id = node_id
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), role, "--redis-url", redis_url, "--node-id", node_id,
             *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env=None if env is None else {**os.environ, **env},
        )
        self.pid = self.proc.pid
        self._lines: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"read-{node_id}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except json.JSONDecodeError:
                sys.stderr.write(f"[{self.node_id}] {line}")
        self._lines.put(None)  # EOF: the process is gone

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, value: Any = True, timeout: float = 60.0) -> dict[str, Any]:
        """The next line whose ``key`` is ``value``, within ``timeout`` seconds.
        Raises ``TimeoutError`` past it and ``RuntimeError`` if the process
        reports an error or ends."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.node_id}: no {key}={value!r} within {timeout:g}s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)
                raise RuntimeError(f"{self.node_id} (pid {self.pid}) exited with {self.proc.wait()}")
            if line.get("event") == "error":
                raise RuntimeError(f"{self.node_id}: {line.get('error')}")
            if line.get(key) == value:
                return line

    def ready(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.expect("ready", True, timeout)

    # Optional sampling profile of this process: see common.Profile.
    _profile: Profile | None = None

    def start_profile(self, tag: str) -> None:
        self._profile = Profile(self.pid, tag, self.node_id).start()

    def end_profile(self) -> None:
        profile, self._profile = self._profile, None
        if profile is not None:
            profile.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask it to quit, then SIGTERM and SIGKILL by PID if it does not."""
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.kill(self.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(timeout=timeout)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self.end_profile()
        self._reader.join(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


# -- the process --------------------------------------------------------------


def _stats(node: Node, transport: Transport) -> dict[str, Any]:
    s = transport.stats
    return {
        "transport": {"published": s.published, "received": s.received, "dropped": s.dropped,
                      "reconnects": s.reconnects, "receiver_errors": s.receiver_errors},
        "node": {k: v for k, v in node.counters.items() if not k.startswith("event:")},
        "cpu_seconds": round(_cpu() - _cpu_mark[0], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "thread_cpu_seconds": _thread_cpu(),
    }


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) each live Python thread used since it started, by name (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[thread.name] = round((int(fields[11]) + int(fields[12])) / tick, 2)
    return out


def _cpu() -> float:
    return sum(os.times()[:2])


_cpu_mark = [0.0]  # CPU time of this process when the measured phase began


def serve(args: argparse.Namespace) -> int:
    transport = transport_for(args.redis_url, name=args.node_id)  # one server, or a Redis Cluster (redis-cluster)
    # Signed envelopes when $HUDDLE_CLUSTER_KEY is set (tell-remote measures both).
    node = Node(transport, node_id=args.node_id, codec=Codec(signer=cluster_signer()))
    tune_node_gc()  # as a `huddle node` process does (HUDDLE_BENCH_GC)
    node.start()
    try:
        if args.role == "sink":
            for i in range(args.actors):
                node.spawn(f"sink:s{i}", Sink)
        elif args.role == "sender":
            targets = [f"sink:s{i}" for i in range(args.targets)]
            payload = b"p" * args.payload
            for i in range(args.actors):
                node.spawn(f"sender:k{i}", Sender, targets, payload)
        elif args.role == "echo":
            for address in args.echo:
                node.spawn(address, Echo)
        if not transport.wait_subscribed(READY_TIMEOUT):
            emit({"event": "error", "error": "not subscribed in time"})
            return 2
        emit({"ready": True, "pid": os.getpid(), "node": node.node_id})
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            what = cmd.get("cmd")
            if what == "quit":
                break
            if what in ("expect", "start", "run", "mark"):
                _cpu_mark[0] = _cpu()
            if what == "mark":
                pass
            elif what == "expect":
                SINK.arm(int(cmd["n"]))
            elif what == "report":
                emit({**SINK.snapshot("report"), **_stats(node, transport)})
            elif what == "start":
                senders = args.actors
                total = int(cmd["total"])
                SEND.begin(senders)
                per, extra = divmod(total, senders)
                offset = 0
                for i in range(senders):
                    count = per + (1 if i < extra else 0)
                    node.tell(f"sender:k{i}", StartSending(count=count, offset=offset % args.targets,
                                                            chunk=int(cmd.get("chunk", 1000))))
                    offset += count
                if not SEND.done.wait(SEND_TIMEOUT):
                    emit({"event": "error", "error": "senders did not finish"})
                    continue
                sent_at = time.time()
                flushed = transport.flush(FLUSH_TIMEOUT)
                emit({"event": "sent", "sent": SEND.sent, "first_send": SEND.first_send, "sent_at": sent_at,
                      "flushed_at": time.time(), "flushed": flushed, **_stats(node, transport)})
            elif what == "run":
                runner = run_asks_on_loop if cmd.get("on_loop") else run_asks
                emit(runner(node, cmd["target"], int(cmd["n"]), int(cmd.get("warmup", 0)),
                            float(cmd.get("timeout", 5.0)), bool(cmd.get("samples"))))
            elif what == "stats":
                emit({"event": "stats", **_stats(node, transport)})
            else:
                emit({"event": "error", "error": f"unknown command {what!r}"})
        return 0
    finally:
        node.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["sink", "sender", "echo", "asker"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--actors", type=int, default=1, help="sinks or senders to host")
    parser.add_argument("--targets", type=int, default=1000, help="sender: how many sink addresses")
    parser.add_argument("--payload", type=int, default=100, help="sender: Ping payload bytes")
    parser.add_argument("--echo", action="append", default=[], help="echo: address to host an Echo at")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HUDDLE_LOG", "WARNING"), stream=sys.stderr,
                        format=f"%(asctime)s {args.node_id} %(levelname)s %(name)s: %(message)s")
    return serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
