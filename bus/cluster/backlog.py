"""The durable backlog: messages for an address with no live owner.

Pub/sub drops a message published on a channel nobody listens to, and
``PUBLISH``'s receiver count cannot tell the owner from a monitor or a tap
listening on the same channel. So "is there an owner?" is answered from the
lease, not from the count, and the answer and the delivery are one atomic
step in Redis.

How a cluster node sends an envelope to address X
--------------------------------------------------
1. **Fast path.** Its lease cache (filled by the lease announcements on
   ``sys:nodes`` and by the replies below) names a holder of X whose
   heartbeats still arrive: ``PUBLISH`` on X's channel, batched and
   pipelined like every other send.
2. **Routed.** No cached live holder (unknown address, holder gone, or a
   routed send to X still in flight, so that order is kept): the
   :data:`ROUTE` script decides inside Redis. If a live node holds X's
   lease, it publishes the envelope on that node's own channel
   ``node:<id>`` (only the node listens there; taps must not). If that
   reaches nobody, or nobody live holds the lease, the envelope is appended
   to X's stream ``backlog:{X}`` (bounded: past ``cap`` entries the script
   refuses, and the sender publishes a ``backlog-full`` dead letter).
3. **Fast path that reached nobody.** A ``PUBLISH`` with receiver count 0
   (the holder unsubscribed, left or died) is routed as in 2.

Activation drains the backlog exactly once. The claim script takes the
lease and reads-and-deletes X's backlog in one atomic step; from then on
``ROUTE`` sees a live holder and never appends to the backlog for it, so
every backlog entry is handed to exactly one claim. One exception keeps
that true: a holder whose heartbeat key still exists but whose connection
is gone gets its messages appended *and* its address marked in
``backlogged:<node>``; if the holder is alive after all, its next heartbeat
returns that mark and it drains the stream itself (:data:`DRAIN`, fenced
by its lease), otherwise the next owner's claim does. The same envelope can
still be routed twice (a command retried after its reply was lost; a
former owner forwarding what it had buffered while a copy reached the new
owner directly), so the owner drops envelopes whose ``msg_id`` it has
already delivered.

The race: the owner dies between the sender's lookup and the publish
----------------------------------------------------------------------
- Routed sends have no window: lookup and delivery are one script.
- A fast-path ``PUBLISH`` that Redis handles after it noticed the owner's
  connection closed (``kill -9`` closes it; Redis notices within its next
  event-loop turn) reaches nobody: the count is 0, the sender routes it,
  ``ROUTE`` finds the dead owner's heartbeat key still there, its
  ``node:<id>`` channel empty, and appends the envelope to the backlog.
  When the heartbeat key expires, the survivors adopt the address, and the
  claim of its new owner delivers the envelope once.
- A ``PUBLISH`` that Redis handles *before* it noticed (the instant of the
  death itself; for a host cut off by the network, until TCP gives up) is
  written to a socket nobody reads, and is lost, like any pub/sub message
  in flight to a process that dies. If the process was only paused
  (SIGSTOP) or the partition heals on the same connection, it reads those
  messages later, finds its lease gone and forwards them (``ROUTE``).
- The window we do not close: while a **tap or monitor subscribes to X's
  channel**, a fast-path ``PUBLISH`` to a dead owner still counts one
  receiver, so nobody routes it, and it is lost. This lasts from the
  owner's death until its missed heartbeats are noticed (at most one lease
  TTL); after that, senders route X through the script. Closing it would
  need acknowledgements from owners (or sending everything through the
  owners' node channels, which taps cannot watch).
- An envelope that reached the owner's socket before it died is lost with
  the rest of its memory since its last checkpoint: the actor's crash
  semantics, not the bus's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bus.address import channel_for
from bus.cluster.keys import ClusterKeys
from bus.cluster.lua import script

__all__ = ["DEFAULT_BACKLOG_CAP", "Backlog", "RouteResult"]

DEFAULT_BACKLOG_CAP = 10_000
"""Envelopes one address's backlog holds before it refuses more."""

# ARGV: prefix, address, me, msg_id, data, cap, node channel prefix
ROUTE = script(r"""
local a, me = ARGV[2], ARGV[3]
local e, holder = parse_lease(redis.call('GET', lease_key(a)))
local live = holder ~= nil and alive(holder)
if live and ARGV[8] ~= '1' then
  if holder == me then return {'self', me, estr(e)} end
  if redis.call('PUBLISH', ARGV[7] .. holder, ARGV[5]) > 0 then return {'published', holder, estr(e)} end
end
local bk = backlog_key(a)
if redis.call('XLEN', bk) >= tonumber(ARGV[6]) then return {'full', holder or '', estr(e or 0)} end
redis.call('XADD', bk, '*', 'm', ARGV[4], 'e', ARGV[5])
if live then
  redis.call('SADD', backlogged_key(holder), a)
  return {'backlogged', holder, estr(e)}
end
return {'backlogged', '', '0'}
""")

# ARGV: prefix, address, me, epoch
DRAIN = script(r"""
local a, me, e = ARGV[2], ARGV[3], ARGV[4]
if redis.call('GET', lease_key(a)) ~= e .. ' ' .. me then return {0} end
return take_backlog(a, {1})
""")

# ARGV: prefix, address, spec
PLACE = script(r"""
local a = ARGV[2]
local e, holder = parse_lease(redis.call('GET', lease_key(a)))
if holder ~= nil and alive(holder) then return {holder, estr(e)} end
redis.call('SET', spec_key(a), ARGV[3])
redis.call('SADD', UNOWNED, a)
return {'', '0'}
""")


@dataclass(frozen=True, slots=True)
class RouteResult:
    """What :meth:`Backlog.route` did with an envelope.

    ``outcome``: ``published`` (on ``holder``'s node channel),
    ``backlogged`` (appended; ``holder`` is a live holder that will drain
    it, or ``""``), ``full`` (refused: the backlog is at its cap) or
    ``self`` (we hold the lease ourselves: nothing was done).
    """

    outcome: str
    holder: str
    epoch: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Backlog:
    """The backlog scripts on an asyncio Redis client."""

    def __init__(self, client: aioredis.Redis, *, namespace: str = "", cap: int = DEFAULT_BACKLOG_CAP) -> None:
        if cap < 1:
            raise ValueError("the backlog cap must be at least 1")
        self.client = client
        self.namespace = namespace
        self.keys = ClusterKeys(namespace)
        self.cap = cap
        # channel_for(node_address(id), namespace) == this prefix + id
        self._node_channels = channel_for("node:", namespace)
        self._route = client.register_script(ROUTE)
        self._drain = client.register_script(DRAIN)
        self._place = client.register_script(PLACE)

    async def route(self, address: str, data: bytes, msg_id: str, *, me: str, append: bool = False) -> RouteResult:
        """Deliver the encoded envelope ``data`` for ``address`` to its live
        holder's node channel, or append it to the backlog (see the module
        docstring). ``me`` is the calling node: its own leases are never
        routed to (``self``). With ``append`` it goes to the backlog
        whoever holds the lease (for the next owner: a lease ``me`` holds
        without hosting the address, a previous process's of this node id)."""
        reply = await self._route(args=[self.keys.prefix, address, me, msg_id, data, self.cap, self._node_channels,
                                        "1" if append else "0"])
        return RouteResult(outcome=_text(reply[0]), holder=_text(reply[1]), epoch=int(reply[2]))

    async def drain(self, address: str, *, me: str, epoch: int) -> list[bytes] | None:
        """Take every envelope waiting for ``address`` (oldest first) if
        ``(me, epoch)`` holds its lease; None if it does not."""
        reply = await self._drain(args=[self.keys.prefix, address, me, str(epoch)])
        if not int(reply[0]):
            return None
        return [bytes(x) for x in reply[1:]]

    async def place(self, address: str, spec: bytes) -> tuple[str, int] | None:
        """Register ``address`` as placed with start arguments ``spec`` and
        waiting for an owner, unless a live node holds it already (then
        that ``(node, epoch)``)."""
        holder, epoch = await self._place(args=[self.keys.prefix, address, spec])
        holder = _text(holder)
        return (holder, int(epoch)) if holder else None

    async def length(self, address: str) -> int:
        return int(await self.client.xlen(self.keys.backlog(address)))
