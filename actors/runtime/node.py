"""A node: hosts actors by address on one process and bridges them to the bus.

The problem. Thousands of actors in one process must each send and receive
by address over Redis pub/sub. One connection per actor would be thousands
of sockets and subscriptions; one connection shared by the actors
themselves is exactly the shared mutable object this project exists to
remove (one party closes it, another writes to it from the wrong thread,
a third reads it after a reconnect). And a message for an actor that just
crashed, or that moved to another node, must neither be lost nor be
handled by the wrong incarnation.

The choice. A node is one process's share of the system: the actors at the
addresses it hosts, one connection to the bus (a
:class:`~bus.transport.Transport`), one I/O loop and one clock. Its actors
never touch the bus; they send and receive through the node, which alone
owns the connection, runs on its loop, and decides per envelope (fencing,
the restart buffer, the ownership a cluster plugs in) whether and where it
is delivered.

:class:`Node` is made of parts, one idea each, that share the state
``Node.__init__`` sets up (mixins: a message that arrives goes through plain
method calls on one object, with no layer in between):

* :class:`~actors.runtime.hosting.Hosting`: actors started, stopped and restarted
  at addresses; reservations;
* :class:`~actors.runtime.sending.Sending`: tell, ask, timers, replies, refusals;
* :class:`~actors.runtime.dispatch.Dispatch`: the one path everything that arrives
  takes, fencing included;
* :class:`~actors.runtime.events.Events`: events and dead letters on ``sys:events``.

The actors it hosts are :class:`~actors.runtime.actor.HuddleActor` s. A cluster
plugs in an :class:`~actors.runtime.ownership.Ownership` (:meth:`Node.set_ownership`,
before the first spawn; without one, the node behaves as a single process
with no leases) and a :class:`~actors.runtime.checkpoints.CheckpointStore`.

This module holds the assembly and the lifecycle: :meth:`Node.start`
subscribes the node's own channel and starts the transport on the node's
loop; :meth:`Node.shutdown` lets the ownership hand off or release what it
owns, stops every actor (newest first, no restarts), fails the asks still
waiting and closes the transport, the clock and the loop;
:meth:`Node.wait_idle` tells when nothing runs any more.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actors.runtime.actor import HuddleActor
from actors.runtime.checkpoints import CheckpointStore, MemoryCheckpoints
from actors.runtime.clock import Clock, SystemClock, TimerHandle
from actors.runtime.dispatch import Dispatch
from actors.runtime.events import Events
from actors.runtime.fencing import Fencing
from actors.runtime.hosting import Hosting
from actors.runtime.io import IoLoop
from actors.runtime.metrics import BUS_RECONNECTS, MetricsRegistry
from actors.runtime.ownership import Ownership
from actors.runtime.pooled import LoopDispatcher, PooledFuture, default_dispatcher
from actors.runtime.sending import DEFAULT_ASK_TIMEOUT, Sending
from actors.runtime.tracing import W3C, Tracing
from bus.address import SYS_EVENTS, channel_for, node_address
from bus.envelope import Codec, Envelope
from bus.errors import AskTimeout, HuddleError
from bus.messages import Event

if TYPE_CHECKING:
    from bus.transport import Transport

__all__ = ["Node"]

log = logging.getLogger("huddle.node")

_node_counter = itertools.count(1)


def default_node_id() -> str:
    return f"{socket.gethostname().split('.')[0][:20]}-{os.getpid()}-{next(_node_counter)}".replace("_", "-")


#: Python's own thread switch interval (seconds), as ``sys.getswitchinterval()`` reports it.
PYTHON_SWITCH_INTERVAL_S = 0.005
#: The switch interval a node process runs with. A node's loop thread does
#: nearly all its work, but it shares the interpreter lock with the renewal
#: lane's thread (and any pool thread): a thread that gives the lock up
#: (every socket write and read does) and wants it back while another
#: thread runs Python waits until that thread is asked to let go, at most
#: the switch interval. At Python's 5 ms a loop busy re-activating actors
#: next to a lane parsing claim replies waited that long on many of its
#: writes; 0.5 ms bounds each such wait (failover-meetings, 1,000 meetings:
#: p50 from 3.4 s to 2.8 s, same load).
SWITCH_INTERVAL_S = 0.0005


def tune_switch_interval() -> None:
    """Set the interpreter's switch interval to :data:`SWITCH_INTERVAL_S`,
    unless the process already chose one of its own (it is not Python's
    default): called when a node starts."""
    if sys.getswitchinterval() == PYTHON_SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)


class Node(Hosting, Dispatch, Sending, Events):
    """Hosts actors by address on one process and connects them to the bus."""

    def __init__(
        self,
        transport: Transport,
        *,
        node_id: str | None = None,
        codec: Codec | None = None,
        clock: Clock | None = None,
        namespace: str = "",
        ask_timeout: float = DEFAULT_ASK_TIMEOUT,
        checkpoints: CheckpointStore | None = None,
        io: IoLoop | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.node_id = node_id or default_node_id()
        self.address = node_address(self.node_id)
        self.transport = transport
        self.codec = codec or Codec()
        #: The node's one asyncio loop (its thread starts on first use): the
        #: transport's connections, the actors' I/O and the system clock's
        #: timers run on it.
        self.io = io or IoLoop(f"huddle-io-{self.node_id}")
        #: Runs the slices of the actors here that never block, on ``io``.
        self.dispatcher = LoopDispatcher(self.io)
        self.clock: Clock = clock or SystemClock(self.io)
        self.namespace = namespace
        self.ask_timeout = ask_timeout
        #: Traces (the W3C field alone unless given OpenTelemetry's): see actors.runtime.tracing.
        self.tracing: Tracing = tracing or W3C
        self.checkpoints: CheckpointStore = checkpoints or MemoryCheckpoints()
        self.counters: collections.Counter[str] = collections.Counter()
        #: Gauges other parts add (``node.metrics.add_source``); see actors.runtime.metrics.
        self.metrics = MetricsRegistry()
        self.metrics.add_source(BUS_RECONNECTS, lambda: self.counters["bus:resubscribed"])
        #: Called with every envelope handed to a hosted actor's mailbox, when
        #: set (taps mirror them), just before the actor can see it (a put
        #: that then finds the mailbox full, a rare race, is refused after it
        #: as a mailbox-full dead letter); must be quick and must not raise.
        self.delivery_hook: Callable[[Envelope], None] | None = None
        self._system_handlers: dict[str, Callable[[Envelope], None]] = {}
        self._actors: dict[str, HuddleActor] = {}
        self._reserved: dict[str, collections.deque[Envelope]] = {}
        self._incarnations: collections.Counter[str] = collections.Counter()
        self._pending: dict[str, tuple[PooledFuture[Any], TimerHandle]] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._exit_waiters: dict[str, PooledFuture[None]] = {}
        self._release_on_exit: set[str] = set()
        #: Epoch floors per sender address (see actors.runtime.fencing).
        self.fencing = Fencing()
        self.fencing.deliver = self._dispatch_fenced
        self.fencing.refuse = self._refuse_fenced
        self._ownership: Ownership | None = None
        self._lock = threading.RLock()
        self._closing = False
        self._started = False
        self._events_channel = channel_for(SYS_EVENTS, namespace)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Node:
        if self._started:
            return self
        self._started = True
        tune_switch_interval()
        self.transport.set_receiver(self._on_wire)
        self.transport.on_received(self._after_wire)
        self.transport.on_unrouted(self._on_unrouted)
        self.transport.on_state(self._on_bus_state)
        self.transport.subscribe(channel_for(self.address, self.namespace))
        self.transport.start(self.io.loop)
        return self

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every actor (newest first, no restarts), then the transport."""
        if self._ownership is not None and not self._closing:
            # Hand off or release what we own while the node still runs.
            self._ownership.close(timeout)
        with self._lock:
            if self._closing:
                return
            self._closing = True
            actors = list(self._actors.values())
        for actor in reversed(actors):
            try:
                self.stop_actor(actor.address, timeout=timeout)
            except Exception:  # noqa: BLE001
                log.warning("actor %s did not stop in %.1fs", actor.address, timeout)
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut, timer in pending.values():
            timer.cancel()
            # No reply can come any more: fail the ask now, not never.
            _corr, to, _timeout = timer.args
            fut.set_exception(exc_info=(AskTimeout, AskTimeout(to, "node shut down before a reply"), None))
        # Actors' last I/O (a socket's close) gets a moment; the transport
        # flushes and disconnects on the loop; then what is left on the loop
        # is cancelled and its thread ends.
        self.io.wait_idle(min(timeout, 1.0))
        self.transport.flush(timeout)
        self.transport.close()
        self.clock.close()
        self.io.close(timeout)

    # -- ownership ----------------------------------------------------------

    def set_ownership(self, ownership: Ownership) -> None:
        """Put this node in a cluster (before it hosts anything)."""
        if self._actors:
            raise HuddleError("set_ownership() must come before the first spawn")
        self._ownership = ownership

    @property
    def ownership(self) -> Ownership | None:
        return self._ownership

    # -- test support -------------------------------------------------------

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no actor slice is queued or running (on the node's loop
        or the pool) and no I/O request is in flight (an I/O outcome becomes
        a message, which makes a dispatcher busy again, so all are checked
        until all hold at once)."""
        return self._wait_quiet(timeout, io=True)

    def wait_actors_idle(self, timeout: float = 5.0) -> bool:
        """True once no actor slice is queued or running, on the node's loop
        or the pool (I/O may be in flight)."""
        return self._wait_quiet(timeout, io=False)

    def _wait_quiet(self, timeout: float, *, io: bool) -> bool:
        deadline = time.monotonic() + timeout
        waits = [w for w in (getattr(default_dispatcher(), "wait_idle", None), self.dispatcher.wait_idle)
                 if w is not None]
        if io:
            waits.append(self.io.wait_idle)

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        while True:
            for wait in waits:
                if not wait(left()):
                    return False
            # Idle one after the other is not idle at once: one may have
            # made another busy meanwhile. Look again without waiting.
            if all(wait(0) for wait in waits):
                return True
