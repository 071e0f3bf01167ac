"""The cluster, as Redis sees it: membership, leases with fencing,
placement and the durable backlog.

Nothing here imports ``actors``: these modules only know keys, scripts,
scores and message kinds. The node side (what a node does with them) is
``actors.cluster``.

- :mod:`bus.cluster.keys`       where everything lives in Redis
- :mod:`bus.cluster.messages`   what goes on ``sys:nodes``
- :mod:`bus.cluster.leases`     claim, renew, release, fenced checkpoints
- :mod:`bus.cluster.backlog`    routing to a live owner, or the backlog
- :mod:`bus.cluster.placement`  weighted rendezvous hashing
- :mod:`bus.cluster.membership` the live-node view built from heartbeats
"""
