"""The renewal lane: lease renewals on a thread, an event loop and a Redis
connection of their own.

Why its own loop. Renewals carry a node's heartbeat and keep its leases;
a renewal that comes late loses them, and every actor behind them moves.
On the node's loop a renewal waits its turn behind whatever else is ready
to run there: a survivor activating hundreds of actors, their sockets and
checkpoint loads can keep that loop busy for longer than a lease lives.
Here nothing but renewals waits on this loop, so a renewal is late only by
what the interpreter lock costs (milliseconds), never by the node's work.

What it renews is the core's decision, not the lane's. The cluster core
says, every heartbeat, which leases it holds (:meth:`RenewalLane.plan`,
called on the node's loop with the heartbeat it announces). Claims run on
this loop too, on a connection of their own (:meth:`RenewalLane.claim`):
a lease won is renewed from the next renewal on, before the node's loop has
even read the answer, so a lease claimed during a busy stretch does not
run out while the answer waits. The claims asked for while a round of them
is out go together in the next round (one round trip per shard however
the node's loop asked for them: a placement of hundreds of actors, asked
one message at a time, made hundreds of calls at once, which took longer
than a lease's validity and more connections than a shard's pool has). Until a plan includes it, such a lease is
renewed for at most ``stall_limit`` seconds (a claim whose answer the core
never takes is not kept alive for ever). Each answer goes back
to the node's loop as a :class:`~actors.cluster.machine.Renewed` event
carrying the leases it renewed and when it was sent; the core applies the
newest answer only and counts a lease valid from that send time, exactly
as before. The shell takes the answers that are waiting before every tick
(:meth:`RenewalLane.take`), so a tick that comes after a busy stretch never
fences a lease that a waiting answer renewed; and until the core has
applied an answer, :meth:`RenewalLane.confirms` says what it renewed (the
same rule: valid until its send time plus the validity), for the checks
made before a message is delivered or sent.

A loop that is stuck is not a loop that is busy. The lane renews only
while the node's loop has shown it runs (the shell stamps
:meth:`RenewalLane.loop_alive` every tick) within ``stall_limit`` seconds:
a node whose loop hangs (a deadlock, an endless handler) stops renewing and
its leases expire, so the fleet moves its actors instead of waiting for a
node that serves nothing. A process that is paused (SIGSTOP, a long GC)
pauses this thread too: its leases expire and it is fenced as before.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
import redis.asyncio as aioredis
from bus.shard_client import ShardClient
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.cluster.machine import ClusterConfig, Input, RenewFailed, Renewed
from bus.cluster.leases import ClaimResult, LeaseStore
from bus.cluster.sharded_store import lease_store_for
from bus.store_client import store_client
from bus.envelope import Codec
from bus.loop import IoClosed, LoopThread

__all__ = ["RenewalLane", "RenewalPlan"]

log = logging.getLogger("huddle.cluster.renewals")


#: Claims one asker asked for, and the future its answers go to.
_ClaimRequest = tuple[list[tuple[str, int, bytes | None]], "asyncio.Future[list[ClaimResult]]"]


@dataclass(frozen=True, slots=True)
class RenewalPlan:
    """What one renewal writes: the leases (address -> epoch), this node's
    membership body and the heartbeat announcement on ``sys:nodes``."""

    leases: Mapping[str, int]
    node_body: bytes
    heartbeat: bytes


class RenewalLane:
    """Renew every ``config.heartbeat_interval`` from a thread of its own
    (see the module's docstring). Each answer (:class:`Renewed` or
    :class:`RenewFailed`) waits for :meth:`take`; ``wake`` is called on the
    lane's thread after each and must only schedule a :meth:`take` on the
    node's loop."""

    def __init__(self, redis_url: str, me: str, config: ClusterConfig, *, namespace: str, codec: Codec,
                 wake: Callable[[], None], new_era: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic, loop: LoopThread | None = None) -> None:
        """``loop``: the loop the lane runs on (default: a new loop on a
        thread of its own; a simulated world gives its one loop, where the
        lane keeps its own connection and order but not a thread)."""
        self.me = me
        self.config = config
        self._redis_url = redis_url
        self._namespace = namespace
        self._codec = codec
        self._wake_node = wake
        self._answers: collections.deque[Input] = collections.deque()
        self._new_era = new_era
        self._clock = clock
        self._thread = loop or LoopThread(name=f"huddle-renew-{me}")
        self._lock = threading.Lock()
        self._plan: RenewalPlan | None = None
        #: leases won by a claim that no plan includes yet: address -> (epoch, won at)
        self._added: dict[str, tuple[int, float]] = {}
        #: address -> (epoch, send time) of the newest answer that renewed it
        self._renewed: dict[str, tuple[int, float]] = {}
        self._alive_at = clock()
        self._stopped = False
        self._task: concurrent.futures.Future[None] | None = None
        self._planned: asyncio.Event | None = None
        self._claims: LeaseStore | None = None
        #: claims asked for and not sent yet (the next round's), and the round sending
        self._claim_queue: list[_ClaimRequest] = []
        self._claimer: asyncio.Future[None] | None = None
        #: set to renew before the next heartbeat is due; when that is
        self._renew_soon: asyncio.Event | None = None
        self._next_renewal_at = -math.inf
        #: Seconds the last renewal took (a gauge), renewals skipped because
        #: the node's loop was stuck, renewals that failed.
        self.latency_s: float | None = None
        self.skipped = 0
        self.failed = 0
        self.renewals = 0

    # -- from the node's loop -------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._thread.loop)

    def plan(self, plan: RenewalPlan) -> None:
        """The leases to renew from now on (and those won by a claim that
        the core has not taken yet)."""
        with self._lock:
            self._plan = plan
            for address in [a for a in self._added if a in plan.leases]:
                del self._added[address]
        self._wake()

    async def claim(self, claims: list[tuple[str, int, bytes | None]]) -> list[ClaimResult]:
        """Run :meth:`~bus.cluster.leases.LeaseStore.claim_many` on the
        lane's loop (awaited on the node's loop), in the next round of
        claims. A lease won is valid from when that round went out
        (:meth:`renewed_at`) and renewed from the next renewal on, or at
        once if that one would come too late. Raises as the claim did, or
        :class:`TimeoutError` past a lease's ttl."""
        future = asyncio.run_coroutine_threadsafe(self._claim(claims), self._thread.loop)
        return await asyncio.wrap_future(future)

    def take(self) -> list[Input]:
        """The answers that arrived since the last call, oldest first."""
        answers = []
        while self._answers:
            answers.append(self._answers.popleft())
        return answers

    def renewed_at(self, address: str, epoch: int) -> float:
        """When the newest renewal that extended ``address`` under
        ``epoch`` was sent (-inf: none did). Any thread."""
        entry = self._renewed.get(address)
        return entry[1] if entry is not None and entry[0] == epoch else -math.inf

    def confirms(self, address: str, epoch: int, now: float) -> bool:
        """A renewal extended ``address`` under ``epoch`` recently enough
        that the lease is still valid by it (any thread)."""
        return now < self.renewed_at(address, epoch) + self.config.validity

    def loop_alive(self) -> None:
        """The node's loop runs (called from it, every tick)."""
        self._alive_at = self._clock()

    async def stop(self) -> None:
        """Stop renewing; returns once no renewal is in flight any more
        (so a leave is never followed by a renewal that writes the
        heartbeat again). Awaited on the node's loop."""
        self._stopped = True
        task = self._task
        if task is None or self._thread.closed:
            return
        try:
            self._thread.loop.call_soon_threadsafe(task.cancel)
        except (IoClosed, RuntimeError):
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(task), self.config.lease_ttl)
        except (asyncio.CancelledError, concurrent.futures.CancelledError, TimeoutError):
            pass
        except Exception:  # noqa: BLE001 - stopping goes on
            log.debug("renewals: %s ended with an error", self.me, exc_info=True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the lane's thread (from any thread but its own)."""
        self._stopped = True
        self._thread.close(timeout)

    # -- on the lane's own loop ------------------------------------------------------

    def _wake(self) -> None:
        planned = self._planned
        if planned is not None:
            try:
                self._thread.loop.call_soon_threadsafe(planned.set)
            except (IoClosed, RuntimeError):
                pass

    async def _run(self) -> None:
        self._planned = asyncio.Event()
        self._renew_soon = asyncio.Event()
        client = self._client()
        self._claims = lease_store_for(self._client(), namespace=self._namespace, codec=self._codec)
        store = lease_store_for(client, namespace=self._namespace, codec=self._codec)
        try:
            try:  # the first claim and renewal do not wait for connections and scripts
                async with asyncio.timeout(self.config.lease_ttl):
                    await asyncio.gather(store.prepare(), self._claims.prepare())
            except Exception as exc:  # noqa: BLE001 - Redis not up yet: the first calls connect
                log.debug("renewals: %s could not prepare its connections (%r)", self.me, exc)
            while self._plan is None and not self._stopped:
                await self._planned.wait()
            next_at = self._clock()
            while not self._stopped:
                await self._renew_once(store)
                next_at = max(next_at + self.config.heartbeat_interval, self._clock())
                self._next_renewal_at = next_at
                try:
                    async with asyncio.timeout(max(0.0, next_at - self._clock())):
                        await self._renew_soon.wait()
                    next_at = self._clock()  # a claim's win needs it now (_claim_rounds)
                except TimeoutError:
                    pass
                self._renew_soon.clear()
        finally:
            await store.aclose()
            await client.aclose()
            await self._claims.client.aclose()

    def _client(self) -> aioredis.Redis | ShardClient:
        return store_client(
            self._redis_url, max_connections=1, timeout=None,
            # No socket timeout: every call here has its own deadline (see
            # the main lane's client in actors.cluster.shell).
            socket_connect_timeout=self.config.lease_ttl,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])

    async def _claim(self, claims: list[tuple[str, int, bytes | None]]) -> list[ClaimResult]:
        """Joins the next round (:meth:`_claim_rounds`) and waits for it."""
        request: _ClaimRequest = (claims, asyncio.get_running_loop().create_future())
        self._claim_queue.append(request)
        if self._claimer is None or self._claimer.done():
            self._claimer = asyncio.ensure_future(self._claim_rounds())
        return await request[1]

    async def _claim_rounds(self) -> None:
        """One round of claims out at a time, each with every claim asked
        for meanwhile (in the order asked); each asker gets its own part
        of the answers, or the round's error."""
        while self._claim_queue:
            while self._claims is None:
                await asyncio.sleep(0)  # the lane's loop has not set up its connections yet
            batch = list(self._claim_queue)
            self._claim_queue.clear()
            claims = [claim for asked, _future in batch for claim in asked]
            sent_at = self._clock()
            try:
                async with asyncio.timeout(self.config.lease_ttl):
                    results = await self._claims.claim_many(claims, self.me, ttl=self.config.lease_ttl)
            except Exception as exc:  # noqa: BLE001 - each asker handles it
                for _asked, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:
                for _asked, future in batch:
                    future.cancel()
                raise
            now = self._clock()
            won = {address: result.epoch for (address, _floor, _spec), result in zip(claims, results, strict=True)
                   if result.won}
            with self._lock:
                for address, epoch in won.items():
                    self._added[address] = (epoch, now)
            if won:
                # A won lease counts from when its claim went out (not from
                # when it was asked for: the time it waited here for the
                # round before is not the lease's), as a renewal's from
                # when it was sent...
                self._renewed = {**self._renewed, **{a: (e, sent_at) for a, e in won.items()}}
                # ...and is renewed before that runs out: at once if the
                # next renewal would answer too late (a slow round).
                next_renewal = max(self._next_renewal_at, now)  # or now, if that one is overdue
                if sent_at + self.config.validity < next_renewal + self.config.heartbeat_interval \
                        and self._renew_soon is not None:
                    self._renew_soon.set()
            start = 0
            for asked, future in batch:
                if not future.done():
                    future.set_result(results[start:start + len(asked)])
                start += len(asked)

    async def _renew_once(self, store: LeaseStore) -> None:
        sent_at = self._clock()
        if sent_at - self._alive_at > self.config.stall_limit:
            self.skipped += 1
            log.warning("renewals: %s skipped: the node's loop has not run for %.1fs", self.me,
                        sent_at - self._alive_at)
            return
        with self._lock:
            plan = self._plan
            assert plan is not None
            for address in [a for a, (_e, at) in self._added.items() if sent_at - at > self.config.stall_limit]:
                del self._added[address]  # won, but never taken by the core
            leases = {**plan.leases, **{a: e for a, (e, _at) in self._added.items()}} if self._added else plan.leases
        try:
            async with asyncio.timeout(self.config.lease_ttl):
                result = await store.renew(self.me, ttl=self.config.lease_ttl, node_body=plan.node_body,
                                           heartbeat=plan.heartbeat, new_era=self._new_era(), leases=leases)
        except Exception as exc:  # noqa: BLE001 - the leases run out by themselves
            self.failed += 1
            log.warning("renewals: %s could not renew (%r)", self.me, exc)
            self._answer(RenewFailed(sent_at))
            return
        self.latency_s = self._clock() - sent_at
        self.renewals += 1
        held = leases
        if result.unanswered:  # their shard did not answer: not renewed as far as anyone knows
            leases = {a: e for a, e in leases.items() if a not in set(result.unanswered)}
        with self._lock:
            # What is renewed still: an address neither this renewal, the
            # plan now nor a claim since holds is forgotten (a node would
            # otherwise keep every address it ever held).
            plan = self._plan
            current = {*held, *self._added, *(plan.leases if plan is not None else ())}
        renewed = {a: entry for a, entry in self._renewed.items() if a in current}
        for address, epoch in leases.items():
            if address in result.lost:
                renewed.pop(address, None)
            else:
                renewed[address] = (epoch, sent_at)
        self._renewed = renewed  # one assignment: readers on other threads see the old or the new map
        if result.lost:
            with self._lock:
                for address in result.lost:
                    self._added.pop(address, None)
        self._answer(Renewed(sent_at, result.era, result.lost, result.backlogged, leases=dict(leases),
                             reset=frozenset(result.reset)))

    def _answer(self, event: Input) -> None:
        self._answers.append(event)
        try:
            self._wake_node()
        except Exception:  # noqa: BLE001 - the node's loop is closed: the node is gone
            log.debug("renewals: %s could not wake the node's loop", self.me)
