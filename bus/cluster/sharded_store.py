"""The lease store and the backlog on a Redis Cluster.

On one server (or the primary behind Sentinel) every cluster script may
touch any key, and :class:`~bus.cluster.leases.LeaseStore` does a claim's
whole bookkeeping in one atomic step: the lease, the epoch, the node's
``held:`` set, the ``unowned`` set and the announcement on ``sys:nodes``.
On a Redis Cluster a script may touch the keys of one slot only. So here
each script is **about one address** and touches only that address's keys
(all hash-tagged with it: :mod:`bus.cluster.keys`), and it runs on the
shard that owns the address, atomically; what is about a node or the whole
fleet follows in commands of its own:

==========================  =================================================
atomic, in the address's    the lease compare-and-set, the epoch, the issued
slot                        epoch, the checkpoint and handled ids under the
                            lease compare, the backlog's append and drain
after it, in its own        ``held:<node>``, ``unowned``, ``members``, the
commands                    heartbeat key, the announcement on ``sys:nodes``
==========================  =================================================

What changes with that split, and why it stays safe:

- **Liveness is the lease itself.** On one server a claim also takes a
  lease whose holder's heartbeat key is gone; here a lease is free only
  once its own TTL ran out. A node renews its heartbeat and its leases in
  the same round (one pipeline) with the same TTL, so a dead node's leases
  go when its heartbeat does (a lease claimed after its last renewal, at
  most one TTL later). A node trusts a lease for less than its TTL counted
  from before it sent the claim or renewal, so no two nodes trust one lease.
- **Adoption waits for the leases.** Adopting a dead node marks its placed
  addresses whose lease is gone ``unowned``; one it still holds (claimed
  after its last renewal) stays on its ``held:`` set and the next sweep
  adopts it. Nothing deletes a lease another node may still trust.
- **Each slot knows its data set.** The era lives on one shard and says
  nothing of another that lost its data (or had a replica that missed the
  last claims promoted). Each slot keeps its own birth
  (``huddle:born:{<tag>}``, with the server's run id): claims there wait a
  lease TTL from it, and a renewal that finds a lease gone with its slot's
  data set reports it ``reset``, so its holder writes it back.
- **The sets are hints, repaired by the sweep.** ``unowned`` only says whom
  to try: activation is a claim, and the claim is atomic. A claim whose
  writes of them were lost (a node that died right after it, a shard down)
  loses nothing either: every renewal writes the node's whole ``held:`` set
  again and takes its leases out of ``unowned``.
- **The backlog mark is the backlog.** Instead of a ``backlogged:<node>``
  set, each renewal of a lease says whether its backlog holds envelopes,
  and the owner drains it (fenced by its lease, as on one server).
- **Announcements are published after the claim**, on ``sys:nodes`` (a
  shard channel in its own slot). Their order with other shards' messages
  is not defined on a cluster: a receiver learns a new owner from its
  announcement or from its first envelope, whichever comes first, and
  refuses the former owner's envelopes from then on; envelopes of a former
  owner that arrive before both are accepted. What keeps that window
  closed is the lease margin: a former owner stops before its lease can
  run out. The fencing log (``--fencing-log``) is kept per address,
  ``fencing:{<address>}``.
- **A dead shard costs only its own leases.** The store speaks to each
  primary on a client of its own (:class:`~bus.shard_client.ShardClient`),
  every shard's part of a batch at once with a deadline of its own. A
  renewal waits a quarter of the lease TTL for each shard: one that does not
  answer (its primary died, its replica not yet promoted) has its leases
  reported ``unanswered`` (not renewed as far as anyone knows), and every
  other shard's leases are renewed as usual. (With redis-py's cluster
  client one dead primary stalled or failed the commands sent to the others
  meanwhile, and a node lost every lease it held.) A lease whose slot moved
  is renewed on its new owner in the same renewal (``MOVED``: the slot map
  is read again and the call sent there).

Scripts run as ``EVALSHA`` with the address's lease key as their one
declared key, the calls of a batch grouped per primary, one pipeline each;
a primary that answers ``NOSCRIPT`` (a promoted replica that never loaded
them) gets them loaded and the calls again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bus.cluster.backlog import Backlog, RouteResult
from bus.cluster.leases import (
    _ANNOUNCED_AS,
    RELEASE_MODES,
    SEEN_PER_ADDRESS,
    SEEN_TTL,
    SETTLE,
    CheckpointWrite,
    ClaimResult,
    HandledIds,
    LeaseStore,
    ReleaseMode,
    RenewResult,
    _claim_result,
    _lease_value,
    _ms,
    _text,
    seen_args,
    window_ids,
)
from bus.cluster.keys import born_key, born_keys
from bus.cluster.lua import script
from bus.cluster.messages import LeaseChange
from bus.shard_client import ShardClient

__all__ = ["ShardedBacklog", "ShardedLeaseStore", "backlog_for", "lease_store_for"]

# ARGV: prefix, me, ttl_ms, address, floor, spec, born key (in a's slot). Like
# the one-server CLAIM for one address, minus the node bookkeeping (the
# caller's, after); the data set's age is the slot's (its shard's).
CLAIM_ONE = script(r"""
local me, ttl, a, floor, spec = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local wait = unsettled_ms(ARGV[7], ttl)
if wait > 0 then return {0, '', '0', wait} end
local cur = redis.call('GET', lease_key(a))
local ce, holder = parse_lease(cur)
if cur and holder ~= me then return {0, holder, estr(ce)} end
return take_lease(a, me, ttl, floor, spec)
""")

# ARGV: prefix, me, ttl_ms, address, epoch, born key (in a's slot) -> {1, '',
# backlog waiting} or {0, lease now, 1 when the slot's data set is new since
# the claim (its shard lost it: the lease may be written back)}
RENEW_ONE = script(r"""
local me, ttl, a, e = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local v = redis.call('GET', lease_key(a))
if v ~= e .. ' ' .. me then return {0, v or '', (not v and not same_data_set(ARGV[6])) and 1 or 0} end
redis.call('PEXPIRE', lease_key(a), ttl)
return {1, '', redis.call('EXISTS', backlog_key(a))}
""")

# ARGV: prefix, address, me, epoch, mode, spec, checkpoint, seen_ttl_ms, seen_keep, msg ids...
# -> {released, placed}
RELEASE_ONE = script(r"""
local a = ARGV[2]
if not drop_lease(a, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], 10, #ARGV - 9, ARGV[8], ARGV[9]) then
  return {0, 0}
end
return {1, redis.call('EXISTS', spec_key(a))}
""")

# ARGV: prefix, address, me, epoch, ttl_ms, spec, checkpoint, seen_ttl_ms, seen_keep, msg ids...
RESTORE_ONE = script(r"""
return restore_lease(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], 10, #ARGV - 9)
  == 'taken' and 0 or 1
""")

# ARGV: prefix, me, log, seen_ttl_ms, seen_keep, address, epoch, has_data, data, note, seen mode, after, n,
# msg ids...
SAVE_ONE = script(r"""
local a = ARGV[6]
local log_key = ARGV[3] == '1' and (P .. 'fencing:{' .. a .. '}') or nil
return save_write(a, ARGV[2], ARGV[7], ARGV[8], ARGV[9], log_key, '10000', ARGV[10], ARGV[11], ARGV[12], 14,
                  tonumber(ARGV[13]), ARGV[4], ARGV[5])
""")

# ARGV: prefix, address, dead node -> 'held' (its lease still lives),
# 'placed' (free, with a spec: to be activated), 'gone' or 'moved'
ADOPT_ONE = script(r"""
local a, dead = ARGV[2], ARGV[3]
local e, holder = parse_lease(redis.call('GET', lease_key(a)))
if holder == dead then return 'held' end
if holder ~= nil then return 'moved' end
if redis.call('EXISTS', spec_key(a)) == 1 then return 'placed' end
redis.call('PEXPIRE', issued_key(a), ISSUED_GRACE_MS)
return 'gone'
""")

# ARGV: prefix, address, me, msg_id, data, cap -> {outcome, holder, epoch}:
# 'self', 'holder' (the caller publishes on its node channel), 'full' or
# 'backlogged'. With ARGV[7] == '1' it appends whoever holds the lease.
ROUTE_ONE = script(r"""
local a, me = ARGV[2], ARGV[3]
local e, holder = parse_lease(redis.call('GET', lease_key(a)))
if ARGV[7] ~= '1' and holder ~= nil then
  if holder == me then return {'self', me, estr(e)} end
  return {'holder', holder, estr(e)}
end
local bk = backlog_key(a)
if redis.call('XLEN', bk) >= tonumber(ARGV[6]) then return {'full', holder or '', estr(e or 0)} end
redis.call('XADD', bk, '*', 'm', ARGV[4], 'e', ARGV[5])
return {'backlogged', holder or '', estr(e or 0)}
""")

# ARGV: prefix, address, spec -> {holder, epoch} ('' when placed now)
PLACE_ONE = script(r"""
local a = ARGV[2]
local e, holder = parse_lease(redis.call('GET', lease_key(a)))
if holder ~= nil then return {holder, estr(e)} end
redis.call('SET', spec_key(a), ARGV[3])
return {'', '0'}
""")


#: The share of the lease TTL a renewal waits for each shard's answer. A
#: shard that takes longer (its primary died: redis-py retries until the
#: replica is promoted) counts as unanswered, so the next renewal of every
#: other shard is not held up behind it.
RENEW_ANSWER_WITHIN = 0.25
#: The share of the lease TTL a claim waits for its shard's answer (within
#: the TTL its caller gives the whole claim: the shards that answered keep
#: their claims when one does not).
CLAIM_ANSWER_WITHIN = 0.5
#: A claim whose shard did not answer.
_UNANSWERED = ClaimResult(won=False, holder="", epoch=0, unanswered=True)


class ShardedLeaseStore(LeaseStore):
    """:class:`~bus.cluster.leases.LeaseStore` on a Redis Cluster (see the
    module docstring for what is atomic where). Same methods, same results."""

    def __init__(self, client: ShardClient, **options: Any) -> None:
        super().__init__(client, **options)  # type: ignore[arg-type]
        self._scripts = client
        #: the era the last renewal read (used when the era's shard is down)
        self._era: str | None = None
        self._claim_one = client.register_script(CLAIM_ONE)
        self._settle_one = client.register_script(SETTLE)
        self._renew_one = client.register_script(RENEW_ONE)
        self._release_one = client.register_script(RELEASE_ONE)
        self._restore_one = client.register_script(RESTORE_ONE)
        self._save_one = client.register_script(SAVE_ONE)
        self._adopt_one = client.register_script(ADOPT_ONE)

    async def _publish(self, *announcements: bytes) -> None:
        if announcements:
            await self._scripts.commands(*(("SPUBLISH", self.channel, a) for a in announcements))

    async def prepare(self) -> None:
        """As on one server, on every primary."""
        await self._scripts.load_scripts(self._claim_one, self._renew_one)

    async def assume_settled(self) -> None:
        """As on one server, in every slot (each has its own birth)."""
        await self._scripts.run(self._settle_one, [(k, (self.keys.prefix, k)) for k in born_keys()])

    async def claim_many(self, claims: Sequence[tuple[str, int, bytes | None]], node: str, *,
                         ttl: float) -> list[ClaimResult]:
        if not claims:
            return []
        if not await self.client.exists(self.keys.node(node)):  # not a live member yet
            return [ClaimResult(won=False, holder="", epoch=0) for _ in claims]
        prefix, ms = self.keys.prefix, _ms(ttl)
        replies = await self._scripts.run(self._claim_one, [
            (self.keys.lease(a), (prefix, node, ms, a, floor, spec or b"", born_key(a))) for a, floor, spec in claims],
            timeout=ttl * CLAIM_ANSWER_WITHIN, raise_on_error=False)
        errors = [r for r in replies if isinstance(r, Exception)]
        if len(errors) == len(replies):
            raise errors[0]  # nothing answered
        # A shard that did not answer costs its own claims only.
        results = [_UNANSWERED if isinstance(r, Exception) else _claim_result(r) for r in replies]
        won = [a for (a, _f, _s), r in zip(claims, results, strict=True) if r.won]
        if won:
            # Hints after the fact: the leases are won whatever becomes of
            # these (a shard down now): the next renewal writes the held set
            # and clears the unowned entries again, and a receiver that
            # missed the announcement learns the owner from its envelopes.
            await self._scripts.batch([
                ("SADD", self.keys.members, node), ("SADD", self.keys.held(node), *won),
                ("SREM", self.keys.unowned, *won),
                *(("SPUBLISH", self.channel, self._announcement(LeaseChange(address=a, node=node, change="acquired")))
                  for a in won)], timeout=ttl * RENEW_ANSWER_WITHIN)
        return results

    async def renew(self, node: str, *, ttl: float, node_body: bytes, heartbeat: bytes, new_era: str,
                    leases: Mapping[str, int]) -> RenewResult:
        """As on one server, but each shard on its own: the heartbeat and
        every shard's leases go out at once, each shard in one round trip,
        and a shard that does not answer (its primary died, its replica not
        promoted yet) costs only its own leases, reported ``unanswered``
        (nothing is known of them), never the others'. Raises only when no
        part answered."""
        ms = _ms(ttl)
        keys = self.keys
        within = ttl * RENEW_ANSWER_WITHIN
        order = list(leases.items())
        heartbeat_part, lease_part = await asyncio.gather(
            self._scripts.batch([("SET", keys.node(node), node_body, "PX", ms), ("SADD", keys.members, node),
                                 ("SET", keys.era, new_era, "NX"), ("GET", keys.era),
                                 ("SPUBLISH", self.channel, heartbeat)], timeout=within),
            self._scripts.run(self._renew_one, [(keys.lease(a), (keys.prefix, node, ms, a, str(e), born_key(a)))
                                                for a, e in order],
                              timeout=within, raise_on_error=False))
        failures = [r for r in (*heartbeat_part, *lease_part) if isinstance(r, Exception)]
        if order and len([r for r in lease_part if isinstance(r, Exception)]) == len(order) \
                and any(isinstance(r, Exception) for r in heartbeat_part):
            raise failures[0]  # nothing answered
        era_reply = heartbeat_part[3]
        if isinstance(era_reply, Exception):
            if self._era is None or not order:
                raise era_reply
            era = self._era  # the era's shard is down: the leases answered all the same
        else:
            era = self._era = _text(era_reply)
        lost: dict[str, tuple[str, int] | None] = {}
        backlogged: list[str] = []
        kept: list[str] = []
        unanswered: list[str] = []
        reset: list[str] = []
        for (address, _epoch), reply in zip(order, lease_part, strict=True):
            if isinstance(reply, Exception):  # its shard down or slow, or its slot moving
                unanswered.append(address)
                continue
            ok, now, flag = reply
            if int(ok):
                kept.append(address)
                if int(flag):
                    backlogged.append(address)
            else:
                lost[address] = _lease_value(now)
                if int(flag):
                    reset.append(address)
        # The held set again, whole, and none of them unowned (a claim whose
        # own writes of these were lost is repaired from here on).
        hints: list[tuple[Any, ...]] = []
        if kept:
            hints += [("SADD", keys.held(node), *kept), ("SREM", keys.unowned, *kept)]
        if lost:
            hints.append(("SREM", keys.held(node), *lost))
        if hints and not failures and not unanswered:
            # Not while a shard is down: the cluster client would stall on
            # it; the next renewal that every shard answers writes them.
            await self._scripts.batch(hints, timeout=within)
        return RenewResult(era=era, lost=lost, backlogged=tuple(backlogged), unanswered=tuple(unanswered),
                           reset=tuple(reset))

    async def release(self, address: str, node: str, epoch: int, *, mode: ReleaseMode = "plain",
                      spec: bytes | None = None, checkpoint: bytes | None = None,
                      seen: Sequence[str] | HandledIds | None = None, seen_ttl: float = SEEN_TTL) -> bool:
        if mode not in RELEASE_MODES:
            raise ValueError(f"release mode must be one of {RELEASE_MODES}, got {mode!r}")
        [(released, placed)] = await self._scripts.run(self._release_one, [
            (self.keys.lease(address), (self.keys.prefix, address, node, str(epoch), mode, spec or b"",
                                        checkpoint or b"", _ms(seen_ttl), SEEN_PER_ADDRESS, *window_ids(seen)))])
        if not int(released):
            return False
        commands: list[tuple[Any, ...]] = [("SREM", self.keys.held(node), address)]
        if mode == "unowned" and int(placed):
            commands.append(("SADD", self.keys.unowned, address))
        elif mode == "retire":
            commands.append(("SREM", self.keys.unowned, address))
        await self._scripts.commands(*commands)
        await self._publish(self._announcement(LeaseChange(address=address, node=node, change=_ANNOUNCED_AS[mode],
                                                           epoch=epoch)))
        return True

    async def restore(self, address: str, node: str, epoch: int, *, ttl: float, spec: bytes | None = None,
                      checkpoint: bytes | None = None, seen: Sequence[str] | HandledIds | None = None,
                      seen_ttl: float = SEEN_TTL) -> bool:
        [ok] = await self._scripts.run(self._restore_one, [
            (self.keys.lease(address), (self.keys.prefix, address, node, str(epoch), _ms(ttl), spec or b"",
                                        checkpoint or b"", _ms(seen_ttl), SEEN_PER_ADDRESS,
                                        *window_ids(seen)))])
        if not int(ok):
            return False
        await self._scripts.commands(("SADD", self.keys.held(node), address), ("SADD", self.keys.members, node))
        await self._publish(self._announcement(LeaseChange(address=address, node=node, change="restored",
                                                           epoch=epoch)))
        return True

    async def save_checkpoints(self, writes: Sequence[CheckpointWrite], node: str, *, log: bool = False,
                               seen_ttl: float = SEEN_TTL) -> list[int]:
        prefix, flag, ms = self.keys.prefix, "1" if log else "0", _ms(seen_ttl)
        replies = await self._scripts.run(self._save_one, [
            (self.keys.lease(w.address), (prefix, node, flag, ms, SEEN_PER_ADDRESS, w.address, str(w.epoch),
                                          "0" if w.data is None else "1", w.data or b"", w.note,
                                          *seen_args(w.seen)))
            for w in writes])
        return [int(x) for x in replies]

    async def issued(self, addresses: list[str]) -> dict[str, tuple[int, str, bool]]:
        keys = self.keys
        values = await self._scripts.commands(*(("MGET", keys.issued(a), keys.lease(a)) for a in addresses))
        out: dict[str, tuple[int, str, bool]] = {}
        for address, (raw_issued, raw_lease) in zip(addresses, values, strict=True):
            issued, lease = _lease_value(raw_issued), _lease_value(raw_lease)
            out[address] = (0, "", False) if issued is None else (issued[1], issued[0], lease == issued)
        return out

    async def adopt(self, dead: str) -> list[str] | None:
        if await self.client.exists(self.keys.node(dead)):
            return None
        placed, _still_held = await self._take_over(dead, forget=True)
        return placed

    async def leftovers(self, me: str) -> tuple[list[str], int]:
        return await self._take_over(me, forget=False)

    async def _take_over(self, node: str, *, forget: bool) -> tuple[list[str], int]:
        """The addresses listed as held by ``node``: lapsed ones with a spec
        marked unowned (returned), those held by others unlisted, those
        ``node`` still holds left (counted). With ``forget``, a node of which
        nothing lives any more is no member either."""
        keys = self.keys
        held = sorted(_text(a) for a in await self.client.smembers(keys.held(node)))
        outcomes = [_text(o) for o in await self._scripts.run(self._adopt_one, [
            (keys.lease(a), (keys.prefix, a, node)) for a in held])]
        placed = [a for a, o in zip(held, outcomes, strict=True) if o == "placed"]
        done = [a for a, o in zip(held, outcomes, strict=True) if o != "held"]
        commands: list[tuple[Any, ...]] = []
        if placed:
            commands.append(("SADD", keys.unowned, *placed))
        if done:
            commands.append(("SREM", keys.held(node), *done))
        if forget and len(done) == len(held):  # nothing of it lives any more: forget the node
            commands += [("DEL", keys.held(node)), ("DEL", keys.backlogged(node)), ("SREM", keys.members, node)]
        if commands:
            await self._scripts.commands(*commands)
        return placed, len(held) - len(done)

    async def leave(self, node: str) -> None:
        await self.client.delete(self.keys.node(node))
        if not await self.client.scard(self.keys.held(node)):
            await self.client.srem(self.keys.members, node)

    async def members(self) -> dict[str, bytes]:
        ids = await self.member_ids()
        if not ids:
            return {}
        bodies = await self._scripts.commands(*(("GET", self.keys.node(n)) for n in ids))
        return {n: bytes(b) for n, b in zip(ids, bodies, strict=True) if b is not None}

    async def fencing_log(self, count: int | None = None, *,
                          addresses: Iterable[str] | None = None) -> list[dict[str, str]]:
        """The accepted checkpoint writes of ``addresses`` (a cluster keeps
        one log per address: there is no whole log to read), each address's
        in the order it accepted them."""
        if addresses is None:
            raise ValueError("on a Redis Cluster the fencing log is per address: name the addresses")
        out: list[dict[str, str]] = []
        for address in addresses:
            entries = await self.client.xrange(self.keys.fencing_of(address), count=count)
            out += [{_text(k): _text(v) for k, v in fields.items()} for _id, fields in entries]
        return out


class ShardedBacklog(Backlog):
    """:class:`~bus.cluster.backlog.Backlog` on a Redis Cluster. The route
    decision is one script in the address's slot; the publish on the
    holder's node channel is a command of its own (that channel lives in
    another slot), and an envelope it reached nobody with is appended by a
    second script: the holder drains it when its next renewal says its
    backlog holds envelopes, or the next claim takes it."""

    def __init__(self, client: ShardClient, **options: Any) -> None:
        super().__init__(client, **options)  # type: ignore[arg-type]
        self._scripts = client
        self._route_one = client.register_script(ROUTE_ONE)
        self._place_one = client.register_script(PLACE_ONE)

    async def route(self, address: str, data: bytes, msg_id: str, *, me: str, append: bool = False) -> RouteResult:
        key, prefix = self.keys.lease(address), self.keys.prefix
        [reply] = await self._scripts.run(self._route_one, [(key, (prefix, address, me, msg_id, data, self.cap,
                                                                  "1" if append else "0"))])
        outcome, holder, epoch = _text(reply[0]), _text(reply[1]), int(reply[2])
        if outcome != "holder":
            return RouteResult(outcome=outcome, holder=holder, epoch=epoch)
        [count] = await self._scripts.commands(("SPUBLISH", self._node_channels + holder, data))
        if int(count) > 0:
            return RouteResult(outcome="published", holder=holder, epoch=epoch)
        [reply] = await self._scripts.run(self._route_one, [(key, (prefix, address, me, msg_id, data, self.cap, "1"))])
        return RouteResult(outcome=_text(reply[0]), holder=_text(reply[1]), epoch=int(reply[2]))

    async def drain(self, address: str, *, me: str, epoch: int) -> list[bytes] | None:
        [reply] = await self._scripts.run(self._drain, [(self.keys.lease(address),
                                                          (self.keys.prefix, address, me, str(epoch)))])
        if not int(reply[0]):
            return None
        return [bytes(x) for x in reply[1:]]

    async def place(self, address: str, spec: bytes) -> tuple[str, int] | None:
        [(holder, epoch)] = await self._scripts.run(self._place_one, [(self.keys.lease(address),
                                                                       (self.keys.prefix, address, spec))])
        holder = _text(holder)
        if holder:
            return holder, int(epoch)
        await self.client.sadd(self.keys.unowned, address)
        return None


def lease_store_for(client: Any, **options: Any) -> LeaseStore:
    """The lease store on ``client``: sharded on a Redis Cluster client."""
    return ShardedLeaseStore(client, **options) if isinstance(client, ShardClient) else LeaseStore(client, **options)


def backlog_for(client: Any, **options: Any) -> Backlog:
    """The backlog on ``client``: sharded on a Redis Cluster client."""
    return ShardedBacklog(client, **options) if isinstance(client, ShardClient) else Backlog(client, **options)
