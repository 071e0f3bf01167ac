"""Deterministic simulation: a world in one process, on one seeded clock.

The parts so far (the first step toward ``huddle sim``, which is not
there yet):

* :mod:`ops.sim.loop`: an asyncio loop on virtual time that never waits,
  with timers at the same instant in the order they were set;
* :mod:`ops.sim.network`: TCP connections as in-memory transports with
  seeded delays, in order per connection, and dropped connections and
  refused addresses as faults;
* :mod:`ops.sim.redis_model`: Redis on that network (fakeredis's command
  engine and its Lua, on the world's clock), checked against a real
  redis-server by a differential test and by the lease store's whole
  contract suite;
* :mod:`ops.sim.world`: the three together, from one seed;
* :mod:`ops.sim.clock` and :mod:`ops.sim.nodes`: real huddle nodes in a
  world (their Redis transports, dispatchers, actors and, as cluster
  members, their cluster shells and renewal lanes on its one loop, their
  clocks its virtual time), each a host the world can pause (nothing of it
  runs: ``SIGSTOP``), resume or kill (``kill -9``). Two nodes asking each
  other replay the same run from the same seed; a counter's owner paused
  past its lease or killed under acknowledged additions loses none and
  applies none twice (and without the cluster's dedupe by message id the
  same scenario applies 59 twice: the check can fail).

* :mod:`ops.sim.counters` and :mod:`ops.sim.webinar`: the two workloads
  of ``huddle sim`` (:mod:`ops.sim.command`), faults drawn from the seed,
  the invariants checked.

What makes a run the same run: one thread; the loop's clock is virtual
(the loop dispatcher's round budget reads it too); every random draw comes
from the seed (network delays, the process's generator, each node's
reconnect backoff); what is iterated in an order that could differ
between runs (websockets' server closes its sockets in set order) is not
left to decide an interleaving (the reference service closes its own in
the order they opened). Message ids and eras stay random: nothing orders
by them.
"""
