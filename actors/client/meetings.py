"""Meetings from an asyncio application: start one on the fleet, follow
what it reports, stop it.

A meeting is a tree of actors on a worker node (``huddle node
--meetings``): the application asks that node's meeting host to start it,
tells it the facts of the meeting service (joined, admitted, captions
on...), and subscribes an address to hear its outputs. These helpers do
that through a :class:`~actors.client.Client`::

    from actors.client import connect
    from actors.client.meetings import start_meeting
    from actors.sessions.contracts import meeting as mt

    async with connect(redis_url) as client:
        meeting = await start_meeting(client, "m-1", host="worker-1", access_token=token)
        async with meeting.follow() as updates:             # subscribed from here on
            await meeting.tell(mt.Joined(locus_url=..., self_id=..., datachannel_url=..., captions_on=True))
            async for update in updates:                    # MeetingState, SessionState, RelayedEvent
                print(update)
        await meeting.stop()

:meth:`Meeting.follow` subscribes the client's own address, so a client
follows one meeting at a time (a second follow, or ``client.events()``
while following, is refused with :class:`BadMeetingRequest`); leaving the
``async with`` block, :meth:`MeetingUpdates.aclose`, the end of the
iteration and :meth:`Meeting.stop` unsubscribe it. An **agent meeting**
(``voice=Voice(...)``) also has an audio output, and its follow yields
what the output played (``PlaybackStarted`` / ``PlaybackFinished``) when
it reports to the client.

What is checked here is checked before anything is sent: a meeting id or
host that cannot form an address, an empty access token, a voice without
a WebSocket media URL, a fact the meeting does not take: each raises
:class:`BadMeetingRequest` saying why. What the fleet refuses comes back
as the client's ask raises it (``RemoteError``, ``AskTimeout``...).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeAlias

from actors.client import Client, Events
from actors.runtime.hosting import AddressInUse
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, PlaybackStarted, output_address
from actors.sessions.contracts.datachannel import session_address
from actors.sessions.contracts.token import PRACTICE_SESSION
from bus.address import Address, InvalidAddress, parse_address
from bus.envelope import Envelope
from bus.errors import HuddleError, TransportError
from bus.messages import Message

__all__ = [
    "ENDED_PHASES",
    "LOCUS_FACTS",
    "BadMeetingRequest",
    "Meeting",
    "MeetingUpdates",
    "Update",
    "Voice",
    "meeting_update",
    "start_meeting",
]

#: A meeting host may take this long to answer a start or a stop: in a
#: cluster it waits up to 30 s for the tree to be placed, and answers
#: with its own error past that.
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 40.0

#: Phases after which a meeting's sessions never connect again.
ENDED_PHASES = frozenset({"left", "ended"})

#: The facts an application tells a meeting (docs/protocol.md §2).
LOCUS_FACTS: tuple[type[Message], ...] = (
    mt.Joined, mt.Left, mt.Lobby, mt.Admitted, mt.MeetingEnded, mt.LocusUrlReplaced, mt.DatachannelUrlChanged,
    mt.PracticeDatachannelUrlChanged, mt.RolesChanged, mt.PracticeSessionChanged, mt.CaptionsChanged,
    mt.LocusSnapshot, mt.Announce,
)

#: What following a meeting yields.
Update: TypeAlias = mt.MeetingState | mt.SessionState | mt.RelayedEvent | PlaybackStarted | PlaybackFinished


class BadMeetingRequest(HuddleError):
    """A meeting helper was given something that cannot work; nothing was sent."""


@dataclass(frozen=True, slots=True)
class Voice:
    """An agent meeting's audio output ``audio:<meeting>/<output>``, playing
    into the WebSocket media endpoint ``media_url`` (it may carry a
    credential, so it stays out of the repr). ``report_to`` is told what
    played; empty: the client's address, so that :meth:`Meeting.follow`
    yields it."""

    output: str
    media_url: str = field(repr=False)
    report_to: str = ""


def _meeting_address(meeting_id: str) -> str:
    # The addresses a meeting host gives its meetings and itself (the host
    # module's meeting_address / host_address, not a contract of their own).
    return f"meeting:{meeting_id}"


def _host_address(node_id: str) -> str:
    return f"meetings:{node_id}"


def _check_meeting_id(meeting_id: str) -> None:
    """Every address of the meeting's tree must be well formed; the longest
    is its practice session's."""
    try:
        Address("meeting", meeting_id)
        parse_address(session_address(meeting_id, PRACTICE_SESSION))
    except InvalidAddress as exc:
        raise BadMeetingRequest(f"meeting id {meeting_id!r} cannot name a meeting: {exc}") from None


def _check_host(host: str) -> None:
    try:
        Address("meetings", host)
    except InvalidAddress as exc:
        hint = " (give the node id, e.g. 'worker-1', not its host's address)" if ":" in str(host) else ""
        raise BadMeetingRequest(f"host {host!r} is not the node id of a meeting host{hint}: {exc}") from None


def _check_voice(meeting_id: str, voice: Voice) -> None:
    try:
        output_address(meeting_id, voice.output)
    except InvalidAddress as exc:
        raise BadMeetingRequest(f"voice output {voice.output!r} cannot name an audio output: {exc}") from None
    if not isinstance(voice.media_url, str) or not voice.media_url.startswith(("ws://", "wss://")):
        raise BadMeetingRequest("a voice's media_url must be a ws:// or wss:// URL")
    if voice.report_to:
        try:
            parse_address(voice.report_to)
        except InvalidAddress as exc:
            raise BadMeetingRequest(f"voice report_to {voice.report_to!r} is not an address: {exc}") from None


def meeting_update(envelope: Envelope, meeting_id: str, voice_address: str | None = None) -> Update | None:
    """``envelope``'s message if it is an update of meeting ``meeting_id``:
    a meeting output sent by that meeting about itself, or what its audio
    output ``voice_address`` played. None for anything else."""
    message = envelope.message
    if isinstance(message, mt.MeetingState | mt.SessionState | mt.RelayedEvent):
        if message.meeting == meeting_id and envelope.sender == _meeting_address(meeting_id):
            return message
        return None
    if isinstance(message, PlaybackStarted | PlaybackFinished) and voice_address is not None \
            and envelope.sender == voice_address:
        return message
    return None


class Meeting:
    """A meeting on the fleet, as one client sees it: where it lives, the
    host that started it (and stops it), and its audio output if it has
    one. :func:`start_meeting` returns one; ``Meeting(client, meeting_id,
    host=...)`` reaches a meeting started elsewhere."""

    def __init__(self, client: Client, meeting_id: str, *, host: str, voice_output: str = "") -> None:
        _check_meeting_id(meeting_id)
        _check_host(host)
        self.client = client
        self.meeting_id = meeting_id
        self.host = host
        self.address = _meeting_address(meeting_id)
        #: ``audio:<meeting>/<output>``, or None for a meeting that does not speak.
        self.voice: str | None = None
        if voice_output:
            try:
                self.voice = output_address(meeting_id, voice_output)
            except InvalidAddress as exc:
                raise BadMeetingRequest(f"voice output {voice_output!r} cannot name an audio output: {exc}") from None
        self._following: set[MeetingUpdates] = set()

    def __repr__(self) -> str:
        return f"Meeting({self.meeting_id!r}, host={self.host!r}, voice={self.voice!r})"

    async def tell(self, fact: Message) -> None:
        """Tell the meeting a fact of the meeting service (one of
        :data:`LOCUS_FACTS`: ``Joined``, ``Admitted``, ``CaptionsChanged``...).
        Subscriptions go through :meth:`follow`."""
        if not isinstance(fact, LOCUS_FACTS):
            what = "follow() subscribes and unsubscribes" if isinstance(fact, mt.Subscribe | mt.Unsubscribe) \
                else f"a meeting takes the facts {', '.join(k.KIND for k in LOCUS_FACTS)}"
            raise BadMeetingRequest(f"{type(fact).__name__} is not a fact to tell a meeting: {what}")
        await self.client.tell(self.address, fact)

    def follow(self) -> MeetingUpdates:
        """The meeting's updates at the client's address (see
        :class:`MeetingUpdates`): ``async with meeting.follow() as
        updates`` subscribes on entering, so facts told inside the block
        are reported; ``async for update in meeting.follow()`` subscribes
        when the iteration starts."""
        return MeetingUpdates(self)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """End every follow of this meeting (unsubscribed), then stop its
        tree for good through its host: its sessions close. True once
        stopped; False if the host had no such meeting (never started, or
        stopped already)."""
        for updates in list(self._following):
            await updates.aclose()
        return bool(await self.client.ask(_host_address(self.host), mt.StopMeeting(meeting_id=self.meeting_id),
                                          timeout=timeout))


async def start_meeting(client: Client, meeting_id: str, *, host: str, access_token: str, token_auth: bool = True,
                        voice: Voice | None = None, timeout: float = START_TIMEOUT_S) -> Meeting:
    """Start meeting ``meeting_id`` through the meeting host of node
    ``host`` (``huddle node --meetings --node-id HOST``; in a cluster any
    host, and the cluster places the tree). Returns once the host answered
    with the meeting's address: its tree is up (or placed) and takes facts.

    ``access_token`` is the user's token for the data channels and the
    token endpoint (a secret: it travels only in this start message).
    ``token_auth``: the data channels use data-channel tokens. ``voice``:
    an agent meeting's audio output. Raises :class:`BadMeetingRequest`
    before sending anything it can tell will not work, and what the ask
    raises (``RemoteError`` when the host refused, ``AskTimeout``)."""
    _check_meeting_id(meeting_id)
    _check_host(host)
    if not isinstance(access_token, str) or not access_token:
        raise BadMeetingRequest("start_meeting needs the user's access token (a non-empty str)")
    audio: dict[str, str] = {}
    if voice is not None:
        _check_voice(meeting_id, voice)
        audio = {"audio_output": voice.output, "audio_report_to": voice.report_to or client.address,
                 "media_url": voice.media_url}
    start = mt.StartMeeting(meeting_id=meeting_id, access_token=access_token, token_auth=token_auth, **audio)
    answer = await client.ask(_host_address(host), start, timeout=timeout)
    if answer != _meeting_address(meeting_id):
        raise HuddleError(f"meetings:{host} answered the start of {meeting_id} with {answer!r}, not its address")
    return Meeting(client, meeting_id, host=host, voice_output=voice.output if voice is not None else "")


class MeetingUpdates:
    """One follow of a meeting: an async iterator of its :data:`Update`
    messages, in the order they arrived, and an async context manager.

    Subscribes the client's address on entering (or on the first
    ``__anext__``), keeps only this meeting's updates (anything else
    delivered at the client's address is counted in :attr:`skipped`), and
    unsubscribes when closed: on leaving the ``async with`` block,
    :meth:`aclose`, :meth:`Meeting.stop`, or the client closing (the
    iteration then ends). Iterating without ``async with`` and breaking
    out leaves the client subscribed until :meth:`aclose` or the client's
    end."""

    def __init__(self, meeting: Meeting) -> None:
        self.meeting = meeting
        #: Messages delivered at the client's address that were not this meeting's updates.
        self.skipped = 0
        self._events: Events | None = None
        self._closed = False

    async def open(self) -> MeetingUpdates:
        """Listen at the client's address and subscribe it (what the meeting
        reports from here on is heard). Idempotent."""
        if self._events is not None or self._closed:
            return self
        client = self.meeting.client
        try:
            self._events = client.events()
        except AddressInUse:
            raise BadMeetingRequest(f"{client.address} already listens (one follow, or one events(), at a time "
                                    "per client: close the other first)") from None
        self.meeting._following.add(self)
        try:
            await self._events.ready()
            await client.tell(self.meeting.address, mt.Subscribe(address=client.address))
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Unsubscribe and stop listening; the iteration ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.meeting._following.discard(self)
        events, self._events = self._events, None
        if events is None:
            return
        client = self.meeting.client
        try:
            await client.tell(self.meeting.address, mt.Unsubscribe(address=client.address))
        except TransportError:
            pass  # the client is closed: its address went with it
        # Waits for the client's inbox to stop (not on this loop's time).
        await asyncio.to_thread(events.close)

    async def __aenter__(self) -> MeetingUpdates:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __aiter__(self) -> MeetingUpdates:
        return self

    async def __anext__(self) -> Update:
        await self.open()
        events = self._events
        if events is not None:
            async for envelope in events:
                update = meeting_update(envelope, self.meeting.meeting_id, self.meeting.voice)
                if update is not None:
                    return update
                self.skipped += 1
        await self.aclose()
        raise StopAsyncIteration
