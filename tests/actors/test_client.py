"""The asyncio client (actors/client.py) against a real redis-server and a
real ``huddle node`` process: asks, tells and what is delivered at the
application's address and on ``sys:events``, from an asyncio program."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.client import connect
from bus.embedded import EmbeddedRedis
from bus.errors import AskTimeout, HuddleError
from bus.messages import Event, Ping, Pong
from ops.processes import NodeProcess

pytestmark = pytest.mark.integration

DEADLINE = 10.0


@pytest.fixture
def echo_node(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess.start("client-echo", redis_server.url, tmp_path, ["--echo", "echo:client-1"])
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def test_ask_and_tell_from_an_asyncio_program(redis_server: EmbeddedRedis, echo_node: NodeProcess) -> None:
    async def main() -> tuple[object, object, str]:
        async with connect(redis_server.url) as client:
            pong = await client.ask("echo:client-1", Ping(n=1, payload=b"\x00hi"))
            inbox = client.events()  # the application's own address
            await inbox.ready()
            # A tell from the application: the Echo tells its Pong back to the sender.
            await client.tell("echo:client-1", Ping(n=2))
            told = await asyncio.wait_for(inbox.__anext__(), DEADLINE)
            return pong, told.message, told.sender or ""

    pong, told, sender = asyncio.run(main())
    assert pong == Pong(n=1, payload=b"\x00hi")
    assert told == Pong(n=2) and sender == "echo:client-1"


def test_events_on_a_system_channel(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    async def main() -> Event:
        async with connect(redis_server.url) as client:
            events = client.events("sys:events")
            await events.ready()
            node = NodeProcess.start("client-watched", redis_server.url, tmp_path, ["--echo", "echo:client-2"])
            try:
                async for envelope in events:
                    message = envelope.message
                    if isinstance(message, Event) and message.event == "started" and message.address == "echo:client-2":
                        return message
            finally:
                await asyncio.to_thread(node.stop)
        raise AssertionError("events ended")

    started = asyncio.run(asyncio.wait_for(main(), 60))
    assert started.node == "client-watched"


def test_an_ask_nobody_answers_fails_typed_and_the_client_closes_cleanly(redis_server: EmbeddedRedis) -> None:
    async def main() -> None:
        async with connect(redis_server.url) as client:
            with pytest.raises((AskTimeout, HuddleError)):
                await client.ask("echo:nobody-here", Ping(n=1), timeout=0.5)
            events = client.events()
        # Closed: the iterator ends instead of waiting forever.
        assert [e async for e in events] == []

    asyncio.run(asyncio.wait_for(main(), 30))


def test_connect_needs_a_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)

    async def main() -> None:
        async with connect():
            pass

    with pytest.raises(HuddleError, match="needs a bus"):
        asyncio.run(main())


@pytest.mark.parametrize("bus", ["one-server", "redis-cluster"])
def test_a_cluster_member_client_hears_at_its_address_by_its_lease(bus: str, request: pytest.FixtureRequest) -> None:
    from actors.cluster import ClusterConfig

    url = request.getfixturevalue("redis_cluster" if bus == "redis-cluster" else "redis_server").url
    fast = ClusterConfig(capacity=0.0, heartbeat_interval=0.2, lease_ttl=1.0)

    async def main() -> object:
        async with connect(url, namespace="client-cl:", cluster=True, cluster_config=fast,
                           address="app:client-cl") as app, \
                connect(url, namespace="client-cl:", cluster=True, cluster_config=fast) as other:
            assert app.cluster is not None and app.cluster.joined
            inbox = app.events()
            await inbox.ready()
            await other.tell("app:client-cl", Ping(n=9))  # routed by the lease app holds
            return (await asyncio.wait_for(inbox.__anext__(), DEADLINE)).message

    assert asyncio.run(asyncio.wait_for(main(), 60)) == Ping(n=9)
