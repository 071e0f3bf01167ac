"""The network seam of a data-channel session: register over HTTP, sockets.

The session's core never sees a socket; its shell talks to a
:class:`DataChannelConnector`:

* ``await connector.register(url, device_url, token)`` -> :class:`Registration`
  or :class:`RegisterError` (the HTTP status, 0 when no response came);
* ``connector.socket(url, events)`` -> a :class:`DataChannelSocket` that is
  not open yet (no I/O happens here, so the shell can keep the handle before
  anything can arrive on it); ``await sock.open()`` opens it or raises
  :class:`SocketOpenError` with the close code the failure stands for. Once
  open, every text frame goes to ``events.on_frame`` and the end of the
  socket, once, to ``events.on_close`` (both called on the node's I/O loop;
  they must only hand the news to the actor as a message).

``send``, ``close`` and ``abort`` may be called from any thread and never
block; calling them on a socket that is closed, or not open yet, is
harmless (a close before the open finishes closes it as soon as it opens).

:class:`WebSocketConnector` is the real one: aiohttp for register, the
``websockets`` asyncio client for sockets, both on the node's I/O loop. One
connector serves every session of a node. It keeps nothing per socket
beyond the connection itself and a reader task, so thousands of sessions fit
in one process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from actors.io import IoLoop
from bus.errors import HuddleError

__all__ = [
    "DataChannelConnector",
    "DataChannelSocket",
    "RegisterError",
    "Registration",
    "SocketEvents",
    "SocketOpenError",
    "WebSocketConnector",
]

log = logging.getLogger("huddle.datachannel.connector")

_MAX_REASON = 120
_MAX_FRAME = 1 << 20


@dataclass(frozen=True, slots=True)
class Registration:
    """A 200 answer to register. Empty ``websocket_url`` when the answer had
    none (the session decides that this is an error)."""

    websocket_url: str
    binding: str = ""


class RegisterError(HuddleError):
    """Register failed: ``status`` is the HTTP status, 0 if no response came."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason[:_MAX_REASON]
        super().__init__(f"register failed: {status} {self.reason}".strip())


class SocketOpenError(HuddleError):
    """A socket could not be opened; ``code`` is the close code this stands
    for: ``4000 + status`` for an HTTP 4xx refusal of the handshake (the
    ``aliasHttpStatus`` convention), 1006 for anything else."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason[:_MAX_REASON]
        super().__init__(f"open failed: {code} {self.reason}".strip())


class SocketEvents(Protocol):
    """Where a socket reports; called on the I/O loop thread."""

    def on_frame(self, text: str) -> None: ...

    def on_close(self, code: int, reason: str) -> None: ...


class DataChannelSocket(Protocol):
    async def open(self) -> None:
        """Open the socket (raises :class:`SocketOpenError`)."""

    def send(self, text: str) -> None:
        """Queue one text frame (frames go out in the order sent)."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (the connection is dropped if the
        close frame does not come within the connector's close timeout)."""

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake."""


class DataChannelConnector(Protocol):
    async def register(self, url: str, device_url: str, token: str | None) -> Registration: ...

    def socket(self, url: str, events: SocketEvents) -> DataChannelSocket: ...

    def close(self) -> None:
        """Release what the connector shares between sessions (HTTP pool)."""


# -- the real one ---------------------------------------------------------------------


class WebSocketConnector:
    """Register over aiohttp and sockets over ``websockets``, on ``io``."""

    def __init__(self, io: IoLoop, *, register_timeout: float = 10.0, open_timeout: float = 10.0,
                 close_timeout: float = 2.0, http_connections: int = 256) -> None:
        self.io = io
        self.register_timeout = register_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self._http_connections = http_connections
        self._http: Any = None  # aiohttp.ClientSession, made on the loop at first use

    async def register(self, url: str, device_url: str, token: str | None) -> Registration:
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._http_connections),
                timeout=aiohttp.ClientTimeout(total=self.register_timeout))
        headers = {"Data-Channel-Auth-Token": token} if token else {}
        try:
            async with self._http.post(url, json={"deviceUrl": device_url}, headers=headers) as response:
                if response.status != 200:
                    raise RegisterError(response.status, _error_text(await response.text()))
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except aiohttp.ClientError as exc:
            raise RegisterError(0, type(exc).__name__) from exc
        except TimeoutError as exc:
            raise RegisterError(0, "timeout") from exc
        if not isinstance(body, dict):
            return Registration("")
        ws_url, binding = body.get("webSocketUrl"), body.get("binding")
        return Registration(ws_url if isinstance(ws_url, str) else "", binding if isinstance(binding, str) else "")

    def socket(self, url: str, events: SocketEvents) -> WebSocket:
        return WebSocket(self, url, events)

    def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            try:
                self.io.submit(http.close())
            except HuddleError:
                pass  # the loop is gone, and the pool with it


def _error_text(text: str) -> str:
    return " ".join(text.split())[:_MAX_REASON]


class WebSocket:
    """One ``websockets`` client connection, reporting to ``events``."""

    __slots__ = ("_close_request", "_connector", "_dropped", "_events", "_reader", "_url", "_ws")

    def __init__(self, connector: WebSocketConnector, url: str, events: SocketEvents) -> None:
        self._connector = connector
        self._url = url
        self._events = events
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._close_request: tuple[int, str] | None = None
        self._dropped = False

    async def open(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        c = self._connector
        try:
            ws = await connect(self._url, compression=None, ping_interval=None, open_timeout=c.open_timeout,
                               close_timeout=c.close_timeout, max_size=_MAX_FRAME, max_queue=16,
                               user_agent_header="huddle-datachannel")
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise SocketOpenError(4000 + status if 400 <= status < 500 else 1006, f"HTTP {status}") from exc
        except Exception as exc:  # noqa: BLE001 - every way of not opening is a failed open
            raise SocketOpenError(1006, type(exc).__name__) from exc
        self._ws = ws
        self._url = ""  # not needed any more
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        if self._dropped:
            ws.transport.abort()
        elif self._close_request is not None:
            await self._close(*self._close_request)

    async def _read(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                self._events.on_frame(message if isinstance(message, str) else message.decode("utf-8", "replace"))
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise  # the node is going away: nobody to tell
        except Exception:  # noqa: BLE001 - a reader must always report the end
            log.exception("data-channel reader failed")
            ws.transport.abort()
        await ws.wait_closed()
        self._events.on_close(ws.close_code or 1006, ws.close_reason or "")

    def send(self, text: str) -> None:
        self._submit(self._send(text), tracked=False)

    async def _send(self, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass  # the reader reports the close

    def close(self, code: int, reason: str) -> None:
        # Not a tracked request: a close whose frame never comes lasts until
        # the close timeout (or the session's own forced close), and an actor
        # must not look busy meanwhile.
        self._submit(self._close(code, reason), tracked=False)

    async def _close(self, code: int, reason: str) -> None:
        ws = self._ws
        if ws is None:
            self._close_request = (code, reason)  # applied when the open finishes
            return
        await ws.close(code, reason)

    def abort(self) -> None:
        try:
            self._connector.io.call_soon(self._abort)
        except (HuddleError, RuntimeError):
            pass  # the node's loop is closed: the socket went with it

    def _abort(self) -> None:
        self._dropped = True
        if self._ws is not None:
            self._ws.transport.abort()

    def _submit(self, coro: Any, *, tracked: bool) -> None:
        try:
            self._connector.io.submit(coro, tracked=tracked)
        except HuddleError:
            pass  # the node's loop is closed: the socket went with it
