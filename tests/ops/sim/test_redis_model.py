"""The simulation's Redis model against a real redis-server: the same
command sequences, the same answers.

Random sequences over the commands and replies huddle's scripts and bus
rely on (strings with expiry, counters, hashes, sets, sorted sets, streams
with explicit ids, Lua with its conversions and errors, wrong types) run
on both, each through redis-py's asyncio client; pub/sub is compared as
what a subscriber receives, in order. The lease store's whole contract
also runs on the model (``tests/bus_io/cluster``, the ``sim-model``
backend): together they are the model's differential test.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from bus.embedded import EmbeddedRedis
from ops.sim.world import World

KEYS = ["k1", "k2", "k3"]
FIELDS = ["f1", "f2"]

_key = st.sampled_from(KEYS)
_field = st.sampled_from(FIELDS)
_small = st.integers(min_value=-5, max_value=5)
_value = st.sampled_from(["a", "bb", "7", "-3", ""])

COMMANDS = st.one_of(
    st.tuples(st.just("SET"), _key, _value),
    st.tuples(st.just("SET"), _key, _value, st.just("NX")),
    st.tuples(st.just("SET"), _key, _value, st.just("XX"), st.just("GET")),
    st.tuples(st.just("SET"), _key, _value, st.just("EX"), st.integers(1, 100)),
    st.tuples(st.just("GET"), _key),
    st.tuples(st.just("GETDEL"), _key),
    st.tuples(st.just("DEL"), _key, _key),
    st.tuples(st.just("EXISTS"), _key, _key),
    st.tuples(st.just("INCR"), _key),
    st.tuples(st.just("INCRBY"), _key, _small),
    st.tuples(st.just("EXPIRE"), _key, st.integers(1, 100)),
    st.tuples(st.just("PERSIST"), _key),
    st.tuples(st.just("TTL"), _key),
    st.tuples(st.just("TYPE"), _key),
    st.tuples(st.just("HSET"), _key, _field, _value),
    st.tuples(st.just("HGET"), _key, _field),
    st.tuples(st.just("HDEL"), _key, _field),
    st.tuples(st.just("HGETALL"), _key),
    st.tuples(st.just("HINCRBY"), _key, _field, _small),
    st.tuples(st.just("SADD"), _key, _value),
    st.tuples(st.just("SREM"), _key, _value),
    st.tuples(st.just("SISMEMBER"), _key, _value),
    st.tuples(st.just("SCARD"), _key),
    st.tuples(st.just("ZADD"), _key, _small, _value),
    st.tuples(st.just("ZRANGE"), _key, st.just(0), st.just(-1), st.just("WITHSCORES")),
    st.tuples(st.just("ZRANGEBYSCORE"), _key, st.just("-inf"), _small),
    st.tuples(st.just("ZREM"), _key, _value),
    st.tuples(st.just("ZSCORE"), _key, _value),
    st.tuples(st.just("XADD"), _key, st.integers(1, 9).map(lambda n: f"{n}-0"), _field, _value),
    st.tuples(st.just("XLEN"), _key),
    st.tuples(st.just("XRANGE"), _key, st.just("-"), st.just("+")),
    st.tuples(st.just("XTRIM"), _key, st.just("MAXLEN"), st.integers(0, 3)),
    st.tuples(st.just("XDEL"), _key, st.integers(1, 9).map(lambda n: f"{n}-0")),
    # Lua: tables, nil -> false, numbers truncated, status and error replies, pcall.
    st.tuples(st.just("EVAL"), st.just("return {KEYS[1], ARGV[1], 3.9, false, {1, 'x'}}"), st.just(1), _key,
              _value),
    st.tuples(st.just("EVAL"), st.just("return redis.call('GET', KEYS[1])"), st.just(1), _key),
    st.tuples(st.just("EVAL"), st.just("return redis.call('INCR', KEYS[1])"), st.just(1), _key),
    st.tuples(st.just("EVAL"), st.just("return redis.status_reply('FINE')"), st.just(0)),
    st.tuples(st.just("EVAL"), st.just("return redis.error_reply('NOPE no way')"), st.just(0)),
    st.tuples(st.just("EVAL"), st.just("local ok = redis.pcall('INCR', KEYS[1]); "
                                       "if type(ok) == 'table' then return ok.err end; return ok"),
              st.just(1), _key),
    st.tuples(st.just("EVAL"), st.just("return redis.call('HGETALL', KEYS[1])"), st.just(1), _key),
)


def _error_code(message: str) -> str:
    """The error's code (``ERR``, ``WRONGTYPE``, a script's own): the first
    all-capitals word, else ``ERR`` (which redis-py strips off the front).
    The text around it differs: Redis wraps an error raised inside a script
    in "Error running script (call to f_<sha>): @user_script:1: ...", the
    model does not; the code is what callers match on."""
    for word in message.split():
        if len(word) > 1 and word.isalpha() and word.isupper():
            return word
    return "ERR"


async def _answers(client: aioredis.Redis, prefix: str, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Each command's answer, or its error's code."""
    out: list[Any] = []
    for command in commands:
        name, *args = command
        if name == "EVAL":
            script, numkeys, *rest = args
            args = [script, numkeys, *[prefix + a if i < numkeys else a for i, a in enumerate(rest)]]
        elif len(args) > 0:
            args = [prefix + args[0], *args[1:]]
            if name in ("DEL", "EXISTS"):
                args = [prefix + a if i > 0 else a for i, a in enumerate(args)]
        try:
            out.append(await client.execute_command(name, *args))
        except ResponseError as exc:
            out.append(("error", _error_code(str(exc))))
    return out


def _on_real_redis(server: EmbeddedRedis, prefix: str, commands: list[tuple[Any, ...]]) -> list[Any]:
    async def run() -> list[Any]:
        client = aioredis.Redis.from_url(server.url)
        try:
            return await _answers(client, prefix, commands)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _on_model(prefix: str, commands: list[tuple[Any, ...]]) -> list[Any]:
    world = World(seed=0)

    async def run() -> list[Any]:
        client = aioredis.Redis.from_url(world.redis.url)
        try:
            return await _answers(client, prefix, commands)
        finally:
            await client.aclose()

    try:
        return world.run(run())
    finally:
        world.close()


@settings(max_examples=150, deadline=None)
@given(st.lists(COMMANDS, min_size=1, max_size=25))
def test_the_model_answers_every_command_sequence_as_redis_does(redis_server: EmbeddedRedis,
                                                                commands: list[tuple[Any, ...]]) -> None:
    prefix = f"diff-{uuid.uuid4().hex[:8]}:"  # a fresh key space on the shared server; the same on the model
    assert _on_model(prefix, commands) == _on_real_redis(redis_server, prefix, commands)


async def _pubsub(url: str, prefix: str) -> list[Any]:
    """A subscriber on two channels, messages published from another
    connection (some to nobody), an unsubscribe on the way."""
    sub = aioredis.Redis.from_url(url)
    pub = aioredis.Redis.from_url(url)
    pubsub = sub.pubsub()
    seen: list[Any] = []
    try:
        await pubsub.subscribe(prefix + "a", prefix + "b")
        counts = [await pub.publish(prefix + ch, f"m{i}") for i, ch in enumerate("abcab")]
        for _ in range(2):
            seen.append(await pubsub.get_message(timeout=5))
        while len([m for m in seen if m and m["type"] == "message"]) < 4:
            seen.append(await pubsub.get_message(timeout=5))
        await pubsub.unsubscribe(prefix + "a")
        seen.append(await pubsub.get_message(timeout=5))
        counts.append(await pub.publish(prefix + "a", "late"))
        counts.append(await pub.publish(prefix + "b", "last"))
        seen.append(await pubsub.get_message(timeout=5))
        return [counts, [{**m, "channel": m["channel"][len(prefix):]} for m in seen if m]]
    finally:
        await pubsub.aclose()
        await sub.aclose()
        await pub.aclose()


def test_a_subscriber_hears_what_redis_would_send_it_in_the_same_order(redis_server: EmbeddedRedis) -> None:
    real = asyncio.run(_pubsub(redis_server.url, f"ps-{uuid.uuid4().hex[:8]}:"))
    world = World(seed=5)
    try:
        model = world.run(_pubsub(world.redis.url, "ps:"))
    finally:
        world.close()
    assert model == real
    assert real[0] == [1, 1, 0, 1, 1, 0, 1]  # the comparison covers delivery, not only silence


def test_keys_expire_on_the_worlds_clock() -> None:
    world = World(seed=2)

    async def run() -> list[Any]:
        client = aioredis.Redis.from_url(world.redis.url)
        try:
            await client.set("lease", "1 n1", px=1500)
            before = await client.pttl("lease")
            await asyncio.sleep(1.499)
            still = await client.get("lease")
            await asyncio.sleep(0.002)
            after = await client.get("lease")
            seconds, micros = await client.time()
            return [before, still, after, seconds + micros / 1e6 - world.wall()]
        finally:
            await client.aclose()

    try:
        before, still, after, time_vs_world = world.run(run())
    finally:
        world.close()
    assert before == 1500 and still == b"1 n1" and after is None
    assert -0.01 < time_vs_world <= 0  # TIME is the world's clock (read a network delay before the answer)
