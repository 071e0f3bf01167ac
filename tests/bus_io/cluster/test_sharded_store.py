"""bus/cluster/sharded_store.py on a real Redis Cluster (3 primaries, a
replica each): what the sharded store does differently from one server
(liveness is the lease itself; the node sets are hints it repairs), and
epochs that keep growing across a shard's failover whose promoted replica
missed the last claim. The contract both stores share is tested on both in
test_leases.py and test_backlog.py."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bus.cluster.keys import ClusterKeys, born_key
from bus.cluster.leases import ClaimResult
from bus.cluster.sharded_store import ShardedLeaseStore, lease_store_for
from bus.embedded_cluster import EmbeddedRedisCluster
from bus.slots import channel_slot
from bus.shard_client import ShardClient
from bus.store_client import store_client

from tests.waiting import wait_until

from .conftest import ClusterRedis

DEADLINE = 30.0


@pytest.fixture
def crc(redis_cluster: EmbeddedRedisCluster) -> Iterator[ClusterRedis]:
    c = ClusterRedis(redis_cluster.url)
    try:
        assert isinstance(c.leases, ShardedLeaseStore)
        yield c
    finally:
        c.close()


def test_calls_past_a_shards_connection_limit_wait_for_a_connection(redis_cluster: EmbeddedRedisCluster) -> None:
    """More calls at once on one primary than the client has connections
    there (a drain releasing hundreds of leases): each waits for a free
    connection and is answered; none fails with "Too many connections"."""

    async def run() -> list[object]:
        client = store_client(redis_cluster.url, max_connections=1)
        assert isinstance(client, ShardClient)
        client.max_connections = 2  # below the floor the store gets: the limit is what is under test
        try:
            # Each holds its connection for 0.1 s (a blocking pop with nothing to pop).
            return list(await asyncio.gather(*(client.execute_command("BLPOP", "{limit}:empty", "0.1")
                                               for _ in range(8)), return_exceptions=True))
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [None] * 8


def test_adoption_waits_for_a_lease_the_dead_node_still_holds(crc: ClusterRedis) -> None:
    """A lease claimed after the holder's last renewal outlives its
    heartbeat key by up to one TTL. Adoption must not take it from under a
    node that may still trust it: it adopts it once the lease ran out."""
    crc.heartbeat("dead")
    crc.heartbeat("n2")
    crc.run(crc.leases.claim("a:placed", "dead", ttl=30, spec=b"args"))
    crc.run(crc.leases.claim("a:other", "dead", ttl=30, spec=b"args"))
    crc.sync.delete(crc.keys.node("dead"))  # its heartbeat expired; its leases not yet
    crc.sync.delete(crc.keys.lease("a:other"))  # this one ran out
    assert crc.run(crc.leases.adopt("dead")) == ["a:other"]
    assert crc.run(crc.leases.lease("a:placed")) is not None  # left alone
    assert "dead" in crc.run(crc.leases.member_ids())  # adopted again by the next sweep
    assert not crc.run(crc.leases.claim("a:placed", "n2", ttl=5)).won
    crc.sync.delete(crc.keys.lease("a:placed"))  # ran out
    assert crc.run(crc.leases.adopt("dead")) == ["a:placed"]
    assert "dead" not in crc.run(crc.leases.member_ids())
    assert crc.run(crc.leases.unowned()) == ["a:other", "a:placed"]
    assert crc.run(crc.leases.claim("a:placed", "n2", ttl=5)).won
    assert crc.run(crc.leases.unowned()) == ["a:other"]


def test_a_renewal_writes_the_held_and_unowned_sets_again(crc: ClusterRedis) -> None:
    """The held and unowned sets are written after the claim, in commands
    of their own: if those writes were lost, the next renewal repairs them,
    so the node's adoption still finds the address and nobody tries to
    activate it meanwhile."""
    crc.heartbeat("n1")
    lease = crc.run(crc.leases.claim("a:1", "n1", ttl=30, spec=b"args"))
    crc.sync.srem(crc.keys.held("n1"), "a:1")  # as if the claim's second step was lost
    crc.sync.sadd(crc.keys.unowned, "a:1")
    crc.heartbeat("n1", {"a:1": lease.epoch})
    assert crc.sync.smembers(crc.keys.held("n1")) == {b"a:1"}
    assert crc.run(crc.leases.unowned()) == []


def test_a_lease_lost_on_renewal_leaves_the_held_set(crc: ClusterRedis) -> None:
    crc.heartbeat("n1")
    crc.heartbeat("n2")
    lease = crc.run(crc.leases.claim("a:1", "n1", ttl=30))
    crc.sync.delete(crc.keys.lease("a:1"))  # ran out
    taken = crc.run(crc.leases.claim("a:1", "n2", ttl=30))
    renewed = crc.heartbeat("n1", {"a:1": lease.epoch})
    assert renewed.lost == {"a:1": ("n2", taken.epoch)}
    assert crc.sync.smembers(crc.keys.held("n1")) == set()


def test_a_renewal_tells_a_lease_lost_with_its_shards_data_from_one_that_lapsed(crc: ClusterRedis) -> None:
    """The era lives on one shard; another may lose its data alone (or
    have a replica that missed the claim promoted). The slot's birth key
    went with it (or names another run of the server): the renewal reports
    that lease ``reset``, and its holder may write it back."""
    crc.heartbeat("n1")
    lost = crc.run(crc.leases.claim("a:1", "n1", ttl=30))
    lapsed = crc.run(crc.leases.claim("b:1", "n1", ttl=30))
    crc.lose_data("a:1")  # its shard's data, its slot's birth with it
    crc.sync.delete(crc.keys.lease("b:1"))  # ran out
    renewed = crc.heartbeat("n1", {"a:1": lost.epoch, "b:1": lapsed.epoch})
    assert renewed.lost == {"a:1": None, "b:1": None}
    assert renewed.reset == ("a:1",)
    # a promoted replica: the birth names another run of the server
    again = crc.run(crc.leases.restore("a:1", "n1", lost.epoch, ttl=30))
    assert again
    crc.sync.set(crc.born("a:1"), b"0 " + b"f" * 40)
    crc.sync.delete(crc.keys.lease("a:1"))
    assert crc.heartbeat("n1", {"a:1": lost.epoch}).reset == ("a:1",)


def test_a_slot_nobody_claimed_in_yet_is_as_old_as_its_server(crc: ClusterRedis) -> None:
    """Each slot's birth is written by its first claim: a slot without one
    on a shard that has run longer than the TTL waits for nothing (else a
    new cluster's activations would wait a TTL in every slot's first)."""
    crc.heartbeat("n1")
    key = crc.born("a:fresh-slot")
    crc.sync.delete(key)
    shard = crc.sync.get_redis_connection(crc.sync.get_node_from_key(key))
    wait_until(lambda: int(shard.info("server")["uptime_in_seconds"]) >= 1, "the shard has run a second")
    claimed = crc.run(crc.leases.claim("a:fresh-slot", "n1", ttl=0.5))
    assert claimed.won
    born, run = crc.sync.get(key).split()
    assert run.decode() == shard.info("server")["run_id"]
    assert int(born) <= claimed.epoch - 10**6  # the shard's start, not the claim's moment


def test_the_fencing_log_is_per_address_on_a_cluster(crc: ClusterRedis) -> None:
    crc.heartbeat("n1")
    lease = crc.run(crc.leases.claim("a:1", "n1", ttl=30))
    assert crc.run(crc.leases.save_checkpoint("a:1", "n1", lease.epoch, b"s", log=True, note="x"))
    assert [e["note"] for e in crc.run(crc.leases.fencing_log(addresses=["a:1"]))] == ["x"]
    with pytest.raises(ValueError, match="per address"):
        crc.run(crc.leases.fencing_log())


def test_a_shard_that_does_not_answer_costs_only_its_own_claims(fresh_redis_cluster: EmbeddedRedisCluster) -> None:
    """Claims on three shards at once, one primary paused: the claims it
    serves come back unanswered (nothing is known of them), the others are
    won as usual, not failed with them."""
    cluster = fresh_redis_cluster
    namespace = f"t{uuid.uuid4().hex[:8]}:"
    keys = ClusterKeys(namespace)
    addresses = [f"counter:shards-{i}" for i in range(30)]
    by_port = {a: cluster.primary_for_slot(channel_slot(keys.lease(a))).port for a in addresses}
    node_port = cluster.primary_for_slot(channel_slot(keys.node("n1"))).port
    paused = next(p for p in cluster.primaries() if p.port != node_port)
    assert paused.pid is not None and len(set(by_port.values())) == 3

    async def claims() -> list[ClaimResult]:
        client = store_client(cluster.url, max_connections=4)
        store = lease_store_for(client, namespace=namespace)
        try:
            await store.renew("n1", ttl=60, node_body=b"body", heartbeat=b"", new_era="e", leases={})
            await store.assume_settled()
            os.kill(paused.pid, signal.SIGSTOP)
            try:
                return await store.claim_many([(a, 0, None) for a in addresses], "n1", ttl=1.0)
            finally:
                os.kill(paused.pid, signal.SIGCONT)
        finally:
            await client.aclose()

    results = asyncio.run(claims())
    for address, result in zip(addresses, results, strict=True):
        if by_port[address] == paused.port:
            assert result.unanswered and not result.won, address
        else:
            assert result.won and not result.unanswered, address


def _shard_of(cluster: EmbeddedRedisCluster, address: str) -> tuple[str, ClusterKeys, Any, Any]:
    """A new namespace, its keys, and the primary serving ``address`` there with its replica."""
    namespace = f"t{uuid.uuid4().hex[:8]}:"
    keys = ClusterKeys(namespace)
    primary = cluster.primary_for_slot(channel_slot(keys.lease(address)))
    replica = next(r for r in cluster.replicas() if r.primary_port == primary.port)
    return namespace, keys, primary, replica


def test_epochs_keep_growing_across_a_shard_failover_whose_replica_missed_the_last_claim(
        fresh_redis_cluster: EmbeddedRedisCluster) -> None:
    """A claim drawn on a shard's primary after its replica's link was cut
    (that epoch lives on the primary only), the primary killed, the
    replica promoted without it: claims there wait until its data set is a
    lease TTL old (n2 may still trust the lease the replica never saw), then
    a claim of the same address still draws a higher epoch (the server
    clock floors every epoch)."""
    cluster = fresh_redis_cluster
    address = "counter:failover"
    namespace, keys, primary, replica = _shard_of(cluster, address)
    assert replica.pid is not None

    async def claim(node: str, *, promoted: bool = False) -> int:
        client = store_client(cluster.url, max_connections=4)
        store = lease_store_for(client, namespace=namespace)
        try:
            hb = b""
            await store.renew(node, ttl=60, node_body=b"body", heartbeat=hb, new_era="e", leases={})
            await client.delete(keys.lease(address))  # as if the last lease ran out
            if promoted:
                # a new server under the slot (another run_id): its data set is young
                waiting = await store.claim(address, node, ttl=60)
                assert not waiting.won and waiting.holder == "" and 59 < waiting.settling <= 60
            await store.assume_settled()  # a test's: nobody trusts a lease it lost
            result = await store.claim(address, node, ttl=60)
            assert result.won
            return result.epoch
        finally:
            await client.aclose()

    first = asyncio.run(claim("n1"))
    old = redis.Redis(host="127.0.0.1", port=primary.port)
    try:
        assert old.wait(1, int(DEADLINE * 1000)) >= 1  # the replica has the first claim
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            old.execute_command("CLIENT", "KILL", "TYPE", "replica")  # what follows never reaches it
            missed = asyncio.run(claim("n2"))
            cluster.kill(primary.port)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
    finally:
        old.close()
    assert cluster.wait_failover(primary.port) == replica.port
    with redis.Redis(host="127.0.0.1", port=replica.port) as new:
        issued = new.get(keys.issued(address))
        assert issued is not None and int(issued.split()[0]) == first  # the promoted replica missed the second
    after = asyncio.run(claim("n3", promoted=True))
    assert first < missed < after


def test_a_promoted_replica_without_a_birth_in_the_slot_makes_claims_wait(
        fresh_redis_cluster: EmbeddedRedisCluster) -> None:
    """A replica promoted without the slot's birth key (the primary died
    before the key, written by the slot's first claim, reached it; here:
    nobody claimed there yet) is no older than the failover for the
    claims: they wait a TTL from the first one it sees, however long the
    replica has run. A primary's slot without the key (one that never took
    over a data set) does not wait (test_a_slot_nobody_claimed_in_yet_...)."""
    cluster = fresh_redis_cluster
    address = "counter:promoted-empty-slot"
    namespace, _keys, primary, replica = _shard_of(cluster, address)
    with redis.Redis(host="127.0.0.1", port=replica.port) as before:
        wait_until(lambda: int(before.info("server")["uptime_in_seconds"]) >= 3, "the replica has run 3 s")
    with redis.Redis(host="127.0.0.1", port=primary.port) as old:
        assert old.get(born_key(address)) is None
    cluster.kill(primary.port)
    assert cluster.wait_failover(primary.port) == replica.port

    async def claim() -> ClaimResult:
        client = store_client(cluster.url, max_connections=4)
        store = lease_store_for(client, namespace=namespace)
        try:
            await store.renew("n1", ttl=1.0, node_body=b"body", heartbeat=b"", new_era="e", leases={})
            return await store.claim(address, "n1", ttl=1.0)
        finally:
            await client.aclose()

    waiting = asyncio.run(claim())
    assert not waiting.won and waiting.holder == "" and 0.5 < waiting.settling <= 1.0


def test_a_renewal_right_after_a_slot_move_renews_the_moved_lease_on_its_new_owner(
        crc: ClusterRedis, redis_cluster: EmbeddedRedisCluster) -> None:
    """The store's slot map is stale right after a slot moved: the
    renewal sends the moved lease to its former primary, which answers
    MOVED for it alone; the store reads the map again and renews it on its
    new owner in the same renewal, its neighbour on the old shard as usual."""
    crc.heartbeat("n1")
    by_primary: dict[int, list[str]] = {}
    for i in range(64):
        address = f"a:{i}"
        by_primary.setdefault(redis_cluster.primary_for_slot(channel_slot(crc.keys.lease(address))).port,
                              []).append(address)
    source, (moved, neighbour, *_rest) = next((p, a) for p, a in by_primary.items() if len(a) >= 2)
    leases = {a: crc.run(crc.leases.claim(a, "n1", ttl=5)).epoch for a in (moved, neighbour)}
    target = next(p.port for p in redis_cluster.primaries() if p.port != source)
    redis_cluster.move_slot(channel_slot(crc.keys.lease(moved)), target)
    result = crc.heartbeat("n1", leases)
    assert (result.unanswered, dict(result.lost)) == ((), {})
    with redis.Redis(host="127.0.0.1", port=target) as new_owner:
        assert new_owner.pttl(crc.keys.lease(moved)) > 25_000  # renewed there (claimed for 5 s, renewed for 30)
    with redis.Redis(host="127.0.0.1", port=source) as old_owner:
        assert old_owner.pttl(crc.keys.lease(neighbour)) > 25_000
