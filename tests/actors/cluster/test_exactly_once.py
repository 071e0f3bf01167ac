"""Exactly once across owner changes: the msg ids an address's actor
handled travel with its checkpoints (or by themselves, for an actor that
does not checkpoint), and its next owner, on another node or after a
restart, drops a copy of one of them.

The first tests are the bookkeeping alone (no Redis); then the script that
writes the ids with the state, under the same epoch compare; then nodes in
one process on a real redis-server. (Separate processes:
tests/integration/test_exactly_once.py.)"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given as hyp_given
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
import redis
import redis.asyncio as aioredis

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.builtin import CounterAdd, CounterGet
from actors.cluster.dedupe import SeenIds
from bus.cluster.leases import RESEND_SEEN, SEEN_PER_ADDRESS, CheckpointWrite, HandledIds, LeaseStore
from bus.embedded import EmbeddedRedis
from bus.envelope import Envelope
from bus.messages import Message, Ping
from tests.waiting import wait_until

from .conftest import DEADLINE, Rig

# -- the bookkeeping -----------------------------------------------------------------


def given(seen: SeenIds, address: str, *ids: str) -> None:
    for msg_id in ids:
        assert seen.first(msg_id, address, track=True)


def test_an_id_counts_as_handled_once_its_actor_is_handed_it_and_never_while_queued() -> None:
    seen = SeenIds(100, keep=10)
    given(seen, "counter:1", "m1", "m2", "m3")
    seen.handling("counter:1")  # m1 is being handled
    assert seen.handled("counter:1") == HandledIds(("m1",))  # a checkpoint its handler saves carries it
    seen.handling("counter:1")  # m2
    seen.handling("counter:1")  # m3
    # only what no write carried yet, appended after the newest id one did
    assert seen.handled("counter:1") == HandledIds(("m2", "m3"), after="m1")
    given(seen, "counter:1", "m4")  # queued: not handled anywhere yet
    assert seen.handled("counter:1") is None  # nothing new
    assert seen.handled("counter:1", whole=True) == HandledIds(("m1", "m2", "m3"), replace=True)
    assert not seen.first("m2", "counter:1")  # a copy


def test_a_forwarded_id_is_never_written_and_a_copy_of_it_is_a_first_delivery() -> None:
    seen = SeenIds(100, keep=10)
    given(seen, "counter:1", "m1", "m2", "m3")
    seen.handling("counter:1")  # m1
    seen.forget("m1", "counter:1")  # the lease was lost before the handler ran: forwarded
    seen.forget("m3", "counter:1")  # queued behind a stop: forwarded
    seen.handling("counter:1")  # m2
    assert seen.handled("counter:1") == HandledIds(("m2",))
    assert seen.first("m1", "counter:1") and seen.first("m3", "counter:1")


def test_restored_ids_drop_copies_and_the_next_writes_append_to_them() -> None:
    seen = SeenIds(100, keep=4)
    seen.restore("counter:1", ["old1", "old2"])  # as Redis's list holds them
    assert not seen.first("old2", "counter:1")
    given(seen, "counter:1", "m1", "m2")
    for _ in range(2):
        seen.handling("counter:1")
    assert seen.handled("counter:1") == HandledIds(("m1", "m2"), after="old2")  # after the list's end
    given(seen, "counter:1", "m3", "m4")
    for _ in range(2):
        seen.handling("counter:1")
    assert seen.handled("counter:1") == HandledIds(("m3", "m4"), after="m2")
    assert seen.handled("counter:1", whole=True).ids == ("m1", "m2", "m3", "m4")  # bounded: the oldest go first
    assert seen.first("old1", "counter:1")  # beyond the bound: a copy that late is handled again


def test_ids_no_checkpoint_carried_are_reported_until_written() -> None:
    seen = SeenIds(100, keep=10)
    given(seen, "echo:1", "m1", "m2")
    seen.handling("echo:1")  # m1, no checkpoint
    assert seen.unwritten() == [("echo:1", "m1")]  # m1 may still be running
    assert seen.take("echo:1", with_current=False) is None  # its actor is busy: nothing handled yet
    seen.handling("echo:1")  # m2: m1 is handled now
    assert seen.unwritten() == [("echo:1", "m2")]
    assert seen.take("echo:1", with_current=True) == HandledIds(("m1", "m2"))  # its actor was parked
    assert seen.unwritten() == []
    assert seen.handled("echo:1") is None
    assert seen.handled("echo:1", whole=True).ids == ("m1", "m2")


def test_a_message_written_while_running_is_not_written_again_once_handled() -> None:
    seen = SeenIds(100, keep=10)
    given(seen, "echo:1", "m1", "m2", "m3")
    seen.handling("echo:1")
    seen.handling("echo:1")  # m1 handled, m2 running
    assert seen.take("echo:1", with_current=False) == HandledIds(("m1",))  # the actor is busy with m2
    assert seen.handled("echo:1") == HandledIds(("m2",), after="m1")  # its handler saved a checkpoint
    seen.handling("echo:1")  # m2 done, m3 running
    assert seen.unwritten() == [("echo:1", "m3")]
    assert seen.take("echo:1", with_current=False) is None  # m2 went with the checkpoint


def test_a_refused_append_makes_the_next_write_the_whole_window() -> None:
    seen = SeenIds(100, keep=3)
    given(seen, "echo:1", "m1", "m2", "m3", "m4")
    for _ in range(3):
        seen.handling("echo:1")
    assert seen.take("echo:1", with_current=True) == HandledIds(("m1", "m2", "m3"))
    seen.resend("echo:1")  # the script: Redis's list does not end at m3
    assert seen.unwritten() == [("echo:1", None)]
    seen.handling("echo:1")  # m4
    assert seen.take("echo:1", with_current=True) == HandledIds(("m2", "m3", "m4"), replace=True)
    seen.handling("echo:1")
    assert seen.handled("echo:1") is None and seen.unwritten() == []


def test_untracked_addresses_are_deduplicated_on_this_node_only() -> None:
    seen = SeenIds(2)
    assert seen.first("a") and not seen.first("a")
    assert seen.first("b") and seen.first("c")
    assert seen.first("a")  # beyond the node-wide bound
    assert seen.handled("node:x/cluster") is None
    seen.handling("node:x/cluster")  # not tracked: nothing happens


# -- the script ----------------------------------------------------------------------


class Store:
    """The lease scripts of a private namespace, driven from sync tests."""

    def __init__(self, url: str) -> None:
        self.runner = asyncio.Runner()
        self.client: aioredis.Redis = self.runner.run(self._connect(url))
        self.leases = LeaseStore(self.client, namespace=f"eo{uuid.uuid4().hex[:8]}:")
        self.sync = redis.Redis.from_url(url)
        self.keys = self.leases.keys

    @staticmethod
    async def _connect(url: str) -> aioredis.Redis:
        return aioredis.Redis.from_url(url)

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def hold(self, address: str, node: str, epoch: int) -> None:
        self.sync.set(self.keys.lease(address), f"{epoch} {node}", px=60_000)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.runner.close()
        self.sync.close()


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[Store]:
    s = Store(redis_server.url)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.integration
def test_the_ids_are_written_with_the_checkpoint_under_the_same_epoch_compare(store: Store) -> None:
    state = msgpack.packb({"count": 1})
    store.hold("counter:1", "n1", 7)
    assert store.run(store.leases.save_checkpoint("counter:1", "n1", 7, state, seen=["m1", "m2"]))
    assert store.sync.get(store.keys.checkpoint("counter:1")) == state  # the state's format is unchanged
    assert store.run(store.leases.load_seen("counter:1")) == ["m1", "m2"]
    assert 0 < store.sync.pttl(store.keys.handled("counter:1"))
    # The lease moved: neither the state nor the ids of the former owner land.
    store.hold("counter:1", "n2", 8)
    assert not store.run(store.leases.save_checkpoint("counter:1", "n1", 7, b"\x01", seen=["m3"]))
    assert store.sync.get(store.keys.checkpoint("counter:1")) == state
    assert store.run(store.leases.load_seen("counter:1")) == ["m1", "m2"]


@pytest.mark.integration
def test_the_ids_alone_leave_the_stored_state_as_it_is(store: Store) -> None:
    store.hold("echo:1", "n1", 3)
    assert store.run(store.leases.save_checkpoint("echo:1", "n1", 3, None, seen=["m1"]))
    assert store.sync.get(store.keys.checkpoint("echo:1")) is None  # an actor that never checkpoints
    assert store.run(store.leases.save_checkpoint("echo:1", "n1", 3, b"\x01"))
    assert store.run(store.leases.save_checkpoint("echo:1", "n1", 3, None, seen=["m1", "m2"]))
    assert store.sync.get(store.keys.checkpoint("echo:1")) == b"\x01"
    assert store.run(store.leases.load_seen("echo:1")) == ["m1", "m2"]


@pytest.mark.integration
def test_a_checkpoint_stored_without_ids_still_loads(store: Store) -> None:
    """As an older version wrote it: the state alone, no ``seen`` key."""
    store.hold("counter:old", "n1", 5)
    assert store.run(store.leases.save_checkpoint("counter:old", "n1", 5, msgpack.packb({"count": 4})))
    assert store.run(store.leases.load_seen("counter:old")) == []
    assert store.run(store.leases.load_checkpoint("counter:old")) == msgpack.packb({"count": 4})
    store.sync.set(store.keys.seen("counter:old"), b"\xc1 not msgpack")
    assert store.run(store.leases.load_seen("counter:old")) == []  # unreadable: nothing dropped


@pytest.mark.integration
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@hyp_given(st.lists(st.tuples(st.sampled_from(["handle", "write", "lost", "in-doubt", "resent", "wiped"]),
                              st.integers(1, 40)), max_size=30))
def test_incremental_writes_leave_the_newest_ids_in_redis_across_lost_and_repeated_writes(
        store: Store, steps: list[tuple[str, int]]) -> None:
    """The node's side (:class:`SeenIds`, merging a write to send again with
    the next as the checkpoint writer does) against the real script: a
    write may be lost before Redis ran it, or run with its reply lost (both
    sent again, merged with the next), or its append refused; Redis may
    lose the list (then, as when it lost its data, the node writes the
    whole window back through the same ordered writer: ``Cluster._reassert``;
    a stale retry of an older window once landed after a window written
    beside that writer and cut the newest ids off). Redis never holds an id
    twice or out of order, and once the writes go through it holds exactly
    the newest handled ids."""
    address = f"echo:{uuid.uuid4().hex[:8]}"
    store.hold(address, "n1", 7)
    seen = SeenIds(10_000)
    order: list[str] = []
    again: HandledIds | None = None  # a write to send again (lost, or its reply was)
    wiped = False

    def next_write() -> HandledIds | None:
        nonlocal again
        write = seen.take(address, with_current=True)
        if again is not None:
            write = again if write is None else again.then(write)
        again = None
        return write

    def send(write: HandledIds) -> int:
        [verdict] = store.run(store.leases.save_checkpoints([CheckpointWrite(address, 7, None, write)], "n1"))
        return verdict

    def stored() -> list[str]:
        return [i.decode() for i in store.sync.lrange(store.keys.handled(address), 0, -1)]

    for op, n in steps:
        if op == "handle":
            for _ in range(n):
                msg_id = f"m{len(order)}"
                order.append(msg_id)
                assert seen.first(msg_id, address, track=True)
                seen.handling(address)
        elif op == "wiped":
            store.sync.delete(store.keys.handled(address))
            wiped = True
        elif (write := next_write()) is not None:
            if op == "lost":
                again = write
            elif op == "in-doubt":
                send(write)
                again = write
            elif send(write) == RESEND_SEEN or op == "resent":
                seen.resend(address)
        ids = stored()
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids, key=order.index)  # in the order handled
    if wiped:
        seen.resend(address)  # the node's reassert: the whole window, queued behind what waits
    for _ in range(3):  # the writes go through: at most one refused append, then the window
        if (write := next_write()) is not None and send(write) == RESEND_SEEN:
            seen.resend(address)
    assert stored() == order[-SEEN_PER_ADDRESS:]


# -- nodes on a real Redis ---------------------------------------------------------------


class Recorder(HuddleActor):
    """An actor that never checkpoints: it records each Ping it handles."""

    def __init__(self, ctx: ActorContext, handled: list[tuple[str, int]], changed: threading.Condition) -> None:
        super().__init__(ctx)
        self.handled = handled
        self.changed = changed

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Ping):
            with self.changed:
                self.handled.append((self.node.node_id, message.n))
                self.changed.notify_all()
            return None
        return super().on_message(message, envelope)


def stored_seen(rig: Rig, address: str) -> list[str]:
    raw = redis.Redis.from_url(rig.url)
    try:
        return [i.decode() for i in raw.lrange(next(iter(rig.clusters.values())).leases.keys.handled(address), 0, -1)]
    finally:
        raw.close()


def three_additions_stored(rig: Rig, address: str) -> list[Envelope]:
    """A client node places ``address`` and sends it three additions; back
    once their ids are stored with its state."""
    client = rig.add("client", kinds=())
    client.ensure(address).get(timeout=DEADLINE)
    envs = [Envelope(to=address, message=CounterAdd(n=1, tag=f"t{i}")) for i in range(3)]
    for env in envs:
        rig.nodes["client"].send_envelope(env)
    wait_until(lambda: envs[-1].msg_id in stored_seen(rig, address), "the ids stored")
    return envs


def duplicates(rig: Rig, node: str, address: str) -> list[str]:
    return [e.detail.get("detail", "") for e in rig.events.matching(event="dead-letter", reason="duplicate",
                                                                   node=node, address=address)]



@pytest.mark.integration
def test_after_redis_lost_its_data_the_holder_writes_the_handled_ids_back_with_its_lease(
        private_rig: tuple[Rig, Any]) -> None:
    rig, server = private_rig
    rig.add("a")
    envs = three_additions_stored(rig, "counter:w")
    raw = redis.Redis.from_url(server.url)
    try:
        raw.flushall()  # Redis lost its data; the holder writes its lease back, then the ids
        lease = next(iter(rig.clusters.values())).leases.keys.lease("counter:w")
        wait_until(lambda: raw.exists(lease) and all(e.msg_id in stored_seen(rig, "counter:w") for e in envs),
                   "the lease and every handled id written back")
    finally:
        raw.close()


@pytest.mark.integration
def test_the_lease_written_back_carries_the_handled_ids_in_the_same_step(
        private_rig: tuple[Rig, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """No later write is needed: the holder may hand the address off before
    one goes (the simulation's counter seed 7021), and a release finds the
    state there already and writes no ids. Here every write of ids alone is
    held back; the restore alone must bring them."""
    rig, server = private_rig
    holder = rig.add("a")
    envs = three_additions_stored(rig, "counter:v")
    monkeypatch.setattr(holder.checkpoints, "save_seen", lambda *_args, **_kwargs: None)
    raw = redis.Redis.from_url(server.url)
    try:
        raw.flushall()  # Redis lost its data; the holder writes its lease back
        rig.events.wait(event="lease-restored", address="counter:v", node="a")
        assert raw.exists(holder.leases.keys.lease("counter:v"))
        assert [e.msg_id for e in envs] == stored_seen(rig, "counter:v")[-3:]
    finally:
        raw.close()


@pytest.mark.integration
def test_a_copy_of_an_acknowledged_addition_after_a_failover_is_dropped_by_the_new_owner(rig: Rig) -> None:
    rig.add("a")
    rig.add("b")
    client = rig.add("client", kinds=())
    sender = rig.nodes["client"]
    owner = client.ensure("counter:x").get(timeout=DEADLINE)
    survivor = "b" if owner == "a" else "a"
    env = Envelope(to="counter:x", message=CounterAdd(n=1, tag="once"))
    sender.send_envelope(env)
    wait_until(lambda: env.msg_id in stored_seen(rig, "counter:x"), "the addition's id stored with its state")
    rig.crash(owner)
    rig.events.wait(event="started", node=survivor, address="counter:x")
    sender.send_envelope(env)  # the same envelope again, as a publisher's retry sends it
    rig.events.wait_until(lambda: env.msg_id in duplicates(rig, survivor, "counter:x"),
                          "the copy dropped as a duplicate by the new owner")
    got = sender.ask("counter:x", CounterGet()).get(timeout=DEADLINE)
    assert got["node"] == survivor and got["tags"] == ["once"] and got["count"] == 1


@pytest.mark.integration
def test_copies_after_a_drain_handed_the_addresses_off_are_dropped_by_the_next_owner(rig: Rig) -> None:
    a = rig.add("a")
    rig.add("b")
    client = rig.add("client", kinds=())
    sender = rig.nodes["client"]
    addresses = [f"counter:h{i}" for i in range(6)]
    owners = {address: client.ensure(address).get(timeout=DEADLINE) for address in addresses}
    envs = {address: Envelope(to=address, message=CounterAdd(n=1, tag="once")) for address in addresses}
    for env in envs.values():
        sender.send_envelope(env)
    for address in addresses:
        wait_until(lambda address=address: sender.ask(address, CounterGet()).get(timeout=DEADLINE)["count"] == 1,
                   f"{address} added")
    a.drain().get(timeout=DEADLINE)
    rig.events.wait(event="left", node="a")
    for env in envs.values():
        sender.send_envelope(env)
    for address, owner in owners.items():
        rig.events.wait_until(lambda address=address: envs[address].msg_id in duplicates(rig, "b", address),
                              f"the copy for {address} dropped on b (it was on {owner})")
        got = sender.ask(address, CounterGet()).get(timeout=DEADLINE)
        assert got["node"] == "b" and got["tags"] == ["once"]


@pytest.mark.integration
def test_an_actor_that_never_checkpoints_drops_a_copy_after_its_address_moved(rig: Rig) -> None:
    rig.add("a", kinds=())
    rig.add("b", kinds=())
    rig.add("client", kinds=())
    sender = rig.nodes["client"]
    handled: list[tuple[str, int]] = []
    changed = threading.Condition()
    rig.nodes["a"].spawn("rec:1", Recorder, handled, changed)
    rig.events.wait(event="started", node="a", address="rec:1")
    first = Envelope(to="rec:1", message=Ping(n=1))
    sender.send_envelope(first)
    with changed:
        assert changed.wait_for(lambda: ("a", 1) in handled, DEADLINE)
    # Stopped for good here (its lease released): its ids were written then.
    rig.nodes["a"].stop_actor("rec:1", release=True)
    rig.events.wait(event="lease-released", node="a", address="rec:1")
    assert first.msg_id in stored_seen(rig, "rec:1")
    rig.nodes["b"].spawn("rec:1", Recorder, handled, changed)
    rig.events.wait(event="started", node="b", address="rec:1")
    sender.send_envelope(first)
    rig.events.wait_until(lambda: first.msg_id in duplicates(rig, "b", "rec:1"), "the copy dropped on b")
    sender.send_envelope(Envelope(to="rec:1", message=Ping(n=2)))
    with changed:
        assert changed.wait_for(lambda: ("b", 2) in handled, DEADLINE)
    assert handled == [("a", 1), ("b", 2)]


@pytest.mark.integration
def test_an_actor_that_never_checkpoints_gets_its_ids_written_and_a_copy_after_a_crash_is_dropped(
        rig: Rig) -> None:
    rig.add("a", kinds=())
    rig.add("b", kinds=())
    rig.add("client", kinds=())
    sender = rig.nodes["client"]
    handled: list[tuple[str, int]] = []
    changed = threading.Condition()
    rig.nodes["a"].spawn("rec:2", Recorder, handled, changed)
    rig.events.wait(event="started", node="a", address="rec:2")
    envs = [Envelope(to="rec:2", message=Ping(n=n)) for n in (1, 2)]
    for env in envs:
        sender.send_envelope(env)
    # Written by themselves once handled (the last one once its actor is idle).
    wait_until(lambda: {e.msg_id for e in envs} <= set(stored_seen(rig, "rec:2")), "the ids written")
    rig.crash("a")
    rig.events.wait(event="node-dead", node="b", address="node:a")
    rig.nodes["b"].spawn("rec:2", Recorder, handled, changed)
    rig.events.wait(event="started", node="b", address="rec:2")
    for env in envs:
        sender.send_envelope(env)
    rig.events.wait_until(lambda: {e.msg_id for e in envs} <= set(duplicates(rig, "b", "rec:2")),
                          "both copies dropped on b")
    assert sorted(handled) == [("a", 1), ("a", 2)]


class Gated(Recorder):
    """Checkpoints each Ping it handles; the handler of ``n == 1`` then
    waits for ``gate`` (so that later messages queue up behind it)."""

    blocking = True  # waits on the gate: on the pool, not on the node's loop

    def __init__(self, ctx: ActorContext, handled: list[tuple[str, int]], changed: threading.Condition,
                 gate: threading.Event) -> None:
        super().__init__(ctx, handled, changed)
        self.gate = gate

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        result = super().on_message(message, envelope)
        if isinstance(message, Ping):
            self.checkpoint({"n": message.n})
            if message.n == 1:
                self.gate.wait(DEADLINE)
        return result


@pytest.mark.integration
def test_messages_queued_behind_a_checkpoint_are_forwarded_and_handled_once_by_the_next_owner(rig: Rig) -> None:
    """The ids written with a checkpoint stop at the message being handled:
    what was still queued when the lease was lost is forwarded, and the
    next owner handles it (a copy of the handled one it drops)."""
    a = rig.add("a", kinds=())
    rig.add("b", kinds=())
    rig.add("client", kinds=())
    sender = rig.nodes["client"]
    handled: list[tuple[str, int]] = []
    changed = threading.Condition()
    gate = threading.Event()
    rig.nodes["a"].spawn("rec:q", Gated, handled, changed, gate)
    rig.events.wait(event="started", node="a", address="rec:q")
    envs = [Envelope(to="rec:q", message=Ping(n=n)) for n in (1, 2, 3)]
    try:
        for env in envs:
            sender.send_envelope(env)
        wait_until(lambda: stored_seen(rig, "rec:q") == [envs[0].msg_id], "the first checkpoint stored, with its id")
        epoch = a.state.leases["rec:q"].epoch
        raw = redis.Redis.from_url(rig.url)
        try:  # the lease moved away (to a node that is gone already)
            raw.set(a.leases.keys.lease("rec:q"), f"{epoch + 1} intruder", px=60_000)
        finally:
            raw.close()
        rig.events.wait(event="lease-lost", node="a", address="rec:q")
    finally:
        gate.set()
    rig.events.wait(event="lease-released", node="a", address="rec:q")
    rig.nodes["b"].spawn("rec:q", Gated, handled, changed, gate)
    rig.events.wait(event="started", node="b", address="rec:q")
    with changed:
        assert changed.wait_for(lambda: len(handled) >= 3, DEADLINE), handled
    sender.send_envelope(envs[0])
    rig.events.wait_until(lambda: envs[0].msg_id in duplicates(rig, "b", "rec:q"), "the copy of the first dropped on b")
    assert handled == [("a", 1), ("b", 2), ("b", 3)]


@settings(max_examples=200, deadline=None)
@hyp_given(st.lists(st.tuples(st.sampled_from(["first", "handling", "handled", "take", "resend", "forget",
                                                "restore", "drop"]),
                              st.sampled_from(["a:1", "a:2", "a:3"]), st.integers(0, 30)), max_size=80))
def test_what_is_unwritten_is_found_without_looking_at_every_address(ops: list[tuple[str, str, int]]) -> None:
    # unwritten() looks only at addresses that handled something since their
    # ids were last all in Redis; it must find exactly what a scan of every
    # address finds.
    seen = SeenIds(1000, keep=8)

    def scan() -> list[tuple[str, str | None]]:
        return sorted((a, None if e.current_written else e.current) for a, e in seen._addresses.items()
                      if e.unsent or e.resync or (e.current is not None and not e.current_written))

    for op, address, n in ops:
        msg_id = f"m{n}"
        if op == "first":
            seen.first(msg_id, address, track=True)
        elif op == "handling":
            seen.handling(address)
        elif op == "handled":
            seen.handled(address)
        elif op == "take":
            for a, current in seen.unwritten():
                if a == address:
                    seen.take(a, with_current=current is not None and n % 2 == 0)
        elif op == "resend":
            seen.resend(address)
        elif op == "forget":
            seen.forget(msg_id, address)
        elif op == "restore":
            seen.restore(address, [msg_id])
        else:
            seen.drop(address)
        assert sorted(seen.unwritten()) == scan()
