"""The bus on a Redis Cluster, without servers: cluster URLs, the slot map
read from ``CLUSTER SHARDS``, slots of channel names (bus/sharded.py,
bus/slots.py). The real cluster is in tests/bus_io/test_sharded.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.errors import TransportError
from bus.redis_transport import RedisTransport
from bus.sharded import ClusterUrl, ShardedTransport, SlotMap, is_cluster_url, transport_for
from bus.slots import SLOTS, channel_slot, group_by_slot


def test_a_cluster_url_names_its_seeds_and_keeps_credentials_and_options_for_each_node() -> None:
    url = ClusterUrl.parse("rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001?ssl_cert_reqs=none")
    assert url.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001)) and url.tls
    assert url.shard_url("10.0.0.9", 7005) == "rediss://app:s3cret@10.0.0.9:7005?ssl_cert_reqs=none"
    endpoint = url.endpoint("10.0.0.9", 7005)
    assert (endpoint.username, endpoint.password, endpoint.ssl_cert_reqs) == ("app", "s3cret", "none")
    assert "s3cret" not in repr(url)
    assert ClusterUrl.parse("redis+cluster://h1").seeds == (("h1", 6379),)


@pytest.mark.parametrize("bad", ["redis+cluster://u:s3cret@h1:7000/3", "redis+cluster://u:s3cret@h1:port",
                                 "redis+cluster://u:s3cret@:7000", "redis://u:s3cret@h1:7000"])
def test_a_bad_cluster_url_is_refused_without_its_password(bad: str) -> None:
    with pytest.raises(TransportError) as caught:
        ClusterUrl.parse(bad)
    assert "s3cret" not in str(caught.value)


def test_the_url_picks_the_transport() -> None:
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("rediss+cluster://h:1")
    assert not is_cluster_url("redis://h:1") and not is_cluster_url("unix:///tmp/r.sock")
    assert isinstance(transport_for("redis+cluster://127.0.0.1:1", name="t"), ShardedTransport)
    assert isinstance(transport_for("redis://127.0.0.1:1", name="t"), RedisTransport)


def _node(node_id: str, port: int, role: str, health: str = "online") -> list[object]:
    return [b"id", node_id.encode(), b"port", port, b"ip", b"127.0.0.1", b"endpoint", b"127.0.0.1",
            b"role", role.encode(), b"replication-offset", 10, b"health", health.encode()]


def test_the_slot_map_follows_cluster_shards_and_its_online_primaries() -> None:
    reply = [
        [b"slots", [0, 5460], b"nodes", [_node("a", 7000, "master"), _node("b", 7003, "replica")]],
        [b"slots", [5461, 10922, 16000, 16383], b"nodes", [_node("c", 7001, "master", "fail"),
                                                          _node("d", 7004, "master")]],
        [b"slots", [10923, 15999], b"nodes", [_node("e", 7002, "replica"), _node("f", 7005, "master")]],
    ]
    slot_map = SlotMap.from_shards(reply)
    assert slot_map.owners[0] == slot_map.owners[5460] == ("127.0.0.1", 7000)
    assert slot_map.owners[5461] == slot_map.owners[16383] == ("127.0.0.1", 7004)  # the failed one skipped
    assert slot_map.owners[10923] == ("127.0.0.1", 7005)
    assert slot_map.primaries == {("127.0.0.1", 7000), ("127.0.0.1", 7004), ("127.0.0.1", 7005)}
    assert None not in slot_map.owners and len(slot_map.owners) == SLOTS


@pytest.mark.parametrize("health", ["fail", "failed"])  # Redis 7.0 says "fail", later versions "failed"
def test_a_shard_whose_only_primary_failed_has_no_owner_until_a_replica_is_promoted(health: str) -> None:
    reply = [
        [b"slots", [0, 8191], b"nodes", [_node("a", 7000, "master", health), _node("b", 7003, "replica")]],
        [b"slots", [8192, 16383], b"nodes", [_node("c", 7001, "master")]],
    ]
    slot_map = SlotMap.from_shards(reply)
    assert slot_map.owners[0] is None and slot_map.owners[8191] is None
    assert slot_map.primaries == {("127.0.0.1", 7001)}


def test_known_slots_and_hash_tags() -> None:
    # Values from the Redis Cluster specification's examples and CLUSTER KEYSLOT.
    assert channel_slot("foo") == 12182
    assert channel_slot("{user1000}.following") == channel_slot("{user1000}.followers") == channel_slot("user1000")
    assert channel_slot("foo{}{bar}") == channel_slot("foo{}{bar}")  # an empty tag: the whole name


@given(st.lists(st.text(min_size=1, max_size=30), max_size=40))
def test_groups_of_one_slot_each_hold_every_channel_once(channels: list[str]) -> None:
    groups = group_by_slot(channels)
    assert sorted(c for g in groups for c in g) == sorted(channels)
    for group in groups:
        assert len({channel_slot(c) for c in group}) == 1
