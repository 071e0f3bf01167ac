"""The token actor's seam to the token endpoint, and the real client.

The actor never sees a socket: it hands :meth:`TokenEndpoint.fetch` a URL
and headers (on the node's I/O loop, through ``run_io``) and gets back the
token or a :class:`ServiceError`. Tests plug in a scripted endpoint; the
node plugs in :class:`HttpTokenEndpoint` (aiohttp).

Errors (each carries the :class:`~actors.sessions.token.machine.Failure` cause
the core acts on, and the HTTP status when there was one)::

    ServiceError
    ├── ServiceRefused              401 / 403: retried once, 2 s later
    ├── ServiceStatus       any other non-200 status
    ├── ServiceUnreachable  no answer: connection failed, timed out
    └── BadServiceResponse          200, but no string ``datachannelToken``

Nothing here logs a header or a body: the request carries the user's
credentials and the response the token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from actors.sessions.service_errors import BadServiceResponse, ServiceError, ServiceRefused, ServiceStatus, ServiceUnreachable

__all__ = ["HttpTokenEndpoint", "TokenEndpoint"]

DEFAULT_TIMEOUT_S = 10.0


class TokenEndpoint(Protocol):
    """Where the token actor gets tokens from."""

    async def fetch(self, url: str, headers: Mapping[str, str]) -> str:
        """GET ``url`` with ``headers``; the ``datachannelToken`` of the
        response body, or raises :class:`ServiceError`."""
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
                    raise ServiceRefused(f"token endpoint refused the request ({status})", status=status)
                if status != 200:
                    raise ServiceStatus(f"token endpoint answered {status}", status=status)
                try:
                    body = await response.json(content_type=None)
                except ValueError as exc:
                    raise BadServiceResponse("token response is not JSON", status=status) from exc
        except ServiceError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceUnreachable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        token = body.get("datachannelToken") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise BadServiceResponse("token response has no datachannelToken", status=status)
        return token

    async def close(self) -> None:
        """Close the session of the running loop (call on the node's loop)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
