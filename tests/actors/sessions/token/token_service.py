"""A small token endpoint over real HTTP, for the client's edge cases.

``GET /locus/{meeting}/participant/{self}[/practiceSession]/datachannel/token``
answers ``{"datachannelToken": <JWT, exp = now + ttl>}`` when the request
carries ``Authorization: Bearer <anything>``, else 401. Scripted answers
(``script``) replace the next responses with a raw status and body, which
is how a test gets a 500, a body that is not JSON or one without a token.
Requests are recorded with their headers, the Authorization value replaced
by ``"present"``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from aiohttp import web

from ops.served_app import ServedApp
from tests.actors.sessions.token.jwts import make_jwt


class TokenService:
    def __init__(self, ttl_s: float = 3600.0) -> None:
        self.ttl_s = ttl_s
        self.requests: list[dict[str, Any]] = []
        self.issued: list[str] = []
        self._script: deque[tuple[int, str]] = deque()
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_get("/locus/{meeting}/participant/{self_id}/datachannel/token", self._token)
        app.router.add_get("/locus/{meeting}/participant/{self_id}/practiceSession/datachannel/token", self._token)
        self.server = ServedApp(app, name="token-service")

    def start(self) -> TokenService:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def locus_url(self, meeting: str) -> str:
        return f"{self.server.url}/locus/{meeting}"

    def script(self, status: int, body: str) -> None:
        with self._lock:
            self._script.append((status, body))

    async def _token(self, request: web.Request) -> web.Response:
        headers = {k: ("present" if k.lower() == "authorization" else v) for k, v in request.headers.items()}
        with self._lock:
            self.requests.append({"path": request.path, "headers": headers})
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            return web.Response(status=scripted[0], text=scripted[1], content_type="application/json")
        if not request.headers.get("Authorization", "").startswith("Bearer ") or \
                len(request.headers["Authorization"]) <= len("Bearer "):
            return web.json_response({"error": "unauthorized"}, status=401)
        session = "llm-practice-session" if "/practiceSession/" in request.path else "llm-default-session"
        token = make_jwt(time.time() + self.ttl_s, sub=request.match_info["self_id"], aud=session)
        with self._lock:
            self.issued.append(token)
        return web.json_response({"datachannelToken": token})
