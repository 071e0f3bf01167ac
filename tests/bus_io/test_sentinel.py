"""The bus and the cluster behind Sentinel (redis+sentinel://), on a real
Redis 7 primary, replica and three sentinels: the primary found by asking
the sentinels, a planned switchover and a killed primary followed under
traffic (the cluster of node processes behind Sentinel: tests/integration/test_cluster.py)."""

from __future__ import annotations

import asyncio
import collections
import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bus.address import SYS_NODES
from bus.cluster.keys import ClusterKeys
from bus.cluster.leases import LeaseStore
from bus.cluster.messages import NodeHeartbeat
from bus.embedded_cluster import EmbeddedSentinel
from bus.envelope import Codec, Envelope
from bus.redis_transport import RedisTransport
from bus.sentinel import connection_pool
from tests.waiting import wait_until
from ops.processes import REPO_ROOT, NodeProcess, huddle_command

pytestmark = pytest.mark.integration

DEADLINE = 30.0


class Inbox:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self._cond = threading.Condition()

    def __call__(self, channel: str, data: bytes) -> None:
        with self._cond:
            self.got.append(data)
            self._cond.notify_all()

    def wait_for(self, data: bytes, timeout: float = DEADLINE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: data in self.got, timeout)


class Pair:
    """A sender and a receiver on the sentinel URL; the receiver's states."""

    def __init__(self, url: str) -> None:
        self.inbox = Inbox()
        self.states: list[str] = []
        self.back = threading.Event()
        self.receiver = RedisTransport(url, name="sentinel-rx")
        self.receiver.set_receiver(self.inbox)
        self.receiver.on_state(self._state)
        self.sender = RedisTransport(url, name="sentinel-tx")

    def _state(self, state: str) -> None:
        self.states.append(state)
        if state == "resubscribed":
            self.back.set()

    def start(self, channel: str) -> None:
        self.receiver.subscribe(channel)
        self.receiver.start()
        self.sender.start()
        assert self.receiver.wait_subscribed(DEADLINE)

    def round(self, channel: str, tag: str, n: int = 100) -> None:
        """``n`` messages, every one received."""
        sent = [f"{tag}-{i}".encode() for i in range(n)]
        for data in sent:
            self.sender.publish(channel, data)
        assert self.sender.flush(DEADLINE)
        assert self.inbox.wait_for(sent[-1]), f"{tag}: {len(self.inbox.got)} received; states {self.states}"
        got = [d for d in self.inbox.got if d.startswith(f"{tag}-".encode())]
        assert got == sent  # each once, in order

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


@pytest.fixture
def pair(redis_sentinel: EmbeddedSentinel) -> Iterator[Pair]:
    p = Pair(redis_sentinel.url)
    try:
        yield p
    finally:
        p.close()


def connected_clients(port: int) -> collections.Counter[str]:
    with redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5) as client:
        return collections.Counter(c["name"] for c in client.client_list())


def test_the_bus_finds_the_primary_and_follows_a_planned_switchover(
        redis_sentinel: EmbeddedSentinel, pair: Pair) -> None:
    setup = redis_sentinel
    old = setup.primary_port()
    pair.start("echo:sentinel")
    assert {"huddle:sentinel-rx:subscriber", "huddle:sentinel-tx:publisher"} <= set(connected_clients(old))
    pair.round("echo:sentinel", "before")
    new = setup.switchover()
    assert new != old
    # The demoted primary keeps its clients: the transports leave it themselves.
    assert pair.back.wait(DEADLINE), f"the receiver did not come back: {pair.states}"
    wait_until(lambda: {"huddle:sentinel-rx:subscriber", "huddle:sentinel-tx:publisher"}
               <= set(connected_clients(new)), "both transports on the new primary")
    wait_until(lambda: not {"huddle:sentinel-rx:subscriber", "huddle:sentinel-tx:publisher"}
               & set(connected_clients(old)), "nothing left on the demoted one")
    assert pair.states[:3] == ["connected", "disconnected", "connected"] and "resubscribed" in pair.states
    pair.round("echo:sentinel", "after")


def test_the_bus_moves_when_the_sentinels_announce_a_switchover_not_at_its_next_check(
        redis_sentinel: EmbeddedSentinel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With the periodic check out of reach (10 minutes), only the
    sentinels' +switch-master can make the transports leave the old
    primary themselves, and it does (they say so); without it they would
    stay until the sentinels demote it and drop its clients, taking writes
    its resync discards meanwhile."""
    import bus.redis_transport
    monkeypatch.setattr(bus.redis_transport, "CHECK_INTERVAL_S", 600.0)
    caplog.set_level(logging.WARNING, logger="bus.redis_transport")
    pair = Pair(redis_sentinel.url)
    try:
        pair.start("echo:announced")
        old = redis_sentinel.primary_port()
        reply = redis.Redis(host="127.0.0.1", port=redis_sentinel.sentinel_ports[0]).execute_command(
            "SENTINEL", "FAILOVER", redis_sentinel.master_name)
        assert reply in ("OK", True, b"OK")
        assert pair.back.wait(DEADLINE), f"the receiver did not move: {pair.states}"
        new = redis_sentinel.primary_port()
        assert new != old
        names = {"huddle:sentinel-rx:subscriber", "huddle:sentinel-tx:publisher"}
        wait_until(lambda: names <= set(connected_clients(new)), "both transports on the new primary")
        moved = [r.getMessage() for r in caplog.records if "as the primary now; moving there" in r.getMessage()]
        assert {"sentinel-rx", "sentinel-tx"} <= {m.split("name='", 1)[1].split("'", 1)[0] for m in moved}, moved
        pair.round("echo:announced", "after")
    finally:
        pair.close()


def test_the_bus_follows_a_killed_primary_to_the_promoted_replica(
        redis_sentinel: EmbeddedSentinel, pair: Pair) -> None:
    setup = redis_sentinel
    pair.start("echo:sentinel-kill")
    pair.round("echo:sentinel-kill", "before")
    setup.kill_primary()
    new = setup.wait_switchover()
    assert pair.back.wait(DEADLINE), f"the receiver did not come back: {pair.states}"
    assert "huddle:sentinel-rx:subscriber" in connected_clients(new)
    pair.round("echo:sentinel-kill", "after")



def test_a_node_and_inject_on_a_sentinel_url(redis_sentinel: EmbeddedSentinel, tmp_path: Path) -> None:
    node = NodeProcess.start("sentinel-1", redis_sentinel.url, tmp_path, ["--echo", "echo:st-1"])
    try:
        node.wait_ready()
        inject = subprocess.run(huddle_command("inject", "echo:st-1", "sys.ping", '{"n": 4}', "--ask",
                                               "--redis-url", redis_sentinel.url),
                                capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert inject.returncode == 0, inject.stderr
        assert '"n": 4' in inject.stdout
    finally:
        assert node.stop() == 0


def test_epochs_keep_growing_when_the_promoted_replica_missed_the_last_ones(redis_sentinel: EmbeddedSentinel) -> None:
    """A claim the replica never received (its link cut) drew an epoch and
    advanced the epoch counter on the old primary only; after the primary
    dies and the replica is promoted, its counter is behind. A claim of the
    same address on the new primary waits a lease TTL (a new server's run),
    then still draws a higher epoch: every epoch is floored by the server
    clock in microseconds, not only the counter."""
    namespace = f"t{uuid.uuid4().hex[:8]}:"
    codec = Codec()

    async def store_on_primary() -> LeaseStore:
        pool = connection_pool(redis_sentinel.url, max_connections=2, timeout=None)
        return LeaseStore(aioredis.Redis(connection_pool=pool), namespace=namespace, codec=codec)

    async def claim(store: LeaseStore, node: str, address: str, *, promoted: bool = False) -> int:
        hb = NodeHeartbeat(node=node, ttl=30.0)
        await store.renew(node, ttl=30.0, node_body=b"body", new_era="era-1", leases={},
                          heartbeat=codec.encode(Envelope(to=SYS_NODES, message=hb)))
        if promoted:
            # another server's run: claims wait a lease TTL (n1 may still
            # trust the lease the promoted replica never saw)
            waiting = await store.claim(address, node, ttl=30.0)
            assert not waiting.won and waiting.holder == "" and 29 < waiting.settling <= 30
        await store.assume_settled()  # a test's: nobody trusts a lease it lost
        result = await store.claim(address, node, ttl=30.0)
        assert result.won, result
        return result.epoch

    async def before_the_failover() -> tuple[int, int]:
        store = await store_on_primary()
        try:
            first = await claim(store, "n1", "a:1")
            old = redis.Redis(host="127.0.0.1", port=redis_sentinel.primary_port())
            try:
                assert old.wait(1, int(DEADLINE * 1000)) >= 1  # the replica has a:1
                redis_sentinel.pause(redis_sentinel.replica_ports()[0])
                old.execute_command("CLIENT", "KILL", "TYPE", "replica")  # what follows never reaches it
            finally:
                old.close()
            return first, await claim(store, "n1", "a:2")
        finally:
            await store.client.aclose()

    replica = redis_sentinel.replica_ports()[0]
    try:
        first, missed = asyncio.run(before_the_failover())
    finally:
        redis_sentinel.kill_primary()
        redis_sentinel.resume(replica)
    assert redis_sentinel.wait_switchover() == replica
    keys = ClusterKeys(namespace)
    with redis.Redis(host="127.0.0.1", port=replica) as new:
        assert new.get(keys.lease("a:2")) is None  # the replica never saw that claim
        assert new.get(keys.issued("a:2")) is None  # nor the epoch issued for it

    async def after_the_failover() -> int:
        store = await store_on_primary()
        try:
            return await claim(store, "n2", "a:2", promoted=True)
        finally:
            await store.client.aclose()

    assert first < missed < asyncio.run(after_the_failover())
