"""Hosting: actors started, stopped and restarted at addresses.

An address outlives the actor at it: a supervised actor that crashes is
restarted at the same address, and what was sent to it meanwhile must
reach the next incarnation, first and in order, not get lost. In a
cluster, an address may only be started where its lease is held.

:meth:`~actors.runtime.node.Node.spawn` asks the node's
:class:`~actors.runtime.ownership.Ownership` (if any) whether it may start now;
:meth:`~actors.runtime.node.Node.start_actor` starts an incarnation: it counts
incarnations per address, restores the last checkpoint, delivers what
waited for the address before anything newer, and lets no message run
until the actor is registered and its ``started`` event is out.

Exits: the runtime calls :meth:`~actors.runtime.node.Node._on_exit` when an actor
stops. The node publishes ``stopped``/``crashed`` and, for a supervised
actor, keeps the address reserved (messages wait in a bounded buffer, see
:mod:`actors.runtime.dispatch`) and tells the supervisor with a
``sys.child-exit``. The supervisor either starts a new incarnation at the
same address (the buffer is delivered to it first) or releases the address
(the buffer becomes dead letters). A stop with ``release`` is final: no
reservation, no supervisor told. A final stop, or a reservation given up,
also forgets the address's checkpoint on the node (a plain stop keeps it
for the next :meth:`spawn` there); in a cluster the ownership decides.

Reservations also serve a cluster: :meth:`~actors.runtime.node.Node.reserve` holds
messages for an address not started yet (a lease being claimed);
:meth:`~actors.runtime.node.Node.hand_back` returns them to the ownership, which
forwards them to the address's owner.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
from pykka import ActorDeadError, ActorRegistry

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.messages import ChildExit
from actors.runtime.pooled import PooledActor, PooledFuture
from bus.address import InvalidAddress, channel_for, parse_address
from bus.envelope import Envelope
from bus.errors import EncodeError, HuddleError

if TYPE_CHECKING:
    from pykka import ActorRef

__all__ = ["AddressInUse", "Hosting"]

A = TypeVar("A", bound="HuddleActor")


class _Unset:
    """No value given (``None`` is a value)."""


_UNSET = _Unset()


class AddressInUse(HuddleError):
    """An actor already lives at that address on this node."""


class Hosting:
    """Actors at addresses: spawns, stops, exits, reservations, checkpoints
    saved (a part of :class:`~actors.runtime.node.Node`, whose ``__init__`` sets up
    the state used here)."""

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
            if not self.io.on_loop_thread():
                # A cluster's bookkeeping lives on the node's loop (it takes
                # no locks): the spawn, and the start it may lead to, run there.
                return self.io.call(functools.partial(self.spawn, address, actor_class, *args, parent=parent,
                                                      **kwargs))
            if address in self._actors:
                raise AddressInUse(address)
            granted = self._ownership.spawn(address, actor_class, args, kwargs, parent)
            if granted is None:
                return None
            epoch = granted
        return self.start_actor(address, actor_class, args, kwargs, parent=parent, epoch=epoch)

    def epoch_of(self, address: str | None) -> int:
        """The lease epoch of the actor running here at ``address`` (0: none
        here, or not in a cluster)."""
        actor = self._actors.get(address) if address is not None else None
        return actor.ctx.epoch if actor is not None else 0

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
                           epoch=epoch, parent_epoch=self.epoch_of(parent))
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

    def resume(self, address: str) -> bool:
        """The actor at ``address`` waited (its ownership said so, see
        :meth:`~actors.runtime.ownership.Ownership.must_wait`): it goes on
        with its messages. False if no actor lives there."""
        actor = self._actors.get(address)
        if actor is None:
            return False
        actor.actor_inbox.resume()  # type: ignore[attr-defined]
        return True

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
        self.checkpoints.delete(address)  # given up: no incarnation will restore it
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
                if final:  # not kept for a restart: nor is its state (no ownership took the address)
                    self.checkpoints.delete(address)
            reason = type(error).__name__ if error is not None else ""
            self.emit("crashed" if error is not None else "stopped", address, reason=reason,
                      detail={"incarnation": actor.ctx.incarnation})
            if supervised:
                assert parent is not None
                self.tell(parent, ChildExit(address=address, crashed=error is not None, reason=reason,
                                            incarnation=actor.ctx.incarnation, parent_epoch=actor.ctx.parent_epoch),
                          sender=address)
        finally:
            if waiter is not None:
                waiter.set(None)

    def save_checkpoint(self, address: str, epoch: int, state: Any) -> bool:
        try:
            data = msgpack.packb(state, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"checkpoint of {address} is not msgpack primitives: {exc}") from exc
        return self.checkpoints.save(address, epoch, data)
