"""HMAC signing of envelopes with a cluster key.

With a cluster key, every node signs what it encodes and refuses what is not
signed with it, so a process that can reach Redis but does not hold the key
cannot speak for an actor. Signing is off unless a key is given.

Wire form of a signed envelope::

    0xc1 | HMAC-SHA256(key, envelope)[32 bytes] | envelope

``0xc1`` is the one byte msgpack never uses, so a signed envelope can never
be mistaken for an unsigned one: a node without a key refuses it as
``not-msgpack``, and a node with a key refuses an unsigned one as
``unsigned`` (a :class:`~bus.errors.DecodeError` reason, like
``bad-signature`` for a tag that does not match). The tag covers the whole
envelope (header and body); it proves the sender holds the key, not that the
message is fresh (replay within the fleet is out of scope).

Keys never appear in a repr, a log line, an event or an error detail.
Rotation: a signer signs with its first key and accepts any of its keys, so
a fleet can add a new key everywhere, then sign with it, then drop the old.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from bus.errors import DecodeError, HuddleError

__all__ = [
    "CLUSTER_KEY_ENV",
    "MIN_KEY_BYTES",
    "SIGNATURE_OVERHEAD",
    "ClusterKeyError",
    "HmacSigner",
    "cluster_signer",
    "load_cluster_keys",
    "write_new_cluster_key",
]

CLUSTER_KEY_ENV = "HUDDLE_CLUSTER_KEY"
MIN_KEY_BYTES = 16
MARKER = 0xC1
_MARKER_BYTE = bytes([MARKER])
_TAG_BYTES = 32
SIGNATURE_OVERHEAD = 1 + _TAG_BYTES
"""Bytes a signature adds to an envelope."""

_compare = hmac.compare_digest
_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the keyed inner and outer hash states
    computed once: a tag then costs two ``copy()`` s and two short updates,
    about a third of ``hmac.digest`` (which sets the key up on every call).
    The base states are never updated, only copied, so this is thread-safe."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def tag(self, data: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class ClusterKeyError(HuddleError):
    """A cluster key is missing, unreadable or too short (the key itself is
    never in the message)."""


class HmacSigner:
    """Signs with ``key``; verifies against ``key`` and ``previous`` keys.

    Implements :class:`bus.envelope.EnvelopeSigner`. Thread-safe (no state
    beyond the keys).
    """

    __slots__ = ("_macs", "_signing")

    def __init__(self, key: bytes, *previous: bytes) -> None:
        keys = (key, *previous)
        for k in keys:
            if not isinstance(k, bytes) or len(k) < MIN_KEY_BYTES:
                raise ClusterKeyError(f"a cluster key must be at least {MIN_KEY_BYTES} bytes")
        self._macs = tuple(_HmacSha256(k) for k in keys)
        self._signing = self._macs[0]

    def __repr__(self) -> str:
        return f"HmacSigner(<{len(self._macs)} key(s) hidden>)"

    def sign(self, data: bytes) -> bytes:
        """``data`` with the marker and its tag in front."""
        return _MARKER_BYTE + self._signing.tag(data) + data

    def verify(self, data: bytes | bytearray | memoryview) -> bytes | memoryview:
        """The envelope inside signed ``data``; raises ``DecodeError``
        (``unsigned`` or ``bad-signature``) and nothing else."""
        view = data if type(data) is bytes else memoryview(data).cast("B")
        if len(view) == 0 or view[0] != MARKER:
            raise DecodeError("unsigned", "envelope carries no signature and the cluster requires one")
        if len(view) <= SIGNATURE_OVERHEAD:
            raise DecodeError("bad-signature", "truncated signature")
        tag = view[1:SIGNATURE_OVERHEAD]
        payload = view[SIGNATURE_OVERHEAD:]
        for mac in self._macs:
            if _compare(mac.tag(payload), tag):
                return payload
        raise DecodeError("bad-signature", "signature does not match the cluster key")


def load_cluster_keys(key_file: str | os.PathLike[str] | None = None,
                      environ: Mapping[str, str] = os.environ) -> list[bytes]:
    """The cluster keys: from ``key_file`` (one key per line, the first signs;
    blank lines and surrounding whitespace ignored) if given, else from
    ``$HUDDLE_CLUSTER_KEY`` (one key); empty if neither is set."""
    if key_file is not None:
        try:
            raw = Path(key_file).read_bytes()
        except OSError as exc:
            raise ClusterKeyError(f"cannot read the cluster key file {key_file}: {exc.strerror}") from None
        keys = [line.strip() for line in raw.splitlines() if line.strip()]
        if not keys:
            raise ClusterKeyError(f"the cluster key file {key_file} holds no key")
        return keys
    value = environ.get(CLUSTER_KEY_ENV, "").strip()
    return [value.encode()] if value else []


def write_new_cluster_key(path: str | os.PathLike[str]) -> Path:
    """A new random cluster key (32 bytes as hex) in ``path``, created
    readable by this user only; an existing file is never overwritten
    (``FileExistsError``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    return path


def cluster_signer(key_file: str | os.PathLike[str] | None = None,
                   environ: Mapping[str, str] = os.environ) -> HmacSigner | None:
    """A signer for the cluster key (see :func:`load_cluster_keys`), or
    ``None`` when no key is configured (signing off)."""
    keys = load_cluster_keys(key_file, environ)
    return HmacSigner(*keys) if keys else None
