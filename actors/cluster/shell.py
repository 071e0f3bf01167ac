"""A node in a cluster: the shell around :mod:`actors.cluster.machine`.

:class:`Cluster` plugs into a :class:`~actors.runtime.node.Node` as its
:class:`~actors.runtime.ownership.Ownership` and runs the cluster core on the node's I/O
loop, carrying out its effects with the Redis scripts of :mod:`bus.cluster`
(redis-py asyncio clients, next to the node's pub/sub transport).

Two lanes to Redis. Renewals (which carry the heartbeat) run on a
connection of their own that nothing else uses, so a renewal never waits
behind claims, checkpoint writes, epoch look-ups or backlog drains; all of
those share the main lane. Claims are batched: the claims the core emits in
one loop turn go out ``CLAIM_BATCH`` addresses per script call, each won
lease bringing its checkpoint, spec, backlog and handled msg ids in the
same reply, and the core keeps at most ``claims_in_flight`` claims
unanswered (a survivor taking over hundreds of addresses queues the rest).

Threads. Everything here lives on the node's loop, with no lock: the
core's state (changed only in ``_feed``), the owner directory, routing
queues, held messages, handled msg ids, checkpoints. Every entry point
another part of the node calls (the :class:`~actors.runtime.ownership.Ownership`
methods, the checkpoint store, ``ensure``, ``drain``, fencing's questions)
is :func:`~actors.runtime.io.confined`: on the loop it runs at once, as it does
for every actor that never blocks; from another thread (an actor that
blocks, on the pool; a test or CLI on its main thread) it is handed to the
loop and that thread waits for the answer. ``sys:nodes`` is read on the
loop too: a lease announcement makes the node's fencing hold the address's
envelopes *before* the next message off the same connection is
dispatched, until the lease store said which epoch was issued (that is
what makes the announcement fence a former owner, see
:mod:`bus.cluster.leases` and :mod:`actors.runtime.fencing`). The one other thread
is the renewal lane's (:mod:`actors.cluster.renewals`): it hands its
answers over through a queue the loop takes from.

Fencing's authority. The cluster answers the node's question "which epoch
was issued for this address?" from Redis (``issued:{address}``), batching
every question asked within one loop turn into one round trip; the answer
also keeps the owner table (an announcement itself is trusted for nothing).

What a send to another node does, and why nothing is lost on the way, is
in :mod:`bus.cluster.backlog`. In short: a cached live owner gets a plain
PUBLISH; anything else goes through the ``ROUTE`` script (to the owner's
node channel, or into the backlog), in order per address; a PUBLISH that
reached nobody is routed too; a message for an address this node no longer
hosts is forwarded, after its lease is released if it was ours.

Start arguments of a placed address (:meth:`Cluster.ensure`) are a map of
msgpack primitives, stored in Redis so any node can start the actor; they
must never carry secrets (credentials travel as messages from the actor
that owns them), and names that look like secrets are refused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.runtime.actor import HuddleActor
from actors.cluster.dedupe import SEEN_PER_ADDRESS, SeenIds
from actors.cluster.directory import Directory
from actors.cluster.machine import (
    HeldLease,
    ActorGone,
    Adopt,
    Adopted,
    AnnouncementsMissed,
    Claim,
    Claimed,
    ClaimFailed,
    ClaimRefused,
    ClusterConfig,
    ClusterState,
    Drain,
    DrainBacklog,
    ForgetOwners,
    Input,
    HandBack,
    HeartbeatSeen,
    LeaseSeen,
    LeaseTroubled,
    Leave,
    NodeLeftSeen,
    Orphans,
    Phase,
    Reassert,
    Reasserted,
    RefuseRoute,
    Release,
    Released,
    ReleaseFailed,
    Renew,
    Renewed,
    RenewFailed,
    RouteFailed,
    RouteQueued,
    Routed,
    SendRoute,
    SpawnRefused,
    Start,
    StopActor,
    StopListening,
    Sweep,
    Tick,
    WantLease,
    holds,
    new_state,
    renewing,
    step,
)
from actors.cluster.renewals import RenewalLane, RenewalPlan
from actors.runtime.dispatch import RESTART_BUFFER
from actors.runtime.effects import Effect, Emit
from actors.runtime.fencing import UNKNOWN as UNKNOWN_ISSUE
from actors.runtime.fencing import Issued
from actors.runtime.io import IoLoop, confined
from actors.runtime.messages import ChildExit
from actors.runtime.metrics import LEASE_RENEW_LATENCY
from actors.runtime.node import Node
from actors.runtime.pooled import ROUND_BUDGET_S, PooledFuture
from bus.address import ENDPOINT_KINDS, SYS_NODES, channel_for, node_address, parse_address
from bus.cluster.backlog import Backlog
from bus.cluster.leases import NO_LEASE, RESEND_SEEN, WRITTEN, CheckpointWrite, ClaimResult, HandledIds, LeaseStore
from bus.cluster.messages import DrainNode, LeaseChange, NodeHeartbeat, NodeLeft
from bus.envelope import Envelope
from bus.errors import DecodeError, EncodeError, HuddleError
from bus.loop import LoopThread
from bus.messages import REGISTRY, Event, Message, message_kind
from bus.messages import Stop as StopMessage
from bus.cluster.sharded_store import backlog_for, lease_store_for
from bus.shard_client import ShardClient
from bus.store_client import store_client

__all__ = ["ActorFactories", "Cluster", "ClusterControl", "ClusterStatus", "encode_start_args"]

log = logging.getLogger("huddle.cluster")

#: Words that may not appear in the name of a start argument.
SECRET_WORDS = ("token", "password", "passwd", "secret", "credential", "apikey", "api_key")
#: Msg ids remembered to drop a second copy of an envelope.
SEEN_IDS = 100_000
#: Addresses that never take a lease (node endpoints, system channels).
_UNLEASED = tuple(f"{kind}:" for kind in ENDPOINT_KINDS)
#: Addresses claimed (and their checkpoints, handled msg ids and backlogs
#: loaded) per round trip; how many claims are in flight at once is the
#: core's ``claims_in_flight``.
CLAIM_BATCH = 64
#: Checkpoint writes per script call (each is a compare and one or two SETs).
CHECKPOINT_BATCH = 256
#: Connections of the lane everything but renewals shares.
MAIN_LANE_CONNECTIONS = 32


class ActorFactories:
    """Which actor starts at an address of each kind, on this node.

    A factory is called as ``factory(ctx, **start_args)`` (an actor class
    is a factory). The kinds are announced in the node's heartbeats: only
    nodes with a factory for an address's kind take it in placement.
    """

    def __init__(self, factories: Mapping[str, Callable[..., HuddleActor]] | None = None) -> None:
        self._factories: dict[str, Callable[..., HuddleActor]] = {}
        for kind, factory in (factories or {}).items():
            self.register(kind, factory)

    def register(self, kind: str, factory: Callable[..., HuddleActor]) -> None:
        parse_address(f"{kind}:x")  # a valid kind
        if kind in ("node", "sys"):
            raise ValueError(f"the {kind!r} kind is the runtime's own")
        self._factories[kind] = factory

    def get(self, kind: str) -> Callable[..., HuddleActor] | None:
        return self._factories.get(kind)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._factories)


def encode_start_args(args: Mapping[str, Any]) -> bytes:
    """The stored form of a placed actor's start arguments: msgpack of a map
    of primitives. Raises :class:`EncodeError` for anything else, or a name
    that looks like a secret."""
    for name in args:
        if not isinstance(name, str):
            raise EncodeError("start argument names must be str")
        lowered = name.lower()
        if any(word in lowered for word in SECRET_WORDS):
            raise EncodeError(f"start argument {name!r} looks like a secret; secrets never go into start "
                              "arguments (they are stored in Redis): send them in a message")
    try:
        return msgpack.packb(dict(args), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"start arguments are not msgpack primitives: {exc}") from exc


@message_kind("cluster.status")
@dataclass(frozen=True, slots=True)
class ClusterStatus(Message):
    """Ask a node (at ``node:<id>/cluster``) for its view of the cluster."""


class ClusterControl(HuddleActor):
    """The node's cluster endpoint, ``node:<id>/cluster``: takes
    :class:`~bus.cluster.messages.DrainNode` and :class:`ClusterStatus`."""

    def __init__(self, ctx: Any, cluster: Cluster) -> None:
        super().__init__(ctx)
        self.cluster = cluster

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, DrainNode):
            self.cluster.drain()
            return sum(1 for lease in list(self.cluster.state.leases.values()) if lease.placed)
        if isinstance(message, ClusterStatus):
            return self.cluster.status()
        return super().on_message(message, envelope)


def _parked(actor: HuddleActor) -> bool:
    """Whether no slice of ``actor`` runs or waits to run: the last message
    it was handed is handled."""
    return getattr(actor.actor_inbox, "_scheduled", True) is False


class RedisCheckpoints:
    """The node's :class:`~actors.runtime.checkpoints.CheckpointStore` in a cluster.

    ``save`` never blocks: it checks the lease locally, keeps the state in
    memory (a restart on this node gets it at once) and queues the write;
    the writes queued run on the I/O loop through the epoch-checked script,
    many addresses per round trip, the newest state per address only, in
    order (one write under way per address). A write Redis refuses (the
    lease moved) is a ``checkpoint-refused`` event and fences the actor.
    ``load`` only reads memory: an activation brings the stored checkpoint
    with its claim.

    Every write also carries the msg ids the actor has handled, up to the
    message whose handler saved the state (``handled:{address}``, in the
    same atomic, epoch-checked step): the next owner restores them with the
    state and drops a copy of a message that state already includes. A
    write carries only the ids handled since the last one (appended after
    the newest id that one carried; if Redis's list does not end there the
    script says so and the next write sends the whole window).
    ``save_seen`` queues a write of the ids alone, in the same order.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.io: IoLoop = cluster.node.io
        self._cache: dict[str, bytes] = {}
        #: address -> (epoch, state or None: the ids alone, handled ids), not sent yet
        self._pending: dict[str, tuple[int, bytes | None, HandledIds | None]] = {}
        #: addresses with a write queued or under way -> the event set once
        #: none is (made only when someone waits: most writes have no waiter)
        self._writing: dict[str, asyncio.Event | None] = {}
        self._accepted: dict[str, bool] = {}
        self._writer_due = False

    @confined
    def save(self, address: str, epoch: int, data: bytes) -> bool:
        cluster = self._cluster
        if address not in cluster.state.leases or not cluster.may_send(address, epoch):
            cluster.node.emit("checkpoint-refused", address, reason="lease-lost", detail={"epoch": epoch})
            return False
        self._cache[address] = data
        self._queue(address, epoch, data, cluster._seen.handled(address))
        return True

    @confined
    def save_seen(self, address: str, epoch: int, seen: HandledIds | None = None) -> None:
        """Queue a write of the msg ids handled at ``address`` (default: those
        no write carried yet, the last one too: its actor stopped) behind
        any write under way, or with the one still queued. Refused quietly
        if the lease moved."""
        if seen is None:
            seen = self._cluster._seen.handled(address)
            if seen is None:
                return
        self._queue(address, epoch, None, seen)

    def _queue(self, address: str, epoch: int, data: bytes | None, seen: HandledIds | None, *,
               older: bool = False) -> None:
        """Queue a write for ``address``, merged with the one queued under the
        same epoch (the newest state; the ids of both, oldest first).
        ``older``: this write was sent before the queued one (a retry)."""
        pending = self._pending.get(address)
        if pending is not None and pending[0] == epoch:
            p_data, p_seen = pending[1], pending[2]
            if older:
                data, p_data, seen, p_seen = p_data, data, p_seen, seen
            if data is None:
                data = p_data
            if p_seen is not None:
                seen = p_seen if seen is None else p_seen.then(seen)
        elif pending is not None and older:
            return  # a newer lease's write is queued: this one would be refused anyway
        self._pending[address] = (epoch, data, seen)
        self._writing.setdefault(address, None)
        if not self._writer_due:
            self._writer_due = True
            self._cluster.call_soon(self._start_writer)

    @confined
    def write_again_all(self) -> int:
        """Queue every held address's last state again (behind what is
        under way, merged with what is queued: newer state wins); returns
        how many."""
        cluster = self._cluster
        count = 0
        for address, data in list(self._cache.items()):
            lease = cluster.state.leases.get(address)
            if lease is None or not cluster.may_send(address, lease.epoch):
                continue
            self._queue(address, lease.epoch, data, cluster._seen.handled(address, whole=True), older=True)
            count += 1
        return count

    @confined
    def writing(self, address: str) -> bool:
        """Whether a write for ``address`` is queued or under way."""
        return address in self._writing

    @confined
    def load(self, address: str) -> bytes | None:
        return self._cache.get(address)

    @confined
    def delete(self, address: str) -> None:
        self._cache.pop(address, None)
        self._accepted.pop(address, None)

    @confined
    def remember(self, address: str, data: bytes | None) -> None:
        """The stored checkpoint an activation brought."""
        if data is None:
            self._cache.pop(address, None)
        else:
            self._cache[address] = data

    def _start_writer(self) -> None:
        asyncio.get_running_loop().create_task(self._write_all())

    async def _write_all(self) -> None:
        """The one writer: everything queued goes out together, up to
        ``CHECKPOINT_BATCH`` writes per script call (one round trip), and
        what is saved meanwhile goes in the next batch, so an address has
        at most one write under way and its writes land in order. A write
        that Redis could not take is sent again while the lease may still
        be ours; given up past it."""
        cluster = self._cluster
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                items = list(batch.items())
                retry = False
                for i in range(0, len(items), CHECKPOINT_BATCH):
                    chunk = items[i:i + CHECKPOINT_BATCH]
                    writes = [CheckpointWrite(a, epoch, data, seen) for a, (epoch, data, seen) in chunk]
                    try:
                        async with asyncio.timeout(cluster.config.lease_ttl):
                            oks = await cluster.leases.save_checkpoints(writes, cluster.me,
                                                                        log=cluster.config.fencing_log)
                    except Exception as exc:  # noqa: BLE001 - Redis away: retry while the leases may still be ours
                        log.debug("cluster: %d checkpoints not written yet: %r", len(chunk), exc)
                        for address, (epoch, data, seen) in chunk:
                            if cluster.may_send(address, epoch):
                                self._queue(address, epoch, data, seen, older=True)
                                retry = True
                            elif data is not None:
                                cluster.node.emit("checkpoint-refused", address, reason="unreachable",
                                                  detail={"epoch": epoch})
                                self._accepted[address] = False
                    else:
                        cluster.node.counters["cluster:checkpoint-batches"] += 1
                        for (address, (epoch, data, _seen)), verdict in zip(chunk, oks, strict=True):
                            if verdict == RESEND_SEEN:
                                cluster._seen.resend(address)
                            if data is None:
                                continue  # the ids alone: a refusal only says the lease moved
                            ok = self._accepted[address] = verdict in (WRITTEN, RESEND_SEEN)
                            if not ok:
                                missing = verdict == NO_LEASE
                                cluster.node.emit("checkpoint-refused", address,
                                                  reason="no-lease" if missing else "stale-epoch",
                                                  detail={"epoch": epoch})
                                cluster.feed(LeaseTroubled(address, missing=missing))
                    for address, _item in chunk:
                        if address not in self._pending:
                            done = self._writing.pop(address, None)
                            if done is not None:
                                done.set()
                if retry:
                    await asyncio.sleep(cluster.config.heartbeat_interval / 2)
        finally:
            self._writer_due = False

    async def flush(self, address: str) -> None:
        """Until every write queued for ``address`` is done (or given up)."""
        if address not in self._writing:
            return
        done = self._writing[address]
        if done is None:
            done = self._writing[address] = asyncio.Event()
        await done.wait()

    async def confirm(self, address: str) -> bool:
        """On the node's I/O loop: True once every checkpoint saved so far
        for ``address`` is in Redis, under its lease; False if the last
        write was refused or given up."""
        await self.flush(address)
        return self._accepted.get(address, False)


class Cluster:
    """Membership, leases, placement, failover and the backlog for one node.

    Create it on a node that hosts nothing yet, then :meth:`start` it after
    ``node.start()``. ``factories`` say which actors this node can start by
    itself (placed addresses, failover); ``config`` holds the timings.
    """

    def __init__(self, node: Node, redis_url: str, *, config: ClusterConfig | None = None,
                 factories: ActorFactories | None = None) -> None:
        self.node = node
        self.io: IoLoop = node.io
        self.me = node.node_id
        self.redis_url = redis_url
        self.config = config or ClusterConfig()
        self.factories = factories or ActorFactories()
        self.state: ClusterState = new_state(self.me, self.config, self.factories.kinds, node.clock.now())
        self.leases: LeaseStore
        self.backlog: Backlog
        self.checkpoints = RedisCheckpoints(self)
        self._client: aioredis.Redis | ShardClient | None = None
        #: the renewal lane: a thread, loop and connection nothing but renewals uses
        #: (on a node whose loop is adopted, a simulated world's: that loop, no thread)
        self._lane = RenewalLane(redis_url, self.me, self.config, namespace=node.namespace, codec=node.codec,
                                 wake=lambda: self.call_soon(self._take_renewals),
                                 new_era=lambda: uuid.uuid4().hex, clock=node.clock.now,
                                 loop=LoopThread(f"huddle-renew-{self.me}", loop=node.io.loop)
                                 if node.io.adopted else None)
        #: addresses the core said to claim, sent together at the end of the loop turn
        self._to_claim: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: where addresses live, as last heard (fencing is the node's, apart)
        self.directory = Directory(self.me, is_live=self.state.view.is_live)
        self._pending_spawns: dict[str, tuple[type[HuddleActor], tuple[Any, ...], dict[str, Any], str | None]] = {}
        self._claims: dict[str, ClaimResult] = {}
        self._specs: dict[str, bytes] = {}
        self._held_back: dict[str, list[Envelope]] = {}
        #: actors that wait for their lease to be confirmed or lost (must_wait)
        self._waiting: set[str] = set()
        self._seen = SeenIds(SEEN_IDS, SEEN_PER_ADDRESS)
        self._seen_due = 0.0
        self._ensure_waiters: dict[str, list[PooledFuture[str]]] = {}
        self._drained: list[PooledFuture[None]] = []
        self._joined = threading.Event()
        self._left = threading.Event()
        self._nodes_channel = channel_for(SYS_NODES, node.namespace)
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self._closed = False
        self._started = False
        #: addresses fencing asked about, answered in one batch per loop turn
        self._questions: set[str] = set()
        node.set_ownership(self)
        node.checkpoints = self.checkpoints
        node.fencing.set_authority(self)
        node.fencing.on_resolved(self._on_issued)

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> bool:
        """Listen on ``sys:nodes``, learn the members from Redis, write the
        first heartbeat. True once this node is a member (its heartbeat is
        in Redis); False if Redis did not answer within ``timeout`` (the
        node keeps trying in the background)."""
        if self._started:
            return self._joined.is_set()
        self._started = True
        self.node.metrics.add_source(LEASE_RENEW_LATENCY, lambda: self._lane.latency_s)
        self.node.handle_system_channel(SYS_NODES, self._on_nodes)
        self.node.add_event_listener(self._on_own_event)
        self.node.spawn(f"{self.node.address}/cluster", ClusterControl, self)
        if self.io.on_loop_thread():
            # On the node's own loop (a node in a simulated world): nothing
            # here may wait; the boot runs as a task, await wait_joined().
            self.node.io.submit(self._boot(), tracked=False)
            return False
        self.node.io.submit(self._boot(), tracked=False).result(timeout=timeout)
        return self._joined.wait(timeout)

    async def wait_joined(self, timeout: float) -> bool:
        """On the node's loop: True once this node is a member, False past
        ``timeout`` seconds of the node's clock (looked at every tick)."""
        deadline = self.node.clock.now() + timeout
        while not self._joined.is_set():
            if self.node.clock.now() >= deadline:
                return False
            await asyncio.sleep(self.config.tick)
        return True

    async def _boot(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Two lanes: renewals (which carry the heartbeat) on a thread, loop
        # and connection of their own, so a renewal never waits behind a
        # burst of claims, checkpoint writes or backlog drains, nor behind
        # this loop's other work; everything else on the main lane.
        self._client = self._connect(MAIN_LANE_CONNECTIONS)
        self.leases = lease_store_for(self._client, namespace=self.node.namespace, codec=self.node.codec)
        self._lane.start()
        self.backlog = backlog_for(self._client, namespace=self.node.namespace, cap=self.config.backlog_cap)
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                members = await self.leases.members()
        except Exception as exc:  # noqa: BLE001 - heartbeats will teach us the members
            log.warning("cluster: could not read the members from Redis: %r", exc)
            members = {}
        for body in members.values():
            try:
                hb = REGISTRY.from_body(NodeHeartbeat.KIND, msgpack.unpackb(body, raw=False))
            except (DecodeError, ValueError, msgpack.UnpackException):
                continue
            assert isinstance(hb, NodeHeartbeat)
            self.feed(HeartbeatSeen(hb))
        self._spawn_task(self._take_leftovers())
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def _connect(self, max_connections: int) -> aioredis.Redis | ShardClient:
        """The client of the main lane. A
        command that loses its connection (Redis restarted) is sent again on
        a new one: every script here is safe to repeat (a repeated ROUTE
        appends a copy that the owner drops by its msg_id). Every call on it
        has a deadline of its own (``asyncio.timeout``, one lease TTL), so
        the client has no socket timeout: with one, redis-py bounds each
        command's write with ``asyncio.wait_for``, a new task per command on
        Python 3.11 (5 % of a survivor's CPU in a failover)."""
        return store_client(
            self.redis_url, max_connections=max_connections, timeout=None,
            on_new_primary=lambda: self.call_soon(self._new_primary),
            socket_connect_timeout=self.config.lease_ttl,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )

    async def _tick_forever(self) -> None:
        while not self._closed:
            self._lane.loop_alive()
            self._take_renewals()  # a tick never fences what a waiting answer renewed
            self.feed(Tick())
            self._persist_seen()
            await asyncio.sleep(self.config.tick)

    @confined
    def drain(self) -> PooledFuture[None]:
        """Hand every actor off and leave the cluster; the future is set
        once this node has left."""
        future: PooledFuture[None] = PooledFuture()
        if self._left.is_set():
            future.set(None)
            return future
        self._drained.append(future)
        self.call_soon(self.feed, Drain())
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Leave the cluster (hand off, release) within ``timeout``, then
        stop. Called by ``Node.shutdown``."""
        if self._closed or not self._started:
            self._closed = True
            return
        self.call_soon(self.feed, Drain(closing=True))
        if not self._left.wait(timeout):
            log.warning("cluster: %s did not leave cleanly within %.1fs", self.me, timeout)
        self._closed = True
        try:
            self.node.io.submit(self._shutdown(), tracked=False).result(timeout=timeout)
        except Exception:  # noqa: BLE001
            log.warning("cluster: %s did not close its Redis client cleanly", self.me)
        self._lane.close(timeout)

    async def _shutdown(self) -> None:
        self._stopped = True  # from here on no task of ours starts (the loop is about to close)
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self._lane.stop()
        if self._client is not None:
            await self._client.aclose()

    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    @property
    def left(self) -> bool:
        return self._left.is_set()

    def wait_left(self, timeout: float | None = None) -> bool:
        return self._left.wait(timeout)

    # -- placing actors -----------------------------------------------------------

    @confined
    def ensure(self, address: str, **start_args: Any) -> PooledFuture[str]:
        """Make sure an actor lives at ``address``, on the node that ranks
        first for it (whichever node calls this). ``start_args`` (msgpack
        primitives, never secrets) are stored with the address and passed to
        the factory of its kind, on every activation. The future gives the
        node that holds it."""
        kind = parse_address(address).kind
        if kind in ("node", "sys"):
            raise HuddleError(f"{address}: the {kind} kind is not placed")
        spec = encode_start_args(start_args)
        future: PooledFuture[str] = PooledFuture()
        # Always the store's word, never the directory's: a cached owner
        # may be one that released the address since (its release
        # announcement read before the answer that named it), and an
        # address nobody holds must be placed, or it is gone for good.
        self._ensure_waiters.setdefault(address, []).append(future)
        self.call_soon(self._spawn_task, self._ensure(address, spec))
        return future

    async def _ensure(self, address: str, spec: bytes) -> None:
        async with asyncio.timeout(self.config.lease_ttl):
            holder = await self.backlog.place(address, spec)
        if holder is not None:
            self._set_owner(address, *holder)
            self._resolve_ensure(address, holder[0])
            return
        self._announce(LeaseChange(address=address, node="", change="unowned"))
        self.feed(Orphans((address,)))

    @confined
    def spawning(self, address: str) -> bool:
        """Whether a spawn at ``address`` waits for its lease."""
        return address in self._pending_spawns

    @confined
    def owner(self, address: str) -> str | None:
        """The node this node believes holds ``address`` (None: unknown)."""
        entry = self.directory.entry(address)
        return None if entry is None else entry[0]

    @confined
    def status(self) -> dict[str, Any]:
        """A snapshot of this node's view (msgpack primitives)."""
        s = self.state
        return {
            "node": self.me,
            "joined": s.joined,
            "draining": s.draining,
            "era": s.era or "",
            "members": sorted(s.view.live),
            "leases": {a: {"epoch": lease.epoch, "phase": str(lease.phase), "placed": lease.placed}
                       for a, lease in list(s.leases.items())},
            "claiming": sorted(s.claiming),
        }

    # -- Ownership (on the loop; from another thread, handed to it) -------------

    @confined
    def may_send(self, sender: str, epoch: int) -> bool:
        lease = self.state.leases.get(sender)
        if lease is None:
            return True
        return (lease.epoch == epoch and lease.phase is not Phase.FENCED and lease.phase is not Phase.RELEASING
                and self._valid(sender, lease, self.node.clock.now()))

    @confined
    def may_deliver(self, address: str) -> bool:
        # Asked once before each message the node hands the actor: the one
        # before it is handled (see actors.cluster.dedupe).
        self._seen.handling(address)
        lease = self.state.leases.get(address)
        return lease is None or (lease.phase is not Phase.FENCED and self._valid(address, lease, self.node.clock.now()))

    @confined
    def must_wait(self, address: str) -> bool:
        return renewing(self.state, address) is not None and not self._closed

    @confined
    def waiting(self, address: str) -> None:
        self._seen.put_back(address)
        self._waiting.add(address)
        self.node.counters["cluster:deliveries-waited"] += 1
        self.call_soon(self._settle_waiting)

    def _settle_waiting(self) -> None:
        """Loop thread: actors that wait for their lease go on once it is
        valid again (a renewal's answer came) or no longer renewed (lost,
        fenced, released: what they hold then goes to the next owner)."""
        now = self.node.clock.now()
        for address in list(self._waiting):
            lease = renewing(self.state, address)
            if lease is None or self._valid(address, lease, now):
                self._waiting.discard(address)
                self.node.resume(address)

    @confined
    def first_delivery(self, env: Envelope) -> bool:
        to = env.to
        return self._seen.first(env.msg_id, to, to in self.state.leases and type(env.message) is not StopMessage)

    @confined
    def route(self, to: str, data: bytes) -> bool:
        if to.startswith(_UNLEASED):
            return False
        if to not in self.state.routes and self.directory.owner(to) is not None:
            return False  # a plain PUBLISH to its owner's channel
        self._submit_route(to, data)
        return True

    @confined
    def unrouted(self, env: Envelope, data: bytes) -> bool:
        to = env.to
        if to.startswith(_UNLEASED) or self._closed:
            return False
        self.directory.forget(to)
        self._submit_route(to, data)
        return True

    @confined
    def stray(self, env: Envelope) -> bool:
        to = env.to
        if to.startswith(_UNLEASED) or self._closed:
            return False
        self._seen.forget(env.msg_id, to)
        log.debug("cluster: %s forwards %s for %s", self.me, env.msg_id, to)
        if holds(self.state, to):
            # Ours until released: forwarded then (to the next owner).
            held = self._held_back.setdefault(to, [])
            if len(held) < RESTART_BUFFER:
                held.append(env)
                return True
            full = True
        else:
            full = False
        if full:
            self.node._refuse(env, "restart-buffer-full")
            return True
        self._submit_route(to, self.node.codec.encode(env))
        return True

    @confined
    def spawn(self, address: str, actor_class: type[HuddleActor], args: tuple[Any, ...],
              kwargs: dict[str, Any], parent: str | None) -> int | None:
        if address.startswith(_UNLEASED):
            return 0
        lease = self.state.leases.get(address)
        if lease is not None and lease.phase is Phase.ACTIVE and self._valid(address, lease, self.node.clock.now()):
            return lease.epoch  # a restart under the lease we hold
        if self._closed:
            raise HuddleError(f"node {self.me} is leaving the cluster")
        self._pending_spawns[address] = (actor_class, args, dict(kwargs), parent)
        self.node.reserve(address)
        self.call_soon(self.feed, WantLease(address))
        return None

    @confined
    def exited(self, address: str, crashed: bool, supervised: bool) -> bool:
        if address.startswith(_UNLEASED) or address not in self.state.leases:
            return False
        self.call_soon(self.feed, ActorGone(address, crashed, final=not supervised))
        return not supervised

    # -- the core, on the loop ---------------------------------------------------------

    def _new_primary(self) -> None:
        """Loop thread: behind Sentinel, the store moved to another primary.
        What the old one took in the moment before (Redis replicates
        asynchronously) may be gone: every live actor's last checkpoint and
        handled ids are written again, in order behind any write under way
        and under the same lease compare (a lease that was lost with them
        refuses the write and fences the actor, as any refusal does)."""
        count = self.checkpoints.write_again_all()
        self.node.emit("redis-primary-changed", node_address(self.me), detail={"checkpoints_written_again": count})

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the node's I/O loop (from any thread)."""
        try:
            self.node.io.call_soon(fn, *args)
        except Exception:  # noqa: BLE001 - the loop is closed: the node is gone
            log.debug("cluster: %s dropped %r: the I/O loop is closed", self.me, fn)

    def feed(self, event: Input) -> None:
        """Loop thread: one event through the core, then its effects."""
        _, effects = step(self.state, event, self.node.clock.now())
        for effect in effects:
            try:
                self._perform(effect)
            except Exception:  # noqa: BLE001 - one failed effect must not stop the others
                log.exception("cluster: %s failed to perform %r", self.me, effect)
        if self._waiting:
            self._settle_waiting()

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._stopped:
            # Shut down: a send the node makes on its way out is dropped
            # with its transport, not left pending on a loop that closes.
            coro.close()
            log.debug("cluster: %s stopped; a late task was not started", self.me)
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster: %s task failed", self.me, exc_info=task.exception())

    def _perform(self, effect: Effect) -> None:
        match effect:
            case Renew():
                self._plan_renewals(effect)
            case Claim(address=address):
                self._queue_claim(address)
            case Start(address=address, epoch=epoch):
                self._start(address, epoch)
            case SpawnRefused():
                self._spawn_refused(effect)
            case StopActor():
                self._stop(effect)
            case Release():
                self._spawn_task(self._release(effect))
            case HandBack(address=address):
                self._hand_back(address)
            case StopListening(address=address):
                self.node.stop_listening(address)
            case SendRoute(address=address, data=data):
                self._spawn_task(self._send_route(address, data))
            case RefuseRoute(data=data, reason=reason):
                self._refuse_bytes(data, reason)
            case Adopt(node=dead):
                self._spawn_task(self._adopt(dead))
            case Sweep():
                self._spawn_task(self._sweep())
            case DrainBacklog(address=address, epoch=epoch):
                self._spawn_task(self._drain_backlog(address, epoch))
            case Reassert():
                self._spawn_task(self._reassert(effect))
            case ForgetOwners():
                self.directory.clear()
            case Emit(event=name, address=address, reason=reason, detail=detail):
                self.node.emit(name, address, reason=reason, detail=dict(detail))
            case Leave():
                self._spawn_task(self._leave())
            case _:
                raise TypeError(f"unknown cluster effect {effect!r}")

    # -- effects -----------------------------------------------------------------------

    def _plan_renewals(self, effect: Renew) -> None:
        """The core's plan for the renewal lane: these leases, with the
        heartbeat this node announces."""
        s = self.state
        hb = NodeHeartbeat(node=self.me, capacity=self.config.capacity, kinds=sorted(s.kinds), draining=s.draining,
                           actors=len(self.node.addresses()), leases=len(effect.leases),
                           interval=self.config.heartbeat_interval, ttl=self.config.lease_ttl,
                           ts=self.node.clock.wall())
        body = msgpack.packb(REGISTRY.to_body(hb), use_bin_type=True)
        announcement = self.node.codec.encode(Envelope(to=SYS_NODES, message=hb, sender=self.node.address))
        self._lane.plan(RenewalPlan(dict(effect.leases), body, announcement))

    def _take_renewals(self) -> None:
        """Loop thread: the renewal lane's answers waiting, through the core."""
        for event in self._lane.take():
            if self._closed:
                return
            if isinstance(event, RenewFailed):
                self.node.counters["cluster:renew-failed"] += 1
            else:
                self.node.counters["cluster:renewed"] += 1
            self.feed(event)
            if isinstance(event, Renewed) and not self._joined.is_set():
                self._joined.set()

    def _valid(self, address: str, lease: HeldLease, now: float) -> bool:
        """``lease`` is valid by the core, or by a renewal answer the core
        has not applied yet (its loop was busy)."""
        return now < lease.valid_until or self._lane.confirms(address, lease.epoch, now)

    def _queue_claim(self, address: str) -> None:
        """Loop thread: the core said claim ``address``; the claims of this
        loop turn go out together (:meth:`_send_claims`)."""
        self.node.reserve(address)
        first = not self._to_claim
        self._to_claim.append(address)
        if first:
            asyncio.get_running_loop().call_soon(self._send_claims)

    def _send_claims(self) -> None:
        addresses, self._to_claim = self._to_claim, []
        for i in range(0, len(addresses), CLAIM_BATCH):
            self._spawn_task(self._claim(addresses[i:i + CLAIM_BATCH]))

    async def _claim(self, addresses: list[str]) -> None:
        """Claim ``addresses`` in one round trip; each won lease brings its
        checkpoint, spec, backlog and the msg ids its last owner's actor
        handled (restored here before anything is delivered)."""
        # Listen on the addresses' channels before the claim makes them ours
        # (these channels only: a survivor starting hundreds of actors keeps
        # subscribing others, and waiting for all of them could take a ttl).
        await self._listening([channel_for(a, self.node.namespace) for a in addresses], self.config.lease_ttl)
        sent_at = self.node.clock.now()
        try:
            # On the renewal lane's loop: a lease won is renewed from then on,
            # however long this loop takes to read the answer.
            results = await self._lane.claim([(a, self.node.newest_epoch(a), None) for a in addresses])
        except Exception as exc:  # noqa: BLE001
            log.warning("cluster: %s could not claim %d addresses (%r)", self.me, len(addresses), exc)
            for address in addresses:
                self.feed(ClaimFailed(address))
            return
        self.node.counters["cluster:claim-batches"] += 1
        now = self.node.clock.now
        yield_at = now() + ROUND_BUDGET_S
        for address, result in zip(addresses, results, strict=True):
            if now() >= yield_at:
                # A batch's activations take turns with the loop's other work
                # (socket readers, ticks, the actors' slices) a round's budget
                # at a time. (One per loop turn made the last of a survivor's
                # hundreds of activations wait a second behind the others'.)
                await asyncio.sleep(0)
                yield_at = now() + ROUND_BUDGET_S
            if result.unanswered:  # its shard was down: nothing is known of it
                self.feed(ClaimFailed(address))
            elif result.won:
                if result.seen:
                    self._seen.restore(address, result.seen)  # before anything is delivered
                self._claims[address] = result
                # Valid from the claim, or from a renewal of it since (this
                # loop may have been busy while the lane renewed it).
                valid_from = max(sent_at, self._lane.renewed_at(address, result.epoch))
                self.feed(Claimed(address, result.epoch, placed=result.spec is not None, sent_at=valid_from))
            else:
                self.feed(ClaimRefused(address, result.holder, result.epoch, settling=result.settling))

    async def _listening(self, channels: list[str], timeout: float) -> bool:
        """True once the node's transport confirms ``channels`` are
        subscribed; False if it closed, or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        confirmed: asyncio.Future[bool] = loop.create_future()

        def answer(ok: bool) -> None:
            loop.call_soon_threadsafe(lambda: confirmed.done() or confirmed.set_result(ok))

        self.node.transport.when_subscribed(channels, answer)
        try:
            return await asyncio.wait_for(confirmed, timeout)
        except TimeoutError:
            return False

    def _start(self, address: str, epoch: int) -> None:
        claim = self._claims.pop(address, None)
        pending = self._pending_spawns.pop(address, None)
        checkpoint = claim.checkpoint if claim is not None else None
        if claim is not None and claim.spec is not None:
            self._specs[address] = claim.spec
        preload = self._decode_all(claim.backlog if claim is not None else (), address)
        self._set_owner(address, self.me, epoch)
        try:
            if pending is not None:
                actor_class, args, kwargs, parent = pending
                if parent is not None and self.node.lookup(parent) is None:
                    # Its supervisor stopped while the lease was being
                    # claimed: started now, the child would run with nobody
                    # to stop it, and the supervisor's next incarnation here
                    # would find its address in use.
                    self.node.emit("activation-dropped", address, reason="supervisor-gone",
                                   detail={"supervisor": parent, "epoch": epoch})
                    self.feed(ActorGone(address, crashed=False, final=True))
                    return
            else:
                factory = self.factories.get(parse_address(address).kind)
                if factory is None or claim is None or claim.spec is None:
                    raise HuddleError(f"{address}: this node has no factory or spec to start it")
                actor_class, args, parent = factory, (), None  # type: ignore[assignment]
                kwargs = msgpack.unpackb(claim.spec, raw=False)
            self.checkpoints.remember(address, checkpoint)
            self.node.start_actor(address, actor_class, args, kwargs, parent=parent, epoch=epoch,
                                  checkpoint=checkpoint, preload=tuple(preload))
        except Exception as exc:  # noqa: BLE001 - reported, and the lease goes back
            log.exception("cluster: %s could not start %s", self.me, address)
            self.node.emit("activation-failed", address, reason=type(exc).__name__, detail={"epoch": epoch})
            self.feed(ActorGone(address, crashed=True, final=True))

    def _spawn_refused(self, effect: SpawnRefused) -> None:
        address = effect.address
        pending = self._pending_spawns.pop(address, None)
        if effect.holder:
            self._set_owner(address, effect.holder, effect.epoch)
        self._claims.pop(address, None)
        self.node.emit("lease-refused", address, reason="held" if effect.holder else "draining",
                       detail={"holder": effect.holder, "epoch": effect.epoch})
        if pending is not None and pending[3] is not None:
            # A supervisor's child that cannot start here: its supervisor decides.
            self.node.tell(pending[3], ChildExit(address=address, crashed=True, reason="LeaseHeld",
                                                 parent_epoch=self.node.epoch_of(pending[3])), sender=address)
        self._hand_back(address)

    def _stop(self, effect: StopActor) -> None:
        address = effect.address
        actor = self.node.lookup(address)
        if actor is None:
            self.feed(ActorGone(address, crashed=False, final=effect.final))
            return
        parent = actor.ctx.parent
        if effect.reason == "drain" and parent is not None and self.node.hosts(parent):
            return  # its supervisor stops it
        self.node.request_stop(address, release=effect.final)

    async def _release(self, effect: Release) -> None:
        address = effect.address
        self.checkpoints.save_seen(address, effect.epoch)
        await self.checkpoints.flush(address)
        spec = self._specs.get(address) if effect.mode == "unowned" else None
        # Written back where Redis lost its data (an outage past every lease:
        # this state is the newest there is), unless a newer owner held it since.
        # With it, the msg ids that state includes (or a copy of one is applied again).
        checkpoint = self.checkpoints.load(address) if effect.mode == "unowned" and not effect.superseded else None
        seen = self._seen.handled(address, whole=True) if checkpoint is not None else None
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                ours = await self.leases.release(address, self.me, effect.epoch, mode=effect.mode, spec=spec,
                                                 checkpoint=checkpoint, seen=seen)
        except Exception as exc:  # noqa: BLE001
            log.warning("cluster: %s could not release %s (%r)", self.me, address, exc)
            self.feed(ReleaseFailed(address))
            return
        self.feed(Released(address, ours=ours))

    def _hand_back(self, address: str) -> None:
        # The core no longer holds the address: what was held back, then
        # what waited on the node, goes to routing in this one step, ahead of
        # any later stray (order per address).
        held = self._held_back.pop(address, [])
        # Keep listening until the next owner's claim is announced: what is
        # already on its way to us is forwarded, not dropped.
        waiting = self.node.hand_back(address, keep_listening=True)
        self._specs.pop(address, None)
        self.checkpoints.delete(address)
        self._seen.drop(address)
        entry = self.directory.entry(address)
        if entry is not None and entry[0] == self.me:
            self.directory.forget(address)
        encode = self.node.codec.encode
        items = tuple(encode(env) for env in (*held, *waiting))
        if items:
            self.feed(RouteQueued(address, items))

    async def _adopt(self, dead: str) -> None:
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                adopted = await self.leases.adopt(dead)
        except Exception as exc:  # noqa: BLE001 - retried on schedule
            log.warning("cluster: %s could not adopt %s (%r)", self.me, dead, exc)
            return
        if adopted is None:
            self.feed(Adopted(dead, alive=True))
            return
        for address in adopted:
            self._announce(LeaseChange(address=address, node="", change="unowned"))
        self.feed(Adopted(dead, alive=False, addresses=tuple(adopted)))

    async def _take_leftovers(self) -> None:
        """Place what an earlier process under this node id left held: now
        (it has claimed nothing yet), and once more after its leases had
        time to lapse. Nobody else would: a node restarted under the same
        id within a lease ttl is never seen dead, so nothing adopts its
        predecessor's addresses, which stayed listed as held by it, unowned
        and never placed again (found by the simulation: a counter that
        never came back)."""
        for attempt in range(2):
            try:
                async with asyncio.timeout(self.config.lease_ttl):
                    placed, live = await self.leases.leftovers(self.me)
            except Exception as exc:  # noqa: BLE001 - the next pass, or the sweep of unowned ones
                log.warning("cluster: %s could not look at its leftovers (%r)", self.me, exc)
                placed, live = [], 1
            self._place_leftovers(placed)
            if not live or attempt:
                return
            await asyncio.sleep(self.config.lease_ttl * 1.5)

    def _place_leftovers(self, placed: list[str]) -> None:
        if placed:
            self.node.counters["cluster:leftovers-placed"] += len(placed)
            for address in placed:
                self._announce(LeaseChange(address=address, node="", change="unowned"))
            self.feed(Orphans(tuple(placed)))

    async def _sweep(self) -> None:
        """Adopt what dead members left, place what is unowned, and what
        another process under this node id left when it stopped: two
        processes of one id (a deploy that starts the new one before the
        old one stopped) are never seen dead while either runs, so what the
        stopped one held is nobody's to adopt (found by the simulation:
        counters that never answered again)."""
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                ids = await self.leases.member_ids()
                live = await self.leases.members()
                for node in ids:
                    if node != self.me and node not in live:
                        await self._adopt(node)
                placed, _live = await self.leases.leftovers(self.me)
                unowned = await self.leases.unowned()
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("cluster: %s sweep failed (%r)", self.me, exc)
            return
        self._place_leftovers(placed)
        just_placed = set(placed)
        unowned = [a for a in unowned if a not in just_placed]
        if unowned:
            self.feed(Orphans(tuple(unowned)))

    async def _drain_backlog(self, address: str, epoch: int) -> None:
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                data = await self.backlog.drain(address, me=self.me, epoch=epoch)
        except Exception as exc:  # noqa: BLE001 - marked again on the next route
            log.warning("cluster: %s could not drain the backlog of %s (%r)", self.me, address, exc)
            return
        for env in self._decode_all(data or (), address):
            self.node.dispatch(env)

    async def _reassert(self, effect: Reassert) -> None:
        address = effect.address
        checkpoint = self.checkpoints.load(address)
        # The msg ids that state includes go back in the same atomic step as
        # the state: a checkpoint in Redis without them lets the next owner
        # apply a copy of a message the state already holds (found by the
        # simulation: a counter addition applied twice after a hand-off
        # that followed the write-back).
        window = self._seen.handled(address, whole=True) if checkpoint is not None else None
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                ok = await self.leases.restore(address, self.me, effect.epoch, ttl=self.config.lease_ttl,
                                               spec=self._specs.get(address), checkpoint=checkpoint, seen=window)
        except Exception as exc:  # noqa: BLE001 - the next renewal decides
            log.warning("cluster: %s could not restore %s (%r)", self.me, address, exc)
            self._seen.resend(address)  # not known to be written: the next write sends the whole window
            self.feed(Reasserted(address, None, effect.sent_at))
            return
        if ok:
            # And once more through the address's one ordered writer, behind
            # (and merged with) any write of them queued or under way: an
            # older window's retry landing after the restore would cut ids
            # off; this write goes after it.
            again = self._seen.handled(address, whole=True)
            if again is not None:
                self.checkpoints.save_seen(address, effect.epoch, again)
        self.feed(Reasserted(address, ok, effect.sent_at))

    async def _leave(self) -> None:
        await self._lane.stop()  # no renewal may write the heartbeat again after the leave
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                await self.leases.leave(self.me)
        except Exception as exc:  # noqa: BLE001 - the heartbeat key expires anyway
            log.warning("cluster: %s could not delete its heartbeat (%r)", self.me, exc)
        self._announce(NodeLeft(node=self.me))
        self.node.emit("left", self.node.address)
        self._left.set()
        drained, self._drained = self._drained, []
        for future in drained:
            future.set(None)

    # -- routing --------------------------------------------------------------------------

    def _submit_route(self, to: str, data: bytes) -> None:
        """Queue ``data`` for ``to`` through the ROUTE script, after any
        routed send to ``to`` still queued (the core keeps the order)."""
        self.feed(RouteQueued(to, (data,)))

    async def _send_route(self, to: str, data: bytes) -> None:
        """The core's :class:`SendRoute`: one ROUTE, its outcome, then the
        answer the core waits for before the next one for ``to``."""
        try:
            env = self.node.codec.decode(data)
        except DecodeError:
            self.feed(Routed(to))
            return
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                result = await self.backlog.route(to, data, env.msg_id, me=self.me)
                if result.outcome == "self" and not self.node.hosts(to) and to not in self._claims:
                    # Our node id holds the lease and nothing here hosts the
                    # address: a previous process's lease (this node was
                    # restarted under its id). The next owner drains it;
                    # refusing it lost the message.
                    result = await self.backlog.route(to, data, env.msg_id, me=self.me, append=True)
        except Exception as exc:  # noqa: BLE001 - Redis away: the core keeps the order and sends it again
            log.debug("cluster: route to %s failed (%r); retrying", to, exc)
            self.feed(RouteFailed(to))
            return
        self._routed(env, result.outcome, result.holder, result.epoch)
        self.feed(Routed(to))

    def _routed(self, env: Envelope, outcome: str, holder: str, epoch: int) -> None:
        to = env.to
        log.debug("cluster: %s routed %s for %s: %s %s", self.me, env.msg_id, to, outcome, holder)
        if outcome == "published":
            self._set_owner(to, holder, epoch)
        elif outcome == "backlogged":
            self.node.counters["cluster:backlogged"] += 1
            if not holder:
                self.directory.forget(to)
            self.node.emit("backlogged", to, detail={"kind": env.kind, "holder": holder})
        elif outcome == "full":
            self.node._refuse(env, "backlog-full")
        elif outcome == "self":
            if self.node.hosts(to):
                self.node.dispatch(env)
            else:
                self.node._refuse(env, "not-hosted")

    def _refuse_bytes(self, data: bytes, reason: str) -> None:
        try:
            env = self.node.codec.decode(data)
        except DecodeError:
            return
        self.node._refuse(env, reason)

    # -- handled msg ids ----------------------------------------------------------------

    def _persist_seen(self) -> None:
        """Loop thread, each tick (at most once a heartbeat interval): queue
        a write of the handled ids that no checkpoint carried (an actor that
        checkpoints less often than it handles messages, or never). The
        message being handled is included only once its actor is parked;
        an address with a write under way waits for the next round (the
        ids of a message are never written before the state it led to)."""
        now = self.node.clock.now()
        if now < self._seen_due:
            return
        self._seen_due = now + self.config.heartbeat_interval
        for address, current in self._seen.unwritten():
            lease = self.state.leases.get(address)
            if lease is None or lease.phase is not Phase.ACTIVE or self.checkpoints.writing(address):
                continue
            parked = False
            if current is not None:
                actor = self.node.lookup(address)
                parked = actor is not None and _parked(actor)
            seen = self._seen.take(address, with_current=parked)
            if seen is not None:
                self.checkpoints.save_seen(address, lease.epoch, seen)

    def _decode_all(self, items: Any, address: str) -> list[Envelope]:
        out = []
        for data in items:
            try:
                out.append(self.node.codec.decode(data))
            except DecodeError as exc:
                self.node.dead_letter(exc.reason, address, "", detail=exc.detail)
        return out

    # -- fencing's authority ------------------------------------------------------------

    @confined
    def look_up(self, address: str) -> None:
        """Fencing asks which epoch was issued for ``address``
        (:class:`actors.runtime.fencing.EpochAuthority`); answered in a batch."""
        first = not self._questions
        self._questions.add(address)
        if first:
            self.call_soon(self._start_answering)

    def _start_answering(self) -> None:
        self._spawn_task(self._answer_questions())

    async def _answer_questions(self) -> None:
        await asyncio.sleep(0)  # let this turn's other questions join the batch
        addresses, self._questions = sorted(self._questions), set()
        if not addresses:
            return
        deadline = self.node.clock.now() + self.config.lease_ttl
        delay = 0.02
        while True:
            try:
                if self._client is None:
                    raise HuddleError("the cluster has not booted yet")
                async with asyncio.timeout(self.config.lease_ttl):
                    found = await self.leases.issued(addresses)
                break
            except Exception as exc:  # noqa: BLE001 - Redis away: ask again until the deadline
                if self.node.clock.now() + delay > deadline or self._closed:
                    log.warning("cluster: %s could not verify epochs of %d addresses (%r)", self.me,
                                len(addresses), exc)
                    for address in addresses:
                        self.node.fencing.resolve(address, UNKNOWN_ISSUE)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        self.node.counters["cluster:epochs-verified"] += len(addresses)
        for address in addresses:
            epoch, holder, live = found[address]
            self.node.fencing.resolve(address, Issued(epoch=epoch, holder=holder, live=live))

    def _on_issued(self, address: str, issued: Issued) -> None:
        """What the store said about ``address`` (on the loop): the owner
        table and the core learn the truth, whoever asked."""
        if not (issued.known and issued.live and issued.holder):
            return
        self.directory.learn(address, issued.holder, issued.epoch)
        self._resolve_ensure(address, issued.holder)
        self.call_soon(self.feed, LeaseSeen(LeaseChange(address=address, node=issued.holder, change="acquired",
                                                        epoch=issued.epoch)))

    # -- sys:nodes --------------------------------------------------------------------------

    def _on_nodes(self, env: Envelope) -> None:
        """On the loop: everything said on ``sys:nodes``, in order."""
        message = env.message
        if isinstance(message, LeaseChange):
            if message.change in ("acquired", "restored"):
                # A cue, not a proof: fencing holds the address's envelopes
                # from here and asks the store (answered in _on_issued).
                self.node.fencing.announced(message.address, message.epoch)
                return
            self.directory.forget(message.address, up_to=message.epoch)
            self.call_soon(self.feed, LeaseSeen(message))
        elif isinstance(message, NodeHeartbeat):
            self.call_soon(self.feed, HeartbeatSeen(message))
        elif isinstance(message, NodeLeft):
            self.call_soon(self.feed, NodeLeftSeen(message.node))

    def _on_own_event(self, event: Event) -> None:
        """On the emitting thread (the loop, for the bus's): the bus came
        back after a drop, so what was said on ``sys:nodes`` meanwhile was
        never heard (pub/sub keeps nothing)."""
        if event.event == "bus-resubscribed" and event.address == self.node.address and not self._closed:
            self.call_soon(self.feed, AnnouncementsMissed())

    def _announce(self, message: Message) -> None:
        try:
            self.node.transport.publish(self._nodes_channel, self.node.codec.encode(
                Envelope(to=SYS_NODES, message=message, sender=self.node.address)))
        except HuddleError as exc:
            log.warning("cluster: %s could not announce %s (%r)", self.me, message.KIND, exc)

    def _set_owner(self, address: str, node: str, epoch: int) -> None:
        """``node`` holds ``address`` under ``epoch``, as a Lua script's
        answer says: the directory learns it, and (separately) fencing's
        floor rises to it, since a script's answer is the authority's word.
        What only an announcement or a cached guess says goes to the
        directory alone."""
        if epoch:
            self.node.observe_epoch(address, epoch)
        self.directory.learn(address, node, epoch)

    def _resolve_ensure(self, address: str, node: str) -> None:
        waiters = self._ensure_waiters.pop(address, [])
        for future in waiters:
            future.set(node)


def node_control_address(node_id: str) -> str:
    """Where a node takes :class:`DrainNode` and :class:`ClusterStatus`."""
    return f"{node_address(node_id)}/cluster"
