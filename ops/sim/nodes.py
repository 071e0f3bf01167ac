"""huddle nodes inside a simulated world: their real code on its loop.

:func:`sim_node` builds a :class:`~actors.runtime.node.Node` as a node
process does (its Redis transport, its dispatcher on its loop, its clock),
except that the loop is the world's (no thread: the node's I/O loop
adopts it), the clock is the world's virtual time
(:class:`~ops.sim.clock.SimClock`) and its connections go through the
world's network to the world's Redis. Code that runs inside the world
never blocks: it awaits (a node's ``ask`` is a future to await; a
blocking ``get`` on the loop raises the runtime's typed error).
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.runtime.io import IoLoop
from actors.runtime.node import Node
from bus.address import channel_for
from bus.redis_transport import RedisTransport
from ops.sim.clock import SimClock
from ops.sim.world import World

__all__ = ["listening", "sim_node"]


def sim_node(world: World, node_id: str, **options: Any) -> Node:
    """A node of ``world`` (not started: ``start()`` it inside the world)."""
    io = IoLoop(f"huddle-io-{node_id}", loop=world.loop)
    transport = RedisTransport(world.redis.url, name=node_id)
    return Node(transport, node_id=node_id, io=io, clock=SimClock(world.loop, world.wall() - world.now()),
                **options)


async def listening(node: Node, *addresses: str) -> bool:
    """Once the node's transport has the server's word that it listens on
    ``addresses`` (True), or has closed first (False)."""
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    transport = node.transport
    assert isinstance(transport, RedisTransport)
    transport.when_subscribed([channel_for(a, node.namespace) for a in addresses],
                              lambda ok: done.done() or done.set_result(ok))
    return await done
