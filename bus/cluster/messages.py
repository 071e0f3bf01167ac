"""What the cluster says on ``sys:nodes``, and the requests nodes take.

``sys:nodes`` carries, in Redis order, every node's heartbeat and every
change of a lease. Lease changes are published *by the Lua script that
makes them*, in the same atomic step, so a node that reads the channel sees
a new owner's claim before any message Redis handles after that claim (see
:mod:`bus.cluster.leases`). A script cannot run our encoder, so the node
encodes the announcement beforehand with a placeholder epoch and the script
writes the epoch it drew into the last eight bytes (:func:`epoch_template`).

Monitors may decode everything here: nothing on this channel is secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.envelope import Codec, Envelope
from bus.messages import Message, message_kind

__all__ = [
    "EPOCH_PLACEHOLDER",
    "DrainNode",
    "LeaseChange",
    "NodeHeartbeat",
    "NodeLeft",
    "epoch_template",
]

#: Encodes as msgpack uint64 (0xcf + 8 bytes), whatever epoch replaces it.
EPOCH_PLACEHOLDER = (1 << 64) - 1
_PLACEHOLDER_TAIL = b"\xcf" + EPOCH_PLACEHOLDER.to_bytes(8, "big")


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

    ``acquired``  ``node`` holds ``address`` from now on, under ``epoch``;
    ``restored``  the same, re-written after Redis lost its data;
    ``released``  ``node`` gave it up and nobody needs to take it over;
    ``unowned``   nobody holds it, and it is placed: the live node that
                  ranks first for it should activate it;
    ``retired``   the placed actor stopped for good (its spec is gone).

    ``epoch`` must stay the last field: scripts patch it in place.
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


def epoch_template(codec: Codec, channel_address: str, change: LeaseChange) -> bytes:
    """The encoded announcement of ``change`` whose last eight bytes are the
    big-endian epoch, for a script to overwrite."""
    data = codec.encode(Envelope(to=channel_address, message=_with_placeholder(change)))
    if not data.endswith(_PLACEHOLDER_TAIL):  # pragma: no cover - a programming error
        raise RuntimeError("LeaseChange.epoch is not the last field on the wire")
    return data


def _with_placeholder(change: LeaseChange) -> LeaseChange:
    return LeaseChange(address=change.address, node=change.node, change=change.change, epoch=EPOCH_PLACEHOLDER)
