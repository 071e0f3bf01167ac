"""Renewals never starve: a survivor taking over hundreds of addresses,
with everything but its renewals slowed down, keeps every lease it holds;
a node whose loop is busy for longer than a lease lives keeps its leases
too; a node whose loop is stuck past the stall limit lets them go.

The seam is the survivor's main lane (adoption, sweeps, epoch look-ups,
checkpoint writes, backlog drains): first stalled (every command waits,
holding its connection) for longer than a lease lives, then slow (each
command waits a while before it is sent, as a Redis busy with a burst of
large checkpoints would make it). Renewals, and the claims whose wins they
renew, run on the renewal lane's own loop and connections, so nothing of
that may reach them. Shown by events and counters, never by timing."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from actors.runtime.builtin import CounterAdd, CounterGet
from actors.cluster.shell import CLAIM_BATCH

from tests.waiting import wait_until

from .conftest import DEADLINE, FAST, Rig

pytestmark = pytest.mark.integration

ADDRESSES = 480
#: Seconds each command on the survivor's main lane waits before it is sent
#: while the survivor takes over (slow checkpoint loads).
MAIN_LANE_DELAY = 0.1
#: Leases long enough that this in-process fleet (every node in one
#: interpreter, on a busy 2-core machine) decides nothing by timing: what is
#: under test here is that a stalled main connection never delays a renewal.
CONFIG = dataclasses.replace(FAST, heartbeat_interval=0.4, lease_ttl=4.0)
#: Short leases for the loop tests: the stall is several lease lifetimes.
SHORT = dataclasses.replace(FAST, heartbeat_interval=0.2, lease_ttl=1.0, loop_stall_limit=30.0)


class MainLane:
    """The survivor's main lane: stalled (every command waits, holding its
    connection, until :meth:`release`), then slow."""

    def __init__(self) -> None:
        self.stalled = False
        self.delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None

    def stall(self) -> None:
        self.stalled = True

    def release(self, delay: float) -> None:
        self.delay = delay
        self.stalled = False
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)

    async def turn(self) -> None:
        if self.stalled:
            if self._released is None:
                self._loop, self._released = asyncio.get_running_loop(), asyncio.Event()
            await self._released.wait()
        if self.delay:
            await asyncio.sleep(self.delay)

    def connection_class(self) -> type[aioredis.Connection]:
        lane = self

        class Connection(aioredis.Connection):
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                await lane.turn()
                await super().send_packed_command(command, check_health)

        return Connection


def test_a_survivor_taking_over_hundreds_of_addresses_on_a_stalled_then_slow_main_lane_keeps_every_lease(
        rig: Rig) -> None:
    survivor = rig.add("a", start=False, config=CONFIG)
    lane = MainLane()
    connect = survivor._connect

    def slowed(max_connections: int) -> aioredis.Redis:
        made = connect(max_connections)
        made.connection_pool.connection_class = lane.connection_class()
        return made

    survivor._connect = slowed  # type: ignore[method-assign]
    rig.nodes["a"].start()
    assert survivor.start(DEADLINE)
    rig.add("b", config=CONFIG)
    client = rig.add("client", kinds=(), config=CONFIG)
    addresses = [f"counter:lane-{i}" for i in range(ADDRESSES)]
    futures = {a: client.ensure(a) for a in addresses}
    owners = {a: f.get(timeout=60) for a, f in futures.items()}
    adds = [rig.nodes["client"].ask(a, CounterAdd(n=1, tag="before"), timeout=60) for a in addresses]
    for future in adds:
        assert future.get(timeout=61) == 1
    moved = [a for a in addresses if owners[a] == "b"]
    kept = [a for a in addresses if owners[a] == "a"]
    assert len(moved) >= 150 and kept  # hundreds to take over, and leases of its own to keep

    node = rig.nodes["a"]
    config = survivor.config
    batches_before = node.counters["cluster:claim-batches"]
    # Nothing on the main lane gets through: the dead node is noticed, its
    # adoption, sweeps, epoch look-ups and checkpoint writes all wait.
    # Renewals must go on regardless, well past a lease's lifetime.
    lane.stall()
    rig.crash("b")
    rig.events.wait(event="node-dead", address="node:b", node="a")
    renewed = node.counters["cluster:renewed"]
    wanted = math.ceil(2 * config.lease_ttl / config.heartbeat_interval)
    wait_until(lambda: node.counters["cluster:renewed"] >= renewed + wanted,
               f"{wanted} renewals while the main lane is stalled", timeout=DEADLINE + 2 * config.lease_ttl)
    assert node.counters["cluster:renew-failed"] == 0
    lane.release(MAIN_LANE_DELAY)
    rig.events.wait_until(
        lambda: {e.address for e in rig.events.items if e.event == "started" and e.node == "a"} >= set(moved),
        f"all {len(moved)} addresses of b started on a", timeout=90)

    # Every lease the survivor held or took is still its own: no renewal
    # failed, none was missed, none lost.
    assert rig.events.matching(event="lease-lost", node="a") == []
    assert node.counters["cluster:renew-failed"] == 0
    assert set(kept) | set(moved) <= set(survivor.state.held())
    # Batched: a few claim round trips for hundreds of addresses (the claims
    # the core asks for in one loop turn go together, CLAIM_BATCH at most).
    batches = node.counters["cluster:claim-batches"] - batches_before
    assert math.ceil(len(moved) / CLAIM_BATCH) <= batches <= len(moved) / 8
    # And they came back from their checkpoints.
    asks = [rig.nodes["client"].ask(a, CounterGet(), timeout=60) for a in moved[:40]]
    assert all(f.get(timeout=61)["count"] == 1 for f in asks)


def block_loop(node: Any, seconds: float) -> threading.Event:
    """Run a callback on ``node``'s loop that keeps it busy for ``seconds``
    (as a burst of activations would); the event is set when it returns."""
    done = threading.Event()

    def busy() -> None:
        threading.Event().wait(seconds)  # the loop thread does nothing else meanwhile
        done.set()

    node.io.call_soon(busy)
    return done


def test_a_node_whose_loop_is_busy_for_several_lease_lifetimes_keeps_every_lease(rig: Rig) -> None:
    busy = rig.add("a", config=SHORT)
    other = rig.add("b", config=SHORT)
    addresses = [f"counter:busy-{i}" for i in range(40)]
    owners = {a: f.get(timeout=60) for a, f in {a: other.ensure(a) for a in addresses}.items()}
    mine = [a for a in addresses if owners[a] == "a"]
    assert mine
    node = rig.nodes["a"]
    # What it holds when the loop gets busy: every lease of its own known to
    # its core and renewed once since (a claim answered while the loop is
    # busy is not known to it until the loop runs again).
    wait_until(lambda: set(mine) <= set(busy.state.held()), "a's claims applied", timeout=DEADLINE)
    renewed = node.counters["cluster:renewed"]
    wait_until(lambda: node.counters["cluster:renewed"] >= renewed + 2, "a renewal of them", timeout=DEADLINE)
    renewed = node.counters["cluster:renewed"]
    stall = 4 * SHORT.lease_ttl
    done = block_loop(node, stall)
    assert done.wait(stall + DEADLINE)
    # Renewals went on from the lane's own loop: once the node's loop runs
    # again it applies them; nothing expired, nobody declared it dead.
    wait_until(lambda: node.counters["cluster:renewed"] >= renewed + stall / SHORT.heartbeat_interval / 2,
               "the renewals made while the loop was busy, applied", timeout=DEADLINE)
    assert rig.events.matching(event="lease-lost", node="a") == []
    assert rig.events.matching(event="node-dead", address="node:a") == []
    assert set(mine) <= set(busy.state.held())
    assert busy._lane.skipped == 0


def test_a_node_whose_loop_is_stuck_past_the_stall_limit_lets_its_leases_go(rig: Rig) -> None:
    stuck_config = dataclasses.replace(SHORT, loop_stall_limit=1.0)
    stuck = rig.add("a", config=stuck_config)
    other = rig.add("b", config=SHORT)
    addresses = [f"counter:stuck-{i}" for i in range(40)]
    owners = {a: f.get(timeout=60) for a, f in {a: other.ensure(a) for a in addresses}.items()}
    mine = [a for a in addresses if owners[a] == "a"]
    assert mine
    done = block_loop(rig.nodes["a"], 4 * SHORT.lease_ttl + stuck_config.stall_limit)
    # A loop that serves nothing must not keep what it holds: the lane stops
    # renewing, the other node sees it dead and takes its addresses.
    rig.events.wait(event="node-dead", address="node:a", node="b", timeout=DEADLINE)
    rig.events.wait_until(
        lambda: {e.address for e in rig.events.items if e.event == "started" and e.node == "b"} >= set(mine),
        f"all {len(mine)} addresses of a started on b", timeout=60)
    assert stuck._lane.skipped > 0
    assert done.wait(DEADLINE + 4 * SHORT.lease_ttl + stuck_config.stall_limit)


def test_a_lease_won_on_the_lane_is_renewed_until_the_core_takes_it_and_no_longer_than_the_stall_limit(
        rig: Rig) -> None:
    """A claim's win is renewed by the lane before the node's loop has read
    the answer; a win the core never takes is let go after the stall limit."""
    config = dataclasses.replace(SHORT, loop_stall_limit=3 * SHORT.lease_ttl)
    cluster = rig.add("a", config=config)
    lane, node = cluster._lane, rig.nodes["a"]
    address = "counter:won-on-the-lane"

    def lease() -> tuple[str, int] | None:
        return node.io.submit(cluster.leases.lease(address), tracked=False).result(timeout=DEADLINE)

    [result] = node.io.submit(lane.claim([(address, 0, None)]), tracked=False).result(timeout=DEADLINE)
    assert result.won and lease() == ("a", result.epoch)
    # The core was never told: only the lane keeps it, for longer than a lease lives.
    renewals = lane.renewals
    wait_until(lambda: lane.renewals >= renewals + 2 * SHORT.lease_ttl / SHORT.heartbeat_interval,
               "renewals for two lease lifetimes", timeout=DEADLINE)
    assert lease() == ("a", result.epoch) and address not in cluster.state.leases
    assert lane.confirms(address, result.epoch, time.monotonic())
    # Past the stall limit it is dropped, and Redis lets it go.
    wait_until(lambda: lease() is None, "the untaken lease expired", timeout=DEADLINE + config.stall_limit)


def test_claims_asked_for_at_once_go_together_and_each_asker_gets_its_own_answers(rig: Rig) -> None:
    """A placement asks for its claims one message at a time: the lane
    sends those asked for while a round is out in the next round (the
    number of rounds, not of askers, is what Redis sees), and each asker
    gets the answers to its own claims, in its order."""
    cluster = rig.add("a", config=SHORT)
    lane, node = cluster._lane, rig.nodes["a"]
    store = lane._claims
    assert store is not None
    rounds: list[int] = []
    claim_many = store.claim_many

    async def counted(claims: Any, me: str, *, ttl: float) -> Any:
        rounds.append(len(claims))
        return await claim_many(claims, me, ttl=ttl)

    store.claim_many = counted  # type: ignore[method-assign]
    node.io.submit(cluster.leases.assume_settled(), tracked=False).result(timeout=DEADLINE)  # a new Redis: no wait
    addresses = [f"counter:together-{i}" for i in range(120)]

    async def ask_all() -> list[list[Any]]:
        askers = [lane.claim([(a, 0, None)]) for a in addresses[:100]]
        askers.append(lane.claim([(a, 0, None) for a in addresses[100:]]))
        return await asyncio.gather(*askers)

    answers = node.io.submit(ask_all(), tracked=False).result(timeout=DEADLINE)
    assert sum(rounds) == len(addresses)
    assert len(rounds) < 25, rounds  # together, not one call per asker
    assert [len(a) for a in answers] == [1] * 100 + [20]
    got = [result for answer in answers for result in answer]
    assert all(result.won for result in got)
    # Each answer is its own claim's: the epoch its address's lease holds.
    async def leases() -> list[Any]:
        return list(await asyncio.gather(*(cluster.leases.lease(a) for a in addresses)))

    held = node.io.submit(leases(), tracked=False).result(timeout=DEADLINE)
    assert held == [("a", result.epoch) for result in got]
    assert len({result.epoch for result in got}) == len(addresses)


class LaneClock:
    """The monotonic clock plus an offset a test moves (as if a call took that long)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


#: Heartbeats far apart (a renewal the test did not cause would come a
#: minute later, past every deadline here) and a loop that never counts as stuck.
SLOW_BEAT = dataclasses.replace(FAST, heartbeat_interval=60.0, lease_ttl=240.0, loop_stall_limit=10_000.0)


@pytest.fixture
def lane_alone(redis_server: Any) -> Any:
    """A renewal lane of node "solo" on its own (no node, no core): its
    plan renews nothing but the heartbeat; Redis's data set settled."""
    yield from _lane_alone(redis_server.url, SLOW_BEAT)


@pytest.fixture
def quick_lane_alone(redis_server: Any) -> Any:
    """The same with heartbeats 0.2 s apart."""
    yield from _lane_alone(redis_server.url, SHORT)


def _lane_alone(url: str, config: Any) -> Any:
    from actors.cluster.renewals import RenewalLane, RenewalPlan
    from bus.cluster.leases import LeaseStore
    from bus.envelope import Codec

    namespace = f"lane{time.monotonic_ns()}:"
    clock = LaneClock()
    lane = RenewalLane(url, "solo", config, namespace=namespace, codec=Codec(), wake=lambda: None,
                       new_era=lambda: "era", clock=clock)

    async def settle() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            await LeaseStore(client, namespace=namespace).assume_settled()
        finally:
            await client.aclose()

    asyncio.run(settle())
    lane.start()
    lane.plan(RenewalPlan(leases={}, node_body=b"body", heartbeat=b"beat"))
    wait_until(lambda: lane.renewals >= 1, "the first renewal (a member now)", timeout=DEADLINE)
    try:
        yield lane, clock
    finally:
        asyncio.run(lane.stop())
        lane.close()


def _slowed(lane: Any, clock: LaneClock, took: float, gate: threading.Event | None = None) -> list[float]:
    """Make each claim round take ``took`` seconds on the lane's clock (and
    wait for ``gate`` first); returns the clock at each round's start."""
    store = lane._claims
    claim_many = store.claim_many
    started: list[float] = []

    async def slow(claims: Any, me: str, *, ttl: float) -> Any:
        started.append(clock())
        if gate is not None:
            while not gate.is_set():
                await asyncio.sleep(0.005)
        clock.offset += took
        return await claim_many(claims, me, ttl=ttl)

    store.claim_many = slow
    return started


def test_a_claim_counts_from_when_its_round_went_out_not_from_when_it_was_asked_for(lane_alone: Any) -> None:
    """A claim asked for while a round is out waits for the next round:
    its lease counts from that round's start (Redis starts its TTL after
    it), not from when it was asked for, or the wait would be taken from
    its validity."""
    lane, clock = lane_alone
    gate = threading.Event()
    started = _slowed(lane, clock, took=100.0, gate=gate)

    async def both() -> tuple[list[Any], list[Any], float]:
        first = asyncio.ensure_future(lane.claim([("counter:first", 0, None)]))
        while not started:
            await asyncio.sleep(0.005)
        asked_at = clock()
        second = asyncio.ensure_future(lane.claim([("counter:second", 0, None)]))
        await asyncio.sleep(0.05)  # the second is queued behind the first round (it is gated)
        gate.set()
        return await first, await second, asked_at

    [a], [b], asked_at = asyncio.run(both())
    assert a.won and b.won and len(started) == 2
    assert lane.renewed_at("counter:first", a.epoch) <= started[0] < asked_at
    assert asked_at + 100.0 <= lane.renewed_at("counter:second", b.epoch) <= started[1]


def test_a_lease_won_by_a_round_too_slow_for_the_next_renewal_is_renewed_at_once(lane_alone: Any) -> None:
    """A round that took most of a lease's validity: the next renewal, a
    heartbeat away, would answer after the won lease ran out, so the lane
    renews at once (the renewals here are a minute apart: only this can
    renew it within the test's deadline)."""
    lane, clock = lane_alone
    _slowed(lane, clock, took=SLOW_BEAT.validity - 1.0)
    renewals = lane.renewals
    [won] = asyncio.run(lane.claim([("counter:slow", 0, None)]))
    assert won.won
    wait_until(lambda: lane.renewals > renewals, "a renewal at once", timeout=DEADLINE)
    assert lane.renewed_at("counter:slow", won.epoch) > clock() - 1.0
    assert lane.confirms("counter:slow", won.epoch, clock())


def test_a_lease_won_by_a_quick_round_waits_for_the_next_renewal(lane_alone: Any) -> None:
    """The same on a quick round: no renewal before the heartbeat is due."""
    lane, clock = lane_alone
    _slowed(lane, clock, took=0.0)
    renewals = lane.renewals
    [won] = asyncio.run(lane.claim([("counter:quick", 0, None)]))
    assert won.won and lane.confirms("counter:quick", won.epoch, clock())
    assert lane.renewals == renewals and not lane._renew_soon.is_set()


def test_a_lane_loads_the_claim_and_renewal_scripts_before_its_first_claim(fresh_redis: Any) -> None:
    """The first claim (a placement's) is not the one that connects and
    loads the script: the lane does it as it starts."""
    import redis

    from actors.cluster.renewals import RenewalLane
    from bus.cluster.leases import CLAIM, RENEW
    from bus.envelope import Codec

    lane = RenewalLane(fresh_redis.url, "solo", SLOW_BEAT, namespace="prep:", codec=Codec(), wake=lambda: None,
                       new_era=lambda: "era")
    raw = redis.Redis.from_url(fresh_redis.url)
    shas = [raw.script_load(s) for s in (CLAIM, RENEW)]
    raw.script_flush()
    assert raw.script_exists(*shas) == [False, False]
    lane.start()  # no plan: it neither renews nor claims
    try:
        wait_until(lambda: raw.script_exists(*shas) == [True, True], "both scripts loaded", timeout=DEADLINE)
        assert lane.renewals == 0
    finally:
        asyncio.run(lane.stop())
        lane.close()
        raw.close()


def test_a_lease_the_node_no_longer_holds_is_forgotten_by_the_lane(quick_lane_alone: Any) -> None:
    """The lane remembers when each lease was last renewed (for the checks
    made before a message is delivered or sent); once the plan no longer
    holds a lease and no claim since won it, the next renewal forgets it,
    so a node that held many addresses over its life keeps none of theirs."""
    from actors.cluster.renewals import RenewalPlan

    lane, _clock = quick_lane_alone
    [won] = asyncio.run(lane.claim([("counter:let-go", 0, None)]))
    assert won.won
    lane.plan(RenewalPlan(leases={"counter:let-go": won.epoch}, node_body=b"body", heartbeat=b"beat"))
    renewals = lane.renewals
    wait_until(lambda: lane.renewals > renewals + 1, "two renewals with it", timeout=DEADLINE)
    assert lane.renewed_at("counter:let-go", won.epoch) > -math.inf
    lane.plan(RenewalPlan(leases={}, node_body=b"body", heartbeat=b"beat"))  # released
    renewals = lane.renewals
    wait_until(lambda: lane.renewals > renewals + 1, "two renewals without it", timeout=DEADLINE)
    assert lane.renewed_at("counter:let-go", won.epoch) == -math.inf
    assert "counter:let-go" not in lane._renewed
