"""A node: hosts actors by address and bridges them to the bus.

Exits: the runtime calls :meth:`Node._on_exit` when an actor stops. The node
publishes ``stopped``/``crashed`` and, for a supervised actor, keeps the
address reserved (messages wait in a bounded buffer) and tells the
supervisor with a ``sys.child-exit``. The supervisor either starts a new
incarnation at the same address (the buffer is delivered to it first) or
releases the address (the buffer becomes dead letters).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
from pykka import ActorDeadError, ActorRegistry

from actors.actor import ActorContext, HuddleActor
from actors.checkpoints import CheckpointStore, MemoryCheckpoints
from actors.clock import Clock, SystemClock, TimerHandle
from actors.dispatch import Dispatch
from actors.events import Events
from actors.fencing import Fencing
from actors.io import IoLoop
from actors.messages import ChildExit
from actors.metrics import BUS_RECONNECTS, MetricsRegistry
from actors.ownership import Ownership
from actors.runtime import LoopDispatcher, PooledActor, PooledFuture, default_dispatcher
from actors.sending import DEFAULT_ASK_TIMEOUT, Sending
from bus.address import (
    SYS_EVENTS,
    InvalidAddress,
    channel_for,
    node_address,
    parse_address,
)
from bus.envelope import Codec, Envelope
from bus.errors import AskTimeout, EncodeError, HuddleError
from bus.messages import Event

if TYPE_CHECKING:
    from pykka import ActorRef

    from bus.transport import Transport

__all__ = ["AddressInUse", "Node"]

log = logging.getLogger("huddle.node")

A = TypeVar("A", bound="HuddleActor")



class _Unset:
    """No value given (``None`` is a value)."""


_UNSET = _Unset()


class AddressInUse(HuddleError):
    """An actor already lives at that address on this node."""


# --------------------------------------------------------------------------
# The node


_node_counter = itertools.count(1)


def default_node_id() -> str:
    return f"{socket.gethostname().split('.')[0][:20]}-{os.getpid()}-{next(_node_counter)}".replace("_", "-")


class Node(Dispatch, Sending, Events):
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
        self.checkpoints: CheckpointStore = checkpoints or MemoryCheckpoints()
        self.counters: collections.Counter[str] = collections.Counter()
        #: Gauges other parts add (``node.metrics.add_source``); see actors.metrics.
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
        #: Epoch floors per sender address (see actors.fencing).
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
        self.transport.set_receiver(self._on_wire)
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

    # -- hosting ------------------------------------------------------------

    def set_ownership(self, ownership: Ownership) -> None:
        """Put this node in a cluster (before it hosts anything)."""
        if self._actors:
            raise HuddleError("set_ownership() must come before the first spawn")
        self._ownership = ownership

    @property
    def ownership(self) -> Ownership | None:
        return self._ownership

    def spawn(self, address: str, actor_class: type[A], *args: Any, parent: str | None = None,
              **kwargs: Any) -> ActorRef[A] | None:
        """Start ``actor_class(ctx, *args, **kwargs)`` at ``address``.

        If the address is reserved for a restart, messages that waited for it
        are delivered to the new incarnation before any newer message.

        In a cluster, an address whose lease this node does not hold yet is
        started once the lease is claimed (the messages meanwhile wait):
        then this returns None.
        """
        if parse_address(address).kind == "sys":
            raise InvalidAddress(f"{address!r}: the sys kind is reserved for system channels")
        if self._closing:
            raise HuddleError(f"node {self.node_id} is shutting down")
        epoch = 0
        if self._ownership is not None:
            if address in self._actors:
                raise AddressInUse(address)
            granted = self._ownership.spawn(address, actor_class, args, kwargs, parent)
            if granted is None:
                return None
            epoch = granted
        return self.start_actor(address, actor_class, args, kwargs, parent=parent, epoch=epoch)

    def start_actor(self, address: str, actor_class: type[A], args: tuple[Any, ...] = (),
                    kwargs: dict[str, Any] | None = None, *, parent: str | None = None, epoch: int = 0,
                    checkpoint: bytes | None | _Unset = _UNSET, preload: tuple[Envelope, ...] = ()) -> ActorRef[A]:
        """Start the actor now (what :meth:`spawn` does once it may): under
        ``epoch``, with ``checkpoint`` (msgpack bytes, or None) if given
        instead of the store's, and with ``preload`` (envelopes that waited
        in the backlog) delivered before anything else."""
        if isinstance(checkpoint, _Unset):
            checkpoint = self.checkpoints.load(address)
        state = msgpack.unpackb(checkpoint, raw=False) if checkpoint is not None else None
        with self._lock:
            if address in self._actors:
                raise AddressInUse(address)
            self._incarnations[address] += 1
            incarnation = self._incarnations[address]
        ctx = ActorContext(address=address, node=self, checkpoint=state, incarnation=incarnation, parent=parent,
                           epoch=epoch)
        actor = actor_class(ctx, *args, **(kwargs or {}))
        actor._exit_hook = self._on_exit
        # Messages may reach the mailbox as soon as the address is visible;
        # none runs until the actor is registered and announced.
        actor.actor_inbox.hold()  # type: ignore[attr-defined]
        with self._lock:
            if address in self._actors:
                raise AddressInUse(address)
            waiting = self._reserved.pop(address, None)
            now = self.clock.wall()
            ownership = self._ownership
            for env in (*preload, *(waiting or ())):
                # Deadlines passed while waiting count as they would have on
                # arrival (see dispatch).
                if env.deadline is not None and env.deadline < now:
                    self._refuse(env, "expired")
                elif ownership is None or ownership.first_delivery(env):
                    self._put(actor, env)
                else:
                    self._duplicate(env)
            self._actors[address] = actor
        if waiting is None:
            self.transport.subscribe(channel_for(address, self.namespace))
        ActorRegistry.register(actor.actor_ref)
        detail: dict[str, Any] = {"incarnation": incarnation, "class": actor_class.__name__}
        if epoch:
            detail["epoch"] = epoch
        self.emit("started", address, detail=detail)
        actor._start_actor_loop()
        return actor.actor_ref

    def lookup(self, address: str) -> HuddleActor | None:
        return self._actors.get(address)

    def addresses(self) -> list[str]:
        return list(self._actors)

    def handle_system_channel(self, address: str, handler: Callable[[Envelope], None]) -> None:
        """Subscribe to the system channel ``address`` (``sys:<name>``) and
        give ``handler`` every envelope sent to it, decoded (and verified)
        like any other, on the receiving thread; it must not block."""
        if parse_address(address).kind != "sys":
            raise InvalidAddress(f"{address!r} is not a system channel (sys:<name>)")
        self._system_handlers[address] = handler
        self.transport.subscribe(channel_for(address, self.namespace))

    def stop_actor(self, address: str, *, timeout: float = 5.0, release: bool = False) -> bool:
        """Stop the actor at ``address`` and wait until the runtime has seen
        it exit (its exit event is out, its supervisor told). With
        ``release``, the stop is final: the address is not kept for a
        restart and the supervisor is not told. False if no actor lives
        there; raises pykka's ``Timeout`` past ``timeout``."""
        waiter = self.request_stop(address, release=release)
        if waiter is None:
            return False
        waiter.get(timeout=timeout)
        return True

    def request_stop(self, address: str, *, release: bool = False) -> PooledFuture[None] | None:
        """Ask the actor at ``address`` to stop, without waiting: the future
        is set once its exit was handled (``await`` it, or ``get`` it).
        None if no actor lives there."""
        with self._lock:
            actor = self._actors.get(address)
            if actor is None:
                return None
            if release:
                self._release_on_exit.add(address)
            waiter = self._exit_waiters.setdefault(address, PooledFuture())
        try:
            actor.actor_ref.stop(block=False)
        except ActorDeadError:
            pass
        return waiter

    def reserve(self, address: str) -> None:
        """Make messages for ``address`` wait here (nothing hosts it yet),
        and listen on its channel."""
        with self._lock:
            if address in self._actors or address in self._reserved:
                return
            self._reserved[address] = collections.deque()
        self.transport.subscribe(channel_for(address, self.namespace))

    def hand_back(self, address: str, *, keep_listening: bool = False) -> list[Envelope]:
        """Stop holding ``address`` (if no actor lives there) and return the
        messages that waited. Its channel is unsubscribed unless
        ``keep_listening`` (then :meth:`stop_listening` does it later:
        messages already on their way would otherwise be lost, since a
        transport drops what arrives for a channel it left)."""
        with self._lock:
            if address in self._actors:
                return []
            waiting = self._reserved.pop(address, None)
        if waiting is None:
            return []
        if not keep_listening:
            self.transport.unsubscribe(channel_for(address, self.namespace))
        return list(waiting)

    def stop_listening(self, address: str) -> None:
        """Unsubscribe the channel of ``address`` if nothing is hosted or
        held for it here."""
        with self._lock:
            if address in self._actors or address in self._reserved:
                return
        self.transport.unsubscribe(channel_for(address, self.namespace))

    def hosts(self, address: str) -> bool:
        """Whether an actor lives at ``address`` here, or messages for it
        wait here (a restart, an activation)."""
        return address in self._actors or address in self._reserved

    def release(self, address: str) -> None:
        """Give up a restart reservation: waiting messages become dead letters
        (in a cluster: the lease is released and they are forwarded)."""
        with self._lock:
            if address not in self._reserved or address in self._actors:
                return
        if self._ownership is not None and self._ownership.exited(address, False, False):
            return
        with self._lock:
            waiting = self._reserved.pop(address, None)
            if waiting is None or address in self._actors:
                return
        self.transport.unsubscribe(channel_for(address, self.namespace))
        for env in waiting:
            self._refuse(env, "actor-stopped")

    def _on_exit(self, actor: PooledActor, error: BaseException | None) -> None:
        assert isinstance(actor, HuddleActor)
        address = actor.address
        parent = actor.ctx.parent
        with self._lock:
            if self._actors.get(address) is not actor:
                return
            del self._actors[address]
            final = address in self._release_on_exit
            self._release_on_exit.discard(address)
            supervised = parent is not None and not self._closing and not final
            if supervised:
                self._reserved[address] = collections.deque()
            waiter = self._exit_waiters.pop(address, None)
        try:
            ownership = self._ownership
            if ownership is not None and ownership.exited(address, error is not None, supervised):
                with self._lock:  # messages wait until the ownership hands them on
                    self._reserved.setdefault(address, collections.deque())
            elif not supervised:
                self.transport.unsubscribe(channel_for(address, self.namespace))
            reason = type(error).__name__ if error is not None else ""
            self.emit("crashed" if error is not None else "stopped", address, reason=reason,
                      detail={"incarnation": actor.ctx.incarnation})
            if supervised:
                assert parent is not None
                self.tell(parent, ChildExit(address=address, crashed=error is not None, reason=reason,
                                            incarnation=actor.ctx.incarnation), sender=address)
        finally:
            if waiter is not None:
                waiter.set(None)

    # -- checkpoints ----------------------------------------------------------

    def save_checkpoint(self, address: str, epoch: int, state: Any) -> bool:
        try:
            data = msgpack.packb(state, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"checkpoint of {address} is not msgpack primitives: {exc}") from exc
        return self.checkpoints.save(address, epoch, data)

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
