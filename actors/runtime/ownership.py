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
:data:`FORWARDED`, and nobody answers it here. While the lease is only in
doubt (its validity ran out on the local clock before the renewal's answer
came), the actor waits instead: the message goes back to the head of its
mailbox, and nothing is handled until the lease is confirmed or lost.
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

    def must_wait(self, address: str) -> bool:
        """Asked when :meth:`may_deliver` said no: True if the lease is
        still this node's and only its validity is in doubt (the local
        clock ran past it before a renewal's answer came). The actor then
        puts the message back and handles nothing until the ownership
        resumes it (``node.resume(address)``), once the lease is confirmed
        (it goes on, in order) or lost (its messages go to the next owner)."""

    def waiting(self, address: str) -> None:
        """The actor at ``address`` now waits (see :meth:`must_wait`)."""

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
