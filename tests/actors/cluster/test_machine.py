"""The cluster core, driven directly: no Redis, no threads, explicit time."""

from __future__ import annotations

from typing import Any

import pytest

from actors.cluster.machine import (
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
    HandBack,
    HeartbeatSeen,
    LeaseSeen,
    ForgetOwners,
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
    Renew,
    Renewed,
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
    new_state,
    step,
)
from actors.runtime.effects import Emit
from actors.cluster.machine import ROUTE_RETRY_FIRST_S
from bus.cluster.messages import LeaseChange, NodeHeartbeat
from bus.cluster.placement import owner_of

CFG = ClusterConfig(heartbeat_interval=1.0, lease_ttl=4.0, validity_margin=0.25, sweep_interval=10.0)


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def events(effects: list[Any]) -> list[tuple[str, str, str]]:
    return [(e.event, e.address, e.reason) for e in of(effects, Emit)]


class Driver:
    """A state and a clock; ``feed`` returns the effects."""

    def __init__(self, me: str = "me", kinds: frozenset[str] = frozenset({"counter"}), config: ClusterConfig = CFG):
        self.now = 100.0
        self.state: ClusterState = new_state(me, config, kinds, self.now)

    def feed(self, event: Any, at: float | None = None) -> list[Any]:
        if at is not None:
            self.now = at
        _, effects = step(self.state, event, self.now)
        return effects

    def join(self) -> None:
        renew = of(self.feed(Tick()), Renew)[0]
        self.feed(Renewed(renew.sent_at, "era-1"))

    def hold(self, address: str, *, placed: bool = True, epoch: int = 10) -> None:
        """Claim ``address`` and win it."""
        if address not in self.state.claiming:
            self.feed(WantLease(address))
        self.feed(Claimed(address, epoch, placed=placed))

    def advance(self, seconds: float, *, peers: tuple[str, ...] = (), kinds: tuple[str, ...] = ("counter",)) -> list[Any]:
        """Tick through ``seconds`` (every 0.5 s), answering every renewal at
        once and keeping ``peers`` heartbeating; returns all effects."""
        out: list[Any] = []
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 0.5)
            for node in peers:
                out += self.peer(node, kinds)
            effects = self.feed(Tick())
            out += effects
            for renew in of(effects, Renew):
                out += self.feed(Renewed(renew.sent_at, "era-1"))
        return out

    def peer(self, node: str, kinds: tuple[str, ...] = ("counter",), **fields: Any) -> list[Any]:
        return self.feed(HeartbeatSeen(NodeHeartbeat(node=node, kinds=list(kinds), ttl=CFG.lease_ttl, **fields)))


def address_ranking(first: str, others: list[str], n: int = 200) -> str:
    """An address that ``first`` ranks first for among ``[first, *others]``."""
    nodes = dict.fromkeys([first, *others], 1.0)
    for i in range(n):
        if owner_of(f"counter:{i}", nodes) == first:
            return f"counter:{i}"
    raise AssertionError("no such address")


# -- heartbeat and renewal ------------------------------------------------------------


def test_one_renewal_plan_every_interval() -> None:
    """The core says what to renew once per interval, answered or not (the
    renewal lane renews on its own schedule from the latest plan)."""
    d = Driver()
    first = of(d.feed(Tick()), Renew)
    assert len(first) == 1 and first[0].leases == {}
    assert of(d.feed(Tick(), at=first[0].sent_at + 0.1), Renew) == []
    second = of(d.feed(Tick(), at=first[0].sent_at + 5), Renew)
    assert len(second) == 1
    d.feed(Renewed(first[0].sent_at, "era-1"))
    assert d.state.joined
    assert of(d.feed(Tick(), at=second[0].sent_at + 0.1), Renew) == []


def test_only_the_newest_renewal_answer_counts() -> None:
    """An answer sent before one already applied changes nothing: a lease
    it did not cover is not fenced by it, nor extended."""
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=3)
    late, early = d.now + 0.4, d.now + 0.2
    d.feed(Renewed(late, d.state.era or "era-1", leases={"counter:1": 3}), at=late + 0.01)
    valid = d.state.leases["counter:1"].valid_until
    effects = d.feed(Renewed(early, d.state.era or "era-1", lost={"counter:1": ("other", 9)},
                             leases={"counter:1": 3}), at=late + 0.02)
    assert effects == [] and d.state.leases["counter:1"].valid_until == valid
    assert d.state.leases["counter:1"].phase.value == "active"


def test_spawns_wait_for_the_first_heartbeat() -> None:
    d = Driver()
    assert d.feed(WantLease("echo:1")) == []
    renew = of(d.feed(Tick()), Renew)[0]
    assert of(d.feed(Renewed(renew.sent_at, "era-1")), Claim) == [Claim("echo:1")]


def test_a_won_claim_starts_the_actor_valid_until_the_claim_was_sent_plus_validity() -> None:
    d = Driver()
    d.join()
    sent = d.now
    assert d.feed(WantLease("counter:1")) == [Claim("counter:1")]
    effects = d.feed(Claimed("counter:1", 42, placed=True), at=sent + 0.5)
    assert of(effects, Start) == [Start("counter:1", 42)]
    assert ("lease-acquired", "counter:1", "") in events(effects)
    assert d.state.leases["counter:1"].valid_until == sent + CFG.validity
    # A claim that waited its turn before it was sent is valid from when it was sent.
    d.feed(WantLease("counter:2"))
    d.feed(Claimed("counter:2", 43, placed=True, sent_at=d.now + 0.3), at=d.now + 0.4)
    assert d.state.leases["counter:2"].valid_until == pytest.approx(d.now - 0.1 + CFG.validity)


def test_a_lease_past_its_validity_is_fenced_at_once() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1")
    valid_until = d.state.leases["counter:1"].valid_until
    assert of(d.feed(Tick(), at=valid_until - 0.01), StopActor) == []
    effects = d.feed(Tick(), at=valid_until)
    assert of(effects, StopActor) == [StopActor("counter:1", "lease-expired", final=False)]
    assert ("lease-lost", "counter:1", "expired") in events(effects)
    assert d.state.leases["counter:1"].phase is Phase.FENCED
    assert of(d.feed(Tick(), at=valid_until + 1), StopActor) == []  # once


def test_renewal_extends_what_it_covered_and_fences_what_was_lost() -> None:
    d = Driver()
    d.join()
    d.hold("counter:kept", epoch=1)
    d.hold("counter:taken", epoch=2)
    d.hold("counter:lapsed", epoch=3)
    renew = of(d.feed(Tick(), at=d.now + 1.5), Renew)[0]
    assert renew.leases == {"counter:kept": 1, "counter:taken": 2, "counter:lapsed": 3}
    d.hold("counter:new", epoch=4)  # claimed while the renewal was in flight: not covered
    new_valid = d.state.leases["counter:new"].valid_until
    effects = d.feed(Renewed(renew.sent_at, "era-1", lost={"counter:taken": ("other", 9), "counter:lapsed": None}))
    assert sorted(s.address for s in of(effects, StopActor)) == ["counter:lapsed", "counter:taken"]
    assert ("lease-lost", "counter:taken", "taken") in events(effects)
    assert ("lease-lost", "counter:lapsed", "lapsed") in events(effects)
    assert d.state.leases["counter:kept"].valid_until == renew.sent_at + CFG.validity
    assert d.state.leases["counter:new"].valid_until == new_valid


def test_a_new_era_writes_our_leases_back_instead_of_fencing() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=7)
    renew = of(d.feed(Tick(), at=d.now + 1.5), Renew)[0]
    effects = d.feed(Renewed(renew.sent_at, "era-2", lost={"counter:1": None}))
    assert of(effects, StopActor) == []
    assert of(effects, Reassert) == [Reassert("counter:1", 7, True, d.now)]
    assert ("redis-reset", "node:me", "") in events(effects)
    assert of(effects, ForgetOwners) == [ForgetOwners()]  # who held what, as heard before, may be gone
    # A renewal that races the write-back may still find it missing.
    renew = of(d.feed(Tick(), at=d.now + 1.1), Renew)[0]
    assert d.feed(Renewed(renew.sent_at, "era-2", lost={"counter:1": None})) == []
    assert of(d.feed(Reasserted("counter:1", None, d.now)), StopActor) == []  # no answer: nothing decided
    assert of(d.feed(Reasserted("counter:1", True, d.now)), StopActor) == []
    assert of(d.feed(Reasserted("counter:1", False, d.now)), StopActor) == [StopActor("counter:1", "lease-taken", final=False)]


def test_a_lease_lost_with_its_shards_data_is_written_back_while_a_lapsed_one_is_fenced() -> None:
    """On a Redis Cluster one shard may lose its data (or a replica that
    missed the claim is promoted) while the era's shard keeps it: the
    renewal says which lost leases went with their data set."""
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=7)
    d.hold("counter:2", epoch=8)
    renew = of(d.feed(Tick(), at=d.now + 1.5), Renew)[0]
    effects = d.feed(Renewed(renew.sent_at, "era-1", lost={"counter:1": None, "counter:2": None},
                             reset=frozenset({"counter:1"})))
    assert of(effects, Reassert) == [Reassert("counter:1", 7, True, d.now)]
    assert of(effects, StopActor) == [StopActor("counter:2", "lease-lapsed", final=False)]
    assert of(effects, ForgetOwners) == []  # the era is the same: the rest of what we heard stands


def test_addresses_with_waiting_messages_are_drained_by_their_live_owner() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=5)
    renew = of(d.feed(Tick(), at=d.now + 1.5), Renew)[0]
    effects = d.feed(Renewed(renew.sent_at, "era-1", backlogged=("counter:1", "counter:not-mine")))
    assert of(effects, DrainBacklog) == [DrainBacklog("counter:1", 5)]


# -- membership, placement, failover ------------------------------------------------------


def test_a_joining_node_gets_the_placed_addresses_that_rank_it_first() -> None:
    d = Driver()
    d.join()
    moving = address_ranking("newcomer", ["me"])
    staying = address_ranking("me", ["newcomer"])
    d.hold(moving, placed=True)
    d.hold(staying, placed=True)
    d.hold("echo:child", placed=False)
    effects = d.peer("newcomer")
    assert ("node-joined", "node:newcomer", "") in events(effects)
    assert of(effects, StopActor) == []  # not before it has been live for the grace
    assert d.peer("newcomer") == []  # a second heartbeat is no join
    assert of(d.advance(CFG.grace / 2, peers=("newcomer",)), StopActor) == []
    effects = d.advance(CFG.grace / 2, peers=("newcomer",))
    assert of(effects, StopActor) == [StopActor(moving, "handoff", final=True)]
    assert d.state.leases[moving].phase is Phase.HANDOFF
    assert of(d.advance(CFG.grace, peers=("newcomer",)), StopActor) == []  # once


def test_a_newcomer_that_dies_within_its_grace_gets_nothing() -> None:
    d = Driver()
    d.join()
    d.hold(address_ranking("newcomer", ["me"]))
    d.peer("newcomer")
    assert of(d.advance(CFG.lease_ttl + 0.5), StopActor) == []


def test_a_newcomer_without_the_kind_gets_nothing() -> None:
    d = Driver()
    d.join()
    d.hold(address_ranking("newcomer", ["me"]))
    d.peer("newcomer", kinds=("meeting",))
    assert of(d.advance(CFG.grace + 0.5, peers=("newcomer",), kinds=("meeting",)), StopActor) == []


def test_no_hand_off_on_join_when_switched_off() -> None:
    d = Driver(config=ClusterConfig(heartbeat_interval=1.0, lease_ttl=4.0, handoff_on_join=False))
    d.join()
    d.hold(address_ranking("newcomer", ["me"]))
    d.peer("newcomer")
    assert of(d.advance(10, peers=("newcomer",)), StopActor) == []


def test_a_silent_node_is_dead_and_adopted_until_its_key_is_gone() -> None:
    d = Driver()
    d.join()
    d.peer("n2")
    effects = d.feed(Tick(), at=d.now + CFG.lease_ttl + 0.1)
    assert ("node-dead", "node:n2", "") in events(effects)
    assert of(effects, Adopt) == [Adopt("n2")]
    d.feed(Adopted("n2", alive=True))
    assert of(d.feed(Tick(), at=d.now + CFG.heartbeat_interval), Adopt) == [Adopt("n2")]  # retried
    mine = address_ranking("me", [])
    effects = d.feed(Adopted("n2", alive=False, addresses=(mine,)))
    assert of(effects, Claim) == [Claim(mine)]
    assert of(d.feed(Tick(), at=d.now + CFG.heartbeat_interval), Adopt) == []


def test_adoption_retries_end_after_a_ttl() -> None:
    d = Driver()
    d.join()
    d.peer("n2")
    d.feed(Tick(), at=d.now + CFG.lease_ttl + 0.1)
    d.feed(Adopted("n2", alive=True))
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl + 1), Adopt) == []


def test_an_unowned_address_is_claimed_by_the_node_that_ranks_first_only() -> None:
    d = Driver()
    d.join()
    d.peer("n2")
    mine = address_ranking("me", ["n2"])
    theirs = address_ranking("n2", ["me"])
    assert of(d.feed(LeaseSeen(LeaseChange(address=mine, node="", change="unowned"))), Claim) == [Claim(mine)]
    assert of(d.feed(LeaseSeen(LeaseChange(address=theirs, node="", change="unowned"))), Claim) == []
    # n2 dies before claiming it: now it ranks us first.
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl + 0.1), Claim) == [Claim(theirs)]


def test_an_unowned_address_claimed_by_another_is_forgotten() -> None:
    d = Driver()
    d.join()
    d.peer("n2")
    theirs = address_ranking("n2", ["me"])
    d.feed(LeaseSeen(LeaseChange(address=theirs, node="", change="unowned")))
    d.feed(LeaseSeen(LeaseChange(address=theirs, node="n2", change="acquired", epoch=5)))
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl + 0.1), Claim) == []


def test_a_sweep_runs_every_interval_once_joined_and_orphans_are_claimed() -> None:
    d = Driver()
    effects = d.feed(Tick(), at=d.now + CFG.sweep_interval)
    assert of(effects, Sweep) == []  # not joined yet
    d.feed(Renewed(of(effects, Renew)[0].sent_at, "era-1"))
    assert of(d.feed(Tick(), at=d.now + CFG.sweep_interval), Sweep) == [Sweep()]
    mine = address_ranking("me", [])
    assert of(d.feed(Orphans((mine,))), Claim) == [Claim(mine)]
    assert of(d.feed(Orphans((mine,))), Claim) == []  # already claiming


def test_a_node_that_left_is_adopted_at_once() -> None:
    d = Driver()
    d.join()
    d.peer("n2")
    effects = d.feed(NodeLeftSeen("n2"))
    assert ("node-left", "node:n2", "") in events(effects)
    assert of(effects, Adopt) == [Adopt("n2")]


def test_another_owner_announced_with_a_newer_epoch_fences_ours() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=5)
    assert of(d.feed(LeaseSeen(LeaseChange(address="counter:1", node="n2", change="acquired", epoch=4))), StopActor) == []
    effects = d.feed(LeaseSeen(LeaseChange(address="counter:1", node="n2", change="acquired", epoch=6)))
    assert of(effects, StopActor) == [StopActor("counter:1", "lease-taken", final=False)]


def test_a_refused_checkpoint_fences() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1")
    assert of(d.feed(LeaseTroubled("counter:1")), StopActor) == [StopActor("counter:1", "lease-checkpoint-refused", final=False)]


def test_a_checkpoint_refused_for_want_of_any_lease_reasserts_it_while_ours_is_valid() -> None:
    """Redis lost its data: the first sign is often a checkpoint write (a
    busy actor writes before its node's next renewal). Stopping the actor
    then lost it for good (its spec went with the data: nobody placed it
    again); it is written back instead, as after a renewal that found it
    gone. Once our own validity ran out, it is fenced as before."""
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=7)
    effects = d.feed(LeaseTroubled("counter:1", missing=True))
    assert of(effects, StopActor) == []
    assert of(effects, Reassert) == [Reassert("counter:1", 7, True, d.now)]
    assert d.feed(LeaseTroubled("counter:1", missing=True)) == []  # one write-back at a time
    assert of(d.feed(Reasserted("counter:1", False, d.now)), StopActor) == [
        StopActor("counter:1", "lease-taken", final=False)]
    d.hold("counter:2", epoch=8)
    late = d.state.leases["counter:2"].valid_until + 0.01
    assert of(d.feed(LeaseTroubled("counter:2", missing=True), at=late), StopActor) == [
        StopActor("counter:2", "lease-checkpoint-refused", final=False)]


def test_a_survivor_keeps_at_most_claims_in_flight_and_sends_the_rest_in_order_as_answers_come() -> None:
    d = Driver(config=ClusterConfig(heartbeat_interval=1.0, lease_ttl=4.0, claims_in_flight=3))
    d.join()
    d.peer("n2")
    dead = d.feed(Tick(), at=d.now + CFG.lease_ttl + 0.1)  # n2 is dead: every address ranks us first
    for renew in of(dead, Renew):
        d.feed(Renewed(renew.sent_at, "era-1"))
    addresses = [f"counter:{i}" for i in range(8)]
    effects = d.feed(Adopted("n2", alive=False, addresses=tuple(addresses)))
    assert of(effects, Claim) == [Claim(a) for a in addresses[:3]]
    assert of(d.feed(Orphans(tuple(addresses))), Claim) == []  # queued, not claimed twice
    assert of(d.feed(WantLease(addresses[5])), Claim) == []
    # Each answer, whatever it says, makes room for the next in line.
    assert of(d.feed(Claimed(addresses[0], 11, placed=True)), Claim) == [Claim(addresses[3])]
    assert of(d.feed(ClaimRefused(addresses[1], "n3", 12)), Claim) == [Claim(addresses[4])]
    assert of(d.feed(ClaimFailed(addresses[2])), Claim) == [Claim(addresses[5])]
    assert len(d.state.claiming) == 3
    renew = of(d.feed(Tick(), at=d.now + CFG.heartbeat_interval), Renew)
    assert renew and renew[0].leases == {addresses[0]: 11}  # renewals never wait for the queue
    sent = [c.address for c in of(d.feed(Claimed(addresses[3], 13, placed=True)), Claim)]
    sent += [c.address for c in of(d.feed(Claimed(addresses[4], 14, placed=True)), Claim)]
    assert sent == addresses[6:8]
    # The failed claim was retried a heartbeat later: behind the queue.
    assert of(d.feed(Claimed(addresses[5], 15, placed=True)), Claim) == [Claim(addresses[2])]
    assert not d.state.queued_claims


def test_claims_still_queued_when_draining_are_refused_and_the_node_leaves() -> None:
    d = Driver(config=ClusterConfig(heartbeat_interval=1.0, lease_ttl=4.0, claims_in_flight=1))
    d.join()
    assert d.feed(WantLease("echo:1")) == [Claim("echo:1")]
    assert d.feed(WantLease("echo:2")) == []
    effects = d.feed(Drain())
    assert of(effects, SpawnRefused) == [SpawnRefused("echo:2", "", 0)]
    effects = d.feed(ClaimRefused("echo:1", "n2", 5))
    assert of(effects, Claim) == [] and of(effects, Leave) == [Leave()]


# -- claims refused, actors gone, releases ---------------------------------------------------


def test_a_claim_refused_by_a_live_holder_refuses_the_spawn() -> None:
    d = Driver()
    d.join()
    d.feed(WantLease("echo:1"))
    assert d.feed(ClaimRefused("echo:1", "n2", 3)) == [SpawnRefused("echo:1", "n2", 3)]


def test_a_claim_refused_because_we_are_no_member_or_failed_is_retried() -> None:
    d = Driver()
    d.join()
    d.feed(WantLease("echo:1"))
    assert d.feed(ClaimRefused("echo:1", "", 0)) == []
    assert of(d.feed(Tick(), at=d.now + CFG.heartbeat_interval), Claim) == [Claim("echo:1")]
    assert d.feed(ClaimFailed("echo:1")) == []
    assert of(d.feed(Tick(), at=d.now + CFG.heartbeat_interval), Claim) == [Claim("echo:1")]


def test_a_claim_refused_while_the_data_set_settles_is_retried_when_it_has() -> None:
    d = Driver()
    d.join()
    d.feed(WantLease("echo:1"))
    settling = 3 * CFG.heartbeat_interval + 0.01
    effects = d.feed(ClaimRefused("echo:1", "", 0, settling=settling))
    assert of(effects, SpawnRefused) == []  # it waits
    assert events(effects) == [("claims-waiting", "node:me", "data-set-young")]
    start = d.now
    assert of(d.feed(Tick(), at=start + settling - 0.005), Claim) == []
    assert of(d.feed(Tick(), at=start + settling), Claim) == [Claim("echo:1")]


def test_claims_waiting_for_the_data_set_are_said_once_per_wait() -> None:
    d = Driver()
    d.join()
    for address in ("echo:1", "echo:2", "echo:3"):
        d.feed(WantLease(address))
    assert len(events(d.feed(ClaimRefused("echo:1", "", 0, settling=1.0)))) == 1
    assert events(d.feed(ClaimRefused("echo:2", "", 0, settling=0.9))) == []
    d.now += 1.0  # that wait is over; Redis lost its data again
    assert events(d.feed(ClaimRefused("echo:3", "", 0, settling=1.0))) == [
        ("claims-waiting", "node:me", "data-set-young")]


def test_a_placed_address_whose_claim_waited_is_left_to_the_node_that_ranks_first_by_then() -> None:
    """All nodes' claims wait for the data set together: when they are
    due, only the node that ranks first by then claims (the others would
    race it, and a winner that does not rank first hands off again)."""
    d = Driver()
    d.join()
    theirs = address_ranking("n2", ["me"])
    d.feed(LeaseSeen(LeaseChange(address=theirs, node="", change="unowned")))  # alone: ours
    assert of(d.feed(ClaimRefused(theirs, "", 0, settling=1.5)), Claim) == []
    d.peer("n2")  # n2 joins meanwhile
    assert of(d.feed(Tick(), at=d.now + 1.5), Claim) == []
    mine = address_ranking("me", ["n2"])
    d.feed(LeaseSeen(LeaseChange(address=mine, node="", change="unowned")))
    assert of(d.feed(ClaimRefused(mine, "", 0, settling=1.5)), Claim) == []
    assert of(d.feed(Tick(), at=d.now + 1.5), Claim) == [Claim(mine)]


@pytest.mark.parametrize(("placed", "crashed", "mode"), [
    (True, False, "retire"),
    (True, True, "unowned"),
    (False, False, "plain"),
    (False, True, "plain"),
])
def test_what_an_actor_that_stopped_for_good_releases(placed: bool, crashed: bool, mode: str) -> None:
    d = Driver()
    d.join()
    d.hold("counter:1", placed=placed, epoch=8)
    assert d.feed(ActorGone("counter:1", crashed=crashed, final=True)) == [Release("counter:1", 8, mode)]


def test_a_supervised_restart_keeps_the_lease() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1")
    assert d.feed(ActorGone("counter:1", crashed=True, final=False)) == []
    assert d.state.leases["counter:1"].phase is Phase.ACTIVE


def test_a_fenced_actor_releases_and_a_restart_claims_again_after() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1", placed=False, epoch=8)
    d.feed(LeaseTroubled("counter:1"))
    assert d.feed(ActorGone("counter:1", crashed=False, final=False)) == [Release("counter:1", 8, "plain")]
    assert d.feed(WantLease("counter:1")) == []  # waits for the release
    effects = d.feed(Released("counter:1"))
    assert of(effects, HandBack) == [HandBack("counter:1")]
    assert of(effects, Claim) == [Claim("counter:1")]


def test_a_crashed_placed_actor_is_not_claimed_back_at_once() -> None:
    d = Driver()
    d.join()
    mine = address_ranking("me", [])
    d.hold(mine)
    d.feed(ActorGone(mine, crashed=True, final=True))
    d.feed(Released(mine))
    assert of(d.feed(LeaseSeen(LeaseChange(address=mine, node="me", change="unowned"))), Claim) == []
    assert of(d.feed(Orphans((mine,)), at=d.now + CFG.sweep_interval), Claim) == [Claim(mine)]


def test_what_a_node_released_as_unowned_it_claims_back_if_it_ranks_first() -> None:
    """A placed actor fenced (its node cut off past its lease) is released
    as unowned when the node is back. The node claims it back if it ranks
    first, at once: not on the news of its own release, which a node just
    back may not hear, nor at its next sweep, seconds away (the simulation
    found a meeting tree left unowned that long, until Redis lost its
    placement). If another ranks first, that one's death makes it ours."""
    d = Driver()
    d.join()
    d.peer("n2")
    mine, theirs = address_ranking("me", ["n2"]), address_ranking("n2", ["me"])
    for address in (mine, theirs):
        d.hold(address, epoch=8)
        d.feed(LeaseTroubled(address))
        assert d.feed(ActorGone(address, crashed=False, final=False)) == [Release(address, 8, "unowned")]
    assert of(d.feed(Released(mine)), Claim) == [Claim(mine)]
    assert of(d.feed(Released(theirs)), Claim) == []
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl + 0.1), Claim) == [Claim(theirs)]  # n2 fell silent


def test_what_another_took_meanwhile_is_not_claimed_back_on_release() -> None:
    """The release found another epoch there (a second process under our
    node id took it: a claim by our id always wins): claiming it back would
    take it from that one, which would do the same (found by the counter
    simulation's twins: two processes taking one counter from each other
    every 50 ms)."""
    d = Driver()
    d.join()
    mine = address_ranking("me", [])
    d.hold(mine, epoch=8)
    d.feed(LeaseTroubled(mine))
    d.feed(ActorGone(mine, crashed=False, final=False))
    assert of(d.feed(Released(mine, ours=False)), Claim) == []


def test_the_first_sweep_comes_once_the_others_are_heard_not_a_sweep_interval_after_joining() -> None:
    """A newcomer heard none of the releases made before it ran: what was
    left unowned then and ranks it first (nobody else claims it) is found
    by its first sweep, two heartbeats after it joined."""
    d = Driver()
    d.join()
    joined = d.now
    assert of(d.feed(Tick(), at=joined + CFG.heartbeat_interval), Sweep) == []
    assert of(d.feed(Tick(), at=joined + 2 * CFG.heartbeat_interval), Sweep) == [Sweep()]
    assert of(d.feed(Tick(), at=joined + 3 * CFG.heartbeat_interval), Sweep) == []  # then every interval


def test_a_node_that_missed_announcements_sweeps_at_its_next_tick() -> None:
    """Its bus was down: a hand-off to it (a release as unowned, announced
    on sys:nodes) was never heard. Found by the cluster webinar simulation
    with three nodes (seed 18): two trees handed off to a node whose bus
    was reconnecting stayed unowned until Redis lost their placement."""
    d = Driver()
    d.join()
    d.feed(Tick(), at=d.now + 2 * CFG.heartbeat_interval)  # the newcomer's first sweep
    quiet = d.now + CFG.heartbeat_interval
    assert of(d.feed(Tick(), at=quiet), Sweep) == []
    assert d.feed(AnnouncementsMissed(), at=quiet + 0.1) == []
    assert of(d.feed(Tick(), at=quiet + 0.2), Sweep) == [Sweep()]
    assert of(d.feed(Tick(), at=quiet + 0.3), Sweep) == []  # once


def test_a_failed_release_is_retried() -> None:
    from actors.cluster.machine import ReleaseFailed

    d = Driver()
    d.join()
    d.hold("counter:1", epoch=3)
    d.feed(ActorGone("counter:1", crashed=False, final=True))
    d.feed(ReleaseFailed("counter:1"))
    assert of(d.feed(Tick(), at=d.now + CFG.heartbeat_interval), Release) == [Release("counter:1", 3, "retire")]


# -- drain --------------------------------------------------------------------------------


def test_drain_hands_off_placed_stops_the_rest_and_leaves_when_empty() -> None:
    d = Driver()
    d.join()
    d.hold("counter:1", placed=True, epoch=1)
    d.hold("echo:1", placed=False, epoch=2)
    effects = d.feed(Drain())
    assert sorted(of(effects, StopActor), key=lambda s: s.address) == [
        StopActor("counter:1", "handoff", final=True), StopActor("echo:1", "drain", final=True)]
    assert of(d.feed(LeaseSeen(LeaseChange(address=address_ranking("me", []), node="", change="unowned"))),
              Claim) == []  # a draining node takes nothing
    assert d.feed(ActorGone("counter:1", crashed=False, final=True)) == [Release("counter:1", 1, "unowned")]
    assert d.feed(ActorGone("echo:1", crashed=False, final=True)) == [Release("echo:1", 2, "plain")]
    d.feed(Released("counter:1"))
    assert of(d.feed(Released("echo:1")), Leave) == [Leave()]
    assert of(d.feed(Tick(), at=d.now + 10), Renew) == []  # gone: no more heartbeats


def test_a_draining_node_refuses_new_spawns_and_leaves_at_once_when_empty() -> None:
    d = Driver()
    d.join()
    assert of(d.feed(Drain()), Leave) == [Leave()]
    assert d.feed(WantLease("echo:1")) == [SpawnRefused("echo:1", "", 0)]


# -- lingering: a released address's channel ------------------------------------------------


def released(d: Driver, address: str = "echo:1", epoch: int = 8) -> None:
    d.hold(address, placed=False, epoch=epoch)
    d.feed(ActorGone(address, crashed=False, final=True))
    d.feed(Released(address))


def test_a_released_channel_is_listened_to_for_a_lease_ttl_then_left() -> None:
    d = Driver()
    d.join()
    released(d)
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl - 0.01), StopListening) == []
    assert of(d.feed(Tick(), at=d.now + 0.01), StopListening) == [StopListening("echo:1")]
    assert of(d.feed(Tick(), at=d.now + 10), StopListening) == []  # once


def test_a_released_channel_is_left_as_soon_as_the_next_owners_claim_is_heard() -> None:
    d = Driver()
    d.join()
    released(d)
    change = LeaseChange(address="echo:1", node="other", change="acquired", epoch=9)
    assert of(d.feed(LeaseSeen(change)), StopListening) == [StopListening("echo:1")]
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl), StopListening) == []


def test_a_released_address_claimed_here_again_keeps_its_channel() -> None:
    d = Driver()
    d.join()
    released(d)
    assert of(d.feed(WantLease("echo:1")), Claim) == [Claim("echo:1")]
    assert of(d.feed(Tick(), at=d.now + CFG.lease_ttl), StopListening) == []
    change = LeaseChange(address="echo:1", node="other", change="acquired", epoch=9)
    assert of(d.feed(LeaseSeen(change)), StopListening) == []


# -- routing: through the ROUTE script, in order per address ------------------------------


def test_routes_go_one_at_a_time_per_address_in_order() -> None:
    d = Driver()
    assert of(d.feed(RouteQueued("a:1", (b"1", b"2"))), SendRoute) == [SendRoute("a:1", b"1")]
    assert of(d.feed(RouteQueued("a:1", (b"3",))), SendRoute) == []  # the first is under way
    assert of(d.feed(RouteQueued("a:2", (b"x",))), SendRoute) == [SendRoute("a:2", b"x")]  # another address: apart
    assert of(d.feed(Routed("a:1")), SendRoute) == [SendRoute("a:1", b"2")]
    assert of(d.feed(Routed("a:1")), SendRoute) == [SendRoute("a:1", b"3")]
    assert of(d.feed(Routed("a:1")), SendRoute) == []
    assert "a:1" not in d.state.routes and "a:2" in d.state.routes


def test_a_route_redis_did_not_answer_is_sent_again_after_a_growing_backoff_and_keeps_its_place() -> None:
    d = Driver()
    d.feed(RouteQueued("a:1", (b"1", b"2")))
    start = d.now
    d.feed(RouteFailed("a:1"))
    assert of(d.feed(Tick(), at=start + ROUTE_RETRY_FIRST_S / 2), SendRoute) == []
    assert of(d.feed(Tick(), at=start + ROUTE_RETRY_FIRST_S), SendRoute) == [SendRoute("a:1", b"1")]
    assert of(d.feed(Tick(), at=start + 10), SendRoute) == []  # under way again: not twice
    failed_at = d.now
    d.feed(RouteFailed("a:1"))
    assert of(d.feed(Tick(), at=failed_at + ROUTE_RETRY_FIRST_S), SendRoute) == []  # twice as long now
    assert of(d.feed(Tick(), at=failed_at + 2 * ROUTE_RETRY_FIRST_S), SendRoute) == [SendRoute("a:1", b"1")]
    assert of(d.feed(Routed("a:1")), SendRoute) == [SendRoute("a:1", b"2")]
    assert "a:1" not in d.state.route_retry


def test_a_full_route_queue_refuses_what_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.cluster.machine as machine

    monkeypatch.setattr(machine, "ROUTE_BUFFER", 2)
    d = Driver()
    effects = d.feed(RouteQueued("a:1", (b"1", b"2", b"3")))
    assert of(effects, RefuseRoute) == [RefuseRoute(b"3", "restart-buffer-full")]
    assert list(d.state.routes["a:1"]) == [b"1", b"2"]



def test_a_lease_another_owner_held_since_is_released_without_its_state() -> None:
    """A former owner's state is older than the newer owner's; where Redis
    lost its data, a release that wrote it back would replace that (found
    by the simulation: an owner paused past its lease released as it woke,
    after a restart without data, and the next owner lost what the newer
    one had acknowledged). Fenced by running out alone (an outage past
    every lease), its state is the newest there is, and goes back."""
    d = Driver()
    d.join()
    d.hold("counter:1", epoch=8, placed=True)
    d.feed(LeaseTroubled("counter:1"))  # fenced
    d.feed(LeaseSeen(LeaseChange(address="counter:1", node="n2", change="acquired", epoch=9)))
    assert d.feed(ActorGone("counter:1", crashed=False, final=False)) == [
        Release("counter:1", 8, "unowned", superseded=True)]
    d.hold("counter:2", epoch=3, placed=True)
    d.feed(Tick(), at=d.state.leases["counter:2"].valid_until + 0.1)  # ran out
    assert d.feed(ActorGone("counter:2", crashed=False, final=False)) == [Release("counter:2", 3, "unowned")]
