"""The lease scripts on a real redis-server: claim, renew, release,
restore, fenced checkpoints, adoption of a dead node's addresses."""

from __future__ import annotations

import threading

import msgpack
import redis.asyncio as aioredis

from bus.cluster.leases import (
    NO_LEASE,
    REFUSED,
    RESEND_SEEN,
    SEEN_PER_ADDRESS,
    WRITTEN,
    CheckpointWrite,
    HandledIds,
    LeaseStore,
)
from bus.cluster.messages import LeaseChange
from bus.cluster.sharded_store import lease_store_for
from bus.store_client import store_client

from .conftest import ChannelLog, ClusterRedis, channel_log


def test_a_claim_on_a_free_address_wins_and_is_announced_atomically(cr: ClusterRedis,
                                                                     nodes_channel: ChannelLog) -> None:
    cr.heartbeat("n1")
    result = cr.run(cr.leases.claim("counter:1", "n1", ttl=5))
    assert result.won and result.holder == "n1" and result.epoch > 0
    assert result.checkpoint is None and result.spec is None and result.backlog == ()
    assert cr.sync.get(cr.keys.lease("counter:1")) == f"{result.epoch} n1".encode()
    assert 0 < cr.sync.pttl(cr.keys.lease("counter:1")) <= 5000
    assert cr.sync.smembers(cr.keys.held("n1")) == {b"counter:1"}
    env = nodes_channel.wait(lambda e: isinstance(e.message, LeaseChange))
    # The claimer's own bytes, unchanged (so a signed one stays valid): the
    # epoch is not in them; the store says which was issued.
    assert env.message == LeaseChange(address="counter:1", node="n1", change="acquired", epoch=0)
    assert cr.run(cr.leases.issued(["counter:1", "counter:2"])) == {
        "counter:1": (result.epoch, "n1", True), "counter:2": (0, "", False)}


def test_the_issued_epoch_outlives_the_lease_and_only_grows(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    first = cr.run(cr.leases.claim("counter:1", "n1", ttl=5))
    assert cr.run(cr.leases.release("counter:1", "n1", first.epoch, mode="plain"))
    assert cr.run(cr.leases.issued(["counter:1"])) == {"counter:1": (first.epoch, "n1", False)}
    assert 0 < cr.sync.pttl(cr.keys.issued("counter:1"))  # forgotten a while after a release for good
    second = cr.run(cr.leases.claim("counter:1", "n2", ttl=5))
    assert cr.run(cr.leases.issued(["counter:1"])) == {"counter:1": (second.epoch, "n2", True)}
    assert cr.sync.pttl(cr.keys.issued("counter:1")) == -1  # kept while held
    # A lease is never written back under an older epoch than one issued
    # since (the newer owner let it go, or it lapsed): refused, and the
    # issued epoch stays.
    cr.sync.delete(cr.keys.lease("counter:1"))
    assert not cr.run(cr.leases.restore("counter:1", "n1", first.epoch, ttl=5))
    assert cr.sync.get(cr.keys.lease("counter:1")) is None
    assert cr.run(cr.leases.issued(["counter:1"]))["counter:1"][0] == second.epoch


def test_a_signed_claim_announcement_verifies(cr: ClusterRedis) -> None:
    """The announcement is published as the claimer encoded and signed it."""
    from bus.envelope import Codec
    from bus.signing import HmacSigner

    codec = Codec(signer=HmacSigner(b"k" * 32))
    store = lease_store_for(cr.client, namespace=cr.namespace, codec=codec)
    log = channel_log(cr, cr.leases.channel, codec=codec)
    try:
        cr.heartbeat("n1")
        assert cr.run(store.claim("counter:1", "n1", ttl=5)).won
        change = log.wait(lambda env: isinstance(env.message, LeaseChange)).message
    finally:
        log.close()
    assert change == LeaseChange(address="counter:1", node="n1", change="acquired")


def test_a_claim_needs_the_claimer_to_be_a_live_member(cr: ClusterRedis) -> None:
    result = cr.run(cr.leases.claim("counter:1", "ghost", ttl=5))
    assert not result.won and result.holder == ""
    assert cr.sync.get(cr.keys.lease("counter:1")) is None


def test_a_live_holder_keeps_its_lease_and_a_dead_one_loses_it(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    first = cr.run(cr.leases.claim("counter:1", "n1", ttl=5))
    refused = cr.run(cr.leases.claim("counter:1", "n2", ttl=5))
    assert not refused.won and (refused.holder, refused.epoch) == ("n1", first.epoch)

    cr.kill("n1")
    taken = cr.run(cr.leases.claim("counter:1", "n2", ttl=5))
    assert taken.won and taken.epoch > first.epoch
    if cr.sharded:  # the dead node's set is on another shard: its adoption clears it
        assert cr.run(cr.leases.adopt("n1")) == []
    assert cr.sync.smembers(cr.keys.held("n1")) == set()
    assert cr.run(cr.leases.lease("counter:1")) == ("n2", taken.epoch)


def test_epochs_of_an_address_only_grow_even_when_redis_lost_what_it_issued(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    epochs = []
    for node in ("n1", "n2", "n1", "n2"):
        cr.sync.delete(cr.keys.lease("a:0"))  # as if the lease ran out
        epochs.append(cr.run(cr.leases.claim("a:0", node, ttl=5)).epoch)
    cr.sync.delete(cr.keys.lease("a:0"), cr.keys.issued("a:0"))  # as after a restart without persistence
    epochs.append(cr.run(cr.leases.claim("a:0", "n1", ttl=5)).epoch)
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    # The claimer's floor (the newest epoch it has seen) is respected too.
    floor = epochs[-1] + 10**9
    assert cr.run(cr.leases.claim("a:6", "n1", ttl=5, floor=floor)).epoch > floor


def test_a_claim_hands_over_the_checkpoint_the_spec_and_the_backlog(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.sync.set(cr.keys.checkpoint("counter:1"), b"state")
    for i in range(3):
        assert cr.run(cr.backlog.route("counter:1", f"env{i}".encode(), f"id{i}", me="n1")).outcome == "backlogged"
    result = cr.run(cr.leases.claim("counter:1", "n1", ttl=5, spec=b"args"))
    assert result.checkpoint == b"state" and result.spec == b"args"
    assert result.backlog == (b"env0", b"env1", b"env2")
    assert cr.sync.exists(cr.keys.backlog("counter:1")) == 0


def test_renew_extends_ours_and_reports_what_we_lost(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    kept = cr.run(cr.leases.claim("a:kept", "n1", ttl=1))
    taken = cr.run(cr.leases.claim("a:taken", "n1", ttl=1))
    gone = cr.run(cr.leases.claim("a:gone", "n1", ttl=1))
    cr.sync.delete(cr.keys.lease("a:taken"))
    other = cr.run(cr.leases.claim("a:taken", "n2", ttl=5))
    cr.sync.delete(cr.keys.lease("a:gone"))

    result = cr.heartbeat("n1", {"a:kept": kept.epoch, "a:taken": taken.epoch, "a:gone": gone.epoch}, ttl=30)
    assert result.era == "era-1"
    assert dict(result.lost) == {"a:taken": ("n2", other.epoch), "a:gone": None}
    assert cr.sync.pttl(cr.keys.lease("a:kept")) > 1000  # extended to the new ttl
    assert cr.sync.pttl(cr.keys.node("n1")) > 1000


def test_renew_reports_a_new_era_when_redis_lost_its_data(cr: ClusterRedis) -> None:
    assert cr.heartbeat("n1", era="first").era == "first"
    assert cr.heartbeat("n1", era="ignored").era == "first"
    cr.sync.delete(cr.keys.era)
    assert cr.heartbeat("n1", era="second").era == "second"


def test_release_only_gives_up_our_own_lease(cr: ClusterRedis, nodes_channel: ChannelLog) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    mine = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    assert not cr.run(cr.leases.release("a:1", "n2", mine.epoch))
    assert not cr.run(cr.leases.release("a:1", "n1", mine.epoch - 1))
    assert cr.run(cr.leases.release("a:1", "n1", mine.epoch))
    assert cr.sync.get(cr.keys.lease("a:1")) is None
    assert cr.sync.smembers(cr.keys.held("n1")) == set()
    nodes_channel.wait(lambda e: isinstance(e.message, LeaseChange) and e.message.change == "released")


def test_release_as_unowned_puts_a_placed_address_up_for_adoption(cr: ClusterRedis,
                                                                    nodes_channel: ChannelLog) -> None:
    cr.heartbeat("n1")
    placed = cr.run(cr.leases.claim("a:placed", "n1", ttl=5, spec=b"args"))
    child = cr.run(cr.leases.claim("a:child", "n1", ttl=5))
    assert cr.run(cr.leases.release("a:placed", "n1", placed.epoch, mode="unowned"))
    assert cr.run(cr.leases.release("a:child", "n1", child.epoch, mode="unowned"))
    assert cr.run(cr.leases.unowned()) == ["a:placed"]  # a child has no spec: nobody restarts it alone
    change = nodes_channel.wait(lambda e: isinstance(e.message, LeaseChange) and e.message.change == "unowned")
    assert change.message.address == "a:placed"


def test_release_writes_back_what_redis_lost(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5, spec=b"args"))
    cr.sync.delete(cr.keys.spec("a:1"), cr.keys.lease("a:1"))
    assert cr.run(cr.leases.release("a:1", "n1", lease.epoch, mode="unowned", spec=b"args", checkpoint=b"ck"))
    assert cr.sync.get(cr.keys.spec("a:1")) == b"args"
    assert cr.sync.get(cr.keys.checkpoint("a:1")) == b"ck"
    assert cr.run(cr.leases.unowned()) == ["a:1"]


def test_a_checkpoint_written_back_by_a_release_brings_the_ids_its_state_includes(cr: ClusterRedis) -> None:
    """Without them the next owner restores the state and handles a copy of
    a message that state already includes a second time."""
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5, spec=b"args"))
    cr.sync.delete(cr.keys.lease("a:1"), cr.keys.checkpoint("a:1"), cr.keys.handled("a:1"))  # Redis lost them
    assert cr.run(cr.leases.release("a:1", "n1", lease.epoch, mode="unowned", spec=b"args", checkpoint=b"ck",
                                    seen=["m1", "m2"]))
    assert cr.sync.lrange(cr.keys.handled("a:1"), 0, -1) == [b"m1", b"m2"]
    assert cr.run(cr.leases.claim("a:1", "n1", ttl=5)).seen == ("m1", "m2")
    # Where Redis still holds a checkpoint (a newer owner's), neither is touched.
    lease = cr.run(cr.leases.claim("b:1", "n1", ttl=5, spec=b"args"))
    cr.run(cr.leases.save_checkpoint("b:1", "n1", lease.epoch, b"newer", seen=["n9"]))
    cr.sync.delete(cr.keys.lease("b:1"))
    assert cr.run(cr.leases.release("b:1", "n1", lease.epoch, mode="unowned", spec=b"args", checkpoint=b"older",
                                    seen=["m1"]))
    assert cr.sync.get(cr.keys.checkpoint("b:1")) == b"newer"
    assert cr.sync.lrange(cr.keys.handled("b:1"), 0, -1) == [b"n9"]


def test_retire_forgets_a_placed_address(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5, spec=b"args"))
    assert cr.run(cr.leases.save_checkpoint("a:1", "n1", lease.epoch, b"ck"))
    assert cr.run(cr.leases.release("a:1", "n1", lease.epoch, mode="retire"))
    assert cr.sync.exists(cr.keys.spec("a:1"), cr.keys.checkpoint("a:1")) == 0


def test_restore_rewrites_our_lease_under_the_same_epoch_unless_someone_claimed(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5, spec=b"args"))
    cr.sync.delete(cr.keys.lease("a:1"), cr.keys.issued("a:1"), cr.keys.spec("a:1"))
    assert cr.run(cr.leases.restore("a:1", "n1", lease.epoch, ttl=5, spec=b"args", checkpoint=b"ck"))
    assert cr.run(cr.leases.lease("a:1")) == ("n1", lease.epoch)
    assert cr.sync.get(cr.keys.spec("a:1")) == b"args" and cr.sync.get(cr.keys.checkpoint("a:1")) == b"ck"
    assert int(cr.sync.get(cr.keys.issued("a:1")).split()[0]) == lease.epoch  # later claims draw above it

    cr.kill("n1")
    taken = cr.run(cr.leases.claim("a:1", "n2", ttl=5))
    assert taken.epoch > lease.epoch
    assert not cr.run(cr.leases.restore("a:1", "n1", lease.epoch, ttl=5))


def test_after_redis_lost_its_data_claims_wait_a_lease_ttl_and_the_holder_writes_its_lease_back_first(
        cr: ClusterRedis) -> None:
    """The hole it closes (found by the simulation): n1 held a:1 and had
    acknowledged work in its state when Redis lost its data; n2 (which
    held a:1 before, with older state) claimed it before n1 wrote it back,
    so n1's restore found it taken and what it had acknowledged was gone."""
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5, spec=b"args"))
    cr.lose_data("a:1")
    cr.heartbeat("n2", ttl=5)  # a renewal starts the new data set's clock
    waiting = cr.run(cr.leases.claim("a:1", "n2", ttl=5, spec=b"args"))
    assert not waiting.won and waiting.holder == "" and 4 < waiting.settling <= 5
    assert cr.run(cr.leases.lease("a:1")) is None  # the refused claim left nothing behind
    # the holder (its lease still valid by its clock) writes it back meanwhile
    assert cr.run(cr.leases.restore("a:1", "n1", lease.epoch, ttl=5, spec=b"args", checkpoint=b"newest"))
    assert not cr.run(cr.leases.claim("a:1", "n2", ttl=5)).won
    cr.run(cr.leases.assume_settled())  # a TTL later
    refused = cr.run(cr.leases.claim("a:1", "n2", ttl=5))
    assert (refused.won, refused.holder, refused.epoch) == (False, "n1", lease.epoch)
    # Nobody wrote b:1 back within the TTL: then it is free to claim.
    cr.run(cr.leases.claim("b:1", "n1", ttl=5))
    cr.lose_data("b:1")
    assert cr.run(cr.leases.claim("b:1", "n2", ttl=5)).settling > 0
    cr.run(cr.leases.assume_settled())
    assert cr.run(cr.leases.claim("b:1", "n2", ttl=5)).won


def test_a_redis_restart_starts_the_wait_again_even_with_its_data(cr: ClusterRedis) -> None:
    """A restart from a snapshot may miss the last claims: the birth names
    the server's run, and another run's birth does not count."""
    cr.heartbeat("n1", ttl=5)
    born = cr.sync.get(cr.born("a:1"))
    assert born is not None and born.split()[0] == b"0"  # settled (by the fixture)
    cr.sync.set(cr.born("a:1"), b"0 " + b"f" * 40)  # written by another run of the server
    waiting = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    assert not waiting.won and 4 < waiting.settling <= 5
    assert cr.sync.get(cr.born("a:1")).split()[1] == born.split()[1]  # this run's birth now


def test_what_waited_while_nobody_held_it_is_drained_after_a_restore(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    cr.sync.delete(cr.keys.lease("a:1"))  # Redis lost it
    assert cr.run(cr.backlog.route("a:1", b"env", "id1", me="sender")).outcome == "backlogged"
    assert cr.run(cr.leases.restore("a:1", "n1", lease.epoch, ttl=5))
    assert cr.heartbeat("n1", {"a:1": lease.epoch}).backlogged == ("a:1",)
    assert cr.run(cr.backlog.drain("a:1", me="n1", epoch=lease.epoch)) == [b"env"]


def test_checkpoints_are_written_only_under_the_current_lease(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    old = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    assert cr.run(cr.leases.save_checkpoint("a:1", "n1", old.epoch, b"v1", log=True, note="1"))
    cr.kill("n1")
    new = cr.run(cr.leases.claim("a:1", "n2", ttl=5))
    assert new.checkpoint == b"v1"
    # The former owner is refused, whatever it writes.
    assert not cr.run(cr.leases.save_checkpoint("a:1", "n1", old.epoch, b"stale", log=True, note="2"))
    assert cr.run(cr.leases.save_checkpoint("a:1", "n2", new.epoch, b"v2", log=True, note="3"))
    assert cr.run(cr.leases.load_checkpoint("a:1")) == b"v2"
    # No lease at all: refused too.
    assert not cr.run(cr.leases.save_checkpoint("a:nobody", "n2", new.epoch, b"x"))
    log = cr.run(cr.leases.fencing_log(addresses=["a:1", "a:2", "a:3"]))
    assert [(e["a"], int(e["e"]), e["n"], e["note"]) for e in log] == [
        ("a:1", old.epoch, "n1", "1"), ("a:1", new.epoch, "n2", "3")]


def test_a_batch_of_checkpoint_writes_judges_each_write_alone_in_one_script(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    mine = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    also_mine = cr.run(cr.leases.claim("a:2", "n1", ttl=5))
    theirs = cr.run(cr.leases.claim("a:3", "n2", ttl=5))
    writes = [CheckpointWrite("a:1", mine.epoch, b"one", seen=["m1", "m2"], note="x"),
              CheckpointWrite("a:3", theirs.epoch, b"not mine"),  # n2's lease: refused
              CheckpointWrite("a:2", also_mine.epoch, None, seen=["m9"]),  # the ids alone
              CheckpointWrite("a:2", also_mine.epoch + 1, b"unissued")]  # not the lease's epoch
    assert cr.run(cr.leases.save_checkpoints(writes, "n1", log=True)) == [True, False, True, False]
    assert cr.run(cr.leases.load_checkpoint("a:1")) == b"one"
    assert cr.run(cr.leases.load_checkpoint("a:3")) is None
    assert cr.run(cr.leases.load_checkpoint("a:2")) is None  # the ids alone write no state
    assert cr.run(cr.leases.load_seen("a:1")) == ["m1", "m2"] and cr.run(cr.leases.load_seen("a:2")) == ["m9"]
    log = cr.run(cr.leases.fencing_log(addresses=["a:1", "a:2", "a:3"]))
    assert [(e["a"], e["n"], e["note"]) for e in log] == [("a:1", "n1", "x")]  # accepted state writes only
    assert cr.run(cr.leases.save_checkpoints([], "n1")) == []


def test_a_checkpoint_write_says_whether_anyone_holds_the_lease(cr: ClusterRedis) -> None:
    """Refused because another holder or epoch has it, or because nobody
    does (Redis lost its data: the holder writes its lease back)."""
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    mine = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    theirs = cr.run(cr.leases.claim("a:2", "n2", ttl=5))
    writes = [CheckpointWrite("a:1", mine.epoch, b"one"), CheckpointWrite("a:2", theirs.epoch, b"two"),
              CheckpointWrite("a:nobody", 5, b"three")]
    assert cr.run(cr.leases.save_checkpoints(writes, "n1")) == [WRITTEN, REFUSED, NO_LEASE]
    assert not cr.run(cr.leases.save_checkpoint("a:nobody", "n1", 5, b"x"))  # the one-write form: a bool



def test_adopting_a_dead_node_frees_its_placed_addresses_once(cr: ClusterRedis) -> None:
    cr.heartbeat("dead")
    cr.heartbeat("n2")
    cr.run(cr.leases.claim("a:placed", "dead", ttl=30, spec=b"args"))
    cr.run(cr.leases.claim("a:child", "dead", ttl=30))
    assert cr.run(cr.leases.adopt("dead")) is None  # still alive: nothing to adopt
    cr.kill("dead")
    assert cr.run(cr.leases.adopt("dead")) == ["a:placed"]
    assert cr.run(cr.leases.adopt("dead")) == []
    assert cr.sync.get(cr.keys.lease("a:placed")) is None and cr.sync.get(cr.keys.lease("a:child")) is None
    assert cr.run(cr.leases.unowned()) == ["a:placed"]
    assert "dead" not in cr.run(cr.leases.member_ids())
    assert cr.run(cr.leases.claim("a:placed", "n2", ttl=5)).won


def test_two_nodes_racing_for_one_address_exactly_one_wins(cr: ClusterRedis) -> None:
    """Threads with their own clients and loops claim the same addresses
    at the same moment, many times over (on the simulated store: tasks of
    the world's loop, each with its own client, their claims sent at the
    same virtual instant and interleaved by the network's delays)."""
    racers = ["r1", "r2", "r3"]
    for node in racers:
        cr.heartbeat(node)
    rounds = 40
    results: dict[str, list[bool]] = {n: [] for n in racers}
    if cr.world is not None:
        _race_in_world(cr, racers, rounds, results)
        for i in range(rounds):
            assert sum(results[n][i] for n in racers) == 1, f"round {i}: {[results[n][i] for n in racers]}"
        return
    barrier = threading.Barrier(len(racers))

    def race(node: str) -> None:
        import asyncio

        async def go() -> None:
            client = store_client(cr.url, max_connections=4)
            store = lease_store_for(client, namespace=cr.namespace)
            try:
                for i in range(rounds):
                    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
                    results[node].append((await store.claim(f"race:{i}", node, ttl=30)).won)
            finally:
                await client.aclose()

        asyncio.run(go())

    threads = [threading.Thread(target=race, args=(n,)) for n in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(rounds):
        assert sum(results[n][i] for n in racers) == 1, f"round {i}: {[results[n][i] for n in racers]}"


def _race_in_world(cr: ClusterRedis, racers: list[str], rounds: int, results: dict[str, list[bool]]) -> None:
    import asyncio

    async def race() -> None:
        clients = {n: store_client(cr.url, max_connections=4) for n in racers}
        stores = {n: lease_store_for(c, namespace=cr.namespace) for n, c in clients.items()}
        try:
            for i in range(rounds):
                won = await asyncio.gather(*(stores[n].claim(f"race:{i}", n, ttl=30) for n in racers))
                for n, result in zip(racers, won, strict=True):
                    results[n].append(result.won)
        finally:
            for client in clients.values():
                await client.aclose()

    cr.run(race())


class _CountingConnection(aioredis.Connection):
    """A connection that counts what it sends to the server (round trips)."""

    sent = 0

    async def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


def test_claiming_many_addresses_is_one_round_trip_and_brings_what_each_needs(cr1: ClusterRedis) -> None:
    """One server: the claims are one script. (On a cluster, one round trip
    per shard: the cluster pipeline's, tested by redis-py.)"""
    cr = cr1

    async def connect() -> aioredis.Redis:
        return aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(
            cr.url, connection_class=_CountingConnection))

    client = cr.run(connect())
    try:
        store = LeaseStore(client, namespace=cr.namespace, codec=cr.codec)
        for node in ("n1", "n2", "n3"):
            cr.heartbeat(node)
        assert cr.run(store.claim("a:warm", "n1", ttl=5)).won  # connected, script loaded
        held = cr.run(store.claim("a:1", "n2", ttl=5))  # a live holder keeps it
        cr.run(store.claim("a:2", "n3", ttl=5))
        cr.kill("n3")  # a dead holder's lease is taken
        cr.sync.set(cr.keys.checkpoint("a:3"), b"state-3")
        cr.sync.set(cr.keys.seen("a:3"), msgpack.packb(["m1", "m2"]))  # as a former version wrote them
        cr.sync.set(cr.keys.spec("a:3"), b"args-3")
        cr.sync.xadd(cr.keys.backlog("a:4"), {"e": b"waiting"})
        addresses = [f"a:{i}" for i in range(1, 301)]
        _CountingConnection.sent = 0
        results = cr.run(store.claim_many([(a, 0, b"new" if a == "a:5" else None) for a in addresses], "n1",
                                          ttl=5))
        assert _CountingConnection.sent == 1
    finally:
        cr.run(client.aclose())
    by = dict(zip(addresses, results, strict=True))
    assert not by["a:1"].won and (by["a:1"].holder, by["a:1"].epoch) == ("n2", held.epoch)
    won = [a for a in addresses if a != "a:1"]
    assert all(by[a].won and by[a].holder == "n1" for a in won)
    assert len({by[a].epoch for a in won}) == len(won)  # a new epoch each
    assert (by["a:3"].checkpoint, by["a:3"].spec, by["a:3"].seen) == (b"state-3", b"args-3", ("m1", "m2"))
    assert by["a:4"].backlog == (b"waiting",) and not cr.sync.exists(cr.keys.backlog("a:4"))
    assert by["a:5"].spec == b"new" and cr.sync.get(cr.keys.spec("a:5")) == b"new"
    assert (by["a:6"].checkpoint, by["a:6"].spec, by["a:6"].seen, by["a:6"].backlog) == (None, None, (), ())
    # Fencing as for one claim: each lease and its issued epoch are recorded.
    issued = cr.run(cr.leases.issued(won))
    assert all(issued[a] == (by[a].epoch, "n1", True) for a in won)
    assert cr.sync.smembers(cr.keys.held("n1")) == {b"a:warm", *(a.encode() for a in won)}
    assert cr.sync.smembers(cr.keys.held("n3")) == set()


def test_a_node_that_is_no_member_claims_nothing_of_a_batch(cr: ClusterRedis) -> None:
    results = cr.run(cr.leases.claim_many([("a:1", 0, None), ("a:2", 0, None)], "ghost", ttl=5))
    assert [(r.won, r.holder) for r in results] == [(False, ""), (False, "")]
    assert not cr.sync.exists(cr.keys.lease("a:1"))


def test_a_node_restarted_under_its_id_places_what_its_predecessor_left(cr: ClusterRedis) -> None:
    """A node restarted under the same id within a lease ttl is never seen
    dead, so nobody adopts its predecessor's addresses: it places them
    itself (``leftovers``). Lapsed leases with a spec become unowned, live
    ones are left to lapse (or to a predecessor still running), and those
    someone else holds now are no longer listed as its."""
    cr.heartbeat("n1")
    cr.heartbeat("n2")
    for address, spec in (("counter:lapsed", b"spec"), ("counter:live", b"spec"), ("counter:gone", None)):
        assert cr.run(cr.leases.claim(address, "n1", ttl=5, spec=spec)).won
    cr.sync.delete(cr.keys.lease("counter:lapsed"))  # the predecessor died: two of its leases lapsed
    cr.sync.delete(cr.keys.lease("counter:gone"))
    placed, live = cr.run(cr.leases.leftovers("n1"))
    assert placed == ["counter:lapsed"] and live == 1
    assert cr.sync.smembers(cr.keys.held("n1")) == {b"counter:live"}
    assert b"counter:lapsed" in cr.sync.smembers(cr.keys.unowned)
    assert b"counter:gone" not in cr.sync.smembers(cr.keys.unowned)  # no spec: nothing to start it from
    cr.sync.delete(cr.keys.lease("counter:live"))
    assert cr.run(cr.leases.claim("counter:live", "n2", ttl=5, spec=b"spec")).won  # someone else's now
    cr.sync.sadd(cr.keys.held("n1"), "counter:live")  # a stale listing
    assert cr.run(cr.leases.leftovers("n1")) == ([], 0)
    assert cr.sync.smembers(cr.keys.held("n1")) == set()


def test_a_lease_written_back_brings_its_state_and_the_ids_that_state_includes(cr: ClusterRedis) -> None:
    """After Redis lost its data the holder writes back its lease, its
    placement, its newest state and the msg ids that state includes (so a
    next owner still drops copies of those messages), where Redis has none."""
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    cr.sync.flushall()
    assert cr.run(cr.leases.restore("a:1", "n1", lease.epoch, ttl=5, spec=b"spec", checkpoint=b"state",
                                    seen=["m1", "m2"]))
    assert cr.run(cr.leases.load_checkpoint("a:1")) == b"state"
    assert cr.run(cr.leases.load_seen("a:1")) == ["m1", "m2"]


def _ids(cr: ClusterRedis, address: str) -> list[str]:
    return [i.decode() for i in cr.sync.lrange(cr.keys.handled(address), 0, -1)]


def test_handled_ids_are_appended_a_few_at_a_time_and_a_retry_appends_nothing_twice(cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5))

    def write(seen: HandledIds, data: bytes | None = None) -> int:
        [verdict] = cr.run(cr.leases.save_checkpoints([CheckpointWrite("a:1", lease.epoch, data, seen)], "n1"))
        return verdict

    assert write(HandledIds(("m1", "m2"))) == WRITTEN  # the first: nothing before it
    assert write(HandledIds(("m3",), after="m2")) == WRITTEN
    assert _ids(cr, "a:1") == ["m1", "m2", "m3"]
    assert write(HandledIds(("m3",), after="m2")) == WRITTEN  # sent again: its reply was lost
    assert _ids(cr, "a:1") == ["m1", "m2", "m3"]
    assert write(HandledIds(("m3", "m4"), after="m2")) == WRITTEN  # a retry merged with the next write
    assert _ids(cr, "a:1") == ["m1", "m2", "m3", "m4"]
    # Not where the writer believes the list ends: the state is written with
    # its own ids (its messages are in it: a copy must still be dropped),
    # and the writer is told to send the whole window.
    assert write(HandledIds(("m10",), after="m9"), b"state") == RESEND_SEEN
    assert _ids(cr, "a:1") == ["m1", "m2", "m3", "m4", "m10"]
    assert cr.run(cr.leases.load_checkpoint("a:1")) == b"state"
    assert write(HandledIds(("m4", "m9", "m10"), replace=True)) == WRITTEN
    assert _ids(cr, "a:1") == ["m4", "m9", "m10"]
    assert 0 < cr.sync.pttl(cr.keys.handled("a:1"))
    many = tuple(f"x{i}" for i in range(SEEN_PER_ADDRESS + 40))
    assert write(HandledIds(many, after="m10")) == WRITTEN
    assert _ids(cr, "a:1") == list(many[-SEEN_PER_ADDRESS:])  # bounded: the newest stay
    # The single-write form counts a write whose ids must be resent as written.
    assert cr.run(cr.leases.save_checkpoint("a:1", "n1", lease.epoch, b"next", seen=HandledIds(("y",), after="?")))
    # The next owner reads them with its claim (that last id too, still bounded).
    cr.kill("n1")
    cr.heartbeat("n2")
    assert cr.run(cr.leases.claim("a:1", "n2", ttl=5)).seen == (*many[-SEEN_PER_ADDRESS + 1:], "y")


def test_an_append_to_a_list_redis_no_longer_holds_asks_for_the_window_and_keeps_its_own_ids(
        cr: ClusterRedis) -> None:
    cr.heartbeat("n1")
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    write = lambda seen: cr.run(cr.leases.save_checkpoints(  # noqa: E731
        [CheckpointWrite("a:1", lease.epoch, None, seen)], "n1"))[0]
    assert write(HandledIds(("m1",))) == WRITTEN
    cr.sync.delete(cr.keys.handled("a:1"))  # lapsed, or Redis lost it
    assert write(HandledIds(("m2",), after="m1")) == RESEND_SEEN
    assert _ids(cr, "a:1") == ["m2"]
    assert 0 < cr.sync.pttl(cr.keys.handled("a:1"))
    assert write(HandledIds(("m1", "m2"), replace=True)) == WRITTEN
    assert _ids(cr, "a:1") == ["m1", "m2"]
    # An append that follows on nothing the list holds adds only the ids it
    # does not hold (a stale retry landing after the window adds nothing twice).
    assert write(HandledIds(("m1", "m3"), after="m0")) == RESEND_SEEN
    assert _ids(cr, "a:1") == ["m1", "m2", "m3"]
    # A former owner's write of ids is refused like its state.
    cr.kill("n1")
    cr.heartbeat("n2")
    cr.run(cr.leases.claim("a:1", "n2", ttl=5))
    assert write(HandledIds(("m4",), after="m3")) == REFUSED
    assert _ids(cr, "a:1") == ["m1", "m2", "m3"]


def test_ids_a_former_version_wrote_are_read_and_replaced_by_the_whole_window(cr: ClusterRedis) -> None:
    """A rolling upgrade: the old format (one msgpack value under ``seen``)
    is read by a claim and by ``load_seen``; the first append after it is
    refused (no list yet), and the whole window replaces both."""
    cr.heartbeat("n1")
    cr.sync.set(cr.keys.seen("a:1"), msgpack.packb(["old1", "old2"]))
    lease = cr.run(cr.leases.claim("a:1", "n1", ttl=5))
    assert lease.seen == ("old1", "old2")
    assert cr.run(cr.leases.load_seen("a:1")) == ["old1", "old2"]
    [verdict] = cr.run(cr.leases.save_checkpoints(
        [CheckpointWrite("a:1", lease.epoch, None, HandledIds(("m1",), after="old2"))], "n1"))
    assert verdict == RESEND_SEEN
    [verdict] = cr.run(cr.leases.save_checkpoints(
        [CheckpointWrite("a:1", lease.epoch, None, HandledIds(("old1", "old2", "m1"), replace=True))], "n1"))
    assert verdict == WRITTEN
    assert _ids(cr, "a:1") == ["old1", "old2", "m1"] and not cr.sync.exists(cr.keys.seen("a:1"))
