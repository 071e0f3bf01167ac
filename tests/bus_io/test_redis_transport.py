"""RedisTransport against a real redis-server: batching, URLs and secrets,
ACL users, refusals, the I/O loop helpers, and surviving Redis restarts.
The behaviour shared with InProcessTransport is in the conformance suite
(test_inprocess_transport.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest
import redis

from bus.embedded import EmbeddedRedis
from bus.errors import TransportError
from bus.loop import LoopThread
from bus.endpoint import RedisEndpoint, mask_url
from bus.redis_transport import BACKOFF_CAP, BACKOFF_START, MAX_BATCH, RedisTransport, backoff_delay

from .conftest import DEADLINE, Collector, StateRecorder

MakeRedisTransport = Callable[..., RedisTransport]


def _pair(
    make: MakeRedisTransport, url: str, got: Collector, *channels: str
) -> tuple[RedisTransport, RedisTransport]:
    sender = make(url, name="sender")
    receiver = make(url, name="receiver")
    receiver.set_receiver(got)
    receiver.subscribe(*channels)
    assert receiver.wait_subscribed(DEADLINE)
    return sender, receiver


# -- URLs and secrets ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:s3cret@host:6379/2", "redis://user:***@host:6379/2"),
        ("redis://:s3cret@host:6379", "redis://:***@host:6379"),
        ("rediss://user:p%40ss%3Aw0rd@host/0", "rediss://user:***@host/0"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
    ],
)
def test_mask_url_hides_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "w0rd" not in mask_url(url)


def test_endpoint_parsing() -> None:
    ep = RedisEndpoint.parse("redis://alice:p%40ss@example.com:6380/3")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.tls) == (
        "example.com", 6380, 3, "alice", "p@ss", False,
    )  # fmt: skip
    assert "p@ss" not in repr(ep)

    unix = RedisEndpoint.parse("unix:///tmp/redis.sock?db=4")
    assert (unix.path, unix.db, unix.host) == ("/tmp/redis.sock", 4, None)

    tls = RedisEndpoint.parse("rediss://h?ssl_cert_reqs=none")
    context = tls.ssl_context()
    assert tls.tls and tls.port == 6379 and context is not None and not context.check_hostname
    assert RedisEndpoint.parse("redis://h").ssl_context() is None

    with pytest.raises(TransportError, match=r"\*\*\*"):
        RedisEndpoint.parse("http://u:s3cret@h/0")


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    for attempt in (0, 1, 3, 10, 5000):
        ceiling = min(BACKOFF_CAP, BACKOFF_START * 2**min(attempt, 16))
        delays = [backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
    assert max(backoff_delay(0) for _ in range(200)) <= BACKOFF_START
    assert max(backoff_delay(5000) for _ in range(200)) <= BACKOFF_CAP


def test_transport_repr_never_shows_the_password() -> None:
    transport = RedisTransport("redis://u:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(transport)
    transport.close()


# -- ACL users ----------------------------------------------------------------


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    user, password = "huddle-test", "pa:ss@w0rd/secret"
    redis_client.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", "~*", "resetchannels", "&allowed:*", "+@all"
    )
    try:
        yield user, password
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)


def _acl_url(server: EmbeddedRedis, user: str, password: str) -> str:
    from urllib.parse import quote

    return f"redis://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def test_acl_user_and_password_url_works(
    redis_server: EmbeddedRedis,
    acl_user: tuple[str, str],
    make_redis_transport: MakeRedisTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _acl_url(redis_server, *acl_user)
    got = Collector()
    sender, _ = _pair(make_redis_transport, url, got, "allowed:one")

    sender.publish("allowed:one", b"via acl")

    assert got.wait_message("allowed:one", b"via acl")
    assert sender.flush(DEADLINE)
    assert sender.stats.published == 1
    assert acl_user[1] not in caplog.text


def test_publish_refused_by_acl_is_dropped_and_reported(
    redis_server: EmbeddedRedis, acl_user: tuple[str, str], make_redis_transport: MakeRedisTransport
) -> None:
    sender = make_redis_transport(_acl_url(redis_server, *acl_user))
    drops: list[tuple[str, str]] = []
    sender.on_drop(lambda channel, reason: drops.append((channel, reason)))

    sender.publish("allowed:ok", b"1")
    sender.publish("forbidden", b"2")
    sender.publish("allowed:ok", b"3")

    assert sender.flush(DEADLINE)
    assert drops == [("forbidden", "refused")]
    assert (sender.stats.published, sender.stats.dropped) == (2, 1)


def test_wrong_password_fails_start_without_leaking_it(
    redis_server: EmbeddedRedis, acl_user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    transport = RedisTransport(_acl_url(redis_server, acl_user[0], "wrong-s3cret"), connect_timeout=2.0)
    with pytest.raises(TransportError) as raised:
        transport.start()
    assert "wrong-s3cret" not in str(raised.value)
    assert "wrong-s3cret" not in caplog.text
    with pytest.raises(TransportError):
        transport.publish("c", b"x")  # start failed: the transport is closed


def test_unix_socket_url(
    redis_server: EmbeddedRedis, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    got = Collector()
    sender, _ = _pair(make_redis_transport, redis_server.unix_url, got, channel_prefix + "u")
    sender.publish(channel_prefix + "u", b"over a unix socket")
    assert got.wait_message(channel_prefix + "u", b"over a unix socket")


# -- batching, the loop, subscriptions -------------------------------------------


def test_publishes_queued_while_the_loop_is_busy_go_out_as_one_batch(
    redis_url: str, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    got = Collector()
    channel = channel_prefix + "batch"
    sender, _ = _pair(make_redis_transport, redis_url, got, channel)
    batches: list[int] = []
    real_encoder = sender._encoder

    class CountingEncoder:
        def encode(self, batch: Sequence[tuple[str, bytes]]) -> bytes:
            batches.append(len(batch))
            return real_encoder.encode(batch)

    busy, release = threading.Event(), threading.Event()
    sender.loop.call_soon_threadsafe(lambda: (busy.set(), release.wait(DEADLINE)))
    assert busy.wait(DEADLINE)  # the I/O loop is stuck until release
    sender._encoder = CountingEncoder()  # type: ignore[assignment]
    count = MAX_BATCH + 10

    for i in range(count):
        sender.publish(channel, b"%d" % i)
    release.set()

    assert sender.flush(DEADLINE)
    assert got.wait_count(count)
    # The first went out at once, written by this thread (the connection
    # was idle); the rest queued behind it and left in batches.
    assert batches == [1, MAX_BATCH, 9]
    assert got.on(channel) == [b"%d" % i for i in range(count)]


def test_a_publish_on_an_idle_connection_is_written_by_the_publishing_thread(
    redis_url: str, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    got = Collector()
    channel = channel_prefix + "direct"
    sender, _ = _pair(make_redis_transport, redis_url, got, channel)
    busy, release = threading.Event(), threading.Event()
    sender.loop.call_soon_threadsafe(lambda: (busy.set(), release.wait(DEADLINE)))
    assert busy.wait(DEADLINE)  # the sender's I/O loop is stuck until release
    try:
        sender.publish(channel, b"first")  # idle: written at once
        assert got.wait_count(1)
        sender.publish(channel, b"second")  # the first is not acknowledged yet: queued
        sender.publish(channel, b"third")
    finally:
        release.set()
    assert sender.flush(DEADLINE)
    assert got.wait_count(3)
    assert got.on(channel) == [b"first", b"second", b"third"]
    assert sender.stats.published == 3


def test_the_rest_of_a_direct_publish_is_written_by_the_loop_before_anything_else(
    redis_url: str, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    got = Collector()
    channel = channel_prefix + "rest"
    sender, _ = _pair(make_redis_transport, redis_url, got, channel)
    assert sender.flush(DEADLINE)
    real = sender._direct
    assert real is not None

    class Partial:
        """The socket takes only 5 bytes of the next write."""

        def send(self, data: bytes) -> int:
            return real.send(data[:5])

        def close(self) -> None:
            real.close()

    busy, release = threading.Event(), threading.Event()
    sender.loop.call_soon_threadsafe(lambda: (busy.set(), release.wait(DEADLINE)))
    assert busy.wait(DEADLINE)
    sender._direct = Partial()  # type: ignore[assignment]
    try:
        sender.publish(channel, b"cut short")
        sender.publish(channel, b"after it")  # must not overtake the rest
    finally:
        release.set()
    assert sender.flush(DEADLINE)
    assert got.wait_count(2)
    assert got.on(channel) == [b"cut short", b"after it"]
    sender._direct = real


def test_receiver_runs_on_the_transports_own_loop_thread_when_started_without_a_loop(
    redis_url: str, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    got = Collector()
    sender, receiver = _pair(make_redis_transport, redis_url, got, channel_prefix + "t")
    sender.publish(channel_prefix + "t", b"x")
    assert got.wait_count(1)
    assert receiver._own_loop is not None
    assert got.threads == {receiver._own_loop.name}

    async def which_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert asyncio.run_coroutine_threadsafe(which_loop(), receiver.loop).result(DEADLINE) is receiver.loop


def test_a_transport_started_on_a_given_loop_runs_there_and_leaves_it_running(
    redis_url: str, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    shared = LoopThread("test-shared-loop")
    try:
        got = Collector()
        channel = channel_prefix + "shared"
        receiver = make_redis_transport(redis_url, start=False, name="on-shared")
        receiver.set_receiver(got)
        receiver.subscribe(channel)
        receiver.start(shared.loop)
        assert receiver.loop is shared.loop and receiver._own_loop is None
        assert receiver.wait_subscribed(DEADLINE)
        sender = make_redis_transport(redis_url, start=False, name="also-on-shared")
        sender.start(shared.loop)

        sender.publish(channel, b"one loop")

        assert got.wait_count(1)
        assert got.threads == {"test-shared-loop"}
        sender.close()
        receiver.close()
        # The loop belongs to whoever gave it: it still runs.
        assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "alive"), shared.loop).result(DEADLINE) == "alive"
    finally:
        shared.close()


def test_blocking_calls_on_the_transports_loop_are_refused(
    redis_url: str, make_redis_transport: MakeRedisTransport
) -> None:
    shared = LoopThread("test-refusing-loop")
    try:
        transport = make_redis_transport(redis_url, start=False)
        transport.start(shared.loop)

        async def block_on_the_loop() -> list[str]:
            # Asked for on the loop, so neither can be done before the calls below.
            transport.subscribe("not-confirmed-yet")  # wait_subscribed() would have to wait
            transport.publish("not-acknowledged-yet", b"x")  # flush() would have to wait
            refused = []
            for call in (transport.flush, transport.wait_subscribed, transport.close):
                try:
                    call()
                except TransportError as exc:
                    refused.append(str(exc))
            return refused

        refused = asyncio.run_coroutine_threadsafe(block_on_the_loop(), shared.loop).result(DEADLINE)
        assert len(refused) == 3 and all("loop the transport runs on" in text for text in refused)
        # start() on its own loop does not wait for the first attempts (it
        # could not: they run on this loop); it starts them and returns.
        other = make_redis_transport(redis_url, start=False)

        async def start_on_the_loop() -> bool:
            other.subscribe("on-the-loop")
            other.start(shared.loop)
            # Nothing could be confirmed yet: the loop was not let go.
            return "on-the-loop" in other.subscribed_channels

        assert asyncio.run_coroutine_threadsafe(start_on_the_loop(), shared.loop).result(DEADLINE) is False
        assert other.wait_subscribed(DEADLINE)  # connected and subscribed once the loop went on
        other.close()
        transport.close()
    finally:
        shared.close()


def test_wait_subscribed_covers_unsubscribe_on_the_server(
    redis_url: str, redis_client: redis.Redis, make_redis_transport: MakeRedisTransport, channel_prefix: str
) -> None:
    node = make_redis_transport(redis_url)
    channels = [channel_prefix + f"c{i}" for i in range(2500)]  # several SUBSCRIBE commands
    node.subscribe(*channels)
    assert node.wait_subscribed(DEADLINE)
    assert node.subscribed_channels == frozenset(channels)
    assert dict(redis_client.pubsub_numsub(channels[0], channels[-1])) == {
        channels[0].encode(): 1, channels[-1].encode(): 1,
    }  # fmt: skip

    node.unsubscribe(*channels[:2000])
    assert node.wait_subscribed(DEADLINE)

    assert node.subscribed_channels == frozenset(channels[2000:])
    assert dict(redis_client.pubsub_numsub(channels[0], channels[-1])) == {
        channels[0].encode(): 0, channels[-1].encode(): 1,
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_interleaved_subscribes_and_unsubscribes_end_as_wanted_on_the_server(
    seed: int, redis_url: str, redis_client: redis.Redis, make_redis_transport: MakeRedisTransport,
    channel_prefix: str,
) -> None:
    """The transport keeps (un)subscriptions as deltas; whatever the order of
    changes, syncs and confirmations, the server ends with exactly the
    channels wanted."""
    import random

    rng = random.Random(seed)
    node = make_redis_transport(redis_url)
    channels = [channel_prefix + f"i{i}" for i in range(12)]
    wanted: set[str] = set()
    for _ in range(300):
        picked = rng.sample(channels, rng.randint(1, 3))
        if rng.random() < 0.5:
            node.subscribe(*picked)
            wanted.update(picked)
        else:
            node.unsubscribe(*picked)
            wanted.difference_update(picked)
        if rng.random() < 0.1:
            assert node.wait_subscribed(DEADLINE)
            assert node.subscribed_channels == frozenset(wanted)
    assert node.wait_subscribed(DEADLINE)
    assert node.subscribed_channels == frozenset(wanted)
    on_server = dict(redis_client.pubsub_numsub(*channels))
    assert {c for c in channels if on_server[c.encode()] == 1} == wanted


def test_receiver_errors_are_logged_and_counted(
    redis_url: str, make_redis_transport: MakeRedisTransport, caplog: pytest.LogCaptureFixture, channel_prefix: str
) -> None:
    got = Collector()
    failing, marker = channel_prefix + "e", channel_prefix + "end"
    sender, receiver = _pair(make_redis_transport, redis_url, got, failing, marker)

    def receiver_with_a_bug(channel: str, data: bytes) -> None:
        got(channel, data)
        if channel == failing:
            raise RuntimeError("handler bug")

    receiver.set_receiver(receiver_with_a_bug)
    for i in range(100):
        sender.publish(failing, b"%d" % i)
    sender.publish(marker, b"marker")  # handled after all 100 failures

    assert got.wait_message(marker, b"marker")
    assert receiver.stats.receiver_errors == 100
    assert receiver.stats.received == 101
    assert "handler bug" in caplog.text


# -- Redis unreachable, restarted ------------------------------------------------


def test_unreachable_redis_keeps_publishes_up_to_max_pending(
    free_port: int, make_redis_transport: MakeRedisTransport
) -> None:
    transport = make_redis_transport(f"redis://127.0.0.1:{free_port}/0", max_pending=5)
    drops: list[tuple[str, str]] = []
    transport.on_drop(lambda channel, reason: drops.append((channel, reason)))

    for i in range(8):
        transport.publish(f"c{i}", b"x")

    assert drops == [("c0", "overflow"), ("c1", "overflow"), ("c2", "overflow")]
    assert transport.stats.dropped == 3
    assert not transport.wait_subscribed(0)
    assert not transport.flush(0)

    transport.close(flush_timeout=0)
    assert transport.stats.dropped == 8
    assert drops[3:] == [(f"c{i}", "closed") for i in range(3, 8)]


def test_redis_restart_mid_run(
    fresh_redis: EmbeddedRedis,
    make_redis_transport: MakeRedisTransport,
    state_recorder: type[StateRecorder],
) -> None:
    url = fresh_redis.url
    got_a, got_b = Collector(), Collector()
    states_a, states_b = state_recorder(), state_recorder()
    a = make_redis_transport(url, name="a", start=False)
    b = make_redis_transport(url, name="b", start=False)
    for node, got, states, channel in ((a, got_a, states_a, "to-a"), (b, got_b, states_b, "to-b")):
        node.set_receiver(got)
        node.on_state(states)
        node.subscribe(channel)
        node.start()
        assert node.wait_subscribed(DEADLINE)
    a.publish("to-b", b"before")
    b.publish("to-a", b"before")
    assert got_a.wait_message("to-a", b"before") and got_b.wait_message("to-b", b"before")

    fresh_redis.restart()

    assert states_a.wait_for("resubscribed") and states_b.wait_for("resubscribed")
    assert states_a.count("disconnected") >= 1 and states_b.count("disconnected") >= 1
    assert a.wait_subscribed(DEADLINE) and b.wait_subscribed(DEADLINE)
    a.publish("to-b", b"after")
    b.publish("to-a", b"after")
    assert got_a.wait_message("to-a", b"after") and got_b.wait_message("to-b", b"after")
    assert a.stats.reconnects >= 1 and b.stats.reconnects >= 1


def test_subscriptions_and_publishes_made_while_disconnected_apply_on_reconnect(
    fresh_redis: EmbeddedRedis,
    make_redis_transport: MakeRedisTransport,
    state_recorder: type[StateRecorder],
) -> None:
    url = fresh_redis.url
    got = Collector()
    states = state_recorder()
    node = make_redis_transport(url, name="node", start=False)
    node.set_receiver(got)
    node.on_state(states)
    node.subscribe("old")
    node.start()
    assert node.wait_subscribed(DEADLINE)

    fresh_redis.kill()
    assert states.wait_for("disconnected")
    node.subscribe("new")
    for i in range(5):
        node.publish("nobody-listens", b"%d" % i)  # queued until Redis is back
    assert not node.wait_subscribed(0)

    fresh_redis.start()

    assert node.wait_subscribed(DEADLINE)
    assert node.subscribed_channels == {"old", "new"}
    assert node.flush(DEADLINE)
    with redis.Redis.from_url(url) as client:  # a new server: its counters are ours alone
        assert int(client.info("commandstats")["cmdstat_publish"]["calls"]) >= 5
        client.publish("new", b"hello again")
    assert got.wait_message("new", b"hello again")
    assert node.stats.dropped == 0


def test_close_while_redis_is_down_drops_and_reports(
    fresh_redis: EmbeddedRedis, make_redis_transport: MakeRedisTransport, state_recorder: type[StateRecorder]
) -> None:
    states = state_recorder()
    node = make_redis_transport(fresh_redis.url, start=False)
    node.on_state(states)
    node.start()
    assert states.wait_for("connected")
    fresh_redis.kill()
    assert states.wait_for("disconnected")
    drops: list[tuple[str, str]] = []
    node.on_drop(lambda channel, reason: drops.append((channel, reason)))
    node.publish("c", b"x")

    node.close(flush_timeout=0)

    assert drops == [("c", "closed")]
    assert node._own_loop is not None and node._own_loop.closed
    assert node._own_loop._thread is not None and not node._own_loop._thread.is_alive()


def test_a_paused_redis_is_detected_and_left(
    fresh_redis: EmbeddedRedis,
    make_redis_transport: MakeRedisTransport,
    state_recorder: type[StateRecorder],
) -> None:
    """A hung server keeps its sockets open: only the health PING notices."""
    states = state_recorder()
    got = Collector()
    node = make_redis_transport(fresh_redis.url, start=False, health_interval=0.1, connect_timeout=0.5)
    node.on_state(states)
    node.set_receiver(got)
    node.subscribe("c")
    node.start()
    assert node.wait_subscribed(DEADLINE)

    fresh_redis.pause()
    try:
        assert states.wait_for("disconnected")
    finally:
        fresh_redis.resume()

    assert states.wait_for("resubscribed")
    node.publish("c", b"alive again")
    assert got.wait_message("c", b"alive again")


def test_a_publish_that_reaches_no_subscriber_is_reported_with_its_bytes(redis_url: str) -> None:
    unrouted: list[tuple[str, bytes]] = []
    done = threading.Event()
    sender = RedisTransport(redis_url, name="unrouted-sender")
    listener = RedisTransport(redis_url, name="unrouted-listener")
    listener.set_receiver(lambda channel, data: None)
    listener.subscribe("heard:1")
    sender.on_unrouted(lambda channel, data: (unrouted.append((channel, data)), done.set()))
    try:
        listener.start()
        sender.start()
        assert listener.wait_subscribed(DEADLINE)
        sender.publish("heard:1", b"a")
        sender.publish("nobody:1", b"b")
        sender.publish("heard:1", b"c")
        assert sender.flush(DEADLINE)
        assert done.wait(DEADLINE)
        assert unrouted == [("nobody:1", b"b")]
        assert sender.stats.published == 3
    finally:
        sender.close()
        listener.close()
