"""Fixtures for the cluster scripts: a private key namespace per test on a
store, run three times: on one redis-server (the scripts of
``bus/cluster/leases.py``), on a Redis Cluster of 3 primaries (the
per-address scripts of ``bus/cluster/sharded_store.py``), and on the
simulation's Redis model (``ops.sim``: the one-server scripts on a
simulated network and clock; the contract holding there too is half of
the model's differential test); and an asyncio loop to drive redis-py's
async client from plain (synchronous) tests. A test of what holds on one
server only takes ``cr1`` instead of ``cr``."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from bus.address import SYS_NODES, channel_for
from bus.cluster.keys import BORN, born_key
from bus.cluster.sharded_store import backlog_for, lease_store_for
from bus.cluster.messages import LeaseChange, NodeHeartbeat
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError
from bus.sharded import is_cluster_url, transport_for
from bus.store_client import store_client
from ops.sim.world import World

T = TypeVar("T")
DEADLINE = 10.0


class ClusterRedis:
    """The scripts of one namespace on one loop, plus a sync client to look.
    With ``world``, the loop is the simulated world's and the store its
    Redis model (``url`` is the model's)."""

    def __init__(self, url: str, world: World | None = None) -> None:
        self.url = url
        self.world = world
        self.namespace = f"t{uuid.uuid4().hex[:8]}:"
        self.runner = asyncio.Runner() if world is None else None
        self.codec = Codec()
        self.sharded = is_cluster_url(url)
        self.client: aioredis.Redis = self.run(self._connect())
        self.leases = lease_store_for(self.client, namespace=self.namespace, codec=self.codec)
        self.backlog = backlog_for(self.client, namespace=self.namespace, cap=5)
        self.sync: redis.Redis = (
            world.redis.inspector() if world is not None else
            redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(*s) for s in _seeds(url)])
            if self.sharded else redis.Redis.from_url(url))
        self.keys = self.leases.keys
        self.run(self.leases.assume_settled())  # claims need not wait for this data set to age

    async def _connect(self) -> aioredis.Redis:
        return store_client(self.url, max_connections=8)  # type: ignore[return-value]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.world is not None:
            return self.world.run(coro)
        assert self.runner is not None
        return self.runner.run(coro)

    def heartbeat(self, node: str, leases: dict[str, int] | None = None, *, ttl: float = 30.0, era: str = "era-1"):
        """Make ``node`` a live member (and renew ``leases``)."""
        hb = NodeHeartbeat(node=node, ttl=ttl)
        return self.run(self.leases.renew(node, ttl=ttl, node_body=b"body", new_era=era, leases=leases or {},
                                          heartbeat=self.codec.encode(Envelope(to=SYS_NODES, message=hb))))

    def born(self, address: str) -> str:
        """The key of the data set's birth where ``address`` lives."""
        return born_key(address) if self.sharded else BORN

    def lose_data(self, address: str) -> None:
        """As if Redis restarted and lost the address's keys: they are gone,
        and the data set's birth names another run of the server."""
        keys = self.keys
        for key in (keys.lease(address), keys.issued(address), keys.spec(address), keys.checkpoint(address)):
            self.sync.delete(key)  # one by one: on a cluster they live in different slots
        self.sync.set(self.born(address), b"0 " + b"e" * 40)

    def kill(self, node: str) -> None:
        """As if ``node`` died: its heartbeat key expired and, on a cluster
        (where liveness is the lease itself), the leases it renewed with it."""
        self.sync.delete(self.keys.node(node))
        if self.sharded:
            for address in self.sync.smembers(self.keys.held(node)):
                key = self.keys.lease(address.decode())
                if (self.sync.get(key) or b"").endswith(b" " + node.encode()):
                    self.sync.delete(key)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.sync.close()
        if self.runner is not None:
            self.runner.close()
        if self.world is not None:
            self.world.close()


def _seeds(url: str) -> list[tuple[str, int]]:
    from bus.sharded import ClusterUrl

    return list(ClusterUrl.parse(url).seeds)


@pytest.fixture(params=["one-server", "redis-cluster", "sim-model"])
def cr(request: pytest.FixtureRequest) -> Iterator[ClusterRedis]:
    if request.param == "sim-model":
        world = World(seed=1)
        c = ClusterRedis(world.redis.url, world)
    else:
        fixture = "redis_cluster" if request.param == "redis-cluster" else "redis_server"
        c = ClusterRedis(request.getfixturevalue(fixture).url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def cr1(redis_server: object) -> Iterator[ClusterRedis]:
    """The store on one server only (what the sharded store does otherwise)."""
    c = ClusterRedis(redis_server.url)  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.close()


class ChannelLog:
    """Decoded envelopes from channels, to wait on (a real subscriber)."""

    def __init__(self, url: str, *channels: str, codec: Codec | None = None) -> None:
        self.codec = codec or Codec()
        self.items: list[tuple[str, Envelope]] = []
        self._cond = threading.Condition()
        self.transport = transport_for(url, name=f"log-{uuid.uuid4().hex[:6]}")
        self.transport.set_receiver(self._receive)
        self.transport.start()
        self.transport.subscribe(*channels)
        assert self.transport.wait_subscribed(DEADLINE)

    def _receive(self, channel: str, data: bytes) -> None:
        with self._cond:
            self.items.append((channel, self.codec.decode(data)))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[Envelope], bool], timeout: float = DEADLINE) -> Envelope:
        found: list[Envelope] = []

        def seen() -> bool:
            found[:] = [env for _, env in self.items if predicate(env)]
            return bool(found)

        with self._cond:
            assert self._cond.wait_for(seen, timeout), f"nothing matching; saw {[e.message for _, e in self.items]}"
        return found[0]

    def lease_changes(self) -> list[LeaseChange]:
        with self._cond:
            return [env.message for _, env in self.items if isinstance(env.message, LeaseChange)]

    def close(self) -> None:
        self.transport.close()


class ModelChannelLog:
    """:class:`ChannelLog`'s contract on a simulated world: a redis-py
    subscriber on the world's loop; :meth:`wait` runs the world until an
    envelope matches (or ``timeout`` seconds of its clock pass)."""

    def __init__(self, cr: ClusterRedis, *channels: str, codec: Codec | None = None) -> None:
        assert cr.world is not None
        self.world = cr.world
        self.codec = codec or Codec()
        self.items: list[tuple[str, Envelope]] = []
        self.client = aioredis.Redis.from_url(cr.url)
        self.pubsub = self.client.pubsub()
        self.world.run(self.pubsub.subscribe(*channels))

    async def _read(self, until: float) -> None:
        while self.world.now() < until:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=until - self.world.now())
            if message is not None:
                try:
                    env = self.codec.decode(message["data"])
                except DecodeError:
                    continue  # as the real subscriber's transport does: not for this codec
                self.items.append((message["channel"].decode(), env))
                return

    def wait(self, predicate: Callable[[Envelope], bool], timeout: float = DEADLINE) -> Envelope:
        until = self.world.now() + timeout
        while True:
            found = [env for _, env in self.items if predicate(env)]
            if found:
                return found[0]
            assert self.world.now() < until, f"nothing matching; saw {[e.message for _, e in self.items]}"
            self.world.run(self._read(until))

    def lease_changes(self) -> list[LeaseChange]:
        return [env.message for _, env in self.items if isinstance(env.message, LeaseChange)]

    def close(self) -> None:
        self.world.run(self.pubsub.aclose())
        self.world.run(self.client.aclose())


def channel_log(cr: ClusterRedis, *channels: str, codec: Codec | None = None) -> ChannelLog | ModelChannelLog:
    """A subscriber of ``channels`` on ``cr``'s store (real or simulated)."""
    if cr.world is not None:
        return ModelChannelLog(cr, *channels, codec=codec)
    return ChannelLog(cr.url, *channels, codec=codec)


@pytest.fixture
def nodes_channel(cr: ClusterRedis) -> Iterator[ChannelLog | ModelChannelLog]:
    """A subscriber of ``sys:nodes`` of ``cr``'s namespace."""
    log = channel_log(cr, channel_for(SYS_NODES, cr.namespace))
    try:
        yield log
    finally:
        log.close()
