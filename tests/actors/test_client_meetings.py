"""The client's meeting helpers (actors/client/meetings.py) against a real
redis-server, a real ``huddle node --meetings`` process and the reference
data-channel service: a meeting started, followed (its states and the
captions its data channel relays) and stopped from an asyncio program; a
follow that unsubscribes when it ends; an agent meeting whose follow hears
what its audio output played; bad requests refused, typed, before anything
is sent.

Every wait is on something the meeting or the service reports, with a
deadline reached only when something is broken.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.client import connect
from actors.client.meetings import (
    BadMeetingRequest,
    Meeting,
    MeetingUpdates,
    Update,
    Voice,
    meeting_update,
    start_meeting,
)
from actors.sessions.audio.feeder import FrameFeeder
from actors.sessions.audio.machine import OutputConfig
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, PlaybackStarted, frame_bytes
from actors.sessions.contracts.datachannel import ONLINE
from actors.sessions.contracts.token import DEFAULT_SESSION
from bus.embedded import EmbeddedRedis
from bus.envelope import Envelope
from bus.messages import Ping
from ops.dataserver.harness import DataServerProcess
from ops.mediareceiver import ReceiverHarness
from ops.processes import NodeProcess

DEADLINE = 20.0
"""Upper bound for any wait; reached only when something is broken."""
ACCESS_TOKEN = "user-access-token"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def caption(caption_id: str, text: str) -> dict[str, Any]:
    """A caption frame as the reference service pushes it."""
    return {"data": {"eventType": "relay.event", "caption": {"id": caption_id, "text": text}}}


def joined(ds: DataServerProcess, meeting: str, *, captions: bool = True) -> mt.Joined:
    return mt.Joined(locus_url=ds.locus_url(meeting), self_id=f"self-{meeting}",
                     datachannel_url=ds.datachannel_url(meeting), captions_on=captions)


def open_sockets(state: dict[str, Any], meeting: str) -> list[dict[str, Any]]:
    return [s for s in state["sockets"] if s["meeting"] == meeting and s["open"]]


def subscribed(state: dict[str, Any], meeting: str) -> bool:
    return any(s["online"] and "transcription" in s["subscriptions"] for s in open_sockets(state, meeting))


async def next_update(updates: MeetingUpdates) -> Update:
    return await asyncio.wait_for(updates.__anext__(), DEADLINE)


async def until(updates: MeetingUpdates, wanted: type, **fields: Any) -> Any:
    """The next update of type ``wanted`` with ``fields``; what comes before is passed over."""
    while True:
        update = await next_update(updates)
        if isinstance(update, wanted) and all(getattr(update, k) == v for k, v in fields.items()):
            return update


@pytest.fixture
def meetings_node(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess.start(unique("client-meetings"), redis_server.url, tmp_path, ["--meetings"])
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


# -- against the fleet ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_meeting_is_started_followed_and_stopped_from_an_asyncio_program(
        redis_server: EmbeddedRedis, meetings_node: NodeProcess, dataserver_session: DataServerProcess) -> None:
    ds, meeting_id = dataserver_session, unique("cm")

    async def main() -> tuple[Meeting, list[Update], bool]:
        async with connect(redis_server.url) as client:
            meeting = await start_meeting(client, meeting_id, host=meetings_node.node_id, access_token=ACCESS_TOKEN)
            seen: list[Update] = []
            async with meeting.follow() as updates:
                # Subscribed on entering: the meeting says where it stands at once.
                seen.append(await next_update(updates))
                await meeting.tell(joined(ds, meeting_id))
                seen.append(await until(updates, mt.SessionState, session=DEFAULT_SESSION, state=ONLINE))
                await asyncio.to_thread(ds.wait_for, lambda s: subscribed(s, meeting_id), DEADLINE)
                reached = await asyncio.to_thread(ds.send, caption("c1", "hello from the service"),
                                                  meeting=meeting_id)
                assert reached == 1
                seen.append(await until(updates, mt.RelayedEvent))
                stopped = await meeting.stop()
                # Stopping ends the follow: the iteration is over.
                assert [u async for u in updates] == []
            return meeting, seen, stopped

    meeting, seen, stopped = asyncio.run(asyncio.wait_for(main(), 4 * DEADLINE))
    assert meeting.address == f"meeting:{meeting_id}" and meeting.voice is None
    first, online, relayed = seen
    assert isinstance(first, mt.MeetingState) and first.meeting == meeting_id and first.phase == "idle"
    assert online == mt.SessionState(meeting=meeting_id, session=DEFAULT_SESSION, state=ONLINE,
                                     reason=online.reason)
    assert isinstance(relayed, mt.RelayedEvent) and relayed.meeting == meeting_id
    assert relayed.session == DEFAULT_SESSION and relayed.event_type == "relay.event"
    assert relayed.data["caption"] == {"id": "c1", "text": "hello from the service"}
    assert stopped is True
    # The tree is gone: its socket closed, nothing reconnects it.
    ds.wait_for(lambda s: not open_sockets(s, meeting_id), DEADLINE)


@pytest.mark.integration
def test_a_closed_follow_unsubscribed_and_the_address_listens_again(
        redis_server: EmbeddedRedis, meetings_node: NodeProcess) -> None:
    meeting_id = unique("cm")

    async def main() -> tuple[Update, Update, Update, Any]:
        async with connect(redis_server.url) as client:
            meeting = await start_meeting(client, meeting_id, host=meetings_node.node_id, access_token=ACCESS_TOKEN)
            async with meeting.follow() as updates:
                first = await next_update(updates)
            # A subscriber already subscribed is told nothing new, so this
            # MeetingState says the meeting applied the Unsubscribe first.
            updates = meeting.follow()
            again = await next_update(updates)  # subscribes on the first step of the iteration
            await updates.aclose()
            assert [u async for u in updates] == []
            # Plain `async for`, broken out of: still listening until closed.
            plain = meeting.follow()
            async for third in plain:
                break
            with pytest.raises(BadMeetingRequest, match="already listens"):
                await meeting.follow().open()
            await plain.aclose()
            await meeting.follow().aclose()  # a follow never opened closes as a no-op
            # The client's address is free again for a listener of its own.
            inbox = client.events()
            await inbox.ready()
            inbox.close()
            answer = await client.ask(f"meetings:{meetings_node.node_id}",
                                      mt.StopMeeting(meeting_id=meeting_id), timeout=DEADLINE)
            return first, again, third, answer

    first, again, third, answer = asyncio.run(asyncio.wait_for(main(), 4 * DEADLINE))
    assert first == again == mt.MeetingState(meeting=meeting_id, phase="idle")
    assert third == first
    assert answer is True


@pytest.mark.integration
def test_a_second_follow_on_one_client_is_refused_while_the_first_listens(
        redis_server: EmbeddedRedis, meetings_node: NodeProcess) -> None:
    meeting_id = unique("cm")

    async def main() -> bool:
        async with connect(redis_server.url) as client:
            meeting = await start_meeting(client, meeting_id, host=meetings_node.node_id, access_token=ACCESS_TOKEN)
            async with meeting.follow() as updates:
                with pytest.raises(BadMeetingRequest, match="already listens"):
                    await meeting.follow().open()
                # The first follow is untouched by the refusal.
                assert isinstance(await next_update(updates), mt.MeetingState)
            return await meeting.stop()

    assert asyncio.run(asyncio.wait_for(main(), 4 * DEADLINE)) is True


@pytest.mark.integration
def test_a_follow_ends_when_its_client_closes(redis_server: EmbeddedRedis, meetings_node: NodeProcess) -> None:
    meeting_id = unique("cm")

    async def main() -> list[Update]:
        async with connect(redis_server.url) as client:
            meeting = await start_meeting(client, meeting_id, host=meetings_node.node_id, access_token=ACCESS_TOKEN)
            updates = await meeting.follow().open()
            await until(updates, mt.MeetingState)
        # The client is gone: what is left ends, and closing again is harmless.
        rest = [u async for u in updates]
        await updates.aclose()
        async with connect(redis_server.url) as other:
            assert await Meeting(other, meeting_id, host=meetings_node.node_id).stop() is True
        return rest

    assert asyncio.run(asyncio.wait_for(main(), 4 * DEADLINE)) == []


@pytest.mark.integration
def test_stopping_a_meeting_nobody_started_says_so(redis_server: EmbeddedRedis, meetings_node: NodeProcess) -> None:
    async def main() -> bool:
        async with connect(redis_server.url) as client:
            return await Meeting(client, unique("never"), host=meetings_node.node_id).stop()

    assert asyncio.run(asyncio.wait_for(main(), 2 * DEADLINE)) is False


@pytest.mark.integration
def test_an_agent_meeting_speaks_and_its_follow_hears_what_played(
        redis_server: EmbeddedRedis, meetings_node: NodeProcess) -> None:
    meeting_id, config, frames = unique("agent"), OutputConfig(), 15
    pcm = [bytes([i]) * frame_bytes(config.sample_rate, config.channels, config.frame_ms) for i in range(frames)]

    async def main(receiver: ReceiverHarness) -> tuple[Meeting, list[Update]]:
        async with connect(redis_server.url) as client:
            meeting = await start_meeting(client, meeting_id, host=meetings_node.node_id, access_token=ACCESS_TOKEN,
                                          voice=Voice("voice", receiver.url))
            assert meeting.voice is not None
            played: list[Update] = []
            async with meeting.follow() as updates:
                await until(updates, mt.MeetingState)
                # The agent's speech: a producer on the client's node feeds
                # the meeting's output; the output reports to the client.
                client.node.spawn(f"agent:{meeting_id}/hello", FrameFeeder, meeting.voice,
                                  sample_rate=config.sample_rate, channels=config.channels,
                                  credit=config.capacity_frames, segments=[("hello", pcm)])
                played.append(await until(updates, PlaybackStarted))
                played.append(await until(updates, PlaybackFinished))
            assert await meeting.stop() is True
            return meeting, played

    with ReceiverHarness() as receiver:
        meeting, played = asyncio.run(asyncio.wait_for(main(receiver), 4 * DEADLINE))
        heard = [f for s in receiver.streams() for f in s.frames if f[0] == "hello"]
    assert meeting.voice == f"audio:{meeting_id}/voice"
    started, finished = played
    assert started == PlaybackStarted(segment="hello")
    assert isinstance(finished, PlaybackFinished) and finished.segment == "hello" and not finished.interrupted
    assert abs(finished.position - frames * config.frame_ms / 1000) < 1e-6
    assert [f[1] for f in heard] == list(range(frames))
    assert b"".join(f[2] for f in heard) == b"".join(pcm)


# -- refused before anything is sent ----------------------------------------------------------------------------

NOBODY = "nobody-hosts-this"
"""A host no node has: a request that reached the bus would time out instead of being refused."""


@pytest.mark.integration
@pytest.mark.parametrize("meeting_id, host, token, voice, match", [
    ("a/b", NOBODY, ACCESS_TOKEN, None, "cannot name a meeting"),
    ("", NOBODY, ACCESS_TOKEN, None, "cannot name a meeting"),
    ("m" * 180, NOBODY, ACCESS_TOKEN, None, "cannot name a meeting"),
    ("m-1", "meetings:worker-1", ACCESS_TOKEN, None, "give the node id"),
    ("m-1", "", ACCESS_TOKEN, None, "not the node id"),
    ("m-1", NOBODY, "", None, "access token"),
    ("m-1", NOBODY, ACCESS_TOKEN, Voice("voice", "http://media.example/in"), "ws:// or wss://"),
    ("m-1", NOBODY, ACCESS_TOKEN, Voice("a voice", "ws://127.0.0.1:1/media"), "cannot name an audio output"),
    ("m-1", NOBODY, ACCESS_TOKEN, Voice("voice", "ws://127.0.0.1:1/media", report_to="nowhere"), "not an address"),
], ids=["slash in id", "empty id", "id too long", "host given as address", "empty host", "no token",
        "media url not a websocket", "output not an address", "report_to not an address"])
def test_a_bad_start_is_refused_typed_before_anything_is_sent(
        redis_server: EmbeddedRedis, meeting_id: str, host: str, token: str, voice: Voice | None, match: str) -> None:
    async def main() -> None:
        async with connect(redis_server.url) as client:
            with pytest.raises(BadMeetingRequest, match=match):
                await start_meeting(client, meeting_id, host=host, access_token=token, voice=voice, timeout=DEADLINE)

    asyncio.run(asyncio.wait_for(main(), 2 * DEADLINE))


@pytest.mark.integration
def test_only_locus_facts_are_told_to_a_meeting(redis_server: EmbeddedRedis) -> None:
    async def main() -> None:
        async with connect(redis_server.url) as client:
            meeting = Meeting(client, "m-1", host=NOBODY)
            with pytest.raises(BadMeetingRequest, match="follow"):
                await meeting.tell(mt.Subscribe(address=client.address))
            with pytest.raises(BadMeetingRequest, match="meeting.joined"):
                await meeting.tell(mt.StopMeeting(meeting_id="m-1"))
            with pytest.raises(BadMeetingRequest, match="cannot name a meeting"):
                Meeting(client, "m/1", host=NOBODY)
            with pytest.raises(BadMeetingRequest, match="cannot name an audio output"):
                Meeting(client, "m-1", host=NOBODY, voice_output="no/slash")

    asyncio.run(asyncio.wait_for(main(), 2 * DEADLINE))


# -- which envelopes are a meeting's updates (no I/O) ----------------------------------------------------------


@pytest.mark.parametrize("message, sender, kept", [
    (mt.MeetingState(meeting="m-1", phase="admitted"), "meeting:m-1", True),
    (mt.SessionState(meeting="m-1", session=DEFAULT_SESSION, state=ONLINE), "meeting:m-1", True),
    (mt.RelayedEvent(meeting="m-1", session=DEFAULT_SESSION, event_type="relay.event", data={}), "meeting:m-1", True),
    (PlaybackStarted(segment="s"), "audio:m-1/voice", True),
    (PlaybackFinished(segment="s", position=1.0, interrupted=False), "audio:m-1/voice", True),
    (mt.MeetingState(meeting="m-2", phase="admitted"), "meeting:m-2", False),
    (mt.MeetingState(meeting="m-1", phase="admitted"), "meeting:m-2", False),
    (mt.RelayedEvent(meeting="m-1", session=DEFAULT_SESSION, event_type="x"), None, False),
    (PlaybackStarted(segment="s"), "audio:m-2/voice", False),
    (Ping(n=1), "meeting:m-1", False),
], ids=["meeting state", "session state", "relayed event", "playback started", "playback finished",
        "another meeting", "sent by another meeting", "no sender", "another output", "not an update"])
def test_a_follow_keeps_this_meetings_updates_only(message: Any, sender: str | None, kept: bool) -> None:
    envelope = Envelope(to="app:a", message=message, sender=sender)
    assert meeting_update(envelope, "m-1", "audio:m-1/voice") == (message if kept else None)


def test_playback_reports_are_updates_only_of_a_meeting_that_speaks() -> None:
    envelope = Envelope(to="app:a", message=PlaybackStarted(segment="s"), sender="audio:m-1/voice")
    assert meeting_update(envelope, "m-1", None) is None
