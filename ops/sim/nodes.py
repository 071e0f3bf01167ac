"""huddle nodes inside a simulated world: their real code on its loop.

A :class:`SimHost` is one node process of the world: a
:class:`~actors.runtime.node.Node` built as ``huddle node`` builds one (its
Redis transport, its loop dispatcher, its clock, and with
:meth:`SimHost.join_cluster` its cluster shell and renewal lane), except
that the loop is the world's (the node's I/O loop adopts it: no thread),
the clock is the world's virtual time (:class:`~ops.sim.clock.SimClock`)
and its connections go through the world's network to the world's Redis.
Everything the host's code schedules runs as that host
(:data:`~ops.sim.network.current_host`), so the world can stop it
(:meth:`SimHost.pause`: nothing of it runs, its connections stay open and
fill up, as under ``SIGSTOP``), wake it (:meth:`SimHost.resume`) or kill
it (:meth:`SimHost.kill`: stopped for good, its connections reset, as
under ``kill -9``).

Code inside the world never blocks: it awaits (an ``ask`` is a future to
await; a blocking ``get`` on the loop raises the runtime's typed error).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from typing import Any, TypeVar

from actors.cluster.machine import ClusterConfig
from actors.cluster.shell import ActorFactories, Cluster
from actors.runtime.io import IoLoop
from actors.runtime.node import Node
from bus.address import channel_for
from bus.redis_transport import RedisTransport
from ops.sim.clock import SimClock
from ops.sim.network import current_host
from ops.sim.world import World

__all__ = ["SimHost", "listening"]

T = TypeVar("T")


class SimHost:
    """One node of ``world`` (not started: :meth:`start` it inside the world)."""

    def __init__(self, world: World, node_id: str, *, host: str | None = None, **node_options: Any) -> None:
        """``host``: the process's name in the world (default the node id;
        a node restarted after a kill is a new process with the same id)."""
        self.world = world
        self.node_id = node_id
        self.name = host or node_id
        self.context = contextvars.copy_context()
        self.context.run(current_host.set, self.name)
        self.clock = SimClock(world.loop, world.wall() - world.now())
        self.node: Node = self.run(self._make_node, node_options)
        self.cluster: Cluster | None = None
        self.killed = False

    def _make_node(self, options: dict[str, Any]) -> Node:
        io = IoLoop(f"huddle-io-{self.name}", loop=self.world.loop)
        transport = RedisTransport(self.world.redis.url, name=self.name,
                                   rng=random.Random(f"{self.world.seed}:{self.name}"))
        return Node(transport, node_id=self.node_id, io=io, clock=self.clock, **options)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` as this host's code (what it schedules stays its)."""
        return self.context.run(fn, *args, **kwargs)

    def start(self) -> Node:
        return self.run(self.node.start)

    def join_cluster(self, config: ClusterConfig | None = None, factories: ActorFactories | None = None) -> Cluster:
        """Make the node a cluster member (await ``cluster.wait_joined``)."""
        def make() -> Cluster:
            cluster = Cluster(self.node, self.world.redis.url, config=config, factories=factories)
            cluster.start()
            return cluster

        self.cluster = self.run(make)
        return self.cluster

    def pause(self) -> None:
        """Nothing of this host runs until :meth:`resume`; its connections
        stay open (what is sent to it waits)."""
        self.world.loop.freeze(self.name)

    def resume(self) -> None:
        if not self.killed:
            self.world.loop.thaw(self.name)

    def kill(self) -> None:
        """As ``kill -9``: nothing of it runs again, its connections reset."""
        self.killed = True
        self.world.loop.freeze(self.name)
        self.world.network.isolate(self.name)


async def listening(node: Node, *addresses: str) -> bool:
    """Once the node's transport has the server's word that it listens on
    ``addresses`` (True), or has closed first (False)."""
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    transport = node.transport
    assert isinstance(transport, RedisTransport)
    transport.when_subscribed([channel_for(a, node.namespace) for a in addresses],
                              lambda ok: done.done() or done.set_result(ok))
    return await done
