"""How a meeting's tree starts on a node by itself (the cluster's factory):
its start arguments, the access tokens it may use, the claim epoch of a
re-activated meeting. No I/O beyond a temporary file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.runtime.actor import ActorContext
from actors.cluster import encode_start_args
from actors.sessions.context import Secret
from actors.sessions.contracts import meeting as mt
from actors.sessions.meeting.actor import claim_epoch
from actors.sessions.meeting.host import MissingAccessToken, NodeMeetings, read_access_token, tree_start_args
from actors.runtime.node import Node
from bus.transport import InProcessHub, InProcessTransport


@pytest.fixture
def node() -> Iterator[Node]:
    node = Node(InProcessTransport(InProcessHub()), node_id="n1")
    yield node
    node.shutdown()


def test_a_placed_trees_start_arguments_never_hold_the_access_token() -> None:
    start = mt.StartMeeting(meeting_id="m-1", access_token="user-token-XYZ", audio_output="voice",
                            audio_report_to="app:a", media_url="ws://127.0.0.1:9/media")
    args = tree_start_args(start)
    assert args == {"meeting_id": "m-1", "channel_auth": True, "audio_output": "voice", "audio_report_to": "app:a",
                    "media_url": "ws://127.0.0.1:9/media"}
    assert "user-token-XYZ" not in repr(args)
    encode_start_args(args)  # the cluster stores them: no name that looks like a secret
    assert tree_start_args(mt.StartMeeting(meeting_id="m-2", access_token="t", token_auth=False)) == {
        "meeting_id": "m-2", "channel_auth": False}


def test_a_meeting_starts_with_its_users_token_if_this_node_got_it_else_the_nodes(node: Node) -> None:
    meetings = NodeMeetings(node, "https://devices.example/n1", access_token=Secret("node-token"))
    meetings.remember("m-1", Secret("user-token"))
    meetings.remember("m-2", Secret(""))  # none given: nothing remembered
    assert meetings.token_for("m-1").reveal() == "user-token"
    assert meetings.token_for("m-2").reveal() == "node-token"
    bare = NodeMeetings(node, "https://devices.example/n1")
    with pytest.raises(MissingAccessToken):
        bare.token_for("m-3")
    meetings.close()
    bare.close()


def test_the_factory_starts_a_tree_only_at_its_own_address(node: Node) -> None:
    meetings = NodeMeetings(node, "https://devices.example/n1", access_token=Secret("node-token"))
    elsewhere = ActorContext(address="meeting-tree:other", node=node)
    with pytest.raises(ValueError):
        meetings.tree(elsewhere, meeting_id="m-1")
    meetings.close()
    with pytest.raises(Exception, match="closed"):
        meetings.tree(ActorContext(address="meeting-tree:m-1", node=node), meeting_id="m-1")


def test_the_node_access_token_file_is_read_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n  secret-token-1  \nsecond line\n")
    token = read_access_token(path)
    assert token.reveal() == "secret-token-1" and "secret-token-1" not in repr(token)
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(MissingAccessToken, match="empty"):
        read_access_token(tmp_path / "empty")
    with pytest.raises(MissingAccessToken, match="cannot read"):
        read_access_token(tmp_path / "missing")


@given(st.integers(0, 2**62), st.integers(1, 10_000), st.integers(1, 10_000), st.integers(1, 10**9))
def test_a_restart_and_a_move_both_claim_higher_and_the_epoch_fits_msgpack(lease: int, incarnation: int,
                                                                           later: int, gap: int) -> None:
    first = claim_epoch(lease, incarnation)
    assert claim_epoch(lease, incarnation + later) > first  # restarted on the same node
    # Moved: the next lease epoch is a clock reading, ahead by the time the move took (microseconds).
    assert claim_epoch(lease + 10_000 + gap, 1) > first
    assert claim_epoch(lease, incarnation) < 2**63
