"""The transfer actor's seam to the room service, and the real client.

:class:`HttpRoomService` is built from a :class:`~actors.sessions.context.JobContext`
and from nothing else: the URL, the credentials and the attribution headers
are the ones the job captured at start. ``DELETE {url}/rooms/{room}`` with
``Authorization: Bearer <credentials>``.

Errors carry the :class:`~actors.sessions.transfer.machine.Failure` cause::

    ServiceError
    ├── ServiceRefused      401 / 403
    ├── ServiceNotFound            404 (gone already)
    ├── ServiceStatus       any other non-2xx
    └── ServiceUnreachable  no answer
"""

from __future__ import annotations

from typing import Protocol, Self
from urllib.parse import quote

import aiohttp

from actors.sessions.context import JobContext, Secret, attribution_headers
from actors.sessions.service_errors import ServiceNotFound, ServiceRefused, ServiceStatus, ServiceUnreachable

__all__ = ["HttpRoomService", "RoomService"]


class RoomService(Protocol):
    async def delete_room(self, room_id: str) -> None:
        """Delete ``room_id``, or raise :class:`ServiceError`."""
        ...


class HttpRoomService:
    """:class:`RoomService` over HTTP. A client session per call: deleting
    a room happens once per transfer, so nothing is kept open between."""

    def __init__(self, url: str, credentials: Secret, headers: dict[str, str] | None = None,
                 *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._credentials = credentials
        self._headers = dict(headers or {})
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @classmethod
    def for_job(cls, job: JobContext, *, timeout_s: float = 10.0) -> Self:
        """The room service of ``job``, as captured at its start."""
        return cls(job.room_service_url, job.room_service_credentials, attribution_headers(job), timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"HttpRoomService({self.url!r})"

    async def delete_room(self, room_id: str) -> None:
        headers = {**self._headers, "Authorization": f"Bearer {self._credentials.reveal()}"}
        url = f"{self.url}/rooms/{quote(room_id, safe='')}"
        try:
            async with (aiohttp.ClientSession(timeout=self._timeout) as session,
                        session.delete(url, headers=headers, allow_redirects=False) as response):
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceUnreachable(f"room service unreachable: {type(exc).__name__}") from exc
        if status in (401, 403):
            raise ServiceRefused(f"room service refused the credentials ({status})", status=status)
        if status == 404:
            raise ServiceNotFound(f"room {room_id!r} not found", status=status)
        if not 200 <= status < 300:
            raise ServiceStatus(f"room service answered {status}", status=status)
