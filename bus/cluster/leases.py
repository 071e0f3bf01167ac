"""Ownership leases with fencing, as Redis scripts.

Every live address has a lease, ``lease:{address} = "<epoch> <node>"`` with
a TTL. Whoever wants to host an address *claims* it; the claim succeeds when
nobody holds the lease or its holder is no longer a live node (its
``node:<id>`` heartbeat key, which has the same TTL as its leases, is gone).
A successful claim draws a new **epoch** for the address: one above the
newest issued for it, raised to the server clock in microseconds and to the
claimer's floor, so an epoch is larger than every epoch drawn before it for
that address, even after Redis lost its data or a promoted replica missed
the last claims.

The epoch is the fencing token:

- an actor's envelopes carry it; a receiver refuses an envelope whose epoch
  is older than the newest it has seen from that address (``stale-epoch``);
- its checkpoints are written by :data:`SAVE_CHECKPOINTS`, which compares
  the epoch with the lease in the same atomic step, so a write from a
  former owner is refused once the lease moved (or lapsed);
- the claim script records the epoch as the newest **issued** for the
  address (``issued:{address}``, kept past the lease): a receiver raises
  its floor only to an epoch found there (:mod:`actors.runtime.fencing`), so an
  envelope that merely claims a high epoch moves nothing;
- the claim script publishes the new owner's :class:`LeaseChange` on
  ``sys:nodes`` *inside the same script*. Redis runs a script atomically
  and delivers pub/sub messages to each subscriber connection in the order
  it processed them, so every node reads "X changed hands" before any
  message Redis handled after the claim; it then holds X's envelopes, asks
  the store for the issued epoch and raises its floor to it: a former
  owner's envelope that reaches Redis after the claim is refused by every
  receiver that listens to ``sys:nodes`` (all cluster nodes do), even one
  that never heard from the new owner. The announcement is encoded (and
  signed, with a cluster key) by the claiming node and published unchanged,
  so it carries no epoch: the script draws it.

A node renews *all* its leases in one round trip, the same script that
writes its heartbeat (:data:`RENEW`), and learns which leases it lost.
Locally it counts a lease valid until ``sent + ttl * (1 - margin)``,
measured from *before* it sent the renewal, so it stops trusting a lease
before Redis can hand it to someone else: a node paused past its lease
(SIGSTOP, a long GC) wakes up with every lease already expired in its own
eyes and stops those actors before it handles another message.

Scripts return plain values; :class:`LeaseStore` turns them into typed
results. Everything here is asyncio (the node's I/O loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis

from bus.address import SYS_NODES, channel_for
from bus.cluster.keys import BORN, ClusterKeys
from bus.cluster.lua import script
from bus.cluster.messages import LeaseChange
from bus.envelope import Codec, Envelope

__all__ = [
    "CheckpointWrite",
    "ClaimResult",
    "HandledIds",
    "LeaseStore",
    "NO_LEASE",
    "REFUSED",
    "RESEND_SEEN",
    "ReleaseMode",
    "RenewResult",
    "SEEN_PER_ADDRESS",
    "WRITTEN",
]

ReleaseMode = str
"""``"plain"`` (nobody needs to take over), ``"unowned"`` (placed: the
node that ranks first should activate it) or ``"retire"`` (placed, but
stopped for good: its spec and checkpoint are deleted)."""

RELEASE_MODES = ("plain", "unowned", "retire")
_ANNOUNCED_AS = {"plain": "released", "unowned": "unowned", "retire": "retired"}

# ARGV: prefix, me, ttl_ms, channel, then per address: address, floor, announcement, spec
# One reply per address, in order: {won, holder, epoch} when refused
# ({0, '', '0', ms} while the data set is younger than a TTL: unsettled_ms);
# {1, me, epoch, checkpoint, spec, seen, backlog...} when won.
CLAIM = script(r"""
local me, ttl, channel = ARGV[2], ARGV[3], ARGV[4]
local replies = {}
if not alive(me) then
  for i = 5, #ARGV, 4 do replies[#replies + 1] = {0, '', '0'} end
  return replies
end
local wait = unsettled_ms(BORN, ttl)
if wait > 0 then
  for i = 5, #ARGV, 4 do replies[#replies + 1] = {0, '', '0', wait} end
  return replies
end
redis.call('SADD', MEMBERS, me)
for i = 5, #ARGV, 4 do
  local a, floor, announcement, spec = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local cur = redis.call('GET', lease_key(a))
  local ce, holder = parse_lease(cur)
  if cur and holder ~= me and alive(holder) then
    replies[#replies + 1] = {0, holder, estr(ce)}
  else
    if cur then redis.call('SREM', held_key(holder), a) end
    redis.call('SADD', held_key(me), a)
    redis.call('SREM', UNOWNED, a)
    redis.call('PUBLISH', channel, announcement)
    replies[#replies + 1] = take_lease(a, me, ttl, floor, spec)
  end
end
return replies
""")

# ARGV: prefix, me, ttl_ms, node_body, channel, heartbeat, new_era, (address, epoch)...
RENEW = script(r"""
local me, ttl = ARGV[2], ARGV[3]
redis.call('SET', node_key(me), ARGV[4], 'PX', ttl)
redis.call('SADD', MEMBERS, me)
-- Another run's birth (a restart from its data, a promoted replica) is
-- noticed here, a heartbeat after it: claims wait from then, not from the
-- first claim after it.
unsettled_ms(BORN, ttl)
local era = redis.call('GET', ERA)
if not era then
  era = ARGV[7]
  redis.call('SET', ERA, era)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
local lost, kept = {}, {}
for i = 8, #ARGV, 2 do
  local a, e = ARGV[i], ARGV[i + 1]
  local k = lease_key(a)
  local v = redis.call('GET', k)
  if v == e .. ' ' .. me then
    redis.call('PEXPIRE', k, ttl)
    kept[a] = true
  else
    lost[#lost + 1] = a
    lost[#lost + 1] = v or ''
  end
end
-- A waiting backlog is news for whoever holds its lease (by epoch): a
-- second process under this node id must not take it and let it drop.
local bl = {}
for _, a in ipairs(redis.call('SMEMBERS', backlogged_key(me))) do
  if kept[a] then
    bl[#bl + 1] = a
    redis.call('SREM', backlogged_key(me), a)
  else
    local _, holder = parse_lease(redis.call('GET', lease_key(a)))
    -- nobody holds it, or another node does: its claim drains the backlog
    if holder ~= me then redis.call('SREM', backlogged_key(me), a) end
  end
end
return {era, lost, bl}
""")

# ARGV: prefix, address, me, epoch, mode, channel, announcement, spec, checkpoint, seen_ttl_ms, seen_keep,
# then the msg ids the checkpoint includes (the whole window, oldest first)
RELEASE = script(r"""
local a, me, e, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not drop_lease(a, me, e, mode, ARGV[8], ARGV[9], 12, #ARGV - 11, ARGV[10], ARGV[11]) then return 0 end
redis.call('SREM', held_key(me), a)
if mode == 'unowned' and redis.call('EXISTS', spec_key(a)) == 1 then
  redis.call('SADD', UNOWNED, a)
elseif mode == 'retire' then
  redis.call('SREM', UNOWNED, a)
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
""")

# ARGV: prefix, address, me, epoch, ttl_ms, channel, announcement, spec, checkpoint, seen_ttl_ms, seen_keep,
# then the msg ids handled (the whole window, oldest first)
RESTORE = script(r"""
local a, me, e = ARGV[2], ARGV[3], ARGV[4]
local done = restore_lease(a, me, e, ARGV[5], ARGV[8], ARGV[9], ARGV[10], ARGV[11], 12, #ARGV - 11)
if done ~= 'restored' then return done == 'ours' and 1 or 0 end
redis.call('SADD', held_key(me), a)
redis.call('SADD', MEMBERS, me)
-- Sent while nobody held it: ours to drain (reported by the next renewal).
if redis.call('EXISTS', backlog_key(a)) == 1 then redis.call('SADD', backlogged_key(me), a) end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
""")

# ARGV: prefix, me, log (1/0), seen_ttl_ms, seen_keep, then per write: address,
# epoch, has_data (1/0), data, note, seen mode ('' none, 'r' replace, 'a'
# append), after, n, then n msg ids. Returns save_write's verdict per write.
SAVE_CHECKPOINTS = script(r"""
local me, log_key, seen_ttl, keep = ARGV[2], ARGV[3] == '1' and FENCING or nil, ARGV[4], ARGV[5]
local out = {}
local i = 6
while i <= #ARGV do
  local n = tonumber(ARGV[i + 7])
  out[#out + 1] = save_write(ARGV[i], me, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], log_key, '1000000', ARGV[i + 4],
                             ARGV[i + 5], ARGV[i + 6], i + 8, n, seen_ttl, keep)
  i = i + 8 + n
end
return out
""")

# ARGV: prefix, born key. The data set's birth moved back to the epoch:
# claims go through at once (LeaseStore.assume_settled).
SETTLE = script(r"""
redis.call('SET', ARGV[2], '0 ' .. server_run())
return 1
""")

#: A checkpoint write's verdicts (:meth:`LeaseStore.save_checkpoints`).
#: ``RESEND_SEEN``: written, but the handled ids were an append that did
#: not follow on the list Redis holds (it lapsed, Redis lost it, or a
#: retry's reply got lost as well): they were added to the list all the
#: same (the state beside them includes their messages), and the writer
#: sends the whole window.
WRITTEN, REFUSED, NO_LEASE, RESEND_SEEN = 1, 0, -1, 2

#: Seconds the handled msg ids of an address stay in Redis after their last
#: write. Copies of a message arrive within seconds of it; this only lets
#: the key of an address that nobody hosts any more go.
SEEN_TTL = 3600.0

#: The msg ids of an address's actor kept in Redis (its newest): a copy of
#: an older one is handled again after an owner change.
SEEN_PER_ADDRESS = 256


@dataclass(frozen=True, slots=True)
class HandledIds:
    """Msg ids an address's actor handled, as a write sends them to its
    ``handled:{address}`` list (oldest first): the whole window
    (``replace``), or the ids handled since the last write, appended after
    ``after`` (the newest id that write carried; ``None``: none was)."""

    ids: tuple[str, ...]
    after: str | None = None
    replace: bool = False

    @classmethod
    def window(cls, ids: Iterable[str]) -> HandledIds:
        return cls(tuple(ids)[-SEEN_PER_ADDRESS:], replace=True)

    def then(self, newer: HandledIds) -> HandledIds:
        """This write followed by ``newer``, as one write."""
        if newer.replace:
            return newer
        ids = tuple(dict.fromkeys((*self.ids, *newer.ids)))[-SEEN_PER_ADDRESS:]
        return HandledIds(ids, self.after, self.replace)


def _handled(seen: Sequence[str] | HandledIds | None) -> HandledIds | None:
    """A plain sequence of ids is the whole window."""
    if seen is None or isinstance(seen, HandledIds):
        return seen
    return HandledIds.window(seen)


def window_ids(seen: Sequence[str] | HandledIds | None) -> tuple[str, ...]:
    """The ids a whole-window write (a lease written back) sends."""
    handled = _handled(seen)
    return () if handled is None else handled.ids[-SEEN_PER_ADDRESS:]


def seen_args(seen: Sequence[str] | HandledIds | None) -> list[Any]:
    """A write's handled ids as :func:`~bus.cluster.lua` ``save_write``
    takes them: mode, after, n, then the ids."""
    handled = _handled(seen)
    if handled is None:
        return ["", "", 0]
    return ["r" if handled.replace else "a", handled.after or "", len(handled.ids), *handled.ids]


def decode_seen(data: Any) -> list[str]:
    """The ids a claim or :meth:`LeaseStore.load_seen` read: the list, or
    (as a former version wrote them) one msgpack value under
    ``seen:{address}``; [] for none (or a value this version cannot read:
    then nothing is dropped, as before)."""
    if isinstance(data, list):
        return [_text(x) for x in data]
    if not data:
        return []
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        return []
    return [x for x in value if isinstance(x, str)] if isinstance(value, list) else []

# ARGV: prefix, dead node
ADOPT = script(r"""
local dead = ARGV[2]
if alive(dead) then return {1} end
local out = {0}
for _, a in ipairs(redis.call('SMEMBERS', held_key(dead))) do
  local v = redis.call('GET', lease_key(a))
  local e, holder = parse_lease(v)
  if holder == dead then redis.call('DEL', lease_key(a)) end
  if (holder == nil or holder == dead) and redis.call('EXISTS', spec_key(a)) == 1 then
    redis.call('SADD', UNOWNED, a)
    out[#out + 1] = a
  elseif holder == nil or holder == dead then
    redis.call('PEXPIRE', issued_key(a), ISSUED_GRACE_MS)
  end
end
redis.call('DEL', held_key(dead), backlogged_key(dead))
redis.call('SREM', MEMBERS, dead)
return out
""")

# ARGV: prefix, me -> {leases of `me` still live, addresses now unowned...}
LEFTOVERS = script(r"""
local me = ARGV[2]
local live, out = 0, {}
for _, a in ipairs(redis.call('SMEMBERS', held_key(me))) do
  local e, holder = parse_lease(redis.call('GET', lease_key(a)))
  if holder == me then
    live = live + 1
  else
    redis.call('SREM', held_key(me), a)
    if holder == nil then
      if redis.call('EXISTS', spec_key(a)) == 1 then
        redis.call('SADD', UNOWNED, a)
        out[#out + 1] = a
      else
        redis.call('PEXPIRE', issued_key(a), ISSUED_GRACE_MS)
      end
    end
  end
end
return {live, out}
""")

# ARGV: prefix, me
LEAVE = script(r"""
local me = ARGV[2]
redis.call('DEL', node_key(me))
if redis.call('SCARD', held_key(me)) == 0 then redis.call('SREM', MEMBERS, me) end
return 1
""")


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    """One checkpoint write for :meth:`LeaseStore.save_checkpoints`: ``data``
    (None: only ``seen``, the msg ids handled: a plain sequence is the whole
    window) under ``epoch``; ``note`` goes to the fencing log with it."""

    address: str
    epoch: int
    data: bytes | None
    seen: Sequence[str] | HandledIds | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """``won``: the lease is ours under ``epoch``; then ``checkpoint`` and
    ``spec`` are what Redis held for the address (``None``: nothing),
    ``backlog`` the envelopes that waited for an owner (oldest first, now
    removed from Redis) and ``seen`` the msg ids its actor handled last
    (``handled:{address}``, read under the new lease). Otherwise ``holder`` is the live node that holds
    it (``""``: we are not a live member yet, or, with ``settling`` > 0,
    Redis's data set is younger than a lease TTL and claims wait this many
    seconds more: a holder of a lease it lost may still write it back).
    ``unanswered``: the claim got no answer (on a Redis Cluster: its shard
    was down while others answered), so nothing is known of it; it may
    have been won, and is tried again as a claim that failed."""

    won: bool
    holder: str
    epoch: int
    checkpoint: bytes | None = None
    spec: bytes | None = None
    backlog: tuple[bytes, ...] = ()
    seen: tuple[str, ...] = ()
    settling: float = 0.0
    unanswered: bool = False


@dataclass(frozen=True, slots=True)
class RenewResult:
    """``era`` identifies Redis's data set (a new one: it lost everything);
    ``lost`` maps each lease that was not renewed to its holder and epoch
    now (``None``: nobody holds it); ``backlogged`` are held addresses with
    messages waiting in their backlog; ``unanswered`` are leases whose
    renewal got no answer (on a Redis Cluster: their shard was down), so
    nothing is known of them: renewed or not, they count as before;
    ``reset`` are lost leases whose data set is new since they were claimed
    (on a Redis Cluster: their shard lost its data, or a replica that
    missed them was promoted, while the era's shard did not): the holder
    may write them back, as after a new era."""

    era: str
    lost: Mapping[str, tuple[str, int] | None] = field(default_factory=dict)
    backlogged: tuple[str, ...] = ()
    unanswered: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _lease_value(raw: bytes | str | None) -> tuple[str, int] | None:
    if not raw:
        return None
    epoch, _, node = _text(raw).partition(" ")
    return node, int(epoch)


class LeaseStore:
    """The lease scripts, on an asyncio Redis client (redis-py).

    ``codec`` encodes the announcements the scripts publish on
    ``<namespace>sys:nodes``.
    """

    def __init__(self, client: aioredis.Redis, *, namespace: str = "", codec: Codec | None = None) -> None:
        self.client = client
        self.keys = ClusterKeys(namespace)
        self.codec = codec or Codec()
        self.channel = channel_for(SYS_NODES, namespace)
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._restore = client.register_script(RESTORE)
        self._save = client.register_script(SAVE_CHECKPOINTS)
        self._adopt = client.register_script(ADOPT)
        self._leftovers = client.register_script(LEFTOVERS)
        self._leave = client.register_script(LEAVE)
        self._settle = client.register_script(SETTLE)

    async def aclose(self) -> None:
        """Close what the store opened itself (here: nothing; the client is
        the caller's to close)."""

    def _announcement(self, change: LeaseChange) -> bytes:
        return self.codec.encode(Envelope(to=SYS_NODES, message=change))

    async def prepare(self) -> None:
        """Connect and load the scripts a node runs most (claims, renewals),
        so that the first claim or renewal does not wait for it."""
        for loaded in (self._claim, self._renew):
            await self.client.script_load(loaded.script)

    async def assume_settled(self) -> None:
        """Declare Redis's data set settled: no lease it may have lost is
        still trusted by anyone (a fleet's first start on a new Redis, a
        test's), so claims need not wait a lease TTL from its start."""
        await self._settle(args=[self.keys.prefix, BORN])

    async def claim(self, address: str, node: str, *, ttl: float, floor: int = 0, spec: bytes | None = None) -> ClaimResult:
        """Take the lease of ``address`` unless a live node holds it.
        ``spec`` (start arguments) makes the address placed."""
        return (await self.claim_many([(address, floor, spec)], node, ttl=ttl))[0]

    async def claim_many(self, claims: Sequence[tuple[str, int, bytes | None]], node: str, *,
                         ttl: float) -> list[ClaimResult]:
        """Claim each ``(address, floor, spec)`` as :meth:`claim` does, and
        load what each won lease brings (checkpoint, spec, handled msg ids,
        backlog), all in one script: one round trip for the lot."""
        if not claims:
            return []
        args: list[Any] = [self.keys.prefix, node, _ms(ttl), self.channel]
        for address, floor, spec in claims:
            announcement = self._announcement(LeaseChange(address=address, node=node, change="acquired"))
            args += [address, floor, announcement, spec or b""]
        replies = await self._claim(args=args)
        return [_claim_result(reply) for reply in replies]

    async def renew(self, node: str, *, ttl: float, node_body: bytes, heartbeat: bytes, new_era: str,
                    leases: Mapping[str, int]) -> RenewResult:
        """Write this node's heartbeat (key and ``sys:nodes``) and extend
        every lease in ``leases`` (address -> epoch) that is still ours,
        in one script."""
        args: list[Any] = [self.keys.prefix, node, _ms(ttl), node_body, self.channel, heartbeat, new_era]
        for address, epoch in leases.items():
            args += [address, str(epoch)]
        era, lost_flat, backlogged = await self._renew(args=args)
        lost = {_text(lost_flat[i]): _lease_value(lost_flat[i + 1]) for i in range(0, len(lost_flat), 2)}
        return RenewResult(era=_text(era), lost=lost, backlogged=tuple(_text(a) for a in backlogged))

    async def release(self, address: str, node: str, epoch: int, *, mode: ReleaseMode = "plain",
                      spec: bytes | None = None, checkpoint: bytes | None = None,
                      seen: Sequence[str] | HandledIds | None = None, seen_ttl: float = SEEN_TTL) -> bool:
        """Give the lease up if it is still ours (True), and announce it.
        ``spec``/``checkpoint`` are written back if Redis lost them, the
        checkpoint with the msg ids it includes (``seen``)."""
        if mode not in RELEASE_MODES:
            raise ValueError(f"release mode must be one of {RELEASE_MODES}, got {mode!r}")
        announcement = self._announcement(LeaseChange(address=address, node=node, change=_ANNOUNCED_AS[mode],
                                                      epoch=epoch))
        reply = await self._release(args=[self.keys.prefix, address, node, str(epoch), mode, self.channel,
                                          announcement, spec or b"", checkpoint or b"", _ms(seen_ttl),
                                          SEEN_PER_ADDRESS, *window_ids(seen)])
        return bool(reply)

    async def restore(self, address: str, node: str, epoch: int, *, ttl: float, spec: bytes | None = None,
                      checkpoint: bytes | None = None, seen: Sequence[str] | HandledIds | None = None,
                      seen_ttl: float = SEEN_TTL) -> bool:
        """After Redis lost its data: write our lease back under the same
        epoch if nobody claimed the address meanwhile (True), with its spec,
        checkpoint and the msg ids that checkpoint includes (``seen``) where
        Redis has none."""
        announcement = self._announcement(LeaseChange(address=address, node=node, change="restored", epoch=epoch))
        reply = await self._restore(args=[self.keys.prefix, address, node, str(epoch), _ms(ttl), self.channel,
                                          announcement, spec or b"", checkpoint or b"", _ms(seen_ttl),
                                          SEEN_PER_ADDRESS, *window_ids(seen)])
        return bool(reply)

    async def save_checkpoint(self, address: str, node: str, epoch: int, data: bytes | None, *, log: bool = False,
                              note: str = "", seen: Sequence[str] | HandledIds | None = None,
                              seen_ttl: float = SEEN_TTL) -> bool:
        """Write ``data`` as the checkpoint of ``address`` only if ``(node,
        epoch)`` holds its lease right now; with ``log``, also append the
        accepted write to the fencing log. ``seen`` (the msg ids the actor
        has handled) is written in the same atomic step, to
        ``handled:{address}``; with ``data`` None, only ``seen`` is."""
        write = CheckpointWrite(address, epoch, data, seen, note)
        return (await self.save_checkpoints([write], node, log=log, seen_ttl=seen_ttl))[0] in (WRITTEN, RESEND_SEEN)

    async def save_checkpoints(self, writes: Sequence[CheckpointWrite], node: str, *, log: bool = False,
                               seen_ttl: float = SEEN_TTL) -> list[int]:
        """Each write as :meth:`save_checkpoint` does, all in one script (one
        round trip); each one's verdict, in order: :data:`WRITTEN`,
        :data:`REFUSED` (the lease is another's, or another epoch's) or
        :data:`NO_LEASE` (nobody holds it: Redis lost its data, or it
        lapsed), or :data:`RESEND_SEEN` (written, with the handled ids, but
        the list did not end where the writer believed: send the whole
        window). Each is judged alone: one refused does not stop the others."""
        if not writes:
            return []
        args: list[Any] = [self.keys.prefix, node, "1" if log else "0", _ms(seen_ttl), SEEN_PER_ADDRESS]
        for w in writes:
            args += [w.address, str(w.epoch), "0" if w.data is None else "1", w.data or b"", w.note,
                     *seen_args(w.seen)]
        return [int(x) for x in await self._save(args=args)]

    async def load_seen(self, address: str) -> list[str]:
        """The msg ids the actor at ``address`` handled last, as its last
        owner wrote them ([] if none)."""
        ids = await self.client.lrange(self.keys.handled(address), 0, -1)
        return decode_seen(ids or await self.client.get(self.keys.seen(address)))

    async def issued(self, addresses: list[str]) -> dict[str, tuple[int, str, bool]]:
        """For each address, the newest epoch ever issued for it, the node
        it went to and whether that lease is still live (``(0, "", False)``:
        none issued), in one round trip."""
        keys = self.keys
        names = [k for a in addresses for k in (keys.issued(a), keys.lease(a))]
        values = await self.client.mget(names) if names else []
        out: dict[str, tuple[int, str, bool]] = {}
        for i, address in enumerate(addresses):
            issued, lease = _lease_value(values[2 * i]), _lease_value(values[2 * i + 1])
            if issued is None:
                out[address] = (0, "", False)
            else:
                node, epoch = issued
                out[address] = (epoch, node, lease == issued)
        return out

    async def load_checkpoint(self, address: str) -> bytes | None:
        value = await self.client.get(self.keys.checkpoint(address))
        return bytes(value) if value is not None else None

    async def adopt(self, dead: str) -> list[str] | None:
        """If ``dead`` is not a live node: void its leases and mark its
        placed addresses unowned. Returns those addresses (empty if another
        node adopted them first), or None if ``dead`` is still live."""
        reply = await self._adopt(args=[self.keys.prefix, dead])
        if int(reply[0]):
            return None
        return [_text(a) for a in reply[1:]]

    async def leftovers(self, me: str) -> tuple[list[str], int]:
        """What an earlier process with this node id left behind (called by
        a node that has claimed nothing yet, and once more after a lease
        ttl): of the addresses listed as held by ``me``, those whose lease
        lapsed are marked unowned (returned: placement takes them) and those
        held by someone else are no longer listed. A lease still held by
        ``me`` is left alone (the count is returned): it lapses unless that
        earlier process still runs and renews it, and then it is its own.
        (A dead node's leftovers are adopted by the others; a node restarted
        under the same id within a lease ttl is never seen dead.)"""
        live, placed = await self._leftovers(args=[self.keys.prefix, me])
        return [_text(a) for a in placed], int(live)

    async def leave(self, node: str) -> None:
        """Delete this node's heartbeat key (after it released its leases)."""
        await self._leave(args=[self.keys.prefix, node])

    async def lease(self, address: str) -> tuple[str, int] | None:
        """Who holds ``address`` now: ``(node, epoch)``, or None."""
        return _lease_value(await self.client.get(self.keys.lease(address)))

    async def members(self) -> dict[str, bytes]:
        """Live nodes (id -> their last heartbeat body), from Redis."""
        ids = sorted(_text(n) for n in await self.client.smembers(self.keys.members))
        if not ids:
            return {}
        bodies = await self.client.mget([self.keys.node(n) for n in ids])
        return {n: bytes(b) for n, b in zip(ids, bodies, strict=True) if b is not None}

    async def member_ids(self) -> list[str]:
        """Every node id that holds or held leases (live or not)."""
        return sorted(_text(n) for n in await self.client.smembers(self.keys.members))

    async def unowned(self) -> list[str]:
        """Placed addresses waiting for an owner."""
        return sorted(_text(a) for a in await self.client.smembers(self.keys.unowned))

    async def fencing_log(self, count: int | None = None, *,
                          addresses: Iterable[str] | None = None) -> list[dict[str, str]]:
        """The accepted checkpoint writes (of ``addresses`` only, if given),
        in the order Redis accepted them."""
        entries = await self.client.xrange(self.keys.fencing, count=count)
        log = [{_text(k): _text(v) for k, v in fields.items()} for _id, fields in entries]
        if addresses is not None:
            wanted = set(addresses)
            log = [entry for entry in log if entry.get("a") in wanted]
        return log


def _claim_result(reply: list[Any]) -> ClaimResult:
    won, holder, epoch = int(reply[0]), _text(reply[1]), int(reply[2])
    if not won:
        settling = int(reply[3]) / 1000 if len(reply) > 3 else 0.0
        return ClaimResult(won=False, holder=holder, epoch=epoch, settling=settling)
    return ClaimResult(won=True, holder=holder, epoch=epoch, checkpoint=reply[3] or None, spec=reply[4] or None,
                       seen=tuple(decode_seen(reply[5])), backlog=tuple(reply[6:]))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))

