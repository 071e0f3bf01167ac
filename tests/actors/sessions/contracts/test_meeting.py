"""The meeting contract's messages (actors/sessions/contracts/meeting.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts import meeting

from tests.kinds import round_trips, secrets_declared_and_hidden


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_kind_goes_through_the_codec_unchanged(data: st.DataObject) -> None:
    round_trips(data, meeting)


def test_secrets_are_declared_and_kept_out_of_repr() -> None:
    assert secrets_declared_and_hidden(meeting) == ['Joined', 'StartMeeting']
