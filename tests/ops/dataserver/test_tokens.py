"""Data-channel JWTs: issued and judged against an explicit time."""

from __future__ import annotations

import jwt
import pytest

from ops.dataserver.tokens import TokenAuthority, TokenStatus

NOW = 1_800_000_000.0
SECRET = "a-secret-long-enough-for-hs256-signing"


def test_issued_token_carries_subject_audience_meeting_and_expiry() -> None:
    authority = TokenAuthority(SECRET)
    token = authority.issue(subject="self-1", audience="llm-practice-session", meeting="m1", now=NOW, ttl_s=90)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="llm-practice-session",
                        options={"verify_exp": False, "verify_iat": False})
    assert (claims["sub"], claims["aud"], claims["meeting"]) == ("self-1", "llm-practice-session", "m1")
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW + 90))


@pytest.mark.parametrize(("at", "audience", "status"), [
    (NOW, "llm-default-session", TokenStatus.VALID),
    (NOW + 59, "llm-default-session", TokenStatus.VALID),
    (NOW + 60, "llm-default-session", TokenStatus.EXPIRED),
    (NOW, "llm-practice-session", TokenStatus.WRONG_AUDIENCE),
])
def test_check_judges_audience_then_expiry_at_the_given_time(at: float, audience: str, status: TokenStatus) -> None:
    authority = TokenAuthority(SECRET)
    token = authority.issue(subject="me", audience="llm-default-session", meeting="m1", now=NOW, ttl_s=60)
    assert authority.check(token, audience=audience, now=at) is status


def test_foreign_malformed_incomplete_and_missing_tokens() -> None:
    authority = TokenAuthority(SECRET)
    foreign = TokenAuthority().issue(subject="me", audience="llm-default-session", meeting="", now=NOW, ttl_s=60)
    no_exp = jwt.encode({"sub": "me", "aud": "llm-default-session"}, SECRET, algorithm="HS256")
    for token in (foreign, "a.b.c", "garbage", no_exp):
        assert authority.check(token, audience="llm-default-session", now=NOW) is TokenStatus.INVALID
    assert authority.check(None, audience="llm-default-session", now=NOW) is TokenStatus.ABSENT
    assert authority.check("", audience="llm-default-session", now=NOW) is TokenStatus.ABSENT


def test_repr_hides_the_secret() -> None:
    assert SECRET not in repr(TokenAuthority(SECRET))
