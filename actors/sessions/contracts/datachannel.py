"""Messages of a data-channel session actor (``datachannel:<meeting>/<session>``).

One actor per meeting and session id (``llm-default-session``,
``llm-practice-session``) holds that session's WebSocket to the relay service:
register, open, authorize, keepalive, reconnect, subchannel subscriptions. Its
own state is per session: nothing here is ever aggregated over sessions.

Ownership
---------
A session belongs to one **owner**: a meeting address and the epoch it
claimed with (:class:`ClaimSession`). Control messages (every message below
that has an ``epoch`` field) are accepted only from the owner's address with
the owner's current epoch, taken from the envelope's sender and the message's
``epoch``. Anything else is refused and the session is untouched:

* refused ask: ``sys.error`` with ``error_type`` ``"NotOwner"``
  (:class:`NotOwner`), the reason in ``message``;
* refused tell: a :class:`Refusal` told to the sender (when there is one);
* always: a ``refused-not-owner`` event on ``sys:events`` whose ``reason``
  is one of :data:`REFUSAL_REASONS` and whose ``detail`` names the command
  and the sender.

A claim is granted when nobody owns the session, or when the owner's own
address claims again with an epoch at least as high (a restarted meeting
re-claims with a new epoch; older epochs are then refused as
``stale-epoch``). Another address must wait until the owner releases.

An owner's command the session cannot carry out (a connect without a
data-channel URL, a frame while offline, a malformed watcher address) is
refused the same way with ``error_type`` ``"CommandRejected"``
(:class:`CommandRejected`) and a ``command-rejected`` event; the session
stays as it was.

Restarts
--------
A new incarnation restores its owner, wanted connection, subscriptions and
watchers from the checkpoint, which is written before the effects of each
command (write-ahead). It tells its owner it restarted (:data:`RESTORED`)
and, when started with ``await_owner`` (seconds), does not act on the
checkpointed connection until the owner's next :class:`Assert`,
:class:`Connect` or :class:`Disconnect` (or until that long passed without
one): the checkpoint may be older than the owner's last command, so the
owner's re-assertion decides.

Replies
-------
An accepted control message sent as an ask is answered with the session's
:class:`SessionStatus` after the command took effect (a connect is answered
at once, not when online: see ``request_id``). A tell gets no reply unless
refused. :class:`GetStatus` may be asked by anyone.

What the session sends
----------------------
* :class:`SessionStateChanged` to the owner and every watcher, on every
  change of :data:`SESSION_STATES`, when an online session moves to a new
  socket (``reason`` ``"switchover"``) and when a new incarnation starts
  from a checkpoint (``reason`` :data:`RESTORED`); every one carries the
  actor's ``incarnation``;
* :class:`RelayedEvent` to every watcher, for each event frame, tagged with
  this session's id;
* :class:`ConnectOutcome` to the sender of each :class:`Connect` that carried
  a ``request_id``, once: when the session is online, or when it stops trying;
* :class:`Refusal` (above) and ``token.request`` to ``token:<meeting>``
  (see :mod:`actors.sessions.contracts.token`).

Events on ``sys:events`` (address: the session's)
-------------------------------------------------
``session-state`` (``reason``: the new state; ``detail``: ``previous``,
``why``), ``refused-not-owner``, ``command-rejected``, ``sequence-mismatch``
(``detail``: ``actual``, ``expected``), ``token-unavailable``,
``switchover-failed``, ``bad-input`` (a frame that is not JSON, an internal
message from another address, a token from anyone but ``token:<meeting>``).

Tokens and the user's access token never appear in any of these messages
or events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION, SESSION_TYPES
from bus.errors import HuddleError
from bus.messages import Message, message_kind

__all__ = [
    "ACTOR_KIND",
    "RESTORED",
    "BACKOFF",
    "CLOSING",
    "CONNECTING",
    "DEFAULT_SESSION",
    "FAILED",
    "IDLE",
    "OFFLINE",
    "ONLINE",
    "PRACTICE_SESSION",
    "REFUSAL_REASONS",
    "SESSION_STATES",
    "SESSION_TYPES",
    "Assert",
    "ClaimSession",
    "CommandRejected",
    "Connect",
    "ConnectOutcome",
    "Disconnect",
    "GetStatus",
    "NotOwner",
    "Refusal",
    "RelayedEvent",
    "ReleaseSession",
    "SendFrame",
    "SessionStateChanged",
    "SessionStatus",
    "Subscribe",
    "Unsubscribe",
    "Unwatch",
    "Watch",
    "session_address",
]

ACTOR_KIND = "datachannel"

# -- session states ------------------------------------------------------------

IDLE = "idle"
"""Never asked to connect."""
CONNECTING = "connecting"
"""An attempt is in flight (token, register, open or authorize)."""
BACKOFF = "backoff"
"""Waiting before the next attempt (see ``SessionStatus.failures``)."""
ONLINE = "online"
"""The relay sent its buffer-state / registration-status frame; keepalive runs."""
CLOSING = "closing"
"""A close the session asked for is under way (forced after the grace)."""
OFFLINE = "offline"
"""Not connected and not trying: disconnected by the owner, or closed for good
by the service (``reason`` says which)."""
FAILED = "failed"
"""Gave up: refused by the service (4400/4403, HTTP 400) or out of attempts."""

SESSION_STATES = (IDLE, CONNECTING, BACKOFF, ONLINE, CLOSING, OFFLINE, FAILED)

RESTORED = "restored"
"""The ``reason`` of the :class:`SessionStateChanged` a new incarnation
sends its owner and watchers when it starts from a checkpoint (its state may
equal ``previous``): the owner re-asserts the complete wanted state with
:class:`Assert`."""

REFUSAL_REASONS = ("no-owner", "not-owner", "stale-epoch", "unclaimed-epoch", "anonymous")
"""Why a control message was refused: nobody owns the session yet; another
address owns it; an epoch older than the owner's; an epoch newer than the
owner claimed (claim it first); no sender on the envelope."""


def session_address(meeting_id: str, session_id: str) -> str:
    """The address of the data-channel actor of ``meeting_id``'s session."""
    return f"{ACTOR_KIND}:{meeting_id}/{session_id}"


# -- errors named in sys.error replies -------------------------------------------


class NotOwner(HuddleError):
    """A control message came from someone other than the session's owner."""


class CommandRejected(HuddleError):
    """The owner asked for something the session cannot do in its state."""


# -- control messages (owner only) -------------------------------------------------


@message_kind("datachannel.claim")
@dataclass(frozen=True, slots=True)
class ClaimSession(Message):
    """Make the sender the owner, at ``epoch`` (see the module docstring)."""

    epoch: int


@message_kind("datachannel.release")
@dataclass(frozen=True, slots=True)
class ReleaseSession(Message):
    """The owner gives the session up. The connection is left as it is
    (disconnect first to close it); afterwards anyone may claim."""

    epoch: int


@message_kind("datachannel.connect")
@dataclass(frozen=True, slots=True)
class Connect(Message):
    """Be connected to ``datachannel_url`` (the meeting's ``datachannelUrl``,
    or ``practiceSessionDatachannelUrl`` for the practice session).

    * empty ``datachannel_url``: refused (``no-datachannel-url``), nothing
      changes, no register call is made;
    * already online or connecting to the same URL, device and token mode:
      nothing new happens (one register, one socket);
    * online to another URL or mode: the session moves make-before-break to
      the new target and resubscribes;
    * offline, failed or idle: a first attempt starts at once.

    ``device_url`` empty means the one the actor was started with.
    ``token_auth``: ask ``token:<meeting>`` for this session type's token
    before each register, send it as ``Data-Channel-Auth-Token`` and add
    ``subscriptionAwareSubchannels`` to the socket URL. With a
    ``request_id``, the sender gets one :class:`ConnectOutcome`.
    """

    epoch: int
    datachannel_url: str
    device_url: str = ""
    token_auth: bool = False
    request_id: str = ""


@message_kind("datachannel.disconnect")
@dataclass(frozen=True, slots=True)
class Disconnect(Message):
    """Abort any register/connect/backoff in flight and close the socket.

    ``permanent=True``: close with ``(1000, "done (permanent)")`` and stay
    offline until the next :class:`Connect` (a close frame that never comes
    is forced after the grace; that forced close does not reconnect).
    ``permanent=False``: close as a transient failure would, then reconnect
    at once to the same target (a fresh socket). Subscriptions are kept
    either way: they are the session's state.
    """

    epoch: int
    permanent: bool = True
    reason: str = ""


@message_kind("datachannel.assert")
@dataclass(frozen=True, slots=True)
class Assert(Message):
    """Be exactly this, whatever came before: connected to
    ``datachannel_url`` (empty: disconnected, as a permanent
    :class:`Disconnect` would leave it) with exactly ``subchannels``.

    The owner's complete wanted state, sent after the owner restarted and
    whenever it sees a new incarnation of the session. Idempotent: an
    assert of what the session already is or is on its way to (same URL,
    device and token mode; same subchannels) changes nothing, opens no
    socket and makes no register call. A session that restarted and waits
    for its owner (see :data:`RESTORED`) acts on this, not on its checkpoint.
    ``device_url`` empty means the one the actor was started with.
    """

    epoch: int
    datachannel_url: str = ""
    device_url: str = ""
    token_auth: bool = False
    subchannels: list[str] = field(default_factory=list)
    reason: str = ""


@message_kind("datachannel.subscribe")
@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Want these subchannels (e.g. ``transcription``). Sent now if online,
    and again after every reconnect and switchover."""

    epoch: int
    subchannels: list[str]


@message_kind("datachannel.unsubscribe")
@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    """No longer want these subchannels (sent now if online)."""

    epoch: int
    subchannels: list[str]


@message_kind("datachannel.send-frame")
@dataclass(frozen=True, slots=True)
class SendFrame(Message):
    """Send one application frame (a JSON object) on the current socket, e.g.
    an announcement. An ``id`` is added when missing. Refused with
    ``not-online`` unless online; not repeated after a reconnect (the owner
    sees the new socket in :class:`SessionStateChanged` and sends again)."""

    epoch: int
    frame: dict[str, Any]


@message_kind("datachannel.watch")
@dataclass(frozen=True, slots=True)
class Watch(Message):
    """``watcher`` (an address) gets relayed events and state changes."""

    epoch: int
    watcher: str


@message_kind("datachannel.unwatch")
@dataclass(frozen=True, slots=True)
class Unwatch(Message):
    """``watcher`` no longer gets anything."""

    epoch: int
    watcher: str


# -- queries (anyone) ---------------------------------------------------------------


@message_kind("datachannel.get-status")
@dataclass(frozen=True, slots=True)
class GetStatus(Message):
    """Ask for the :class:`SessionStatus`. Not a control message."""


# -- what the session sends --------------------------------------------------------------


@message_kind("datachannel.status")
@dataclass(frozen=True, slots=True)
class SessionStatus(Message):
    """One session's state (never an aggregate over sessions).

    ``phase`` details ``connecting``: ``token``, ``register``, ``open``,
    ``authorize`` (``""`` otherwise); ``switching`` is true while an online
    session builds its next socket. ``failures`` counts failed attempts since
    the session was last online. ``counters``: ``sequence_mismatches``,
    ``stale_dropped``, ``bad_input``, ``reconnects``, ``frames_in``.
    ``incarnation`` counts the actor's starts at its address; ``awaiting_owner``
    is true while a restarted session waits for its owner's re-assertion.
    """

    meeting_id: str
    session_id: str
    state: str
    reason: str = ""
    phase: str = ""
    switching: bool = False
    owner: str = ""
    owner_epoch: int = 0
    datachannel_url: str = ""
    token_auth: bool = False
    binding: str = ""
    subscriptions: list[str] = field(default_factory=list)
    watchers: list[str] = field(default_factory=list)
    failures: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    incarnation: int = 0
    awaiting_owner: bool = False


@message_kind("datachannel.state-changed")
@dataclass(frozen=True, slots=True)
class SessionStateChanged(Message):
    """This session's state changed (or, with ``state == previous ==
    "online"`` and ``reason == "switchover"``, it moved to a new socket:
    ``binding`` is the new one; or, with ``reason ==`` :data:`RESTORED`, a
    new incarnation started). ``incarnation`` counts the session actor's
    starts at its address: an owner that sees it change knows the session
    restarted and re-asserts its complete wanted state (:class:`Assert`)."""

    meeting_id: str
    session_id: str
    state: str
    previous: str
    reason: str = ""
    binding: str = ""
    incarnation: int = 0


@message_kind("datachannel.event")
@dataclass(frozen=True, slots=True)
class RelayedEvent(Message):
    """An event frame from the relay service, as received on this session's
    socket: ``event_type`` is ``data.eventType``, ``data`` the frame's
    ``data``; ``sequence_number`` is ``-1`` when the frame had none."""

    meeting_id: str
    session_id: str
    event_type: str
    data: dict[str, Any]
    sequence_number: int = -1


@message_kind("datachannel.connect-outcome")
@dataclass(frozen=True, slots=True)
class ConnectOutcome(Message):
    """The end of one :class:`Connect` request: ``online`` true once the
    session is online; false when it stopped trying (``state`` and
    ``reason`` say why: disconnected, refused, out of attempts...)."""

    meeting_id: str
    session_id: str
    request_id: str
    online: bool
    state: str
    reason: str = ""


@message_kind("datachannel.refusal")
@dataclass(frozen=True, slots=True)
class Refusal(Message):
    """A control message sent as a tell was refused. ``error_type`` is
    ``"NotOwner"`` or ``"CommandRejected"``; ``command`` its kind."""

    meeting_id: str
    session_id: str
    command: str
    error_type: str
    reason: str
