"""redis-cluster: the tell-remote load on a Redis Cluster of 3 primaries
(each with a replica), against the same load on one redis-server.

figures:
  shards             primaries the load spreads over;
  msgs_per_s         500,000 Pings (100 bytes) told by 10 sender actors on one
                     node process to 1,000 sinks on another (round-robin),
                     every channel a shard channel; end to end, as tell-remote;
  lost               sent - handled in that run;
  msgs_per_s_ratio   msgs_per_s / the baseline's;
  shard_imbalance    messages on the most-loaded shard / on the least-loaded
                     (each sink gets the same share: its shard by the slot of
                     its channel);
  primary_cpu_s_max, primary_cpu_s_sum
                     CPU seconds the busiest primary's redis-server spent in
                     the run, and all three (the single server's is in the
                     baseline; each primary's in the result's meta): the work
                     a core of its own would take per shard;
  failover_lost, failover_duplicated, resubscribed_s
                     a second run, two transports in this process on 300
                     channels at a steady rate: a primary is SIGKILLed and its
                     replica promoted. resubscribed_s: from the kill until the
                     receiver reports every channel subscribed again; lost:
                     what never arrived (the bus's at-most-once gap, reported
                     as "resubscribed", which the publisher's hold for a
                     subscriber on the new owner narrows);
  double_owner_accepted, leases_lapsed_elsewhere, recovered_s, acked_lost,
  duplicated
                     a third run, cluster mode: 2 ``huddle node --cluster``
                     processes host 300 counters (lease TTL 1.5 s, fencing
                     log on), the benchmark process adds to them at 100/s
                     (each addition acknowledged); the primary holding the
                     most counters' keys is SIGKILLed. double_owner_accepted:
                     checkpoint writes the per-address fencing logs accepted
                     under an older epoch than one accepted before, or from
                     two nodes under one epoch; leases_lapsed_elsewhere:
                     leases lost by counters on the shards that stayed up
                     (a dead shard must cost only its own); recovered_s:
                     from the kill until every counter on the dead shard
                     answers again; acked_lost: acknowledged additions
                     missing from the final state; duplicated: additions
                     applied twice.
baseline: the same tell-remote load on one redis-server in the same run
(``msgs_per_s``, ``lost``, ``redis_cpu_s``); for ``resubscribed_s`` and
``recovered_s``, ``promoted_s``: from the kill until Redis itself has
promoted the replica and every node agrees (what no client can beat).

Every process (redis-servers, node processes) is started here and ended by
PID, also on error.
"""

from __future__ import annotations

import collections
import os
import threading
import time

from common import CpuShare, parse_args, ratio, report
from tell_remote import measure

from bus.address import channel_for
from bus.embedded import EmbeddedRedis
from bus.embedded_cluster import EmbeddedRedisCluster, find_redis7
from bus.sharded import ShardedTransport
from bus.slots import channel_slot

SINKS = 1_000
FAILOVER_CHANNELS = 300
FAILOVER_RATE = 5_000
"""Messages per second in the failover run (spread over its channels)."""
DEADLINE = 60.0


def _measured(url: str, n: int, pids: list[int]) -> tuple[dict[str, float], list[float]]:
    """tell-remote on ``url``, and the CPU seconds each of ``pids`` spent in it."""
    share = CpuShare({str(pid): [pid] for pid in pids})
    result = measure(url, n, SINKS)
    seconds = share.seconds()
    return result, [round(seconds[str(pid)], 2) for pid in pids]


def _imbalance(cluster: EmbeddedRedisCluster) -> tuple[float, dict[int, int]]:
    per_shard: collections.Counter[int] = collections.Counter()
    for i in range(SINKS):
        per_shard[cluster.primary_for_slot(channel_slot(channel_for(f"sink:s{i}"))).port] += 1
    counts = [per_shard[p.port] for p in cluster.primaries()]
    return max(counts) / max(1, min(counts)), dict(per_shard)


def _failover_run(cluster: EmbeddedRedisCluster, seconds: float) -> dict[str, float]:
    """Two sharded transports here; a primary killed a third into the run."""
    got: collections.Counter[bytes] = collections.Counter()
    back = threading.Event()
    lock = threading.Lock()
    killed_at = [0.0]
    resubscribed_at = [0.0]
    promoted_at = [0.0]

    def receive(channel: str, data: bytes) -> None:
        with lock:
            got[data] += 1

    def state(event: str) -> None:
        if event == "resubscribed" and killed_at[0] and not back.is_set():
            resubscribed_at[0] = time.monotonic()
            back.set()

    channels = [f"echo:failover-{i}" for i in range(FAILOVER_CHANNELS)]
    receiver = ShardedTransport(cluster.url, name="bench-rx")
    receiver.set_receiver(receive)
    receiver.on_state(state)
    sender = ShardedTransport(cluster.url, name="bench-tx")
    sent = 0
    killer: threading.Thread | None = None
    try:
        receiver.subscribe(*channels)
        receiver.start()
        sender.start()
        if not receiver.wait_subscribed(DEADLINE):
            raise RuntimeError("the receiver did not subscribe")
        victim = cluster.primary_for_slot(channel_slot(channels[0])).port

        def kill() -> None:
            cluster.kill(victim)
            cluster.wait_failover(victim)  # Redis's own part: a replica promoted, every node agreeing
            promoted_at[0] = time.monotonic()
        start = time.monotonic()
        end = start + seconds
        kill_at = start + seconds / 3
        batch = max(1, FAILOVER_RATE // 100)
        while time.monotonic() < end or (killed_at[0] and not back.is_set() and time.monotonic() < end + DEADLINE):
            for _ in range(batch):
                sender.publish(channels[sent % len(channels)], b"%d" % sent)
                sent += 1
            if not killed_at[0] and time.monotonic() >= kill_at:
                killed_at[0] = time.monotonic()
                killer = threading.Thread(target=kill, daemon=True)
                killer.start()
            time.sleep(0.01)  # the steady rate, not a flood
        if killer is not None:
            killer.join(DEADLINE)
        sender.flush(DEADLINE)
        final = f"{sent - 1}".encode()
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with lock:
                if final in got:
                    break
            time.sleep(0.05)  # a poll with a deadline
    finally:
        sender.close()
        receiver.close()
    with lock:
        received = len(got)
        duplicated = sum(c - 1 for c in got.values())
    return {"sent": sent, "failover_lost": sent - received, "failover_duplicated": duplicated,
            "resubscribed_s": (resubscribed_at[0] - killed_at[0]) if back.is_set() else float("nan"),
            "promoted_s": (promoted_at[0] - killed_at[0]) if promoted_at[0] else float("nan")}


LEASE_COUNTERS = 300
LEASE_TIMING_TTL = 1.5


def _leases_failover_run(cluster: EmbeddedRedisCluster, seconds: float) -> dict[str, float]:
    """Cluster mode through a primary's death (see the module docstring)."""
    import random

    from chaos import ACKS, AckLog, Acks, final_state, run_load

    from ops.invariants import additions as check
    from clusterproc import BenchMember, EventTap, Timing, cluster_node, raw_client, workdir

    from actors.runtime.builtin import CounterGet
    from bus.cluster.keys import ClusterKeys
    from bus.errors import HuddleError

    namespace = "rcbench:"
    timing = Timing(heartbeat=0.25, lease_ttl=LEASE_TIMING_TTL)
    keys = ClusterKeys(namespace)
    tmp = workdir("redis-cluster")
    nodes = []
    member = tap = None
    stop = threading.Event()
    load = None
    try:
        tap = EventTap(cluster.url, namespace)
        for i in range(2):
            nodes.append(cluster_node(cluster.url, f"rc-{i}", namespace, timing, tmp, options=["--fencing-log"]))
        for node in nodes:
            node.wait_ready()
        member = BenchMember(cluster.url, namespace, timing)
        acks = AckLog()
        member.node.spawn(ACKS, Acks, acks)
        counters = [f"counter:rc-{i}" for i in range(LEASE_COUNTERS)]
        member.place(counters)
        sent: dict[str, list[str]] = {a: [] for a in counters}
        load = threading.Thread(target=run_load, args=(member, counters, sent, stop, random.Random(7)), daemon=True)
        load.start()
        time.sleep(seconds / 2)
        by_primary: dict[int, list[str]] = collections.defaultdict(list)
        for address in counters:
            by_primary[cluster.primary_for_slot(channel_slot(keys.lease(address))).port].append(address)
        victim, on_victim = max(by_primary.items(), key=lambda item: len(item[1]))
        killed_at = time.monotonic()
        cluster.kill(victim)
        cluster.wait_failover(victim)
        promoted_s = time.monotonic() - killed_at
        waiting = set(on_victim)
        pause = threading.Event()
        while waiting and time.monotonic() - killed_at < DEADLINE:
            for address in sorted(waiting):
                try:
                    member.node.ask(address, CounterGet(), timeout=2).get(timeout=3)
                    waiting.discard(address)
                except HuddleError:
                    pass
            pause.wait(0.05)
        recovered_s = time.monotonic() - killed_at if not waiting else float("nan")
        time.sleep(seconds / 2)
        stop.set()
        load.join(10)
        time.sleep(1.0)  # the last acknowledgements on their way
        final = final_state(member, counters)
        with acks.lock:
            acked = dict(acks.acks)
        judged = check(acked, final)
        client = raw_client(cluster.url)
        try:
            double = 0
            for address in counters:
                newest, writers = 0, collections.defaultdict(set)
                for _id, fields in client.xrange(keys.fencing_of(address)):
                    epoch, node = int(fields[b"e"]), fields[b"n"]
                    writers[epoch].add(node)
                    double += epoch < newest
                    newest = max(newest, epoch)
                double += sum(len(w) - 1 for w in writers.values())
        finally:
            client.close()
        lapsed_elsewhere = {e.address for e in tap.matching(lambda e: e.event == "lease-lost")
                            if e.address in set(counters) - set(on_victim)}
        return {"double_owner_accepted": double, "leases_lapsed_elsewhere": len(lapsed_elsewhere),
                "recovered_s": round(recovered_s, 2), "acked_lost": judged["lost"],
                "duplicated": judged["duplicated"], "lease_promoted_s": round(promoted_s, 2),
                "counters_on_dead_shard": len(on_victim), "additions_sent": sum(len(v) for v in sent.values())}
    finally:
        stop.set()
        if load is not None:
            load.join(10)
        if member is not None:
            member.close()
        if tap is not None:
            tap.close()
        for node in nodes:
            node.stop()


def main() -> None:
    args = parse_args("redis-cluster", __doc__ or "")
    n = 50_000 if args.quick else 500_000
    failover_seconds = 3.0 if args.quick else 6.0
    binary = find_redis7()
    if binary is None:
        raise SystemExit("redis-cluster needs redis-server 7 or later (Debian: apt-get install redis-server)")
    load = os.getloadavg()[0]
    single = EmbeddedRedis(binary=binary)
    cluster = EmbeddedRedisCluster(primaries=3, replicas_per_primary=1, binary=binary)
    try:
        single.start()
        assert single.pid is not None
        base, (single_cpu,) = _measured(single.url, n, [single.pid])
        single.stop()
        cluster.start()
        primaries = cluster.primaries()
        huddle, primary_cpu = _measured(cluster.url, n, [p.pid for p in primaries if p.pid is not None])
        imbalance, per_shard = _imbalance(cluster)
        failover = _failover_run(cluster, failover_seconds)
        cluster.stop()
        cluster = EmbeddedRedisCluster(primaries=3, replicas_per_primary=1, binary=binary)
        cluster.start()
        leases = _leases_failover_run(cluster, failover_seconds)
    finally:
        single.stop()
        cluster.stop()
    report(
        args,
        figures={"shards": len(primaries), "msgs_per_s": huddle["msgs_per_s"], "lost": huddle["lost"],
                 "msgs_per_s_ratio": ratio(huddle["msgs_per_s"], base["msgs_per_s"]),
                 "shard_imbalance": imbalance, "primary_cpu_s_max": max(primary_cpu),
                 "primary_cpu_s_sum": sum(primary_cpu),
                 "failover_lost": failover["failover_lost"], "failover_duplicated": failover["failover_duplicated"],
                 "resubscribed_s": failover["resubscribed_s"], "tells": n, "sinks": SINKS,
                 "double_owner_accepted": leases["double_owner_accepted"],
                 "leases_lapsed_elsewhere": leases["leases_lapsed_elsewhere"],
                 "recovered_s": leases["recovered_s"], "acked_lost": leases["acked_lost"],
                 "duplicated": leases["duplicated"]},
        baseline={"msgs_per_s": base["msgs_per_s"], "lost": base["lost"], "redis_cpu_s": single_cpu,
                  "promoted_s": failover["promoted_s"], "lease_run_promoted_s": leases["lease_promoted_s"]},
        goal={"lost": 0, "shard_imbalance": 1.25, "msgs_per_s_ratio": 0.8, "double_owner_accepted": 0,
              "leases_lapsed_elsewhere": 0, "acked_lost": 0, "duplicated": 0},
        notes={"sinks_per_shard": per_shard, "primary_cpu_s": primary_cpu, "failover_sent": failover["sent"],
               "loadavg_1m_before": load, "replicas_per_primary": 1,
               "lease_run": {k: leases[k] for k in ("counters_on_dead_shard", "additions_sent")},
               "lease_ttl_s": LEASE_TIMING_TTL},
    )


if __name__ == "__main__":
    main()
