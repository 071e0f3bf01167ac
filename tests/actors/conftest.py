"""Fixtures for the actor runtime tests.

Everything a test starts is stopped at teardown, pass or fail: actors
(``ActorRegistry.stop_all``), nodes (``shutdown``), private thread pools.
Waiting is always on an explicit condition with a deadline, never a sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pykka import ActorRegistry

from actors.runtime.clock import ManualClock
from actors.runtime.node import Node
from actors.runtime.pooled import ThreadPoolDispatcher, default_dispatcher
from bus.address import SYS_EVENTS
from bus.envelope import Codec
from bus.messages import Event
from bus.transport import InProcessHub, InProcessTransport

DEADLINE = 10.0
"""Upper bound for any wait; reached only when something is broken."""


@pytest.fixture(autouse=True)
def _stop_every_actor() -> Iterator[None]:
    yield
    ActorRegistry.stop_all(timeout=DEADLINE)
    wait = getattr(default_dispatcher(), "wait_idle", None)
    if wait is not None:
        wait(DEADLINE)


class Pools:
    """Makes private ``ThreadPoolDispatcher`` s and ends their threads."""

    def __init__(self) -> None:
        self._pools: list[ThreadPoolDispatcher] = []

    def __call__(self, size: int = 1) -> ThreadPoolDispatcher:
        pool = ThreadPoolDispatcher(size=size, name=f"test-pool-{len(self._pools)}")
        self._pools.append(pool)
        return pool

    def close(self) -> None:
        # Actors on these pools must stop while the pools still run.
        ActorRegistry.stop_all(timeout=DEADLINE)
        for pool in self._pools:
            pool.wait_idle(DEADLINE)
            for _ in range(pool.threads):
                pool._ready.put(None)


@pytest.fixture
def make_pool() -> Iterator[Pools]:
    pools = Pools()
    yield pools
    pools.close()


class Recorder:
    """A thread-safe list that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    __call__ = add

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = DEADLINE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)

    def wait_count(self, n: int, timeout: float = DEADLINE) -> bool:
        return self.wait_for(lambda items: len(items) >= n, timeout)

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.items)


@pytest.fixture
def recorder() -> Callable[[], Recorder]:
    return Recorder


class EventSpy:
    """A third party on the hub that only listens to ``sys:events`` and
    decodes what arrives there, as ``huddle monitor`` would."""

    def __init__(self, hub: InProcessHub) -> None:
        self.codec = Codec()
        self.transport = InProcessTransport(hub, name="event-spy")
        self.events = Recorder()
        self.transport.set_receiver(self._receive)
        self.transport.subscribe(SYS_EVENTS)
        self.transport.start()

    def _receive(self, channel: str, data: bytes) -> None:
        env = self.codec.decode(data)
        assert isinstance(env.message, Event)
        self.events.add(env.message)

    def matching(self, event: str, **fields: Any) -> list[Event]:
        return [
            e for e in self.events.snapshot()
            if e.event == event and all(getattr(e, k) == v for k, v in fields.items())
        ]

    def wait(self, event: str, timeout: float = DEADLINE, **fields: Any) -> Event:
        assert self.events.wait_for(lambda _: bool(self.matching(event, **fields)), timeout), (
            f"no {event} {fields} on sys:events; saw "
            f"{[(e.event, e.address, e.reason) for e in self.events.snapshot()]}"
        )
        return self.matching(event, **fields)[0]


class Cluster:
    """Nodes on one in-process hub sharing one manual clock."""

    def __init__(self) -> None:
        self.hub = InProcessHub()
        self.clock = ManualClock()
        self.spy = EventSpy(self.hub)
        self.nodes: list[Node] = []
        self.peers: list[InProcessTransport] = []

    def node(self, node_id: str, **kwargs: Any) -> Node:
        kwargs.setdefault("clock", self.clock)
        node = Node(InProcessTransport(self.hub, name=node_id), node_id=node_id, **kwargs)
        self.nodes.append(node)
        return node.start()

    def peer(self, name: str, *channels: str, receiver: Callable[[str, bytes], None] | None = None) -> InProcessTransport:
        """A bare transport on the hub, no node behind it: a stand-in for a
        remote process that keeps, answers or forwards raw bytes."""
        transport = InProcessTransport(self.hub, name=name)
        self.peers.append(transport)
        if receiver is not None:
            transport.set_receiver(receiver)
        transport.subscribe(*channels)
        transport.start()
        return transport

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.shutdown()
        for transport in self.peers:
            transport.close()
        self.spy.transport.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()
