"""An asyncio client for applications: ask, tell and listen on the bus.

Meeting bots and voice agents are asyncio programs. They reach a huddle
fleet through this client instead of writing an actor and blocking on
futures::

    from actors.client import connect
    from bus.messages import Ping

    async with connect("redis://127.0.0.1:6379/0") as client:
        pong = await client.ask("echo:1", Ping(n=1))
        await client.tell("meeting:m-1", Subscribe(address=client.address))
        async for envelope in client.events(client.address):
            print(envelope.message)

The client is a node of its own (its own connection to Redis, its own loop
thread), so nothing the application's loop does can stall the bus, and
nothing on the bus runs on the application's loop: answers and deliveries
are handed over to it. ``client.address`` (``app:<id>`` unless given) is
where what is told to the application arrives; ``events(address)`` listens
there, or on a system channel (``sys:events``, ``sys:nodes``...). With
``cluster=True`` the client joins the fleet's cluster as a member that
hosts nothing placed, so that messages for its address find it by its
lease (and wait in its backlog meanwhile), as the demo's application does.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from actors.cluster import Cluster, ClusterConfig
from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.node import Node
from actors.runtime.tracing import Tracing, active_trace, default_tracing, in_trace
from bus.address import parse_address
from bus.envelope import Codec, Envelope
from bus.errors import HuddleError
from bus.messages import Message
from bus.sharded import transport_for
from bus.signing import cluster_signer

__all__ = ["Client", "Events", "connect"]

CONNECT_TIMEOUT_S = 10.0


class Events:
    """What is delivered at one address or system channel, as an async
    iterator of envelopes (in the order they arrived). Ends when the client
    closes or :meth:`close` is called."""

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop, close: Any, node: Node | None = None) -> None:
        self._node = node
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._close = close
        self._closed = False

    def deliver(self, envelope: Envelope) -> None:
        """From the client's node (any thread)."""
        if not self._closed and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, envelope)

    async def ready(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Until the bus confirms the subscription this listens on (what is
        sent before may not be heard)."""
        if self._node is not None and not await asyncio.to_thread(self._node.transport.wait_subscribed, timeout):
            raise HuddleError("the bus did not confirm the subscription in time")

    def close(self) -> None:
        """Stop listening; the iteration ends."""
        if not self._closed:
            self._close()
            self._end()

    def _end(self) -> None:
        """End the iteration (the client closed: nothing left to stop)."""
        self._closed = True
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, self._END)

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> Envelope:
        item = await self._queue.get()
        if item is self._END:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]


class _Inbox(HuddleActor):
    """The application's address on the client's node: hands every message
    to the :class:`Events` listening there."""

    def __init__(self, ctx: ActorContext, events: Events) -> None:
        super().__init__(ctx)
        self.events = events

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        self.events.deliver(envelope)
        return None


class Client:
    """A connection of an asyncio application to the bus (see :func:`connect`)."""

    def __init__(self, node: Node, address: str, cluster: Cluster | None = None) -> None:
        self.node = node
        self.address = address
        self.cluster = cluster
        self._events: list[Events] = []

    async def ask(self, address: str, message: Message, timeout: float = 5.0) -> Any:
        """Send ``message`` to ``address`` and return its answer (the reply
        message, or the value a handler returned). Raises what the node's
        ask does: ``AskTimeout``, ``RemoteError``, a ``DeliveryError``.
        Inside an active OpenTelemetry span, the ask (and what handling it
        sends, across nodes) is in that span's trace."""
        with in_trace(active_trace()):
            future = self.node.ask(address, message, timeout=timeout)
        return await future

    async def tell(self, address: str, message: Message) -> None:
        """Send ``message`` to ``address``, from :attr:`address` (in the
        active OpenTelemetry span's trace, if any)."""
        with in_trace(active_trace()):
            self.node.tell(address, message, sender=self.address)

    def events(self, address: str | None = None) -> Events:
        """What is delivered at ``address`` (default: :attr:`address`): the
        client's own address, or a system channel (``sys:events``...)."""
        address = address or self.address
        loop = asyncio.get_running_loop()
        if parse_address(address).kind == "sys":
            events = Events(loop, lambda: None, self.node)
            self.node.handle_system_channel(address, events.deliver)
        elif address == self.address:
            events = Events(loop, lambda: self.node.stop_actor(address, release=True), self.node)
            self.node.spawn(address, _Inbox, events)
        else:
            raise HuddleError(f"{address!r}: a client listens at its own address or on a sys: channel")
        self._events.append(events)
        return events

    def _close_events(self) -> None:
        for events in self._events:
            events._end()
        self._events.clear()


@asynccontextmanager
async def connect(redis_url: str | None = None, *, address: str | None = None, namespace: str = "",
                  cluster_key_file: str | None = None, cluster: bool = False,
                  cluster_config: ClusterConfig | None = None,
                  tracing: Tracing | None = None) -> AsyncIterator[Client]:
    """A :class:`Client` on ``redis_url`` (default ``$REDIS_URL``), closed
    on leaving the block. Envelopes are signed with the cluster key of
    ``cluster_key_file`` (default ``$HUDDLE_CLUSTER_KEY``; neither: not
    signed). With ``cluster``, the client joins the fleet's cluster as a
    member that hosts nothing placed (``cluster_config``: its timings).
    ``tracing``: default, OpenTelemetry spans if the application installed
    the SDK's tracer provider, else the W3C trace field alone (see
    :mod:`actors.runtime.tracing`)."""
    url = redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise HuddleError("connect() needs a bus: pass redis_url or set REDIS_URL")
    node_id = f"client-{uuid.uuid4().hex[:8]}"
    codec = Codec(signer=cluster_signer(cluster_key_file))
    node = Node(transport_for(url, name=node_id), node_id=node_id, namespace=namespace, codec=codec,
                tracing=tracing or default_tracing())
    joined: Cluster | None = None
    if cluster:
        joined = Cluster(node, url, config=cluster_config or ClusterConfig(capacity=0.0))
    await asyncio.to_thread(node.start)
    client = Client(node, address or f"app:{node_id}", joined)
    try:
        if joined is not None and not await asyncio.to_thread(joined.start, CONNECT_TIMEOUT_S):
            raise HuddleError(f"{node_id} could not join the cluster on {namespace or 'the bus'}")
        if not await asyncio.to_thread(node.transport.wait_subscribed, CONNECT_TIMEOUT_S):
            raise HuddleError(f"{node_id} could not subscribe on the bus")
        yield client
    finally:
        client._close_events()
        await asyncio.to_thread(node.shutdown)
