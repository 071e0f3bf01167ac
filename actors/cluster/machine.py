"""What a cluster node decides, as a sans-I/O state machine.

``step(state, event, now) -> (state, effects)``: events are what the node
heard (a tick of its clock, a heartbeat or lease change on ``sys:nodes``,
the outcome of a Redis script it ran, an actor that exited); effects are
what it must do (run a script, start or stop an actor, publish an event).
No I/O, no clock of its own, no threads: the shell
(:mod:`actors.cluster.shell`) runs it on the node's I/O loop and carries the
effects out. The returned state is the same object, changed in place.

Lease phases (a lease this node holds)::

    claim won ─► ACTIVE ─┬─ lost / expired ───────► FENCED ───┐
                         ├─ a better node joined ─► HANDOFF ──┤ actor gone
                         ├─ drain (not placed) ───► STOPPING ─┤
                         └─ the actor stopped ────────────────┴─► RELEASING ─► (released)

Rules, each a method below:

- **heartbeat and renewal**: every ``heartbeat_interval`` one ``Renew``
  (heartbeat + every lease still wanted: the plan the shell's renewal lane
  renews from, on a loop of its own). A lease counts as valid until
  ``sent + ttl * (1 - margin)`` of the newest renewal answer that covered
  it (older answers are dropped); past that, or reported lost, it is
  FENCED: its actor is stopped at once.
- **membership**: a node is live from its first heartbeat until it leaves
  or misses heartbeats for its ttl; a dead node's placed addresses are
  adopted (made unowned), and each survivor claims those it now ranks
  first for.
- **claims in flight**: at most ``claims_in_flight`` claims wait for an
  answer; the rest queue, in order, and go as answers come back (the shell
  sends the claims of one loop turn together, in batches). Renewals never
  queue behind them: the shell runs them on a thread, loop and connection
  of their own.
- **placement**: an unowned placed address is claimed by the live,
  non-draining node that ranks first for it (rendezvous hashing over the
  nodes whose factories start its kind).
- **hand-off**: when a node joins, each node hands it the placed addresses
  it now ranks first for (stop, release as unowned; the newcomer claims).
  A draining node hands off everything, then leaves.
- **Redis lost its data** (a new era): every lease still valid is written
  back under the same epoch.
- **routing**: envelopes for an address whose owner is not known to be
  live go through the ROUTE script one at a time per address, in order; a
  ROUTE Redis did not answer is sent again after a backoff (ticks).
- **lingering**: a released address's channel is still listened to for a
  lease ttl, or until the next owner's claim is heard, so what was already
  on its way here is forwarded instead of dropped.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.runtime.effects import Effect, Emit
from bus.address import node_address
from bus.cluster.backlog import DEFAULT_BACKLOG_CAP
from bus.cluster.membership import Member, Membership
from bus.cluster.messages import LeaseChange, NodeHeartbeat
from bus.cluster.placement import owner_of

__all__ = [
    "ActorGone",
    "Adopt",
    "Adopted",
    "Claim",
    "ClaimFailed",
    "ClaimRefused",
    "Claimed",
    "ClusterConfig",
    "ClusterState",
    "Drain",
    "DrainBacklog",
    "ForgetOwners",
    "Input",
    "HandBack",
    "HeartbeatSeen",
    "HeldLease",
    "LeaseSeen",
    "LeaseTroubled",
    "Leave",
    "NodeLeftSeen",
    "Orphans",
    "Phase",
    "Reassert",
    "RefuseRoute",
    "Reasserted",
    "Release",
    "ReleaseFailed",
    "Released",
    "Renew",
    "RenewFailed",
    "Renewed",
    "RouteFailed",
    "RouteQueued",
    "Routed",
    "SendRoute",
    "SpawnRefused",
    "Start",
    "StopActor",
    "StopListening",
    "Sweep",
    "Tick",
    "WantLease",
    "holds",
    "new_state",
    "renewing",
    "step",
]


@dataclass(frozen=True)
class ClusterConfig:
    """Timings and limits of one node in the cluster.

    ``heartbeat_interval``: seconds between renewals (heartbeat + leases);
    ``lease_ttl``: lease and heartbeat lifetime in Redis (a node that misses
    its heartbeats this long is dead); ``validity_margin``: the fraction of
    the ttl a node stops trusting its lease *before* Redis lets it go;
    ``sweep_interval``: how often a node looks for unowned addresses and
    dead members it did not hear about; ``capacity``: placement weight;
    ``backlog_cap``: envelopes one address's backlog holds; ``fencing_log``:
    record accepted checkpoint writes (for checkers); ``handoff_on_join``:
    move addresses to a node that joins and ranks first for them, once it
    has been live for ``handoff_grace`` seconds (default: one lease ttl);
    ``claims_in_flight``: claims sent and not answered yet, at most (the
    rest wait their turn, in order: a survivor taking over a dead node's
    addresses keeps Redis, its connections and its loop for everything
    else, its renewals first).

    Why the grace: a node that was paused past its lease and wakes up
    forwards the messages that waited in its socket, some of which the new
    owner also received; the new owner drops those copies by msg_id. Handing
    the address back to the waking node at once could move it before the
    copies arrive, and the node that gets them then would not know them.
    """

    heartbeat_interval: float = 0.5
    lease_ttl: float = 2.0
    validity_margin: float = 0.25
    sweep_interval: float = 5.0
    capacity: float = 1.0
    backlog_cap: int = DEFAULT_BACKLOG_CAP
    fencing_log: bool = False
    handoff_on_join: bool = True
    handoff_grace: float | None = None
    claims_in_flight: int = 256
    #: Seconds the node's loop may show no sign of running before its
    #: renewals stop (its leases then expire and its actors move); None:
    #: ten lease ttls, at least 30 s: long enough that a loop busy with a
    #: flood is never taken for a stuck one (see :mod:`actors.cluster.renewals`).
    loop_stall_limit: float | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.lease_ttl <= 0:
            raise ValueError("heartbeat_interval and lease_ttl must be positive")
        if self.lease_ttl < 2 * self.heartbeat_interval:
            raise ValueError("lease_ttl must be at least two heartbeat intervals")
        if not 0 < self.validity_margin < 1:
            raise ValueError("validity_margin is a fraction of the ttl, in (0, 1)")
        if self.capacity < 0:
            raise ValueError("capacity must not be negative")
        if self.claims_in_flight < 1:
            raise ValueError("claims_in_flight must be at least 1")

    @property
    def validity(self) -> float:
        """Seconds a renewal keeps a lease valid by the local clock."""
        return self.lease_ttl * (1 - self.validity_margin)

    @property
    def stall_limit(self) -> float:
        """Seconds of a stuck node loop after which renewals stop."""
        return max(30.0, 10 * self.lease_ttl) if self.loop_stall_limit is None else self.loop_stall_limit

    @property
    def grace(self) -> float:
        """Seconds a joined node is live before addresses move to it."""
        return self.lease_ttl if self.handoff_grace is None else self.handoff_grace

    @property
    def tick(self) -> float:
        """How often the shell feeds :class:`Tick`."""
        return min(self.heartbeat_interval / 2, 0.25)


#: Envelopes waiting to go through the ROUTE script for one address, at
#: most (past it they are refused: ``restart-buffer-full``).
ROUTE_BUFFER = 10_000
#: Seconds before a ROUTE that Redis did not answer is sent again: the first
#: retry, doubled per failure up to the cap (sent on the next tick after).
ROUTE_RETRY_FIRST_S = 0.05
ROUTE_RETRY_CAP_S = 1.0


class Phase(enum.StrEnum):
    ACTIVE = "active"
    FENCED = "fenced"
    HANDOFF = "handoff"
    STOPPING = "stopping"
    RELEASING = "releasing"


#: Phases in which the lease is still ours and renewed.
_RENEWED = (Phase.ACTIVE, Phase.HANDOFF, Phase.STOPPING)


@dataclass
class HeldLease:
    """A lease this node holds. ``valid_until`` is on the node's clock (the
    one the shell and its renewal lane read); ``placed``: the address has a
    spec (the cluster restarts it)."""

    epoch: int
    placed: bool
    valid_until: float
    phase: Phase = Phase.ACTIVE
    release_mode: str = ""
    #: another owner held it under a newer epoch since (Redis said so)
    superseded: bool = False
    retry_at: float = 0.0


@dataclass
class ClusterState:
    me: str
    config: ClusterConfig
    kinds: frozenset[str]
    view: Membership
    leases: dict[str, HeldLease] = field(default_factory=dict)
    #: address -> when its claim (in flight) was sent
    claiming: dict[str, float] = field(default_factory=dict)
    #: address -> when to (re)send its claim
    pending_claims: dict[str, float] = field(default_factory=dict)
    #: addresses to claim as soon as fewer than ``claims_in_flight`` are (in order)
    queued_claims: dict[str, None] = field(default_factory=dict)
    #: address -> until when it is not claimed again (it crashed here)
    cooldown: dict[str, float] = field(default_factory=dict)
    #: placed addresses heard to be unowned and not claimed since: looked at
    #: again when the membership changes (another node may rank first now)
    unowned_seen: set[str] = field(default_factory=set)
    #: joined node -> (when it joined, when addresses that rank it first move to it)
    handoffs_due: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: leases to write back after Redis lost them -> whether a write-back is
    #: in flight (a renewal racing it may still find them missing)
    reasserting: dict[str, bool] = field(default_factory=dict)
    #: addresses to claim again once their old lease is released
    reclaim: set[str] = field(default_factory=set)
    #: dead node -> (next attempt, give up at) while its key still exists
    adopt_retries: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: released address -> until when its channel is still listened to (what
    #: is already on its way here is forwarded, not dropped), unless the next
    #: owner's claim is heard first
    lingering: dict[str, float] = field(default_factory=dict)
    #: address -> encoded envelopes for the ROUTE script, in order; the
    #: first is under way (or waits for its retry)
    routes: dict[str, deque[bytes]] = field(default_factory=dict)
    #: address -> (when its first goes again: inf while under way, the
    #: delay after the next failure), for addresses whose ROUTE failed
    route_retry: dict[str, tuple[float, float]] = field(default_factory=dict)
    era: str | None = None
    #: until when Redis's data set is too young for claims, as last heard
    settling_until: float = -math.inf
    joined: bool = False
    #: send time of the newest renewal answer applied (older ones are dropped)
    last_renewal: float = -math.inf
    renew_set: dict[str, int] = field(default_factory=dict)
    next_renew: float = 0.0
    next_sweep: float = 0.0
    draining: bool = False
    closing: bool = False
    left: bool = False

    def owner(self, address: str) -> str | None:
        """Where placement puts ``address`` now, in this node's view."""
        kind = address.partition(":")[0]
        return owner_of(address, self.view.hosts_for(kind))

    def held(self) -> dict[str, int]:
        """Leases still ours in Redis: address -> epoch."""
        return {a: lease.epoch for a, lease in self.leases.items() if lease.phase in _RENEWED}


def holds(s: ClusterState, address: str) -> bool:
    """Whether a message for ``address`` that its actor here will not handle
    (it is stopping, or gone) is held back until the lease is released and
    then forwarded to the next owner (True), or routed at once (False): the
    lease is still this node's, so nobody else can take it yet."""
    return address in s.leases


def renewing(s: ClusterState, address: str) -> HeldLease | None:
    """The lease of ``address`` if this node still renews it (its actor,
    should its validity run out on the clock before a renewal's answer,
    waits for the answer instead of giving its messages away), else None."""
    lease = s.leases.get(address)
    return lease if lease is not None and lease.phase in _RENEWED else None


def new_state(me: str, config: ClusterConfig, kinds: frozenset[str], now: float) -> ClusterState:
    member = Member(node=me, capacity=config.capacity, kinds=kinds, draining=False, ttl=config.lease_ttl,
                    last_seen=now)
    return ClusterState(me=me, config=config, kinds=kinds, view=Membership(me=member, default_ttl=config.lease_ttl),
                        next_sweep=now + config.sweep_interval)


# -- events (what the node heard) ------------------------------------------------


class Input:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Tick(Input):
    pass


@dataclass(frozen=True, slots=True)
class AnnouncementsMissed(Input):
    """The node's subscription to ``sys:nodes`` was down for a while (its
    bus connection dropped and came back): releases and departures said
    meanwhile were never heard."""


@dataclass(frozen=True, slots=True)
class HeartbeatSeen(Input):
    heartbeat: NodeHeartbeat


@dataclass(frozen=True, slots=True)
class NodeLeftSeen(Input):
    node: str


@dataclass(frozen=True, slots=True)
class LeaseSeen(Input):
    change: LeaseChange


@dataclass(frozen=True, slots=True)
class Renewed(Input):
    """A renewal's answer: sent at ``sent_at`` (the local clock, before it
    was sent), it extended ``leases`` (address -> epoch; None: the leases
    of the last :class:`Renew`) but those in ``lost``; those of them in
    ``reset`` were lost with their data set (a Redis Cluster shard's),
    not taken and not lapsed: written back as after a new era."""

    sent_at: float
    era: str
    lost: Mapping[str, tuple[str, int] | None] = field(default_factory=dict)
    backlogged: tuple[str, ...] = ()
    leases: Mapping[str, int] | None = None
    reset: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RenewFailed(Input):
    sent_at: float


@dataclass(frozen=True, slots=True)
class WantLease(Input):
    """Something here wants to host ``address`` (a spawn)."""

    address: str


@dataclass(frozen=True, slots=True)
class Claimed(Input):
    """The claim won ``address`` under ``epoch``. ``sent_at``: when the
    shell sent the script (after the claim waited its turn and its channel
    was subscribed); ``None``: when the core said to claim it. The lease is
    valid from then, never from later (Redis set its TTL after it)."""

    address: str
    epoch: int
    placed: bool
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class ClaimRefused(Input):
    """``holder`` ("": we are not a member yet) holds it under ``epoch``;
    ``settling`` > 0: nobody may claim yet, Redis's data set is younger than
    a lease TTL (a holder of a lease it lost may still write it back), for
    this many seconds more."""

    address: str
    holder: str
    epoch: int
    settling: float = 0.0


@dataclass(frozen=True, slots=True)
class ClaimFailed(Input):
    """The claim did not get an answer (Redis unreachable)."""

    address: str


@dataclass(frozen=True, slots=True)
class ActorGone(Input):
    """The actor at ``address`` stopped; ``final``: no restart follows."""

    address: str
    crashed: bool
    final: bool


@dataclass(frozen=True, slots=True)
class Released(Input):
    address: str
    #: the lease was still ours in Redis (the release gave it up), not
    #: another's since (then nothing changed there)
    ours: bool = True


@dataclass(frozen=True, slots=True)
class ReleaseFailed(Input):
    address: str


@dataclass(frozen=True, slots=True)
class Reasserted(Input):
    """The write-back of a lease ended: ``ok`` (ours again), not ok (taken
    meanwhile), or ``None`` (no answer: the next renewal decides)."""

    address: str
    ok: bool | None
    sent_at: float


@dataclass(frozen=True, slots=True)
class Adopted(Input):
    """The outcome of adopting ``node``: it was still ``alive``, or these
    placed ``addresses`` are unowned now."""

    node: str
    alive: bool
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Orphans(Input):
    """Placed addresses found waiting for an owner."""

    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteQueued(Input):
    """Envelopes (encoded) for ``address`` that must go through the ROUTE
    script (to the owner's node channel, or its backlog), after those
    queued before them."""

    address: str
    items: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Routed(Input):
    """The first envelope queued for ``address`` went through ROUTE (its
    outcome is handled by the shell)."""

    address: str


@dataclass(frozen=True, slots=True)
class RouteFailed(Input):
    """Redis did not answer the ROUTE of the first envelope for ``address``."""

    address: str


@dataclass(frozen=True, slots=True)
class LeaseTroubled(Input):
    """Redis refused a checkpoint of ``address`` under our lease:
    ``missing``, because nobody holds the lease at all (Redis lost its
    data); else because another holder or epoch does."""

    address: str
    missing: bool = False


@dataclass(frozen=True, slots=True)
class Drain(Input):
    """Hand everything off and leave (``closing``: the node is shutting down)."""

    closing: bool = False


# -- effects (what the node must do) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Renew(Effect):
    leases: Mapping[str, int]
    sent_at: float


@dataclass(frozen=True, slots=True)
class Claim(Effect):
    address: str


@dataclass(frozen=True, slots=True)
class Start(Effect):
    address: str
    epoch: int


@dataclass(frozen=True, slots=True)
class SpawnRefused(Effect):
    address: str
    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class StopActor(Effect):
    """Stop the actor at once; ``final``: no supervisor restarts it."""

    address: str
    reason: str
    final: bool


@dataclass(frozen=True, slots=True)
class Release(Effect):
    """Give the lease up. ``superseded``: another owner held it under a
    newer epoch since, so the state here is older than that owner's: never
    written back (where Redis lost its data, it would replace the newer)."""

    address: str
    epoch: int
    mode: str
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class HandBack(Effect):
    """The address is released: forward whatever waited for it here."""

    address: str


@dataclass(frozen=True, slots=True)
class SendRoute(Effect):
    """Run the ROUTE script for ``data``, the first envelope queued for
    ``address``; answer with :class:`Routed` or :class:`RouteFailed`."""

    address: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RefuseRoute(Effect):
    """An envelope that did not fit in its address's route queue."""

    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class StopListening(Effect):
    """A released address's channel is no longer listened to (its next
    owner is known, or the grace ran out) unless it is held here again."""

    address: str


@dataclass(frozen=True, slots=True)
class Adopt(Effect):
    node: str


@dataclass(frozen=True, slots=True)
class Sweep(Effect):
    pass


@dataclass(frozen=True, slots=True)
class DrainBacklog(Effect):
    address: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Reassert(Effect):
    address: str
    epoch: int
    placed: bool
    sent_at: float


@dataclass(frozen=True, slots=True)
class ForgetOwners(Effect):
    """Redis lost its data: who held what, as this node heard it, no longer
    holds (a lease learned of before may be gone, with the placement that
    would have brought its actor back)."""


@dataclass(frozen=True, slots=True)
class Leave(Effect):
    pass


# -- the step ------------------------------------------------------------------------


def step(state: ClusterState, event: Input, now: float) -> tuple[ClusterState, list[Effect]]:
    """Feed one event; returns the (same, updated) state and the effects."""
    out: list[Effect] = []
    handler = _HANDLERS[type(event)]
    handler(state, event, now, out)
    _send_queued_claims(state, now, out)
    if state.draining and not state.left and not state.leases and not state.claiming:
        state.left = True
        out.append(Leave())
    return state, out


def _tick(s: ClusterState, _e: Tick, now: float, out: list[Effect]) -> None:
    cfg = s.config
    if s.route_retry:
        _retry_routes(s, now, out)
    if s.lingering:
        for address in [a for a, until in s.lingering.items() if until <= now]:
            del s.lingering[address]
            _stop_listening(s, address, out)
    if not s.left and now >= s.next_renew:
        s.renew_set = s.held()
        s.next_renew = now + cfg.heartbeat_interval
        out.append(Renew(leases=dict(s.renew_set), sent_at=now))
    for address, lease in s.leases.items():
        if lease.phase in _RENEWED and now >= lease.valid_until:
            _fence(s, address, lease, "expired", out)
        elif lease.phase is Phase.RELEASING and lease.retry_at and now >= lease.retry_at:
            lease.retry_at = 0.0
            out.append(Release(address, lease.epoch, lease.release_mode, superseded=lease.superseded))
    dead = s.view.expire(now)
    for node in dead:
        out.append(Emit("node-dead", address=node_address(node)))
        s.adopt_retries[node] = (now, now + cfg.lease_ttl)
    if dead:
        _reconsider_unowned(s, now, out)
    for node, (due, give_up) in list(s.adopt_retries.items()):
        if now >= give_up:
            del s.adopt_retries[node]
        elif now >= due:
            s.adopt_retries[node] = (now + cfg.heartbeat_interval, give_up)
            out.append(Adopt(node))
    for address, retry_at in list(s.pending_claims.items()):
        if s.joined and now >= retry_at:
            del s.pending_claims[address]
            if address in s.unowned_seen and s.owner(address) != s.me:
                # Placed, and another node ranks first by now (a claim that
                # waited for the data set to settle, for our membership):
                # its claim places it, or the next sweep does.
                continue
            _claim(s, address, now, out)
    for node, (joined_at, due) in list(s.handoffs_due.items()):
        if now >= due:
            del s.handoffs_due[node]
            member = s.view.others.get(node)
            if member is not None and member.last_seen > joined_at:  # heard from since it joined
                _hand_off_to(s, node, out)
    if s.joined and not s.left and now >= s.next_sweep:
        s.next_sweep = now + cfg.sweep_interval
        out.append(Sweep())


def _renewed(s: ClusterState, e: Renewed, now: float, out: list[Effect]) -> None:
    if e.sent_at <= s.last_renewal:
        return  # older than an answer already applied
    s.last_renewal = e.sent_at
    first = not s.joined
    s.joined = True
    reset = s.era is not None and e.era != s.era
    s.era = e.era
    if reset:
        out.append(Emit("redis-reset", address=node_address(s.me), detail={"era": e.era}))
        out.append(ForgetOwners())
    valid_until = e.sent_at + s.config.validity
    for address, epoch in (s.renew_set if e.leases is None else e.leases).items():
        lease = s.leases.get(address)
        if lease is None or lease.epoch != epoch or lease.phase not in _RENEWED:
            continue
        if address in e.lost:
            current = e.lost[address]
            if current is None and (reset or address in e.reset or address in s.reasserting):
                if not s.reasserting.get(address, False):
                    s.reasserting[address] = True
                    out.append(Reassert(address, epoch, lease.placed, now))
            else:
                _fence(s, address, lease, "taken" if current else "lapsed", out)
        else:
            lease.valid_until = max(lease.valid_until, valid_until)
    for address in e.backlogged:
        lease = s.leases.get(address)
        if lease is not None and lease.phase is Phase.ACTIVE:
            out.append(DrainBacklog(address, lease.epoch))
    if first:
        for address in list(s.pending_claims):
            del s.pending_claims[address]
            _claim(s, address, now, out)
        # A newcomer heard none of the releases before it ran: what was
        # left unowned meanwhile (and ranks it first now, so nobody else
        # claims it) waits for its sweep. The first one comes as soon as
        # it has heard the others' heartbeats, not a sweep interval later.
        s.next_sweep = min(s.next_sweep, now + 2 * s.config.heartbeat_interval)


def _renew_failed(_s: ClusterState, _e: RenewFailed, _now: float, _out: list[Effect]) -> None:
    """Nothing to undo: the leases stay valid until the last answer's
    validity runs out, and the next renewal is due anyway."""


def _reasserted(s: ClusterState, e: Reasserted, _now: float, out: list[Effect]) -> None:
    lease = s.leases.get(e.address)
    if e.ok is None and lease is not None and lease.phase in _RENEWED:
        s.reasserting[e.address] = False  # the next renewal that misses it tries again
        return
    s.reasserting.pop(e.address, None)
    if lease is None or lease.phase not in _RENEWED or e.ok is None:
        return
    if e.ok:
        lease.valid_until = max(lease.valid_until, e.sent_at + s.config.validity)
        out.append(Emit("lease-restored", address=e.address, detail={"epoch": lease.epoch}))
    else:
        _fence(s, e.address, lease, "taken", out)


def _heartbeat(s: ClusterState, e: HeartbeatSeen, now: float, out: list[Effect]) -> None:
    hb = e.heartbeat
    if hb.node == s.me:
        return
    if not s.view.observe(hb, now):
        return
    out.append(Emit("node-joined", address=node_address(hb.node),
                    detail={"capacity": hb.capacity, "kinds": sorted(hb.kinds)}))
    s.adopt_retries.pop(hb.node, None)
    if s.config.handoff_on_join:
        if s.config.grace > 0:
            s.handoffs_due[hb.node] = (now, now + s.config.grace)
        else:
            _hand_off_to(s, hb.node, out)


def _node_left(s: ClusterState, e: NodeLeftSeen, now: float, out: list[Effect]) -> None:
    if e.node == s.me or not s.view.left(e.node):
        return
    out.append(Emit("node-left", address=node_address(e.node)))
    # It released everything it held; adopting catches what it could not.
    s.adopt_retries[e.node] = (now + s.config.heartbeat_interval, now + s.config.lease_ttl)
    out.append(Adopt(e.node))
    _reconsider_unowned(s, now, out)


def _announcements_missed(s: ClusterState, _e: AnnouncementsMissed, now: float, _out: list[Effect]) -> None:
    # What it missed is in the store: the next tick sweeps (places what
    # was left unowned meanwhile and ranks this node first, e.g. trees
    # handed off to it while it could not hear the hand-off).
    if s.joined and not s.left:
        s.next_sweep = min(s.next_sweep, now)


def _lease_seen(s: ClusterState, e: LeaseSeen, now: float, out: list[Effect]) -> None:
    change = e.change
    if change.node == s.me and change.change != "unowned":
        return
    if change.change == "unowned":
        s.unowned_seen.add(change.address)
        _maybe_claim_placed(s, change.address, now, out)
    elif change.change in ("acquired", "restored"):
        s.unowned_seen.discard(change.address)
        if s.lingering.pop(change.address, None) is not None:
            _stop_listening(s, change.address, out)  # the next owner's claim is heard: nothing more comes here
        lease = s.leases.get(change.address)
        if lease is not None and change.epoch > lease.epoch:
            lease.superseded = True  # a newer owner's state is newer than ours
            if lease.phase in _RENEWED:
                _fence(s, change.address, lease, "taken", out)


def _want_lease(s: ClusterState, e: WantLease, now: float, out: list[Effect]) -> None:
    address = e.address
    if address in s.claiming or address in s.pending_claims or address in s.queued_claims:
        return
    lease = s.leases.get(address)
    if lease is not None:
        if lease.phase is not Phase.ACTIVE:
            s.reclaim.add(address)  # after the old lease is released
        return
    if s.draining:
        out.append(SpawnRefused(address, "", 0))
        return
    _claim(s, address, now, out)


def _claimed(s: ClusterState, e: Claimed, now: float, out: list[Effect]) -> None:
    decided_at = s.claiming.pop(e.address, now)
    sent_at = decided_at if e.sent_at is None else max(decided_at, e.sent_at)
    s.unowned_seen.discard(e.address)
    lease = HeldLease(epoch=e.epoch, placed=e.placed, valid_until=sent_at + s.config.validity)
    s.leases[e.address] = lease
    out.append(Emit("lease-acquired", address=e.address, detail={"epoch": e.epoch, "placed": e.placed}))
    out.append(Start(e.address, e.epoch))
    if s.draining:
        if lease.placed:
            _hand_off(s, e.address, lease, "", out)
        else:
            lease.phase = Phase.STOPPING
            out.append(StopActor(e.address, "drain", final=True))


def _claim_refused(s: ClusterState, e: ClaimRefused, now: float, out: list[Effect]) -> None:
    s.claiming.pop(e.address, None)
    if not e.holder and not s.draining:
        # We are not a member in Redis yet (or any more): after our next
        # heartbeat. Or claims wait for the data set to settle: then.
        s.pending_claims[e.address] = now + (e.settling or s.config.heartbeat_interval)
        if e.settling and now >= s.settling_until:  # said once per wait, not per address
            out.append(Emit("claims-waiting", address=node_address(s.me), reason="data-set-young",
                            detail={"wait_s": round(e.settling, 3)}))
        if e.settling:
            s.settling_until = max(s.settling_until, now + e.settling)
        return
    out.append(SpawnRefused(e.address, e.holder, e.epoch))


def _claim_failed(s: ClusterState, e: ClaimFailed, now: float, out: list[Effect]) -> None:
    s.claiming.pop(e.address, None)
    if s.draining:
        out.append(SpawnRefused(e.address, "", 0))
        return
    s.pending_claims[e.address] = now + s.config.heartbeat_interval


def _actor_gone(s: ClusterState, e: ActorGone, now: float, out: list[Effect]) -> None:
    lease = s.leases.get(e.address)
    if lease is None or lease.phase is Phase.RELEASING:
        return
    if not e.final and lease.phase is Phase.ACTIVE:
        return  # a supervised restart follows, under the same lease
    if lease.placed:
        stays = lease.phase is Phase.ACTIVE and not e.crashed and not s.closing
        mode = "retire" if stays else "unowned"
        if e.crashed:
            # Not straight back here: the next sweep (or another node) restarts it.
            s.cooldown[e.address] = now + s.config.sweep_interval
    else:
        mode = "plain"
    _release(s, e.address, lease, mode, out)


def _released(s: ClusterState, e: Released, now: float, out: list[Effect]) -> None:
    lease = s.leases.pop(e.address, None)
    if lease is None:
        return
    out.append(Emit("lease-released", address=e.address, detail={"epoch": lease.epoch, "mode": lease.release_mode}))
    out.append(HandBack(e.address))
    s.lingering[e.address] = now + s.config.lease_ttl
    if e.address in s.reclaim:
        s.reclaim.discard(e.address)
        if not s.draining:
            _claim(s, e.address, now, out)
        else:
            out.append(SpawnRefused(e.address, "", 0))
    elif lease.release_mode == "unowned" and e.ours:
        # Placed and nobody's now (our release left it unowned: had another
        # taken it, claiming it back would take it from that one): ours
        # again if we rank first for it (past a crash's cooldown), and
        # looked at again as the members change.
        # Not left to the news of our own release, which a node that was
        # cut off may not hear, nor to the next sweep, seconds away (found
        # by the simulation: a tree unowned for five seconds, long enough
        # for Redis to lose its placement).
        s.unowned_seen.add(e.address)
        _maybe_claim_placed(s, e.address, now, out)


def _release_failed(s: ClusterState, e: ReleaseFailed, now: float, _out: list[Effect]) -> None:
    lease = s.leases.get(e.address)
    if lease is not None and lease.phase is Phase.RELEASING:
        lease.retry_at = now + s.config.heartbeat_interval


def _adopted(s: ClusterState, e: Adopted, now: float, out: list[Effect]) -> None:
    if e.alive:
        return  # its key has not expired yet: the retry schedule goes on
    s.adopt_retries.pop(e.node, None)
    if e.addresses:
        out.append(Emit("adopted", address=node_address(e.node), detail={"addresses": len(e.addresses)}))
    for address in e.addresses:
        s.unowned_seen.add(address)
        _maybe_claim_placed(s, address, now, out)


def _orphans(s: ClusterState, e: Orphans, now: float, out: list[Effect]) -> None:
    for address in e.addresses:
        s.unowned_seen.add(address)
        _maybe_claim_placed(s, address, now, out)


def _lease_troubled(s: ClusterState, e: LeaseTroubled, now: float, out: list[Effect]) -> None:
    lease = s.leases.get(e.address)
    if lease is None or lease.phase not in _RENEWED:
        return
    if e.missing and now < lease.valid_until:
        # Nobody holds it while ours is still valid by our clock (it cannot
        # have lapsed: we stop trusting it first): Redis lost its data.
        # Re-assert it, with the newest state, as after a renewal that
        # found it gone, instead of stopping a healthy actor whose spec
        # went with the data (nobody would ever place it again).
        if not s.reasserting.get(e.address, False):
            s.reasserting[e.address] = True
            out.append(Reassert(e.address, lease.epoch, lease.placed, now))
        return
    _fence(s, e.address, lease, "checkpoint-refused", out)


def _drain(s: ClusterState, e: Drain, _now: float, out: list[Effect]) -> None:
    s.closing = s.closing or e.closing
    if s.draining:
        return
    s.draining = True
    s.pending_claims.clear()
    s.reclaim.clear()
    for address in s.queued_claims:
        out.append(SpawnRefused(address, "", 0))
    s.queued_claims.clear()
    out.append(Emit("draining", address=node_address(s.me), detail={"leases": len(s.leases)}))
    for address, lease in s.leases.items():
        if lease.phase is not Phase.ACTIVE:
            continue
        if lease.placed:
            _hand_off(s, address, lease, "", out)
        else:
            lease.phase = Phase.STOPPING
            out.append(StopActor(address, "drain", final=True))


# -- helpers ----------------------------------------------------------------------------


def _claim(s: ClusterState, address: str, now: float, out: list[Effect]) -> None:
    s.lingering.pop(address, None)  # ours again: its channel stays
    if not s.joined:
        s.pending_claims[address] = now
        return
    if s.queued_claims or len(s.claiming) >= s.config.claims_in_flight:
        s.queued_claims[address] = None  # after those before it, once fewer are in flight
        return
    s.claiming[address] = now
    out.append(Claim(address))


def _stop_listening(s: ClusterState, address: str, out: list[Effect]) -> None:
    if (address not in s.leases and address not in s.claiming and address not in s.queued_claims
            and address not in s.pending_claims):
        out.append(StopListening(address))


def _send_queued_claims(s: ClusterState, now: float, out: list[Effect]) -> None:
    """Claims that waited for room: as many as may be in flight now."""
    while s.queued_claims and len(s.claiming) < s.config.claims_in_flight:
        address = next(iter(s.queued_claims))
        del s.queued_claims[address]
        s.claiming[address] = now
        out.append(Claim(address))


def _maybe_claim_placed(s: ClusterState, address: str, now: float, out: list[Effect]) -> None:
    if (s.draining or s.left or address in s.leases or address in s.claiming or address in s.pending_claims
            or address in s.queued_claims or s.owner(address) != s.me):
        return
    until = s.cooldown.get(address)
    if until is not None:
        if now < until:
            return
        del s.cooldown[address]
    _claim(s, address, now, out)


def _hand_off_to(s: ClusterState, node: str, out: list[Effect]) -> None:
    """Hand ``node`` (if still live) the placed addresses it ranks first for."""
    if s.draining or not s.view.is_live(node):
        return
    for address, lease in s.leases.items():
        if lease.phase is Phase.ACTIVE and lease.placed and s.owner(address) == node:
            _hand_off(s, address, lease, node, out)


def _reconsider_unowned(s: ClusterState, now: float, out: list[Effect]) -> None:
    """The live nodes changed: unowned addresses may rank us first now."""
    for address in sorted(s.unowned_seen):
        _maybe_claim_placed(s, address, now, out)


def _fence(s: ClusterState, address: str, lease: HeldLease, why: str, out: list[Effect]) -> None:
    """The lease is lost (or can no longer be trusted): stop the actor now."""
    stopping = lease.phase in (Phase.HANDOFF, Phase.STOPPING)
    lease.phase = Phase.FENCED
    out.append(Emit("lease-lost", address=address, reason=why, detail={"epoch": lease.epoch}))
    if not stopping:
        out.append(StopActor(address, f"lease-{why}", final=False))


def _hand_off(s: ClusterState, address: str, lease: HeldLease, to: str, out: list[Effect]) -> None:
    lease.phase = Phase.HANDOFF
    out.append(Emit("handoff", address=address, detail={"to": to, "epoch": lease.epoch}))
    out.append(StopActor(address, "handoff", final=True))


def _release(s: ClusterState, address: str, lease: HeldLease, mode: str, out: list[Effect]) -> None:
    lease.phase = Phase.RELEASING
    lease.release_mode = mode
    out.append(Release(address, lease.epoch, mode, superseded=lease.superseded))


def _route_queued(s: ClusterState, e: RouteQueued, _now: float, out: list[Effect]) -> None:
    queue = s.routes.get(e.address)
    fresh = queue is None
    if queue is None:
        queue = deque()
    for data in e.items:
        if len(queue) >= ROUTE_BUFFER:
            out.append(RefuseRoute(data, "restart-buffer-full"))
        else:
            queue.append(data)
    if fresh and queue:
        s.routes[e.address] = queue
        out.append(SendRoute(e.address, queue[0]))  # one under way per address: order holds


def _routed(s: ClusterState, e: Routed, _now: float, out: list[Effect]) -> None:
    queue = s.routes.get(e.address)
    if not queue:
        return
    queue.popleft()
    s.route_retry.pop(e.address, None)
    if queue:
        out.append(SendRoute(e.address, queue[0]))
    else:
        del s.routes[e.address]


def _route_failed(s: ClusterState, e: RouteFailed, now: float, _out: list[Effect]) -> None:
    if e.address not in s.routes:
        return
    _at, delay = s.route_retry.get(e.address, (0.0, ROUTE_RETRY_FIRST_S))
    s.route_retry[e.address] = (now + delay, min(delay * 2, ROUTE_RETRY_CAP_S))


def _retry_routes(s: ClusterState, now: float, out: list[Effect]) -> None:
    for address, (at, delay) in list(s.route_retry.items()):
        queue = s.routes.get(address)
        if not queue:
            del s.route_retry[address]
        elif at <= now:
            s.route_retry[address] = (math.inf, delay)
            out.append(SendRoute(address, queue[0]))


_HANDLERS: dict[type[Input], Any] = {
    RouteQueued: _route_queued,
    Routed: _routed,
    RouteFailed: _route_failed,
    Tick: _tick,
    AnnouncementsMissed: _announcements_missed,
    HeartbeatSeen: _heartbeat,
    NodeLeftSeen: _node_left,
    LeaseSeen: _lease_seen,
    Renewed: _renewed,
    RenewFailed: _renew_failed,
    Reasserted: _reasserted,
    WantLease: _want_lease,
    Claimed: _claimed,
    ClaimRefused: _claim_refused,
    ClaimFailed: _claim_failed,
    ActorGone: _actor_gone,
    Released: _released,
    ReleaseFailed: _release_failed,
    Adopted: _adopted,
    Orphans: _orphans,
    LeaseTroubled: _lease_troubled,
    Drain: _drain,
}
