"""Baselines: what plain redis-py does on this machine, to compare huddle with.

Each benchmark runs against a given Redis URL and crosses processes the way
a fleet does: the subscriber side runs in a separate process (multiprocessing,
spawn context), the publisher in the calling process. Times are taken with
``time.monotonic()`` (CLOCK_MONOTONIC, shared by all processes on a host).

- :func:`baseline_publish_throughput`: redis-py pipelined ``PUBLISH`` ->
  redis-py ``PubSub.get_message`` subscriber; end to end (first publish to
  last receipt).
- :func:`baseline_ping_pong`: sequential request/reply over pub/sub between
  two processes with redis-py; round-trip percentiles (:class:`PingPong`
  keeps the echo process for round trips taken in rounds).
- :func:`transport_publish_throughput` / :func:`transport_ping_pong`: the
  same two measurements through ``bus.redis_transport.RedisTransport``.
- :func:`publish_path_matrix`: every publisher kind against every subscriber
  kind, to see which side costs what.

Every function returns a plain dict (JSON-ready).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "PingPong",
    "baseline_ping_pong",
    "baseline_publish_throughput",
    "publish_path_matrix",
    "round_trip_figures",
    "transport_ping_pong",
    "transport_publish_throughput",
]

PUBLISHERS = ("redispy", "redispy-async", "transport")
SUBSCRIBERS = ("redispy", "redispy-async", "transport")

_IDLE_TIMEOUT = 3.0  # a subscriber that hears nothing this long counts the rest as lost
_PIPELINE_BATCH = 1_000


def _channels(count: int) -> list[str]:
    return [f"bench:{i}" for i in range(count)]


# ---------------------------------------------------------------------------
# Subscriber processes (top-level so spawn can import them)


def _subscriber_process(
    kind: str, url: str, channels: list[str], n: int, ready: Any, progress: Any, results: Any
) -> None:
    """Receive ``n`` messages (or stop after an idle gap); report count and
    times. ``progress.value`` follows the count (every 1,024 messages) so the
    publisher can keep its lead under the server's output-buffer limit."""
    try:
        if kind == "redispy":
            outcome = _receive_redispy(url, channels, n, ready, progress)
        elif kind == "redispy-async":
            outcome = _receive_redispy_async(url, channels, n, ready, progress)
        elif kind == "transport":
            outcome = _receive_transport(url, channels, n, ready, progress)
        else:
            raise ValueError(f"unknown subscriber kind {kind!r}")
        results.put(outcome)
    except BaseException as exc:  # report, then let the parent decide
        results.put({"error": repr(exc)})
        raise


def _receive_redispy(url: str, channels: list[str], n: int, ready: Any, progress: Any) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    for start in range(0, len(channels), 1000):
        pubsub.subscribe(*channels[start : start + 1000])
    # Drain the confirmations so that "ready" means subscribed.
    confirmed = 0
    while confirmed < len(channels):
        message = pubsub.parse_response(block=True, timeout=10.0)
        if message and message[0] in (b"subscribe", "subscribe"):
            confirmed += 1
    ready.set()
    received = 0
    first = last = 0.0
    get_message = pubsub.get_message
    while received < n:
        message = get_message(timeout=_IDLE_TIMEOUT)
        if message is None:
            break
        if message["type"] == "message":
            received += 1
            last = time.monotonic()
            if received == 1:
                first = last
            if not received & 0x3FF:
                progress.value = received
    pubsub.close()
    client.close()
    return {"received": received, "first": first, "last": last}


def _receive_redispy_async(
    url: str, channels: list[str], n: int, ready: Any, progress: Any
) -> dict[str, Any]:
    import asyncio

    import redis.asyncio as aredis

    async def main() -> dict[str, Any]:
        client = aredis.Redis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        for start in range(0, len(channels), 1000):
            await pubsub.subscribe(*channels[start : start + 1000])
        confirmed = 0
        while confirmed < len(channels):
            message = await pubsub.parse_response(block=True, timeout=10.0)
            if message and message[0] in (b"subscribe", "subscribe"):
                confirmed += 1
        ready.set()
        received = 0
        first = last = 0.0
        while received < n:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_IDLE_TIMEOUT)
            if message is None:
                break
            received += 1
            last = time.monotonic()
            if received == 1:
                first = last
            if not received & 0x3FF:
                progress.value = received
        await pubsub.aclose()
        await client.aclose()
        return {"received": received, "first": first, "last": last}

    return asyncio.run(main())


def _receive_transport(url: str, channels: list[str], n: int, ready: Any, progress: Any) -> dict[str, Any]:
    from bus.redis_transport import RedisTransport

    state = {"received": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()

    def receiver(channel: str, data: bytes) -> None:
        received = state["received"] + 1
        state["received"] = received
        now = time.monotonic()
        state["last"] = now
        if received == 1:
            state["first"] = now
        if not received & 0x3FF:
            progress.value = received
        if received >= n:
            done.set()

    transport = RedisTransport(url, name="bench-sub")
    transport.set_receiver(receiver)
    transport.start()
    transport.subscribe(*channels)
    if not transport.wait_subscribed(30.0):
        raise RuntimeError("subscriber could not subscribe")
    ready.set()
    while not done.is_set():
        seen = state["received"]
        if done.wait(_IDLE_TIMEOUT):
            break
        if state["received"] == seen:  # nothing for _IDLE_TIMEOUT: the rest is lost
            break
    transport.close(flush_timeout=0)
    return dict(state)


# ---------------------------------------------------------------------------
# Publishers (in the calling process)


def _publish_redispy(url: str, channels: list[str], n: int, payload: bytes, gate: Callable[[int], None]) -> None:
    import redis

    client = redis.Redis.from_url(url)
    count = len(channels)
    sent = 0
    while sent < n:
        gate(sent)
        pipe = client.pipeline(transaction=False)
        upto = min(n, sent + _PIPELINE_BATCH)
        for i in range(sent, upto):
            pipe.publish(channels[i % count], payload)
        pipe.execute()
        sent = upto
    client.close()


def _publish_redispy_async(
    url: str, channels: list[str], n: int, payload: bytes, gate: Callable[[int], None]
) -> None:
    import asyncio

    import redis.asyncio as aredis

    async def main() -> None:
        client = aredis.Redis.from_url(url)
        count = len(channels)
        sent = 0
        while sent < n:
            gate(sent)
            pipe = client.pipeline(transaction=False)
            upto = min(n, sent + _PIPELINE_BATCH)
            for i in range(sent, upto):
                pipe.publish(channels[i % count], payload)
            await pipe.execute()
            sent = upto
        await client.aclose()

    asyncio.run(main())


def _publish_transport(url: str, channels: list[str], n: int, payload: bytes, gate: Callable[[int], None]) -> None:
    from bus.redis_transport import RedisTransport

    transport = RedisTransport(url, name="bench-pub")
    transport.start()
    count = len(channels)
    publish = transport.publish
    for sent in range(0, n, _PIPELINE_BATCH):
        gate(sent)
        for i in range(sent, min(n, sent + _PIPELINE_BATCH)):
            publish(channels[i % count], payload)
    if not transport.flush(120.0):
        raise RuntimeError("publisher could not flush")
    transport.close()


_PUBLISH: dict[str, Callable[[str, list[str], int, bytes, Callable[[int], None]], None]] = {
    "redispy": _publish_redispy,
    "redispy-async": _publish_redispy_async,
    "transport": _publish_transport,
}


def _wait_ready(ready: Any, proc: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if not proc.is_alive():
            raise RuntimeError(f"{proc.name} exited with {proc.exitcode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} was not ready within {timeout}s")


def _throughput(
    url: str, *, publisher: str, subscriber: str, n: int, payload_size: int, channels: int, window: int
) -> dict[str, Any]:
    names = _channels(channels)
    payload = os.urandom(payload_size // 2).hex().encode()[:payload_size].ljust(payload_size, b"x")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    progress = ctx.Value("q", 0, lock=False)
    results = ctx.Queue()
    proc = ctx.Process(
        target=_subscriber_process,
        args=(subscriber, url, names, n, ready, progress, results),
        name=f"bench-sub-{subscriber}",
    )
    waits = [0]

    def gate(sent: int) -> None:
        # Pub/sub has no backpressure: a subscriber more than the server's
        # output-buffer limit behind (32 MB by default) is disconnected. Keep
        # the lead under ``window`` messages.
        while sent - progress.value > window and proc.is_alive():
            waits[0] += 1
            time.sleep(0.0002)

    proc.start()
    try:
        _wait_ready(ready, proc)
        start = time.monotonic()
        _PUBLISH[publisher](url, names, n, payload, gate)
        published = time.monotonic()
        try:
            outcome = results.get(timeout=120.0)
        except queue.Empty as exc:
            raise RuntimeError("subscriber reported nothing") from exc
        if "error" in outcome:
            raise RuntimeError(f"subscriber failed: {outcome['error']}")
        proc.join(timeout=30.0)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10.0)
    received = outcome["received"]
    elapsed = max(outcome["last"] - start, 1e-9)
    return {
        "publisher": publisher,
        "subscriber": subscriber,
        "n": n,
        "payload_size": payload_size,
        "channels": channels,
        "msgs_per_s": round(received / elapsed),
        "publish_msgs_per_s": round(n / max(published - start, 1e-9)),
        "lost": n - received,
        "seconds": round(elapsed, 3),
        "publisher_waits": waits[0],
    }


def baseline_publish_throughput(
    url: str, n: int = 500_000, payload_size: int = 100, channels: int = 1000, window: int = 50_000
) -> dict[str, Any]:
    """redis-py pipelined PUBLISH (batches of 1,000) -> redis-py PubSub
    ``get_message`` in another process. ``msgs_per_s`` is end to end: messages
    received / (last receipt - first publish). The publisher never runs more
    than ``window`` messages ahead of the subscriber (``publisher_waits``
    counts the pauses), so the result is a sustainable rate, not a burst
    that the server would cut off."""
    return _throughput(
        url, publisher="redispy", subscriber="redispy", n=n, payload_size=payload_size, channels=channels,
        window=window,
    )  # fmt: skip


def transport_publish_throughput(
    url: str, n: int = 500_000, payload_size: int = 100, channels: int = 1000, window: int = 50_000
) -> dict[str, Any]:
    """The same measurement through RedisTransport on both sides."""
    return _throughput(
        url, publisher="transport", subscriber="transport", n=n, payload_size=payload_size, channels=channels,
        window=window,
    )  # fmt: skip


def publish_path_matrix(
    url: str,
    n: int = 200_000,
    payload_size: int = 100,
    channels: int = 1000,
    window: int = 50_000,
    publishers: tuple[str, ...] = PUBLISHERS,
    subscribers: tuple[str, ...] = SUBSCRIBERS,
) -> list[dict[str, Any]]:
    """Every publisher kind against every subscriber kind."""
    return [
        _throughput(url, publisher=p, subscriber=s, n=n, payload_size=payload_size, channels=channels, window=window)
        for p in publishers
        for s in subscribers
    ]


# ---------------------------------------------------------------------------
# Ping-pong


def _echo_process(kind: str, url: str, ready: Any, stop_channel: str) -> None:
    """Answer every message on ``ping`` with the same bytes on ``pong``."""
    if kind == "redispy":
        import redis

        client = redis.Redis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("bench:ping", stop_channel)
        pubsub.parse_response(block=True, timeout=10.0)
        pubsub.parse_response(block=True, timeout=10.0)
        ready.set()
        for message in pubsub.listen():
            if message["type"] != "message":
                continue
            if message["channel"] == stop_channel.encode():
                break
            client.publish("bench:pong", message["data"])
        pubsub.close()
        client.close()
    elif kind == "transport":
        from bus.redis_transport import RedisTransport

        stop = threading.Event()
        transport = RedisTransport(url, name="bench-echo")

        def receiver(channel: str, data: bytes) -> None:
            if channel == stop_channel:
                stop.set()
            else:
                transport.publish("bench:pong", data)

        transport.set_receiver(receiver)
        transport.start()
        transport.subscribe("bench:ping", stop_channel)
        transport.wait_subscribed(10.0)
        ready.set()
        stop.wait(600.0)
        transport.close()
    else:
        raise ValueError(f"unknown echo kind {kind!r}")


class PingPong:
    """An echo process of ``kind`` (``redispy`` or ``transport``) and a
    pinger of the same kind in this process, kept between :meth:`run` calls
    so a benchmark can take its round trips in rounds, interleaved with what
    it compares them to (the host's speed drifts between runs seconds apart).
    Use as a context manager: the echo process is ended on exit, also on
    error."""

    def __init__(self, url: str, kind: str) -> None:
        if kind not in ("redispy", "transport"):
            raise ValueError(f"unknown ping-pong kind {kind!r}")
        self.url, self.kind = url, kind
        self._stop_channel = "bench:stop"
        self._proc: Any = None
        self._ping: Callable[[int, int], list[float]] | None = None
        self._close: Callable[[], None] | None = None

    def __enter__(self) -> PingPong:
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self._proc = ctx.Process(target=_echo_process, args=(self.kind, self.url, ready, self._stop_channel),
                                 name=f"bench-echo-{self.kind}")
        self._proc.start()
        try:
            _wait_ready(ready, self._proc)
            self._ping, self._close = (_redispy_pinger(self.url) if self.kind == "redispy"
                                       else _transport_pinger(self.url))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, n: int, first: int = 0) -> list[float]:
        """``n`` round trips, one at a time; their times in seconds (pings
        are numbered from ``first``)."""
        assert self._ping is not None, "use PingPong as a context manager"
        return self._ping(first, n)

    def __exit__(self, *_exc: object) -> None:
        import redis

        try:
            if self._close is not None:
                self._close()
        finally:
            self._ping = self._close = None
            proc, self._proc = self._proc, None
            if proc is not None:
                try:
                    with redis.Redis.from_url(self.url) as client:
                        client.publish(self._stop_channel, b"stop")
                finally:
                    proc.join(timeout=15.0)
                    if proc.is_alive():
                        proc.terminate()
                        proc.join(timeout=10.0)


def round_trip_figures(rtts: list[float]) -> dict[str, float]:
    """p50, p99 and max of round trips (seconds) in microseconds."""
    rtts = sorted(rtts)
    return {
        "n": len(rtts),
        "p50_us": round(statistics.median(rtts) * 1e6, 1),
        "p99_us": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1e6, 1),
        "max_us": round(rtts[-1] * 1e6, 1),
    }


def _ping_pong(url: str, kind: str, n: int) -> dict[str, Any]:
    with PingPong(url, kind) as pings:
        rtts = pings.run(n)
    return {"kind": kind, **round_trip_figures(rtts)}


def _redispy_pinger(url: str) -> tuple[Callable[[int, int], list[float]], Callable[[], None]]:
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("bench:pong")
    pubsub.parse_response(block=True, timeout=10.0)

    def round_trip(body: bytes) -> None:
        client.publish("bench:ping", body)
        while True:
            message = pubsub.get_message(timeout=10.0)
            if message is None:
                raise RuntimeError(f"no pong for ping {body.decode()}")
            if message["type"] == "message" and message["data"] == body:
                return

    def ping(first: int, n: int) -> list[float]:
        return _timed(first, n, round_trip)

    def close() -> None:
        pubsub.close()
        client.close()

    return ping, close


def _transport_pinger(url: str) -> tuple[Callable[[int, int], list[float]], Callable[[], None]]:
    from bus.redis_transport import RedisTransport

    pongs: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    transport = RedisTransport(url, name="bench-ping")
    transport.set_receiver(lambda channel, data: pongs.put(data))
    transport.start()
    transport.subscribe("bench:pong")
    if not transport.wait_subscribed(10.0):
        transport.close()
        raise RuntimeError("the pinger's transport did not subscribe in time")

    def round_trip(body: bytes) -> None:
        transport.publish("bench:ping", body)
        while pongs.get(timeout=10.0) != body:
            pass

    def ping(first: int, n: int) -> list[float]:
        return _timed(first, n, round_trip)

    return ping, transport.close


def _timed(first: int, n: int, round_trip: Callable[[bytes], None]) -> list[float]:
    """The times, in seconds, of ``n`` round trips one at a time (pings
    numbered from ``first``)."""
    rtts: list[float] = []
    for i in range(first, first + n):
        body = b"%d" % i
        start = time.perf_counter()
        round_trip(body)
        rtts.append(time.perf_counter() - start)
    return rtts


def baseline_ping_pong(url: str, n: int = 10_000) -> dict[str, Any]:
    """redis-py pub/sub request/reply between two processes, one at a time.
    The round trip is PUBLISH -> echo process -> PUBLISH -> get_message."""
    return _ping_pong(url, "redispy", n)


def transport_ping_pong(url: str, n: int = 10_000) -> dict[str, Any]:
    """The same round trip through RedisTransport on both sides (the pong is
    handed from the I/O thread to the caller's thread, as in a node)."""
    return _ping_pong(url, "transport", n)


if __name__ == "__main__":  # a quick look; ``huddle bench`` is the real entry point
    import json

    from bus.embedded import redis_url_from_env_or_embedded

    bench_url, server = redis_url_from_env_or_embedded()
    try:
        for result in (
            baseline_publish_throughput(bench_url),
            transport_publish_throughput(bench_url),
            baseline_ping_pong(bench_url),
            transport_ping_pong(bench_url),
        ):
            print(json.dumps(result))
    finally:
        if server is not None:
            server.stop()
