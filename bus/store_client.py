"""The redis-py client of the cluster's lease store, for any bus URL.

One server (``redis://``, ``rediss://``, ``unix://``) and the primary behind
Sentinel (``redis+sentinel://``): a ``redis.asyncio.Redis`` on a blocking
pool (:func:`bus.sentinel.connection_pool`). A Redis Cluster
(``redis+cluster://``, ``rediss+cluster://``): a
:class:`~bus.shard_client.ShardClient` (each primary on a client of its
own, routed by the slot map); the store on it is
:class:`bus.cluster.sharded_store.ShardedLeaseStore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from bus.sentinel import connection_pool
from bus.shard_client import ShardClient
from bus.sharded import ClusterUrl, is_cluster_url

__all__ = ["store_client"]

#: What a cluster client takes of the options a pool takes.
_CLUSTER_OPTIONS = ("socket_timeout", "socket_connect_timeout")
#: The fewest connections per primary a cluster client gets: a lane whose
#: calls overlap (releases in a drain) runs that many at once per shard
#: (past it, a call waits for a free connection within its deadline).
CLUSTER_MIN_CONNECTIONS = 64


def store_client(url: str, *, max_connections: int, on_new_primary: Callable[[], None] | None = None,
                 **options: Any) -> aioredis.Redis | ShardClient:
    """A client for ``url`` with at most ``max_connections`` connections (per
    shard on a cluster, and at least :data:`CLUSTER_MIN_CONNECTIONS`); a call
    past the limit waits for a free one. ``options`` as for
    ``BlockingConnectionPool``; on a
    cluster only the socket timeouts apply (the client follows ``MOVED``
    and failovers itself). ``on_new_primary``: behind Sentinel only."""
    if not is_cluster_url(url):
        return aioredis.Redis(connection_pool=connection_pool(url, max_connections=max_connections,
                                                              on_new_primary=on_new_primary, **options))
    parsed = ClusterUrl.parse(url)
    endpoint = parsed.endpoint(*parsed.seeds[0])
    kwargs: dict[str, Any] = {k: options[k] for k in _CLUSTER_OPTIONS if k in options}
    if endpoint.tls:
        kwargs.update(ssl=True, ssl_cert_reqs=endpoint.ssl_cert_reqs, ssl_ca_certs=endpoint.ssl_ca_certs,
                      ssl_check_hostname=endpoint.ssl_check_hostname)
    cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
                           max_connections=max(max_connections, CLUSTER_MIN_CONNECTIONS), username=endpoint.username,
                           password=endpoint.password, **kwargs)
    return ShardClient(cluster, max_connections=max(max_connections, CLUSTER_MIN_CONNECTIONS))
