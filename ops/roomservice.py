"""A stand-in room service over real HTTP (aiohttp), for tests and demos.

What a call-transfer cleanup needs of a room service, and a window to look
at what happened:

``DELETE /rooms/{room}``
    with ``Authorization: Bearer <credentials>``: 200 ``{"deleted": room}``;
    wrong or missing credentials 401 (counted in ``refused``); unknown room
    404. Every deletion is recorded with its attribution headers
    (``X-Huddle-*``); credentials are never recorded.
``POST /rooms`` ``{"room": name}``
    (same credentials) creates a room: 201.
``GET /control/state``
    ``{"rooms": [...], "deletions": [{"room", "headers"}], "refused": n,
    "requests": n}``.
``POST /control/faults`` ``{"fail_next": {"status": 503, "count": 1}}``
    the next ``count`` authorised deletions answer ``status`` instead.

In-process: ``RoomServiceStandIn(credentials, rooms=[...]).start()`` serves
on a real port from its own thread (``.url``, ``.state()``, ``.stop()``).
As a process: ``huddle roomservice`` (see :mod:`ops.roomservice_command`).
"""

from __future__ import annotations

import hmac
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, Self

from aiohttp import web

from ops.served_app import ServedApp

__all__ = ["RoomServiceStandIn"]

ATTRIBUTION_PREFIX = "x-huddle-"


class RoomServiceStandIn:
    def __init__(self, credentials: str, rooms: Iterable[str] = (), *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not credentials:
            raise ValueError("the room service needs credentials to check")
        self._credentials = credentials.encode()
        self._lock = threading.Lock()
        self._rooms: set[str] = set(rooms)
        self._deletions: list[dict[str, Any]] = []
        self._refused = 0
        self._requests = 0
        self._fail_next: deque[int] = deque()
        app = web.Application()
        app.router.add_delete("/rooms/{room}", self._delete)
        app.router.add_post("/rooms", self._create)
        app.router.add_get("/control/state", self._state)
        app.router.add_post("/control/faults", self._faults)
        self.server = ServedApp(app, host=host, port=port, name="roomservice")

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"rooms": sorted(self._rooms), "deletions": [dict(d) for d in self._deletions],
                    "refused": self._refused, "requests": self._requests}

    def fail_next(self, status: int, count: int = 1) -> None:
        with self._lock:
            self._fail_next.extend([status] * count)

    # -- handlers ----------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        ok = given.startswith("Bearer ") and hmac.compare_digest(given[len("Bearer "):].encode(), self._credentials)
        if not ok:
            self._refused += 1
        return ok

    async def _delete(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        with self._lock:
            self._requests += 1
            if not self._authorised(request):
                return web.json_response({"error": "unauthorized"}, status=401)
            if self._fail_next:
                return web.json_response({"error": "injected"}, status=self._fail_next.popleft())
            if room not in self._rooms:
                return web.json_response({"error": f"no room {room}"}, status=404)
            self._rooms.discard(room)
            attribution = {k: v for k, v in request.headers.items() if k.lower().startswith(ATTRIBUTION_PREFIX)}
            self._deletions.append({"room": room, "headers": attribution})
        return web.json_response({"deleted": room})

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        room = body.get("room") if isinstance(body, dict) else None
        if not isinstance(room, str) or not room:
            return web.json_response({"error": "room must be a non-empty string"}, status=400)
        with self._lock:
            self._requests += 1
            if not self._authorised(request):
                return web.json_response({"error": "unauthorized"}, status=401)
            self._rooms.add(room)
        return web.json_response({"room": room}, status=201)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            fail = body["fail_next"]
            status, count = int(fail["status"]), int(fail.get("count", 1))
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"fail_next": {"status": N, "count": N}}'}, status=400)
        self.fail_next(status, count)
        return web.json_response({"fail_next": status, "count": count})
