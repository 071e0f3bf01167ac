"""The bus on a Redis Cluster: every channel a shard channel.

``REDIS_URL=redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``
for TLS; user, password and TLS options as for ``redis://``) makes
:func:`transport_for` return a :class:`ShardedTransport`:

* the slot map comes from ``CLUSTER SHARDS`` (asked of the seeds, then of
  any primary known), and each channel lives in the slot of its name
  (``redis.crc.key_slot``, hash tags included), so an address's channel is
  on one shard;
* one :class:`~bus.redis_transport.RedisTransport` per primary, in shard
  mode: ``SPUBLISH`` pipelined per shard, one ``SSUBSCRIBE`` connection per
  shard, the same reconnection, batching and accounting as on one server;
* the map is asked again when the cluster says it changed: a publish
  answered ``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` (sent again where
  its slot lives now, once the map is fresh), a subscription the
  server drops because its slot moved (Redis sends ``SUNSUBSCRIBE``; it is
  subscribed again on the new owner), a shard's connection lost (a primary
  failed over: asked every :data:`REFRESH_WHILE_DOWN_S` until a replica
  took its slots), and every :data:`REFRESH_INTERVAL_S` regardless;
* a primary that leaves the map hands back what it had not sent or had
  not been acknowledged, which goes to the new owner (at-least-once, as
  across a reconnect on one server: envelope ids let receivers drop a copy).

Delivery contract: what pub/sub carries is at most once, on a cluster as on
one server. A slot move or a failover is a gap for the slot's subscribers,
as a reconnect is: the subscriber's transport reports it with
``"resubscribed"`` once every channel is placed again. The publisher
narrows it: for :data:`HOLD_FOR_SUBSCRIBER_S` after a slot changed primary,
what it publishes there (and what it sends again: redirected, or never
acknowledged by a primary that died) waits, in order per channel, until
``PUBSUB SHARDNUMSUB`` shows the channel has a subscriber on the new owner;
a subscriber that moves within that time misses nothing. A channel nobody
listens to gets its messages at the end of the hold, where they reach no
one, as before. ``SPUBLISH``'s receiver count covers the shard's primary only;
huddle subscribes on primaries, so it counts every huddle subscriber, but
what a delivery means rests on the lease (``actors.cluster``), never on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import hiredis

from bus.endpoint import RedisEndpoint, mask_url
from bus.errors import TransportError
from bus.loop import LoopThread, on_loop
from bus.redis_transport import CONNECT_TIMEOUT, HEALTH_INTERVAL, RedisTransport
from bus.resp import encode_command
from bus.slots import SLOTS, channel_slot
from bus.transport import SubscribedCallback, Transport, TransportCallbacks, TransportStats, call_quietly

__all__ = ["SLOTS", "ClusterUrl", "ShardedTransport", "SlotMap", "channel_slot", "is_cluster_url", "transport_for"]

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 5.0
REFRESH_WHILE_DOWN_S = 0.25
#: The longest a publish sent again after a slot move or failover waits for
#: its channel to have a subscriber on the new owner.
HOLD_FOR_SUBSCRIBER_S = 2.0
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def transport_for(url: str, *, name: str = "", **options: Any) -> Transport:
    """The transport for a bus URL: a :class:`ShardedTransport` on a Redis
    Cluster (``redis+cluster://``), else a :class:`RedisTransport`."""
    if is_cluster_url(url):
        return ShardedTransport(url, name=name, **options)
    return RedisTransport(url, name=name, **options)


@dataclass(frozen=True)
class ClusterUrl:
    """``redis+cluster://[user[:password]@]host:port[,host:port...][?options]``."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool
    userinfo: str = field(default="", repr=False)
    query: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        try:
            parts = urlsplit(url)
            if parts.scheme not in CLUSTER_SCHEMES:
                raise ValueError(f"not a cluster URL (scheme {parts.scheme!r})")
            userinfo, _, hosts = parts.netloc.rpartition("@")
            seeds = []
            for hostport in hosts.split(","):
                host, sep, port = hostport.strip().rpartition(":")
                if not sep:
                    host, port = port, "6379"
                if not host:
                    raise ValueError(f"no host in {hostport!r}")
                seeds.append((host.strip("[]"), int(port)))
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("a Redis Cluster has database 0 only")
            seed_url = cls(tuple(seeds), parts.scheme == "rediss+cluster", userinfo, parts.query)
            seed_url.endpoint(*seeds[0])  # the options parse as for one server
            return seed_url
        except ValueError as exc:
            raise TransportError(f"bad redis cluster URL {mask_url(url)}: {exc}") from exc

    def shard_url(self, host: str, port: int) -> str:
        """The ``redis://`` (or ``rediss://``) URL of one node, with the credentials and options."""
        at = f"{self.userinfo}@" if self.userinfo else ""
        netloc = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{at}{netloc}:{port}{query}"

    def endpoint(self, host: str, port: int) -> RedisEndpoint:
        return RedisEndpoint.parse(self.shard_url(host, port))


@dataclass(frozen=True)
class SlotMap:
    """Which primary serves which slot (from ``CLUSTER SHARDS``)."""

    owners: tuple[tuple[str, int] | None, ...]
    """Slot -> (host, port) of its primary; None: no primary serves it."""

    @property
    def primaries(self) -> frozenset[tuple[str, int]]:
        return frozenset(o for o in self.owners if o is not None)

    @classmethod
    def from_shards(cls, reply: Any, tls: bool = False) -> SlotMap:
        """Parse a RESP2 ``CLUSTER SHARDS`` reply: per shard, its slot
        ranges and its nodes; a shard's owner is its online primary.

        A primary marked failed (``fail``; ``failed`` in later versions)
        owns nothing: its slots have no owner until a replica is promoted."""
        owners: list[tuple[str, int] | None] = [None] * SLOTS
        for shard in reply:
            fields = _pairs(shard)
            primary = None
            for node in fields.get("nodes", []):
                info = _pairs(node)
                if _text(info.get("role")) == "master" and _text(info.get("health")) not in ("fail", "failed"):
                    host = _text(info.get("ip")) or _text(info.get("endpoint"))
                    port = info.get("tls-port") if tls else info.get("port")
                    if host and isinstance(port, int) and port:
                        primary = (host, port)
                        break
            ranges = list(fields.get("slots", []))
            for start, end in zip(ranges[::2], ranges[1::2], strict=False):
                for slot in range(int(start), int(end) + 1):
                    owners[slot] = primary
        return cls(tuple(owners))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _pairs(flat: Any) -> dict[str, Any]:
    items = list(flat)
    return {_text(k): v for k, v in zip(items[::2], items[1::2], strict=False)}


async def one_command(url: ClusterUrl, host: str, port: int, timeout: float, *command: str) -> Any:
    """``command``'s reply from the node at ``host:port``, on a connection
    of its own (for what is asked rarely: the map, subscriber counts)."""
    endpoint = url.endpoint(host, port)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=endpoint.ssl_context(), server_hostname=host if endpoint.tls else None)
        try:
            commands: list[tuple[Any, ...]] = []
            if endpoint.password is not None:
                commands.append(("AUTH", endpoint.username, endpoint.password) if endpoint.username
                                else ("AUTH", endpoint.password))
            commands.append(command)
            writer.write(b"".join(encode_command(*c) for c in commands))
            parser = hiredis.Reader()
            replies: list[Any] = []
            while len(replies) < len(commands):
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
        finally:
            writer.close()
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise TransportError(f"refused: {reply}")  # never the AUTH arguments
    return replies[-1]


async def fetch_slot_map(url: ClusterUrl, nodes: Iterable[tuple[str, int]], timeout: float) -> SlotMap:
    """Ask ``CLUSTER SHARDS`` of the first of ``nodes`` that answers."""
    errors: list[str] = []
    for host, port in nodes:
        try:
            slot_map = SlotMap.from_shards(await one_command(url, host, port, timeout, "CLUSTER", "SHARDS"),
                                           tls=url.tls)
            if slot_map.primaries:
                return slot_map
            errors.append(f"{host}:{port}: no primary serves any slot")
        except (OSError, TimeoutError, ConnectionError, TransportError) as exc:
            errors.append(f"{host}:{port}: {exc!r}")
    raise TransportError(f"no node of the cluster gave its slot map ({'; '.join(errors)})")


def _settle(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


class ShardedTransport(TransportCallbacks):
    """A :class:`~bus.transport.Transport` over a Redis Cluster's shard
    channels (see the module's docstring). Options as for
    :class:`RedisTransport` (they apply to every shard)."""

    def __init__(self, url: str, *, name: str = "", max_pending: int = 1_000_000,
                 ssl_context: ssl.SSLContext | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 health_interval: float | None = HEALTH_INTERVAL) -> None:
        self.url = ClusterUrl.parse(url)
        self.name = name
        self._safe_url = mask_url(url)
        self._options: dict[str, Any] = {"max_pending": max_pending, "ssl_context": ssl_context,
                                         "connect_timeout": connect_timeout, "health_interval": health_interval}
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._shards: dict[tuple[str, int], RedisTransport] = {}
        self._route: list[RedisTransport] = []  # slot -> shard; replaced whole, read without the lock
        self._map: SlotMap | None = None
        self._wanted: set[str] = set()
        self._placing: set[str] = set()  # channels lost by a shard, not yet subscribed elsewhere
        self._rerouting: list[tuple[str, bytes]] = []  # publishes waiting for the map (redirected, or early)
        #: Publishes sent again after a move, waiting (in order, per channel)
        #: for a subscriber on the new owner; and since when each channel waits.
        self._held: dict[str, list[bytes]] = {}
        self._held_since: dict[str, float] = {}
        #: Slots whose primary changed in the last HOLD_FOR_SUBSCRIBER_S (a
        #: move, a failover): a publish there waits for a subscriber too,
        #: until its channel has one (then it is in _cleared).
        self._moved: dict[int, float] = {}
        self._cleared: set[str] = set()
        self._early_waiters: list[tuple[list[str], SubscribedCallback]] = []  # when_subscribed before the map
        self._retired_stats = TransportStats()
        self._down: set[tuple[str, int]] = set()
        self._was_connected = False
        self._reported_down = False  # "disconnected" said, "connected" not yet
        self._await_resubscribe = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: LoopThread | None = None
        self._refresh_wanted: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"ShardedTransport(name={self.name!r}, url={self._safe_url!r})"

    # -- the map ---------------------------------------------------------------

    def _shard_for(self, channel: str) -> RedisTransport | None:
        """The shard serving ``channel``'s slot (None: no map yet)."""
        route = self._route
        return route[channel_slot(channel)] if route else None

    @property
    def slot_map(self) -> SlotMap | None:
        return self._map

    @property
    def shards(self) -> dict[tuple[str, int], RedisTransport]:
        with self._lock:
            return dict(self._shards)

    def _new_shard(self, host: str, port: int) -> RedisTransport:
        shard = RedisTransport(self.url.shard_url(host, port), name=f"{self.name}@{host}:{port}",
                               shard=self, **self._options)
        shard.set_receiver(self._shard_receive)
        shard.on_received(self._shard_received)
        shard.on_unrouted(self._shard_unrouted)
        shard.on_drop(self._shard_drop)
        key = (host, port)
        shard.on_state(lambda state: self._shard_state(key, state))
        return shard

    async def _apply(self, slot_map: SlotMap) -> None:
        """Loop thread: make ``slot_map`` the one publishes and
        subscriptions follow: new primaries connected, channels moved to
        their new owners, gone primaries retired (their unsent publishes
        sent again) and closed."""
        started: list[RedisTransport] = []
        with self._lock:
            for host, port in sorted(slot_map.primaries - set(self._shards)):
                shard = self._shards[(host, port)] = self._new_shard(host, port)
                started.append(shard)
        for shard in started:
            # Waits for its first connection attempt: off the loop's thread.
            await asyncio.get_running_loop().run_in_executor(None, shard.start, self._loop)
        with self._lock:
            # A slot no primary serves (its primary failed, no replica yet)
            # goes to any live one: its MOVED / CLUSTERDOWN holds the
            # publish until the map names the new owner.
            fallback = self._shards[min(slot_map.primaries)]
            route = [self._shards[o] if o is not None else fallback for o in slot_map.owners]
            old_map = self._map
            if old_map is not None:
                # Marked before the route changes: publish() reads both
                # without the lock, and one that already sees the new
                # owner must see the slot as moved too, or it would go
                # there ahead of the moving subscriber.
                now = time.monotonic()
                for slot, (before, after) in enumerate(zip(old_map.owners, slot_map.owners, strict=True)):
                    if after is not None and before != after:
                        self._moved[slot] = now
            old_route = self._route
            self._route = route
            self._map = slot_map
            moves: dict[RedisTransport, list[str]] = {}
            unplaced: set[str] = set()
            for channel in self._wanted:  # all of them: a map changes rarely
                slot = channel_slot(channel)
                if slot_map.owners[slot] is None:
                    # No primary serves it (one failed, no replica promoted
                    # yet): placed once one does. Subscribing it on the
                    # fallback would only be refused.
                    unplaced.add(channel)
                    continue
                new = route[slot]
                old = old_route[slot] if old_route else None
                if old is not new or channel in self._placing:
                    if old is not None and old is not new:
                        old.unsubscribe(channel)
                    moves.setdefault(new, []).append(channel)
            self._placing.clear()
            self._placing.update(unplaced)  # asked again every REFRESH_WHILE_DOWN_S until placed
            early, self._early_waiters = self._early_waiters, []
            gone = [key for key in self._shards if key not in slot_map.primaries]
            retired = [self._shards.pop(key) for key in gone]
            for key in gone:
                self._down.discard(key)
            waiting, self._rerouting = self._rerouting, []
        confirmed: list[asyncio.Future[bool]] = []
        loop = asyncio.get_running_loop()
        for shard, channels in moves.items():
            shard.subscribe(*channels)
            done: asyncio.Future[bool] = loop.create_future()
            shard.when_subscribed(channels, lambda ok, f=done: loop.call_soon_threadsafe(_settle, f, ok))
            confirmed.append(done)
        if confirmed and old_route:
            # What this transport's own subscribers missed while their slot
            # moved is sent again below: after they listen where it lives now.
            await asyncio.wait(confirmed, timeout=self._connect_timeout)
        again: list[tuple[str, bytes]] = []
        for shard in retired:
            log.warning("%r: %s left the cluster's map; its publishes go to the slots' new owners", self,
                        shard.name)
            again += shard.retire(self._forward)
        again += waiting
        await self._send_again(again)
        for channels, callback in early:
            self.when_subscribed(channels, callback)
        for shard in retired:
            self._retire_stats(shard)
            asyncio.get_running_loop().run_in_executor(None, shard.close, 0)
        with self._cond:
            self._cond.notify_all()
            event = self._up_again_locked() if retired else None
        if event is not None:
            call_quietly(self._on_state, event)
        self._check_resubscribed()

    def _retire_stats(self, shard: RedisTransport) -> None:
        with self._lock:
            for name in ("published", "received", "reconnects", "dropped", "receiver_errors"):
                setattr(self._retired_stats, name,
                        getattr(self._retired_stats, name) + getattr(shard.stats, name))

    def _forward(self, items: list[tuple[str, bytes]]) -> None:
        """A retired shard's publish, from a sender that still had its route."""
        for channel, data in items:
            self.publish(channel, data)

    def refresh(self) -> None:
        """Ask for the slot map again, soon (any thread)."""
        event, loop = self._refresh_wanted, self._loop
        if event is not None and loop is not None and not loop.is_closed():
            if on_loop(loop):
                event.set()
            else:
                loop.call_soon_threadsafe(event.set)

    async def _keep_map(self) -> None:
        """Loop thread: refresh the map when asked, while a shard is down,
        and every REFRESH_INTERVAL_S."""
        assert self._refresh_wanted is not None
        while not self._closed:
            busy = self._down or self._rerouting or self._placing or self._held or self._moved
            interval = REFRESH_WHILE_DOWN_S if busy else REFRESH_INTERVAL_S
            try:
                await asyncio.wait_for(self._refresh_wanted.wait(), interval)
            except TimeoutError:
                pass
            self._refresh_wanted.clear()
            if self._closed:
                return
            if self._moved:
                with self._lock:
                    now = time.monotonic()
                    for slot in [s for s, at in self._moved.items() if now - at >= HOLD_FOR_SUBSCRIBER_S]:
                        del self._moved[slot]
                    if not self._moved:
                        self._cleared.clear()
            if self._held:
                await self._release_held()
            with self._lock:
                known = list(self._shards) + [s for s in self.url.seeds if s not in self._shards]
                live = [k for k in known if k not in self._down] + [k for k in known if k in self._down]
            try:
                slot_map = await fetch_slot_map(self.url, live, self._connect_timeout)
            except TransportError as exc:
                log.warning("%r: %s", self, exc)
                continue
            self.refreshes += 1
            if slot_map != self._map or self._rerouting or self._placing:
                await self._apply(slot_map)

    # -- sent again after a move: for a subscriber that moves at the same time ----

    async def _send_again(self, items: list[tuple[str, bytes]]) -> None:
        """Loop thread: publish what a move made this transport send again
        (redirected, or unacknowledged by a primary that left). Its
        subscribers are moving too, and a publish that beats them reaches
        no one: a channel with no subscriber on its new owner yet waits
        (its later publishes behind it) until it has one, at most
        HOLD_FOR_SUBSCRIBER_S; a channel nobody listens to then gets it
        anyway, where it reaches no one as before."""
        if not items:
            return
        channels = list(dict.fromkeys(channel for channel, _data in items))
        listened = await self._listened(channels)
        now = time.monotonic()
        send: list[tuple[str, bytes]] = []
        with self._lock:
            for channel, data in items:
                if channel in self._held or listened.get(channel) is False:
                    self._held.setdefault(channel, []).append(data)
                    self._held_since.setdefault(channel, now)
                else:
                    send.append((channel, data))
        for channel, data in send:
            self.publish(channel, data)
        if self._held:
            log.info("%r: %d channel(s) wait for a subscriber on their new owner", self, len(self._held))

    def _hold(self, channel: str, slot: int, data: bytes) -> bool:
        """Keep ``data`` back if ``channel`` waits for a subscriber (its
        earlier publishes do, or its slot has just moved and it has not been
        seen listened to since): order per channel holds."""
        if channel not in self._held and (slot not in self._moved or channel in self._cleared):
            return False
        with self._lock:
            if channel in self._held:
                self._held[channel].append(data)
                return True
            if slot not in self._moved or channel in self._cleared:
                return False
            self._held[channel] = [data]
            self._held_since[channel] = time.monotonic()
        self.refresh()  # asked about at once, not at the next tick
        return True

    async def _release_held(self) -> None:
        """Loop thread: send what waits, for the channels that have a
        subscriber now or have waited HOLD_FOR_SUBSCRIBER_S."""
        with self._lock:
            channels = list(self._held)
        listened = await self._listened(channels)
        now = time.monotonic()
        with self._cond:
            for channel in channels:
                if listened.get(channel) is False and now - self._held_since[channel] < HOLD_FOR_SUBSCRIBER_S:
                    continue
                # Sent before the channel stops being held, under the lock:
                # a publish racing in waits for the lock to add to the list,
                # or, once released, goes after it (order per channel).
                for data in self._held[channel]:
                    self._send(channel, data)
                del self._held[channel], self._held_since[channel]
                if channel_slot(channel) in self._moved:
                    self._cleared.add(channel)
            self._cond.notify_all()

    async def _listened(self, channels: list[str]) -> dict[str, bool]:
        """Whether each of ``channels`` has a subscriber on the primary that
        serves it (``PUBSUB SHARDNUMSUB``); a channel it could not ask about
        is left out (sent at once: nothing is held on a guess)."""
        by_primary: dict[tuple[str, int], list[str]] = {}
        slot_map = self._map
        if slot_map is None:
            return {}
        for channel in channels:
            owner = slot_map.owners[channel_slot(channel)]
            if owner is not None:
                by_primary.setdefault(owner, []).append(channel)
        out: dict[str, bool] = {}
        for (host, port), names in by_primary.items():
            try:
                reply = await one_command(self.url, host, port, self._connect_timeout, "PUBSUB", "SHARDNUMSUB",
                                          *names)
            except (OSError, TimeoutError, ConnectionError, TransportError) as exc:
                log.debug("%r: no subscriber counts from %s:%s (%r)", self, host, port, exc)
                continue
            flat = list(reply)
            for name, count in zip(flat[::2], flat[1::2], strict=False):
                out[_text(name)] = int(count) > 0
        return out

    # -- ShardEvents (loop thread) ------------------------------------------------

    def redirected(self, shard: RedisTransport, items: list[tuple[str, bytes]]) -> None:
        with self._lock:
            self._rerouting.extend(items)
            excess = len(self._rerouting) - self._options["max_pending"]
            overflow = self._rerouting[:excess] if excess > 0 else []
            del self._rerouting[:len(overflow)]
            self._retired_stats.dropped += len(overflow)
        for channel, _data in overflow:
            call_quietly(self._on_drop, channel, "overflow")
        self.refresh()

    def subscriptions_lost(self, shard: RedisTransport, channels: list[str]) -> None:
        with self._lock:
            lost = [c for c in channels if c in self._wanted]
            self._placing.update(lost)
            # Until they are confirmed on the new owner, what is published
            # to them reaches no one here: the gap is reported as after a
            # reconnect ("resubscribed" once they are placed again).
            self._await_resubscribe = self._await_resubscribe or bool(lost)
        log.info("%r: %d channel(s) left %s (slot moved); placing them again", self, len(channels), shard.name)
        self.refresh()

    def _shard_state(self, key: tuple[str, int], state: str) -> None:
        event = None
        with self._lock:
            if key not in self._shards:
                return  # retired
            if state == "disconnected":
                self._down.add(key)
                if self._was_connected and not self._reported_down:
                    self._reported_down = True
                    event = "disconnected"
            elif state == "connected":
                self._down.discard(key)
                event = self._up_again_locked()
        if state == "disconnected":
            self.refresh()  # a primary failing over: its replica takes its slots
        if event is not None:
            call_quietly(self._on_state, event)
        self._check_resubscribed()

    def _up_again_locked(self) -> str | None:
        """"connected" when every shard of the map is up and that is news:
        the first time, or after a "disconnected" (a shard back, or the
        one that was down retired from the map by a failover)."""
        if self._down or not self._shards:
            return None
        if not self._was_connected:
            self._was_connected = True
            return "connected"
        if self._reported_down:
            self._reported_down = False
            self._await_resubscribe = True
            return "connected"
        return None

    def _check_resubscribed(self) -> None:
        with self._lock:
            if not self._await_resubscribe or self._down or not self._subscribed_now():
                return
            self._await_resubscribe = False
        call_quietly(self._on_state, "resubscribed")

    # -- callbacks handed to every shard: the ones set on this transport, read when called

    def _shard_receive(self, channel: str, data: bytes) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver(channel, data)  # a shard counts and logs what it raises

    def _shard_received(self) -> None:
        call_quietly(self._on_received)

    def _shard_unrouted(self, channel: str, data: bytes) -> None:
        call_quietly(self._on_unrouted, channel, data)

    def _shard_drop(self, channel: str, reason: str) -> None:
        call_quietly(self._on_drop, channel, reason)

    # -- Transport ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is not None and on_loop(loop):
            raise TransportError("start() would block the loop it is asked to run on")
        with self._lock:
            if self._loop is not None or self._closed:
                return
            if loop is None:
                self._own_loop = LoopThread(f"huddle-io-{self.name}" if self.name else "huddle-io")
                loop = self._own_loop.loop
            self._loop = loop

        async def first() -> None:
            self._refresh_wanted = asyncio.Event()
            slot_map = await fetch_slot_map(self.url, self.url.seeds, self._connect_timeout)
            await self._apply(slot_map)
            self._task = asyncio.get_running_loop().create_task(self._keep_map(), name=f"slots:{self.name}")

        try:
            asyncio.run_coroutine_threadsafe(first(), loop).result(self._connect_timeout * 3 + 10)
        except (TransportError, concurrent.futures.TimeoutError) as exc:
            self.close(flush_timeout=0)
            raise TransportError(f"{self!r}: cannot reach the cluster: {exc}") from None

    def close(self, flush_timeout: float = 5.0) -> None:
        if self._loop is not None and on_loop(self._loop):
            raise TransportError("close() called on the loop the transport runs on")
        with self._lock:
            if self._closed:
                return
        if flush_timeout > 0:
            self.flush(flush_timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            shards = list(self._shards.values())
            lost = list(self._rerouting) + [(c, d) for c, items in self._held.items() for d in items]
            self._rerouting.clear()
            self._held.clear()
            self._held_since.clear()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        for shard in shards:
            shard.close(flush_timeout=0)
        for channel, _data in lost:
            self._retired_stats.dropped += 1
            call_quietly(self._on_drop, channel, "closed")
        if self._own_loop is not None:
            self._own_loop.close(timeout=10.0)

    def publish(self, channel: str, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"{self!r} is closed")
        # The route before the hold check: a slot is marked moved before the
        # route changes, so a publish that sees the new owner is held; one
        # that sees the old owner goes there and is redirected (or handed
        # back, if it died), and held then.
        route = self._route
        slot = channel_slot(channel)
        if (self._held or self._moved) and self._hold(channel, slot, data):
            return
        if route:
            route[slot].publish(channel, data)
            return
        self._send(channel, data)

    def _send(self, channel: str, data: bytes) -> None:
        """Publish where the route says now, no hold (or keep it for the map)."""
        shard = self._shard_for(channel)
        if shard is not None:
            shard.publish(channel, data)
            return
        with self._lock:
            if self._route:  # the map came meanwhile
                shard = self._shard_for(channel)
            else:
                self._rerouting.append((channel, data))  # sent once the map is in
        if shard is not None:
            shard.publish(channel, data)

    def flush(self, timeout: float = 5.0) -> bool:
        """True once every publish made before the call was acknowledged by
        its shard or dropped (redirected ones included)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._closed or not (self._rerouting or self._held),
                                           max(0.0, deadline - time.monotonic())):
                    return False
                shards = list(self._shards.values())
            if not all(shard.flush(max(0.0, deadline - time.monotonic())) for shard in shards):
                return False
            with self._lock:
                if self._closed or not (self._rerouting or self._held):
                    return not (self._rerouting or self._held)
            # A shard answered MOVED meanwhile: those go again once the map is fresh.

    def subscribe(self, *channels: str) -> None:
        """As on one server; before the map is in, the channels are
        subscribed on their shards once it is."""
        self._each_shard(channels, True)

    def unsubscribe(self, *channels: str) -> None:
        self._each_shard(channels, False)

    def _each_shard(self, channels: Iterable[str], subscribe: bool) -> None:
        by_shard: dict[RedisTransport, list[str]] = {}
        with self._lock:
            for channel in channels:
                if (channel in self._wanted) is subscribe:
                    continue
                if subscribe:
                    self._wanted.add(channel)
                else:
                    self._wanted.discard(channel)
                    self._placing.discard(channel)
                shard = self._shard_for(channel)
                if shard is not None:
                    by_shard.setdefault(shard, []).append(channel)
        for shard, names in by_shard.items():
            if subscribe:
                shard.subscribe(*names)
            else:
                shard.unsubscribe(*names)

    def _subscribed_now(self) -> bool:
        return bool(self._route) and not self._placing and all(s.wait_subscribed(0) for s in self._shards.values())

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or (self._route and not self._placing), timeout):
                return False
            if self._closed:
                return False
            shards = list(self._shards.values())
        return all(shard.wait_subscribed(max(0.0, deadline - time.monotonic())) for shard in shards) and not self._placing

    def when_subscribed(self, channels: Iterable[str], callback: SubscribedCallback) -> None:
        channels = list(channels)
        with self._lock:
            if not self._route:
                self._early_waiters.append((channels, callback))
                return
        by_shard: dict[RedisTransport, list[str]] = {}
        for channel in channels:
            shard = self._shard_for(channel)
            assert shard is not None
            by_shard.setdefault(shard, []).append(channel)
        if not by_shard:
            call_quietly(callback, not self._closed)
            return
        left = [len(by_shard)]
        outcome = [True]
        lock = threading.Lock()

        def one(ok: bool) -> None:
            with lock:
                outcome[0] = outcome[0] and ok
                left[0] -= 1
                done = left[0] == 0
            if done:
                call_quietly(callback, outcome[0])

        for shard, names in by_shard.items():
            shard.when_subscribed(names, one)

    @property
    def subscribed_channels(self) -> frozenset[str]:
        with self._lock:
            shards = list(self._shards.values())
        return frozenset().union(*(s.subscribed_channels for s in shards))

    @property
    def stats(self) -> TransportStats:
        """The shards' counters summed (retired shards' included)."""
        with self._lock:
            total = TransportStats(**vars(self._retired_stats))
            shards = list(self._shards.values())
        for shard in shards:
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(shard.stats, name))
        return total
