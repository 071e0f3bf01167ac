"""Redis pub/sub transport: two lean connections on an asyncio loop.

Shape
-----
A :class:`RedisTransport` runs on the asyncio loop it is started on (a
node passes its I/O loop, so the transport, the actors' sockets and the
clock's timers share one loop on one thread), or, started without one,
on a loop thread of its own (``huddle inject``, monitor, tap). It keeps two
connections to Redis, each an ``asyncio.Protocol`` that speaks RESP2
directly (hand-encoded commands, ``hiredis.Reader`` for replies):

- the **publisher** connection. ``publish()`` appends ``(channel, data)`` to a
  pending deque under a lock and, if no flush is scheduled, schedules one
  (``loop.call_soon`` on the loop's thread, ``call_soon_threadsafe`` from
  any other). A flush encodes everything pending as
  pipelined ``PUBLISH`` commands and writes them in one ``write()``; replies
  are read as they come (so the connection never backs up) and each one
  settles the oldest in-flight message. Publishes are not awaited one by
  one, so a busy node sends large batches and an idle one sends at once.
- the **subscriber** connection. Bytes from the socket go straight into a
  ``hiredis.Reader``; each ``[b"message", channel, data]`` reply becomes one
  ``receiver(channel, data)`` call on the loop thread. Subscribe and
  unsubscribe confirmations drive :meth:`RedisTransport.wait_subscribed`.

Why not redis-py: measured across two processes on 2 cores
(``ops.bench.raw_redis.publish_path_matrix``, 100-byte payloads, 1,000
channels), the lean publisher reached 0.3-0.67 M msgs/s where redis-py's
sync pipeline reached ~0.14 M and its asyncio pipeline ~0.08 M; the lean
subscriber likewise against ~0.14 M (``PubSub.get_message``) and ~0.07 M
(asyncio). Per message, encoding costs ~0.12 µs and dispatch a few hundred
nanoseconds of Python.

Not seen here: Redis itself disconnects a subscriber whose output buffer
passes ``client-output-buffer-limit pubsub`` (32 MB hard by default), and
what was in that buffer is gone. The subscriber reconnects and
resubscribes; size that limit for the fleet's bursts.

Failure
-------
A connection silent for ``health_interval`` seconds is PINGed; no PONG
within another interval and it is dropped (a paused server, a half-open
socket). On connection loss each connection reconnects on its own, with exponential
backoff and full jitter (50 ms doubling to 2 s). The subscriber then
re-subscribes every channel it holds (including those asked for while it was
down); the publisher puts messages that were written but not acknowledged
back at the head of the pending queue (at-least-once across a reconnect:
envelope ids let receivers drop a duplicate) and writes everything pending.
While Redis is unreachable, pending publishes are kept up to
``max_pending``; past it the oldest are dropped, counted in
``stats.dropped`` and reported to ``on_drop(channel, "overflow")``.

State callbacks (``on_state``) run on the loop thread: ``"connected"`` when
both connections are up, ``"disconnected"`` when either goes down after
that, and after every ``"connected"`` that follows a ``"disconnected"``,
``"resubscribed"`` once the server has confirmed every channel the
transport holds (then messages flow both ways again).

Secrets: the password from the URL is sent in ``AUTH`` and nowhere else;
log lines carry :func:`mask_url` of the URL.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import hiredis

from bus.endpoint import RedisEndpoint, mask_url
from bus.sentinel import CHECK_INTERVAL_S, PrimaryResolver, is_sentinel_url
from bus.errors import TransportError
from bus.loop import LoopThread, on_loop
from bus.resp import PublishEncoder, encode_command
from bus.resp_connection import ConnectionLost, PublisherConnection, RespConnection, SubscriberConnection
from bus.slots import group_by_slot
from bus.transport import Receiver, SubscribedCallback, TransportCallbacks, TransportStats, call_quietly

__all__ = ["RedisTransport", "ShardEvents", "backoff_delay", "is_redirect"]

log = logging.getLogger(__name__)

BACKOFF_START = 0.05
BACKOFF_CAP = 2.0
CONNECT_TIMEOUT = 5.0
HEALTH_INTERVAL = 5.0
MAX_BATCH = 10_000
"""Messages per write; a longer queue is written in several loop turns so
the loop keeps reading while it catches up."""
SUBSCRIBE_CHUNK = 1_000
_WRITE_HIGH_WATER = 4 * 1024 * 1024
_WRITE_LOW_WATER = 1024 * 1024


_SUBSCRIPTION_KINDS = frozenset((b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"))


def is_redirect(error: object) -> bool:
    """A Redis Cluster's "not here" error: MOVED or ASK (the slot is served
    elsewhere) or TRYAGAIN / CLUSTERDOWN (it is between owners)."""
    return str(error).startswith(("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"))


class ShardEvents(Protocol):
    """What a shard's transport tells the cluster transport that drives it
    (on the loop thread)."""

    def redirected(self, shard: RedisTransport, items: list[tuple[str, bytes]]) -> None:
        """Publishes the shard refused with a redirect: send them again where their slot lives."""

    def subscriptions_lost(self, shard: RedisTransport, channels: list[str]) -> None:
        """Channels the shard no longer holds (their slot moved): subscribe them where it lives."""


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in
    [0, min(cap, start * 2**attempt)] for the ``attempt``-th retry (from 0),
    drawn from ``rng`` (default: the process's generator)."""
    return (rng or random).uniform(0, min(BACKOFF_CAP, BACKOFF_START * 2 ** min(attempt, 16)))


# ---------------------------------------------------------------------------
# The transport


def _ignore(channel: str, data: bytes) -> None:
    """Receiver used until ``set_receiver``: messages are counted, then dropped."""


class _SubscribedWaiter:
    """One :meth:`RedisTransport.when_subscribed` call: how many of its
    channels are still unconfirmed."""

    __slots__ = ("callback", "left")

    def __init__(self, left: int, callback: SubscribedCallback) -> None:
        self.left = left
        self.callback = callback

    def confirmed_one(self) -> bool:
        """One more channel confirmed; True when it was the last."""
        self.left -= 1
        return self.left == 0


class RedisTransport(TransportCallbacks):
    """A :class:`bus.transport.Transport` over Redis pub/sub.

    ``url``: see :class:`RedisEndpoint`. ``name`` appears in logs, the I/O
    thread's name and ``CLIENT SETNAME``. ``max_pending`` bounds the publishes
    kept while Redis is unreachable. ``ssl_context`` overrides the one built
    from a ``rediss://`` URL. ``connect_timeout`` bounds connect + handshake;
    a connection silent for ``health_interval`` seconds is PINGed and dropped
    if the PONG does not come within another interval (None: never).
    ``shard``: this transport is one primary of a Redis Cluster, driven by a
    :class:`bus.sharded.ShardedTransport` (see :class:`ShardEvents`).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "",
        max_pending: int = 1_000_000,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        health_interval: float | None = HEALTH_INTERVAL,
        shard: ShardEvents | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``rng``: where reconnect delays are drawn (a simulated world
        gives each node a seeded one, so a run replays exactly)."""
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.name = name
        self.stats = TransportStats()
        self.max_pending = max_pending
        #: Behind Sentinel (redis+sentinel://): where the primary is, asked
        #: before every connection and every CHECK_INTERVAL_S (bus.sentinel).
        self._resolver = PrimaryResolver(url) if is_sentinel_url(url) else None
        self._endpoint = (self._resolver.url.endpoint("localhost", 6379) if self._resolver is not None
                          else RedisEndpoint.parse(url))
        #: Where each connection is up now (host, port): loop thread only.
        self._reached: dict[str, tuple[str | None, int]] = {}
        self._safe_url = mask_url(url)
        self._ssl = ssl_context if ssl_context is not None else self._endpoint.ssl_context()
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        #: One shard of a Redis Cluster (see bus.sharded): shard channels
        #: (SPUBLISH, SSUBSCRIBE), and what the cluster does to them is
        #: told to ``shard`` instead of being handled here.
        self._shard = shard
        self._rng = rng
        self._encoder = PublishEncoder(verb=b"SPUBLISH" if shard is not None else b"PUBLISH")
        self._sub_verbs = (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if shard is not None else (b"SUBSCRIBE", b"UNSUBSCRIBE")

        self._lock = threading.Lock()
        self._receiver: Receiver = _ignore
        self._started = False
        self._closing = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: LoopThread | None = None  # when started without a loop
        self._tasks: list[asyncio.Task[None]] = []
        self._first_attempts: list[concurrent.futures.Future[BaseException | None]] = []

        # Publishing. Guarded by _lock: _pending, _enqueued, _settled,
        # _flush_scheduled, _can_write, _flush_waiters, _rest. Loop thread
        # only: _inflight_pos, _publisher. _write_lock (taken before _lock)
        # serialises everything written on the publisher's socket, with
        # what it adds to _inflight (so _inflight is in wire order): the
        # loop's batches, its PINGs and direct publishes from other threads.
        # _inflight is consumed on the loop thread.
        self._write_lock = threading.Lock()
        self._direct: socket.socket | None = None
        self._rest = b""
        self._pending: collections.deque[tuple[str, bytes]] = collections.deque()
        self._enqueued = 0
        self._settled = 0
        self._flush_scheduled = False
        self._can_write = False
        self._write_paused = False
        self._flush_waiters: list[tuple[int, threading.Event]] = []
        self._inflight: collections.deque[collections.deque[tuple[str, bytes]]] = collections.deque()
        self._inflight_pos = 0
        self._publisher: PublisherConnection | None = None

        # Subscribing. Guarded by _lock (and _sub_cond, which uses it):
        # _wanted, _channel_names, _to_add, _to_remove, _confirmed, _missing,
        # _sub_commands, _sub_dirty, _sub_ready, _sync_scheduled. Kept as
        # deltas, so one (un)subscription costs O(1) however many channels
        # a node holds: _to_add / _to_remove are what the server has not
        # been asked yet, _missing is _wanted minus _confirmed.
        self._sub_cond = threading.Condition(self._lock)
        self._wanted: set[str] = set()
        self._channel_names: dict[bytes, str] = {}
        self._to_add: set[str] = set()
        self._to_remove: set[str] = set()
        self._confirmed: set[str] = set()
        self._missing: set[str] = set()
        self._sub_waiters: dict[str, list[_SubscribedWaiter]] = {}
        self._sub_commands: collections.deque[list[Any]] = collections.deque()
        self._sub_dirty = False
        self._sub_ready = False
        self._sync_scheduled = False
        self._subscriber: SubscriberConnection | None = None

        #: Set when a shard leaves the cluster's map: where its publishes go instead.
        self._retired: Callable[[list[tuple[str, bytes]]], None] | None = None

        # Connection state (loop thread only).
        self._up = {"publisher": False, "subscriber": False}
        self._was_connected = False
        self._await_resubscribe = False
        self._last_error_log = 0.0
        self._suppressed_errors = 0

    def __repr__(self) -> str:
        return f"RedisTransport(name={self.name!r}, url={self._safe_url!r})"

    # -- the I/O loop ------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connections run on (after ``start``)."""
        if self._loop is None:
            raise TransportError(f"{self!r} is not started")
        return self._loop

    def _on_loop_thread(self) -> bool:
        return on_loop(self._loop)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """Schedule ``fn`` on the loop: directly from the loop's own thread
        (no wake-up needed), thread-safely from any other."""
        loop = self._loop
        assert loop is not None
        if on_loop(loop):
            loop.call_soon(fn)
        else:
            loop.call_soon_threadsafe(fn)

    # -- lifecycle ---------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect on ``loop`` (a node passes its I/O loop), or on a loop
        thread of the transport's own if None. Idempotent.

        From another thread, waits for the first connection attempt of
        both connections (bounded by the connect timeout). Unreachable Redis
        is not an error: the transport keeps retrying in the background and
        queues publishes. A server that refuses the handshake (bad password,
        unknown user) is: ``TransportError``. Called on ``loop`` itself (a
        node started inside a simulated world, on its one thread), it only
        starts the attempts: a refusal is then logged and reported through
        ``on_state`` as the transport goes on retrying.
        """
        if loop is not None and on_loop(loop):
            self._start_on_loop(loop)
            return
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        if loop is None:
            self._own_loop = LoopThread(f"huddle-io-{self.name}" if self.name else "huddle-io")
            loop = self._own_loop.loop
        self._loop = loop
        self._first_attempts = [
            asyncio.run_coroutine_threadsafe(self._start_connection(role), loop)
            for role in ("publisher", "subscriber")
        ]
        if self._resolver is not None:
            asyncio.run_coroutine_threadsafe(self._start_following(), loop)
        refusal: BaseException | None = None
        for attempt in self._first_attempts:
            try:
                outcome = attempt.result(timeout=self._connect_timeout + 5.0)
            except concurrent.futures.TimeoutError:
                continue
            if isinstance(outcome, TransportError):
                refusal = outcome
        if refusal is not None:
            self.close(flush_timeout=0)
            raise refusal

    def _start_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        self._loop = loop
        for role in ("publisher", "subscriber"):
            loop.create_task(self._start_connection(role))
        if self._resolver is not None:
            loop.create_task(self._start_following())

    def close(self, flush_timeout: float = 5.0) -> None:
        """Flush (waiting at most ``flush_timeout``), disconnect, and stop the
        loop thread if the transport owns it (a loop it was given keeps
        running). Whatever is still unwritten is dropped with reason
        ``"closed"``. Idempotent."""
        if self._on_loop_thread():
            raise TransportError("close() called on the loop the transport runs on (its own I/O thread)")
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
            started = self._started
        if started and flush_timeout > 0:
            self.flush(flush_timeout)
        with self._sub_cond:
            self._closed = True
            self._sub_cond.notify_all()  # wake wait_subscribed()
            waiting = {id(w): w for ws in self._sub_waiters.values() for w in ws}
            self._sub_waiters.clear()
        for waiter in waiting.values():
            call_quietly(waiter.callback, False)
        loop = self._loop
        if started and loop is not None and not loop.is_closed():  # a closed loop took the sockets with it
            shutdown = self._shutdown()
            try:
                asyncio.run_coroutine_threadsafe(shutdown, loop).result(timeout=10.0)
            except RuntimeError:  # the loop closed meanwhile
                shutdown.close()
            except concurrent.futures.TimeoutError:
                log.warning("%r: I/O loop did not shut down cleanly", self)
        if self._own_loop is not None:
            self._own_loop.close(timeout=10.0)
        self._close_direct()  # if the loop went without its connections
        # Give up on whatever did not make it: unacknowledged, then unsent.
        with self._lock:
            lost = [item for batch in self._inflight for item in batch]
            lost = lost[self._inflight_pos :] + list(self._pending)
            self._inflight.clear()
            self._inflight_pos = 0
            self._pending.clear()
        self._drop(lost, "closed")

    def retire(self, forward: Callable[[list[tuple[str, bytes]]], None]) -> list[tuple[str, bytes]]:
        """Loop thread: this shard left the cluster's map. Returns what was
        not acknowledged and what was not sent (to be sent where its slots
        live now), and from here on hands every publish to ``forward``
        instead of queueing it; :meth:`close` it next (from another thread)."""
        with self._lock:
            self._retired = forward
            items = [item for batch in self._inflight for item in batch][self._inflight_pos :]
            items += self._pending
            self._inflight.clear()
            self._inflight_pos = 0
            self._pending.clear()
            self._settle_locked(len(items))
        return items

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for connection in (self._publisher, self._subscriber):
            if connection is not None and connection.transport is not None:
                connection.transport.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._resolver is not None:
            await self._resolver.aclose()

    # -- behind Sentinel -------------------------------------------------------

    async def _start_following(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow_primary(), name=f"sentinel:{self.name}"))

    async def _follow_primary(self) -> None:
        """Every CHECK_INTERVAL_S: if the sentinels name another primary
        than a connection is on (a switchover: the old one is a replica now,
        and keeps its clients), drop that connection; it reconnects to the
        new primary as after any loss."""
        assert self._resolver is not None
        self._resolver.watch.start()
        while not self._closed:
            # Asked at once when a sentinel announces a switchover, else every CHECK_INTERVAL_S.
            await self._resolver.watch.wait(CHECK_INTERVAL_S)
            try:
                ep = await self._resolver.endpoint()
            except ConnectionError as exc:
                log.debug("%r: %s", self, exc)
                continue
            for role, connection in (("publisher", self._publisher), ("subscriber", self._subscriber)):
                reached = self._reached.get(role)
                if connection is not None and reached is not None and reached != (ep.host, ep.port):
                    log.warning("%r %s: the sentinels name %s:%s as the primary now; moving there",
                                self, role, ep.host, ep.port)
                    connection.abort()

    # -- connections ---------------------------------------------------------

    async def _start_connection(self, role: str) -> BaseException | None:
        """Make the first attempt now; hand the rest to a supervising task."""
        first: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._keep_connected(role, first), name=f"{role}:{self.name}"))
        return await first

    async def _keep_connected(self, role: str, first: asyncio.Future[BaseException | None]) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._closed:
            factory: Callable[[], RespConnection]
            if role == "publisher":
                factory = lambda: PublisherConnection(loop, self)  # noqa: E731
            else:
                factory = lambda: SubscriberConnection(loop, self)  # noqa: E731
            try:
                connection = await self._open(factory, role)
            except asyncio.CancelledError:
                raise
            except (OSError, TransportError, ConnectionLost, TimeoutError) as exc:
                if not first.done():
                    first.set_result(exc)
                delay = backoff_delay(attempt, self._rng)
                attempt += 1
                log.log(
                    logging.WARNING if attempt % 20 == 1 else logging.DEBUG,
                    "%r %s cannot connect (attempt %d: %r); retrying in %.3fs",
                    self, role, attempt, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if not first.done():
                first.set_result(None)
            try:
                self._connection_up(role, connection)
                reason = await self._watch(connection, role)
            finally:
                self._connection_down(role)
            if not self._closed:
                log.warning("%r %s lost its connection (%r)", self, role, reason or "closed by server")

    async def _watch(self, connection: RespConnection, role: str) -> BaseException | None:
        """Wait until ``connection`` is lost. A connection silent for a whole
        health interval must answer PING within another one, or it is dropped
        (a paused or half-open server never closes the socket itself)."""
        interval = self._health_interval
        if interval is None:
            return await connection.lost
        while not connection.lost.done():
            seen = connection.chunks_in
            await asyncio.wait([connection.lost], timeout=interval)
            if connection.lost.done() or connection.chunks_in != seen:
                continue
            try:
                async with asyncio.timeout(interval):
                    await connection.ping()
            except TimeoutError:
                log.warning("%r %s: no answer to PING within %.1fs; reconnecting", self, role, interval)
                connection.abort()
                await connection.lost
            except ConnectionLost:
                pass
        return connection.lost.result()

    async def _open(self, factory: Callable[[], RespConnection], role: str) -> RespConnection:
        ep = self._endpoint if self._resolver is None else await self._resolver.endpoint()
        try:
            return await self._open_at(ep, factory, role)
        except BaseException:
            if self._resolver is not None:
                self._resolver.watch.forget(ep.host, ep.port)  # ask the sentinels next time
            raise

    async def _open_at(self, ep: RedisEndpoint, factory: Callable[[], RespConnection], role: str) -> RespConnection:
        loop = asyncio.get_running_loop()
        connection: RespConnection
        async with asyncio.timeout(self._connect_timeout):
            if ep.path is not None:
                _, connection = await loop.create_unix_connection(factory, ep.path)
            else:
                _, connection = await loop.create_connection(
                    factory,
                    ep.host,
                    ep.port,
                    ssl=self._ssl,
                    server_hostname=ep.host if self._ssl is not None else None,
                )
            try:
                await self._handshake(connection, role, ep)
            except BaseException:
                connection.abort()
                raise
        connection.handshaking = False
        self._reached[role] = (ep.host, ep.port) if ep.path is None else (ep.path, 0)
        return connection

    async def _handshake(self, connection: RespConnection, role: str, ep: RedisEndpoint) -> None:
        commands: list[tuple[bytes | str | int, ...]] = []
        if ep.password is not None:
            if ep.username:
                commands.append(("AUTH", ep.username, ep.password))
            else:
                commands.append(("AUTH", ep.password))
        if ep.db and role == "publisher":
            commands.append(("SELECT", ep.db))
        client_name = re.sub(r"[^A-Za-z0-9_.:\-]", "_", f"huddle:{self.name or 'node'}:{role}")
        commands.append(("CLIENT", "SETNAME", client_name))
        for command in commands:
            reply = await connection.command(*command)
            if isinstance(reply, hiredis.ReplyError):
                # Never echo the AUTH arguments; the server's text is safe.
                raise TransportError(f"redis refused {command[0]!r} on {self._safe_url}: {reply}")
        if self._resolver is not None:
            # The sentinels may name a primary that has just been demoted
            # (or not yet promoted): only the primary will do.
            # (INFO, not ROLE: a subscriber connection reads an array as a push.)
            info = await connection.command("INFO", "replication")
            if not (isinstance(info, bytes) and b"role:master" in info):
                raise ConnectionError(f"{ep.host}:{ep.port} is not the primary ({info!r:.40})")

    def _connection_up(self, role: str, connection: RespConnection) -> None:
        if role == "publisher":
            assert isinstance(connection, PublisherConnection)
            assert connection.transport is not None
            connection.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER)
            connection.write_lock = self._write_lock
            self._publisher = connection
            if self._ssl is None:
                # A second handle on the socket, for direct publishes (never
                # under TLS: those bytes must go through the TLS layer).
                sock = connection.transport.get_extra_info("socket")
                if sock is not None:
                    try:
                        self._direct = sock.dup()
                    except OSError:
                        self._direct = None
            with self._lock:
                self._write_paused = False
                self._can_write = True
                self._flush_scheduled = True
            self._write_pending()
        else:
            assert isinstance(connection, SubscriberConnection)
            self._subscriber = connection
            with self._lock:
                self._sub_ready = True
                self._sync_scheduled = True
            self._sync_subscriptions()
        self._up[role] = True
        if all(self._up.values()):
            reconnected = self._was_connected
            self._was_connected = True
            if reconnected:
                self.stats.reconnects += 1
                with self._lock:
                    self._await_resubscribe = True
            log.info("%r connected", self)
            call_quietly(self._on_state, "connected")
            if reconnected:
                self._maybe_resubscribed()

    def _connection_down(self, role: str) -> None:
        was_up = all(self._up.values())
        self._up[role] = False
        if role == "publisher":
            self._close_direct()
            self._publisher = None
            with self._lock:
                self._can_write = False
                # Written but not acknowledged: maybe lost, so send again.
                unacked = [item for batch in self._inflight for item in batch][self._inflight_pos :]
                self._inflight.clear()
                self._inflight_pos = 0
                self._pending.extendleft(reversed(unacked))
                overflow = self._trim_locked()
            self._drop(overflow, "overflow")
        else:
            self._subscriber = None
            with self._sub_cond:
                self._sub_ready = False
                self._confirmed.clear()
                self._sub_commands.clear()
                self._to_add = set(self._wanted)
                self._to_remove.clear()
                self._missing = set(self._wanted)
                self._sub_dirty = bool(self._wanted)
        if was_up:
            call_quietly(self._on_state, "disconnected")

    # -- publishing ----------------------------------------------------------

    def _close_direct(self) -> None:
        with self._write_lock:
            direct, self._direct = self._direct, None
            with self._lock:
                # Unacknowledged, so written again in full after a reconnect.
                self._rest = b""
        if direct is not None:
            direct.close()

    def publish(self, channel: str, data: bytes) -> None:
        if (
            self._direct is not None
            and not self._inflight  # (cheap, and usually false under load)
            and not on_loop(self._loop)
            and self._publish_direct(channel, data)
        ):
            return
        with self._lock:
            if self._retired is not None:  # a shard no longer in the cluster's map (closed or not)
                retired = self._retired
            elif self._closed:
                raise TransportError(f"{self!r} is closed")
            else:
                retired = None
                self._pending.append((channel, data))
                self._enqueued += 1
                if len(self._pending) > self.max_pending:
                    overflow = self._trim_locked()
                else:
                    overflow = None
                    if not self._flush_scheduled and self._can_write:
                        self._flush_scheduled = True
                        self._call_soon(self._write_pending)
        if retired is not None:
            retired([(channel, data)])
        elif overflow:
            self._drop(overflow, "overflow")

    def _trim_locked(self) -> list[tuple[str, bytes]]:
        """Drop the oldest pending past ``max_pending`` (caller holds _lock)."""
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return []
        pending = self._pending
        return [pending.popleft() for _ in range(excess)]

    def _drop(self, items: list[tuple[str, bytes]], reason: str) -> None:
        if not items:
            return
        with self._lock:
            self.stats.dropped += len(items)
        log.warning("%r dropped %d message(s): %s", self, len(items), reason)
        for channel, _ in items:
            call_quietly(self._on_drop, channel, reason)
        with self._lock:  # after the callbacks: a flush() that returns has seen them
            self._settle_locked(len(items))

    def _publish_direct(self, channel: str, data: bytes) -> bool:
        """Another thread's publish, written by that thread at once when the
        connection is idle: nothing queued, nothing written and not yet
        acknowledged, nothing in asyncio's write buffer. Otherwise (False)
        it joins the queue, and a burst is batched as before: its first
        message is in flight when the second comes. This saves a request
        made from a thread other than the loop's (``ask(...).get()``) the
        wake-up of the loop and a pass of it before its bytes leave.

        A write the socket takes only in part leaves the rest to the loop,
        which writes it before anything else; a socket error is left to the
        connection's loss, which puts what was not acknowledged back in the
        queue."""
        with self._write_lock:
            direct = self._direct
            publisher = self._publisher
            with self._lock:
                if self._closed:
                    raise TransportError(f"{self!r} is closed")
                if (
                    direct is None
                    or self._retired is not None
                    or not self._can_write
                    or self._flush_scheduled
                    or self._pending
                    or self._inflight
                    or self._rest
                    or publisher is None
                    or publisher.transport is None
                    or publisher.transport.get_write_buffer_size()
                ):
                    return False
                self._enqueued += 1
                item = (channel, data)
                # Before the write: the acknowledgement may be read at once.
                self._inflight.append(collections.deque((item,)))
            payload = self._encoder.encode((item,))
            try:
                sent = direct.send(payload)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return True  # the connection is going; see above
            if sent < len(payload):
                with self._lock:
                    self._rest = payload[sent:]
                    self._flush_scheduled = True
                self._call_soon(self._write_pending)
        return True

    def _write_pending(self) -> None:
        """Loop thread: write pending publishes as one pipelined batch
        (after the rest of a direct publish the socket took only in part)."""
        with self._write_lock:
            with self._lock:
                self._flush_scheduled = False
                if not self._can_write:
                    return
                rest, self._rest = self._rest, b""
                batch: collections.deque[tuple[str, bytes]] | None = None
                if len(self._pending) <= MAX_BATCH:
                    if self._pending:
                        batch = self._pending
                        self._pending = collections.deque()
                else:
                    pending = self._pending
                    batch = collections.deque(pending.popleft() for _ in range(MAX_BATCH))
                    self._flush_scheduled = True
                    self._loop.call_soon(self._write_pending)  # type: ignore[union-attr]
            if not rest and batch is None:
                return
            publisher = self._publisher
            assert publisher is not None and publisher.transport is not None
            if rest:
                publisher.transport.write(rest)
            if batch is not None:
                self._inflight.append(batch)
                publisher.transport.write(self._encoder.encode(batch))

    def _pause_publishing(self, paused: bool) -> None:
        with self._lock:
            self._write_paused = paused
            self._can_write = not paused and self._publisher is not None
            if self._can_write and (self._pending or self._rest) and not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._write_pending)  # type: ignore[union-attr]

    def _advance_inflight(self, count: int) -> None:
        inflight = self._inflight
        pos = self._inflight_pos + count
        while inflight and pos >= len(inflight[0]):
            pos -= len(inflight.popleft())
        self._inflight_pos = pos

    def _acknowledged(self, count: int) -> None:
        """Loop thread: the server answered ``count`` more PUBLISHes."""
        self._advance_inflight(count)
        with self._lock:
            self.stats.published += count
            self._settle_locked(count)

    def _unrouted(self) -> None:
        """Loop thread: the oldest in-flight PUBLISH reached no subscriber."""
        item = self._inflight[0][self._inflight_pos] if self._inflight else None
        self._acknowledged(1)
        if item is not None:
            call_quietly(self._on_unrouted, item[0], item[1])

    def _refused(self, error: object) -> None:
        """Loop thread: the server refused the oldest in-flight PUBLISH (a
        shard's SPUBLISH to a slot it no longer serves: handed back to the
        cluster, which sends it where the slot lives now)."""
        channel = "?"
        item = None
        if self._inflight:
            item = self._inflight[0][self._inflight_pos]
            channel = item[0]
        self._advance_inflight(1)
        if self._shard is not None and item is not None and is_redirect(error):
            with self._lock:
                self._settle_locked(1)
            call_quietly(self._shard.redirected, self, [item])
            return
        with self._lock:
            self.stats.dropped += 1
        log.error("%r: redis refused PUBLISH to %r: %s", self, channel, error)
        call_quietly(self._on_drop, channel, "refused")
        with self._lock:
            self._settle_locked(1)

    def _settle_locked(self, count: int) -> None:
        self._settled += count
        if self._flush_waiters:
            settled = self._settled
            still: list[tuple[int, threading.Event]] = []
            for target, event in self._flush_waiters:
                if settled >= target:
                    event.set()
                else:
                    still.append((target, event))
            self._flush_waiters = still

    def flush(self, timeout: float = 5.0) -> bool:
        """True once every message published before the call was acknowledged
        by Redis or dropped (and counted); False after ``timeout`` seconds."""
        with self._lock:
            target = self._enqueued
            if self._settled >= target:
                return True
            if self._on_loop_thread():
                raise TransportError("flush() would block the loop the transport runs on (its own I/O thread)")
            event = threading.Event()
            waiter = (target, event)
            self._flush_waiters.append(waiter)
        if event.wait(timeout):
            return True
        with self._lock:
            if waiter in self._flush_waiters:
                self._flush_waiters.remove(waiter)
            return self._settled >= target

    # -- subscribing ---------------------------------------------------------

    def subscribe(self, *channels: str) -> None:
        with self._lock:
            fresh = [c for c in channels if c not in self._wanted]
            if not fresh:
                return
            for channel in fresh:
                self._wanted.add(channel)
                self._channel_names[channel.encode()] = channel
                if channel in self._to_remove:
                    self._to_remove.discard(channel)  # still subscribed on the server
                else:
                    self._to_add.add(channel)
                if channel not in self._confirmed:
                    self._missing.add(channel)
            self._request_sync_locked()

    def unsubscribe(self, *channels: str) -> None:
        with self._lock:
            gone = [c for c in channels if c in self._wanted]
            if not gone:
                return
            for channel in gone:
                self._wanted.discard(channel)
                self._channel_names.pop(channel.encode(), None)
                if channel in self._to_add:
                    self._to_add.discard(channel)  # never asked for
                else:
                    self._to_remove.add(channel)
                self._missing.discard(channel)
                self._sub_waiters.pop(channel, None)  # not coming: its waiters time out
            self._request_sync_locked()

    def _request_sync_locked(self) -> None:
        self._sub_dirty = True
        if self._sub_ready and not self._sync_scheduled:
            self._sync_scheduled = True
            self._call_soon(self._sync_subscriptions)

    def _sync_subscriptions(self) -> None:
        """Loop thread: tell the server about channels wanted / no longer wanted."""
        subscriber = self._subscriber
        with self._lock:
            self._sync_scheduled = False
            if not self._sub_ready or subscriber is None or subscriber.transport is None:
                return
            to_add = sorted(self._to_add)
            to_remove = sorted(self._to_remove)
            self._to_add.clear()
            self._to_remove.clear()
            self._sub_dirty = False
            chunks: list[bytes] = []
            subscribe, unsubscribe = self._sub_verbs
            for verb, names in ((subscribe, to_add), (unsubscribe, to_remove)):
                if self._shard is not None:  # one slot per shard command
                    groups = group_by_slot(names)
                else:
                    groups = [names[start : start + SUBSCRIBE_CHUNK] for start in range(0, len(names), SUBSCRIBE_CHUNK)]
                for chunk in groups:
                    self._sub_commands.append([verb.lower(), len(chunk), chunk])
                    chunks.append(encode_command(verb, *chunk))
            if not self._sub_commands:
                self._sub_cond.notify_all()
        if chunks:
            subscriber.transport.write(b"".join(chunks))

    def _subscription_reply(self, reply: object) -> None:
        """Loop thread: a (un)subscribe confirmation or an error."""
        check_resubscribed = False
        ready: list[SubscribedCallback] = []
        lost: list[str] | None = None
        with self._sub_cond:
            if isinstance(reply, list) and len(reply) == 3 and reply[0] in _SUBSCRIPTION_KINDS:
                kind, raw_channel, _count = reply
                channel = raw_channel.decode()
                if kind == b"subscribe" or kind == b"ssubscribe":
                    self._confirmed.add(channel)
                    self._missing.discard(channel)
                    for waiter in self._sub_waiters.pop(channel, ()):
                        if waiter.confirmed_one():
                            ready.append(waiter.callback)
                else:
                    self._confirmed.discard(channel)
                    asked = bool(self._sub_commands) and self._sub_commands[0][0] == kind
                    if not asked and self._shard is not None and channel in self._wanted:
                        # The server dropped it: its slot moved to another
                        # shard. No longer held here; the cluster places it.
                        lost = self._release_locked([channel])
                    elif channel in self._wanted:  # wanted again since: its SUBSCRIBE follows
                        self._missing.add(channel)
                if self._sub_commands and self._sub_commands[0][0] == kind:
                    self._sub_commands[0][1] -= 1
                    if self._sub_commands[0][1] <= 0:
                        self._sub_commands.popleft()
            elif isinstance(reply, hiredis.ReplyError):
                # One error answers a whole command (e.g. NOPERM on a channel).
                command = self._sub_commands.popleft() if self._sub_commands else None
                if self._shard is not None and is_redirect(reply) and command is not None:
                    # Asked of the wrong shard (the slot moved): the cluster places them.
                    if command[0] == b"ssubscribe":
                        lost = self._release_locked([c for c in command[2] if c in self._wanted])
                else:
                    log.error("%r: redis refused a subscription command: %s", self, reply)
            else:
                return  # e.g. a PING's ["pong", ""]
            if not self._sub_commands:
                self._sub_cond.notify_all()
                check_resubscribed = self._await_resubscribe
        for callback in ready:
            call_quietly(callback, True)
        if lost:
            assert self._shard is not None
            call_quietly(self._shard.subscriptions_lost, self, lost)
        if check_resubscribed:
            self._maybe_resubscribed()

    def _release_locked(self, channels: list[str]) -> list[str]:
        """A shard's channels the server no longer holds here: forgotten
        (their waiters wait on: the cluster subscribes them where they
        live now). Caller holds _lock."""
        for channel in channels:
            self._wanted.discard(channel)
            self._channel_names.pop(channel.encode(), None)
            self._missing.discard(channel)
            self._confirmed.discard(channel)
        return channels

    def _maybe_resubscribed(self) -> None:
        with self._lock:
            done = (
                self._await_resubscribe
                and all(self._up.values())
                and not self._sub_dirty
                and not self._sub_commands
                and not self._missing
            )
            if done:
                self._await_resubscribe = False
        if done:
            log.info("%r resubscribed %d channel(s)", self, len(self._wanted))
            call_quietly(self._on_state, "resubscribed")

    def _subscribed_locked(self) -> bool:
        return self._sub_ready and not self._sub_dirty and not self._sub_commands and not self._missing

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """True once every subscribe/unsubscribe asked for so far is confirmed
        by the server; False after ``timeout`` seconds (e.g. while disconnected)."""
        with self._sub_cond:
            if self._subscribed_locked():
                return True
            if self._closed:
                return False
            if self._on_loop_thread():
                raise TransportError("wait_subscribed() would block the loop the transport runs on (its own I/O thread)")
            self._sub_cond.wait_for(lambda: self._closed or self._subscribed_locked(), timeout)
            return self._subscribed_locked()

    def when_subscribed(self, channels: Iterable[str], callback: SubscribedCallback) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                missing = {c for c in channels if c not in self._confirmed}
                if missing:
                    waiter = _SubscribedWaiter(len(missing), callback)
                    for channel in missing:
                        self._sub_waiters.setdefault(channel, []).append(waiter)
                    return
        call_quietly(callback, not closed)

    @property
    def subscribed_channels(self) -> frozenset[str]:
        """Channels the server has confirmed (a snapshot)."""
        with self._lock:
            return frozenset(self._confirmed)

    # -- receiving -----------------------------------------------------------

    def _received_batch(self) -> None:
        """Loop thread: the messages of one read were all handed over. Tell
        ``on_received`` (the node runs the actors they made ready), then
        write what that published now, not a loop turn later."""
        callback = self._on_received
        if callback is not None:
            call_quietly(callback)
        if self._flush_scheduled:
            self._write_pending()

    def _receiver_failed(self, channel: str) -> None:
        """Loop thread, inside ``except``: count, log (rate-limited), go on."""
        self.stats.receiver_errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            suppressed, self._suppressed_errors = self._suppressed_errors, 0
            log.exception(
                "%r: receiver failed on channel %r (%d similar errors not logged)", self, channel, suppressed
            )
        else:
            self._suppressed_errors += 1

