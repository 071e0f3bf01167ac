"""EmbeddedRedisCluster and EmbeddedSentinel: a real Redis 7 Cluster and a
real Sentinel setup of child processes, formed, failed over, resharded and
ended by their own PIDs."""

from __future__ import annotations

import os

import pytest
import redis
import redis.sentinel
from redis.cluster import ClusterNode as Seed

from bus.embedded_cluster import SLOTS, EmbeddedRedisCluster, EmbeddedSentinel
from tests.conftest import redis7_or_skip

pytestmark = pytest.mark.integration


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)


def _cluster_info(port: int) -> dict[str, str]:
    with _client(port) as client:
        text = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _slot_owners(port: int, slot: int) -> list[int]:
    """Ports of the primaries that own ``slot`` in ``CLUSTER NODES`` as ``port`` sees it."""
    with _client(port) as client:
        text = client.execute_command("CLUSTER", "NODES")
    owners = []
    for line in text.splitlines():
        fields = line.split()
        if "master" not in fields[2].split(","):
            continue
        for entry in fields[8:]:
            first, _, last = entry.partition("-")
            if not entry.startswith("[") and int(first) <= slot <= int(last or first):
                owners.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
    return owners


def _shards(port: int) -> list[dict[str, object]]:
    """``CLUSTER SHARDS`` as ``port`` sees it: each shard's ``slots`` (a flat
    list of range bounds) and ``nodes`` (dicts), as redis-py parses it."""
    with _client(port) as client:
        return list(client.execute_command("CLUSTER", "SHARDS"))


def _shard_slots(shard: dict[str, object]) -> list[int]:
    bounds = [int(bound) for bound in shard["slots"]]  # type: ignore[attr-defined]
    return [slot for first, last in zip(bounds[::2], bounds[1::2], strict=True) for slot in range(first, last + 1)]


def _shard_owner(port: int, slot: int) -> int:
    """The primary's port of the shard holding ``slot`` in ``CLUSTER SHARDS`` as ``port`` sees it."""
    for shard in _shards(port):
        if slot in _shard_slots(shard):
            (primary,) = [node for node in shard["nodes"] if node["role"] == "master"]  # type: ignore[attr-defined]
            return int(primary["port"])
    raise AssertionError(f"no shard holds slot {slot}")


def test_the_cluster_forms_with_three_primaries_three_replicas_and_every_slot(
    redis_cluster: EmbeddedRedisCluster,
) -> None:
    primaries, replicas = redis_cluster.primaries(), redis_cluster.replicas()
    assert len(primaries) == 3 and len(replicas) == 3
    assert sorted(r.primary_port for r in replicas if r.primary_port) == sorted(p.port for p in primaries)
    assert all(node.pid is not None and len(node.node_id) == 40 for node in redis_cluster.nodes)
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in primaries)
    for node in redis_cluster.nodes:
        info = _cluster_info(node.port)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == "6"
    shards = _shards(redis_cluster.ports[0])
    assert sorted(slot for shard in shards for slot in _shard_slots(shard)) == list(range(SLOTS))  # each once
    assert sorted(len(shard["nodes"]) for shard in shards) == [2, 2, 2]  # type: ignore[arg-type]
    assert {redis_cluster.primary_for_slot(slot).port for slot in (0, SLOTS // 2, SLOTS - 1)} == {
        p.port for p in primaries
    }
    # A cluster client finds its way from the seeds.
    seeds = [Seed("127.0.0.1", p.port) for p in primaries]
    with redis.RedisCluster(startup_nodes=seeds, decode_responses=True) as client:
        for key in ("a", "b", "c", "d"):
            client.set(f"formed:{key}", key)
        assert [client.get(f"formed:{key}") for key in ("a", "b", "c", "d")] == ["a", "b", "c", "d"]
        client.delete(*(f"formed:{key}" for key in ("a", "b", "c", "d")))


def test_move_slot_hands_a_slot_and_its_keys_to_another_primary(redis_cluster: EmbeddedRedisCluster) -> None:
    with _client(redis_cluster.ports[0]) as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", "moving"))
    owner = redis_cluster.primary_for_slot(slot)
    (target, *_) = [p for p in redis_cluster.primaries() if p.port != owner.port]
    with _client(owner.port) as client:
        client.set("moving", "along")
    # A connection of its own (closing its client's pool would make redis-py
    # reconnect and subscribe again, to be refused with MOVED).
    subscriber = redis.Redis(host="127.0.0.1", port=owner.port, socket_timeout=5).pubsub()
    subscriber.ssubscribe("moving")
    assert subscriber.get_message(timeout=5)["type"] == "ssubscribe"
    try:
        redis_cluster.move_slot(slot, target.port)
        assert redis_cluster.primary_for_slot(slot).port == target.port
        for node in redis_cluster.nodes:
            assert _slot_owners(node.port, slot) == [target.port]
        assert _shard_owner(owner.port, slot) == target.port
        with _client(target.port) as client:
            assert client.get("moving") == "along"  # the key went with its slot
        with _client(owner.port) as client, pytest.raises(redis.exceptions.MovedError) as moved:
            client.get("moving")
        assert (moved.value.slot_id, moved.value.port) == (slot, target.port)
        # The old owner drops its shard subscribers of the slot.
        assert subscriber.get_message(timeout=5) == {
            "type": "sunsubscribe", "pattern": None, "channel": b"moving", "data": 0,
        }  # fmt: skip
    finally:
        subscriber.close()
        redis_cluster.move_slot(slot, owner.port)
        with _client(owner.port) as client:
            client.delete("moving")
    assert redis_cluster.primary_for_slot(slot).port == owner.port


def test_a_killed_primary_is_replaced_by_its_replica(fresh_redis_cluster: EmbeddedRedisCluster) -> None:
    cluster = fresh_redis_cluster
    victim = cluster.primary_for_slot(0)
    (replica,) = [r for r in cluster.replicas() if r.primary_port == victim.port]
    assert victim.pid is not None
    cluster.kill(victim.port)
    assert not _pid_exists(victim.pid)
    assert cluster.node(victim.port).role == "down"

    assert cluster.wait_failover(victim.port, timeout=30) == replica.port
    assert cluster.node(replica.port).role == "primary"
    assert cluster.primary_for_slot(0).port == replica.port
    for node in cluster.nodes:
        if node.role != "down":
            info = _cluster_info(node.port)
            assert info["cluster_state"] == "ok" and info["cluster_slots_ok"] == str(SLOTS)

    # Back from the crash, the old primary follows its former replica.
    back = cluster.restart(victim.port)
    assert (back.role, back.primary_port, back.node_id) == ("replica", replica.port, victim.node_id)


def test_stop_ends_every_process_and_removes_the_directories() -> None:
    with EmbeddedRedisCluster(binary=redis7_or_skip()) as cluster:
        pids, directory = cluster.pids, cluster.directory
        assert len(pids) == 6 and all(_pid_exists(pid) for pid in pids)
        assert directory is not None and os.path.isdir(directory)
        cluster.kill(cluster.replicas()[0].port)  # a dead node does not trouble stop()
    assert [pid for pid in pids if _pid_exists(pid)] == []
    assert not os.path.exists(directory)
    assert cluster.pids == [] and cluster.directory is None
    cluster.stop()  # idempotent


def test_sentinel_names_its_primary_and_after_a_kill_the_old_replica(redis_sentinel: EmbeddedSentinel) -> None:
    setup = redis_sentinel
    ports = ",".join(f"127.0.0.1:{port}" for port in setup.sentinel_ports)
    assert setup.url == f"redis+sentinel://{ports}/huddle"
    primary = setup.primary_port()
    (replica,) = setup.replica_ports()
    with _client(primary) as client:
        assert client.execute_command("ROLE")[0] == "master"
    with _client(replica) as client:
        role = client.execute_command("ROLE")
        assert (role[0], int(role[2])) == ("slave", primary)
    watchers = redis.sentinel.Sentinel([("127.0.0.1", port) for port in setup.sentinel_ports], socket_timeout=5)
    assert watchers.discover_master("huddle") == ("127.0.0.1", primary)

    pids = setup.pids
    assert setup.kill_primary() == primary
    assert setup.wait_switchover(timeout=40) == replica
    for port in setup.sentinel_ports:
        with _client(port) as client:
            named = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "huddle")
            assert named == ["127.0.0.1", str(replica)]
    assert watchers.discover_master("huddle") == ("127.0.0.1", replica)

    directory = setup.directory
    setup.stop()
    assert [pid for pid in pids if _pid_exists(pid)] == []
    assert directory is not None and not os.path.exists(directory)
    setup.stop()  # idempotent
