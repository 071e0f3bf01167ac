"""The reference data-channel service's I/O: HTTP (aiohttp) and WebSockets
(``websockets``) on one asyncio loop, around a :class:`DataService`.

Everything decided is decided by the service; this module only parses
requests, feeds them in, and carries out the returned actions. Per socket it
holds the connection object and the one handler task ``websockets`` runs;
no keepalive task (the clients ping at the application level), no
compression, and frames are written without a task of their own, so a
process holds thousands of sockets.

Withholding the close frame (``withhold.close_frame``): when a client starts
the closing handshake, its close frame is not answered and the TCP
connection is left open, so the client must force the close itself; the
service aborts such a connection after :data:`UNANSWERED_CLOSE_ABORT_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from ops.dataserver.model import (
    Action,
    BadControlRequest,
    CallLater,
    StartClose,
    DataService,
    DropSocket,
    HttpAnswer,
    WriteFrame,
)
from ops.dataserver.tokens import TokenAuthority

__all__ = ["DataServer"]

log = logging.getLogger("huddle.dataserver")

UNANSWERED_CLOSE_ABORT_S = 10.0
"""A connection whose close frame was withheld is aborted after this long."""

CLOSE_TIMEOUT_S = 5.0
"""How long a server-started close waits for the client's close frame."""

LISTEN_BACKLOG = 4096


class RelayConnection(ServerConnection):
    """A server connection that knows its socket id, who ended it, and can
    leave a client's close frame unanswered."""

    socket_id: str | None = None
    ended_by: str | None = None
    withhold_close_reply: Callable[[], bool] = staticmethod(lambda: False)

    def send_data(self) -> None:
        protocol = self.protocol
        if protocol.close_rcvd_then_sent and self.ended_by in (None, "client-unanswered") \
                and self.withhold_close_reply():
            # The echo of the client's close frame (and our EOF) are queued:
            # discard them, keep the TCP connection open.
            protocol.data_to_send()
            if self.ended_by is None:
                self.ended_by = "client-unanswered"
                self.loop.call_later(UNANSWERED_CLOSE_ABORT_S, self.transport.abort)
            return
        super().send_data()


class DataServer:
    """The reference service, started and stopped on the running loop.

    After :meth:`start`, ``http_url`` and ``ws_url`` are where it listens
    (ports chosen by the OS when given as 0).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        ws_port: int = 0,
        token_secret: str | None = None,
        token_ttl_s: float = 3600.0,
        require_token: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``wall``: the clock the service's core reads (seconds since the
        epoch): a simulated world passes its own."""
        self.host = host
        self._wall = wall
        self._http_port = http_port
        self._ws_port = ws_port
        self.service = DataService(ws_base="", authority=TokenAuthority(token_secret),
                                   require_token=require_token, token_ttl_s=token_ttl_s)
        self._connections: dict[str, RelayConnection] = {}
        self._tasks: dict[asyncio.Task[Any], None] = {}  # in the order started
        self._held: dict[asyncio.Task[Any], None] = {}
        """HTTP handlers holding their answer back (``*_delay_s`` faults), in the order they began to."""
        self._ws_server: Server | None = None
        self._runner: web.AppRunner | None = None
        self.http_url = ""
        self.ws_url = ""

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        service = self.service

        class Connection(RelayConnection):
            withhold_close_reply = staticmethod(lambda: service.faults.withhold_close_frame)

        self._ws_server = await serve(
            self._handle_socket,
            self.host,
            self._ws_port,
            compression=None,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=CLOSE_TIMEOUT_S,
            server_header=None,
            create_connection=Connection,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )
        ws_port = self._ws_server.sockets[0].getsockname()[1]
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._http_port, reuse_address=True, backlog=LISTEN_BACKLOG)
        await site.start()
        http_port = self._runner.addresses[0][1]
        advertised = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        self.http_url = f"http://{advertised}:{http_port}"
        self.ws_url = f"ws://{advertised}:{ws_port}"
        self.service.ws_base = self.ws_url
        self.service.http_base = self.http_url

    async def stop(self) -> None:
        """Stop as a relay going away does: first no more registers (answers
        held back by a delay are given up, the HTTP side stops listening),
        then every socket closes (1001), in the order they opened. In the
        other order a client whose socket closed could register again with
        this instance on its way out and open its socket on the next one,
        which knows nothing of that binding (4400, and the session gives up:
        found by the simulation). (websockets' server alone closes its
        sockets in the order of a set, which differs from run to run; a
        simulated world replays a run exactly.)"""
        for task in list(self._held):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        closing = [asyncio.ensure_future(conn.close(1001)) for conn in list(self._connections.values())]
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        await asyncio.gather(*closing, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def ready_info(self, pid: int) -> dict[str, Any]:
        return {"http": self.http_url, "ws": self.ws_url, "pid": pid}

    # -- carrying out actions ----------------------------------------------

    def perform(self, actions: Iterable[Action]) -> None:
        loop = asyncio.get_running_loop()
        for action in actions:
            conn = self._connections.get(action.socket)
            if conn is None:
                continue
            if isinstance(action, WriteFrame):
                broadcast([conn], json.dumps(action.frame, separators=(",", ":")))
            elif isinstance(action, StartClose):
                if conn.ended_by is None:
                    conn.ended_by = "server"
                self._spawn(conn.close(action.code, action.reason))
            elif isinstance(action, DropSocket):
                conn.ended_by = "drop"
                conn.transport.abort()
            elif isinstance(action, CallLater):
                loop.call_later(action.delay, self._replacement_deadline, action.socket)
            else:  # pragma: no cover - every action type is handled above
                raise TypeError(f"unknown action {action!r}")

    async def _respond(self, answer: HttpAnswer) -> web.Response:
        """The answer, after its delay (a fault). A held answer is given up
        when the service stops, so a stop never waits out a delay."""
        if answer.delay > 0:
            task = asyncio.current_task()
            assert task is not None
            self._held[task] = None
            try:
                await asyncio.sleep(answer.delay)
            finally:
                self._held.pop(task, None)
        return web.json_response(dict(answer.body), status=answer.status)

    def _replacement_deadline(self, socket_id: str) -> None:
        self.perform(self.service.replacement_deadline(socket_id))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks[task] = None
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    # -- WebSocket ----------------------------------------------------------

    async def _handle_socket(self, conn: ServerConnection) -> None:
        assert isinstance(conn, RelayConnection) and conn.request is not None
        service = self.service
        record, actions = service.open_socket(conn.request.path, self._wall())
        conn.socket_id = record.id
        self._connections[record.id] = conn
        try:
            self.perform(actions)
            if record.refused is None:
                async for message in conn:
                    self.perform(service.receive(record.id, message, self._wall()))
            await conn.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            self._connections.pop(record.id, None)
            service.socket_closed(record.id, conn.close_code, conn.close_reason or "", _ended_by(conn))

    # -- HTTP ---------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[_bad_request_as_json])
        app.add_routes([
            web.post("/datachannel/{meeting}", self._register_default),
            web.post("/datachannel/{meeting}/practice", self._register_practice),
            web.get("/locus/{meeting}", self._locus),
            web.get("/locus/{meeting}/participant/{self}/datachannel/token", self._token_default),
            web.get("/locus/{meeting}/participant/{self}/practiceSession/datachannel/token",
                    self._token_practice),
            web.get("/control/state", self._state),
            web.post("/control/reset", self._reset),
            web.post("/control/faults", self._faults),
            web.post("/control/send", self._send),
            web.post("/control/shutdown", self._shutdown),
            web.post("/control/mint_token", self._mint_token),
        ])
        return app

    async def _register_default(self, request: web.Request) -> web.Response:
        return await self._register(request, DEFAULT_SESSION)

    async def _register_practice(self, request: web.Request) -> web.Response:
        return await self._register(request, PRACTICE_SESSION)

    async def _register(self, request: web.Request, session: str) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        answer = self.service.register(request.match_info["meeting"], session, body,
                                       request.headers.get("Data-Channel-Auth-Token"), self._wall())
        return await self._respond(answer)

    async def _locus(self, request: web.Request) -> web.Response:
        return await self._respond(self.service.locus(request.match_info["meeting"]))

    async def _token_default(self, request: web.Request) -> web.Response:
        return await self._token(request, DEFAULT_SESSION)

    async def _token_practice(self, request: web.Request) -> web.Response:
        return await self._token(request, PRACTICE_SESSION)

    async def _token(self, request: web.Request, session: str) -> web.Response:
        answer = self.service.token(request.match_info["meeting"], request.match_info["self"], session,
                                    dict(request.headers), self._wall())
        return await self._respond(answer)

    async def _state(self, request: web.Request) -> web.Response:
        asked = request.query.get("detail", "1")
        detail = "open" if asked == "open" else asked not in ("0", "false", "summary")
        return web.json_response(self.service.snapshot(detail=detail))

    async def _reset(self, request: web.Request) -> web.Response:
        self.perform(self.service.reset())
        return web.json_response({"reset": True})

    async def _faults(self, request: web.Request) -> web.Response:
        result, actions = self.service.apply_faults(await _json_body(request))
        self.perform(actions)
        return web.json_response(result)

    async def _send(self, request: web.Request) -> web.Response:
        reached, actions = self.service.push(await _json_body(request))
        self.perform(actions)
        return web.json_response({"sent": reached})

    async def _shutdown(self, request: web.Request) -> web.Response:
        reached, actions = self.service.shutdown(await _json_body(request))
        self.perform(actions)
        return web.json_response({"sent": reached})

    async def _mint_token(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.mint(await _json_body(request), self._wall()))


def _ended_by(conn: RelayConnection) -> str:
    if conn.ended_by == "client-unanswered":
        return "client"
    if conn.ended_by is not None:
        return conn.ended_by
    if conn.protocol.close_rcvd_then_sent:
        return "client"
    return "lost"


async def _json_body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except ValueError as exc:
        raise BadControlRequest(f"body is not JSON: {exc}") from exc


@web.middleware
async def _bad_request_as_json(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadControlRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
