"""Addresses of actors and the Redis channels they map to.

An address names one actor across the whole fleet, whichever node hosts it
and however often it restarts::

    kind:id[/sub]        meeting:m-42
                         datachannel:m-42/llm-default-session
                         node:worker-3

``kind`` is ``[a-z][a-z0-9_-]*``; ``id`` and ``sub`` are non-empty runs of
``[A-Za-z0-9._~@+=-]`` (no spaces, no ``:``, no further ``/``). A whole
address is at most 200 characters.

Every live address has its own pub/sub channel, ``namespace + address``.
Every node has the address ``node:<node_id>``; replies to its asks go there.
System channels (``sys:events``, ``sys:metrics``, ``sys:nodes``) live under
the ``sys`` kind, so no actor should be given an address of kind ``sys``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus.errors import HuddleError

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "SYS_EVENTS",
    "SYS_METRICS",
    "SYS_NODES",
    "ENDPOINT_KINDS",
    "Address",
    "InvalidAddress",
    "channel_for",
    "is_valid_address",
    "node_address",
    "parse_address",
    "system_channel",
]

MAX_ADDRESS_LENGTH = 200

SYS_EVENTS = "sys:events"
SYS_METRICS = "sys:metrics"
SYS_NODES = "sys:nodes"

#: Kinds whose addresses are a node's own endpoints (``node:<id>``, its
#: meeting host ``meetings:<id>``) or system channels: one per node, or
#: none, never placed nor moved, so never under a cluster lease (a lease
#: lost in a network blip would stop a node's own endpoint for good).
ENDPOINT_KINDS = ("node", "sys", "meetings")

_KIND_RE = re.compile(r"[a-z][a-z0-9_-]*")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~@+=-]+")
_ADDRESS_RE = re.compile(
    r"[a-z][a-z0-9_-]*:[A-Za-z0-9._~@+=-]+(?:/[A-Za-z0-9._~@+=-]+)?"
)
_SYSTEM_PREFIX = "sys:"


class InvalidAddress(HuddleError):
    """A string is not a well-formed ``kind:id[/sub]`` address."""


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address. ``str(addr)`` is its canonical text form.

    Constructing one validates it: after ``Address(k, i, s)`` returns,
    ``parse_address(str(addr)) == addr``. Raises :class:`InvalidAddress`.
    """

    kind: str
    id: str
    sub: str | None = None

    def __post_init__(self) -> None:
        for part, value in (("kind", self.kind), ("id", self.id)):
            if not isinstance(value, str):
                raise InvalidAddress(
                    f"address {part} must be a str, got {type(value).__name__}"
                )
        if self.sub is not None and not isinstance(self.sub, str):
            raise InvalidAddress(
                f"address sub must be a str or None, got {type(self.sub).__name__}"
            )
        length = len(self.kind) + 1 + len(self.id)
        if self.sub is not None:
            length += 1 + len(self.sub)
        if length > MAX_ADDRESS_LENGTH:
            raise InvalidAddress(
                f"address too long: {length} characters, at most {MAX_ADDRESS_LENGTH}"
            )
        if not _KIND_RE.fullmatch(self.kind):
            raise InvalidAddress(
                f"bad address kind {self.kind!r}: expected a lowercase letter "
                "then [a-z0-9_-]"
            )
        if not _SEGMENT_RE.fullmatch(self.id):
            raise InvalidAddress(
                f"bad address id {self.id!r}: expected one or more of "
                "[A-Za-z0-9._~@+=-]"
            )
        if self.sub is not None and not _SEGMENT_RE.fullmatch(self.sub):
            raise InvalidAddress(
                f"bad address sub {self.sub!r}: expected one or more of "
                "[A-Za-z0-9._~@+=-]"
            )

    def __str__(self) -> str:
        if self.sub is None:
            return f"{self.kind}:{self.id}"
        return f"{self.kind}:{self.id}/{self.sub}"


def parse_address(s: str) -> Address:
    """Parse ``kind:id[/sub]``. Raises :class:`InvalidAddress` saying why."""
    if not isinstance(s, str):
        raise InvalidAddress(f"address must be a str, got {type(s).__name__}")
    if len(s) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(
            f"address too long: {len(s)} characters, at most {MAX_ADDRESS_LENGTH}"
        )
    kind, colon, rest = s.partition(":")
    if not colon:
        raise InvalidAddress(f"bad address {s!r}: expected kind:id[/sub]")
    ident, slash, sub = rest.partition("/")
    if slash and "/" in sub:
        raise InvalidAddress(f"bad address {s!r}: at most one '/' (kind:id/sub)")
    return Address(kind, ident, sub if slash else None)


def is_valid_address(s: object) -> bool:
    """Whether ``s`` is a str that :func:`parse_address` accepts."""
    return (
        isinstance(s, str)
        and len(s) <= MAX_ADDRESS_LENGTH
        and _ADDRESS_RE.fullmatch(s) is not None
    )


def node_address(node_id: str) -> str:
    """The address of node ``node_id``: ``node:<node_id>``.

    Raises :class:`InvalidAddress` if ``node_id`` is not a valid id.
    """
    return str(Address("node", node_id))


def channel_for(address: str, namespace: str = "") -> str:
    """The pub/sub channel of ``address``: ``namespace + address``.

    Not validated (this is on the send path); validate addresses where they
    enter the system.
    """
    return namespace + address


def system_channel(name: str, namespace: str = "") -> str:
    """The pub/sub channel of a system channel.

    ``name`` is either the full channel (``SYS_EVENTS``, ``"sys:events"``) or
    its short name (``"events"``). Raises :class:`InvalidAddress` for a name
    that is neither.
    """
    short = name.removeprefix(_SYSTEM_PREFIX)
    if not _KIND_RE.fullmatch(short):
        raise InvalidAddress(
            f"bad system channel name {name!r}: expected 'sys:<name>' or '<name>' "
            "with <name> in [a-z][a-z0-9_-]*"
        )
    return namespace + _SYSTEM_PREFIX + short
