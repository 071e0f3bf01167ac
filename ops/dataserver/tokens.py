"""Data-channel tokens the reference service issues and checks.

A token is a JWT signed with HS256 under the service's secret, with
``sub`` = the participant (``self``) id, ``aud`` = the session type
(``llm-default-session`` / ``llm-practice-session``), ``iat``, ``exp``
(seconds since the epoch, as JWTs have it) and ``meeting``.

Checking a token never consults a clock of its own: the caller passes
``now``, so the same token can be judged against any time in tests.
"""

from __future__ import annotations

import secrets
import uuid
from enum import Enum
from typing import Any

import jwt

__all__ = ["TokenAuthority", "TokenStatus"]

ALGORITHM = "HS256"


class TokenStatus(str, Enum):
    """What a presented token turned out to be. ``VALID`` is the only good one."""

    ABSENT = "absent"
    VALID = "valid"
    EXPIRED = "expired"
    WRONG_AUDIENCE = "wrong_audience"
    INVALID = "invalid"


class TokenAuthority:
    """Issues and checks data-channel JWTs under one secret.

    The secret is random per instance unless given; it never appears in a
    repr, a log line or the service's state.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None = None) -> None:
        self._secret = secret or secrets.token_urlsafe(32)

    def __repr__(self) -> str:
        return "TokenAuthority(secret=<hidden>)"

    def issue(self, *, subject: str, audience: str, meeting: str, now: float, ttl_s: float) -> str:
        """A token for ``subject`` on session type ``audience`` that expires
        at ``now + ttl_s`` (a negative ``ttl_s`` gives an expired token)."""
        claims: dict[str, Any] = {
            "sub": subject,
            "aud": audience,
            "meeting": meeting,
            "iat": int(now),
            "exp": int(now + ttl_s),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def holder(self, token: str | None) -> tuple[str, str] | None:
        """Whom a token was issued to, ``(meeting, participant)``, if its
        signature checks (whatever its audience or expiry); else None.
        Neither is a secret: both are ids a meeting's URLs carry."""
        if not token:
            return None
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                         "verify_aud": False})
        except jwt.InvalidTokenError:
            return None
        return str(claims.get("meeting", "")), str(claims.get("sub", ""))

    def check(self, token: str | None, *, audience: str, now: float) -> TokenStatus:
        """Judge ``token`` for session type ``audience`` at time ``now``:
        signature first, then audience, then ``exp`` (expired when
        ``exp <= now``)."""
        if not token:
            return TokenStatus.ABSENT
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False,
                         "require": ["exp", "aud", "sub"]},
            )
        except jwt.InvalidTokenError:
            return TokenStatus.INVALID
        if claims.get("aud") != audience:
            return TokenStatus.WRONG_AUDIENCE
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            return TokenStatus.INVALID
        if exp <= now:
            return TokenStatus.EXPIRED
        return TokenStatus.VALID
