"""Messages of the ``token:<meeting>`` actor (one per meeting).

Session types are the data-channel session ids: ``llm-default-session`` and
``llm-practice-session``.

A requester (a data-channel session) sends :class:`TokenRequest` as a tell;
the token actor answers by a tell to the envelope's sender with
:class:`TokenGranted` or :class:`TokenUnavailable`, echoing ``request_id``.
``refresh=True`` asks for a fresh token even if one is held (the server
refused the held one: 401/4401). Tokens are secrets: the field is declared
in ``SECRET_FIELDS`` (monitors and taps redact it) and kept out of repr.

The meeting actor drives the token actor with tells (no replies unless
stated):

* :class:`TokenConfigure` where tokens come from (locus URL, self id) under
  a **generation**; sent on join and again whenever the locus URL is
  replaced, the role changes or the practice session starts or ends, each
  time with a higher generation. A fetch started under an older generation
  is dropped when it completes: it never stores a token.
* :class:`TokenSeed` the tokens that came with the join response.
* :class:`TokenForget` the meeting left: every token is dropped, waiting
  requests are answered :class:`TokenUnavailable` (``meeting-left``).
* :class:`TokenEnsure` make sure a token of that type is held (fetch it if
  not), answered with :class:`TokenHeld` (never the token itself) or
  :class:`TokenUnavailable`: how the meeting prepares the practice session
  without ever seeing a secret.

A data-channel disconnect is not a message here: tokens outlive sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from bus.messages import Message, message_kind

__all__ = [
    "DEFAULT_SESSION",
    "PRACTICE_SESSION",
    "SESSION_TYPES",
    "TokenConfigure",
    "TokenEnsure",
    "TokenForget",
    "TokenGranted",
    "TokenHeld",
    "TokenRequest",
    "TokenSeed",
    "TokenUnavailable",
    "UnavailableReason",
    "token_address",
]

DEFAULT_SESSION = "llm-default-session"
PRACTICE_SESSION = "llm-practice-session"
SESSION_TYPES = (DEFAULT_SESSION, PRACTICE_SESSION)


def token_address(meeting_id: str) -> str:
    """The address of a meeting's token actor."""
    return f"token:{meeting_id}"


class UnavailableReason:
    """The stable ``reason`` values of :class:`TokenUnavailable` (a fetch
    failure is ``fetch-failed:<cause>``, e.g. ``fetch-failed:http-500``)."""

    NOT_CONFIGURED = "not-configured"
    MEETING_LEFT = "meeting-left"
    UNKNOWN_SESSION_TYPE = "unknown-session-type"
    REFUSED = "refused"
    TOO_MANY_WAITING = "too-many-waiting"
    TOKEN_EXPIRED_ON_ARRIVAL = "token-expired-on-arrival"
    FETCH_FAILED = "fetch-failed"


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


@message_kind("token.configure")
@dataclass(frozen=True, slots=True)
class TokenConfigure(Message):
    """Fetch tokens from ``{locus_url}/participant/{self_id}/...`` from now
    on. ``generation`` must grow with every change; a configure with an older
    generation is dropped. ``practice`` says whether the practice-session
    token is wanted (panelist and practice session on): only wanted tokens
    are refreshed ahead of expiry; turning it off drops the practice token.
    A new ``self_id`` drops every held token (they were someone else's)."""

    locus_url: str
    self_id: str
    generation: int
    practice: bool = False


@message_kind("token.seed")
@dataclass(frozen=True, slots=True)
class TokenSeed(Message):
    """Tokens from the join response (``self.datachannelToken``,
    ``self.practiceSessionDatachannelToken``); stored only if ``generation``
    is the current one and the token does not count as expired."""

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("default_token", "practice_token")

    generation: int
    default_token: str | None = field(default=None, repr=False)
    practice_token: str | None = field(default=None, repr=False)


@message_kind("token.forget")
@dataclass(frozen=True, slots=True)
class TokenForget(Message):
    """The meeting left (or ended): drop every token and stop refreshing.
    ``generation`` is the meeting's generation after leaving; anything
    started before it is stale."""

    generation: int
    reason: str = UnavailableReason.MEETING_LEFT


@message_kind("token.ensure")
@dataclass(frozen=True, slots=True)
class TokenEnsure(Message):
    """Make sure a token of ``session_type`` is held; answered by a tell to
    the sender: :class:`TokenHeld` or :class:`TokenUnavailable`."""

    session_type: str
    request_id: str


@message_kind("token.held")
@dataclass(frozen=True, slots=True)
class TokenHeld(Message):
    """A token of ``session_type`` is held, valid until ``expires_at`` (unix
    seconds, the JWT's ``exp``). Carries no secret."""

    session_type: str
    request_id: str
    expires_at: float
