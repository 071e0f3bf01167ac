"""What the cluster benchmarks share: ``huddle node --cluster`` processes
(ended by PID), a listener on ``sys:events``, and the benchmark process as
one more cluster member that places actors and talks to them."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import redis

from actors.cluster import Cluster, ClusterConfig
from actors.runtime.node import Node
from bus.address import SYS_EVENTS, channel_for
from bus.cluster.keys import ClusterKeys
from bus.envelope import Codec
from bus.errors import DecodeError
from bus.messages import Event
from bus.sharded import ClusterUrl, is_cluster_url, transport_for
from ops.processes import NodeProcess



class Timing:
    """Heartbeat and lease timings, for the nodes and the benchmark process."""

    def __init__(self, heartbeat: float, lease_ttl: float, sweep: float = 1.0) -> None:
        self.heartbeat = heartbeat
        self.lease_ttl = lease_ttl
        self.sweep = sweep

    def options(self) -> list[str]:
        return ["--heartbeat", str(self.heartbeat), "--lease-ttl", str(self.lease_ttl), "--sweep", str(self.sweep)]

    def config(self) -> ClusterConfig:
        return ClusterConfig(heartbeat_interval=self.heartbeat, lease_ttl=self.lease_ttl, sweep_interval=self.sweep)


def cluster_node(redis_url: str, node_id: str, namespace: str, timing: Timing, workdir: Path,
                 options: Sequence[str] = ()) -> NodeProcess:
    """One ``huddle node`` cluster member hosting counters, started now
    (the one node harness, :class:`ops.processes.NodeProcess`)."""
    opts = ["--namespace", namespace, "--actors", "counter", *timing.options(), *options]
    if "--cluster-key-file" not in options:
        # The cluster benchmarks measure leases and failover with plain
        # envelopes (tell-remote measures what signing costs).
        opts.append("--insecure-no-signing")
    return NodeProcess.start(node_id, redis_url, workdir, opts)


class EventTap:
    """Every event on ``<namespace>sys:events``, with the time it arrived."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.events: list[Event] = []
        self._codec = Codec()
        self._cond = threading.Condition()
        self._transport = transport_for(redis_url, name=f"bench-tap-{os.getpid()}")
        self._transport.set_receiver(self._receive)
        self._transport.start()
        self._transport.subscribe(channel_for(SYS_EVENTS, namespace))
        if not self._transport.wait_subscribed(10):
            raise RuntimeError("could not listen on sys:events")

    def _receive(self, _channel: str, data: bytes) -> None:
        try:
            env = self._codec.decode(data)
        except DecodeError:
            return
        if isinstance(env.message, Event):
            with self._cond:
                self.events.append(env.message)
                self._cond.notify_all()

    def matching(self, predicate: Callable[[Event], bool]) -> list[Event]:
        with self._cond:
            return [e for e in self.events if predicate(e)]

    def wait_match(self, predicate: Callable[[Event], bool], timeout: float) -> Event | None:
        found: list[Event] = []

        def seen() -> bool:
            found[:] = [e for e in self.events if predicate(e)]
            return bool(found)

        with self._cond:
            self._cond.wait_for(seen, timeout)
        return found[0] if found else None

    def close(self) -> None:
        self._transport.close()


class BenchMember:
    """The benchmark process as a cluster member that hosts nothing placed."""

    def __init__(self, redis_url: str, namespace: str, timing: Timing, node_id: str = "bench") -> None:
        self.redis_url = redis_url
        self.keys = ClusterKeys(namespace)
        self.node = Node(transport_for(redis_url, name=f"{namespace}{node_id}"), node_id=node_id,
                         namespace=namespace)
        self.cluster = Cluster(self.node, redis_url, config=timing.config())
        self.node.start()
        if not self.cluster.start(30):
            raise RuntimeError("the benchmark process could not join the cluster")

    def place(self, addresses: Sequence[str], timeout: float = 120.0) -> dict[str, str]:
        futures = {a: self.cluster.ensure(a) for a in addresses}
        return {a: f.get(timeout=timeout) for a, f in futures.items()}

    def stored(self, addresses: Sequence[str]) -> list[Any]:
        """The checkpoints Redis holds (None where there is none)."""
        client = raw_client(self.redis_url)
        try:
            names = [self.keys.checkpoint(a) for a in addresses]
            raw = client.mget_nonatomic(names) if isinstance(client, redis.RedisCluster) else client.mget(names)
        finally:
            client.close()
        return [msgpack.unpackb(r, raw=False) if r else None for r in raw]

    def wait_stored(self, addresses: Sequence[str], ok: Callable[[Any], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while not all(ok(v) for v in self.stored(addresses)):
            if time.monotonic() > deadline:
                raise RuntimeError("checkpoints not written in time")
            pause.wait(0.05)

    def close(self) -> None:
        self.node.shutdown()


def raw_client(redis_url: str) -> redis.Redis | redis.RedisCluster:
    """A plain redis-py client of the bus: one server, or a Redis Cluster."""
    if is_cluster_url(redis_url):
        seeds = ClusterUrl.parse(redis_url).seeds
        return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds])
    return redis.Redis.from_url(redis_url)


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"huddle-bench-{name}-"))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
