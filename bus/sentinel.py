"""A Redis primary behind Sentinel: found by asking the sentinels, followed
across a switchover.

``REDIS_URL=redis+sentinel://[user[:password]@]host:port[,host:port...]/MASTER_NAME``
(``rediss+sentinel://`` for TLS to the data nodes). The user and password
are the data nodes' (the sentinels' own, if they have one, are the query
options ``sentinel_username`` / ``sentinel_password``); ``db`` and the TLS
options of ``redis://`` URLs are query options too.

Two users, one discovery (:class:`SentinelUrl` and the sentinels'
``SENTINEL MASTERS``, through redis-py's ``Sentinel``):

* the bus (:class:`~bus.redis_transport.RedisTransport`) asks
  :meth:`PrimaryResolver.endpoint` before every connection, checks with
  ``INFO replication`` that it reached the primary, and asks again when a
  sentinel announces a switchover (``+switch-master``, :class:`SwitchWatch`)
  and every :data:`CHECK_INTERVAL_S` besides: when another primary is
  named, it drops both connections and connects to the new one, as after
  any connection loss (``disconnected``, ``connected``,
  ``resubscribed``). A demoted primary keeps its clients, and a ``PUBLISH``
  on a replica reaches only that replica's subscribers: staying would split
  the bus in two;
* the cluster's lease store (redis-py) uses :func:`connection_pool`: a
  blocking pool whose connections ask the sentinels for the primary when
  they connect, move on an announced switchover or the next check, and are
  dropped when a demoted one answers ``READONLY``.

Until the old primary is told it is a replica (seconds after the
promotion), it still answers as the primary, and a sentinel that has not
heard of the switchover still names it: an announced new primary is
preferred for :data:`ANNOUNCED_TRUST_S` unless it fails to answer as one.

A switchover is a reconnect for the bus (what pub/sub carried meanwhile is
lost, and reported), and for the leases what the fencing already covers:
a write the promoted replica missed can lose a lease, never an epoch (each
is drawn above the server clock in microseconds), so a new owner's epoch is
above the old one's and receivers refuse the old owner's envelopes. A
checkpoint it missed is written again: :func:`connection_pool` tells its
owner when its connections moved (``on_new_primary``), and the cluster
writes every live actor's last checkpoint again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from bus.endpoint import RedisEndpoint, mask_url
from bus.errors import TransportError

__all__ = ["CHECK_INTERVAL_S", "PrimaryResolver", "SentinelUrl", "connection_pool", "is_sentinel_url"]

log = logging.getLogger(__name__)

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: How often the bus asks the sentinels whether its primary is still the one.
CHECK_INTERVAL_S = 1.0
#: How long one question to the sentinels may take.
ASK_TIMEOUT_S = 2.0
#: How long an announced switchover's new primary is preferred to what a
#: sentinel says (one that has not heard yet still names the old primary,
#: which, not yet demoted, still answers as one).
ANNOUNCED_TRUST_S = 30.0


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[user[:password]@]host:port[,host:port...]/MASTER_NAME[?options]``."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    tls: bool
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    query: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        try:
            parts = urlsplit(url)
            if parts.scheme.lower() not in SENTINEL_SCHEMES:
                raise ValueError(f"unsupported scheme {parts.scheme!r}")
            userinfo, _, hosts = parts.netloc.rpartition("@")
            user, sep, password = userinfo.partition(":")
            sentinels = []
            for item in hosts.split(","):
                host, _, port = item.strip().rpartition(":")
                if not host or not port:
                    raise ValueError(f"sentinel {item!r} is not host:port")
                sentinels.append((host.strip("[]"), int(port)))
            master = unquote(parts.path.strip("/"))
            if not master or "/" in master:
                raise ValueError("the path must be the master's name: /MASTER_NAME")
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            return cls(
                sentinels=tuple(sentinels), master=master, tls=parts.scheme.lower() == "rediss+sentinel",
                db=int(query.pop("db", "0")),
                username=unquote(user) or None, password=unquote(password) if sep else None,
                sentinel_username=query.pop("sentinel_username", None),
                sentinel_password=query.pop("sentinel_password", None),
                query=query,
            )
        except ValueError as exc:
            raise TransportError(f"bad redis URL {mask_url(url)}: {exc}") from exc

    def sentinel_options(self) -> dict[str, Any]:
        """redis-py connection options for a sentinel itself."""
        options: dict[str, Any] = {"socket_timeout": ASK_TIMEOUT_S, "socket_connect_timeout": ASK_TIMEOUT_S}
        if self.sentinel_password is not None:
            options["password"] = self.sentinel_password
        if self.sentinel_username is not None:
            options["username"] = self.sentinel_username
        return options

    def sentinel(self) -> Sentinel:
        """redis-py's asyncio ``Sentinel`` for these sentinels."""
        return Sentinel(list(self.sentinels), sentinel_kwargs=self.sentinel_options())

    def endpoint(self, host: str, port: int) -> RedisEndpoint:
        """The data node at ``host:port``, reached with this URL's credentials and TLS options."""
        scheme = "rediss" if self.tls else "redis"
        base = RedisEndpoint.parse(f"{scheme}://{host}:{port}/{self.db}?"
                                   + "&".join(f"{k}={v}" for k, v in self.query.items()))
        return RedisEndpoint(host=base.host, port=base.port, db=self.db, username=self.username,
                             password=self.password, tls=self.tls, ssl_cert_reqs=base.ssl_cert_reqs,
                             ssl_ca_certs=base.ssl_ca_certs, ssl_check_hostname=base.ssl_check_hostname)


class SwitchWatch:
    """The sentinels' ``+switch-master`` for one master, heard as it
    happens: :meth:`wait` returns as soon as a switchover was announced, so
    a client moves at once instead of at its next check (until then the
    old primary, not yet told, keeps taking writes its resync will
    discard). One subscription to one sentinel at a time, the next one on
    failure; polling stays the fallback. Start it on the loop that waits."""

    CHANNEL = "+switch-master"

    def __init__(self, url: SentinelUrl) -> None:
        self.url = url
        self._switched = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._announced: tuple[str, int] | None = None
        self._announced_at = 0.0

    def announced(self) -> tuple[str, int] | None:
        """The new primary of a switchover announced in the last
        :data:`ANNOUNCED_TRUST_S` (host, port), if any."""
        if self._announced is not None and time.monotonic() - self._announced_at < ANNOUNCED_TRUST_S:
            return self._announced
        return None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name=f"sentinel-watch:{self.url.master}")

    async def wait(self, timeout: float) -> bool:
        """True if a switchover was announced (now or since the last call),
        False after ``timeout``."""
        try:
            await asyncio.wait_for(self._switched.wait(), timeout)
        except TimeoutError:
            return False
        self._switched.clear()
        return True

    def forget(self, host: str | None, port: int) -> None:
        """``host:port`` did not turn out to be the primary: ask the sentinels again."""
        if self._announced == (host, port):
            self._announced = None

    def switched(self) -> bool:
        """Whether one was announced since the last call (never waits)."""
        if self._switched.is_set():
            self._switched.clear()
            return True
        return False

    async def _listen(self) -> None:
        # No socket timeout: the subscription waits for announcements.
        kwargs = {**self.url.sentinel_options(), "socket_timeout": None}
        turn = 0
        while True:
            host, port = self.url.sentinels[turn % len(self.url.sentinels)]
            turn += 1
            client = aioredis.Redis(host=host, port=port, **kwargs)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.CHANNEL)
                    async for message in pubsub.listen():
                        data = message.get("data")
                        if message.get("type") != "message" or not isinstance(data, bytes):
                            continue
                        # "<name> <old-ip> <old-port> <new-ip> <new-port>"
                        fields = data.decode(errors="replace").split()
                        if len(fields) == 5 and fields[0] == self.url.master and fields[4].isdigit():
                            self._announced, self._announced_at = (fields[3], int(fields[4])), time.monotonic()
                            self._switched.set()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                log.debug("sentinel %s:%s: %r; trying the next", host, port, exc)
            finally:
                await client.aclose()
            await asyncio.sleep(CHECK_INTERVAL_S)  # a pause before the next sentinel

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class PrimaryResolver:
    """Where the primary is now, by the sentinels (on the loop that asks)."""

    def __init__(self, url: str) -> None:
        self.url = SentinelUrl.parse(url)
        self._sentinel: Sentinel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watch = SwitchWatch(self.url)

    async def endpoint(self) -> RedisEndpoint:
        """The primary the sentinels name now; ``ConnectionError`` if none does (yet)."""
        loop = asyncio.get_running_loop()
        if self._sentinel is None or self._loop is not loop:
            self._sentinel, self._loop = self.url.sentinel(), loop
        announced = self.watch.announced()
        if announced is not None:
            return self.url.endpoint(*announced)  # the connection checks it is the primary
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S * len(self.url.sentinels)):
                host, port = await self._sentinel.discover_master(self.url.master)
        except (MasterNotFoundError, TimeoutError) as exc:
            # Not a refusal: a failover may be under way; ask again later.
            raise ConnectionError(f"no sentinel names a primary for {self.url.master!r}: {exc}") from exc
        return self.url.endpoint(str(host), int(port))

    async def aclose(self) -> None:
        await self.watch.aclose()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                await client.aclose()


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's sentinel pool (connections find the primary as they
    connect; a demoted one's READONLY drops them) that waits for a free
    connection as ``BlockingConnectionPool`` does, instead of failing, and
    asks the sentinels at most every :data:`CHECK_INTERVAL_S` as it hands
    out a connection: after a switchover the connections still open to the
    old primary are dropped (redis-py's pool asks only when it connects,
    and a demoted primary that has not yet been told so takes writes that
    its resync will discard)."""

    _checked = 0.0
    _watch: SwitchWatch | None = None
    sentinel_url: SentinelUrl
    #: Called (on the pool's loop) when its connections move to another primary.
    on_new_primary: Callable[[], None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._watch is None:
            self._watch = SwitchWatch(self.sentinel_url)
            self._watch.start()
        now = time.monotonic()
        if self._watch.switched() or now - self._checked >= CHECK_INTERVAL_S:
            self._checked = now
            try:
                await self.get_master_address()  # on a change: idle connections dropped, busy ones on release
            except (MasterNotFoundError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                pass  # the connection's own connect asks again
        try:
            return await super().get_connection(*args, **kwargs)
        except redis.exceptions.ConnectionError:
            if self.master_address is not None:
                self._watch.forget(*self.master_address)
            raise

    async def get_master_address(self) -> Any:
        before = self.master_address
        announced = self._watch.announced() if self._watch is not None else None
        if announced is None:
            address = await super().get_master_address()
        else:
            address = announced
            if self.master_address != announced:
                self.master_address = announced
                await self.disconnect(inuse_connections=False)  # idle ones; busy ones on release
        if before is not None and tuple(address) != tuple(before) and self.on_new_primary is not None:
            self.on_new_primary()
        return address


def connection_pool(url: str, *, max_connections: int, on_new_primary: Callable[[], None] | None = None,
                    **options: Any) -> aioredis.ConnectionPool:
    """A blocking redis-py pool for ``url``: one server (``redis://``,
    ``rediss://``, ``unix://``) or the primary behind Sentinel
    (``redis+sentinel://``); ``options`` as for ``BlockingConnectionPool``.
    ``on_new_primary``: called on the pool's loop when, behind Sentinel, its
    connections move to another primary (never on one server)."""
    if not is_sentinel_url(url):
        return aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, **options)
    parsed = SentinelUrl.parse(url)
    connection: dict[str, Any] = {"db": parsed.db}
    if parsed.username is not None:
        connection["username"] = parsed.username
    if parsed.password is not None:
        connection["password"] = parsed.password
    template = parsed.endpoint("localhost", 6379)
    if parsed.tls:
        connection.update(ssl_cert_reqs=template.ssl_cert_reqs, ssl_ca_certs=template.ssl_ca_certs,
                          ssl_check_hostname=template.ssl_check_hostname)
    options = {**options, **connection}
    pool = _BlockingSentinelPool(
        parsed.master, parsed.sentinel(), max_connections=max_connections, is_master=True, check_connection=False,
        connection_class=SentinelManagedSSLConnection if parsed.tls else SentinelManagedConnection, **options)
    pool.sentinel_url = parsed
    pool.on_new_primary = on_new_primary
    return pool
