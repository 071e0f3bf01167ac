"""The transport seam: how a node's bytes reach other nodes' channels.

A :class:`Transport` moves opaque ``(channel, data)`` pairs. It knows
nothing about envelopes or actors; the node encodes, the transport carries.
Two implementations keep the same contract (one conformance suite runs
against both):

- :class:`InProcessTransport` on an :class:`InProcessHub`: zero I/O, for
  several nodes inside one test process. ``publish`` delivers synchronously,
  on the publisher's thread, to every transport on the hub subscribed to
  exactly that channel.
- ``bus.redis_transport.RedisTransport``: Redis pub/sub on the node's asyncio
  loop (or a loop thread of its own), batched pipelined publishes.

Contract shared by both:

- ``subscribe``/``unsubscribe``/``publish`` are thread-safe and return at
  once. Channels and publishes asked for before ``start()`` take effect when
  it runs.
- Messages published by one transport on one channel arrive in publish
  order.
- After ``unsubscribe(c)`` returns, the receiver is not called for ``c``
  again (a call already running may finish).
- An exception raised by the receiver is logged and counted in
  ``stats.receiver_errors``; delivery goes on.
- After ``close()``, ``publish`` raises ``TransportError``; ``close`` is
  idempotent.
- Nothing is dropped silently: every message given up on is counted in
  ``stats.dropped`` and reported to the ``on_drop`` callback with a reason
  (``"overflow"``: over ``max_pending`` while the server was unreachable;
  ``"closed"``: still unwritten when ``close()`` gave up waiting).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bus.errors import TransportError

__all__ = [
    "DropCallback",
    "InProcessHub",
    "InProcessTransport",
    "ReceivedCallback",
    "Receiver",
    "StateCallback",
    "SubscribedCallback",
    "Transport",
    "TransportCallbacks",
    "TransportStats",
    "UnroutedCallback",
]

log = logging.getLogger(__name__)

Receiver = Callable[[str, bytes], None]
"""``receiver(channel, data)``; called on the transport's loop thread (for the
in-process transport: on the publisher's thread)."""

StateCallback = Callable[[str], None]
"""``callback(state)`` with state ``"connected"``, ``"disconnected"`` or
``"resubscribed"``."""

UnroutedCallback = Callable[[str, bytes], None]
"""``callback(channel, data)`` for a message the server delivered to nobody
(no subscriber on its channel when it was published)."""

DropCallback = Callable[[str, str], None]
"""``callback(channel, reason)`` for a message the transport gave up on."""

SubscribedCallback = Callable[[bool], None]
"""``callback(confirmed)`` for :meth:`Transport.when_subscribed`."""

ReceivedCallback = Callable[[], None]
"""``callback()`` after the messages of one read were handed to the receiver."""


@dataclass
class TransportStats:
    """Counters, updated by the transport, read by anyone (monotonic)."""

    published: int = 0
    """Messages handed to the server (Redis: PUBLISH acknowledged)."""
    received: int = 0
    """Messages read from subscribed channels."""
    reconnects: int = 0
    """Connections re-established after a loss."""
    dropped: int = 0
    """Messages given up on (see ``on_drop`` reasons)."""
    receiver_errors: int = 0
    """Exceptions raised by the receiver (logged, then delivery went on)."""


@runtime_checkable
class Transport(Protocol):
    """Channel pub/sub for one node. See the module docstring for the contract."""

    stats: TransportStats

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect (or begin connecting). Idempotent. A transport that does
        I/O runs it on ``loop`` (the node's I/O loop), or on a loop of its
        own if None; the in-process one has no I/O and ignores it."""

    def close(self) -> None:
        """Flush what is pending (bounded wait), disconnect, join threads. Idempotent."""

    def set_receiver(self, receiver: Receiver) -> None:
        """Who gets ``(channel, data)`` for every message on a subscribed channel."""

    def subscribe(self, *channels: str) -> None:
        """Ask to receive ``channels``. Thread-safe, idempotent, returns at once."""

    def unsubscribe(self, *channels: str) -> None:
        """Stop receiving ``channels``. Thread-safe, idempotent, returns at once."""

    def publish(self, channel: str, data: bytes) -> None:
        """Queue ``data`` for ``channel``. Thread-safe, non-blocking, batched."""

    def flush(self, timeout: float = 5.0) -> bool:
        """True once everything published before the call was written to the
        server (or given up on and counted as dropped); False on timeout."""

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """True once every subscribe/unsubscribe asked for so far is confirmed."""

    def when_subscribed(self, channels: Iterable[str], callback: SubscribedCallback) -> None:
        """Call ``callback(True)`` once each of ``channels`` (asked for with
        :meth:`subscribe`) is confirmed by the server, at once if it already
        is; ``callback(False)`` if the transport closes first. The waiting
        form of :meth:`wait_subscribed` for code that must not block (an
        actor on the node's loop): it waits for these channels only, so a
        node that keeps subscribing new ones cannot starve it."""

    def on_state(self, callback: StateCallback | None) -> None:
        """Be told about connection state changes."""

    def on_drop(self, callback: DropCallback | None) -> None:
        """Be told about each message given up on, with a reason."""

    def on_unrouted(self, callback: UnroutedCallback | None) -> None:
        """Be told about each publish that reached no subscriber."""

    def on_received(self, callback: ReceivedCallback | None) -> None:
        """Be told, on the loop thread, each time the messages of one read
        have all been handed to the receiver: the place to run what they
        made ready without waiting for another turn of the loop. Publishes
        made in it are written when it returns. A transport without reads
        (the in-process one delivers on the publisher's thread) never calls it."""


def call_quietly(callback: Callable[..., object] | None, *args: object) -> None:
    """Run a user callback; log (never raise) what it raises."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("transport callback %r failed", callback)


class TransportCallbacks:
    """The callback slots both transports share (set from any thread; read
    by the transport when it next needs them)."""

    _receiver: Receiver | None = None
    _on_state: StateCallback | None = None
    _on_drop: DropCallback | None = None
    _on_unrouted: UnroutedCallback | None = None
    _on_received: ReceivedCallback | None = None

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def on_state(self, callback: StateCallback | None) -> None:
        self._on_state = callback

    def on_drop(self, callback: DropCallback | None) -> None:
        self._on_drop = callback

    def on_unrouted(self, callback: UnroutedCallback | None) -> None:
        self._on_unrouted = callback

    def on_received(self, callback: ReceivedCallback | None) -> None:
        self._on_received = callback


class InProcessHub:
    """The "server" of in-process transports: exact-match channel fan-out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, frozenset[InProcessTransport]] = {}

    def _add(self, transport: InProcessTransport, channels: tuple[str, ...]) -> None:
        with self._lock:
            for channel in channels:
                self._subscribers[channel] = self._subscribers.get(channel, frozenset()) | {transport}

    def _remove(self, transport: InProcessTransport, channels: tuple[str, ...]) -> None:
        with self._lock:
            for channel in channels:
                remaining = self._subscribers.get(channel, frozenset()) - {transport}
                if remaining:
                    self._subscribers[channel] = remaining
                else:
                    self._subscribers.pop(channel, None)

    def publish(self, channel: str, data: bytes) -> int:
        """Deliver to every subscriber of ``channel``; returns how many."""
        # Copy-on-write sets: read without the lock, deliver outside it.
        targets = self._subscribers.get(channel, ())
        for target in targets:
            target._deliver(channel, data)
        return len(targets)

    def subscribers(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))


class InProcessTransport(TransportCallbacks):
    """A :class:`Transport` with no I/O, on an :class:`InProcessHub`."""

    def __init__(self, hub: InProcessHub, *, name: str = "") -> None:
        self.name = name
        self.stats = TransportStats()
        self._hub = hub
        self._lock = threading.Lock()
        self._channels: set[str] = set()
        self._pending: list[tuple[str, bytes]] = []
        self._subscribed_waiters: list[SubscribedCallback] = []
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"InProcessTransport(name={self.name!r})"

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:  # noqa: ARG002 - no I/O here
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            channels = tuple(self._channels)
            pending, self._pending = self._pending, []
            waiters, self._subscribed_waiters = self._subscribed_waiters, []
        self._hub._add(self, channels)
        call_quietly(self._on_state, "connected")
        for callback in waiters:
            call_quietly(callback, True)
        for channel, data in pending:
            self._send(channel, data)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            was_started = self._started
            channels = tuple(self._channels)
            pending, self._pending = self._pending, []
            waiters, self._subscribed_waiters = self._subscribed_waiters, []
        self._hub._remove(self, channels)
        for callback in waiters:
            call_quietly(callback, False)
        for channel, _ in pending:
            self.stats.dropped += 1
            call_quietly(self._on_drop, channel, "closed")
        if was_started:
            call_quietly(self._on_state, "disconnected")

    def subscribe(self, *channels: str) -> None:
        with self._lock:
            self._channels.update(channels)
            live = self._started and not self._closed
        if live:
            self._hub._add(self, channels)

    def unsubscribe(self, *channels: str) -> None:
        with self._lock:
            self._channels.difference_update(channels)
        self._hub._remove(self, channels)

    def publish(self, channel: str, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise TransportError(f"transport {self.name!r} is closed")
            if not self._started:
                self._pending.append((channel, data))
                return
        self._send(channel, data)

    def flush(self, timeout: float = 5.0) -> bool:
        # Delivery is synchronous: whatever was published has been delivered,
        # except publishes queued before start().
        return not self._pending

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        return self._started and not self._closed

    def when_subscribed(self, channels: Iterable[str], callback: SubscribedCallback) -> None:
        # Subscriptions take effect at once once started; before, at start().
        with self._lock:
            if not self._started and not self._closed:
                self._subscribed_waiters.append(callback)
                return
            live = not self._closed
        call_quietly(callback, live)

    def _send(self, channel: str, data: bytes) -> None:
        with self._lock:
            self.stats.published += 1
        if self._hub.publish(channel, data) == 0 and self._on_unrouted is not None:
            call_quietly(self._on_unrouted, channel, data)

    def _deliver(self, channel: str, data: bytes) -> None:
        with self._lock:
            if channel not in self._channels:  # unsubscribed since the hub looked
                return
            self.stats.received += 1
        receiver = self._receiver
        if receiver is None:
            return
        try:
            receiver(channel, data)
        except Exception:
            with self._lock:
                self.stats.receiver_errors += 1
            log.exception("receiver of %r failed on channel %r", self, channel)
