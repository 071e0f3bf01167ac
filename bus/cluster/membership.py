"""A node's view of the live nodes, built from heartbeats.

Pure bookkeeping with an explicit clock (``now`` in seconds of any
monotonic clock): no I/O, no threads. A node is live from its first
heartbeat until it says it left, or until ``ttl`` seconds (the ``ttl`` its
own heartbeat announced) pass without another one. The node that holds the
view counts itself live whatever it hears (it knows it runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.cluster.messages import NodeHeartbeat

__all__ = ["Member", "Membership"]


@dataclass(frozen=True, slots=True)
class Member:
    """What the last heartbeat of a node said, and when it came."""

    node: str
    capacity: float
    kinds: frozenset[str]
    draining: bool
    ttl: float
    last_seen: float

    @classmethod
    def from_heartbeat(cls, hb: NodeHeartbeat, now: float, default_ttl: float) -> Member:
        return cls(node=hb.node, capacity=max(0.0, hb.capacity), kinds=frozenset(hb.kinds), draining=hb.draining,
                   ttl=hb.ttl if hb.ttl > 0 else default_ttl, last_seen=now)

    def hosts(self, kind: str) -> bool:
        """Whether this member takes new actors of address kind ``kind``."""
        return not self.draining and kind in self.kinds and self.capacity > 0


@dataclass
class Membership:
    """The live nodes as one node sees them (``me`` is always live)."""

    me: Member
    default_ttl: float
    others: dict[str, Member] = field(default_factory=dict)

    def observe(self, hb: NodeHeartbeat, now: float) -> bool:
        """Record a heartbeat; True if it is from a node not live before."""
        if hb.node == self.me.node:
            return False
        joined = hb.node not in self.others
        self.others[hb.node] = Member.from_heartbeat(hb, now, self.default_ttl)
        return joined

    def left(self, node: str) -> bool:
        """The node said it left; True if it was live."""
        return self.others.pop(node, None) is not None

    def expire(self, now: float) -> list[str]:
        """Drop and return the nodes whose last heartbeat is older than
        their ttl."""
        dead = [n for n, m in self.others.items() if now - m.last_seen > m.ttl]
        for node in dead:
            del self.others[node]
        return sorted(dead)

    def update_me(self, me: Member) -> None:
        self.me = me

    def is_live(self, node: str) -> bool:
        return node == self.me.node or node in self.others

    @property
    def live(self) -> frozenset[str]:
        return frozenset(self.others) | {self.me.node}

    def members(self) -> list[Member]:
        return [self.me, *self.others.values()]

    def hosts_for(self, kind: str) -> dict[str, float]:
        """Live, non-draining nodes that can start address kind ``kind``,
        with their capacity (the input of placement)."""
        return {m.node: m.capacity for m in self.members() if m.hosts(kind)}
