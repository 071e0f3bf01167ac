"""Cluster nodes inside the test process, on a real redis-server.

Each test gets its own key and channel namespace on the session's Redis,
so tests never see each other's nodes. Timings are short so failover tests
are quick; nothing waits on them: every wait is on an event (or a value)
with a deadline reached only when something is broken.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors.runtime.builtin import BUILTIN_FACTORIES
from actors.cluster import ActorFactories, Cluster, ClusterConfig
from actors.runtime.node import Node
from bus.embedded import EmbeddedRedis
from bus.messages import Event
from bus.redis_transport import RedisTransport

DEADLINE = 15.0
FAST = ClusterConfig(heartbeat_interval=0.15, lease_ttl=1.5, sweep_interval=1.0)


class Events:
    """Every event of every node of a rig, to wait on."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self._cond = threading.Condition()

    def add(self, event: Event) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def matching(self, **fields: Any) -> list[Event]:
        with self._cond:
            return [e for e in self.items if all(getattr(e, k) == v for k, v in fields.items())]

    def wait(self, timeout: float = DEADLINE, count: int = 1, **fields: Any) -> list[Event]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.matching(**fields)) >= count, timeout)
        if not ok:
            recent = [(e.node, e.event, e.address, e.reason) for e in self.items[-15:]]
            raise AssertionError(f"not {count} event(s) {fields} within {timeout:g}s; last: {recent}")
        return self.matching(**fields)

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
        """For conditions that events announce (checked on every event)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"not true within {timeout:g}s: {what}")


class Rig:
    """Nodes in one namespace; ``add`` starts one and waits until it joined."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"c{uuid.uuid4().hex[:8]}:"
        self.events = Events()
        self.nodes: dict[str, Node] = {}
        self.clusters: dict[str, Cluster] = {}

    def add(self, node_id: str, *, kinds: tuple[str, ...] = ("counter",), config: ClusterConfig = FAST,
            start: bool = True) -> Cluster:
        node = Node(RedisTransport(self.url, name=f"{self.namespace}{node_id}"), node_id=node_id,
                    namespace=self.namespace)
        node.add_event_listener(self.events.add)
        cluster = Cluster(node, self.url, config=config,
                          factories=ActorFactories({k: BUILTIN_FACTORIES[k] for k in kinds}))
        self.nodes[node_id] = node
        self.clusters[node_id] = cluster
        if start:
            node.start()
            assert cluster.start(DEADLINE), f"{node_id} did not join"
        return cluster

    def crash(self, node_id: str) -> None:
        """As if the process died: no more heartbeats, its connections gone,
        nothing released."""
        cluster = self.clusters[node_id]
        node = self.nodes[node_id]
        cluster._closed = True
        node.io.submit(cluster._shutdown(), tracked=False).result(timeout=DEADLINE)
        node.transport.close()

    def close(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.shutdown(timeout=5.0)


@pytest.fixture
def rig(redis_server: EmbeddedRedis) -> Iterator[Rig]:
    r = Rig(redis_server.url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def private_rig(fresh_redis: EmbeddedRedis) -> Iterator[tuple[Rig, EmbeddedRedis]]:
    """A rig on its own redis-server, for tests that restart it."""
    r = Rig(fresh_redis.url)
    try:
        yield r, fresh_redis
    finally:
        r.close()
