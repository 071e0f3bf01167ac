"""Where an address lives: weighted rendezvous (highest random weight) hashing.

Every node computes, for an address and each live node, a score from a
hash of ``(node, address)`` and the node's capacity; the node with the
highest score hosts the address. Nothing is stored and nobody coordinates:
nodes that agree on who is live agree on every placement. The properties
that matter (tested in ``tests/bus/cluster/test_placement.py``):

- deterministic: the same inputs give the same ranking, in every process
  (the hash is BLAKE2b, never Python's salted ``hash``);
- minimal disruption: when a node leaves, only the addresses it hosted move
  (to the node that ranked second for each); when one joins, an address
  moves only to the newcomer;
- weighted: a node of capacity ``w`` gets about ``w / sum(w)`` of the
  addresses. The score is ``-w / ln(u)`` with ``u`` uniform in (0, 1)
  from the hash, for which ``P(node i ranks first) = w_i / sum(w)``
  exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

__all__ = ["owner_of", "ranking", "score"]

_SCALE = float(1 << 64)


def score(node: str, address: str, capacity: float) -> float:
    """The rendezvous score of ``node`` for ``address`` (higher wins)."""
    if capacity <= 0:
        return -math.inf
    digest = hashlib.blake2b(f"{node}\x00{address}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / _SCALE  # in (0, 1), never 0 or 1
    return -capacity / math.log(u)


def ranking(address: str, nodes: Mapping[str, float]) -> list[str]:
    """The nodes (id -> capacity) in placement order for ``address``: the
    first hosts it, the second takes over if the first goes. Nodes with no
    capacity are left out. Ties (equal scores) are broken by node id."""
    scored = [(score(node, address, cap), node) for node, cap in nodes.items() if cap > 0]
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [node for _, node in scored]


def owner_of(address: str, nodes: Mapping[str, float]) -> str | None:
    """The node that ranks first for ``address``, or None if there is none."""
    best: tuple[float, str] | None = None
    for node, cap in nodes.items():
        if cap <= 0:
            continue
        s = score(node, address, cap)
        if best is None or s > best[0] or (s == best[0] and node < best[1]):
            best = (s, node)
    return None if best is None else best[1]
