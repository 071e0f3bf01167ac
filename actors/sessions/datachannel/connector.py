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
connector serves every session of a node, and is built for thousands of
them:

* per socket it keeps the connection and nothing else: frames are handed to
  the events as the connection parses them (no reader task, no receive
  queue), and frames to send wait in one node-wide outbox that the loop
  empties in one pass per wake-up (no task per frame);
* at most ``handshakes_at_once`` registers and opening handshakes run at a
  time; the rest queue, so a fleet coming back after a service restart
  waits its turn instead of timing out into longer backoffs;
* sockets go direct, without reading proxy settings from the environment on
  every open, unless ``proxy`` says otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode
from websockets.protocol import State

from actors.runtime.io import IoLoop
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
_MAX_UNSENT = 1 << 20
_OPEN = State.OPEN
#: How long a close request waits for its handshake before it leaves the
#: rest to its task (the frame is written well within it).
CLOSE_FRAME_WAIT_S = 0.25


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


class HandshakeGate:
    """At most ``limit`` holders at a time, the rest waiting in order (an
    ``async with`` gate, like a semaphore). Entering and leaving cost O(1)
    however many wait: Python 3.11's ``asyncio.Semaphore`` scans all its
    waiters on every acquire, which with hundreds of sessions queued after
    a failover was a few percent of the node's loop."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a gate needs room for one at least")
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # the place was handed over as we were cancelled: pass it on
            raise

    async def __aexit__(self, *_exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the place goes straight to the next in line
                return
        self._free += 1


class WebSocketConnector:
    """Register over aiohttp and sockets over ``websockets``, on ``io``."""

    def __init__(self, io: IoLoop, *, register_timeout: float = 10.0, open_timeout: float = 10.0,
                 close_timeout: float = 2.0, handshakes_at_once: int = 256, proxy: str | bool | None = None) -> None:
        self.io = io
        # Sockets go direct unless told otherwise (``True``: the environment's
        # proxy settings, read on every open, which costs more than the open).
        self.proxy = proxy
        self.register_timeout = register_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.handshakes_at_once = handshakes_at_once
        # Made on the loop at first use (both bind to the running loop).
        self._http: Any = None  # aiohttp.ClientSession
        self._gate: HandshakeGate | None = None
        # Frames from every session of the node wait here and go out in one
        # pass on the loop: one wake-up per burst, not a task per frame.
        self._outbox: deque[tuple[WebSocket, str]] = deque()
        self._outbox_lock = threading.Lock()
        self._flush_pending = False

    def _handshake_gate(self) -> HandshakeGate:
        """At most ``handshakes_at_once`` registers and opening handshakes
        run at a time on this node; the rest wait their turn, and their
        timeouts start only when their turn comes. After a service restart
        thousands of sessions come back at once: queueing them here costs a
        wait, failing them on a timeout would cost a backoff step."""
        if self._gate is None:
            self._gate = HandshakeGate(self.handshakes_at_once)
        return self._gate

    async def register(self, url: str, device_url: str, token: str | None) -> Registration:
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.handshakes_at_once),
                timeout=aiohttp.ClientTimeout(total=self.register_timeout))
        headers = {"Data-Channel-Auth-Token": token} if token else {}
        try:
            async with self._handshake_gate(), \
                    self._http.post(url, json={"deviceUrl": device_url}, headers=headers) as response:
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

    def _post(self, sock: WebSocket, text: str) -> None:
        """Queue a frame (any thread); frames leave in the order posted."""
        with self._outbox_lock:
            self._outbox.append((sock, text))
            if self._flush_pending:
                return
            self._flush_pending = True
        try:
            self.io.call_soon(self._flush)
        except (HuddleError, RuntimeError):
            pass  # the node's loop is closed: the sockets went with it

    def _flush(self) -> None:
        with self._outbox_lock:
            batch, self._outbox = self._outbox, deque()
            self._flush_pending = False
        for sock, text in batch:
            sock._write(text)

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

    __slots__ = ("_close_request", "_closing", "_connector", "_dropped", "_events", "_url", "_ws")

    def __init__(self, connector: WebSocketConnector, url: str, events: SocketEvents) -> None:
        self._connector = connector
        self._url = url
        self._events = events
        self._ws: Any = None
        self._closing: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self._close_request: tuple[int, str] | None = None
        self._dropped = False

    async def open(self) -> None:
        c = self._connector
        try:
            async with c._handshake_gate():
                if self._dropped or self._close_request is not None:
                    raise SocketOpenError(1006, "given up before it opened")
                ws = await connect(self._url, compression=None, ping_interval=None, open_timeout=c.open_timeout,
                                   close_timeout=c.close_timeout, max_size=_MAX_FRAME,
                                   user_agent_header="huddle-datachannel", proxy=c.proxy,
                                   create_connection=functools.partial(_RelayConnection, events=self._events))
        except SocketOpenError:
            raise
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise SocketOpenError(4000 + status if 400 <= status < 500 else 1006, f"HTTP {status}") from exc
        except Exception as exc:  # noqa: BLE001 - every way of not opening is a failed open
            raise SocketOpenError(1006, type(exc).__name__) from exc
        self._ws = ws
        self._url = ""  # not needed any more
        if self._dropped:
            ws.transport.abort()
        elif self._close_request is not None:
            await self._close(*self._close_request)

    def send(self, text: str) -> None:
        self._connector._post(self, text)

    def _write(self, text: str) -> None:
        """Write one text frame now (on the loop), through the connection's
        sans-I/O protocol, as ``Connection.send`` does, without a task."""
        ws = self._ws
        if ws is None or ws.protocol.state is not _OPEN:
            return  # not open yet (nothing is sent before it is), or closing: the reader reports the end
        ws.protocol.send_text(text.encode())
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
        if ws.transport.get_write_buffer_size() > _MAX_UNSENT:
            log.warning("data-channel peer stopped reading; dropping the connection")
            ws.transport.abort()

    def close(self, code: int, reason: str) -> None:
        self._submit(self._close(code, reason), tracked=True)

    async def _close(self, code: int, reason: str) -> None:
        """Send the close frame, then leave the handshake to a task of its
        own: the request (tracked, so a stopping node waits for it) lasts
        until the handshake is done or :data:`CLOSE_FRAME_WAIT_S` passed,
        so the frame is on the wire before a stopping node ends its loop,
        while an answer that never comes lasts until the close timeout (or
        the session's forced close) without making the node look busy.
        (It ended after one step of the close task: a close that had to wait
        for a send in progress was cancelled with the loop before writing
        its frame, and the socket outlived the node.)"""
        ws = self._ws
        if ws is None:
            self._close_request = (code, reason)  # applied when the open finishes
            return
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(ws.close(code, reason))
            await asyncio.wait({self._closing}, timeout=CLOSE_FRAME_WAIT_S)

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



class _RelayConnection(ClientConnection):
    """A ``websockets`` client connection that hands every text message
    straight to its socket's events, on the loop, as it is parsed: no reader
    task and no future per frame (the ``recv`` queue is not used). Its end
    is reported once, and only after a successful handshake (a failed one
    is the open's own error)."""

    def __init__(self, protocol: Any, *, events: SocketEvents, **kwargs: Any) -> None:
        super().__init__(protocol, **kwargs)
        self.events: SocketEvents | None = events
        self.parts: list[bytes] | None = None

    def process_event(self, event: Any) -> None:
        if self.response is None:
            super().process_event(event)  # the handshake's response
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if event.fin:
                self._deliver(event.data)
            else:
                self.parts = [bytes(event.data)]
        elif opcode is Opcode.CONT and self.parts is not None:
            self.parts.append(bytes(event.data))
            if event.fin:
                data, self.parts = b"".join(self.parts), None
                self._deliver(data)
        elif opcode is Opcode.PONG:
            super().process_event(event)
        # PING and CLOSE are answered by the protocol itself.

    def _deliver(self, data: bytes | bytearray | memoryview) -> None:
        if self.events is not None:
            self.events.on_frame(bytes(data).decode("utf-8", "replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        events, self.events = self.events, None
        if events is not None and self.response is not None and self.protocol.handshake_exc is None:
            events.on_close(self.close_code or 1006, self.close_reason or "")
