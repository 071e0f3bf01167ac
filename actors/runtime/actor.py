"""Actors that live at an address and speak only bus messages.

A pykka actor is reached through its ref, in-process, with any Python
object. A huddle actor is reached through an address, from any node, with
typed bus messages only, so that where it runs (this process or another, a
first incarnation or a restart) never changes how it is spoken to.

:class:`HuddleActor` is that actor: a :class:`~actors.runtime.pooled.PooledActor`
hosted by a :class:`~actors.runtime.node.Node` at an address. Its mailbox carries
each bus message as a :class:`Delivery` (the decoded envelope); its
:meth:`~HuddleActor.on_message` gets the typed message and the envelope,
and its return value answers an ask. Whatever it sends goes through the
node, encoded, even to an actor next to it. A kind it does not handle is a
dead letter, and the actor keeps running. Everything it is given at start
comes in an :class:`ActorContext`, explicitly (no ambient context).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ClassVar

from actors.runtime.io import Outcome
from actors.runtime.ownership import FORWARDED
from actors.runtime.pooled import DEFERRED, Mailbox, PooledActor, PooledFuture
from bus.errors import HuddleError

if TYPE_CHECKING:
    from actors.runtime.clock import TimerHandle
    from actors.runtime.node import Node
    from bus.envelope import Envelope
    from bus.messages import Message

__all__ = ["DEFAULT_MAILBOX_CAPACITY", "ActorContext", "Delivery", "HuddleActor", "UnhandledMessage"]

log = logging.getLogger("huddle.node")

DEFAULT_MAILBOX_CAPACITY = 10_000


class UnhandledMessage(HuddleError):
    """The actor has no handler for this message kind."""

    def __init__(self, address: str, kind: str) -> None:
        self.address = address
        self.kind = kind
        super().__init__(f"{address} does not handle {kind!r}")


@dataclass(frozen=True)
class ActorContext:
    """Everything an actor gets at start, explicitly (no ambient context).

    ``checkpoint`` is the state saved by the previous incarnation (``None``
    on a first start); ``incarnation`` counts starts at this address on this
    node (1 for the first); ``parent`` is the supervisor's address, if any,
    and ``parent_epoch`` the lease epoch it ran under when it started this
    actor (0 outside a cluster).
    """

    address: str
    node: Node
    checkpoint: Any = None
    incarnation: int = 1
    parent: str | None = None
    epoch: int = 0
    parent_epoch: int = 0


class Delivery:
    """What a huddle actor's pykka mailbox carries for a bus message.

    It is its own mailbox envelope (pykka's loop reads ``message`` and
    ``reply_to`` from what it takes out of a mailbox): ``message`` is the
    delivery itself, ``reply_to`` what the answer to an ask goes to
    (``None`` for a tell). One object per message instead of two.
    """

    __slots__ = ("envelope", "reply_to")

    def __init__(self, envelope: Envelope, reply_to: Any = None) -> None:
        self.envelope = envelope
        self.reply_to = reply_to

    @property
    def message(self) -> Delivery:
        return self


class HuddleActor(PooledActor):
    """A pooled actor with an address, that speaks only bus messages.

    Subclasses implement :meth:`on_message`, which gets the typed message and
    its envelope (sender, epoch, deadline...). Its return value answers an
    ask; a :class:`~actors.runtime.pooled.PooledFuture` returned is an answer to
    come (the ask is answered when it is set, and the actor goes on with
    its next message meanwhile), so a handler never has to block to answer
    late. A kind it does not handle: call ``super().on_message`` (raises
    :class:`UnhandledMessage`); the runtime turns that into a dead letter
    and the actor keeps running.
    """

    mailbox_capacity: ClassVar[int | None] = DEFAULT_MAILBOX_CAPACITY
    #: True for an actor whose handlers may block (wait on a future, sleep,
    #: do blocking I/O): it runs on the thread pool. Others run their slices
    #: on the node's I/O loop, where a blocking wait raises
    #: :class:`~actors.runtime.pooled.BlockingOnLoop`.
    blocking: ClassVar[bool] = False
    _direct_types: ClassVar[tuple[type, ...]] = (Delivery,)

    #: Whether ``on_message`` is an ``async def`` (set per class).
    _async_handler: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._async_handler = inspect.iscoroutinefunction(cls.on_message)

    def __init__(self, ctx: ActorContext) -> None:
        # Before the mailbox is made: it runs on the node's loop or the pool.
        self.ctx = ctx
        self.address = ctx.address
        self.node = ctx.node
        super().__init__()

    @classmethod
    def _create_actor_inbox_for(cls, actor: PooledActor) -> Mailbox:
        assert isinstance(actor, HuddleActor)
        if cls.dispatcher is not None or cls.blocking:
            return super()._create_actor_inbox_for(actor)
        return Mailbox(actor, actor.node.dispatcher, cls.mailbox_capacity)

    # -- receiving ----------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if type(message) is Delivery:
            env = message.envelope
            ownership = self.node._ownership
            if ownership is not None and not ownership.may_deliver(self.address):
                if ownership.must_wait(self.address) and self.actor_inbox.defer(message):
                    # The lease is still ours, its renewal's answer late: handle
                    # nothing until it is confirmed (then this message comes
                    # first) or lost (then it goes to the next owner).
                    ownership.waiting(self.address)
                    return DEFERRED
                # The lease is gone: this message is for the next owner.
                if not ownership.stray(env):
                    self.node._refuse(env, "lease-lost")
                return FORWARDED
            if self._async_handler:
                return self._start_async(env)
            tracing = self.node.tracing
            scope = tracing.enter(env)  # what the handler sends is in this message's trace
            try:
                answer = self.on_message(env.message, env)
            except UnhandledMessage as exc:
                tracing.exit(scope)
                self.node.dead_letter("unhandled-kind", env.to, env.kind, sender=env.sender)
                if env.reply_to is not None:
                    raise
                log.debug("%s", exc)
                return None
            except BaseException as exc:
                tracing.exit(scope, exc)
                raise
            tracing.exit(scope)
            if type(answer) is CoroutineType:  # a plain def that returned a coroutine: awaited as one
                return self._start_async(env, answer)
            return answer
        return super().on_receive(message)

    def _start_async(self, env: Envelope, handler: Coroutine[Any, Any, Any] | None = None) -> Any:
        """An ``async def on_message``: the coroutine the runtime awaits, the mailbox waiting."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if handler is not None:
                handler.close()
            raise TypeError(f"{self.address}: an async on_message needs an actor on the node's loop "
                            "(this one is blocking: make the handler plain, or the actor not blocking)"
                            ) from None
        return self._handled_async(env, handler)

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        """Handle one message; the return value answers an ask. May be an
        ``async def`` on an actor that runs on the node's loop (not
        ``blocking``): it may await asks and I/O, and the actor takes its
        next message only once it is done (mailbox order holds across its
        awaits); a stop cancels it; what it raises is a crash, supervised
        as for a plain handler."""
        raise UnhandledMessage(self.address, message.KIND)

    async def _handled_async(self, env: Envelope, handler: Coroutine[Any, Any, Any] | None) -> Any:
        """An async handler (``handler``, else ``on_message``'s coroutine),
        in its message's trace (in its own task's context), with the unknown
        kind a dead letter as for a plain one."""
        tracing = self.node.tracing
        scope = tracing.enter(env)
        try:
            answer = await (self.on_message(env.message, env) if handler is None else handler)
        except UnhandledMessage as exc:
            tracing.exit(scope)
            self.node.dead_letter("unhandled-kind", env.to, env.kind, sender=env.sender)
            if env.reply_to is not None:
                raise
            log.debug("%s", exc)
            return None
        except BaseException as exc:
            tracing.exit(scope, exc)
            raise
        tracing.exit(scope)
        return answer

    # -- sending ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.ctx.epoch

    def tell(self, to: str, message: Message, **header: Any) -> None:
        if header:
            self.node.tell(to, message, sender=self.address, epoch=self.epoch, **header)
        else:  # the usual case, without merging an empty dict into the call
            self.node.tell(to, message, sender=self.address, epoch=self.epoch)

    def ask(self, to: str, message: Message, *, timeout: float | None = None) -> PooledFuture[Any]:
        return self.node.ask(to, message, timeout=timeout, sender=self.address, epoch=self.epoch)

    def send_later(self, delay: float, message: Message, to: str | None = None) -> TimerHandle:
        """A timer: ``message`` reaches ``to`` (default: this actor) after
        ``delay`` seconds of the node's clock."""
        return self.node.send_later(delay, to or self.address, message, sender=self.address, epoch=self.epoch)

    def run_io(self, coro: Coroutine[Any, Any, Any], done: Callable[[Outcome[Any]], Message | None]) -> None:
        """Run ``coro`` on the node's I/O loop; when it ends, ``done(outcome)``
        (called on the loop thread, so it must only build a message) gives the
        message this actor then receives in its own mailbox, in turn with
        every other message. ``None`` sends nothing. Tag the message with the
        generation that started the request, so a stale outcome can be
        recognised and dropped."""
        address, epoch, node = self.address, self.epoch, self.node

        async def request() -> None:
            try:
                outcome: Outcome[Any] = Outcome(value=await coro)
            except asyncio.CancelledError:
                return  # the node is shutting down: nobody to tell
            except Exception as exc:  # noqa: BLE001 - the actor decides what a failure means
                outcome = Outcome(error=exc)
            message = done(outcome)
            # Told before the request counts as finished, so a node that
            # looks idle has no outcome still on its way.
            if message is not None:
                node.tell(address, message, sender=address, epoch=epoch)

        node.io.submit(request())

    def checkpoint(self, state: Any) -> bool:
        """Save ``state`` (msgpack primitives, never secrets); the next
        incarnation at this address gets it as ``ctx.checkpoint``."""
        return self.node.save_checkpoint(self.address, self.epoch, state)

    # -- runtime hooks ------------------------------------------------------

    def _on_dead_letter(self, message: Any) -> None:
        if type(message) is Delivery:
            env = message.envelope
            ownership = self.node._ownership
            if ownership is not None and ownership.stray(env):
                return  # queued behind a stop: the next owner gets it
            self.node.dead_letter("actor-stopped", self.address, env.kind, sender=env.sender)
        else:
            self.node.dead_letter("actor-stopped", self.address, type(message).__name__)

    def _address_or_urn(self) -> str:
        return self.address

    def __str__(self) -> str:
        return f"{type(self).__name__} ({self.address})"
