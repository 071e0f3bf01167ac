"""The token actor's seam to the token endpoint, and the real client.

The actor never sees a socket: it hands :meth:`TokenEndpoint.fetch` a URL
and headers (on the node's I/O loop, through ``run_io``) and gets back the
token or a :class:`TokenFetchError`. Tests plug in a scripted endpoint; the
node plugs in :class:`HttpTokenEndpoint` (aiohttp).

Errors (each carries the :class:`~actors.token.machine.FetchFailure` cause
the core acts on, and the HTTP status when there was one)::

    TokenFetchError
    ├── TokenRefused              401 / 403: retried once, 2 s later
    ├── TokenEndpointStatus       any other non-200 status
    ├── TokenEndpointUnreachable  no answer: connection failed, timed out
    └── BadTokenResponse          200, but no string ``datachannelToken``

Nothing here logs a header or a body: the request carries the user's
credentials and the response the token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from actors.token.machine import FetchFailure
from bus.errors import HuddleError

__all__ = [
    "BadTokenResponse",
    "HttpTokenEndpoint",
    "TokenEndpoint",
    "TokenEndpointStatus",
    "TokenEndpointUnreachable",
    "TokenFetchError",
    "TokenRefused",
]

DEFAULT_TIMEOUT_S = 10.0


class TokenFetchError(HuddleError):
    """A token fetch failed. ``cause`` is a ``FetchFailure`` value; ``status``
    the HTTP status (0 when no response came)."""

    cause: str = FetchFailure.UNREACHABLE

    def __init__(self, detail: str, *, status: int = 0) -> None:
        self.status = status
        super().__init__(detail)


class TokenRefused(TokenFetchError):
    cause = FetchFailure.REFUSED


class TokenEndpointStatus(TokenFetchError):
    def __init__(self, detail: str, *, status: int) -> None:
        super().__init__(detail, status=status)
        self.cause = FetchFailure.http(status)


class TokenEndpointUnreachable(TokenFetchError):
    cause = FetchFailure.UNREACHABLE


class BadTokenResponse(TokenFetchError):
    cause = FetchFailure.BAD_RESPONSE


class TokenEndpoint(Protocol):
    """Where the token actor gets tokens from."""

    async def fetch(self, url: str, headers: Mapping[str, str]) -> str:
        """GET ``url`` with ``headers``; the ``datachannelToken`` of the
        response body, or raises :class:`TokenFetchError`."""
        ...


class HttpTokenEndpoint:
    """:class:`TokenEndpoint` over HTTP (aiohttp).

    One object may serve every token actor of a node. Its client session is
    made on first use on the loop that runs the fetch (the node's I/O loop)
    and belongs to that loop; :meth:`close` (a coroutine, on that loop)
    ends it.
    """

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(timeout=self._timeout)
            self._sessions[loop] = session
        return session

    async def fetch(self, url: str, headers: Mapping[str, str]) -> str:
        try:
            async with self._session().get(url, headers=dict(headers), allow_redirects=False) as response:
                status = response.status
                if status in (401, 403):
                    raise TokenRefused(f"token endpoint refused the request ({status})", status=status)
                if status != 200:
                    raise TokenEndpointStatus(f"token endpoint answered {status}", status=status)
                try:
                    body = await response.json(content_type=None)
                except ValueError as exc:
                    raise BadTokenResponse("token response is not JSON", status=status) from exc
        except TokenFetchError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TokenEndpointUnreachable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        token = body.get("datachannelToken") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise BadTokenResponse("token response has no datachannelToken", status=status)
        return token

    async def close(self) -> None:
        """Close the session of the running loop (call on the node's loop)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
