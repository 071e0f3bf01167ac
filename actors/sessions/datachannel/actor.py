"""The data-channel session actor: the shell around :mod:`.machine`.

One actor per meeting and session id, at ``datachannel:<meeting>/<session>``
(:func:`~actors.sessions.contracts.datachannel.session_address`). It feeds the core
every message it accepts (see :mod:`actors.sessions.contracts.datachannel`) and
carries out the effects:

* ``Register`` / ``OpenSocket`` run on the node's I/O loop through the
  :class:`~actors.sessions.datachannel.connector.DataChannelConnector`; outcomes,
  frames and closes come back as messages tagged with the attempt's
  generation, from this actor's own address;
* ``Authorize`` builds the authorization frame from the user's access token,
  which only this shell holds (start argument, memory only: never in the
  core's state, a checkpoint, an event or a repr);
* ``Transmit`` / ``CloseSocket`` / ``AbortSocket`` act on the socket of that
  generation, if it is still there. **A close that raises counts as
  closed**: the socket is forgotten and aborted, and the core gets the
  :class:`~actors.sessions.datachannel.machine.SocketClosed` (1006) it would have
  got from the close, so a deliberate disconnect ends offline and the
  failure never crashes the actor. An abort that raises is only reported;
* the common effects (send, emit, timers, checkpoint, answer) as every
  :class:`~actors.runtime.shell.MachineActor` does.

Write-ahead: of the effects of one step, the checkpoint is performed
**first** (the core also lists it first), so when a later effect raises
and the actor crashes, the next incarnation starts from the state the
command asked for, not from the one before it.

After a crash the supervisor starts a new incarnation at the same address
with the last checkpoint (owner, wanted connection, subscriptions,
watchers). It tells its owner it restarted (``reason`` ``restored``, with
its incarnation), so the owner re-asserts its complete wanted state; with
the ``await_owner`` option it waits that long for the owner before acting
on the checkpoint alone, otherwise it reconnects and resubscribes at once.
Its generations start above the old incarnation's, so nothing the old
sockets still say is taken for news. Sockets are aborted when the actor
crashes and closed (1001) when it stops.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from typing import Any

from actors.runtime.actor import ActorContext
from actors.sessions.datachannel import machine
from actors.sessions.datachannel.connector import (
    DataChannelConnector,
    DataChannelSocket,
    RegisterError,
    Registration,
    SocketOpenError,
)
from actors.sessions.datachannel.machine import (
    AbortSocket,
    Authorize,
    CloseSocket,
    OpenSocket,
    Register,
    Registered,
    RegisterFailed,
    SessionConfig,
    ChannelState,
    SocketClosed,
    SocketFrame,
    SocketOpened,
    Transmit,
)
from actors.runtime.io import Outcome
from actors.runtime.effects import Effect, Emit
from actors.runtime.shell import MachineActor
from actors.runtime.node import Node
from actors.runtime.tracing import in_trace
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["DataChannelSession"]

log = logging.getLogger("huddle.datachannel.session")

_COMPACT = (",", ":")


class DataChannelSession(MachineActor):
    """``DataChannelSession(ctx, meeting_id, session_id, device_url,
    access_token, connector, *, seed=None, **options)``; ``options`` are
    :class:`~actors.sessions.datachannel.machine.SessionConfig` fields (timeouts,
    ``max_attempts``, ``jitter``...)."""

    public_kinds = frozenset(machine.HANDLED_KINDS) - frozenset(machine.INTERNAL_KINDS)
    #: Register and socket outcomes, frames and timers: only the session itself sends them.
    internal_kinds = frozenset(machine.INTERNAL_KINDS)

    def __init__(self, ctx: ActorContext, meeting_id: str, session_id: str, device_url: str, access_token: str,
                 connector: DataChannelConnector, *, seed: int | None = None, **options: Any) -> None:
        super().__init__(ctx)
        self.config = SessionConfig(meeting_id=meeting_id, session_id=session_id, device_url=device_url,
                                    incarnation=ctx.incarnation, **options)
        if ctx.address != self.config.address:
            raise ValueError(f"a data-channel session for {meeting_id}/{session_id} lives at "
                             f"{self.config.address}, not {ctx.address}")
        self._access_token = access_token
        self._connector = connector
        self._sockets: dict[int, DataChannelSocket] = {}
        rng_seed = random.getrandbits(64) if seed is None else seed
        # Generations of incarnation n start at n << 32: never one an older incarnation on this
        # node used. One that ran elsewhere (counting from 1 there too) is kept out by its
        # lease epoch, which its socket news carries (MachineActor refuses other epochs).
        self.state: ChannelState
        self.state, self._first_effects = machine.restore(self.config, ctx.checkpoint, seed=rng_seed,
                                                          first_gen=(ctx.incarnation << 32) + 1)

    def __repr__(self) -> str:
        return f"DataChannelSession({self.address}, {self.state.state})"

    def on_start(self) -> None:
        effects, self._first_effects = self._first_effects, []
        self.perform_all(effects)

    # -- the core --------------------------------------------------------------

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        if type(message) is SocketClosed and envelope.sender == self.address:
            self._sockets.pop(message.gen, None)
        # The core stamps the wire with wall-clock time; delays are timers.
        self.state, effects = machine.step(self.state, message, self.node.clock.wall(), sender=envelope.sender,
                                           asked=envelope.reply_to is not None)
        return effects

    # -- effects -----------------------------------------------------------------

    def perform(self, effect: Effect) -> None:
        match effect:
            case Transmit(gen=gen, frame=frame):
                self._send(gen, frame)
            case Register(gen=gen, url=url, device_url=device_url, token=token):
                self.run_io(self._connector.register(url, device_url, token), _RegisterDone(gen))
            case OpenSocket(gen=gen, url=url):
                sock = self._connector.socket(url, SessionSocketEvents(self.node, self.address, gen, self.epoch))
                self._sockets[gen] = sock
                self.run_io(sock.open(), _OpenDone(gen))
            case Authorize(gen=gen, message_id=message_id, tracking_id=tracking_id):
                self._send(gen, {"id": message_id, "type": "authorization",
                                 "data": {"token": f"Bearer {self._access_token}"}, "trackingId": tracking_id})
            case CloseSocket(gen=gen, code=code, reason=reason):
                sock = self._sockets.get(gen)
                if sock is not None:
                    try:
                        sock.close(code, reason)
                    except Exception as exc:  # noqa: BLE001 - a close that raises counts as closed
                        self._close_failed(gen, sock, exc)
            case AbortSocket(gen=gen):
                sock = self._sockets.pop(gen, None)
                if sock is not None:
                    self._abort(sock)
            case _:
                super().perform(effect)

    def _close_failed(self, gen: int, sock: DataChannelSocket, exc: Exception) -> None:
        """The socket of ``gen`` is given up: aborted, and closed for the core."""
        self._sockets.pop(gen, None)
        self._abort(sock)
        why = f"close failed: {type(exc).__name__}"
        super().perform(Emit("close-failed", reason=type(exc).__name__, detail={"gen": gen}))
        self.tell(self.address, SocketClosed(gen=gen, code=1006, reason=why))

    def _abort(self, sock: DataChannelSocket) -> None:
        try:
            sock.abort()
        except Exception:  # noqa: BLE001 - nothing more can be done for this socket
            log.warning("%s: aborting a socket failed", self.address, exc_info=True)

    def _send(self, gen: int, frame: dict[str, Any]) -> None:
        sock = self._sockets.get(gen)
        if sock is not None:
            sock.send(json.dumps(frame, separators=_COMPACT))

    # -- ending --------------------------------------------------------------------

    def on_stop(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            try:
                sock.close(1001, "going away")
            except Exception:  # noqa: BLE001 - the others are closed anyway
                self._abort(sock)
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            self._abort(sock)
        super().on_failure(*exc_info)


class SessionSocketEvents:
    """Turns one socket's news into messages to its session (I/O loop side).

    News from the socket is in no trace: the reader runs in a task started
    while the connect was handled, and would otherwise put every frame of
    the socket's life in the trace of that one connect."""

    __slots__ = ("address", "epoch", "gen", "node")

    def __init__(self, node: Node, address: str, gen: int, epoch: int = 0) -> None:
        self.node = node
        self.address = address
        self.gen = gen
        self.epoch = epoch  # the incarnation's lease: its news reaches that incarnation only

    def on_frame(self, text: str) -> None:
        with in_trace(None):
            self.node.tell(self.address, SocketFrame(gen=self.gen, text=text), sender=self.address, epoch=self.epoch)

    def on_close(self, code: int, reason: str) -> None:
        with in_trace(None):
            self.node.tell(self.address, SocketClosed(gen=self.gen, code=code, reason=reason[:200]),
                           sender=self.address, epoch=self.epoch)


class _RegisterDone:
    """``run_io`` callback: the register outcome as a message."""

    __slots__ = ("gen",)

    def __init__(self, gen: int) -> None:
        self.gen = gen

    def __call__(self, outcome: Outcome[Registration]) -> Message:
        if outcome.ok and outcome.value is not None:
            return Registered(gen=self.gen, websocket_url=outcome.value.websocket_url, binding=outcome.value.binding)
        error = outcome.error
        if isinstance(error, RegisterError):
            return RegisterFailed(gen=self.gen, status=error.status, reason=error.reason)
        return RegisterFailed(gen=self.gen, status=0, reason=type(error).__name__)


class _OpenDone:
    """``run_io`` callback: an open socket, or the close its failure stands for."""

    __slots__ = ("gen",)

    def __init__(self, gen: int) -> None:
        self.gen = gen

    def __call__(self, outcome: Outcome[None]) -> Message:
        if outcome.ok:
            return SocketOpened(gen=self.gen)
        error = outcome.error
        if isinstance(error, SocketOpenError):
            return SocketClosed(gen=self.gen, code=error.code, reason=error.reason)
        return SocketClosed(gen=self.gen, code=1006, reason=type(error).__name__)
