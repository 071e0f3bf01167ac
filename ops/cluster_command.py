"""``huddle node`` in a cluster: its options, and ``--drain``.

    huddle node --cluster [--actors counter] [--capacity 2] [--heartbeat 0.5]
                [--lease-ttl 2] [--ensure counter:c1] ...
    huddle node --drain NODE_ID     hand NODE_ID's actors to the others; it leaves

Any cluster option implies ``--cluster``. A cluster node leaves cleanly on
SIGTERM/SIGINT: it hands its placed actors to the nodes that rank first
without it (each is checkpointed, released and activated there; messages in
between wait in the backlog), releases the rest, and stops.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.cluster.shell import Cluster
    from actors.runtime.node import Node

__all__ = ["add_node_options", "cluster_requested", "drain_node", "join_cluster"]


def add_node_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cluster", "Membership (heartbeats on sys:nodes), leases with fencing, placement by rendezvous hashing, "
        "failover, hand-off and the durable backlog. Any of these options implies --cluster.")
    group.add_argument("--cluster", action="store_true", help="join the cluster on this bus")
    group.add_argument("--actors", action="append", default=[], metavar="KIND",
                       help="this node can start actors of address kind KIND by itself (placement, failover); "
                            "built-in: counter, echo; repeatable")
    group.add_argument("--capacity", type=float, default=None, metavar="WEIGHT",
                       help="placement weight (default 1; 0: host nothing placed)")
    group.add_argument("--heartbeat", type=float, default=None, metavar="SECONDS",
                       help="heartbeat and lease renewal interval (default 0.5)")
    group.add_argument("--lease-ttl", type=float, default=None, metavar="SECONDS",
                       help="lease lifetime: a node silent this long is dead and its actors move (default 2)")
    group.add_argument("--sweep", type=float, default=None, metavar="SECONDS",
                       help="how often to look for unowned actors and dead nodes missed (default 5)")
    group.add_argument("--backlog-cap", type=int, default=None, metavar="N",
                       help="messages one address's backlog holds while it has no owner (default 10000)")
    group.add_argument("--fencing-log", action="store_true",
                       help="record every accepted checkpoint write in Redis (for checkers)")
    group.add_argument("--ensure", action="append", default=[], metavar="ADDRESS",
                       help="make sure a placed actor lives at ADDRESS (on whichever node ranks first); repeatable")
    group.add_argument("--drain", metavar="NODE_ID",
                       help="do not run a node: ask node NODE_ID to hand off its actors and leave, and wait for it")


def cluster_requested(args: argparse.Namespace) -> bool:
    return bool(args.cluster or args.actors or args.ensure or args.fencing_log
                or any(getattr(args, name) is not None
                       for name in ("capacity", "heartbeat", "lease_ttl", "sweep", "backlog_cap")))


def _config(args: argparse.Namespace) -> Any:
    from actors.cluster.machine import ClusterConfig

    options: dict[str, Any] = {}
    for option, field in (("capacity", "capacity"), ("heartbeat", "heartbeat_interval"),
                          ("lease_ttl", "lease_ttl"), ("sweep", "sweep_interval"), ("backlog_cap", "backlog_cap")):
        value = getattr(args, option)
        if value is not None:
            options[field] = value
    if args.fencing_log:
        options["fencing_log"] = True
    return ClusterConfig(**options)


def join_cluster(node: Node, url: str, args: argparse.Namespace, stop: threading.Event,
                 factories: Mapping[str, Callable[..., Any]] | None = None) -> Cluster:
    """Make ``node`` a cluster member as ``args`` say (before ``node.start``
    hosts anything); ``stop`` is set when the node has left (e.g. drained).
    ``factories``: more kinds this node starts by itself (e.g. the meeting
    trees of ``--meetings``), next to the built-in ones ``--actors`` names."""
    from actors.runtime.builtin import BUILTIN_FACTORIES
    from actors.cluster.shell import ActorFactories, Cluster

    unknown = [k for k in args.actors if k not in BUILTIN_FACTORIES]
    if unknown:
        raise SystemExit(f"unknown actor kind(s) {unknown}; built-in: {sorted(BUILTIN_FACTORIES)}")
    factories = ActorFactories({**{k: BUILTIN_FACTORIES[k] for k in args.actors}, **(factories or {})})
    cluster = Cluster(node, url, config=_config(args), factories=factories)

    def stop_when_left() -> None:
        cluster.wait_left()
        stop.set()

    threading.Thread(target=stop_when_left, name="huddle-cluster-left", daemon=True).start()
    return cluster


def settle_cluster(node: Node, cluster: Cluster, spawned: list[str], args: argparse.Namespace,
                   timeout: float = 15.0) -> bool:
    """After ``node.start()``: join, ensure the ``--ensure`` addresses, and
    wait until each of the ``spawned`` addresses is live here or held by
    another node (said on stderr). False on timeout."""
    deadline = time.monotonic() + timeout
    if not cluster.start(timeout):
        print("could not join the cluster (is Redis reachable?)", file=sys.stderr)
        return False
    futures = [cluster.ensure(address) for address in args.ensure]
    for future in futures:
        future.get(timeout=max(0.1, deadline - time.monotonic()))
    waiter = threading.Event()
    while any(cluster.spawning(a) for a in spawned):
        if time.monotonic() > deadline:
            print(f"no lease yet for {[a for a in spawned if cluster.spawning(a)]}", file=sys.stderr)
            return False
        waiter.wait(0.01)
    elsewhere = [a for a in spawned if node.lookup(a) is None]
    if elsewhere:
        print(f"held by other nodes, not started here: {', '.join(elsewhere)}", file=sys.stderr)
    return True


def drain_node(url: str, node_id: str, namespace: str, timeout: float, codec: Any = None) -> int:
    """``huddle node --drain NODE_ID``: ask it to drain (signed with the
    fleet's key when ``codec`` holds it); wait until it left."""
    from actors.cluster.shell import node_control_address
    from actors.runtime.node import Node
    from bus.address import SYS_NODES
    from bus.cluster.messages import DrainNode, NodeLeft
    from bus.envelope import Envelope
    from bus.errors import HuddleError
    from bus.redis_transport import RedisTransport

    left = threading.Event()
    transport = RedisTransport(url, name="huddle-drain")
    node = Node(transport, namespace=namespace, codec=codec)

    def on_nodes(env: Envelope) -> None:
        if isinstance(env.message, NodeLeft) and env.message.node == node_id:
            left.set()

    node.handle_system_channel(SYS_NODES, on_nodes)
    node.start()
    try:
        if not transport.wait_subscribed(10):
            print("bus unreachable", file=sys.stderr)
            return 2
        try:
            count = node.ask(node_control_address(node_id), DrainNode(), timeout=10).get(timeout=11)
        except HuddleError as exc:
            print(f"node {node_id} did not take the drain request: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"node {node_id} is handing off {count} placed actor(s)", flush=True)
        if not left.wait(timeout):
            print(f"node {node_id} did not leave within {timeout:g}s", file=sys.stderr)
            return 1
        print(f"node {node_id} left the cluster", flush=True)
        return 0
    finally:
        node.shutdown()
