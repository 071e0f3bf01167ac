"""Dispatch: the one path for everything that arrives at a node, fencing
included.

Bytes reach a node from the transport, from a local send, or injected by
the test kit; each must be checked the same way (strict decoding, epochs,
deadlines, duplicates) before an actor sees it, and a failure anywhere is
a dead letter, never a lost message. So everything takes one path,
:meth:`~actors.runtime.node.Node.receive_bytes`:

1. decode strictly; a :class:`~bus.errors.DecodeError` becomes a dead letter
   with the decoder's reason;
2. fencing (below);
3. a reply to one of this node's asks completes its future;
4. otherwise the addressed actor's bounded mailbox gets it; an unknown
   address, a full mailbox, an expired deadline or a stopped actor is a dead
   letter. Every dead letter is counted and published on ``sys:events``; an
   ask that is dead-lettered is answered with an error at once, so the
   asker does not wait for its deadline.

A message for an address reserved for a restart waits in a bounded buffer
(:data:`RESTART_BUFFER`) until the next incarnation starts.

Fencing (:mod:`actors.runtime.fencing`): an envelope whose ``epoch`` is older than
the floor this node keeps for its sender address comes from a former owner
of that address and is refused as a ``stale-epoch`` dead letter. The floor
only rises to epochs the node's epoch authority (in a cluster, the lease
store) confirms were issued for that address; an envelope with an epoch
above anything issued is an ``unissued-epoch`` dead letter and moves
nothing. Epoch 0 means "no epoch" and is never refused.

This is the hot path (bytes in, dispatch, mailbox put): plain method calls
on the node, no layer in between.
"""

from __future__ import annotations

import logging
import queue
import sys
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError

from actors.runtime.actor import Delivery
from actors.runtime.fencing import Verdict
from actors.runtime.pooled import Mailbox
from bus.envelope import Envelope
from bus.errors import DecodeError, MailboxFull
from bus.messages import Reply, Stop

if TYPE_CHECKING:
    from actors.runtime.actor import HuddleActor

__all__ = ["RESTART_BUFFER", "Dispatch"]

#: Messages held for an address whose actor is being restarted.
RESTART_BUFFER = 10_000

log = logging.getLogger("huddle.node")


class Dispatch:
    """The receive path and fencing (a part of :class:`~actors.runtime.node.Node`,
    whose ``__init__`` sets up the state used here)."""

    def _on_wire(self, channel: str, data: bytes) -> None:
        self.receive_bytes(data, channel)

    def _after_wire(self) -> None:
        """The transport handed over everything one read brought: run the
        actors it made ready now, in this turn of the loop (what they send
        is written when this returns)."""
        self.dispatcher.run_pending()

    def _on_unrouted(self, channel: str, data: bytes) -> None:
        """The bus delivered one of our sends to nobody: no node hosts that
        address right now. A dead letter; an ask fails at once."""
        if _address_of(channel, self.namespace).startswith("sys:"):
            return  # nobody monitoring is fine
        try:
            env = self.codec.decode(data)
        except DecodeError:
            return
        if self._ownership is not None and self._ownership.unrouted(env, data):
            return
        self._refuse(env, "no-subscriber")

    def receive_bytes(self, data: bytes, channel: str | None = None) -> None:
        """The one entry point for bytes addressed to this node's actors
        (transport, local sends, test-kit injection)."""
        try:
            env = self.codec.decode(data)
        except DecodeError as exc:
            self.dead_letter(exc.reason, _address_of(channel, self.namespace), "", detail=exc.detail)
            return
        self.counters["received"] += 1
        self.dispatch(env)

    def observe_epoch(self, address: str, epoch: int) -> None:
        """A trusted statement (from the epoch authority itself, e.g. a
        claim's result): ``address`` is held under ``epoch`` now. From here
        on, envelopes from it with an older epoch are refused."""
        self.fencing.confirm(address, epoch)

    def newest_epoch(self, address: str) -> int:
        """The newest epoch known here to have been issued for ``address``
        (0: none). Never more than was issued: what envelopes merely claim
        does not count."""
        return self.fencing.issued(address)

    def dispatch(self, env: Envelope) -> None:
        if env.epoch and env.sender is not None:
            verdict = self.fencing.check(env)
            if verdict is not Verdict.DELIVER:
                if verdict is not Verdict.PARKED:
                    self._refuse_fenced(env, verdict)
                return
        self._dispatch_fenced(env)

    def _refuse_fenced(self, env: Envelope, verdict: Verdict) -> None:
        self._refuse(env, verdict.value)

    def _dispatch_fenced(self, env: Envelope) -> None:
        """Dispatch past fencing."""
        to = env.to
        if to == self.address:
            self._on_reply(env)
            return
        actor = self._actors.get(to)
        if actor is None:
            system = self._system_handlers.get(to)
            if system is not None:
                system(env)
                return
            with self._lock:
                actor = self._actors.get(to)
                if actor is None:
                    waiting = self._reserved.get(to)
                    if waiting is not None and len(waiting) < RESTART_BUFFER:
                        waiting.append(env)
                        return
            if actor is None:
                if to in self._reserved:
                    self._refuse(env, "restart-buffer-full")
                elif self._ownership is None or not self._ownership.stray(env):
                    self._refuse(env, "unknown-address")
                return
        if env.deadline is not None and env.deadline < self.clock.wall():
            self._refuse(env, "expired")
            return
        ownership = self._ownership
        if ownership is not None and not ownership.first_delivery(env):
            self._duplicate(env)
            return
        self._put(actor, env)

    def _duplicate(self, env: Envelope) -> None:
        """A copy of an envelope already delivered here: dropped, counted,
        reported (never answered: the first copy is)."""
        self.dead_letter("duplicate", env.to, env.kind, sender=env.sender, detail=env.msg_id)

    def _put(self, actor: HuddleActor, env: Envelope) -> None:
        if type(env.message) is Stop:
            try:
                actor.stop()
                stopping = True
            except ActorDeadError:
                # Already stopping (its exit not reported yet): nothing to
                # do, and no error for the sender. Answered as pykka does.
                stopping = False
            if self.delivery_hook is not None:
                self.delivery_hook(env)
            if env.reply_to is not None:
                self._reply(env, Reply(stopping))
            return
        answer = None if env.reply_to is None else _Answer(self, env, actor)
        mailbox: Mailbox = actor.actor_inbox  # type: ignore[assignment]
        hook = self.delivery_hook
        if hook is not None:
            # Before the put: once queued, the actor may handle the message
            # (and report what that caused) on another thread at once.
            if mailbox.capacity is not None and len(mailbox) >= mailbox.capacity:
                self._refuse(env, "mailbox-full")
                return
            hook(env)
        try:
            mailbox.put(Delivery(env, answer))  # type: ignore[arg-type]
        except MailboxFull:
            self._refuse(env, "mailbox-full")


class _Answer:
    """Where the answer to an ask goes: the ``reply_to`` of the mailbox
    envelope, in place of a future. pykka's receive loop (and the runtime,
    when it refuses a queued message) calls ``set`` or ``set_exception``
    on it once; that sends the reply at once, on that thread, as a done
    callback on a future would, without the future (a condition variable,
    a lock taken three times, a callback list) on every ask.

    Like a future's callbacks, a failure while replying is logged, never
    raised into the receive loop; a second ``set`` raises ``queue.Full``
    as a future's does.
    """

    __slots__ = ("_actor", "_env", "_node", "_set")

    def __init__(self, node: Dispatch, env: Envelope, actor: HuddleActor) -> None:
        self._node = node
        self._env = env
        self._actor = actor
        self._set = False

    def set(self, value: Any = None) -> None:
        if self._set:
            raise queue.Full
        self._set = True
        try:
            self._node._answer_value(self._env, value, self._actor)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            log.exception("answering %s failed", self._env.kind)

    def set_exception(self, exc_info: Any = None) -> None:
        if exc_info is None:
            exc_info = sys.exc_info()
        if self._set:
            raise queue.Full
        self._set = True
        exc_type, exc, _tb = exc_info
        if exc is None:
            exc = exc_type()
        try:
            self._node._answer_error(self._env, exc, self._actor)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            log.exception("answering %s failed", self._env.kind)


def _address_of(channel: str | None, namespace: str) -> str:
    if channel is None:
        return ""
    return channel[len(namespace):] if namespace and channel.startswith(namespace) else channel
