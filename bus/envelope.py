"""The envelope every message travels in, and its strict msgpack codec.

On the wire an envelope is one msgpack array of eleven items::

    [version, msg_id, kind, to, sender, reply_to, correlation_id,
     epoch, deadline, traceparent, body]

An array and not a map, because this is on a path of hundreds of thousands
of messages a second and the header names would double a small envelope.

Decoding is where untrusted bytes enter, so :meth:`Codec.decode` is strict
and total: for *any* input it either returns an :class:`Envelope` whose
header fields have their declared types and whose message is a registered
kind with typed fields, or raises :class:`~bus.errors.DecodeError` whose
``reason`` says which check failed, in this order:

``oversize``         more than ``max_size`` bytes (checked before unpacking)
``not-msgpack``      not exactly one msgpack value, invalid UTF-8 in a str,
                     a map key that is not str/bytes, or any extension type
``bad-shape``        not an array of eleven items
``unknown-version``  a version this codec does not speak (checked before the
                     length, so a future shape still reports its version)
``bad-field``        a header or body field of the wrong type or value
``unknown-kind``     a kind the registry does not know

With a signer (``Codec(signer=...)``, see :mod:`bus.signing`), two checks
come first: ``unsigned`` (no signature where the cluster requires one) and
``bad-signature`` (a signature that is not the cluster key's).

Nothing else escapes ``decode``. Encoding is the trusted direction: it does
no type checks beyond msgpack's own and raises
:class:`~bus.errors.EncodeError` for a value msgpack cannot pack or an
envelope over ``max_size``.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import math
import os
import random
import re
from dataclasses import dataclass
from typing import NoReturn, Protocol

import msgpack

from bus.errors import DecodeError, EncodeError
from bus.messages import REGISTRY, Message, MessageRegistry

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_SIGNATURE_OVERHEAD",
    "SCHEMA_VERSION",
    "Codec",
    "Envelope",
    "EnvelopeSigner",
    "child_traceparent",
    "is_valid_traceparent",
    "new_envelope",
    "new_message_id",
    "new_traceparent",
]

SCHEMA_VERSION = 1
DEFAULT_MAX_SIZE = 1 << 20

_local = threading.local()

_HEADER_COUNT = 11


# -- message ids -----------------------------------------------------------------

# Ids are "<random per-process prefix>-<hex counter>": unique across the fleet
# as long as prefixes do not collide (48 random bits), and cheap to make.
# next() on itertools.count is atomic under the GIL, so threads need no lock.


def _new_prefix() -> str:
    return os.urandom(6).hex()


_id_prefix = _new_prefix()
_id_counter = itertools.count(1)


def _reseed_message_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = _new_prefix()
    _id_counter = itertools.count(1)


# A forked child must not reuse its parent's prefix and counter.
os.register_at_fork(after_in_child=_reseed_message_ids)


def new_message_id() -> str:
    """A fleet-unique message id, e.g. ``"3f9a1c2b7d0e-1a"``."""
    return f"{_id_prefix}-{next(_id_counter):x}"


# -- W3C trace context -------------------------------------------------------------

# version (not ff), trace id (not all zero), parent id (not all zero), flags
_TRACEPARENT_RE = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)
_traceparent_match = _TRACEPARENT_RE.fullmatch


def new_traceparent() -> str:
    """A new sampled W3C ``traceparent``: ``00-<trace id>-<span id>-01``."""
    # Not secret, only unique: the random module is fast and reseeds at fork.
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def child_traceparent(traceparent: str) -> str:
    """``traceparent``'s trace under a new span id: what a message sent in
    that trace carries (version, trace id and flags kept)."""
    span_id = _randbytes(8).hex()
    if span_id == _ZERO_SPAN:  # invalid in W3C; one in 2**64
        span_id = "0000000000000001"
    return traceparent[:36] + span_id + traceparent[52:]


_randbytes = random.randbytes
_ZERO_SPAN = "0" * 16


def is_valid_traceparent(s: object) -> bool:
    """Whether ``s`` is a well-formed W3C ``traceparent`` header value.

    Four lowercase-hex parts (version, 32-digit trace id, 16-digit parent
    id, flags); version ``ff`` and all-zero ids are invalid.
    """
    return type(s) is str and _traceparent_match(s) is not None


# -- the envelope --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message with its routing header.

    ``sender`` is the "from" address; ``reply_to`` and ``correlation_id`` are
    set on asks; ``epoch`` is the sender's fencing token (0: none);
    ``deadline`` is wall-clock unix seconds; ``traceparent`` is W3C trace
    context. After construction ``msg_id`` is never empty: one is made with
    :func:`new_message_id` when none is given.
    """

    to: str
    message: Message
    sender: str | None = None
    msg_id: str = ""
    reply_to: str | None = None
    correlation_id: str | None = None
    epoch: int = 0
    deadline: float | None = None
    traceparent: str | None = None
    version: int = SCHEMA_VERSION

    # Written by hand (dataclass keeps an __init__ a class defines): the
    # generated one sets each field with object.__setattr__, twice the cost
    # of the slot setters, and every send builds an envelope. Same
    # signature as the generated one (a test holds them together).
    def __init__(
        self,
        to: str,
        message: Message,
        sender: str | None = None,
        msg_id: str = "",
        reply_to: str | None = None,
        correlation_id: str | None = None,
        epoch: int = 0,
        deadline: float | None = None,
        traceparent: str | None = None,
        version: int = SCHEMA_VERSION,
    ) -> None:
        _set_to(self, to)
        _set_message(self, message)
        _set_sender(self, sender)
        _set_msg_id(self, msg_id or new_message_id())
        _set_reply_to(self, reply_to)
        _set_correlation_id(self, correlation_id)
        _set_epoch(self, epoch)
        _set_deadline(self, deadline)
        _set_traceparent(self, traceparent)
        _set_version(self, version)

    @property
    def kind(self) -> str:
        """The wire kind of the message, ``message.KIND``."""
        return self.message.KIND


# Envelopes are built by setting the slots directly (__init__, and decode,
# which has already checked every field): half the cost of object.__setattr__.
# A new Envelope field must be added here and to __init__ too; the check
# below makes sure of it.
_slot = Envelope.__dict__
_set_to = _slot["to"].__set__
_set_message = _slot["message"].__set__
_set_sender = _slot["sender"].__set__
_set_msg_id = _slot["msg_id"].__set__
_set_reply_to = _slot["reply_to"].__set__
_set_correlation_id = _slot["correlation_id"].__set__
_set_epoch = _slot["epoch"].__set__
_set_deadline = _slot["deadline"].__set__
_set_traceparent = _slot["traceparent"].__set__
_set_version = _slot["version"].__set__
del _slot
if len(dataclasses.fields(Envelope)) != 10:  # pragma: no cover - a programming error
    raise RuntimeError("Envelope gained a field: update the decode fast path")
_new_object = object.__new__


def new_envelope(
    to: str,
    message: Message,
    sender: str | None,
    reply_to: str | None,
    correlation_id: str | None,
    epoch: int,
    deadline: float | None,
    traceparent: str | None,
    /,
) -> Envelope:
    """A new envelope with a fresh ``msg_id``: ``Envelope(to, message,
    sender=..., ...)`` for the send path, where a class call with keyword
    arguments (a kwargs dict, then ``__init__``) is a good part of a tell."""
    env = _new_object(Envelope)
    _set_to(env, to)
    _set_message(env, message)
    _set_sender(env, sender)
    _set_msg_id(env, new_message_id())
    _set_reply_to(env, reply_to)
    _set_correlation_id(env, correlation_id)
    _set_epoch(env, epoch)
    _set_deadline(env, deadline)
    _set_traceparent(env, traceparent)
    _set_version(env, SCHEMA_VERSION)
    return env


# -- the codec -------------------------------------------------------------------------


class EnvelopeSigner(Protocol):
    """Seam for signing encoded envelopes (:class:`bus.signing.HmacSigner`).

    ``sign`` wraps ``encode``'s output, adding at most
    :data:`MAX_SIGNATURE_OVERHEAD` bytes; ``verify`` checks and unwraps
    ``decode``'s input before anything else, raising ``DecodeError``
    (``unsigned``, ``bad-signature``) and nothing else.
    """

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, data: bytes | bytearray | memoryview) -> bytes | memoryview: ...


MAX_SIGNATURE_OVERHEAD = 64


class _ExtensionType(Exception):
    pass


def _refuse_ext(code: int, data: bytes) -> object:
    raise _ExtensionType(code)


_BYTES_TYPES = (bytes, bytearray, memoryview)
_unpackb = msgpack.unpackb


def _buffer_size(data: object) -> int:
    """The size in bytes of a bytes-like ``data``, or ``DecodeError``."""
    if not isinstance(data, _BYTES_TYPES):
        raise DecodeError("not-msgpack", f"expected bytes, got {type(data).__name__}")
    try:
        return data.nbytes if isinstance(data, memoryview) else len(data)
    except Exception as exc:  # noqa: BLE001 - e.g. a released memoryview
        raise DecodeError("not-msgpack", f"unreadable buffer: {exc}") from None


class Codec:
    """Encodes envelopes to msgpack and decodes them back, strictly.

    Thread-safe: it keeps no per-call state. ``decode(encode(env)) == env``
    for every envelope whose message is registered in ``registry`` and whose
    values are msgpack primitives, except that a ``float`` field given an
    ``int`` comes back as a ``float``.
    """

    __slots__ = ("_from_body", "_max_size", "_registry", "_signer", "_to_body")

    def __init__(
        self,
        registry: MessageRegistry = REGISTRY,
        max_size: int = DEFAULT_MAX_SIZE,
        signer: EnvelopeSigner | None = None,
    ) -> None:
        if type(max_size) is not int or max_size <= 0:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self._registry = registry
        self._max_size = max_size
        self._signer = signer
        self._to_body = registry.to_body
        self._from_body = registry.from_body

    @property
    def registry(self) -> MessageRegistry:
        return self._registry

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def signed(self) -> bool:
        """Whether this codec signs what it encodes and requires signatures."""
        return self._signer is not None

    def encode(self, env: Envelope) -> bytes:
        """The wire bytes of ``env``.

        Raises ``EncodeError`` if the message is not registered, a value is
        not msgpack-packable, or the result is over ``max_size``.
        """
        return self.encode_fields(
            env.message, env.version, env.msg_id, env.to, env.sender, env.reply_to,
            env.correlation_id, env.epoch, env.deadline, env.traceparent,
        )  # fmt: skip

    def encode_fields(
        self,
        msg: Message,
        version: int,
        msg_id: str,
        to: str,
        sender: str | None,
        reply_to: str | None,
        correlation_id: str | None,
        epoch: int,
        deadline: float | None,
        traceparent: str | None,
        /,
    ) -> bytes:
        """``encode`` of the envelope with these fields, without building it
        (the send path: most sends never need the envelope object)."""
        body = self._to_body(msg)
        try:
            packer = _local.__dict__.get("packer")
            if packer is None:
                # One Packer per thread: packb builds a new one per call,
                # about 0.6 us of a 1.5 us encode. A Packer that raised may
                # hold a partial buffer, so a failure drops it (below).
                packer = _local.packer = msgpack.Packer(use_bin_type=True)
            data: bytes = packer.pack(
                [
                    version,
                    msg_id,
                    msg.KIND,
                    to,
                    sender,
                    reply_to,
                    correlation_id,
                    epoch,
                    deadline,
                    traceparent,
                    body,
                ],
            )
        except Exception as exc:
            _local.__dict__.pop("packer", None)
            raise EncodeError(
                f"cannot encode {msg.KIND} envelope: {type(exc).__name__}: {exc}"
            ) from exc
        if len(data) > self._max_size:
            raise EncodeError(
                f"{msg.KIND} envelope is {len(data)} bytes, over the limit of "
                f"{self._max_size}"
            )
        if self._signer is not None:
            return self._signer.sign(data)
        return data

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """The envelope in ``data``; raises ``DecodeError`` and nothing else."""
        max_size = self._max_size
        if type(data) is bytes:
            size = len(data)
        else:
            size = _buffer_size(data)
        signer = self._signer
        if signer is not None:
            # Checked before hashing, so oversized junk costs no HMAC.
            if size > max_size + MAX_SIGNATURE_OVERHEAD:
                raise DecodeError("oversize", f"{size} bytes, limit {max_size}")
            data = signer.verify(data)
            size = len(data)
        if size > max_size:
            raise DecodeError("oversize", f"{size} bytes, limit {max_size}")
        try:
            items = _unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                max_ext_len=0,
                ext_hook=_refuse_ext,
            )
        except _ExtensionType as exc:
            raise DecodeError("not-msgpack", f"extension type {exc.args[0]}") from None
        except Exception as exc:  # noqa: BLE001 - any unpack failure is not-msgpack
            raise DecodeError("not-msgpack", type(exc).__name__) from None

        if type(items) is not list or not items:
            raise DecodeError(
                "bad-shape",
                f"expected an array of {_HEADER_COUNT}, got {_shape(items)}",
            )
        version = items[0]
        if type(version) is not int or version != SCHEMA_VERSION:
            shown = version if type(version) is int else _shape(version)
            raise DecodeError("unknown-version", f"{shown}, expected {SCHEMA_VERSION}")
        if len(items) != _HEADER_COUNT:
            raise DecodeError(
                "bad-shape",
                f"expected an array of {_HEADER_COUNT}, got {_shape(items)}",
            )
        (
            _,
            msg_id,
            kind,
            to,
            sender,
            reply_to,
            correlation_id,
            epoch,
            deadline,
            traceparent,
            body,
        ) = items

        if type(msg_id) is not str or not msg_id:
            _bad_header(
                "msg_id", "non-empty str", msg_id, "empty str" if msg_id == "" else ""
            )
        if type(kind) is not str:
            _bad_header("kind", "str", kind)
        if type(to) is not str:
            _bad_header("to", "str", to)
        if sender is not None and type(sender) is not str:
            _bad_header("sender", "str | None", sender)
        if reply_to is not None and type(reply_to) is not str:
            _bad_header("reply_to", "str | None", reply_to)
        if correlation_id is not None and type(correlation_id) is not str:
            _bad_header("correlation_id", "str | None", correlation_id)
        if type(epoch) is not int or epoch < 0:
            _bad_header(
                "epoch", "int >= 0", epoch, "negative int" if type(epoch) is int else ""
            )
        if deadline is not None:
            if type(deadline) is int:
                deadline = float(deadline)  # msgpack ints fit a float
            elif type(deadline) is not float:
                _bad_header("deadline", "float | None", deadline)
            if not math.isfinite(deadline):
                raise DecodeError("bad-field", "deadline: not a finite number")
        if traceparent is not None and (
            type(traceparent) is not str or _traceparent_match(traceparent) is None
        ):
            _bad_header(
                "traceparent",
                "W3C traceparent | None",
                traceparent,
                "malformed str" if type(traceparent) is str else "",
            )

        message = self._from_body(kind, body)
        env = _new_object(Envelope)
        _set_to(env, to)
        _set_message(env, message)
        _set_sender(env, sender)
        _set_msg_id(env, msg_id)
        _set_reply_to(env, reply_to)
        _set_correlation_id(env, correlation_id)
        _set_epoch(env, epoch)
        _set_deadline(env, deadline)
        _set_traceparent(env, traceparent)
        _set_version(env, version)
        return env

    def roundtrip(self, env: Envelope) -> Envelope:
        """``decode(encode(env))``: a copy sharing nothing mutable with ``env``.

        Used for same-node sends, so they pass the same checks as remote ones.
        """
        return self.decode(self.encode(env))


def _shape(value: object) -> str:
    if type(value) is list:
        return f"array of {len(value)}"
    return "nil" if value is None else type(value).__name__


def _bad_header(name: str, expected: str, value: object, got: str = "") -> NoReturn:
    if not got:
        got = "None" if value is None else type(value).__name__
    raise DecodeError("bad-field", f"{name}: expected {expected}, got {got}")
