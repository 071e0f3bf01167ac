"""The token contract's messages (actors/sessions/contracts/token.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts import token
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION, SESSION_TYPES, token_address
from bus.address import parse_address

from tests.kinds import round_trips, secrets_declared_and_hidden


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_kind_goes_through_the_codec_unchanged(data: st.DataObject) -> None:
    round_trips(data, token)


def test_secrets_are_declared_and_kept_out_of_repr() -> None:
    assert secrets_declared_and_hidden(token)  # the tokens it hands over


def test_a_meetings_token_actor_and_its_session_types() -> None:
    assert token_address("m-1") == "token:m-1" and parse_address(token_address("m-1")).kind == "token"
    assert SESSION_TYPES == (DEFAULT_SESSION, PRACTICE_SESSION)
