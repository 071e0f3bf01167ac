"""JWTs for tests: HS256, signed with a test key (the client never verifies
signatures; only ``exp`` matters to it)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

TEST_KEY = b"huddle-test-signing-key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(exp: float | None, *, key: bytes = TEST_KEY, **claims: Any) -> str:
    """A signed JWT whose payload is ``claims`` plus ``exp`` (left out when None)."""
    payload = dict(claims)
    if exp is not None:
        payload["exp"] = exp
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
