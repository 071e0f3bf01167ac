"""Cluster nodes on a real redis-server, in one process: placement,
leases, failover from checkpoints, the backlog, hand-off and drain, fencing
of checkpoints, a Redis restart. (Separate processes: tests/integration.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import pytest
import redis

from actors.runtime.actor import HuddleActor
from actors.runtime.builtin import CounterAdd, CounterGet, Echo
from actors.cluster import ClusterConfig, encode_start_args
from actors.runtime.messages import ChildExit
from actors.runtime.node import Node
from actors.runtime.supervisor import ChildSpec, Supervisor
from bus.address import channel_for
from bus.cluster.placement import owner_of
from bus.envelope import Envelope
from bus.errors import AskTimeout, EncodeError
from bus.messages import Message, Ping, Pong
from tests.waiting import wait_until

from .conftest import DEADLINE, Rig

pytestmark = pytest.mark.integration


def value(node: Node, address: str) -> dict[str, Any]:
    return node.ask(address, CounterGet(), timeout=DEADLINE).get(timeout=DEADLINE + 1)


def wait_value(rig: Rig, node: Node, address: str, predicate: Any, what: str) -> dict[str, Any]:
    """Ask until ``predicate(value)``; each ask is an explicit round trip.
    An ask that gets no answer (its reply published while the asker's
    connection was being restored, after a Redis restart) is asked again."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE
    pause = threading.Event()
    while time.monotonic() < deadline:
        try:
            seen.append(node.ask(address, CounterGet(), timeout=2.0).get(timeout=3.0))
        except AskTimeout:
            continue
        if predicate(seen[-1]):
            return seen[-1]
        pause.wait(0.05)
    raise AssertionError(f"{address}: {what}; last value {seen[-1] if seen else None}")


def stored_count(rig: Rig, address: str) -> int | None:
    """The count in the checkpoint Redis holds for ``address``."""
    raw = redis.Redis.from_url(rig.url)
    try:
        data = raw.get(next(iter(rig.clusters.values())).leases.keys.checkpoint(address))
    finally:
        raw.close()
    return msgpack.unpackb(data, raw=False)["count"] if data else None


def wait_stored(rig: Rig, address: str, count: int) -> None:
    """Checkpoints are written after the handler answered: before a crash,
    wait until Redis has the state the test relies on."""
    wait_until(lambda: stored_count(rig, address) == count, f"{address} checkpointed at {count}")


def test_ensure_places_each_address_on_the_node_that_ranks_first(rig: Rig) -> None:
    for n in ("a", "b", "c"):
        rig.add(n)
    client = rig.add("client", kinds=())  # hosts nothing placed
    addresses = [f"counter:{i}" for i in range(12)]
    owners = {a: client.ensure(a, start=i).get(timeout=DEADLINE) for i, a in enumerate(addresses)}
    hosts = dict.fromkeys(("a", "b", "c"), 1.0)
    assert owners == {a: owner_of(a, hosts) for a in addresses}
    for i, address in enumerate(addresses):
        assert rig.nodes[owners[address]].lookup(address) is not None
        assert value(rig.nodes["client"], address)["count"] == i  # start arguments arrived
    # Ensuring again is a no-op that names the owner.
    assert client.ensure(addresses[0]).get(timeout=DEADLINE) == owners[addresses[0]]


def test_ensure_asks_the_store_not_the_owner_it_remembers(rig: Rig) -> None:
    """The directory is a cache: it may name a live node that released the
    address since (its release announcement read before the look-up answer
    that named it). Ensuring such an address places it. Before, ensure
    believed the cache and placed nothing (the cluster webinar simulation,
    seed 18 on three nodes: meetings started again after Redis lost their
    placement never came back)."""
    rig.add("a")
    client = rig.add("client", kinds=())
    address = "counter:cached"
    client.io.call(lambda: client.directory.learn(address, "a", 1))  # nobody holds it
    assert client.ensure(address, start=5).get(timeout=DEADLINE) == "a"
    rig.events.wait(event="started", node="a", address=address)
    assert value(rig.nodes["client"], address)["count"] == 5


def test_start_arguments_are_primitives_and_never_secrets() -> None:
    assert encode_start_args({"start": 1, "room": "r-1"})
    with pytest.raises(EncodeError):
        encode_start_args({"auth_token": "x"})
    with pytest.raises(EncodeError):
        encode_start_args({"when": object()})


def test_a_spawn_takes_the_lease_and_another_node_cannot(rig: Rig) -> None:
    a = rig.add("a")
    b = rig.add("b")
    assert rig.nodes["a"].spawn("echo:only", Echo) is None  # started once the lease is ours
    rig.events.wait(event="started", node="a", address="echo:only")
    started = rig.events.matching(event="lease-acquired", node="a", address="echo:only")[0]
    assert started.detail["epoch"] > 0 and not started.detail["placed"]
    rig.nodes["b"].spawn("echo:only", Echo)
    refused = rig.events.wait(event="lease-refused", node="b", address="echo:only")[0]
    assert refused.detail["holder"] == "a"
    assert rig.nodes["b"].lookup("echo:only") is None
    assert rig.nodes["b"].ask("echo:only", Ping(n=3), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=3)
    del a, b


def test_a_child_that_cannot_take_its_lease_is_reported_to_its_supervisor(rig: Rig) -> None:
    rig.add("a")
    rig.add("b")
    rig.nodes["a"].spawn("echo:kid", Echo)
    rig.events.wait(event="started", node="a", address="echo:kid")

    exits: list[ChildExit] = []

    class Watching(Supervisor):
        def on_message(self, message: Message, envelope: Envelope) -> Any:
            if isinstance(message, ChildExit):
                exits.append(message)
            return super().on_message(message, envelope)

    rig.nodes["b"].spawn("sup:1", Watching, [ChildSpec("echo:kid", Echo)], intensity=0)
    rig.events.wait(event="escalated", node="b", address="sup:1")
    assert exits and exits[0].crashed and exits[0].reason == "LeaseHeld"


def test_a_child_whose_supervisor_is_gone_when_its_lease_comes_is_not_started(rig: Rig) -> None:
    """A supervisor's child starts once its lease is claimed; a supervisor
    that stopped meanwhile leaves nobody to stop that child (and its next
    incarnation here would find the address in use): the child is not
    started and its lease goes back."""
    rig.add("a")
    node = rig.nodes["a"]
    assert node.spawn("echo:orphan", Echo, parent="sup:gone") is None
    dropped = rig.events.wait(event="activation-dropped", node="a", address="echo:orphan")[0]
    assert dropped.reason == "supervisor-gone" and dropped.detail["supervisor"] == "sup:gone"
    rig.events.wait(event="lease-released", node="a", address="echo:orphan")
    assert node.lookup("echo:orphan") is None and not rig.events.matching(event="started", address="echo:orphan")


def test_a_crashed_nodes_actors_are_live_elsewhere_with_their_checkpoints(rig: Rig) -> None:
    for n in ("a", "b", "c"):
        rig.add(n)
    client = rig.add("client", kinds=())
    addresses = [f"counter:{i}" for i in range(9)]
    owners = {a: client.ensure(a).get(timeout=DEADLINE) for a in addresses}
    for i, address in enumerate(addresses):
        assert rig.nodes["client"].ask(address, CounterAdd(n=i + 1, tag="before")).get(timeout=DEADLINE) == i + 1
    for i, address in enumerate(addresses):
        wait_stored(rig, address, i + 1)
    victim = owners[addresses[0]]
    moved = [a for a in addresses if owners[a] == victim]
    rig.crash(victim)
    rig.events.wait(event="node-dead", address=f"node:{victim}")
    for address in moved:
        started = rig.events.wait(event="started", address=address, count=2)[-1]
        assert started.node != victim
        assert started.detail["epoch"] > 0
    for i, address in enumerate(addresses):
        got = value(rig.nodes["client"], address)
        assert got["count"] == i + 1 and got["tags"] == ["before"]  # from the checkpoint
        if address in moved:
            assert got["node"] != victim


def subscribers(rig: Rig, address: str) -> int:
    raw = redis.Redis.from_url(rig.url)
    try:
        return int(raw.pubsub_numsub(channel_for(address, rig.namespace))[0][1])
    finally:
        raw.close()


def test_messages_sent_while_the_owner_is_dead_are_delivered_once_after_reactivation(rig: Rig) -> None:
    rig.add("a")
    rig.add("b")
    client = rig.add("client", kinds=())
    sender = rig.nodes["client"]
    owner = client.ensure("counter:x").get(timeout=DEADLINE)
    sender.ask("counter:x", CounterAdd(n=1, tag="t0")).get(timeout=DEADLINE)
    wait_stored(rig, "counter:x", 1)
    rig.crash(owner)
    wait_until(lambda: subscribers(rig, "counter:x") == 0, "Redis saw the owner's connection close")
    # Dead, and nobody noticed its missing heartbeats yet: the publish
    # reaches nobody, the sender routes it into the backlog.
    early = [f"t{i}" for i in range(1, 11)]
    for tag in early:
        sender.tell("counter:x", CounterAdd(n=1, tag=tag))
    rig.events.wait(event="node-dead", node="client", address=f"node:{owner}")
    # Noticed: sent through the script (backlog, or the new owner).
    late = [f"t{i}" for i in range(11, 21)]
    for tag in late:
        sender.tell("counter:x", CounterAdd(n=1, tag=tag))
    survivor = "b" if owner == "a" else "a"
    rig.events.wait(event="started", node=survivor, address="counter:x")
    tags = early + late
    got = wait_value(rig, sender, "counter:x", lambda v: set(tags) <= set(v["tags"]), "every tag arrived")
    assert sorted(got["tags"]) == sorted(["t0", *tags])  # each exactly once
    assert got["count"] == 21
    assert rig.events.matching(event="backlogged", node="client", address="counter:x")


def test_a_message_to_a_placed_address_with_no_host_waits_until_one_joins(rig: Rig) -> None:
    client = rig.add("client", kinds=())
    future = client.ensure("counter:later")
    rig.nodes["client"].tell("counter:later", CounterAdd(n=5, tag="early"))
    rig.events.wait(event="backlogged", address="counter:later")
    rig.add("host")
    assert future.get(timeout=DEADLINE) == "host"
    got = wait_value(rig, rig.nodes["client"], "counter:later", lambda v: v["count"] == 5, "the early add arrived")
    assert got["tags"] == ["early"]


def test_a_second_copy_of_an_envelope_is_dropped(rig: Rig) -> None:
    rig.add("a")
    client = rig.add("client", kinds=())
    client.ensure("counter:d").get(timeout=DEADLINE)
    data = rig.nodes["client"].codec.encode(Envelope(to="counter:d", message=CounterAdd(n=1, tag="once")))
    raw = redis.Redis.from_url(rig.url)
    try:
        channel = channel_for("counter:d", rig.namespace)
        assert raw.publish(channel, data) == 1
        assert raw.publish(channel, data) == 1
    finally:
        raw.close()
    rig.events.wait(event="dead-letter", reason="duplicate", address="counter:d")
    assert value(rig.nodes["client"], "counter:d")["tags"] == ["once"]


def test_a_joining_node_takes_its_share_by_hand_off_and_nothing_is_lost(rig: Rig) -> None:
    rig.add("a")
    client = rig.add("client", kinds=())
    sender = rig.nodes["client"]
    addresses = [f"counter:{i}" for i in range(10)]
    for address in addresses:
        assert client.ensure(address).get(timeout=DEADLINE) == "a"
    moving = [a for a in addresses if owner_of(a, {"a": 1.0, "b": 1.0}) == "b"]
    assert moving

    sent: dict[str, list[str]] = {a: [] for a in addresses}
    stop = threading.Event()

    def keep_sending() -> None:
        i = 0
        while not stop.is_set():
            address = addresses[i % len(addresses)]
            tag = f"m{i}"
            sent[address].append(tag)
            sender.tell(address, CounterAdd(n=1, tag=tag))
            i += 1
            stop.wait(0.002)

    thread = threading.Thread(target=keep_sending)
    thread.start()
    try:
        rig.add("b")
        for address in moving:
            rig.events.wait(event="handoff", node="a", address=address)
            rig.events.wait(event="started", node="b", address=address)
    finally:
        stop.set()
        thread.join(DEADLINE)
    for address in addresses:
        got = wait_value(rig, sender, address, lambda v, a=address: set(sent[a]) <= set(v["tags"]),
                         "every tag arrived")
        assert sorted(got["tags"]) == sorted(sent[address]), "each exactly once"
        assert got["node"] == ("b" if address in moving else "a")


def test_drain_hands_everything_to_the_others_and_leaves(rig: Rig) -> None:
    a = rig.add("a")
    rig.add("b")
    client = rig.add("client", kinds=())
    addresses = [f"counter:{i}" for i in range(8)]
    for address in addresses:
        client.ensure(address).get(timeout=DEADLINE)
        rig.nodes["client"].ask(address, CounterAdd(n=2, tag="x")).get(timeout=DEADLINE)
    a.drain().get(timeout=DEADLINE)
    rig.events.wait(event="left", node="a")
    assert rig.nodes["a"].addresses() == ["node:a/cluster"]
    for address in addresses:
        got = value(rig.nodes["client"], address)
        assert got["node"] == "b" and got["count"] == 2


def test_a_checkpoint_under_a_lost_lease_is_refused_and_the_actor_stops(rig: Rig) -> None:
    a = rig.add("a")
    client = rig.add("client", kinds=())
    client.ensure("counter:f").get(timeout=DEADLINE)
    rig.events.wait(event="started", node="a", address="counter:f")
    epoch = a.state.leases["counter:f"].epoch
    raw = redis.Redis.from_url(rig.url)
    try:  # someone else holds it now, as after a partition
        raw.set(a.leases.keys.lease("counter:f"), f"{epoch + 1} intruder", px=60_000)
        rig.nodes["client"].tell("counter:f", CounterAdd(n=1, tag="late"))
        rig.events.wait(event="checkpoint-refused", node="a", address="counter:f", reason="stale-epoch")
        rig.events.wait(event="lease-lost", node="a", address="counter:f")
        rig.events.wait(event="stopped", node="a", address="counter:f")
        assert raw.get(a.leases.keys.checkpoint("counter:f")) is None
    finally:
        raw.close()


def test_an_actor_whose_lease_expired_neither_sends_nor_handles(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local validity check, without waiting for the core to notice."""
    a = rig.add("a")
    a.ensure("counter:v").get(timeout=DEADLINE)
    rig.events.wait(event="started", node="a", address="counter:v")
    lease = a.state.leases["counter:v"]
    assert a.may_send("counter:v", lease.epoch) and a.may_deliver("counter:v")
    # As if the process had been paused past it: past the core's validity,
    # and past what the renewal lane's last answer (or the claim) confirmed.
    lease.valid_until = 0.0
    monkeypatch.setattr(a._lane, "confirms", lambda *_args: False)
    assert not a.may_send("counter:v", lease.epoch)
    assert not a.may_deliver("counter:v")
    assert not a.may_send("counter:v", lease.epoch + 1)


def test_nodes_recover_from_a_redis_restart(private_rig: tuple[Rig, Any]) -> None:
    """Redis comes back empty (no persistence): every node notices the new
    era and writes its leases back (same epochs), with specs and the
    checkpoints it holds; actors never stopped."""
    rig, server = private_rig
    patient = ClusterConfig(heartbeat_interval=0.15, lease_ttl=6.0, sweep_interval=1.0)
    rig.add("a", config=patient)
    rig.add("b", config=patient)
    client = rig.add("client", kinds=(), config=patient)
    addresses = [f"counter:{i}" for i in range(6)]
    for address in addresses:
        client.ensure(address).get(timeout=DEADLINE)
        rig.nodes["client"].ask(address, CounterAdd(n=3, tag="pre")).get(timeout=DEADLINE)
    server.restart()
    for node in ("a", "b"):
        rig.events.wait(event="redis-reset", node=node)
    rig.events.wait(event="lease-restored", count=len(addresses))
    for address in addresses:
        got = wait_value(rig, rig.nodes["client"], address, lambda v: v["count"] >= 3, "answers again")
        assert got["count"] == 3
        assert rig.nodes["client"].ask(address, CounterAdd(n=1, tag="post")).get(timeout=DEADLINE) == 4
    assert not rig.events.matching(event="lease-lost")
    raw = redis.Redis.from_url(rig.url)
    try:  # what Redis lost was written back
        keys = rig.clusters["a"].leases.keys
        assert all(raw.get(keys.spec(a)) is not None for a in addresses)
    finally:
        raw.close()


def test_a_counter_acknowledges_an_addition_once_its_checkpoint_is_stored(rig: Rig) -> None:
    from actors.runtime.builtin import CounterAck

    acks: list[CounterAck] = []
    got = threading.Event()

    class Acks(HuddleActor):
        def on_message(self, message: Message, envelope: Envelope) -> Any:
            if isinstance(message, CounterAck):
                acks.append(message)
                got.set()
                return None
            return super().on_message(message, envelope)

    a = rig.add("a")
    client = rig.add("client", kinds=())
    rig.nodes["client"].spawn("acks:1", Acks)
    rig.events.wait(event="started", node="client", address="acks:1")
    client.ensure("counter:ack").get(timeout=DEADLINE)
    rig.nodes["client"].tell("counter:ack", CounterAdd(n=2, tag="t", ack_to="acks:1"))
    assert got.wait(DEADLINE)
    raw = redis.Redis.from_url(rig.url)
    try:
        stored = msgpack.unpackb(raw.get(a.leases.keys.checkpoint("counter:ack")), raw=False)
    finally:
        raw.close()
    assert stored["count"] == 2 and stored["tags"] == ["t"]
    assert acks[0].address == "counter:ack" and acks[0].tag == "t" and acks[0].count == 2
    assert acks[0].epoch == a.state.leases["counter:ack"].epoch


def test_after_an_outage_longer_than_the_lease_actors_come_back_from_what_nodes_kept(
        private_rig: tuple[Rig, Any]) -> None:
    """Redis is gone past every lease, and comes back empty: every node
    fenced its actors meanwhile; once Redis answers, they write back the
    specs and checkpoints they kept, and the actors are activated again."""
    rig, server = private_rig
    rig.add("a")
    rig.add("b")
    client = rig.add("client", kinds=())
    addresses = [f"counter:{i}" for i in range(4)]
    for address in addresses:
        client.ensure(address).get(timeout=DEADLINE)
        rig.nodes["client"].ask(address, CounterAdd(n=7, tag="kept")).get(timeout=DEADLINE)
    for address in addresses:
        wait_stored(rig, address, 7)
    server.kill()
    for address in addresses:
        rig.events.wait(event="lease-lost", address=address, reason="expired")
    server.start()  # empty: no persistence
    for address in addresses:
        got = wait_value(rig, rig.nodes["client"], address, lambda v: v["count"] == 7, "back with its state")
        assert got["tags"] == ["kept"]


def test_checkpoints_saved_together_go_to_redis_in_one_round_trip_each_under_its_lease(rig: Rig) -> None:
    a = rig.add("a")
    node = rig.nodes["a"]
    addresses = [f"echo:ck{i}" for i in range(40)]
    for address in addresses:
        node.spawn(address, Echo)
    for address in addresses:
        rig.events.wait(event="started", node="a", address=address)
    epochs = {address: a.state.leases[address].epoch for address in addresses}
    before = node.counters["cluster:checkpoint-batches"]

    def save_all() -> list[bool]:  # one loop turn: the writer runs after it
        return [a.checkpoints.save(address, epochs[address], msgpack.packb({"n": i}))
                for i, address in enumerate(addresses)] + [a.checkpoints.save("echo:ck0", epochs["echo:ck0"] + 1, b"")]

    results = node.io.call(save_all)
    assert results == [True] * 40 + [False]  # a write under an epoch that is not the lease's is refused here
    assert all(node.io.submit(a.checkpoints.confirm(address)).result(DEADLINE) for address in addresses)
    assert node.counters["cluster:checkpoint-batches"] == before + 1
    raw = redis.Redis.from_url(rig.url)
    try:
        stored = raw.mget([a.leases.keys.checkpoint(address) for address in addresses])
    finally:
        raw.close()
    assert [msgpack.unpackb(v)["n"] for v in stored] == list(range(40))


def test_after_shutdown_no_task_starts_on_a_loop_about_to_close(rig: Rig) -> None:
    import inspect

    cluster = rig.add("late-1")
    node = cluster.node
    rig.crash("late-1")  # the shell's shutdown ran; the node's loop still turns

    async def late_send() -> None:
        raise AssertionError("never runs")

    coro = late_send()
    node.io.call(cluster._spawn_task, coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # closed, not left pending
    assert not cluster._tasks
