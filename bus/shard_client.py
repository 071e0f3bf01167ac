"""A Redis Cluster client for the cluster's lease store: each primary on a
plain redis-py client of its own, routed by the slot map.

redis-py's ``RedisCluster`` keeps one slot map and the connections to all
nodes together, and when a primary dies its commands retry, re-read the
map and reconnect inside the call; one dead primary then stalls or fails
what is sent to the live ones meanwhile, and a call cancelled in the
middle (every store call has a deadline) can leave it re-reading the map
over and over. Here ``RedisCluster`` only keeps the slot map
(``nodes_manager``); the commands go to each primary on a
``redis.asyncio.Redis`` of its own, so:

- a batch of commands is grouped by the primary that serves each one's
  key (its first key; an ``EVALSHA``'s one declared key), every group is
  one pipeline on its primary's client, all groups at once, each with a
  deadline of its own: a primary that is down or slow costs its own
  commands only, which come back as errors while the others' answers do;
- a command answered ``MOVED`` or ``ASK`` (its slot moved) makes the
  client read the slot map again and sends it once more to the new owner;
  a primary that cannot be reached makes it read the map again in the
  background (its replica may be promoted by now);
- ``NOSCRIPT`` (a promoted replica that never loaded a script) loads it
  there and sends the call again.

It speaks redis-py's command API for single commands (``get``, ``smembers``,
``xrange``, ...: each routed by its key) and ``register_script``, so the
store's one-server code reads through it unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncCoreCommands, AsyncScript
from redis.exceptions import AskError, NoScriptError, TryAgainError

__all__ = ["ShardClient"]

#: What a primary's plain client takes of the cluster client's options.
_DIRECT_OPTIONS = ("username", "password", "socket_timeout", "socket_connect_timeout", "ssl_ca_certs",
                   "ssl_cert_reqs", "ssl_check_hostname")


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "never retrieved" warning


def key_of(command: Sequence[Any]) -> Any:
    """The key a command is routed by: its first, or an EVALSHA's declared one."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3]
    return command[1]


class ShardClient(AsyncCoreCommands):  # type: ignore[misc]
    """See the module docstring. ``cluster`` keeps the slot map and is
    closed with this client."""

    def __init__(self, cluster: RedisCluster, *, max_connections: int) -> None:
        self.cluster = cluster
        self.max_connections = max_connections
        self._directs: dict[str, aioredis.Redis] = {}
        self._map_task: asyncio.Future[Any] | None = None
        self._ready = False

    # -- the slot map -----------------------------------------------------------

    async def _ensure_map(self) -> None:
        if not self._ready:
            await self.cluster.initialize()
            self._ready = True

    async def learn_map(self) -> None:
        """Read the slot map again (one reading at a time; waits for it)."""
        await asyncio.shield(self._learn_map_soon())

    def _learn_map_soon(self) -> asyncio.Future[Any]:
        """Start reading the slot map again unless a reading is under way; that reading."""
        if self._map_task is None or self._map_task.done():
            self._map_task = asyncio.ensure_future(self.cluster.nodes_manager.initialize())
            self._map_task.add_done_callback(_quiet)
        return self._map_task

    def _primary(self, key: Any) -> Any:
        return self.cluster.get_node_from_key(key)

    def _direct(self, shard: Any) -> aioredis.Redis:
        client = self._directs.get(shard.name)
        if client is None:
            kwargs = {k: shard.connection_kwargs[k] for k in _DIRECT_OPTIONS if k in shard.connection_kwargs}
            tls = issubclass(shard.connection_class, aioredis.SSLConnection)
            # One quick retry: a primary that is gone fails fast, and the
            # caller (a renewal, the next sweep) tries again on the new map.
            # Past max_connections a call waits for a connection (within
            # its own deadline) instead of failing: a drain that releases
            # hundreds of leases at once releases them all.
            pool = aioredis.BlockingConnectionPool(
                connection_class=aioredis.SSLConnection if tls else aioredis.Connection,
                max_connections=self.max_connections, timeout=None, host=shard.host, port=shard.port,
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1), **kwargs)
            client = self._directs[shard.name] = aioredis.Redis.from_pool(pool)  # closed with it
        return client

    # -- batches --------------------------------------------------------------------

    async def batch(self, commands: Sequence[Sequence[Any]], *, timeout: float | None = None,
                    scripts: Sequence[AsyncScript] = ()) -> list[Any]:
        """Each command's reply, or its error (not raised): grouped per
        primary, one pipeline each, all at once, each group within
        ``timeout`` (its commands get ``TimeoutError`` past it). ``scripts``:
        the scripts an ``EVALSHA`` among them may need loaded."""
        if not commands:
            return []
        await self._ensure_map()
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in (1, 2):
            groups: dict[str, tuple[Any, list[int]]] = {}
            for i in todo:
                shard = self._primary(key_of(commands[i]))
                groups.setdefault(shard.name, (shard, []))[1].append(i)
            answers = await asyncio.gather(*(self._group(shard, [commands[i] for i in index], timeout, scripts)
                                             for shard, index in groups.values()))
            for (_shard, index), answer in zip(groups.values(), answers, strict=True):
                for i, reply in zip(index, answer, strict=True):
                    replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], (AskError, TryAgainError))]
            if not todo or attempt == 2:
                break
            await self.learn_map()  # a slot moved: ask where it is now, send those again
        return replies

    async def _group(self, shard: Any, commands: list[Sequence[Any]], timeout: float | None,
                     scripts: Sequence[AsyncScript]) -> list[Any]:
        try:
            async with asyncio.timeout(timeout):
                return await self._pipeline(shard, commands, scripts)
        except (OSError, aioredis.ConnectionError, aioredis.TimeoutError, TimeoutError) as exc:
            self._learn_map_soon()  # down, or failed over: the map may say who serves it now
            error = exc if isinstance(exc, Exception) else TimeoutError(str(exc))
            return [error] * len(commands)

    async def _pipeline(self, shard: Any, commands: list[Sequence[Any]],
                        scripts: Sequence[AsyncScript]) -> list[Any]:
        client = self._direct(shard)
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = list(await pipe.execute(raise_on_error=False))
            missing = {str(c[1]) for c, r in zip(commands, replies, strict=True) if isinstance(r, NoScriptError)}
            if attempt == 2 or not missing:
                return replies
            for script in scripts:
                if script.sha in missing:
                    await client.script_load(script.script)
        raise AssertionError("unreachable")

    async def load_scripts(self, *scripts: AsyncScript) -> None:
        """Read the slot map, connect to every primary and load ``scripts``
        there (a call that needs one then finds it loaded)."""
        await self._ensure_map()
        await asyncio.gather(*(self._direct(primary).script_load(script.script)
                               for primary in self.cluster.get_primaries() for script in scripts))

    async def commands(self, *commands: Sequence[Any]) -> list[Any]:
        """Each command's reply; raises the first error."""
        replies = await self.batch(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def run(self, script: AsyncScript, calls: Sequence[tuple[Any, Sequence[Any]]], *,
                  timeout: float | None = None, raise_on_error: bool = True) -> list[Any]:
        """``script`` once per ``(key, args)`` (the key its one declared key)."""
        replies = await self.batch([("EVALSHA", script.sha, 1, key, *args) for key, args in calls],
                                   timeout=timeout, scripts=(script,))
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    # -- redis-py's command API ---------------------------------------------------------

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        await self._ensure_map()
        command = args
        for attempt in (1, 2):
            client = self._direct(self._primary(key_of(command)))
            try:
                return await client.execute_command(*command, **options)
            except (AskError, TryAgainError):
                if attempt == 2:
                    raise
                await self.learn_map()
            except (OSError, aioredis.ConnectionError):
                self._learn_map_soon()
                raise
        raise AssertionError("unreachable")

    def register_script(self, script: Any) -> AsyncScript:
        return AsyncScript(self, script)

    def get_encoder(self) -> Any:
        """How redis-py encodes a script to find its sha (as the cluster client does)."""
        return self.cluster.get_encoder()

    async def aclose(self) -> None:
        directs, self._directs = self._directs, {}
        for client in directs.values():
            await client.aclose()
        await self.cluster.aclose()
