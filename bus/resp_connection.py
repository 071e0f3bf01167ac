"""RESP over one socket: the two lean connections of
:class:`~bus.redis_transport.RedisTransport`, as ``asyncio.Protocol``s.

Commands are hand-encoded (:mod:`bus.resp`), replies parsed by
``hiredis.Reader``. Reads go into one buffer the connection keeps
(``asyncio.BufferedProtocol``): a plain ``Protocol`` gets a new ``bytes``
per read, which for asyncio's 256 KiB reads is an ``mmap`` / ``mremap`` /
``munmap`` per read (and, with several threads, a TLB shootdown), several
system calls on every message of a request/reply exchange. The reader
copies what it is fed, so the buffer is reused at once.

A connection only parses and hands over: what a reply
means for the transport (a publish acknowledged, a message received, a
subscription confirmed) is its owner's business, reached through the
:class:`PublisherOwner` and :class:`SubscriberOwner` seams, so this module
knows nothing of the transport.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
from typing import Any, Protocol

import hiredis

from bus.resp import encode_command
from bus.transport import Receiver, TransportStats

__all__ = ["ConnectionLost", "PublisherConnection", "PublisherOwner", "RespConnection", "SubscriberConnection",
           "SubscriberOwner"]

log = logging.getLogger("bus.redis_transport")


class PublisherOwner(Protocol):
    """What the publisher connection reports, in reply order."""

    _on_unrouted: Any

    def _acknowledged(self, count: int) -> None: ...

    def _unrouted(self) -> None: ...

    def _refused(self, reply: object) -> None: ...

    def _pause_publishing(self, paused: bool) -> None: ...


class SubscriberOwner(Protocol):
    """What the subscriber connection reads from and reports to."""

    _channel_names: dict[bytes, str]
    _receiver: Receiver
    stats: TransportStats

    def _receiver_failed(self, channel: str) -> None: ...

    def _received_batch(self) -> None: ...

    def _subscription_reply(self, reply: object) -> None: ...


class ConnectionLost(Exception):
    """Internal: the connection went away while a command waited."""


READ_BUFFER = 256 * 1024
"""Bytes one read may bring (asyncio's own read size)."""

FEED = 4096
"""Bytes handed to the reader at a time. The reader keeps what it was fed
in one buffer and, each time a reply leaves it with 1 KiB or more consumed,
moves the unread rest to the front: fed a whole 256 KiB read of small
messages, it moved about 128 bytes for every byte it parsed (5 % of a
subscriber's CPU). Fed 4 KiB at a time, the unread rest stays small."""


class RespConnection(asyncio.BufferedProtocol):
    """RESP over one socket.

    While ``handshaking``, every reply answers the oldest :meth:`command`.
    After that the subclass's mode owns the replies, except the ``PONG`` of
    a health :meth:`ping`. ``chunks_in`` counts reads: traffic proves the
    server is alive without a PING.

    Subclasses implement :meth:`_replies`, which takes every complete
    reply the reader holds; :meth:`data_received` feeds bytes the same way
    a read does (for callers that have bytes rather than a read).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, read_buffer: int = READ_BUFFER) -> None:
        self.loop = loop
        self.reader = hiredis.Reader()
        self._buffer = bytearray(read_buffer)
        self.transport: asyncio.Transport | None = None
        self.handshaking = True
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.ping_waiter: asyncio.Future[None] | None = None
        self.chunks_in = 0
        #: Held around every write after the handshake, when set (the owner
        #: may write on the same socket from other threads).
        self.write_lock: threading.Lock | None = None
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks_in += 1
        feed = self.reader.feed
        buffer = self._buffer
        replies = self._replies
        for offset in range(0, nbytes, FEED):
            feed(buffer, offset, min(FEED, nbytes - offset))
            replies()
        self._read_done()

    def data_received(self, data: bytes) -> None:
        self.chunks_in += 1
        view = memoryview(data)
        for offset in range(0, len(data), FEED):
            self.reader.feed(view[offset : offset + FEED])
            self._replies()
        self._read_done()

    def _replies(self) -> None:
        """Take every complete reply the reader holds."""
        raise NotImplementedError

    def _read_done(self) -> None:
        """Everything one read brought has been parsed and handed over."""

    def connection_lost(self, exc: BaseException | None) -> None:
        waiters = list(self.waiters)
        self.waiters.clear()
        if self.ping_waiter is not None:
            waiters.append(self.ping_waiter)
            self.ping_waiter = None
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionLost("connection lost"))
        if not self.lost.done():
            self.lost.set_result(exc)

    async def command(self, *args: bytes | str | int) -> Any:
        """Send one command and wait for its reply (while handshaking only)."""
        assert self.transport is not None and self.handshaking
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        self.transport.write(encode_command(*args))
        return await waiter

    async def ping(self) -> None:
        """Send PING; return when its PONG arrives."""
        assert self.transport is not None
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.ping_waiter = waiter
        if self.write_lock is None:
            self.transport.write(b"*1\r\n$4\r\nPING\r\n")
        else:
            with self.write_lock:
                self.transport.write(b"*1\r\n$4\r\nPING\r\n")
        await waiter

    def _handshake_reply(self, reply: object) -> None:
        if self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def _pong(self) -> None:
        waiter, self.ping_waiter = self.ping_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _protocol_error(self, exc: Exception) -> None:
        log.error("RESP protocol error, dropping connection: %s", exc)
        self.abort()


class PublisherConnection(RespConnection):
    def __init__(self, loop: asyncio.AbstractEventLoop, owner: PublisherOwner) -> None:
        # Replies to PUBLISH are a few bytes each: a smaller buffer will do.
        super().__init__(loop, 64 * 1024)
        self.owner = owner

    def _replies(self) -> None:
        gets = self.reader.gets
        acked = 0
        try:
            while (reply := gets()) is not False:
                if reply.__class__ is int:  # PUBLISH -> receiver count
                    if reply == 0 and self.owner._on_unrouted is not None:
                        if acked:
                            self.owner._acknowledged(acked)
                            acked = 0
                        self.owner._unrouted()
                    else:
                        acked += 1
                elif self.handshaking:
                    self._handshake_reply(reply)
                elif reply == b"PONG":
                    self._pong()
                else:
                    # An error reply to a PUBLISH (e.g. NOPERM): settle what
                    # came before it, then report the refused message.
                    if acked:
                        self.owner._acknowledged(acked)
                        acked = 0
                    self.owner._refused(reply)
        except hiredis.ProtocolError as exc:
            self._protocol_error(exc)
        finally:
            if acked:
                self.owner._acknowledged(acked)

    def pause_writing(self) -> None:
        self.owner._pause_publishing(True)

    def resume_writing(self) -> None:
        self.owner._pause_publishing(False)


class SubscriberConnection(RespConnection):
    def __init__(self, loop: asyncio.AbstractEventLoop, owner: SubscriberOwner) -> None:
        super().__init__(loop)
        self.owner = owner
        self.delivered = 0  # messages handed over since the read began

    def _replies(self) -> None:
        owner = self.owner
        gets = self.reader.gets
        names = owner._channel_names  # bytes -> str of channels still wanted
        receiver = owner._receiver
        stats = owner.stats
        delivered = 0  # counted here, added to the read's count at the end
        try:
            while (reply := gets()) is not False:
                if reply.__class__ is list:
                    kind = reply[0]
                    if kind == b"message" or kind == b"smessage":  # smessage: a shard channel's
                        channel = names.get(reply[1])
                        if channel is None:  # unsubscribed; the server has not caught up
                            continue
                        stats.received += 1  # counted before the receiver sees it
                        delivered += 1
                        try:
                            receiver(channel, reply[2])
                        except Exception:
                            owner._receiver_failed(channel)
                    elif kind == b"pong":  # PING while subscribed
                        self._pong()
                    else:
                        owner._subscription_reply(reply)
                elif self.handshaking:
                    self._handshake_reply(reply)
                elif reply == b"PONG":  # PING with no subscriptions
                    self._pong()
                else:
                    owner._subscription_reply(reply)  # an error reply
        except hiredis.ProtocolError as exc:
            self._protocol_error(exc)
        self.delivered += delivered

    def _read_done(self) -> None:
        if self.delivered:
            self.delivered = 0
            self.owner._received_batch()
