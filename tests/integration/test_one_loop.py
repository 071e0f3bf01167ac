"""A node on a real Redis runs its transport, its actors' I/O and its
system clock's timers on one asyncio loop, on one thread."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis

from actors.runtime.builtin import Echo
from actors.runtime.node import Node
from bus.address import channel_for
from bus.envelope import Envelope
from bus.messages import Ping

from .conftest import DEADLINE, unique

pytestmark = pytest.mark.integration


class Seen:
    """Thread names, recorded as things happen."""

    def __init__(self) -> None:
        self.threads: dict[str, str] = {}
        self._cond = threading.Condition()

    def mark(self, what: str) -> None:
        with self._cond:
            self.threads.setdefault(what, threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, *what: str) -> dict[str, str]:
        with self._cond:
            assert self._cond.wait_for(lambda: all(w in self.threads for w in what), DEADLINE), (
                f"seen only {sorted(self.threads)}")
            return dict(self.threads)


def test_bytes_from_redis_timers_and_io_run_on_the_nodes_one_loop(local_node: Node,
                                                                  redis_client: redis.Redis) -> None:
    node = local_node
    seen = Seen()
    address = f"echo:{unique('one-loop')}"
    node.spawn(address, Echo)
    assert node.transport.wait_subscribed(DEADLINE)
    node.delivery_hook = lambda env: seen.mark(f"delivered {env.to}")

    # Bytes published by another client reach the actor's mailbox from the loop.
    data = node.codec.encode(Envelope(to=address, message=Ping(n=1)))
    assert redis_client.publish(channel_for(address, node.namespace), data) == 1
    node.clock.call_later(0.0, seen.mark, "timer")

    async def io_request() -> None:
        seen.mark("io")

    node.io.submit(io_request()).result(DEADLINE)

    threads = seen.wait(f"delivered {address}", "timer", "io")
    assert set(threads.values()) == {node.io.name}
    assert node.transport.loop is node.io.loop  # type: ignore[attr-defined]
    # One thread for all of it (the transport was started without a loop of its own).
    assert node.transport._own_loop is None  # type: ignore[attr-defined]
    assert [t.name for t in threading.enumerate()].count(node.io.name) == 1


def test_a_node_shut_down_leaves_no_loop_running(redis_url: str) -> None:
    from bus.redis_transport import RedisTransport

    node_id = unique("one-loop-shutdown")
    node = Node(RedisTransport(redis_url, name=node_id), node_id=node_id).start()
    loop = node.io.loop
    node.clock.call_later(3600.0, lambda: None)
    assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "up"), loop).result(DEADLINE) == "up"

    node.shutdown()

    assert loop.is_closed()
    assert not any(t.name == node.io.name for t in threading.enumerate())
