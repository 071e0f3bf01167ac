"""Fixtures for the cluster scripts: one real redis-server, a private key
namespace per test, and an asyncio loop to drive redis-py's async client
from plain (synchronous) tests."""

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
from bus.cluster.backlog import Backlog
from bus.cluster.leases import LeaseStore
from bus.cluster.messages import LeaseChange, NodeHeartbeat
from bus.embedded import EmbeddedRedis
from bus.envelope import Codec, Envelope
from bus.redis_transport import RedisTransport

T = TypeVar("T")
DEADLINE = 10.0


class ClusterRedis:
    """The scripts of one namespace on one loop, plus a sync client to look."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"t{uuid.uuid4().hex[:8]}:"
        self.runner = asyncio.Runner()
        self.codec = Codec()
        self.client: aioredis.Redis = self.runner.run(self._connect())
        self.leases = LeaseStore(self.client, namespace=self.namespace, codec=self.codec)
        self.backlog = Backlog(self.client, namespace=self.namespace, cap=5)
        self.sync = redis.Redis.from_url(url)
        self.keys = self.leases.keys

    async def _connect(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def heartbeat(self, node: str, leases: dict[str, int] | None = None, *, ttl: float = 30.0, era: str = "era-1"):
        """Make ``node`` a live member (and renew ``leases``)."""
        hb = NodeHeartbeat(node=node, ttl=ttl)
        return self.run(self.leases.renew(node, ttl=ttl, node_body=b"body", new_era=era, leases=leases or {},
                                          heartbeat=self.codec.encode(Envelope(to=SYS_NODES, message=hb))))

    def kill(self, node: str) -> None:
        """As if ``node``'s heartbeat key expired."""
        self.sync.delete(self.keys.node(node))

    def close(self) -> None:
        self.run(self.client.aclose())
        self.runner.close()
        self.sync.close()


@pytest.fixture
def cr(redis_server: EmbeddedRedis) -> Iterator[ClusterRedis]:
    c = ClusterRedis(redis_server.url)
    try:
        yield c
    finally:
        c.close()


class ChannelLog:
    """Decoded envelopes from channels, to wait on (a real subscriber)."""

    def __init__(self, url: str, *channels: str) -> None:
        self.codec = Codec()
        self.items: list[tuple[str, Envelope]] = []
        self._cond = threading.Condition()
        self.transport = RedisTransport(url, name=f"log-{uuid.uuid4().hex[:6]}")
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


@pytest.fixture
def nodes_channel(cr: ClusterRedis) -> Iterator[ChannelLog]:
    log = ChannelLog(cr.url, channel_for(SYS_NODES, cr.namespace))
    try:
        yield log
    finally:
        log.close()
