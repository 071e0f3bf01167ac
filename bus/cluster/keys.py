"""Where the cluster keeps its state in Redis.

Every key starts with ``<namespace>huddle:`` so that several clusters can
share one Redis (the same namespace prefixes their channels). The Lua
scripts get that prefix as their first argument and build the per-address
and per-node keys themselves, so the names below are the one place both
sides agree on (``tests/bus_io/cluster`` checks them against the scripts):

===========================  ================================================
``lease:{<address>}``        ``"<epoch> <node>"``, with a TTL (PX)
``node:<node>``              a live node's heartbeat body, TTL = lease TTL
``members``                  set of node ids that ever held a lease
``held:<node>``              set of addresses whose lease the node holds
``spec:{<address>}``         msgpack start arguments of a *placed* address
``unowned``                  set of placed addresses waiting for an owner
``ckpt:{<address>}``         the actor's last checkpoint (msgpack)
``issued:{<address>}``       ``"<epoch> <node>"``: the newest epoch ever issued
                             for the address (fencing verifies against it)
``handled:{<address>}``      list of the msg ids the address's actor handled
                             last (the newest 256), written with its
                             checkpoint: appended a few at a time, TTL
``seen:{<address>}``         the same ids as a former version wrote them (one
                             msgpack list): read when no list is there
``backlog:{<address>}``      stream of envelopes waiting for an owner
``backlogged:<node>``        addresses whose backlog a live owner must drain
``era``                      random id; a new one means Redis lost its data
``fencing``                  stream of accepted checkpoint writes (optional;
                             on a Redis Cluster one per address,
                             ``fencing:{<address>}``)
===========================  ================================================

One key is the server's, outside every namespace: ``huddle:born``,
``"<server microseconds> <run_id>"``, when the data set began: where there
is none, the server's start (``INFO``'s uptime), or on a promoted replica
(``INFO``'s ``master_replid2`` set: its primary may have died before the
key reached it) the first script that sees it; where another run wrote it
(a restart from its data, a promoted replica), the first script that sees
it. Claims wait until it is a lease TTL old (``unsettled_ms`` in
:mod:`bus.cluster.lua`). On a Redis
Cluster there is one per slot, ``huddle:born:{<tag>}`` with a tag that
hashes to the slot (:func:`born_key`), so each shard keeps its own.

Every per-address key carries the address as its hash tag (``{...}``): on
a Redis Cluster all of an address's keys live in the one slot the address
hashes to, so a script that reads and writes them (claim, renew, release,
checkpoint, route) runs on the shard that owns the address, atomically. On
one server the braces are only characters. The per-node keys and the two
sets (``members``, ``unowned``) live wherever their own names hash; on a
cluster the store writes them in commands of their own
(:mod:`bus.cluster.sharded_store`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis.crc import key_slot

__all__ = ["BORN", "ClusterKeys", "born_key", "born_keys"]

#: the data set's birth on one server (see the module notes)
BORN = "huddle:born"


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each of the 16,384 slots a short tag that hashes to it."""
    tags: list[str | None] = [None] * 16384
    missing, i = 16384, 0
    while missing:
        tag = format(i, "x")
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        i += 1
    return tuple(t or "" for t in tags)


def born_key(address: str) -> str:
    """The data set's birth on a Redis Cluster, in the slot of ``address``."""
    return f"{BORN}:{{{_slot_tags()[key_slot(address.encode())]}}}"


def born_keys() -> list[str]:
    """Every slot's :func:`born_key`."""
    return [f"{BORN}:{{{tag}}}" for tag in _slot_tags()]


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Key names for one namespace."""

    namespace: str = ""

    @property
    def prefix(self) -> str:
        return f"{self.namespace}huddle:"

    def _of(self, kind: str, address: str) -> str:
        return f"{self.prefix}{kind}:{{{address}}}"

    def lease(self, address: str) -> str:
        return self._of("lease", address)

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    @property
    def members(self) -> str:
        return f"{self.prefix}members"

    def held(self, node_id: str) -> str:
        return f"{self.prefix}held:{node_id}"

    def spec(self, address: str) -> str:
        return self._of("spec", address)

    @property
    def unowned(self) -> str:
        return f"{self.prefix}unowned"

    def issued(self, address: str) -> str:
        return self._of("issued", address)

    def handled(self, address: str) -> str:
        return self._of("handled", address)

    def seen(self, address: str) -> str:
        return self._of("seen", address)

    def checkpoint(self, address: str) -> str:
        return self._of("ckpt", address)

    def backlog(self, address: str) -> str:
        return self._of("backlog", address)

    def backlogged(self, node_id: str) -> str:
        return f"{self.prefix}backlogged:{node_id}"

    @property
    def era(self) -> str:
        return f"{self.prefix}era"

    @property
    def fencing(self) -> str:
        return f"{self.prefix}fencing"

    def fencing_of(self, address: str) -> str:
        """On a Redis Cluster: the fencing log of one address."""
        return self._of("fencing", address)