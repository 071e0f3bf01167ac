"""A scripted in-memory :class:`DataChannelConnector` for shell tests.

Register calls answer at once from a script (default: a fresh binding each
time), so ``kit.settle()`` never waits on them. Sockets open at once unless
scripted to fail; a test plays the relay service through a
:class:`FakeSocket`: ``push`` a frame, ``close_from_server``. A client close
is answered with the same close frame unless ``echo_close`` is off (the
close frame then never comes). Nothing here touches the network; the real
connector is exercised against the reference service elsewhere.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actors.datachannel.connector import (
    RegisterError,
    Registration,
    SocketEvents,
    SocketOpenError,
)


@dataclass
class RegisterCall:
    url: str
    device_url: str
    token: str | None = field(repr=False)


class FakeSocket:
    def __init__(self, connector: FakeConnector, url: str, events: SocketEvents, fail: SocketOpenError | None) -> None:
        self.connector = connector
        self.url = url
        self.events = events
        self._fail = fail
        self.sent: list[dict[str, Any]] = []
        self.close_requests: list[tuple[int, str]] = []
        self.aborted = False
        self.closed = False
        self.opened = False
        self._seq = itertools.count(1)

    @property
    def gen(self) -> int:
        return self.events.gen  # type: ignore[attr-defined]

    async def open(self) -> None:
        if self._fail is not None:
            raise self._fail
        self.opened = True

    # -- client side -----------------------------------------------------------

    def send(self, text: str) -> None:
        if not self.closed:
            self.sent.append(json.loads(text))

    def close(self, code: int, reason: str) -> None:
        self.close_requests.append((code, reason))
        if self.connector.echo_close and not self.closed:
            self._end(code, reason)

    def abort(self) -> None:
        self.aborted = True
        if not self.closed:
            self._end(1006, "")

    # -- the service's side -------------------------------------------------------

    def push(self, frame: dict[str, Any], *, sequence: bool = True) -> str:
        """Send ``frame`` from the service (an ``id`` and a sequence number
        are added like the relay does); returns the frame's id."""
        frame = dict(frame)
        frame.setdefault("id", f"srv-{self.gen}-{len(self.sent)}-{next(self.connector.ids)}")
        if sequence:
            frame.setdefault("sequenceNumber", next(self._seq))
        self.events.on_frame(json.dumps(frame))
        return frame["id"]

    def buffer_state(self) -> str:
        return self.push({"data": {"eventType": "mercury.buffer_state"}})

    def close_from_server(self, code: int, reason: str = "") -> None:
        self._end(code, reason)

    def _end(self, code: int, reason: str) -> None:
        self.closed = True
        self.events.on_close(code, reason)

    # -- reading ---------------------------------------------------------------------

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f.get("type") == kind]

    def subscriptions(self) -> list[dict[str, Any]]:
        return [f["data"] for f in self.of_type("subchannelSubscriptionRequest")]


class FakeConnector:
    def __init__(self) -> None:
        self.registers: list[RegisterCall] = []
        self.sockets: list[FakeSocket] = []
        self.register_script: deque[Registration | RegisterError] = deque()
        self.open_script: deque[SocketOpenError | None] = deque()
        self.echo_close = True
        self.ids = itertools.count(1)
        self._bindings = itertools.count(1)
        self._lock = threading.Lock()
        self.closed = False

    async def register(self, url: str, device_url: str, token: str | None) -> Registration:
        with self._lock:
            self.registers.append(RegisterCall(url, device_url, token))
            scripted = self.register_script.popleft() if self.register_script else None
        if isinstance(scripted, RegisterError):
            raise scripted
        if scripted is not None:
            return scripted
        binding = f"b{next(self._bindings)}"
        return Registration(f"ws://relay.fake/v1/socket/{binding}", binding)

    def socket(self, url: str, events: SocketEvents) -> FakeSocket:
        with self._lock:
            fail = self.open_script.popleft() if self.open_script else None
            sock = FakeSocket(self, url, events, fail)
            self.sockets.append(sock)
        return sock

    def close(self) -> None:
        self.closed = True

    @property
    def last(self) -> FakeSocket:
        return self.sockets[-1]
