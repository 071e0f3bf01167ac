"""Fixtures for the bus I/O tests: a real redis-server, transports that are
always closed, and thread-safe recorders to wait on (never sleep on)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from bus import ports
from bus.embedded import EmbeddedRedis
from bus.redis_transport import RedisTransport
from bus.transport import InProcessHub, InProcessTransport, Transport

DEADLINE = 10.0
"""Upper bound for any wait in these tests; reached only when something is broken."""


class Collector:
    """A receiver that records ``(channel, data)`` and lets tests wait on it."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, channel: str, data: bytes) -> None:
        with self._cond:
            self.items.append((channel, data))
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = DEADLINE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)

    def wait_count(self, count: int, timeout: float = DEADLINE) -> bool:
        return self.wait_for(lambda items: len(items) >= count, timeout)

    def wait_message(self, channel: str, data: bytes, timeout: float = DEADLINE) -> bool:
        return self.wait_for(lambda items: (channel, data) in items, timeout)

    def on(self, channel: str) -> list[bytes]:
        with self._cond:
            return [d for c, d in self.items if c == channel]


class StateRecorder:
    """An ``on_state`` callback that lets tests wait for the n-th occurrence of a state."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, state: str) -> None:
        with self._cond:
            self.states.append(state)
            self._cond.notify_all()

    def count(self, state: str) -> int:
        with self._cond:
            return self.states.count(state)

    def wait_for(self, state: str, times: int = 1, timeout: float = DEADLINE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.states.count(state) >= times, timeout)


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server's URL, FLUSHALLed before the test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def channel_prefix() -> str:
    """Pub/sub channels ignore FLUSHALL and db numbers: keep tests apart by name."""
    return f"t-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def free_port() -> int:
    """A TCP port with nobody listening (for "Redis is unreachable")."""
    return ports.free_port()


@pytest.fixture
def make_redis_transport() -> Iterator[Callable[..., RedisTransport]]:
    """Factory of RedisTransports; every one is closed at teardown, pass or fail."""
    created: list[RedisTransport] = []

    def make(url: str, *, start: bool = True, **kwargs: object) -> RedisTransport:
        transport = RedisTransport(url, **kwargs)  # type: ignore[arg-type]
        created.append(transport)
        if start:
            transport.start()
        return transport

    yield make
    for transport in created:
        transport.close(flush_timeout=0.5)


@pytest.fixture(params=["inprocess", "redis"])
def make_transport(request: pytest.FixtureRequest) -> Iterator[Callable[..., Transport]]:
    """Factory of transports on one shared bus, for the conformance suite:
    ``make(name, start=True)``. Parametrized over both implementations."""
    created: list[Transport] = []
    if request.param == "inprocess":
        hub = InProcessHub()

        def build(name: str) -> Transport:
            return InProcessTransport(hub, name=name)

    else:
        url = request.getfixturevalue("redis_url")

        def build(name: str) -> Transport:
            return RedisTransport(url, name=name)

    def make(name: str = "node", *, start: bool = True) -> Transport:
        transport = build(name)
        created.append(transport)
        if start:
            transport.start()
        return transport

    yield make
    for transport in created:
        transport.close()


@pytest.fixture
def collector() -> Callable[[], Collector]:
    return Collector


@pytest.fixture
def state_recorder() -> Callable[[], StateRecorder]:
    return StateRecorder
