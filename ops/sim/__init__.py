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
  world (their Redis transports, dispatchers and actors on its one loop,
  their clocks its virtual time): two nodes asking each other across the
  model Redis replay the same run from the same seed.

Not yet: cluster members (the renewal lane has a loop thread of its own),
the data-channel service, faults drawn from the seed, invariants, the
``huddle sim`` command. Deterministic only as far as the parts are: the
loop dispatcher's round budget reads the real clock, and the transport's
reconnect backoff draws from the process's ``random``.
"""
