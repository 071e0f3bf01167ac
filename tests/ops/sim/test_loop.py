"""The simulation's loop and network: virtual time that moves only when
nothing is ready, timers in the order they were set, the same run from the
same seed, connections that keep their order, and faults that surface as
a real loop's would."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.sim.loop import SimLoop, Stalled
from ops.sim.network import Latency, SimNetwork


def test_sleeping_an_hour_moves_the_clock_an_hour_and_nothing_else() -> None:
    loop = SimLoop()

    async def nap() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    assert loop.run_until_complete(nap()) == 3600.0
    assert loop.time() == 3600.0


def test_asyncio_timeout_runs_out_on_virtual_time() -> None:
    loop = SimLoop()

    async def wait_forever() -> None:
        async with asyncio.timeout(2.5):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        loop.run_until_complete(wait_forever())
    assert loop.time() == 2.5


def test_a_future_nobody_can_set_stalls_the_loop_instead_of_hanging_it() -> None:
    loop = SimLoop()
    with pytest.raises(Stalled, match="nothing left to run"):
        loop.run_until_complete(loop.create_future())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.001, 0.002, 1.0]), min_size=1, max_size=30))
def test_timers_run_by_time_then_in_the_order_they_were_set(delays: list[float]) -> None:
    loop = SimLoop()
    ran: list[int] = []
    for i, delay in enumerate(delays):
        loop.call_later(delay, ran.append, i)
    loop.run_for(2.0)
    assert ran == sorted(range(len(delays)), key=lambda i: (delays[i], i))


def test_run_for_runs_what_is_due_and_leaves_the_rest() -> None:
    loop = SimLoop()
    ran: list[str] = []
    loop.call_later(1.0, ran.append, "early")
    loop.call_later(3.0, ran.append, "late")
    loop.run_for(2.0)
    assert ran == ["early"] and loop.time() == 2.0
    loop.run_for(1.0)
    assert ran == ["early", "late"]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def _chatter(seed: int) -> list[tuple[float, str, bytes]]:
    """Two clients talking to an echo server at once; what each heard, when."""
    network = SimNetwork(seed, Latency(base=0.001, jitter=0.004))
    loop = SimLoop(network)
    network.listen(loop, Echo, "echo", 7)
    heard: list[tuple[float, str, bytes]] = []

    async def client(name: str) -> None:
        reader, writer = await asyncio.open_connection("echo", 7)
        for i in range(20):
            writer.write(f"{name}{i};".encode())
        got = b""
        while got.count(b";") < 20:
            chunk = await reader.read(100)
            heard.append((asyncio.get_running_loop().time(), name, chunk))
            got += chunk
        assert got == b"".join(f"{name}{i};".encode() for i in range(20))  # in order, nothing lost
        writer.close()

    async def both() -> None:
        await asyncio.gather(client("a"), client("b"))

    loop.run_until_complete(both())
    return heard


def test_a_connection_keeps_its_order_and_a_seed_replays_the_same_run() -> None:
    first = _chatter(7)
    assert first == _chatter(7)
    assert first != _chatter(8)  # other delays: another interleaving, other times


def test_connecting_where_nothing_listens_is_refused() -> None:
    loop = SimLoop(SimNetwork(1))

    async def connect() -> None:
        await asyncio.open_connection("nowhere", 1)

    with pytest.raises(ConnectionRefusedError):
        loop.run_until_complete(connect())


def test_a_dropped_connection_resets_both_sides() -> None:
    network = SimNetwork(3)
    loop = SimLoop(network)
    server = network.listen(loop, Echo, "echo", 7)

    async def talk() -> bytes:
        reader, writer = await asyncio.open_connection("echo", 7)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        network.drop_all("echo", 7)
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        return b"done"

    assert loop.run_until_complete(talk()) == b"done"
    assert server.is_serving() and not network.connections


def test_a_partition_cuts_two_hosts_apart_and_nothing_else() -> None:
    """A node cut off from Redis alone keeps its other connections."""
    import contextvars

    from ops.sim.network import current_host

    network = SimNetwork(4)
    loop = SimLoop(network)
    network.listen(loop, Echo, "redis", 6379)
    network.listen(loop, Echo, "service", 443)
    node = contextvars.copy_context()
    node.run(current_host.set, "n0")

    async def as_node() -> None:
        to_redis = await asyncio.open_connection("redis", 6379)
        to_service = await asyncio.open_connection("service", 443)
        assert network.partition("n0", "redis") == 1
        with pytest.raises(ConnectionResetError):
            await to_redis[0].read(10)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("redis", 6379)
        to_service[1].write(b"still")
        assert await to_service[0].readexactly(5) == b"still"
        network.heal("n0")
        reader, writer = await asyncio.open_connection("redis", 6379)
        writer.write(b"back")
        assert await reader.readexactly(4) == b"back"

    loop.run_until_complete(node.run(loop.create_task, as_node()))
