"""Messages of the ``meeting:<id>`` actor.

**Inputs: locus events.** The application (a meeting client's locus
listener, or a test) tells the meeting actor what the meeting service
reported, one typed message per change. Each is a fact, not a command: the
meeting actor decides what its data channels and tokens must do (docs/protocol.md
§2). A restarted meeting actor re-derives everything from its
checkpoint plus :class:`LocusSnapshot`, which the application may send at
any time (it replaces every fact at once).

**Outputs: to subscribers.** Whoever sent :class:`Subscribe` (an address)
gets :class:`MeetingState` whenever the meeting's own state changes
(admission is announced at once, never after a token fetch),
:class:`SessionState` for each data-channel session (never aggregated), and
:class:`RelayedEvent` for every event a session relays (captions,
reactions...), tagged with the session it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from bus.messages import Message, message_kind

__all__ = [
    "Admitted",
    "Announce",
    "CaptionsChanged",
    "DatachannelUrlChanged",
    "Joined",
    "Left",
    "Lobby",
    "LocusSnapshot",
    "LocusUrlReplaced",
    "MeetingEnded",
    "MeetingState",
    "PracticeDatachannelUrlChanged",
    "PracticeSessionChanged",
    "RelayedEvent",
    "RolesChanged",
    "SessionState",
    "Subscribe",
    "Unsubscribe",
]


@message_kind("meeting.joined")
@dataclass(frozen=True, slots=True)
class Joined(Message):
    """The join response. Tokens from it (``self.datachannelToken`` and
    ``self.practiceSessionDatachannelToken``) are secrets, handed on to the
    meeting's token actor and never stored by the meeting."""

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("datachannel_token", "practice_datachannel_token")

    locus_url: str
    self_id: str
    datachannel_url: str = ""
    practice_datachannel_url: str = ""
    in_lobby: bool = False
    panelist: bool = False
    practice_session_on: bool = False
    captions_on: bool = False
    datachannel_token: str = field(default="", repr=False)
    practice_datachannel_token: str = field(default="", repr=False)


@message_kind("meeting.left")
@dataclass(frozen=True, slots=True)
class Left(Message):
    reason: str = ""


@message_kind("meeting.lobby")
@dataclass(frozen=True, slots=True)
class Lobby(Message):
    """Moved to the lobby (an unadmitted guest)."""


@message_kind("meeting.admitted")
@dataclass(frozen=True, slots=True)
class Admitted(Message):
    """Admitted from the lobby."""


@message_kind("meeting.locus-url-replaced")
@dataclass(frozen=True, slots=True)
class LocusUrlReplaced(Message):
    locus_url: str


@message_kind("meeting.datachannel-url")
@dataclass(frozen=True, slots=True)
class DatachannelUrlChanged(Message):
    """``url`` empty: a delta cleared it (the connection is kept)."""

    url: str = ""


@message_kind("meeting.practice-datachannel-url")
@dataclass(frozen=True, slots=True)
class PracticeDatachannelUrlChanged(Message):
    url: str = ""


@message_kind("meeting.roles")
@dataclass(frozen=True, slots=True)
class RolesChanged(Message):
    panelist: bool


@message_kind("meeting.practice-session")
@dataclass(frozen=True, slots=True)
class PracticeSessionChanged(Message):
    on: bool


@message_kind("meeting.captions")
@dataclass(frozen=True, slots=True)
class CaptionsChanged(Message):
    on: bool


@message_kind("meeting.ended")
@dataclass(frozen=True, slots=True)
class MeetingEnded(Message):
    pass


@message_kind("meeting.snapshot")
@dataclass(frozen=True, slots=True)
class LocusSnapshot(Message):
    """Every fact at once (after a restart, or to resynchronise)."""

    joined: bool
    locus_url: str = ""
    self_id: str = ""
    in_lobby: bool = False
    datachannel_url: str = ""
    practice_datachannel_url: str = ""
    panelist: bool = False
    practice_session_on: bool = False
    captions_on: bool = False


@message_kind("meeting.announce")
@dataclass(frozen=True, slots=True)
class Announce(Message):
    """A frame the meeting sends on each of its data channels as it comes
    online (first connect, reconnect, switchover, a practice session that
    starts later), until replaced by the next announcement."""

    frame: dict[str, Any]


@message_kind("meeting.subscribe")
@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """``address`` receives this meeting's outputs until it unsubscribes."""

    address: str


@message_kind("meeting.unsubscribe")
@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    address: str


@message_kind("meeting.state")
@dataclass(frozen=True, slots=True)
class MeetingState(Message):
    """The meeting's own state: ``phase`` is one of ``idle``, ``lobby``,
    ``admitted``, ``left``, ``ended``."""

    meeting: str
    phase: str
    panelist: bool = False


@message_kind("meeting.session-state")
@dataclass(frozen=True, slots=True)
class SessionState(Message):
    meeting: str
    session: str
    state: str
    reason: str = ""


@message_kind("meeting.relayed-event")
@dataclass(frozen=True, slots=True)
class RelayedEvent(Message):
    meeting: str
    session: str
    event_type: str
    data: Any = None


# -- hosting: the per-node meeting host (``meetings:<node-id>``) ---------------


@message_kind("meeting.start")
@dataclass(frozen=True, slots=True)
class StartMeeting(Message):
    """Ask a node's meeting host to start ``meeting_id``'s supervision tree.
    Answered (as an ask) with the meeting's address once every child is up.
    ``access_token`` is the user's token for the data channels' authorization
    frames and the token endpoint: a secret, kept only in the tree's
    in-memory start arguments.

    An **agent meeting** also speaks: with ``audio_output`` (an output
    name) the tree gets an audio output at ``audio:<meeting_id>/<output>``
    that plays into the WebSocket media endpoint ``media_url`` (the sink
    wire of :mod:`actors.sessions.audio.sinks`) and reports ``playback_started`` /
    ``playback_finished`` to ``audio_report_to`` (the agent that speaks).
    ``media_url`` may carry a credential in its query, so it is redacted
    like a secret."""

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("access_token", "media_url")

    meeting_id: str
    access_token: str = field(repr=False)
    token_auth: bool = True
    audio_output: str = ""
    audio_report_to: str = ""
    media_url: str = field(default="", repr=False)


@message_kind("meeting.stop")
@dataclass(frozen=True, slots=True)
class StopMeeting(Message):
    """Stop ``meeting_id``'s tree for good (its sessions close)."""

    meeting_id: str
