"""Ownership: the seam a cluster plugs into a node.

On one process every address a node hosts is simply its own. In a cluster
an address has one owner at a time, held by a lease, and that owner can
change (a failover, a hand-off, a drain). A node may be given an
:class:`Ownership` (``actors.cluster`` provides the one that keeps leases in
Redis). It is consulted where ownership matters and nowhere else: whether
an actor may still send (its lease is valid) and receive, where a send to
another node goes (a live owner's channel, or the durable backlog), what
happens to a send that reached no subscriber or a message for an address
not hosted here (forwarded, not dead-lettered), whether a spawn must first
claim a lease, and what an exit releases. Without one, the node behaves as
a single process with no leases.

A message an actor may no longer handle (its lease is lost) is forwarded
to the next owner instead; the handler run then "returns"
:data:`FORWARDED`, and nobody answers it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from actors.runtime.actor import HuddleActor
    from bus.envelope import Envelope

__all__ = ["FORWARDED", "Ownership"]


class _Forwarded:
    """What a handler run "returns" for a message that was forwarded to the
    address's new owner instead of handled: nobody answers it here."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARDED"


FORWARDED = _Forwarded()


class Ownership(Protocol):
    """Who owns which address, for a node in a cluster.

    Every method is called on the thread that hit the situation (an actor's
    pool thread, the node's I/O loop thread for bytes read from Redis and
    timers) and must return at once; the slow work (Redis) happens on the
    node's I/O loop. See the module docstring.
    """

    def may_send(self, sender: str, epoch: int) -> bool:
        """False if ``sender`` is hosted here under a lease that is lost or
        has expired by the local clock (its sends are refused)."""

    def may_deliver(self, address: str) -> bool:
        """False if the actor at ``address`` must not handle another
        message (its lease is lost): messages are forwarded instead."""

    def first_delivery(self, env: Envelope) -> bool:
        """False if an envelope with this ``msg_id`` was already delivered
        here (a retried or forwarded copy)."""

    def route(self, to: str, data: bytes) -> bool:
        """A send to ``to``, not hosted here. True if the ownership took
        care of it (routed through Redis); False: publish it on ``to``'s
        channel as usual."""

    def unrouted(self, env: Envelope, data: bytes) -> bool:
        """A publish reached no subscriber. True if it was taken care of;
        False: it is a ``no-subscriber`` dead letter."""

    def stray(self, env: Envelope) -> bool:
        """A message for an address this node does not host (or hosts under
        a lost lease). True if forwarded; False: a dead letter."""

    def spawn(self, address: str, actor_class: type[HuddleActor], args: tuple[Any, ...],
              kwargs: dict[str, Any], parent: str | None) -> int | None:
        """A spawn at ``address``: the epoch to start it under now, or None
        if the ownership starts it later (after claiming the lease, with
        :meth:`~actors.runtime.node.Node.start_actor`)."""

    def exited(self, address: str, crashed: bool, supervised: bool) -> bool:
        """The actor at ``address`` stopped. True if the ownership releases
        the address: the node keeps buffering its messages until
        :meth:`~actors.runtime.node.Node.hand_back` (the ownership then forwards them)."""

    def close(self, timeout: float) -> None:
        """The node shuts down: hand off or release everything, leave."""
