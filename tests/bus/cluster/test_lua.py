"""bus/cluster/lua.py: the prelude every cluster script starts with, run on
a real redis-server: its key helpers, epochs as exact decimal strings past
2^53's float rounding, lease values parsed back, and next_epoch above the
newest epoch issued for the address, the caller's floor and the server's
clock."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from bus.cluster.keys import ClusterKeys
from bus.cluster.lua import script
from bus.embedded import EmbeddedRedis

PREFIX = ClusterKeys("lua-test:").prefix


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url)
    keys = ClusterKeys("lua-test:")
    try:
        c.delete(keys.issued("a:1"), keys.issued("a:2"))
        yield c
    finally:
        c.delete(keys.issued("a:1"), keys.issued("a:2"))
        c.close()


def run(client: redis.Redis, body: str, *args: object) -> object:
    return client.eval(script(body), 0, PREFIX, *args)


def test_the_key_helpers_build_the_keys_the_node_reads(client: redis.Redis) -> None:
    keys = ClusterKeys("lua-test:")
    assert run(client, "return {lease_key(ARGV[2]), ckpt_key(ARGV[2]), node_key(ARGV[3]), ERA}",
               "meeting:m-1", "n1") == [k.encode() for k in (keys.lease("meeting:m-1"), keys.checkpoint("meeting:m-1"),
                                                             keys.node("n1"), keys.era)]


def test_an_epoch_is_written_as_its_exact_decimal_digits(client: redis.Redis) -> None:
    # A microsecond clock epoch is about 2^51: tostring would print 1.7e+15.
    assert run(client, "return estr(tonumber(ARGV[2]))", "1796532375556286") == b"1796532375556286"


def test_a_lease_value_parses_to_its_epoch_and_node(client: redis.Redis) -> None:
    assert run(client, "local e, n = parse_lease(ARGV[2]); return {estr(e), n}", "42 node-7") == [b"42", b"node-7"]
    assert run(client, "local e, n = parse_lease(nil); return e == nil and n == nil") == 1


def test_next_epoch_is_above_what_was_issued_the_floor_and_the_clock(client: redis.Redis) -> None:
    draw = "local e = next_epoch(ARGV[2], ARGV[3]); record_issued(ARGV[2], e, 'n1'); return estr(e)"
    first = int(run(client, draw, "a:1", "0"))  # type: ignore[arg-type]
    assert first >= int(time.time() * 1_000_000) - 60_000_000  # the server's clock, in microseconds
    floor = first + 10_000_000_000
    assert int(run(client, draw, "a:1", str(floor))) == floor + 1  # type: ignore[arg-type]
    # Issued epochs of a:1 above the clock: the next one is above them...
    assert int(run(client, draw, "a:1", "0")) == floor + 2  # type: ignore[arg-type]
    # ... and another address draws from the clock, not from a:1's epochs.
    assert first < int(run(client, draw, "a:2", "0")) < floor  # type: ignore[arg-type]
