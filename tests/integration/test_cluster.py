"""A cluster of ``huddle node`` processes on a real redis-server.

Every test runs in its own namespace (keys and channels), with fast
timings; the test process is one more cluster member (hosting nothing
placed) that places the actors, sends, and asks. Nothing waits by sleeping:
every wait is on an event on ``sys:events``, a reply, or a Redis query,
with a deadline reached only when something is broken.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from actors.runtime.builtin import CounterAdd, CounterGet
from actors.cluster import Cluster, ClusterConfig
from actors.runtime.node import Node
from bus.address import channel_for
from bus.cluster.keys import BORN, ClusterKeys
from bus.cluster.placement import owner_of
from bus.embedded import EmbeddedRedis, pause_process
from bus.embedded_cluster import EmbeddedRedisCluster, EmbeddedSentinel
from bus.slots import channel_slot
from bus.envelope import Codec
from bus.errors import HuddleError
from bus.messages import Event, Ping, Pong
from bus.sharded import ClusterUrl, is_cluster_url, transport_for
from bus.signing import cluster_signer
from tests.waiting import wait_until

from .conftest import (
    DEADLINE,
    REPO_ROOT,
    EventLog,
    NodeProcess,
    NodeProcesses,
    huddle_cmd,
    listening_events,
    unique,
)

pytestmark = pytest.mark.integration

HEARTBEAT, LEASE_TTL = 0.2, 1.5
TIMING = ("--heartbeat", str(HEARTBEAT), "--lease-ttl", str(LEASE_TTL), "--sweep", "1")


class ClusterRun:
    """Node processes in one namespace, and the test process as a member."""

    def __init__(self, procs: NodeProcesses, redis_url: str, events: EventLog, namespace: str, *,
                 lease_ttl: float = LEASE_TTL, key_file: Path | None = None) -> None:
        self.procs = procs
        self.redis_url = redis_url
        self.events = events
        self.namespace = namespace
        self.lease_ttl = lease_ttl
        self.key_file = key_file
        self.local_events: list[Event] = []
        self.client = Node(transport_for(redis_url, name=unique("client")), node_id=unique("client"),
                           namespace=namespace, codec=codec_for(key_file))
        self.client.add_event_listener(self.local_events.append)
        self.cluster = Cluster(self.client, redis_url, config=ClusterConfig(
            heartbeat_interval=HEARTBEAT, lease_ttl=lease_ttl, sweep_interval=1.0))
        self.client.start()
        assert self.cluster.start(DEADLINE)

    def node(self, *echo: str, fencing_log: bool = False, wait: bool = True) -> NodeProcess:
        options = ["--namespace", self.namespace, "--actors", "counter", "--heartbeat", str(HEARTBEAT),
                   "--lease-ttl", str(self.lease_ttl), "--sweep", "1"]
        if fencing_log:
            options.append("--fencing-log")
        if self.key_file is not None:
            options += ["--cluster-key-file", str(self.key_file)]
        return self.procs.start(*echo, options=options, wait=wait, redis_url=self.redis_url)

    def counters(self, n: int) -> dict[str, str]:
        """Place ``n`` counters; address -> owning node id."""
        prefix = unique("c")
        return {a: self.cluster.ensure(a).get(timeout=DEADLINE) for a in (f"counter:{prefix}-{i}" for i in range(n))}

    def add(self, address: str, n: int = 1, tag: str = "") -> int:
        return self.client.ask(address, CounterAdd(n=n, tag=tag), timeout=DEADLINE).get(timeout=DEADLINE + 1)

    def value(self, address: str) -> dict[str, Any]:
        return self.client.ask(address, CounterGet(), timeout=DEADLINE).get(timeout=DEADLINE + 1)

    def wait_tags(self, address: str, tags: list[str]) -> dict[str, Any]:
        """Ask until every tag has arrived (each ask is one round trip)."""
        last: dict[str, Any] = {}

        def arrived() -> bool:
            nonlocal last
            last = self.value(address)
            return set(tags) <= set(last["tags"])

        try:
            wait_until(arrived, f"{address} got all of {len(tags)} tags")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; missing {sorted(set(tags) - set(last.get('tags', [])))}, last {last}") from None
        return last

    def started_elsewhere(self, address: str, not_on: str) -> Event:
        return self.events.wait_match(lambda e: e.event == "started" and e.address == address and e.node != not_on,
                                      f"started {address} on a node other than {not_on}")

    def raw(self) -> redis.Redis:
        """A plain redis-py client of the bus (a cluster client on a cluster)."""
        if is_cluster_url(self.redis_url):
            seeds = ClusterUrl.parse(self.redis_url).seeds
            return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds])
        return redis.Redis.from_url(self.redis_url)

    def subscribers(self, address: str) -> int:
        channel = channel_for(address, self.namespace)
        raw = self.raw()
        try:
            if isinstance(raw, redis.RedisCluster):
                reply = raw.execute_command("PUBSUB", "SHARDNUMSUB", channel,
                                            target_nodes=raw.get_node_from_key(channel))
                return int(reply[1])
            return int(raw.pubsub_numsub(channel)[0][1])
        finally:
            raw.close()

    def stored(self, address: str) -> dict[str, Any]:
        """The checkpoint Redis holds for ``address`` ({} if none)."""
        raw = self.raw()
        try:
            data = raw.get(ClusterKeys(self.namespace).checkpoint(address))
        finally:
            raw.close()
        return msgpack.unpackb(data, raw=False) if data else {}

    def wait_stored(self, address: str, count: int) -> None:
        """Checkpoints are written after the handler answered: before a
        crash, wait until Redis has the state the test relies on."""
        wait_until(lambda: self.stored(address).get("count") == count, f"{address} checkpointed at {count}")

    def local_event(self, **fields: Any) -> bool:
        return any(all(getattr(e, k) == v for k, v in fields.items()) for e in list(self.local_events))

    def close(self) -> None:
        self.client.shutdown()


def codec_for(key_file: Path | None) -> Codec:
    """Plain, or signing with the cluster key in ``key_file``."""
    return Codec(signer=cluster_signer(key_file)) if key_file is not None else Codec()


def _run(node_procs: NodeProcesses, redis_url: str, *, lease_ttl: float = LEASE_TTL,
         key_file: Path | None = None) -> Iterator[ClusterRun]:
    namespace = f"{unique('ns')}:"
    with listening_events(redis_url, namespace, codec_for(key_file)) as events:
        cluster_run = ClusterRun(node_procs, redis_url, events, namespace, lease_ttl=lease_ttl, key_file=key_file)
        try:
            yield cluster_run
        finally:
            node_procs.stop_all()
            cluster_run.close()


@pytest.fixture(params=["one-server"])
def run(request: pytest.FixtureRequest, node_procs: NodeProcesses, redis_url: str) -> Iterator[ClusterRun]:
    """A cluster run on one redis-server; a test marked ``ON_BOTH`` runs
    again on a Redis Cluster of 3 primaries (the sharded lease store)."""
    if request.param == "redis-cluster":
        redis_url = request.getfixturevalue("redis_cluster").url
    yield from _run(node_procs, redis_url)


#: Run the test on one server and on a Redis Cluster.
ON_BOTH = pytest.mark.parametrize("run", ["one-server", "redis-cluster"], indirect=True)


@ON_BOTH
def test_a_killed_nodes_actors_are_live_elsewhere_with_their_state(run: ClusterRun) -> None:
    nodes = [run.node(wait=False) for _ in range(3)]
    for node in nodes:
        run.procs.wait_ready(node)
    owners = run.counters(12)
    for i, address in enumerate(owners):
        assert run.add(address, i + 1, tag="before") == i + 1
    for i, address in enumerate(owners):
        run.wait_stored(address, i + 1)
    victim = next(n for n in nodes if n.node_id == owners[next(iter(owners))])
    moved = [a for a, owner in owners.items() if owner == victim.node_id]

    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(DEADLINE)
    for address in moved:
        started = run.started_elsewhere(address, victim.node_id)
        assert started.detail["epoch"] > 0
    for i, address in enumerate(owners):
        got = run.value(address)
        assert got["count"] == i + 1 and got["tags"] == ["before"]
        assert got["node"] != victim.node_id


@ON_BOTH
def test_a_message_sent_while_the_owner_is_dead_is_delivered_once_after_reactivation(run: ClusterRun) -> None:
    a = run.node(wait=False)
    b = run.node(wait=False)
    for node in (a, b):
        run.procs.wait_ready(node)
    (address, owner), = run.counters(1).items()
    run.add(address, 1, tag="t0")
    run.wait_stored(address, 1)
    victim = a if owner == a.node_id else b
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(DEADLINE)
    wait_until(lambda: run.subscribers(address) == 0, "Redis saw the dead owner's connection close")
    early = [f"t{i}" for i in range(1, 11)]
    for tag in early:
        run.client.tell(address, CounterAdd(n=1, tag=tag))
    run.events.wait_for(event="backlogged", node=run.client.node_id, address=address)
    late = [f"t{i}" for i in range(11, 21)]
    wait_until(lambda: run.local_event(event="node-dead", address=f"node:{victim.node_id}"),
               "the test node noticed the death")
    for tag in late:
        run.client.tell(address, CounterAdd(n=1, tag=tag))
    run.started_elsewhere(address, victim.node_id)
    got = run.wait_tags(address, early + late)
    assert sorted(got["tags"]) == sorted(["t0", *early, *late])  # each exactly once
    assert got["count"] == 21


def test_a_node_paused_past_its_lease_is_fenced_when_it_wakes(run: ClusterRun, redis_url: str) -> None:
    a = run.node(fencing_log=True, wait=False)
    b = run.node(fencing_log=True, wait=False)
    for node in (a, b):
        run.procs.wait_ready(node)
    owners = run.counters(10)
    on_a = [address for address, owner in owners.items() if owner == a.node_id]
    assert on_a, "rendezvous put nothing on a"
    for address in owners:
        run.add(address, 1, tag="before")
    for address in owners:
        run.wait_stored(address, 1)
    sent: dict[str, list[str]] = {address: ["before"] for address in on_a}

    pause_process(a.pid)
    try:
        # Still subscribed as far as Redis knows: these wait in a's socket.
        for address in on_a:
            sent[address].append("paused")
            run.client.tell(address, CounterAdd(n=1, tag="paused"))
        for address in on_a:
            run.started_elsewhere(address, a.node_id)
        for address in on_a:
            sent[address].append("moved")
            run.client.tell(address, CounterAdd(n=1, tag="moved"))
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # It wakes with every lease expired by its own clock: its actors stop.
    for address in on_a:
        run.events.wait_match(lambda e, x=address: e.event == "lease-lost" and e.node == a.node_id and e.address == x,
                              f"lease-lost for {address} from {a.node_id}")
        run.events.wait_match(lambda e, x=address: e.event == "stopped" and e.node == a.node_id and e.address == x,
                              f"stopped {address} on {a.node_id}")
    for address in on_a:
        got = run.wait_tags(address, sent[address])
        assert sorted(got["tags"]) == sorted(sent[address])  # the paused ones forwarded, nothing twice
        assert got["count"] == len(sent[address])
    # Fencing log: per address, Redis accepted checkpoint writes in epoch order
    # only; nothing a wrote under its old epoch was accepted after b's claim.
    raw = redis.Redis.from_url(redis_url)
    try:
        log = raw.xrange(ClusterKeys(run.namespace).fencing)
    finally:
        raw.close()
    newest: dict[str, int] = {}
    for _id, fields in log:
        address, epoch = fields[b"a"].decode(), int(fields[b"e"])
        assert epoch >= newest.get(address, 0), f"{address}: a write under epoch {epoch} after {newest[address]}"
        newest[address] = epoch


def test_two_nodes_racing_for_one_address_exactly_one_wins(run: ClusterRun) -> None:
    address = f"echo:{unique('race')}"
    racers = [run.node(address, wait=False) for _ in range(2)]
    for node in racers:
        run.procs.wait_ready(node)
    winner = run.events.wait_for(event="lease-acquired", address=address)
    loser = run.events.wait_for(event="lease-refused", address=address)
    assert {winner.node, loser.node} == {n.node_id for n in racers}
    assert loser.detail["holder"] == winner.node
    assert len(run.events.matching(event="started", address=address)) == 1
    assert run.client.ask(address, Ping(n=1), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=1)


def test_all_nodes_recover_when_redis_restarts(node_procs: NodeProcesses, fresh_redis: EmbeddedRedis) -> None:
    """Redis comes back empty: the nodes write their leases, specs and
    checkpoints back and go on; nothing is re-activated."""
    for cluster_run in _run(node_procs, fresh_redis.url, lease_ttl=8.0):
        nodes = [cluster_run.node(wait=False) for _ in range(2)]
        for node in nodes:
            cluster_run.procs.wait_ready(node)
        owners = cluster_run.counters(6)
        for address in owners:
            cluster_run.add(address, 2, tag="pre")
        fresh_redis.restart()
        wait_until(lambda: cluster_run.local_event(event="redis-reset"), "the test node saw the new era")
        wait_until(lambda: cluster_run.local_event(event="bus-resubscribed"), "the test node listens again")
        raw = redis.Redis.from_url(fresh_redis.url)
        keys = ClusterKeys(cluster_run.namespace)
        try:
            wait_until(lambda: all(raw.exists(keys.node(n.node_id)) for n in nodes), "every node heartbeats again")
            wait_until(lambda: all(raw.exists(keys.lease(a)) for a in owners), "every lease was written back")
        finally:
            raw.close()
        for address, owner in owners.items():
            got = cluster_run.value(address)
            assert got["count"] == 2 and got["node"] == owner
            assert cluster_run.add(address, 1, tag="post") == 3
        # Nobody claimed in the new data set's first lease TTL (a holder of
        # a lease it lost might still have written it back): a counter placed
        # now holds an epoch (server microseconds at its claim) past that.
        (late, _owner), = cluster_run.counters(1).items()
        raw = redis.Redis.from_url(fresh_redis.url)
        try:
            born = int(raw.get(BORN).split()[0])
            epoch = int(raw.get(keys.lease(late)).split()[0])
        finally:
            raw.close()
        assert epoch >= born + int(cluster_run.lease_ttl * 1_000_000)


def wait_listening(primary: redis.Redis, cluster_run: ClusterRun, nodes: list[NodeProcess]) -> None:
    """Until every node's (and the test node's) subscriber is on ``primary``:
    a message sent before its receiver listens again is lost, as across
    any reconnect."""
    names = {f"huddle:{name}:subscriber" for name in [n.node_id for n in nodes] + [cluster_run.client.transport.name]}
    try:
        wait_until(lambda: names <= {c["name"] for c in primary.client_list()}, "every node on the new primary")
    except AssertionError:
        raise AssertionError(f"{names} not all in {sorted(c['name'] for c in primary.client_list())}") from None


def test_a_cluster_keeps_its_actors_state_and_one_owner_each_across_a_switchover(
        node_procs: NodeProcesses, redis_sentinel: EmbeddedSentinel) -> None:
    """huddle node --cluster processes on the sentinel URL: after a planned
    switchover every counter answers with the state it had, from one
    owner, and an addition after it is counted once and written on the new
    primary (leases, heartbeats and checkpoints follow it). An actor may be
    restarted from its checkpoint meanwhile (its lease lapsed while no
    primary answered); never by two owners at once."""
    for cluster_run in _run(node_procs, redis_sentinel.url, lease_ttl=4.0):
        nodes = [cluster_run.node(wait=False) for _ in range(2)]
        for node in nodes:
            cluster_run.procs.wait_ready(node)
        owners = cluster_run.counters(6)
        for address in owners:
            assert cluster_run.add(address, 2, tag="pre") == 2
        keys = ClusterKeys(cluster_run.namespace)
        old = redis.Redis(host="127.0.0.1", port=redis_sentinel.primary_port())
        try:
            wait_until(lambda: all(old.get(keys.checkpoint(a)) for a in owners), "every counter checkpointed")
            assert old.wait(1, int(DEADLINE * 1000)) >= 1  # the replica has all of it
        finally:
            old.close()
        primary = redis_sentinel.switchover()
        raw = redis.Redis(host="127.0.0.1", port=primary)
        try:
            wait_listening(raw, cluster_run, nodes)
            for address in owners:
                got = cluster_run.value(address)
                assert got["count"] == 2
                assert cluster_run.add(address, 1, tag="post") == 3

            def stored(address: str) -> dict[str, Any]:
                data = raw.get(keys.checkpoint(address))
                return msgpack.unpackb(data, raw=False) if data else {}

            wait_until(lambda: all(raw.exists(keys.node(n.node_id)) for n in nodes), "heartbeats on the new primary")
            try:
                wait_until(lambda: all(stored(a).get("count") == 3 for a in owners),
                           "every checkpoint written on the new primary")
            except AssertionError:
                raise AssertionError([stored(a) for a in owners]) from None
            for address in owners:
                lease = raw.get(keys.lease(address))
                assert lease is not None and lease.decode().split(" ")[1] == cluster_run.value(address)["node"]
        finally:
            raw.close()


def test_behind_sentinel_checkpoints_the_promoted_replica_missed_are_written_again(
        node_procs: NodeProcesses, redis_sentinel: EmbeddedSentinel) -> None:
    """The replica loses its link to the primary (paused, the link killed)
    while the counters go from 2 to 3; the primary dies and the replica,
    which still holds 2, is promoted. The nodes move to it and write every
    live actor's last checkpoint again, so the store says 3, as the actors
    do."""
    for cluster_run in _run(node_procs, redis_sentinel.url, lease_ttl=8.0):
        nodes = [cluster_run.node(wait=False) for _ in range(2)]
        for node in nodes:
            cluster_run.procs.wait_ready(node)
        owners = cluster_run.counters(4)
        keys = ClusterKeys(cluster_run.namespace)

        def stored_on(raw: redis.Redis, address: str) -> int | None:
            data = raw.get(keys.checkpoint(address))
            return msgpack.unpackb(data, raw=False).get("count") if data else None

        for address in owners:
            assert cluster_run.add(address, 2, tag="pre") == 2
        old = redis.Redis(host="127.0.0.1", port=redis_sentinel.primary_port())
        replica = redis_sentinel.replica_ports()[0]
        try:
            wait_until(lambda: all(stored_on(old, a) == 2 for a in owners), "every counter checkpointed at 2")
            assert old.wait(1, int(DEADLINE * 1000)) >= 1  # the replica has 2
            redis_sentinel.pause(replica)
            # Its link dropped while it cannot read: what the primary takes
            # next never reaches it (a paused replica alone would still read
            # it from its socket when it wakes).
            old.execute_command("CLIENT", "KILL", "TYPE", "replica")
            try:
                for address in owners:
                    assert cluster_run.add(address, 1, tag="missed") == 3
                wait_until(lambda: all(stored_on(old, a) == 3 for a in owners), "3 on the primary only")
            finally:
                redis_sentinel.kill_primary()
                redis_sentinel.resume(replica)
        finally:
            old.close()
        assert redis_sentinel.wait_switchover() == replica
        new = redis.Redis(host="127.0.0.1", port=replica)
        try:
            wait_until(lambda: cluster_run.local_event(event="redis-primary-changed"), "the test node moved")
            wait_until(lambda: all(stored_on(new, a) == 3 for a in owners), "every checkpoint written again")
            wait_listening(new, cluster_run, nodes)
        finally:
            new.close()
        for address in owners:
            assert cluster_run.value(address)["count"] == 3
            assert cluster_run.add(address, 1, tag="after") == 4


def test_drain_hands_a_nodes_actors_over_and_it_exits(run: ClusterRun, redis_url: str, tmp_path: Any) -> None:
    a = run.node(wait=False)
    b = run.node(wait=False)
    for node in (a, b):
        run.procs.wait_ready(node)
    owners = run.counters(8)
    for address in owners:
        run.add(address, 4, tag="kept")
    on_a = [address for address, owner in owners.items() if owner == a.node_id]
    drain = subprocess.run(huddle_cmd("node", "--redis-url", redis_url, "--namespace", run.namespace,
                                      "--drain", a.node_id, "--run-for", str(DEADLINE)),
                           capture_output=True, text=True, timeout=DEADLINE + 10, cwd=REPO_ROOT)
    assert drain.returncode == 0, drain.stderr
    assert f"handing off {len(on_a)} placed actor(s)" in drain.stdout
    assert a.proc.wait(DEADLINE) == 0  # it left and stopped by itself
    run.events.wait_for(event="left", node=a.node_id)
    for address in owners:
        got = run.value(address)
        assert got["node"] == b.node_id and got["count"] == 4 and got["tags"] == ["kept"]
    assert not run.events.matching(event="lease-lost")


def test_a_joining_node_takes_over_its_share_by_hand_off(run: ClusterRun) -> None:
    a = run.node()
    owners = run.counters(10)
    for address in owners:
        assert owners[address] == a.node_id
        run.add(address, 2, tag="first")
    b = run.node()
    hosts = {a.node_id: 1.0, b.node_id: 1.0}
    moving = [address for address in owners if owner_of(address, hosts) == b.node_id]
    for address in moving:
        run.events.wait_for(event="handoff", node=a.node_id, address=address)
        run.events.wait_for(event="started", node=b.node_id, address=address)
    for address in owners:
        got = run.value(address)
        assert got["count"] == 2 and got["tags"] == ["first"]
        assert got["node"] == (b.node_id if address in moving else a.node_id)


def test_sigterm_leaves_the_cluster_cleanly(run: ClusterRun) -> None:
    a = run.node(wait=False)
    b = run.node(wait=False)
    for node in (a, b):
        run.procs.wait_ready(node)
    owners = run.counters(6)
    assert a.stop() == 0
    run.events.wait_for(event="left", node=a.node_id)
    for address in owners:
        assert run.value(address)["node"] == b.node_id


def test_on_a_redis_cluster_a_killed_primary_leaves_each_counter_one_owner_and_its_state(
        node_procs: NodeProcesses, fresh_redis_cluster: EmbeddedRedisCluster) -> None:
    """huddle node --cluster processes on a Redis Cluster; the primary that
    holds the most counters' keys is killed and its replica promoted. Every
    counter answers afterwards with the state it had, an addition is
    counted once, only the leases on the dead shard lapsed (the others'
    renewals went on without it), and each counter's fencing log (accepted
    checkpoint writes, per address on a cluster) never goes back to an
    older epoch nor has two nodes writing under one epoch: no double-owner
    action was accepted."""
    cluster = fresh_redis_cluster
    for cluster_run in _run(node_procs, cluster.url, lease_ttl=1.5):
        nodes = [cluster_run.node(wait=False, fencing_log=True) for _ in range(2)]
        for node in nodes:
            cluster_run.procs.wait_ready(node)
        owners = cluster_run.counters(12)
        for address in owners:
            assert cluster_run.add(address, 2, tag="pre") == 2
        for address in owners:
            cluster_run.wait_stored(address, 2)
        keys = ClusterKeys(cluster_run.namespace)
        by_primary: dict[int, list[str]] = {}
        for address in owners:
            by_primary.setdefault(cluster.primary_for_slot(channel_slot(keys.lease(address))).port, []).append(address)
        victim, on_victim = max(by_primary.items(), key=lambda item: len(item[1]))
        with redis.Redis(host="127.0.0.1", port=victim) as old:
            assert old.wait(1, int(DEADLINE * 1000)) >= 1  # its replica has every checkpoint
        cluster.kill(victim)
        cluster.wait_failover(victim)
        for address in owners:
            got = cluster_run.value(address)
            assert got["count"] == 2, (address, address in on_victim, got)
            assert cluster_run.add(address, 1, tag="post") == 3
        # Only the leases on the dead primary's shard may lapse (no answer
        # until its replica is promoted); every other shard kept renewing.
        lapsed = {e.address for e in cluster_run.events.events
                  if e.event == "lease-lost" and e.address in owners and e.node != cluster_run.client.node_id}
        assert lapsed <= set(on_victim), sorted(lapsed - set(on_victim))
        raw = cluster_run.raw()
        try:
            for address in owners:
                entries = [(int(f[b"e"]), f[b"n"].decode()) for _id, f in raw.xrange(keys.fencing_of(address))]
                assert entries, address
                epochs = [e for e, _n in entries]
                assert epochs == sorted(epochs), (address, entries)
                writers: dict[int, set[str]] = {}
                for epoch, node in entries:
                    writers.setdefault(epoch, set()).add(node)
                assert all(len(w) == 1 for w in writers.values()), (address, entries)
        finally:
            raw.close()


def test_on_a_redis_cluster_a_resharded_slot_keeps_its_counter_and_one_owner(
        node_procs: NodeProcesses, redis_cluster: EmbeddedRedisCluster) -> None:
    """The slot holding a counter's keys (lease, checkpoint, handled ids)
    is moved to another primary while additions flow (``MIGRATE`` of its
    keys, then ``SETSLOT NODE``: what ``redis-cli --cluster reshard`` does).
    Every acknowledged addition is in the counter once, the lease lives on
    the new owner of the slot, and the fencing log never goes back."""
    cluster = redis_cluster
    for cluster_run in _run(node_procs, cluster.url):
        nodes = [cluster_run.node(wait=False, fencing_log=True) for _ in range(2)]
        for node in nodes:
            cluster_run.procs.wait_ready(node)
        (address, _owner), = cluster_run.counters(1).items()
        keys = ClusterKeys(cluster_run.namespace)
        slot = channel_slot(keys.lease(address))
        source = cluster.primary_for_slot(slot).port
        target = next(p.port for p in cluster.primaries() if p.port != source)
        acknowledged: list[str] = []
        stop = threading.Event()

        def add_forever() -> None:
            i = 0
            while not stop.is_set():
                tag = f"r{i}"
                i += 1
                try:
                    cluster_run.client.ask(address, CounterAdd(n=1, tag=tag), timeout=5).get(timeout=6)
                    acknowledged.append(tag)
                except HuddleError:
                    pass  # not acknowledged: may or may not be counted, never twice

        adder = threading.Thread(target=add_forever, daemon=True)
        adder.start()
        try:
            wait_until(lambda: len(acknowledged) >= 20, "additions flowing before the move")
            cluster.move_slot(slot, target)
            moved_at = len(acknowledged)
            wait_until(lambda: len(acknowledged) >= moved_at + 20, "additions flowing after the move")
        finally:
            stop.set()
            adder.join(DEADLINE)
        got = cluster_run.value(address)
        tags = collections.Counter(got["tags"])
        assert all(n == 1 for n in tags.values()), [t for t, n in tags.items() if n > 1]
        assert set(acknowledged) <= set(tags), sorted(set(acknowledged) - set(tags))
        with redis.Redis(host="127.0.0.1", port=target) as raw:
            lease = raw.get(keys.lease(address))
            assert lease is not None and lease.decode().split(" ")[1] == got["node"]
            epochs = [int(f[b"e"]) for _id, f in raw.xrange(keys.fencing_of(address))]
        assert epochs and epochs == sorted(epochs)
