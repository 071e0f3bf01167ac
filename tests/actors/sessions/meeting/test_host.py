"""The meeting host starts and stops trees by message, over real Redis."""

from __future__ import annotations

import pytest

from actors.sessions.audio.feeder import FrameFeeder
from actors.sessions.audio.machine import OutputConfig
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, frame_bytes, output_address
from actors.sessions.contracts.token import DEFAULT_SESSION
from actors.sessions.meeting.host import MeetingHost, host_address
from actors.runtime.sending import RemoteError
from ops.mediareceiver import ReceiverHarness
from tests.actors.conftest import Recorder
from tests.actors.sessions.meeting.conftest import sockets

pytestmark = pytest.mark.integration


def test_start_by_message_then_stop_closes_the_sessions(node, dataserver) -> None:
    node.spawn(host_address(node.node_id), MeetingHost, "https://devices.example/d-9")
    host = node.lookup(host_address(node.node_id))
    assert host is not None and host.actor_inbox._dispatcher is node.dispatcher  # it never blocks: on the loop
    address = node.ask(host_address(node.node_id), mt.StartMeeting(meeting_id="h-1", access_token="tok-h")).get(timeout=10)
    assert address == "meeting:h-1"
    node.tell(address, mt.Joined(locus_url=dataserver.locus_url("h-1"), self_id="s",
                                 datachannel_url=dataserver.datachannel_url("h-1")), sender="app:t")
    dataserver.wait_for(lambda s: len(sockets(s, "h-1", DEFAULT_SESSION)) == 1, 15)
    assert node.ask(host_address(node.node_id), mt.StopMeeting(meeting_id="h-1")).get(timeout=10) is True
    dataserver.wait_for(lambda s: not sockets(s, "h-1", DEFAULT_SESSION, online=False), 15)
    assert not [a for a in node.addresses() if a.endswith("h-1") or "h-1/" in a]


def test_s20_a_meeting_that_is_not_the_owner_cleans_up_and_the_owner_keeps_its_connection(node, dataserver) -> None:
    node.spawn(host_address(node.node_id), MeetingHost, "https://devices.example/d-9")
    host = host_address(node.node_id)
    for meeting in ("owner-a", "call-b"):
        node.ask(host, mt.StartMeeting(meeting_id=meeting, access_token="tok")).get(timeout=10)
        node.tell(f"meeting:{meeting}", mt.Joined(locus_url=dataserver.locus_url(meeting), self_id="s",
                                                 datachannel_url=dataserver.datachannel_url(meeting)), sender="app:t")
    state = dataserver.wait_for(lambda s: all(len(sockets(s, m, DEFAULT_SESSION)) == 1 for m in ("owner-a", "call-b")), 15)
    owner_socket = sockets(state, "owner-a", DEFAULT_SESSION)[0]["id"]
    # B leaves and is torn down: its timers, subscriptions and sockets go.
    node.tell("meeting:call-b", mt.Left(reason="incoming call ended"), sender="app:t")
    assert node.ask(host, mt.StopMeeting(meeting_id="call-b")).get(timeout=10) is True
    state = dataserver.wait_for(lambda s: not sockets(s, "call-b", DEFAULT_SESSION, online=False), 15)
    assert [s["id"] for s in sockets(state, "owner-a", DEFAULT_SESSION)] == [owner_socket]


def test_an_agent_meeting_speaks_through_its_audio_output_into_the_media_endpoint(node) -> None:
    node.spawn(host_address(node.node_id), MeetingHost, "https://devices.example/d-9")
    heard = Recorder()
    config = OutputConfig()
    with ReceiverHarness() as receiver:
        start = mt.StartMeeting(meeting_id="agent-1", access_token="tok-a", audio_output="voice",
                                audio_report_to="agent:agent-1", media_url=receiver.url)
        assert "tok-a" not in repr(start) and receiver.url not in repr(start)
        assert node.ask(host_address(node.node_id), start).get(timeout=10) == "meeting:agent-1"
        output = output_address("agent-1", "voice")
        assert node.lookup(output) is not None
        pcm = bytes(frame_bytes(config.sample_rate, config.channels, config.frame_ms))
        node.spawn("agent:agent-1", FrameFeeder, output, sample_rate=config.sample_rate, channels=config.channels,
                   credit=config.capacity_frames, segments=[("hello", [pcm] * 5)], record=heard.add)
        assert heard.wait_for(lambda items: any(isinstance(m, PlaybackFinished) for m in items))
        streams = receiver.wait_for(lambda ss: any(len(s.frames) == 5 for s in ss))
    finished = [m for m in heard.snapshot() if isinstance(m, PlaybackFinished)]
    assert finished[0].segment == "hello" and not finished[0].interrupted
    assert [f[:2] for s in streams for f in s.frames] == [("hello", i) for i in range(5)]


def test_an_agent_meeting_without_a_usable_reporter_is_refused_and_the_host_keeps_serving(node) -> None:
    node.spawn(host_address(node.node_id), MeetingHost, "https://devices.example/d-9")
    bad = mt.StartMeeting(meeting_id="agent-2", access_token="tok", audio_output="voice", audio_report_to="nobody",
                          media_url="ws://127.0.0.1:9/media")
    with pytest.raises(RemoteError):
        node.ask(host_address(node.node_id), bad).get(timeout=10)
    assert node.ask(host_address(node.node_id), mt.StartMeeting(meeting_id="h-2", access_token="t")).get(
        timeout=10) == "meeting:h-2"
