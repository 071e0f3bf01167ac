"""Redis inside a simulated world: fakeredis's command engine on the
simulated network, on the world's clock.

huddle relies on a small part of Redis: pub/sub (at most once, in order per
connection), the lease, checkpoint and backlog scripts (Lua, with
``redis.call`` on strings, hashes, sorted sets and streams), ``TIME``,
``INCR``, key expiry. :class:`RedisModel` serves exactly those through
fakeredis (its Lua runs on ``lupa``: the same scripts huddle sends a real
server), speaking RESP2 on :class:`~ops.sim.network.SimNetwork`
connections, so the bus's own RESP connections and redis-py's asyncio
client talk to it as to a redis-server. The differential test
(``tests/ops/sim/test_redis_model.py``) runs the same command sequences
against it and against a real redis-server and compares the answers.

Time: fakeredis reads the wall clock with ``time.time()`` (key expiry,
``TIME``, stream ids). While a model serves a command its module-level
``time`` is the world's (:class:`WorldTime`), so a lease's TTL runs out
on the world's clock and ``TIME`` answers virtual microseconds.

Faults: :meth:`RedisModel.restart` (``keep_data`` or not) drops every
connection, as a restarted server does, and starts again on the same
address.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis._helpers as _fr_helpers
import fakeredis._socket._base as _fr_base
import fakeredis.commands_mixins.server_mixin as _fr_server
import redis
from fakeredis import FakeServer
from fakeredis._commands import command
from fakeredis._helpers import SimpleError, SimpleString
from fakeredis._socket import FakeSocket

from ops.sim.network import SimNetwork, SimTransport

__all__ = ["RedisModel", "WorldTime", "encode_reply"]

#: The Redis version the model answers as (huddle's scripts need 7's ``SPUBLISH`` and functions of 6.2).
MODEL_VERSION = (7, 0)


class WorldTime:
    """Stands in for the ``time`` module inside fakeredis while a model
    serves: ``time()`` is the world's wall clock (``wall()``)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall

    def time(self) -> float:
        return self._wall()

    def __getattr__(self, name: str) -> Any:
        import time

        return getattr(time, name)


_PATCHED = (_fr_base, _fr_server, _fr_helpers)


@contextlib.contextmanager
def _world_time(clock: WorldTime) -> Iterator[None]:
    saved = [module.time for module in _PATCHED]  # type: ignore[attr-defined]
    for module in _PATCHED:
        module.time = clock  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(_PATCHED, saved, strict=True):
            module.time = original  # type: ignore[attr-defined]


def encode_reply(value: Any, protocol: int = 2) -> bytes:
    """One reply in RESP2 or RESP3 (the connection's ``HELLO`` decides),
    status replies kept apart from bulk strings."""
    resp3 = protocol == 3
    if value is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    if isinstance(value, SimpleString):
        return b"+" + value.value + b"\r\n"
    if isinstance(value, SimpleError):
        return b"-" + value.value.encode() + b"\r\n"
    if isinstance(value, bool):
        if resp3:
            return b"#t\r\n" if value else b"#f\r\n"
        return b":1\r\n" if value else b":0\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, float):
        text = repr(value).encode()
        return b",%s\r\n" % text if resp3 else b"$%d\r\n%s\r\n" % (len(text), text)
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, (list, tuple)):
        return b"*%d\r\n" % len(value) + b"".join(encode_reply(item, protocol) for item in value)
    if isinstance(value, dict):
        body = b"".join(encode_reply(k, protocol) + encode_reply(v, protocol) for k, v in value.items())
        return (b"%%%d\r\n" % len(value) if resp3 else b"*%d\r\n" % (2 * len(value))) + body
    if isinstance(value, (set, frozenset)):
        body = b"".join(encode_reply(item, protocol) for item in sorted(value))
        return (b"~%d\r\n" if resp3 else b"*%d\r\n") % len(value) + body
    raise TypeError(f"no RESP encoding for a reply of type {type(value).__name__}")


class _ModelSocket(FakeSocket):
    """A fakeredis socket that keeps status replies and errors as they
    are, for :func:`encode_reply` (fakeredis flattens them for redis-py),
    and answers ``INFO`` with the one line huddle's scripts read: the
    server's ``run_id``, a new one each time the model restarts."""

    def _decode_result(self, result: Any) -> Any:
        return result

    @command((), (bytes,))
    def info(self, *_sections: bytes) -> bytes:
        server = self._server
        up = int(server.huddle_uptime()) if hasattr(server, "huddle_uptime") else 0
        return b"# Server\r\nrun_id:%s\r\nuptime_in_seconds:%d\r\n" % (
            getattr(server, "huddle_run_id", "0" * 40).encode(), up)


class _RespSession(asyncio.Protocol):
    """One client connection: bytes in are commands for its fakeredis
    socket; every reply queued (its own, and pub/sub messages for other
    connections) goes out after each batch, connection by connection in the
    order they connected, in the RESP version the connection chose."""

    def __init__(self, model: RedisModel) -> None:
        self.model = model
        self.transport: SimTransport | None = None
        self.socket: _ModelSocket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, SimTransport)
        self.transport = transport
        self.socket = _ModelSocket(self.model.server, 0, client_class=redis.Redis)
        self.model._sessions.append(self)

    def data_received(self, data: bytes) -> None:
        assert self.socket is not None
        with _world_time(self.model.clock):
            try:
                self.socket.sendall(data)
            except SimpleError as exc:  # a request fakeredis cannot even parse
                self.socket.put_response(exc)
            self.model.commands += 1
        self.model._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self in self.model._sessions:
            self.model._sessions.remove(self)
        if self.socket is not None:
            with _world_time(self.model.clock):
                self.socket.close()

    def flush(self) -> None:
        socket, transport = self.socket, self.transport
        if socket is None or transport is None or socket.responses is None:
            return
        out = []
        protocol = socket._client_info.protocol_version
        while not socket.responses.empty():
            out.append(encode_reply(socket.responses.get_nowait(), protocol))
        if out:
            transport.write(b"".join(out))


class RedisModel:
    """A Redis server in a simulated world, at ``host:port`` on ``network``."""

    def __init__(self, network: SimNetwork, loop: asyncio.AbstractEventLoop, wall: Callable[[], float], *,
                 host: str = "redis", port: int = 6379) -> None:
        self.network = network
        self.loop = loop
        self.host, self.port = host, port
        self.clock = WorldTime(wall)
        self.server = FakeServer(version=MODEL_VERSION)
        self._sessions: list[_RespSession] = []
        self._listener = network.listen(loop, lambda: _RespSession(self), host, port)
        self.commands = 0
        self.restarts = 0
        self._started()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def _flush(self) -> None:
        for session in list(self._sessions):
            session.flush()

    def restart(self, *, keep_data: bool) -> int:
        """The server restarts: every connection is cut (subscriptions
        with them); with ``keep_data`` the keys stay (a restart from its
        saved data), else it starts empty. Returns the connections cut."""
        cut = self.network.drop_all(self.host, self.port)
        self._sessions.clear()
        if not keep_data:
            self.server = FakeServer(version=MODEL_VERSION)
        self.restarts += 1
        self._started()
        return cut

    def _started(self) -> None:
        """The server's run: its id (``INFO``'s ``run_id``) and start (``uptime_in_seconds``)."""
        start = self.clock.time()
        self.server.huddle_run_id = f"{self.restarts:040x}"  # type: ignore[attr-defined]
        self.server.huddle_uptime = lambda: self.clock.time() - start  # type: ignore[attr-defined]

    def inspector(self) -> Any:
        """A synchronous redis-py client on the model's data, outside the
        simulated network (what a test looks at, as ``redis-cli`` would),
        each call on the world's clock."""
        return _Inspector(self)

    def close(self) -> None:
        self._listener.close()
        self.network.drop_all(self.host, self.port)


class _Inspector:
    """See :meth:`RedisModel.inspector`."""

    def __init__(self, model: RedisModel) -> None:
        self._model = model
        self._server: FakeServer | None = None
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        model = self._model
        if self._server is not model.server:  # a restart without its data made a new one
            import fakeredis

            self._server, self._client = model.server, fakeredis.FakeRedis(server=model.server)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def on_world_time(*args: Any, **kwargs: Any) -> Any:
            with _world_time(model.clock):
                return attr(*args, **kwargs)

        return on_world_time

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
