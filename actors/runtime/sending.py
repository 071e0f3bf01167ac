"""Sending: tell, ask, timers, and the answers that come back.

An actor must be able to send to an address without knowing where it lives,
and an ask must end, answered or not.

Everything an actor sends leaves as encoded bytes. Where the bytes go:

* the receiver lives on this node → straight back through ``Codec.decode``
  into its mailbox (nothing mutable is ever shared, even locally; see
  :mod:`actors.runtime.dispatch`);
* elsewhere → published on the address's channel through the
  :class:`~bus.transport.Transport` (batched and pipelined by it), or
  where the node's :class:`~actors.runtime.ownership.Ownership` routes it.

Asks: the envelope names ``reply_to=node:<id>`` and a correlation id; the
receiving node turns the handler's return value (or exception) into a
``sys.reply`` (or ``sys.error``) back to it. Every ask has a deadline
(default 5 s); past it the future fails with :class:`~bus.errors.AskTimeout`.

Refusals: a message that is dead-lettered is refused; if it was an ask, the
refusing node answers at once with the typed error its reason names
(``unknown-address`` → :class:`~bus.errors.UnknownAddress`, ...), so the
asker does not wait for its deadline and gets the same error type as if
the refusal had happened on its own node. An error the handler raised comes
back as a :class:`RemoteError`.

Timers are delayed messages: encoded when set, sent when the clock says so
(outside any trace). Everything else sent while a message is handled is in
that message's trace (see :mod:`actors.runtime.tracing`); an answer is in
the trace of the ask it answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError

from actors.runtime.clock import TimerHandle
from actors.runtime.ownership import FORWARDED
from actors.runtime.pooled import PooledFuture
from actors.runtime.tracing import in_trace
from bus.address import channel_for
from bus.envelope import SCHEMA_VERSION, Envelope, new_envelope, new_message_id
from bus.errors import (
    ActorStopped,
    AskTimeout,
    DeliveryError,
    EncodeError,
    HuddleError,
    MailboxFull,
    StaleEpoch,
    UnissuedEpoch,
    UnknownAddress,
)
from bus.messages import ErrorReply, Message, Reply

if TYPE_CHECKING:
    from actors.runtime.actor import HuddleActor

__all__ = ["DEFAULT_ASK_TIMEOUT", "RemoteError", "Sending"]

DEFAULT_ASK_TIMEOUT = 5.0


class RemoteError(HuddleError):
    """The handler of an ask raised; ``error_type`` names the remote type."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.remote_message = message
        super().__init__(f"{error_type}: {message}")


class Sending:
    """Sends, asks, timers, replies and refusals (a part of
    :class:`~actors.runtime.node.Node`, whose ``__init__`` sets up the state used
    here)."""

    def tell(
        self,
        to: str,
        message: Message,
        *,
        sender: str | None = None,
        epoch: int = 0,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        deadline: float | None = None,
        traceparent: str | None = None,
    ) -> None:
        """Send ``message`` to ``to``, wherever it lives. Raises
        :class:`EncodeError` if it cannot be encoded; delivery problems are
        dead letters, not exceptions."""
        # send_envelope(Envelope(...)), without the envelope object unless
        # it is refused: it would only be read field by field by the codec.
        if self._ownership is not None and epoch and sender is not None and self._silenced(to, sender, epoch):
            env = new_envelope(to, message, sender, reply_to, correlation_id, epoch, deadline, traceparent)
            self._refuse(env, "lease-lost")  # a former owner must not speak
            return
        msg_id = new_message_id()
        if traceparent is None:  # in the trace of the message being handled, if any
            traceparent = self.tracing.outgoing(to, message.KIND, msg_id, correlation_id)
        self._route(to, self.codec.encode_fields(message, SCHEMA_VERSION, msg_id, to, sender, reply_to,
                                                 correlation_id, epoch, deadline, traceparent))

    def send_envelope(self, env: Envelope) -> None:
        if (self._ownership is not None and env.epoch and env.sender is not None
                and self._silenced(env.to, env.sender, env.epoch)):
            self._refuse(env, "lease-lost")  # a former owner must not speak
            return
        self._route(env.to, self.codec.encode(env))

    def _silenced(self, to: str, sender: str, epoch: int) -> bool:
        """Whether ``sender``, speaking under ``epoch``, must not: its lease
        is lost or has expired by the local clock. A message to itself (an
        I/O outcome) while the lease is only in doubt is kept: it speaks to
        nobody else, and its actor waits for the lease anyway
        (Ownership.must_wait); refused, it would be lost even if the lease
        is confirmed."""
        ownership = self._ownership
        assert ownership is not None
        return not ownership.may_send(sender, epoch) and not (to == sender and ownership.must_wait(sender))

    def _route(self, to: str, data: bytes) -> None:
        """Encoded bytes for ``to``: back through the decoder if it lives
        here, else onto its channel (or where the ownership says)."""
        self.counters["sent"] += 1
        if to in self._actors or to in self._reserved or to == self.address:
            self.receive_bytes(data)
        elif self._ownership is None or not self._ownership.route(to, data):
            self.transport.publish(channel_for(to, self.namespace), data)

    def ask(
        self,
        to: str,
        message: Message,
        *,
        timeout: float | None = None,
        sender: str | None = None,
        epoch: int = 0,
    ) -> PooledFuture[Any]:
        """Send ``message`` and return a future for the answer.

        The future fails with :class:`AskTimeout` after ``timeout`` seconds
        (default 5), with :class:`RemoteError` if the handler raised, and
        with a :class:`~bus.errors.DeliveryError` subclass if the message
        was dead-lettered. ``await`` it from asyncio, or ``.get()`` it.
        """
        timeout = self.ask_timeout if timeout is None else timeout
        corr = new_message_id()
        future: PooledFuture[Any] = PooledFuture()
        # Under the lock, so that a timer that fires at once (a real clock,
        # a tiny timeout) finds the entry instead of leaving it forever.
        with self._lock:
            timer = self.clock.call_later(timeout, self._expire, corr, to, timeout)
            self._pending[corr] = (future, timer)
        try:
            self.tell(to, message, sender=sender, epoch=epoch, reply_to=self.address, correlation_id=corr,
                      deadline=self.clock.wall() + timeout)
        except BaseException:
            self._pending.pop(corr, None)
            timer.cancel()
            raise
        return future

    def _expire(self, corr: str, to: str, timeout: float) -> None:
        with self._lock:
            entry = self._pending.pop(corr, None)
        if entry is not None:
            self.counters["ask-timeout"] += 1
            entry[0].set_exception(exc_info=(AskTimeout, AskTimeout(to, f"no reply within {timeout:g}s"), None))

    def send_later(self, delay: float, to: str, message: Message, *, sender: str | None = None, epoch: int = 0) -> TimerHandle:
        """A timer is a delayed message: encoded now (so a bad message fails
        at once), sent through the bus when the clock says so."""
        data = self.codec.encode(Envelope(to=to, message=message, sender=sender, epoch=epoch))
        return self.clock.call_later(delay, self._send_timer, to, data)

    def _send_timer(self, to: str, data: bytes) -> None:
        if not self._closing:
            self._route(to, data)

    def _answer(self, env: Envelope, future: PooledFuture[Any], actor: HuddleActor) -> None:
        try:
            value = future.get(timeout=0)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a reply
            self._answer_error(env, exc, actor)
        else:
            self._answer_value(env, value, actor)

    def _answer_value(self, env: Envelope, value: Any, actor: HuddleActor) -> None:
        """The handler of the ask ``env`` returned ``value``: reply with it."""
        if value is FORWARDED:
            return  # the next owner answers it
        if type(value) is PooledFuture:
            # An answer to come: the handler went on with other messages.
            value.add_done_callback(lambda f: self._answer(env, f, actor))
            return
        self._answer_with(env, value if isinstance(value, Message) else Reply(value), actor)

    def _answer_error(self, env: Envelope, exc: BaseException, actor: HuddleActor) -> None:
        """The ask ``env`` failed with ``exc`` (its handler raised, or the
        runtime refused it): reply with the error."""
        if isinstance(exc, ActorDeadError) and not actor.actor_ref.is_alive():
            # Queued behind a stop: refused by the runtime, not answered
            # by the handler. A dead letter like any other refusal (in a
            # cluster: forwarded to the next owner).
            if self._ownership is None or not self._ownership.stray(env):
                self._refuse(env, "actor-stopped")
            return
        self._answer_with(env, ErrorReply(error_type=type(exc).__name__, message=str(exc)), actor)

    def _answer_with(self, env: Envelope, message: Message, actor: HuddleActor) -> None:
        try:
            self._reply(env, message, epoch=actor.epoch)
        except EncodeError as exc:
            self._reply(env, ErrorReply(error_type="EncodeError", message=str(exc)), epoch=actor.epoch)

    def _reply(self, env: Envelope, message: Message, *, epoch: int = 0) -> None:
        assert env.reply_to is not None
        with in_trace(env.traceparent):  # the answer is in the ask's trace, whenever it is sent
            self.tell(env.reply_to, message, sender=env.to, epoch=epoch, correlation_id=env.correlation_id)

    def _on_reply(self, env: Envelope) -> None:
        self.tracing.received(env)
        entry = self._pending.pop(env.correlation_id or "", None)
        if entry is None:
            self.dead_letter("late-reply", self.address, env.kind, sender=env.sender)
            return
        future, timer = entry
        timer.cancel()
        message = env.message
        if type(message) is Reply:
            future.set(message.value)
        elif type(message) is ErrorReply:
            error = _remote_error(message, env.sender or "")
            future.set_exception(exc_info=(type(error), error, None))
        else:
            future.set(message)

    def _refuse(self, env: Envelope, reason: str) -> None:
        self.dead_letter(reason, env.to, env.kind, sender=env.sender)
        if env.reply_to is not None and env.correlation_id is not None and env.to != self.address:
            self._reply(env, ErrorReply(error_type=_REFUSAL_TYPES.get(reason, DeliveryError).__name__, message=reason))


_REFUSAL_TYPES: dict[str, type[DeliveryError]] = {
    "unknown-address": UnknownAddress,
    "no-subscriber": UnknownAddress,
    "mailbox-full": MailboxFull,
    "actor-stopped": ActorStopped,
    "restart-buffer-full": MailboxFull,
    "expired": AskTimeout,
    "stale-epoch": StaleEpoch,
    "unissued-epoch": UnissuedEpoch,
    "epoch-unverified": UnissuedEpoch,
    "lease-lost": StaleEpoch,
    "backlog-full": MailboxFull,
    "not-hosted": UnknownAddress,
}


# A refusal comes back as the same typed error the refusing node named.
_DELIVERY_ERRORS: dict[str, type[DeliveryError]] = {
    cls.__name__: cls for cls in (DeliveryError, *_REFUSAL_TYPES.values())
}


def _remote_error(reply: ErrorReply, sender: str) -> HuddleError:
    cls = _DELIVERY_ERRORS.get(reply.error_type)
    if cls is not None:
        return cls(sender, reply.message)
    return RemoteError(reply.error_type, reply.message)
