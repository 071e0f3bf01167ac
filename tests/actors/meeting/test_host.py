"""The meeting host starts and stops trees by message, over real Redis."""

from __future__ import annotations

import pytest

from actors.contracts import meeting as mt
from actors.contracts.token import DEFAULT_SESSION
from actors.meeting.host import MeetingHost, host_address
from tests.actors.meeting.conftest import sockets

pytestmark = pytest.mark.integration


def test_start_by_message_then_stop_closes_the_sessions(node, dataserver) -> None:
    node.spawn(host_address(node.node_id), MeetingHost, "https://devices.example/d-9")
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
