"""The error tree of huddle.

Every failure huddle reports on purpose is a ``HuddleError``; anything else
escaping a huddle call is a bug. The tree is short on purpose::

    HuddleError
    ├── DecodeError          bytes off the wire are not a valid envelope
    │                        (``reason`` says which check failed)
    ├── EncodeError          a message cannot be put on the wire
    ├── TransportError       the bus cannot carry a message right now
    └── DeliveryError        a well-formed message could not be delivered
        ├── UnknownAddress   nobody hosts that address
        ├── MailboxFull      the receiver's bounded mailbox is full
        ├── ActorStopped     the receiver stopped before handling it
        ├── AskTimeout       no reply before the ask's deadline
        ├── StaleEpoch       the sender's epoch is older than one already
        │                    seen from its address (a former owner)
        └── UnissuedEpoch    the sender's epoch was never issued for its
                             address (or could not be verified)

``actors`` adds its own subclasses (supervision, refusals) under the same
root. Names never shadow builtins (no ``ConnectionError``, no ``TimeoutError``).
"""

from __future__ import annotations

__all__ = [
    "ActorStopped",
    "AskTimeout",
    "DecodeError",
    "DeliveryError",
    "EncodeError",
    "HuddleError",
    "MailboxFull",
    "StaleEpoch",
    "TransportError",
    "UnissuedEpoch",
    "UnknownAddress",
]


class HuddleError(Exception):
    """Root of every error huddle raises on purpose."""


class DecodeError(HuddleError):
    """Bytes from the wire are not a valid envelope.

    ``reason`` is a short stable token for counting and events
    (``oversize``, ``not-msgpack``, ``bad-shape``, ``unknown-version``,
    ``unknown-kind``, ``bad-field``, ``bad-signature``); ``detail`` is for
    people and never contains message bodies.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class EncodeError(HuddleError):
    """A message cannot be encoded (a body field is not a msgpack primitive,
    or the encoded envelope is over the size limit)."""


class TransportError(HuddleError):
    """The bus cannot carry a message right now (e.g. outbound buffer full
    while Redis is unreachable)."""


class DeliveryError(HuddleError):
    """A well-formed message could not be delivered to its address."""

    def __init__(self, address: str, detail: str = "") -> None:
        self.address = address
        self.detail = detail
        super().__init__(f"{address}: {detail}" if detail else address)


class UnknownAddress(DeliveryError):
    """No live actor hosts the address."""


class MailboxFull(DeliveryError):
    """The receiver's bounded mailbox is full; the message was refused."""


class ActorStopped(DeliveryError):
    """The receiver stopped before it handled the message."""


class AskTimeout(DeliveryError):
    """An ask got no reply before its deadline."""


class StaleEpoch(DeliveryError):
    """The envelope carries an epoch older than the newest one the receiver
    has seen from the sender's address: it comes from a former owner of
    that address, and is refused (fencing)."""


class UnissuedEpoch(DeliveryError):
    """The envelope carries an epoch that was never issued for the sender's
    address (or that the receiver could not verify): it is refused and
    moves no fencing floor."""
