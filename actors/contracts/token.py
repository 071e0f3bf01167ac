"""Messages of the ``token:<meeting>`` actor (one per meeting).

Session types are the data-channel session ids: ``llm-default-session`` and
``llm-practice-session``.

A requester (a data-channel session) sends :class:`TokenRequest` as a tell;
the token actor answers by a tell to the envelope's sender with
:class:`TokenGranted` or :class:`TokenUnavailable`, echoing ``request_id``.
``refresh=True`` asks for a fresh token even if one is held (the server
refused the held one: 401/4401). Tokens are secrets: the field is declared
in ``SECRET_FIELDS`` (monitors and taps redact it) and kept out of repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from bus.messages import Message, message_kind

__all__ = ["DEFAULT_SESSION", "PRACTICE_SESSION", "SESSION_TYPES", "TokenGranted", "TokenRequest", "TokenUnavailable"]

DEFAULT_SESSION = "llm-default-session"
PRACTICE_SESSION = "llm-practice-session"
SESSION_TYPES = (DEFAULT_SESSION, PRACTICE_SESSION)


@message_kind("token.request")
@dataclass(frozen=True, slots=True)
class TokenRequest(Message):
    session_type: str
    request_id: str
    refresh: bool = False


@message_kind("token.granted")
@dataclass(frozen=True, slots=True)
class TokenGranted(Message):
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("token",)

    session_type: str
    request_id: str
    token: str = field(repr=False)


@message_kind("token.unavailable")
@dataclass(frozen=True, slots=True)
class TokenUnavailable(Message):
    """No token can be had now; ``reason`` says why (never the token)."""

    session_type: str
    request_id: str
    reason: str
