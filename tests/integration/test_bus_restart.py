"""A node survives a Redis restart: it says so on its event stream, and
actors on two nodes talk again afterwards."""

from __future__ import annotations

import threading

from actors.runtime.builtin import Echo
from actors.runtime.node import Node
from bus.embedded import EmbeddedRedis
from bus.messages import Event, Ping, Pong
from bus.redis_transport import RedisTransport

DEADLINE = 20.0


def test_nodes_report_the_outage_and_recover_after_a_redis_restart(fresh_redis: EmbeddedRedis) -> None:
    seen: list[str] = []
    resubscribed = threading.Event()

    def listen(ev: Event) -> None:
        seen.append(ev.event)
        if ev.event == "bus-resubscribed" and "bus-disconnected" in seen:
            resubscribed.set()

    host = Node(RedisTransport(fresh_redis.url, name="host"), node_id="host")
    asker = Node(RedisTransport(fresh_redis.url, name="asker"), node_id="asker")
    asker.add_event_listener(listen)
    try:
        host.start()
        asker.start()
        host.spawn("echo:r", Echo)
        assert host.transport.wait_subscribed(DEADLINE) and asker.transport.wait_subscribed(DEADLINE)
        assert asker.ask("echo:r", Ping(n=1)).get(timeout=DEADLINE) == Pong(n=1)

        fresh_redis.restart()
        assert resubscribed.wait(DEADLINE), seen
        assert host.transport.wait_subscribed(DEADLINE)
        assert asker.ask("echo:r", Ping(n=2), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=2)
        assert asker.counters["bus:disconnected"] >= 1
    finally:
        asker.shutdown()
        host.shutdown()
