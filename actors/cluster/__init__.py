"""A node in a cluster: membership, leases with fencing, placement,
failover, hand-off and the durable backlog, on top of :mod:`bus.cluster`.

- :mod:`actors.cluster.machine`  the decisions, a sans-I/O state machine
- :mod:`actors.cluster.shell`    :class:`Cluster`, which runs it on a node

Usage::

    node = Node(RedisTransport(url), node_id="n1")
    cluster = Cluster(node, url, config=ClusterConfig(capacity=2.0),
                      factories=ActorFactories({"counter": Counter}))
    node.start()
    cluster.start()
    cluster.ensure("counter:c1", start=10).get(timeout=5)  # -> the owning node's id
"""

from actors.cluster.machine import ClusterConfig
from actors.cluster.shell import (
    ActorFactories,
    Cluster,
    ClusterControl,
    ClusterStatus,
    RedisCheckpoints,
    encode_start_args,
    node_control_address,
)

__all__ = [
    "ActorFactories",
    "Cluster",
    "ClusterConfig",
    "ClusterControl",
    "ClusterStatus",
    "RedisCheckpoints",
    "encode_start_args",
    "node_control_address",
]
