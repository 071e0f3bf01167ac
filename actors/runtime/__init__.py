"""The runtime: what any actor needs, whatever it does.

Pooled pykka actors and their dispatchers (``pooled``), the node that hosts
actors at addresses and speaks for them on the bus (``node``, assembled from
``hosting``, ``sending``, ``dispatch``, ``events``), fencing and the
ownership and checkpoint seams a cluster plugs in, the node's one loop
(``io``) and clock, supervision, the shell of a sans-I/O core (``shell``,
``effects``), the node's figures (``metrics``) and the test kit. Nothing
here knows a meeting, a session or a token (:mod:`actors.sessions`), nor
a lease (:mod:`actors.cluster`).
"""
