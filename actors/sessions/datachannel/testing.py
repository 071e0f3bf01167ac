"""A fake :class:`~actors.sessions.datachannel.connector.DataChannelConnector` for
testing data-channel sessions in the test kit, without a network.

::

    from actors.sessions.datachannel.testing import FakeConnector

    fake = FakeConnector()
    kit.spawn(session_address("m1", DEFAULT_SESSION), DataChannelSession,
              "m1", DEFAULT_SESSION, device_url, access_token, fake)

**Register** answers from ``register_script`` (a :class:`Registration` to
return or a :class:`RegisterError` to raise, in turn), else with a fresh
binding (``b1``, ``b2``...); every call is recorded in ``registers``.
**Sockets** open unless ``open_script`` says otherwise (a
:class:`SocketOpenError` to raise, ``None`` to open); every socket made is
in ``sockets`` (the newest is ``last``). The test plays the relay service
through a :class:`FakeSocket`: ``push`` a frame, ``buffer_state()``,
``close_from_server``; and reads what the session sent in ``sent``. A
client close is answered with the same close frame unless ``echo_close``
is off (the close frame then never comes).

Both answer at once, so ``kit.settle()`` covers them, unless the test holds
one in flight with a gate (see :class:`actors.runtime.testkit.Gate`)::

    gate = fake.hold("register")        # or "open": the next socket's open
    kit.inject_message(address, Connect(...), sender=owner)
    call = gate.wait_held(timeout=5)    # the RegisterCall (a FakeSocket for "open")
    kit.settle_actors()                 # the session waits for the outcome
    ...                                 # move the session on meanwhile
    gate.release()                      # or release(Registration(...)), fail(RegisterError(...))
    kit.settle()

A close or abort asked for before a socket's open finished makes that open
fail with ``SocketOpenError(1006, "given up before it opened")``, as the
real connector does when it gives up on a queued open.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actors.sessions.datachannel.connector import (
    RegisterError,
    Registration,
    SocketEvents,
    SocketOpenError,
)
from actors.runtime.testkit import Gate, Gates

__all__ = ["FakeConnector", "FakeSocket", "RegisterCall"]


@dataclass
class RegisterCall:
    """One register the session made (the token is kept out of reprs)."""

    url: str
    device_url: str
    token: str | None = field(repr=False)


class FakeSocket:
    """One socket a session asked for; the test is the service at its other end."""

    def __init__(self, connector: FakeConnector, url: str, events: SocketEvents,
                 fail: SocketOpenError | None) -> None:
        self.connector = connector
        self.url = url
        self.events = events
        self._fail = fail
        #: Frames the session sent once the socket was open (decoded JSON).
        self.sent: list[dict[str, Any]] = []
        self.close_requests: list[tuple[int, str]] = []
        self.aborted = False
        self.closed = False
        self.opened = False
        self._given_up = False
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self.opened else "not open"
        return f"FakeSocket({self.url!r}, {state})"

    @property
    def gen(self) -> int:
        """The generation of the session attempt this socket belongs to."""
        return self.events.gen  # type: ignore[attr-defined]

    async def open(self) -> None:
        answer = await self.connector.gates.answer("open", self, self._fail)
        if isinstance(answer, BaseException):
            raise answer
        with self._lock:
            if not self._given_up:
                self.opened = True
        if not self.opened:
            raise SocketOpenError(1006, "given up before it opened")

    # -- the session's side ----------------------------------------------------------

    def send(self, text: str) -> None:
        if self.opened and not self.closed:
            self.sent.append(json.loads(text))

    def close(self, code: int, reason: str) -> None:
        self.close_requests.append((code, reason))
        if self._give_up() and self.connector.echo_close and not self.closed:
            self._end(code, reason)

    def abort(self) -> None:
        self.aborted = True
        if self._give_up() and not self.closed:
            self._end(1006, "")

    def _give_up(self) -> bool:
        """True if the socket is open; else its open is given up."""
        with self._lock:
            if not self.opened:
                self._given_up = True
            return self.opened

    # -- the service's side -----------------------------------------------------------

    def push(self, frame: dict[str, Any], *, sequence: bool = True) -> str:
        """Send ``frame`` from the service (an ``id`` and a sequence number
        are added as the relay does); returns the frame's id."""
        frame = dict(frame)
        frame.setdefault("id", f"srv-{self.gen}-{len(self.sent)}-{next(self.connector.ids)}")
        if sequence:
            frame.setdefault("sequenceNumber", next(self._seq))
        self.events.on_frame(json.dumps(frame))
        return frame["id"]

    def buffer_state(self) -> str:
        """The service's buffer-state frame (what makes a session online)."""
        return self.push({"data": {"eventType": "mercury.buffer_state"}})

    def close_from_server(self, code: int, reason: str = "") -> None:
        self._end(code, reason)

    def _end(self, code: int, reason: str) -> None:
        self.closed = True
        self.events.on_close(code, reason)

    # -- reading -------------------------------------------------------------------------

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f.get("type") == kind]

    def subscriptions(self) -> list[dict[str, Any]]:
        return [f["data"] for f in self.of_type("subchannelSubscriptionRequest")]


class FakeConnector:
    """A scripted, in-memory connector; one may serve many sessions."""

    def __init__(self) -> None:
        self.registers: list[RegisterCall] = []
        self.sockets: list[FakeSocket] = []
        self.register_script: deque[Registration | RegisterError] = deque()
        self.open_script: deque[SocketOpenError | None] = deque()
        self.echo_close = True
        self.closed = False
        self.ids = itertools.count(1)
        self.gates = Gates("register", "open")
        self._bindings = itertools.count(1)
        self._lock = threading.Lock()

    def hold(self, operation: str) -> Gate:
        """A gate that holds the next ``"register"`` or the next socket's
        ``"open"`` in flight until the test lets it go."""
        return self.gates.hold(operation)

    async def register(self, url: str, device_url: str, token: str | None) -> Registration:
        call = RegisterCall(url, device_url, token)
        with self._lock:
            self.registers.append(call)
            scripted = self.register_script.popleft() if self.register_script else None
        if scripted is None:
            binding = f"b{next(self._bindings)}"
            scripted = Registration(f"ws://relay.fake/v1/socket/{binding}", binding)
        answer = await self.gates.answer("register", call, scripted)
        if isinstance(answer, BaseException):
            raise answer
        return answer

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
        """The newest socket."""
        return self.sockets[-1]
