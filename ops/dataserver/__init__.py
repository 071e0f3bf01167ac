"""The reference data-channel service (``huddle dataserver``).

A stand-in for the relay a meeting's data channel talks to, faithful to
docs/protocol.md §1 from the server side, with a control API to inspect
what it saw and to inject faults. Parts:

- ``model``: the behaviour without I/O (:class:`~ops.dataserver.model.DataService`);
- ``tokens``: the JWTs it issues and checks;
- ``server``: aiohttp (HTTP) and websockets (sockets) on one asyncio loop;
- ``cli``: ``huddle dataserver``;
- ``harness``: :class:`~ops.dataserver.harness.DataServerProcess`, the
  service as a subprocess for tests and benchmarks.
"""
