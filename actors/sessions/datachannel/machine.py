"""The data-channel session core: every protocol rule, no I/O, no clock.

``step(state, message, now, sender=..., asked=...) -> (state, effects)``
takes one message (a command from the owner, a token answer, an I/O outcome
or a timer) and returns the next state and the effects the shell must carry
out, as plain data. ``now`` is wall-clock seconds, used only for the
timestamps the protocol puts on the wire; every delay is a timer effect.

Life of a connection
--------------------
A **connection attempt** walks ``token`` (only with token auth) ->
``register`` -> ``open`` -> ``authorize``; the socket is **online** only when
the relay sends its first frame without ``type`` whose ``data.eventType`` is
``mercury.buffer_state`` or ``mercury.registration_status``. The online
socket is the session's **link**; keepalive runs on it (ping at once, pong
within 14 s, the next ping 15 s after each pong).

Everything asynchronous carries a **generation**: each attempt gets a fresh
one, and its token request, register call, socket, frames, close and timers
are tagged with it. A result whose generation matches no live attempt, link
or pending close is stale: it is dropped and counted, and can never open a
socket or change the state. Generations only grow (the shell seeds them per
incarnation), so an old incarnation's socket is never taken for a new one.

A close the session asks for (pong missing or mismatched, a disconnect)
becomes a **pending close**: the socket is no longer the link, what follows
(reconnect or stay offline) is decided when the close is asked for, and the
close is forced after the grace (2 s) if the close frame never comes. So a
forced close of a deliberate permanent disconnect never reconnects.

A close the session did not ask for goes through :func:`classify_close`
(only for the link; a replaced socket's close is ignored). Transient closes
reconnect, first at once, then after a backoff of 1, 2, 4 ... 32 s, each
with full jitter (a uniform draw in ``[0, step]`` from the state's own
seeded generator, so tests are deterministic), unlimited unless
``max_attempts`` is set.

``type: "shutdown"`` starts a **switchover**: a second attempt runs while the
link stays up; when it is online it becomes the link and the old socket is
closed (make-before-break). Changing the target URL while online does the
same. Subscriptions are state of the session: all of them are sent on every
socket that comes online.

Tokens are never stored in the state: a granted token goes straight into the
register effect; the user's access token is known only to the shell, which
builds the authorization frame from an :class:`Authorize` effect.

Checkpoints, restarts and the owner's word
------------------------------------------
The checkpoint (owner, wanted target, subscriptions, watchers) is the
session's intent, and it is written **ahead** of the effects that act on
it: whenever a step changes it, :class:`~actors.runtime.effects.SaveCheckpoint` is
the step's first effect. An effect that raises (and crashes the actor)
therefore leaves the checkpoint of the command being carried out: a
session that crashed while closing for a disconnect restarts disconnected.
A close that raises is the shell's concern: it counts as closed (the shell
reports the :class:`SocketClosed` the close stood for).

A checkpoint can still be older than the owner's last command (its write
was lost). So a restored session never takes it as the last word: it tells
its owner and watchers it restarted (:class:`SessionStateChanged`, reason
``restored``, with its ``incarnation``: every state change and status
carries it), and with ``await_owner`` it stays idle until the owner's next
:class:`~actors.sessions.contracts.datachannel.Assert`, ``Connect`` or
``Disconnect`` decides, acting on the checkpoint alone only if the owner
stays silent that long (the ``owner-silent`` timer). ``Assert`` is the
owner's **complete** wanted state: connected to a URL or disconnected, with
exactly these subchannels; what already holds is left alone, so an owner
may re-assert as often as it likes without a second register or socket.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from actors.sessions.contracts.datachannel import (
    BACKOFF,
    RESTORED,
    CLOSING,
    CONNECTING,
    FAILED,
    IDLE,
    OFFLINE,
    ONLINE,
    Assert,
    ClaimSession,
    Connect,
    ConnectOutcome,
    Disconnect,
    GetStatus,
    Refusal,
    RelayedEvent,
    ReleaseSession,
    SendFrame,
    SessionStateChanged,
    SessionStatus,
    Subscribe,
    Unsubscribe,
    Unwatch,
    Watch,
    session_address,
)
from actors.sessions.contracts.token import TokenGranted, TokenRequest, TokenUnavailable
from actors.runtime.effects import Answer, CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer, evolve
from bus.address import is_valid_address
from bus.messages import ErrorReply, Message, message_kind

__all__ = [
    "CONTROL_KINDS",
    "HANDLED_KINDS",
    "INTERNAL_KINDS",
    "AbortSocket",
    "Authorize",
    "CloseSocket",
    "OpenSocket",
    "Register",
    "RegisterFailed",
    "Registered",
    "SessionConfig",
    "ChannelState",
    "SessionTimer",
    "SocketClosed",
    "SocketFrame",
    "SocketOpened",
    "Target",
    "Transmit",
    "backoff_step",
    "classify_close",
    "initial_state",
    "restore",
    "socket_url",
    "status_of",
    "step",
]

# -- the core's own inputs (from the shell, the connector and timers) ---------


@message_kind("datachannel.io.registered")
@dataclass(frozen=True, slots=True)
class Registered(Message):
    """The register call of attempt ``gen`` answered 200 with this JSON."""

    gen: int
    websocket_url: str
    binding: str = ""


@message_kind("datachannel.io.register-failed")
@dataclass(frozen=True, slots=True)
class RegisterFailed(Message):
    """The register call of attempt ``gen`` failed: HTTP ``status`` (0 when no
    response came) and a short reason (never a token)."""

    gen: int
    status: int
    reason: str = ""


@message_kind("datachannel.io.socket-opened")
@dataclass(frozen=True, slots=True)
class SocketOpened(Message):
    gen: int


@message_kind("datachannel.io.frame")
@dataclass(frozen=True, slots=True)
class SocketFrame(Message):
    """One text frame read from socket ``gen``."""

    gen: int
    text: str


@message_kind("datachannel.io.socket-closed")
@dataclass(frozen=True, slots=True)
class SocketClosed(Message):
    """Socket ``gen`` is closed (or never opened): the close code received
    (1006 when none came) and its reason."""

    gen: int
    code: int
    reason: str = ""


@message_kind("datachannel.io.timer")
@dataclass(frozen=True, slots=True)
class SessionTimer(Message):
    """One of the session's timers (``name``: see ``_TIMER_HANDLERS``)."""

    name: str
    gen: int
    ping_id: str = ""


INTERNAL_KINDS: Final = (Registered, RegisterFailed, SocketOpened, SocketFrame, SocketClosed, SessionTimer)
"""Accepted only from the session's own address (I/O outcomes and timers): the shell base
(:class:`~actors.runtime.shell.MachineActor`, ``internal_kinds``) refuses them from anyone else before
the core sees them."""

CONTROL_KINDS: Final = (ClaimSession, ReleaseSession, Connect, Disconnect, Assert, Subscribe, Unsubscribe,
                        SendFrame, Watch, Unwatch)
"""Accepted only from the owner (see :mod:`actors.sessions.contracts.datachannel`)."""

# -- effects only this shell performs ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Register(Effect):
    """POST ``{"deviceUrl": device_url}`` to ``url``; with ``token``, as
    ``Data-Channel-Auth-Token``. Answer with :class:`Registered` or
    :class:`RegisterFailed` tagged ``gen``."""

    gen: int
    url: str
    device_url: str
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class OpenSocket(Effect):
    """Open a WebSocket to ``url``; :class:`SocketOpened`, then
    :class:`SocketFrame` s, then one :class:`SocketClosed`, all tagged ``gen``."""

    gen: int
    url: str


@dataclass(frozen=True, slots=True)
class Authorize(Effect):
    """Send the authorization frame on socket ``gen``:
    ``{"id": message_id, "type": "authorization", "data": {"token": "Bearer
    <user token>"}, "trackingId": tracking_id}``; the shell holds the token."""

    gen: int
    message_id: str
    tracking_id: str


@dataclass(frozen=True, slots=True)
class Transmit(Effect):
    """Send ``frame`` as JSON text on socket ``gen`` (dropped if it is gone)."""

    gen: int
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CloseSocket(Effect):
    """Start the closing handshake of socket ``gen``; if it is not open yet,
    give up opening it."""

    gen: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AbortSocket(Effect):
    """Drop socket ``gen`` without waiting for a close frame."""

    gen: int


# -- protocol constants -----------------------------------------------------------------

ONLINE_EVENT_TYPES: Final = frozenset({"mercury.buffer_state", "mercury.registration_status"})
TRANSCRIPTION = "transcription"

TRANSIENT = "transient"
PERMANENT = "permanent"
REPLACED = "replaced"
REFRESH = "refresh"
REFUSED = "refused"

_TRANSIENT_CODES: Final = frozenset({1001, 1005, 1006, 1011})
_TRANSIENT_REASONS: Final = frozenset({"idle", "done (forced)", "pong not received", "pong mismatch"})

# Timer keys: one slot per purpose, so a new timer replaces the old one.
_ATTEMPT_TIMER = "attempt"  # backoff, token deadline, token retry (never two at once)
_KEEPALIVE_TIMER = "keepalive"  # next ping, or the pong deadline
_CLOSE_TIMER = "close"  # force a pending close
_OWNER_TIMER = "owner"  # a restored session's wait for its owner's re-assertion

# Attempt phases.
_TOKEN = "token"
_TOKEN_RETRY = "token-retry"
_REGISTER = "register"
_OPEN = "open"
_AUTHORIZE = "authorize"
_SOCKET_PHASES: Final = frozenset({_OPEN, _AUTHORIZE})

MAX_WATCHERS = 16
MAX_SUBSCRIPTIONS = 32
MAX_PENDING_CONNECTS = 32
_MASK64 = (1 << 64) - 1


def classify_close(code: int, reason: str) -> str:
    """What a close of the link means (docs/protocol.md §1.5): ``transient``
    (reconnect), ``permanent`` (stay offline), ``replaced`` (4000),
    ``refresh`` (4401: new credentials, then retry) or ``refused`` (4400,
    4403: give up). 4001 is ``permanent`` here; the caller treats it as
    transient when the service had asked the session to move."""
    if code in _TRANSIENT_CODES:
        return TRANSIENT
    if code in (1000, 3050):
        return TRANSIENT if reason.strip().lower() in _TRANSIENT_REASONS else PERMANENT
    if code == 4000:
        return REPLACED
    if code == 4401:
        return REFRESH
    if code in (4400, 4403):
        return REFUSED
    return PERMANENT


def backoff_step(failures: int, cap: float = 32.0) -> float:
    """The upper bound of the delay before the next attempt after
    ``failures`` failed ones in a row: 0, 1, 2, 4, ... ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, 2.0 ** min(failures - 1, 62))


def socket_url(websocket_url: str, token_auth: bool, now: float) -> str:
    """``websocket_url`` with the open's query parameters (docs/protocol.md §1.2);
    parameters of the same names already there are replaced."""
    parts = urlsplit(websocket_url)
    params = [("outboundWireFormat", "text"), ("bufferStates", "true"), ("aliasHttpStatus", "true"),
              ("clientTimestamp", str(int(now * 1000)))]
    if token_auth:
        params.append(("subscriptionAwareSubchannels", TRANSCRIPTION))
    ours = {name for name, _ in params}
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    return urlunsplit(parts._replace(query=urlencode(kept + params)))


# -- state -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session is and how it behaves; fixed for an incarnation."""

    meeting_id: str
    session_id: str
    device_url: str = ""
    ping_interval: float = 15.0
    pong_timeout: float = 14.0
    close_grace: float = 2.0
    token_timeout: float = 5.0
    token_retry_delay: float = 2.0
    backoff_cap: float = 32.0
    max_attempts: int | None = None
    jitter: bool = True
    tracking_prefix: str = "huddle"
    #: The actor's starts at its address (reported in every state change).
    incarnation: int = 0
    #: After a restart with a wanted connection: how long to wait for the
    #: owner's re-assertion before acting on the checkpoint alone (0: at once).
    await_owner: float = 0.0
    #: Whose the session is while nobody has claimed it (its meeting): a
    #: claim from anyone else is refused (``not-founder``) until an owner
    #: releases it. Without one, the first claim wins; with one, so it
    #: does not when the session starts afresh (its first start, or Redis
    #: lost its checkpoint) and a stranger's claim arrives first.
    founder: str = ""

    @property
    def address(self) -> str:
        return session_address(self.meeting_id, self.session_id)

    @property
    def token_address(self) -> str:
        return f"token:{self.meeting_id}"


@dataclass(frozen=True, slots=True)
class Target:
    """The connection the owner wants."""

    datachannel_url: str
    device_url: str
    token_auth: bool


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection attempt in flight (its socket, once opened, is ``gen``)."""

    gen: int
    phase: str
    refresh: bool = False
    token_retried: bool = False
    had_token: bool = False
    websocket_url: str = ""
    binding: str = ""
    expected_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """The online socket."""

    gen: int
    target: Target
    binding: str
    expected_seq: int | None = None
    ping_id: str = ""
    moving: bool = False


@dataclass(frozen=True, slots=True)
class PendingClose:
    """A close the session asked for on socket ``gen``, and what follows it:
    ``reconnect``, or stay in ``final_state`` for ``reason``."""

    gen: int
    reconnect: bool
    final_state: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelState:
    """Everything one session knows (no secrets)."""

    config: SessionConfig
    rng: int
    next_gen: int = 1
    owner: str = ""
    owner_epoch: int = 0
    target: Target | None = None
    subscriptions: tuple[str, ...] = ()
    watchers: tuple[str, ...] = ()
    state: str = IDLE
    reason: str = ""
    attempt: Attempt | None = None
    link: Link | None = None
    closing: PendingClose | None = None
    backoff_gen: int = 0
    failures: int = 0
    refresh_next: bool = False
    pending: tuple[tuple[str, str], ...] = ()
    frame_seq: int = 0
    sequence_mismatches: int = 0
    stale_dropped: int = 0
    bad_input: int = 0
    connects: int = 0
    frames_in: int = 0
    #: Non-zero while a restored session waits for its owner (the hold timer's generation).
    awaiting_owner: int = 0
    #: An owner released the session: anyone may claim it now, not only the founder.
    released: bool = False


def initial_state(config: SessionConfig, *, seed: int, first_gen: int = 1) -> ChannelState:
    """A fresh session. ``seed`` drives jitter and frame ids; ``first_gen``
    must exceed every generation an earlier incarnation used."""
    return ChannelState(config=config, rng=seed & _MASK64, next_gen=first_gen)


def restore(config: SessionConfig, checkpoint: Any, *, seed: int, first_gen: int = 1) -> tuple[ChannelState, list[Effect]]:
    """A session from its last checkpoint (``None``: a fresh one).

    The owner and every watcher are told the session restarted
    (:class:`SessionStateChanged` with reason ``restored`` and the
    incarnation), so the owner re-asserts its complete wanted state. When a
    connection was wanted: with ``config.await_owner`` the session waits
    (idle) up to that long for the owner's :class:`Assert`, :class:`Connect`
    or :class:`Disconnect`, which decides, and only then acts on the
    checkpoint alone; without it the first attempt starts at once.
    Subscriptions are sent again when a socket is online."""
    s = initial_state(config, seed=seed, first_gen=first_gen)
    fx: list[Effect] = []
    if checkpoint is None:
        return s, fx
    try:
        owner = checkpoint["owner"]
        epoch = checkpoint["owner_epoch"]
        raw_target = checkpoint["target"]
        subs = tuple(checkpoint["subscriptions"])
        watchers = tuple(checkpoint["watchers"])
        target = None if raw_target is None else Target(str(raw_target[0]), str(raw_target[1]), bool(raw_target[2]))
        if not (isinstance(owner, str) and isinstance(epoch, int) and all(isinstance(x, str) for x in subs + watchers)):
            raise TypeError("checkpoint fields have wrong types")
    except (KeyError, IndexError, TypeError) as exc:
        fx.append(Emit("bad-input", reason="bad-checkpoint", detail={"error": type(exc).__name__}))
        return evolve(s, bad_input=1), fx
    s = evolve(s, owner=owner, owner_epoch=epoch, target=target, subscriptions=subs, watchers=watchers,
               released=checkpoint.get("released") is True)
    if target is not None:
        if owner and config.await_owner > 0:
            s, gen = _new_gen(s)
            s = evolve(s, awaiting_owner=gen, reason="awaiting owner")
            fx.append(StartTimer(_OWNER_TIMER, config.await_owner, SessionTimer("owner-silent", gen)))
        else:
            s = _begin_attempt(s, fx)
    note = SessionStateChanged(meeting_id=config.meeting_id, session_id=config.session_id, state=s.state,
                               previous=IDLE, reason=RESTORED, incarnation=config.incarnation)
    fx.extend(Send(to, note) for to in _recipients(s))
    fx.append(Emit("session-state", reason=s.state, detail={"previous": IDLE, "why": RESTORED}))
    return s, fx


def _checkpoint(s: ChannelState) -> dict[str, Any]:
    t = s.target
    return {"owner": s.owner, "owner_epoch": s.owner_epoch,
            "target": None if t is None else [t.datachannel_url, t.device_url, t.token_auth],
            "subscriptions": list(s.subscriptions), "watchers": list(s.watchers), "released": s.released}


def _persisted(s: ChannelState) -> tuple[Any, ...]:
    return (s.owner, s.owner_epoch, s.target, s.subscriptions, s.watchers, s.released)


def status_of(s: ChannelState) -> SessionStatus:
    """The :class:`SessionStatus` that describes ``s``."""
    c = s.config
    t = s.target
    a = s.attempt
    return SessionStatus(
        meeting_id=c.meeting_id, session_id=c.session_id, state=s.state, reason=s.reason,
        phase=a.phase if a is not None else "", switching=a is not None and s.link is not None,
        owner=s.owner, owner_epoch=s.owner_epoch,
        datachannel_url=t.datachannel_url if t else "", token_auth=t.token_auth if t else False,
        binding=s.link.binding if s.link else "", subscriptions=list(s.subscriptions), watchers=list(s.watchers),
        failures=s.failures,
        counters={"sequence_mismatches": s.sequence_mismatches, "stale_dropped": s.stale_dropped,
                  "bad_input": s.bad_input, "reconnects": max(0, s.connects - 1), "frames_in": s.frames_in},
        incarnation=c.incarnation, awaiting_owner=bool(s.awaiting_owner),
    )


# -- the step -----------------------------------------------------------------------------


class _Step:
    """What one call of :func:`step` accumulates."""

    __slots__ = ("answer_status", "asked", "fx", "now", "sender")

    def __init__(self, now: float, sender: str | None, asked: bool) -> None:
        self.fx: list[Effect] = []
        self.now = now
        self.sender = sender or ""
        self.asked = asked
        self.answer_status = False


def step(state: ChannelState, message: Message, now: float, sender: str | None = None, *,
         asked: bool = False) -> tuple[ChannelState, list[Effect]]:
    """Feed one message; return the next state and the effects, in order.

    ``sender`` is the envelope's sender (ownership, token and internal
    messages are judged by it); ``asked`` says whether a reply is expected
    (the effects then hold one :class:`~actors.runtime.effects.Answer`). Raises
    ``TypeError`` for a kind the core does not take (see ``HANDLED_KINDS``).
    """
    handler = _HANDLERS.get(type(message))
    if handler is None:
        raise TypeError(f"the data-channel core does not take {message.KIND!r}")
    st = _Step(now, sender, asked)
    s = handler(state, message, st)
    s = _after(state, s, st)
    return s, st.fx


def _after(before: ChannelState, s: ChannelState, st: _Step) -> ChannelState:
    """What follows from any change: notifications, connect outcomes, the
    checkpoint and the answer to an accepted ask. The checkpoint goes
    **first** (write-ahead): what the session now wants is saved before any
    effect acts on it, so an effect that raises leaves a checkpoint of the
    command being carried out, not of the one before."""
    fx = st.fx
    c = s.config
    switched = (before.state == ONLINE and s.state == ONLINE and before.link is not None and s.link is not None
                and before.link.gen != s.link.gen)
    if s.state != before.state or switched:
        reason = "switchover" if switched else s.reason
        binding = s.link.binding if s.link is not None else ""
        note = SessionStateChanged(meeting_id=c.meeting_id, session_id=c.session_id, state=s.state,
                                   previous=before.state, reason=reason, binding=binding,
                                   incarnation=c.incarnation)
        for to in _recipients(s):
            fx.append(Send(to, note))
        fx.append(Emit("session-state", reason=s.state, detail={"previous": before.state, "why": reason}))
    if s.pending and s.state in (ONLINE, OFFLINE, FAILED):
        online = s.state == ONLINE
        for to, request_id in s.pending:
            fx.append(Send(to, ConnectOutcome(meeting_id=c.meeting_id, session_id=c.session_id,
                                              request_id=request_id, online=online, state=s.state,
                                              reason="" if online else s.reason)))
        s = evolve(s, pending=())
    if _persisted(s) != _persisted(before):
        fx.insert(0, SaveCheckpoint(_checkpoint(s)))
    if st.answer_status and st.asked:
        fx.append(Answer(status_of(s)))
    return s


def _recipients(s: ChannelState) -> list[str]:
    out = [s.owner] if s.owner else []
    out.extend(w for w in s.watchers if w != s.owner)
    return out


def _stale(s: ChannelState) -> ChannelState:
    return evolve(s, stale_dropped=s.stale_dropped + 1)


def _bad_input(s: ChannelState, st: _Step, reason: str, **detail: Any) -> ChannelState:
    st.fx.append(Emit("bad-input", reason=reason, detail=detail))
    return evolve(s, bad_input=s.bad_input + 1)


def _draw(s: ChannelState) -> tuple[ChannelState, int]:
    """64 random bits from the state's splitmix64 generator."""
    x = (s.rng + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return evolve(s, rng=x), z ^ (z >> 31)


def _new_id(s: ChannelState) -> tuple[ChannelState, str]:
    s, hi = _draw(s)
    s, lo = _draw(s)
    return s, str(uuid.UUID(int=(hi << 64) | lo, version=4))


def _new_gen(s: ChannelState) -> tuple[ChannelState, int]:
    return evolve(s, next_gen=s.next_gen + 1), s.next_gen


# -- control messages -----------------------------------------------------------------------


def _ownership_refusal(s: ChannelState, sender: str, message: Message) -> str:
    epoch: int = message.epoch  # type: ignore[attr-defined]
    if not sender:
        return "anonymous"
    if isinstance(message, ClaimSession):
        if not s.owner:
            founder = s.config.founder
            return "not-founder" if founder and sender != founder and not s.released else ""
        if sender != s.owner:
            return "not-owner"
        return "stale-epoch" if epoch < s.owner_epoch else ""
    if not s.owner:
        return "no-owner"
    if sender != s.owner:
        return "not-owner"
    if epoch < s.owner_epoch:
        return "stale-epoch"
    if epoch > s.owner_epoch:
        return "unclaimed-epoch"
    return ""


def _refuse(s: ChannelState, st: _Step, message: Message, error_type: str, event: str, reason: str) -> None:
    c = s.config
    st.fx.append(Emit(event, reason=reason, detail={"command": message.KIND, "sender": st.sender, "owner": s.owner}))
    if st.asked:
        st.fx.append(Answer(ErrorReply(error_type=error_type, message=f"{message.KIND} refused: {reason}")))
    elif st.sender:
        st.fx.append(Send(st.sender, Refusal(meeting_id=c.meeting_id, session_id=c.session_id,
                                              command=message.KIND, error_type=error_type, reason=reason)))


class _Rejected(Exception):
    """An owner's command the session cannot carry out (internal control flow)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _on_control(s: ChannelState, message: Message, st: _Step) -> ChannelState:
    reason = _ownership_refusal(s, st.sender, message)
    if reason:
        _refuse(s, st, message, "NotOwner", "refused-not-owner", reason)
        return s
    try:
        s2 = _COMMANDS[type(message)](s, message, st)
    except _Rejected as exc:
        del st.fx[:]  # the session stays exactly as it was
        _refuse(s, st, message, "CommandRejected", "command-rejected", exc.reason)
        return s
    st.answer_status = True
    return s2


def _claim(s: ChannelState, m: ClaimSession, st: _Step) -> ChannelState:
    return evolve(s, owner=st.sender, owner_epoch=m.epoch, released=False)


def _release(s: ChannelState, m: ReleaseSession, st: _Step) -> ChannelState:
    return evolve(s, owner="", owner_epoch=0, released=True)


def _owner_decides(s: ChannelState, st: _Step) -> ChannelState:
    """The owner said what it wants: a restored session stops waiting."""
    if not s.awaiting_owner:
        return s
    st.fx.append(CancelTimer(_OWNER_TIMER))
    return evolve(s, awaiting_owner=0, reason="")


def _connect(s: ChannelState, m: Connect, st: _Step) -> ChannelState:
    if not m.datachannel_url:
        raise _Rejected("no-datachannel-url")
    device_url = m.device_url or s.config.device_url
    if not device_url:
        raise _Rejected("no-device-url")
    s = _owner_decides(s, st)
    target = Target(m.datachannel_url, device_url, m.token_auth)
    if m.request_id:
        s = evolve(s, pending=(*s.pending, (st.sender, m.request_id))[-MAX_PENDING_CONNECTS:])
    busy = s.state in (CONNECTING, BACKOFF, ONLINE) or (s.closing is not None and s.closing.reconnect)
    if target == s.target and busy:
        return s  # S1/S2: the same connection is already there or on its way
    s = evolve(s, target=target)
    if s.link is not None:
        s = _abort_attempt(s, st)
        if s.link.target == target:
            return s  # back to the socket we have: drop the switch
        return _begin_attempt(s, st.fx)  # make-before-break to the new target
    if s.closing is not None:
        return evolve(s, closing=evolve(s.closing, reconnect=True), failures=0)
    s = _abort_attempt(s, st)
    return _begin_attempt(evolve(s, failures=0), st.fx)


def _disconnect(s: ChannelState, m: Disconnect, st: _Step) -> ChannelState:
    s = _abort_attempt(_owner_decides(s, st), st)
    permanent = m.permanent or s.target is None
    reason = m.reason or ("disconnected" if permanent else "reconnect requested")
    if permanent:
        s = evolve(s, target=None)
        if s.link is not None:
            return _close_link(s, st, 1000, "done (permanent)", reconnect=False, final_reason=reason)
        if s.closing is not None:
            return evolve(s, closing=evolve(s.closing, reconnect=False, final_state=OFFLINE, reason=reason))
        return s if s.state == IDLE else evolve(s, state=OFFLINE, reason=reason)
    if s.link is not None:
        return _close_link(s, st, 1000, "done (forced)", reconnect=True, final_reason=reason)
    if s.closing is not None:
        return evolve(s, closing=evolve(s.closing, reconnect=True))
    return _begin_attempt(evolve(s, failures=0), st.fx)


def _assert(s: ChannelState, m: Assert, st: _Step) -> ChannelState:
    """The owner's complete wanted state: the connection (or none) and
    exactly these subchannels. What already holds is left alone."""
    wanted = _subchannels(m.subchannels)
    if len(wanted) > MAX_SUBSCRIPTIONS:
        raise _Rejected("too-many-subscriptions")
    if m.datachannel_url:
        s = _connect(s, Connect(epoch=m.epoch, datachannel_url=m.datachannel_url, device_url=m.device_url,
                                token_auth=m.token_auth), st)
    elif (s.target is not None or s.link is not None or s.attempt is not None or s.backoff_gen
          or (s.closing is not None and s.closing.reconnect)):
        s = _disconnect(s, Disconnect(epoch=m.epoch, permanent=True, reason=m.reason or "disconnected"), st)
    else:
        s = _owner_decides(s, st)  # already disconnected
    new = tuple(x for x in wanted if x not in s.subscriptions)
    gone = tuple(x for x in s.subscriptions if x not in wanted)
    if not (new or gone):
        return s
    s = evolve(s, subscriptions=tuple(x for x in s.subscriptions if x not in gone) + new)
    return _send_subscriptions(s, st, subscribe=new, unsubscribe=gone)


def _subscribe(s: ChannelState, m: Subscribe, st: _Step) -> ChannelState:
    wanted = _subchannels(m.subchannels)
    new = tuple(x for x in wanted if x not in s.subscriptions)
    if len(s.subscriptions) + len(new) > MAX_SUBSCRIPTIONS:
        raise _Rejected("too-many-subscriptions")
    if not new:
        return s
    s = evolve(s, subscriptions=s.subscriptions + new)
    return _send_subscriptions(s, st, subscribe=new, unsubscribe=())


def _unsubscribe(s: ChannelState, m: Unsubscribe, st: _Step) -> ChannelState:
    gone = tuple(x for x in _subchannels(m.subchannels) if x in s.subscriptions)
    if not gone:
        return s
    s = evolve(s, subscriptions=tuple(x for x in s.subscriptions if x not in gone))
    return _send_subscriptions(s, st, subscribe=(), unsubscribe=gone)


def _subchannels(names: list[str]) -> tuple[str, ...]:
    if any(not name or len(name) > 100 for name in names):
        raise _Rejected("bad-subchannel")
    return tuple(dict.fromkeys(names))


def _send_frame(s: ChannelState, m: SendFrame, st: _Step) -> ChannelState:
    if s.link is None:
        raise _Rejected("not-online")
    frame = dict(m.frame)
    if "id" not in frame:
        s, frame["id"] = _new_id(s)
    st.fx.append(Transmit(s.link.gen, frame))
    return s


def _watch(s: ChannelState, m: Watch, st: _Step) -> ChannelState:
    if not is_valid_address(m.watcher):
        raise _Rejected("bad-watcher")
    if m.watcher in s.watchers:
        return s
    if len(s.watchers) >= MAX_WATCHERS:
        raise _Rejected("too-many-watchers")
    return evolve(s, watchers=(*s.watchers, m.watcher))


def _unwatch(s: ChannelState, m: Unwatch, st: _Step) -> ChannelState:
    return evolve(s, watchers=tuple(w for w in s.watchers if w != m.watcher))


_COMMANDS: dict[type[Message], Callable[[ChannelState, Any, _Step], ChannelState]] = {
    ClaimSession: _claim,
    ReleaseSession: _release,
    Connect: _connect,
    Disconnect: _disconnect,
    Assert: _assert,
    Subscribe: _subscribe,
    Unsubscribe: _unsubscribe,
    SendFrame: _send_frame,
    Watch: _watch,
    Unwatch: _unwatch,
}


def _on_get_status(s: ChannelState, m: GetStatus, st: _Step) -> ChannelState:
    if st.asked:
        st.answer_status = True
    elif st.sender:
        st.fx.append(Send(st.sender, status_of(s)))
    return s


# -- connection attempts ------------------------------------------------------------------


def _begin_attempt(s: ChannelState, fx: list[Effect]) -> ChannelState:
    """Start an attempt for ``s.target`` now (a switchover when a link is up)."""
    assert s.target is not None
    s, gen = _new_gen(s)
    s = evolve(s, attempt=Attempt(gen=gen, phase=_TOKEN, refresh=s.refresh_next), refresh_next=False, backoff_gen=0)
    if s.link is None:
        s = evolve(s, state=CONNECTING, reason="")
    if s.target.token_auth:
        return _request_token(s, fx)
    return _register(s, fx, token=None)


def _request_token(s: ChannelState, fx: list[Effect]) -> ChannelState:
    a = s.attempt
    assert a is not None
    c = s.config
    fx.append(Send(c.token_address, TokenRequest(session_type=c.session_id, request_id=str(a.gen), refresh=a.refresh)))
    fx.append(StartTimer(_ATTEMPT_TIMER, c.token_timeout, SessionTimer("token-deadline", a.gen)))
    return evolve(s, attempt=evolve(a, phase=_TOKEN))


def _register(s: ChannelState, fx: list[Effect], token: str | None) -> ChannelState:
    a = s.attempt
    t = s.target
    assert a is not None and t is not None
    fx.append(Register(a.gen, t.datachannel_url, t.device_url, token))
    return evolve(s, attempt=evolve(a, phase=_REGISTER, had_token=token is not None))


def _abort_attempt(s: ChannelState, st: _Step) -> ChannelState:
    """Forget the attempt in flight and any pending retry; its late results
    will be stale."""
    a = s.attempt
    if a is None and not s.backoff_gen:
        return s
    st.fx.append(CancelTimer(_ATTEMPT_TIMER))
    if a is not None and a.phase in _SOCKET_PHASES:
        st.fx.append(CloseSocket(a.gen, 1000, "done (forced)"))
    s = evolve(s, attempt=None, backoff_gen=0)
    if s.link is None and s.closing is None and s.state in (CONNECTING, BACKOFF):
        s = evolve(s, state=OFFLINE)
    return s


def _attempt_failed(s: ChannelState, st: _Step, reason: str, *, refresh: bool = False) -> ChannelState:
    """The attempt in flight failed transiently: back off and retry (a
    switchover retries while the link stays up)."""
    st.fx.append(CancelTimer(_ATTEMPT_TIMER))
    failures = s.failures + 1
    s = evolve(s, attempt=None, failures=failures, refresh_next=refresh)
    limit = s.config.max_attempts
    if limit is not None and failures >= limit:
        if s.link is not None:
            st.fx.append(Emit("switchover-failed", reason=f"gave up after {failures} attempts: {reason}"))
            return s
        return _stop(s, st, FAILED, f"gave up after {failures} attempts: {reason}")
    return _schedule_retry(s, st, reason)


def _schedule_retry(s: ChannelState, st: _Step, reason: str) -> ChannelState:
    bound = backoff_step(s.failures, s.config.backoff_cap)
    if bound == 0.0:
        return _begin_attempt(s, st.fx)
    if s.config.jitter:
        s, bits = _draw(s)
        delay = bound * (bits / 2.0**64)
    else:
        delay = bound
    s, gen = _new_gen(s)
    st.fx.append(StartTimer(_ATTEMPT_TIMER, delay, SessionTimer("retry", gen)))
    s = evolve(s, backoff_gen=gen)
    if s.link is None:
        s = evolve(s, state=BACKOFF, reason=reason)
    return s


def _stop(s: ChannelState, st: _Step, state: str, reason: str) -> ChannelState:
    """Stop trying: no attempt, no retry, no wanted connection."""
    s = _abort_attempt(s, st)
    return evolve(s, target=None, state=state, reason=reason)


def _on_token(s: ChannelState, m: TokenGranted | TokenUnavailable, st: _Step) -> ChannelState:
    if st.sender != s.config.token_address:
        return _bad_input(s, st, "token-from-stranger", sender=st.sender)
    a = s.attempt
    if a is None or a.phase != _TOKEN or m.request_id != str(a.gen) or m.session_type != s.config.session_id:
        return _stale(s)
    st.fx.append(CancelTimer(_ATTEMPT_TIMER))
    if isinstance(m, TokenGranted):
        return _register(s, st.fx, token=m.token)
    st.fx.append(Emit("token-unavailable", reason=m.reason[:200]))
    return _register(s, st.fx, token=None)


def _on_registered(s: ChannelState, m: Registered, st: _Step) -> ChannelState:
    a = s.attempt
    if a is None or a.gen != m.gen or a.phase != _REGISTER:
        return _stale(s)
    if not m.websocket_url:
        # Never fall back to some other URL.
        return _attempt_failed(s, st, "register response without webSocketUrl")
    assert s.target is not None
    st.fx.append(OpenSocket(a.gen, socket_url(m.websocket_url, s.target.token_auth, st.now)))
    return evolve(s, attempt=evolve(a, phase=_OPEN, websocket_url=m.websocket_url, binding=m.binding))


def _on_register_failed(s: ChannelState, m: RegisterFailed, st: _Step) -> ChannelState:
    a = s.attempt
    if a is None or a.gen != m.gen or a.phase != _REGISTER:
        return _stale(s)
    reason = f"register failed: {m.status or 'no response'} {m.reason}".strip()[:200]
    if m.status in (401, 403) and a.had_token and not a.token_retried:
        # Once, after a pause, with a fresh token (docs/protocol.md §1.8).
        st.fx.append(StartTimer(_ATTEMPT_TIMER, s.config.token_retry_delay, SessionTimer("token-retry", a.gen)))
        return evolve(s, attempt=evolve(a, phase=_TOKEN_RETRY, token_retried=True, refresh=True))
    if m.status == 400:
        if s.link is not None:
            st.fx.append(Emit("switchover-failed", reason=reason))
            return evolve(s, attempt=None)
        return _stop(s, st, FAILED, reason)
    return _attempt_failed(s, st, reason)


def _on_socket_opened(s: ChannelState, m: SocketOpened, st: _Step) -> ChannelState:
    a = s.attempt
    if a is None or a.gen != m.gen or a.phase != _OPEN:
        st.fx.append(CloseSocket(m.gen, 1000, "done (forced)"))  # nobody wants it any more
        return _stale(s)
    s, message_id = _new_id(s)
    tracking_id = f"{s.config.session_id}_{int(st.now * 1000)}"
    st.fx.append(Authorize(a.gen, message_id, tracking_id))
    return evolve(s, attempt=evolve(a, phase=_AUTHORIZE))


def _online(s: ChannelState, st: _Step) -> ChannelState:
    """The attempt's socket is online: it becomes the link."""
    a = s.attempt
    assert a is not None and s.target is not None
    old = s.link
    link = Link(gen=a.gen, target=s.target, binding=a.binding, expected_seq=a.expected_seq)
    st.fx.append(CancelTimer(_ATTEMPT_TIMER))
    if old is not None:
        st.fx.append(CloseSocket(old.gen, 1000, "done (switched)"))
    s = evolve(s, attempt=None, link=link, state=ONLINE, reason="connected", failures=0, connects=s.connects + 1)
    if s.subscriptions:
        s = _send_subscriptions(s, st, subscribe=s.subscriptions, unsubscribe=())
    return _ping(s, st)


def _send_subscriptions(s: ChannelState, st: _Step, *, subscribe: tuple[str, ...],
                        unsubscribe: tuple[str, ...]) -> ChannelState:
    link = s.link
    if link is None:
        return s  # sent when a socket comes online
    s = evolve(s, frame_seq=s.frame_seq + 1)
    s, tracking = _new_id(s)
    st.fx.append(Transmit(link.gen, {
        "id": str(s.frame_seq), "type": "subchannelSubscriptionRequest",
        "data": {"datachannelUri": link.target.datachannel_url, "subscribe": list(subscribe),
                 "unsubscribe": list(unsubscribe)},
        "trackingId": f"{s.config.tracking_prefix}_{tracking}",
    }))
    return s


# -- sockets ---------------------------------------------------------------------------------


def _on_frame(s: ChannelState, m: SocketFrame, st: _Step) -> ChannelState:
    s = evolve(s, frames_in=s.frames_in + 1)
    try:
        frame = json.loads(m.text)
    except ValueError:
        frame = None
    if not isinstance(frame, dict):
        return _bad_input(s, st, "bad-frame", gen=m.gen)
    frame_id = frame.get("id")
    if isinstance(frame_id, str | int) and not isinstance(frame_id, bool):
        st.fx.append(Transmit(m.gen, {"messageId": frame_id, "type": "ack"}))
    a = s.attempt
    on_attempt = a is not None and a.gen == m.gen and a.phase == _AUTHORIZE
    on_link = s.link is not None and s.link.gen == m.gen
    if not (on_attempt or on_link):
        return _stale(s)  # acked, but a socket we no longer listen to
    seq = frame.get("sequenceNumber")
    if isinstance(seq, int) and not isinstance(seq, bool):
        s = _check_sequence(s, st, m.gen, seq, on_link)
    kind = frame.get("type")
    if kind == "pong":
        return _on_pong(s, st, frame_id) if on_link else s
    if kind == "shutdown":
        return _on_shutdown(s, st, on_link)
    if kind:
        return s  # a frame type this client has no use for
    data = frame.get("data")
    event_type = data.get("eventType") if isinstance(data, dict) else None
    if not isinstance(event_type, str) or not event_type:
        return _bad_input(s, st, "frame-without-event-type", gen=m.gen)
    if event_type in ONLINE_EVENT_TYPES:
        return _online(s, st) if on_attempt else s
    c = s.config
    assert isinstance(data, dict)
    event = RelayedEvent(meeting_id=c.meeting_id, session_id=c.session_id, event_type=event_type, data=data,
                         sequence_number=seq if isinstance(seq, int) and not isinstance(seq, bool) else -1)
    for to in s.watchers:
        st.fx.append(Send(to, event))
    return s


def _check_sequence(s: ChannelState, st: _Step, gen: int, seq: int, on_link: bool) -> ChannelState:
    holder: Attempt | Link | None = s.link if on_link else s.attempt
    assert holder is not None
    expected = holder.expected_seq
    if expected is not None and seq != expected:
        st.fx.append(Emit("sequence-mismatch", reason=f"{seq} != {expected}",
                          detail={"actual": seq, "expected": expected, "gen": gen}))
        s = evolve(s, sequence_mismatches=s.sequence_mismatches + 1)
    if on_link:
        assert s.link is not None
        return evolve(s, link=evolve(s.link, expected_seq=seq + 1))
    assert s.attempt is not None
    return evolve(s, attempt=evolve(s.attempt, expected_seq=seq + 1))


def _ping(s: ChannelState, st: _Step) -> ChannelState:
    link = s.link
    assert link is not None
    s, ping_id = _new_id(s)
    st.fx.append(Transmit(link.gen, {"id": ping_id, "type": "ping"}))
    st.fx.append(StartTimer(_KEEPALIVE_TIMER, s.config.pong_timeout, SessionTimer("pong-deadline", link.gen, ping_id)))
    return evolve(s, link=evolve(link, ping_id=ping_id))


def _on_pong(s: ChannelState, st: _Step, pong_id: object) -> ChannelState:
    link = s.link
    assert link is not None
    if not link.ping_id:
        return s  # no ping outstanding: nothing to match
    if pong_id != link.ping_id:
        return _close_link(s, st, 1000, "Pong mismatch", reconnect=True)
    st.fx.append(StartTimer(_KEEPALIVE_TIMER, s.config.ping_interval, SessionTimer("ping", link.gen)))
    return evolve(s, link=evolve(link, ping_id=""))


def _on_shutdown(s: ChannelState, st: _Step, on_link: bool) -> ChannelState:
    if not on_link:
        # Told to move before this socket was even online: start over.
        assert s.attempt is not None
        st.fx.append(CloseSocket(s.attempt.gen, 1000, "done (forced)"))
        return _begin_attempt(evolve(s, attempt=None), st.fx)
    assert s.link is not None
    s = evolve(s, link=evolve(s.link, moving=True))
    if s.attempt is not None or s.backoff_gen:
        return s  # a switchover is already under way
    return _begin_attempt(s, st.fx)


def _close_link(s: ChannelState, st: _Step, code: int, reason: str, *, reconnect: bool,
                final_state: str = OFFLINE, final_reason: str = "") -> ChannelState:
    """Ask the link's socket to close; what follows is decided now."""
    link = s.link
    assert link is not None
    st.fx.append(CancelTimer(_KEEPALIVE_TIMER))
    st.fx.append(CloseSocket(link.gen, code, reason))
    st.fx.append(StartTimer(_CLOSE_TIMER, s.config.close_grace, SessionTimer("force-close", link.gen)))
    closing = PendingClose(gen=link.gen, reconnect=reconnect, final_state=final_state, reason=final_reason or reason)
    return evolve(s, link=None, closing=closing, state=CLOSING, reason=reason)


def _finish_close(s: ChannelState, st: _Step) -> ChannelState:
    closing = s.closing
    assert closing is not None
    s = evolve(s, closing=None)
    if s.link is not None:
        return s  # a switchover already brought the session back online
    if closing.reconnect and s.target is not None:
        if s.attempt is not None or s.backoff_gen:
            return evolve(s, state=CONNECTING if s.attempt is not None else BACKOFF)
        return _schedule_retry(s, st, closing.reason)
    return evolve(s, state=closing.final_state, reason=closing.reason)


def _on_socket_closed(s: ChannelState, m: SocketClosed, st: _Step) -> ChannelState:
    if s.closing is not None and s.closing.gen == m.gen:
        st.fx.append(CancelTimer(_CLOSE_TIMER))
        return _finish_close(s, st)
    if s.link is not None and s.link.gen == m.gen:
        return _link_lost(s, st, m.code, m.reason)
    a = s.attempt
    if a is not None and a.gen == m.gen and a.phase in _SOCKET_PHASES:
        return _attempt_socket_closed(s, st, m.code, m.reason)
    return _stale(s)  # a socket already replaced or given up: only the current one acts


def _link_lost(s: ChannelState, st: _Step, code: int, reason: str) -> ChannelState:
    link = s.link
    assert link is not None
    st.fx.append(CancelTimer(_KEEPALIVE_TIMER))
    s = evolve(s, link=None)
    why = f"closed {code} {reason}".strip()[:200]
    kind = classify_close(code, reason)
    if kind == PERMANENT and code == 4001 and link.moving:
        kind = TRANSIENT  # the service asked us to move; its old socket went first
    if kind in (TRANSIENT, REFRESH):
        s = evolve(s, refresh_next=s.refresh_next or kind == REFRESH)
        if s.attempt is not None:
            return evolve(s, state=CONNECTING, reason=why)  # the switchover carries on as the reconnect
        if s.backoff_gen:
            return evolve(s, state=BACKOFF, reason=why)
        return _schedule_retry(evolve(s, failures=0), st, why)
    if kind == REPLACED:
        return _stop(s, st, OFFLINE, f"replaced: {why}")
    return _stop(s, st, FAILED if kind == REFUSED else OFFLINE, why)


def _attempt_socket_closed(s: ChannelState, st: _Step, code: int, reason: str) -> ChannelState:
    """The attempt's socket closed before it was online: the open failed."""
    why = f"open failed: {code} {reason}".strip()[:200]
    kind = classify_close(code, reason)
    if kind in (TRANSIENT, REFRESH):
        return _attempt_failed(s, st, why, refresh=kind == REFRESH)
    if s.link is not None:
        st.fx.append(CancelTimer(_ATTEMPT_TIMER))
        st.fx.append(Emit("switchover-failed", reason=why))
        return evolve(s, attempt=None)
    return _stop(s, st, FAILED if kind == REFUSED else OFFLINE, why)


# -- timers ------------------------------------------------------------------------------------


def _on_timer(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    handler = _TIMER_HANDLERS.get(m.name)
    if handler is None:
        return _bad_input(s, st, "unknown-timer", name=m.name[:40])
    return handler(s, m, st)


def _timer_retry(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    if m.gen != s.backoff_gen or s.target is None or s.attempt is not None:
        return _stale(s)
    return _begin_attempt(s, st.fx)


def _timer_token_deadline(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    a = s.attempt
    if a is None or a.gen != m.gen or a.phase != _TOKEN:
        return _stale(s)
    st.fx.append(Emit("token-unavailable", reason="no answer from the token actor"))
    return _register(s, st.fx, token=None)


def _timer_token_retry(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    a = s.attempt
    if a is None or a.gen != m.gen or a.phase != _TOKEN_RETRY:
        return _stale(s)
    return _request_token(s, st.fx)


def _timer_ping(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    if s.link is None or s.link.gen != m.gen or s.link.ping_id:
        return _stale(s)
    return _ping(s, st)


def _timer_pong_deadline(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    if s.link is None or s.link.gen != m.gen or s.link.ping_id != m.ping_id or not m.ping_id:
        return _stale(s)
    return _close_link(s, st, 1000, "Pong not received", reconnect=True)


def _timer_owner_silent(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    """A restored session's owner said nothing in time: act on the checkpoint."""
    if not s.awaiting_owner or m.gen != s.awaiting_owner:
        return _stale(s)
    s = evolve(s, awaiting_owner=0, reason="")
    st.fx.append(Emit("owner-silent", reason="acting on the checkpoint"))
    if s.target is None or s.attempt is not None or s.link is not None:
        return s
    return _begin_attempt(s, st.fx)


def _timer_force_close(s: ChannelState, m: SessionTimer, st: _Step) -> ChannelState:
    st.fx.append(AbortSocket(m.gen))
    if s.closing is None or s.closing.gen != m.gen:
        return _stale(s)
    return _finish_close(s, st)


_TIMER_HANDLERS: dict[str, Callable[[ChannelState, SessionTimer, _Step], ChannelState]] = {
    "retry": _timer_retry,
    "token-deadline": _timer_token_deadline,
    "token-retry": _timer_token_retry,
    "ping": _timer_ping,
    "pong-deadline": _timer_pong_deadline,
    "force-close": _timer_force_close,
    "owner-silent": _timer_owner_silent,
}


_HANDLERS: dict[type[Message], Callable[[ChannelState, Any, _Step], ChannelState]] = {
    **{kind: _on_control for kind in CONTROL_KINDS},
    GetStatus: _on_get_status,
    TokenGranted: _on_token,
    TokenUnavailable: _on_token,
    Registered: _on_registered,
    RegisterFailed: _on_register_failed,
    SocketOpened: _on_socket_opened,
    SocketFrame: _on_frame,
    SocketClosed: _on_socket_closed,
    SessionTimer: _on_timer,
}

HANDLED_KINDS: Final[tuple[type[Message], ...]] = tuple(_HANDLERS)
"""Every message kind :func:`step` takes."""

