"""What the cluster says on ``sys:nodes``, and the requests nodes take.

``sys:nodes`` carries, in Redis order, every node's heartbeat and every
change of a lease. Lease changes are published *by the Lua script that
makes them*, in the same atomic step, so a node that reads the channel sees
a new owner's claim before any message Redis handles after that claim (see
:mod:`bus.cluster.leases`). The node encodes (and, with a cluster key,
signs) the announcement beforehand and the script publishes those bytes
unchanged, so a claim's announcement carries no epoch (the script draws it):
receivers ask the lease store which epoch was issued (:mod:`actors.runtime.fencing`).
An announcement is a cue to look, never proof of an epoch.

Monitors may decode everything here: nothing on this channel is secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.messages import Message, message_kind

__all__ = [
    "DrainNode",
    "LeaseChange",
    "NodeHeartbeat",
    "NodeLeft",
]

@message_kind("cluster.heartbeat")
@dataclass(frozen=True, slots=True)
class NodeHeartbeat(Message):
    """A live node, every ``interval`` seconds. It counts as gone after
    ``ttl`` seconds without one. ``kinds`` are the address kinds it can
    start by itself (its actor factories); ``capacity`` weighs placement;
    a ``draining`` node takes nothing new."""

    node: str
    capacity: float = 1.0
    kinds: list[str] = field(default_factory=list)
    draining: bool = False
    actors: int = 0
    leases: int = 0
    interval: float = 0.0
    ttl: float = 0.0
    ts: float = 0.0


@message_kind("cluster.lease")
@dataclass(frozen=True, slots=True)
class LeaseChange(Message):
    """A lease changed hands. ``change`` is one of

    ``acquired``  ``node`` holds ``address`` from now on (``epoch`` 0: the
                  claim script drew it; the lease store says which);
    ``restored``  the same, re-written after Redis lost its data;
    ``released``  ``node`` gave it up and nobody needs to take it over;
    ``unowned``   nobody holds it, and it is placed: the live node that
                  ranks first for it should activate it;
    ``retired``   the placed actor stopped for good (its spec is gone).

    A receiver trusts none of it alone: an epoch moves a fencing floor
    only once the lease store confirms it was issued.
    """

    address: str
    node: str
    change: str
    epoch: int = 0


@message_kind("cluster.left")
@dataclass(frozen=True, slots=True)
class NodeLeft(Message):
    """A node left cleanly: its leases are released, it sends no more
    heartbeats."""

    node: str


@message_kind("cluster.drain")
@dataclass(frozen=True, slots=True)
class DrainNode(Message):
    """Ask a node (at ``node:<id>/cluster``) to hand every actor it hosts to
    the nodes that rank first without it, then leave. Answered with the
    number of actors it is handing off."""

