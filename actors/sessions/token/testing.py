"""A fake :class:`~actors.sessions.token.http.TokenEndpoint` for testing the token
actor (and what depends on it) in the test kit, without a network.

::

    from actors.sessions.token.testing import FakeTokenEndpoint, fake_jwt

    endpoint = FakeTokenEndpoint()
    endpoint.answer(fake_jwt(exp=kit.clock.wall() + 3600), ServiceRefused("no", status=401))
    kit.spawn(token_address("m1"), TokenActor, endpoint, Secret("user-token"))

Each fetch takes the next scripted answer (a token to return, or a
:class:`~actors.sessions.token.http.ServiceError` to raise) at the moment it is
called; with nothing scripted it raises ``ServiceUnreachable``. Every
fetch is recorded in ``calls`` as a :class:`FetchCall`. Fetches answer at
once, so ``kit.settle()`` covers them, unless the test holds one in flight
with a gate (see :class:`actors.runtime.testkit.Gate`)::

    gate = endpoint.hold()              # the next fetch
    ...                                 # something asks for a token
    call = gate.wait_held(timeout=5)    # the FetchCall
    kit.settle_actors()
    ...                                 # move the actor on meanwhile
    gate.release()                      # or release(token), fail(ServiceRefused(...))
    kit.settle()
"""

from __future__ import annotations

import base64
import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.runtime.testkit import Gate, Gates, Timeout
from actors.sessions.service_errors import ServiceError, ServiceUnreachable

__all__ = ["FakeTokenEndpoint", "FetchCall", "fake_jwt"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(exp: float | None, **claims: Any) -> str:
    """An unsigned JWT (``alg: none``) carrying ``exp`` (unix seconds; left
    out when None) and ``claims``: the client only ever reads ``exp``."""
    payload = dict(claims)
    if exp is not None:
        payload["exp"] = exp
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


@dataclass
class FetchCall:
    """One fetch the actor made (headers carry credentials: kept out of reprs)."""

    url: str
    headers: dict[str, str] = field(repr=False)


class FakeTokenEndpoint:
    """A scripted, in-memory token endpoint; one may serve many actors."""

    def __init__(self, *answers: str | ServiceError) -> None:
        self.calls: list[FetchCall] = []
        self.gates = Gates("fetch")
        self._script: deque[str | ServiceError] = deque(answers)
        self._cond = threading.Condition()

    def answer(self, *answers: str | ServiceError) -> None:
        """Script the answers of the next fetches, in turn."""
        with self._cond:
            self._script.extend(answers)

    def hold(self, operation: str = "fetch") -> Gate:
        """A gate that holds the next fetch in flight until the test lets it go."""
        return self.gates.hold(operation)

    def wait_calls(self, n: int, timeout: float = 5.0) -> list[FetchCall]:
        """Wait until at least ``n`` fetches were made; all calls so far."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= n, timeout):
                raise Timeout(f"expected {n} token fetches within {timeout:g}s, saw {len(self.calls)}")
            return list(self.calls)

    async def fetch(self, url: str, headers: Mapping[str, str]) -> str:
        call = FetchCall(url, dict(headers))
        with self._cond:
            self.calls.append(call)
            scripted: str | BaseException = (
                self._script.popleft() if self._script else ServiceUnreachable("nothing scripted"))
            self._cond.notify_all()
        answer = await self.gates.answer("fetch", call, scripted)
        if isinstance(answer, BaseException):
            raise answer
        return answer
