"""The datachannel contract's messages (actors/sessions/contracts/datachannel.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts import datachannel
from actors.sessions.contracts.datachannel import ACTOR_KIND, session_address
from bus.address import parse_address

from tests.kinds import round_trips, secrets_declared_and_hidden


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_kind_goes_through_the_codec_unchanged(data: st.DataObject) -> None:
    round_trips(data, datachannel)


def test_secrets_are_declared_and_kept_out_of_repr() -> None:
    assert secrets_declared_and_hidden(datachannel) == []


def test_a_session_lives_at_its_meeting_and_session() -> None:
    assert session_address("m-1", "llm-default-session") == f"{ACTOR_KIND}:m-1/llm-default-session"
    assert parse_address(session_address("m-1", "llm-practice-session")).kind == ACTOR_KIND
