"""Where the cluster keeps its state in Redis.

Every key starts with ``<namespace>huddle:`` so that several clusters can
share one Redis (the same namespace prefixes their channels). The Lua
scripts get that prefix as their first argument and build the per-address
and per-node keys themselves, so the names below are the one place both
sides agree on (``tests/bus_io/cluster`` checks them against the scripts):

===========================  ================================================
``lease:<address>``          ``"<epoch> <node>"``, with a TTL (PX)
``epoch``                    the counter every epoch is drawn from (INCR)
``node:<node>``              a live node's heartbeat body, TTL = lease TTL
``members``                  set of node ids that ever held a lease
``held:<node>``              set of addresses whose lease the node holds
``spec:<address>``           msgpack start arguments of a *placed* address
``unowned``                  set of placed addresses waiting for an owner
``ckpt:<address>``           the actor's last checkpoint (msgpack)
``issued:<address>``         ``"<epoch> <node>"``: the newest epoch ever issued
                             for the address (fencing verifies against it)
``seen:<address>``           msgpack list of the msg ids the address's actor
                             handled last, written with its checkpoint
``backlog:<address>``        stream of envelopes waiting for an owner
``backlogged:<node>``        addresses whose backlog a live owner must drain
``era``                      random id; a new one means Redis lost its data
``fencing``                  stream of accepted checkpoint writes (optional)
===========================  ================================================

A single Redis server is assumed (the scripts touch keys they build
themselves); moving to Redis Cluster means hash-tagging the per-address
keys and splitting the per-node scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClusterKeys"]


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Key names for one namespace."""

    namespace: str = ""

    @property
    def prefix(self) -> str:
        return f"{self.namespace}huddle:"

    def lease(self, address: str) -> str:
        return f"{self.prefix}lease:{address}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    @property
    def members(self) -> str:
        return f"{self.prefix}members"

    def held(self, node_id: str) -> str:
        return f"{self.prefix}held:{node_id}"

    def spec(self, address: str) -> str:
        return f"{self.prefix}spec:{address}"

    @property
    def unowned(self) -> str:
        return f"{self.prefix}unowned"

    def issued(self, address: str) -> str:
        return f"{self.prefix}issued:{address}"

    def seen(self, address: str) -> str:
        return f"{self.prefix}seen:{address}"

    def checkpoint(self, address: str) -> str:
        return f"{self.prefix}ckpt:{address}"

    def backlog(self, address: str) -> str:
        return f"{self.prefix}backlog:{address}"

    def backlogged(self, node_id: str) -> str:
        return f"{self.prefix}backlogged:{node_id}"

    @property
    def era(self) -> str:
        return f"{self.prefix}era"

    @property
    def fencing(self) -> str:
        return f"{self.prefix}fencing"
