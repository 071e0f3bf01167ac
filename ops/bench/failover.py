"""failover: how long until a killed node's actors are live elsewhere.

Three ``huddle node --cluster`` processes on an embedded Redis host 1,000
placed Counter actors (generic stateful actors that checkpoint after every
change); each gets one addition, and the run waits until every checkpoint
is in Redis. Then the node hosting the most actors is killed (SIGKILL) and
the benchmark waits, on ``sys:events``, for each of its actors to be
started on another node (from its checkpoint, under a new epoch).

figures:
  p50_s, p99_s, max_s   kill -> "started" elsewhere, per actor of the
                         killed node (wall clock; one host, one clock)
  moved                  actors the killed node hosted
  lost_state             moved actors that came back without their addition
baseline (same run):
  detection_s            kill -> the first survivor's "node-dead": the part
                         of the failover that is waiting out the lease
  lease_ttl_s            the configured lease (heartbeat every 0.25 s)
goal: p99_s <= 2.
"""

from __future__ import annotations

import os
import signal
import time

from clusterproc import BenchMember, EventTap, Timing, cluster_node, percentile, workdir
from common import parse_args, report

from actors.runtime.builtin import CounterAdd, CounterGet
from bus.embedded import EmbeddedRedis
from ops.processes import NodeProcess

TIMING = Timing(heartbeat=0.25, lease_ttl=1.0)
NAMESPACE = "failover:"


def main() -> None:
    args = parse_args("failover", __doc__ or "")
    actors = 300 if args.quick else 1_000
    load = os.getloadavg()[0]
    tmp = workdir("failover")
    redis_server = EmbeddedRedis()
    nodes: list[NodeProcess] = []
    tap = member = None
    try:
        redis_server.start()
        tap = EventTap(redis_server.url, NAMESPACE)
        nodes = [cluster_node(redis_server.url, f"fo-{i}", NAMESPACE, TIMING, tmp) for i in range(3)]
        for node in nodes:
            node.wait_ready()
        member = BenchMember(redis_server.url, NAMESPACE, TIMING)
        addresses = [f"counter:fo-{i}" for i in range(actors)]
        owners = member.place(addresses)
        futures = [member.node.ask(a, CounterAdd(n=1, tag="x"), timeout=60) for a in addresses]
        for future in futures:
            future.get(timeout=61)
        member.wait_stored(addresses, lambda v: v is not None and v.get("count") == 1)

        victim = max(nodes, key=lambda n: sum(1 for o in owners.values() if o == n.node_id))
        moved = [a for a, o in owners.items() if o == victim.node_id]
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(30)
        latencies = []
        for address in moved:
            started = tap.wait_match(lambda e, a=address: e.event == "started" and e.address == a
                                     and e.node != victim.node_id, timeout=60)
            if started is None:
                raise RuntimeError(f"{address} was not started elsewhere within 60 s")
            latencies.append(started.ts - killed_at)
        dead = tap.matching(lambda e: e.event == "node-dead" and e.address == f"node:{victim.node_id}")
        detection = min(e.ts for e in dead) - killed_at if dead else float("nan")
        checks = [member.node.ask(a, CounterGet(), timeout=30) for a in moved]
        lost_state = sum(1 for f in checks if f.get(timeout=31)["count"] != 1)
    finally:
        if member is not None:
            member.close()
        for node in nodes:
            node.stop()
        if tap is not None:
            tap.close()
        redis_server.stop()
    report(
        args,
        figures={"p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99), "max_s": max(latencies),
                 "actors": actors, "moved": len(moved), "lost_state": lost_state},
        baseline={"detection_s": detection, "lease_ttl_s": TIMING.lease_ttl},
        goal={"p99_s": 2.0, "lost_state": 0},
        notes={"nodes": 3, "heartbeat_s": TIMING.heartbeat, "loadavg_1m_before": load},
    )


if __name__ == "__main__":
    main()
