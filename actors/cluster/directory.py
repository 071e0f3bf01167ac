"""The directory: which node holds which address, as this node last heard.

Two questions a cluster answers are kept apart, as Orleans keeps its
grain directory apart from activation: *where does an address live?*
(this module: a cache, used to send a message straight to the owner's
channel instead of through the routing script) and *which epochs may
act?* (fencing, :mod:`actors.runtime.fencing`: epoch floors raised only to epochs
the lease store issued). The directory may be wrong (a stale entry costs a
send that reaches nobody, which is then routed through the script and
corrects the entry); fencing may not. So nothing written here raises a
floor, and the shell raises floors itself, only from a script's answer.

Entries keep the newest epoch heard: an answer about an older epoch never
replaces a newer one, and a "lost" announcement forgets an entry only up
to the epoch it names. That epoch is remembered as ended (for the most
recent :data:`ENDED_KEPT` addresses): an answer naming it that arrives
after the announcement (a look-up the store answered before the release,
read after it) is not learned again. An owner whose node is not live
counts as unknown. The node's loop only, like the rest of the shell.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ENDED_KEPT", "Directory"]

#: Addresses whose last ended epoch is kept (the newest; a late answer
#: comes within moments of the announcement, not after this many others).
ENDED_KEPT = 65_536


class Directory:
    """Owner of each address this node heard of, with its epoch."""

    __slots__ = ("_ended", "_owners", "is_live")

    def __init__(self, me: str, is_live: Callable[[str], bool] | None = None) -> None:
        self._owners: dict[str, tuple[str, int]] = {}
        #: address -> the newest epoch announced as ended there (bounded, oldest dropped first)
        self._ended: OrderedDict[str, int] = OrderedDict()
        #: whether the cluster core counts a node as live (its membership view)
        self.is_live: Callable[[str], bool] = is_live or (lambda node: node == me)

    def entry(self, address: str) -> tuple[str, int] | None:
        """``(node, epoch)`` last heard for ``address``, live or not."""
        return self._owners.get(address)

    def owner(self, address: str) -> str | None:
        """The node that holds ``address``, if known and live."""
        entry = self._owners.get(address)
        return entry[0] if entry is not None and self.is_live(entry[0]) else None

    def learn(self, address: str, node: str, epoch: int) -> None:
        """``node`` holds ``address`` under ``epoch`` (kept unless a newer
        epoch is known)."""
        if self._ended and epoch <= self._ended.get(address, 0):
            return  # announced as ended: this answer is older than the announcement
        current = self._owners.get(address)
        if current is None or epoch >= current[1]:
            self._owners[address] = (node, epoch)

    def clear(self) -> None:
        """Forget every entry (Redis lost its data: they may all be gone)."""
        self._owners.clear()
        self._ended.clear()

    def forget(self, address: str, up_to: int | None = None) -> None:
        """Drop the entry for ``address`` (only if its epoch is at most
        ``up_to``, when given; that epoch is then remembered as ended)."""
        current = self._owners.get(address)
        if current is not None and (up_to is None or current[1] <= up_to):
            del self._owners[address]
        if up_to:
            ended = self._ended
            if up_to > ended.get(address, 0):
                ended[address] = up_to
                ended.move_to_end(address)
                if len(ended) > ENDED_KEPT:
                    ended.popitem(last=False)
