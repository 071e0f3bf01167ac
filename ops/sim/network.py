"""A simulated TCP network for :class:`~ops.sim.loop.SimLoop`.

Servers listen on ``(host, port)`` names; a connection is a pair of
:class:`SimTransport` objects, one per side, each an ``asyncio.Transport``
as a protocol expects one (streams, websockets and redis-py run on it
unchanged). What one side writes reaches the other side's
``data_received`` after a delay drawn from the network's seeded random
generator, never before anything written earlier on the same connection:
a connection keeps its order, as TCP does; two connections do not order
each other. Closing delivers what was written first, then
``connection_lost`` on both sides.

Hosts: code runs "on" a host (:data:`current_host`, a context variable:
whatever a host's code schedules, tasks and callbacks, carries it). A
connection belongs to the host that opened it; what arrives on a side runs
in that side's context, so a host's code never runs as another's.

Faults are the network's to inject: :meth:`SimNetwork.drop` cuts one
connection at once (both sides see ``connection_lost`` with
``ConnectionResetError``; bytes in flight are lost), :meth:`refuse`
makes new connections to an address fail until :meth:`accept` again, and
:meth:`isolate` cuts a host off (its connections dropped, its new ones
refused) until :meth:`heal`, and :meth:`partition` cuts two hosts off
from each other alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Latency", "SimNetwork", "SimServer", "SimTransport", "current_host"]

#: The host of code that names none: the simulation's own driver.
WORLD_HOST = "world"
#: The host the running code belongs to.
current_host: contextvars.ContextVar[str] = contextvars.ContextVar("huddle_sim_host", default=WORLD_HOST)


@dataclass(frozen=True)
class Latency:
    """One-way delay of a write: ``base`` plus up to ``jitter`` seconds,
    uniformly drawn per write (the connection's order still holds)."""

    base: float = 50e-6
    jitter: float = 50e-6


class SimTransport(asyncio.Transport):
    """One side of a simulated connection."""

    def __init__(self, network: SimNetwork, loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol,
                 conn_id: int, local: tuple[str, int], remote: tuple[str, int],
                 context: contextvars.Context) -> None:
        super().__init__()
        self._network = network
        self._loop = loop
        self._protocol = protocol
        #: the context of the host this side belongs to: what arrives here runs in it
        self.context = context
        self.host = context.get(current_host, WORLD_HOST)
        self.conn_id = conn_id
        self._local = local
        self._remote = remote
        self.peer: SimTransport | None = None
        self._closing = False
        self._lost = False
        self._reading = True
        self._held: list[bytes] = []  # delivered while reading was paused
        self._last_arrival = 0.0  # of what this side sent: the next send arrives no earlier

    # -- asyncio.Transport ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self._remote, "sockname": self._local}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None or not data:
            return
        self._send(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        held, self._held = self._held, []
        for data in held:
            self._loop.call_soon(self._arrive, data, context=self.context)

    def is_reading(self) -> bool:
        return self._reading

    def close(self) -> None:
        """Close after what was written arrives (both sides then lose the connection)."""
        if self._closing:
            return
        self._closing = True
        at = self._arrival_time()
        self._loop.call_at(at, self._network._ended, self, None, context=self.context)

    def abort(self) -> None:
        self._network.drop(self)

    # -- the network's side ------------------------------------------------------------

    def _arrival_time(self) -> float:
        at = max(self._loop.time() + self._network._delay(), self._last_arrival)
        self._last_arrival = at
        return at

    def _send(self, data: bytes) -> None:
        peer = self.peer
        assert peer is not None
        self._network.bytes_sent += len(data)
        self._loop.call_at(self._arrival_time(), peer._arrive, data, context=peer.context)

    def _arrive(self, data: bytes) -> None:
        if self._lost:
            return
        if not self._reading:
            self._held.append(data)
            return
        self._protocol.data_received(data)  # type: ignore[attr-defined]

    def _lose(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._protocol.connection_lost(exc)


class _ListeningSocket:
    """What a server's ``sockets`` list holds (aiohttp and websockets read
    the address a server listens on from it)."""

    family = 2  # AF_INET
    type = 1  # SOCK_STREAM

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address

    def getsockname(self) -> tuple[str, int]:
        return self._address

    def fileno(self) -> int:
        return -1


class SimServer:
    """A listening address; :meth:`close` stops new connections (open ones stay)."""

    def __init__(self, network: SimNetwork, address: tuple[str, int],
                 factory: Callable[[], asyncio.BaseProtocol], loop: asyncio.AbstractEventLoop) -> None:
        self.network = network
        self.address = address
        self.factory = factory
        self.loop = loop
        self.context = contextvars.copy_context()  # the listening host's: accepted sides run in it
        self.sockets: list[Any] = [_ListeningSocket(address)]

    def close(self) -> None:
        if self.network._servers.get(self.address) is self:
            del self.network._servers[self.address]

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()

    def is_serving(self) -> bool:
        return self.network._servers.get(self.address) is self

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class SimNetwork:
    """Every simulated connection of one world, with its seeded delays."""

    def __init__(self, seed: int = 0, latency: Latency = Latency()) -> None:
        self.random = random.Random(seed)
        self.latency = latency
        self._servers: dict[tuple[str, int], SimServer] = {}
        self._refused: set[tuple[str, int]] = set()
        self._isolated: set[str] = set()
        self._partitions: set[frozenset[str]] = set()
        self._ids = itertools.count(1)
        self._ports = itertools.count(40000)
        self.connections: dict[int, tuple[SimTransport, SimTransport]] = {}
        self.bytes_sent = 0

    def _delay(self) -> float:
        return self.latency.base + self.random.random() * self.latency.jitter

    def listen(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol], host: str,
               port: int) -> SimServer:
        """Listen on ``host:port`` (port 0: a free one, see the server's ``sockets``)."""
        if port == 0:
            port = next(self._ports)
        address = (host, port)
        if address in self._servers:
            raise OSError(f"address already in use: {host}:{port}")
        server = self._servers[address] = SimServer(self, address, factory, loop)
        return server

    async def connect(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol], host: str,
                      port: int) -> tuple[SimTransport, asyncio.BaseProtocol]:
        """A new connection to ``host:port`` after one network delay each
        way (the handshake); ``ConnectionRefusedError`` if nothing listens."""
        await asyncio.sleep(self._delay())
        me = current_host.get()
        server = self._servers.get((host, port))
        if me in self._isolated:
            raise ConnectionRefusedError(f"simulated: {me} is cut off from the network")
        if frozenset((me, host)) in self._partitions:
            raise ConnectionRefusedError(f"simulated: {me} is cut off from {host}")
        if server is None or (host, port) in self._refused:
            raise ConnectionRefusedError(f"simulated: nothing accepts connections on {host}:{port}")
        conn_id = next(self._ids)
        local = (me, next(self._ports))
        client_protocol = factory()
        server_protocol = server.context.run(server.factory) if server.context.get(current_host, WORLD_HOST) != me \
            else server.factory()
        client = SimTransport(self, loop, client_protocol, conn_id, local, (host, port), contextvars.copy_context())
        accepted = SimTransport(self, server.loop, server_protocol, conn_id, (host, port), local, server.context)
        client.peer, accepted.peer = accepted, client
        self.connections[conn_id] = (client, accepted)
        _on_host(accepted, server_protocol.connection_made, accepted)
        await asyncio.sleep(self._delay())
        if me in self._isolated or conn_id not in self.connections:
            raise ConnectionResetError("simulated: cut off while connecting")
        client_protocol.connection_made(client)
        return client, client_protocol

    def refuse(self, host: str, port: int) -> None:
        self._refused.add((host, port))

    def accept(self, host: str, port: int) -> None:
        self._refused.discard((host, port))

    def isolate(self, host: str) -> int:
        """Cut ``host`` off: every connection it opened is dropped and new
        ones are refused until :meth:`heal`. Returns the connections cut."""
        self._isolated.add(host)
        cut = [pair[0] for pair in self.connections.values() if pair[0].host == host]
        for transport in cut:
            self.drop(transport)
        return len(cut)

    def isolated(self, host: str) -> bool:
        return host in self._isolated

    def heal(self, host: str) -> None:
        """End ``host``'s isolation and every partition it is in."""
        self._isolated.discard(host)
        self._partitions = {p for p in self._partitions if host not in p}

    def partition(self, host: str, peer: str) -> int:
        """Cut ``host`` off from ``peer`` alone (a node from Redis, say; a
        host named as the code that runs on it, or as the address its
        servers listen on): connections between them dropped, new ones
        refused, until :meth:`heal` of either. Returns the connections cut."""
        pair = frozenset((host, peer))
        self._partitions.add(pair)
        cut = [sides[0] for sides in self.connections.values()
               if frozenset((sides[0].host, sides[1]._local[0])) == pair]
        for transport in cut:
            self.drop(transport)
        return len(cut)

    def drop(self, side: SimTransport) -> None:
        """Cut ``side``'s connection now: bytes in flight are lost, both
        protocols see ``ConnectionResetError``."""
        pair = self.connections.pop(side.conn_id, None)
        if pair is None:
            return
        for transport in pair:
            _on_host(transport, transport._lose, ConnectionResetError("simulated: connection dropped"))

    def opened_by(self, host: str) -> list[SimTransport]:
        """The open connections ``host`` opened (its side of each), oldest first."""
        return [pair[0] for _id, pair in sorted(self.connections.items()) if pair[0].host == host]

    def drop_all(self, host: str, port: int) -> int:
        """Cut every connection to ``host:port`` (a server that died); how many."""
        cut = [pair[0] for pair in self.connections.values() if pair[1]._local == (host, port)]
        for transport in cut:
            self.drop(transport)
        return len(cut)

    def _ended(self, side: SimTransport, exc: BaseException | None) -> None:
        """``side`` closed and what it wrote has arrived: both sides lose the connection."""
        pair = self.connections.pop(side.conn_id, None)
        if pair is None:
            return
        for transport in pair:
            _on_host(transport, transport._lose, exc)


def _on_host(side: SimTransport, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as code of ``side``'s host (directly when the caller
    already runs as that host)."""
    if current_host.get() == side.host:
        return fn(*args)
    return side.context.run(fn, *args)
