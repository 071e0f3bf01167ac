"""The transfer contract's messages (actors/sessions/contracts/transfer.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts import transfer
from actors.sessions.contracts.transfer import transfer_address
from bus.address import parse_address

from tests.kinds import round_trips, secrets_declared_and_hidden


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_kind_goes_through_the_codec_unchanged(data: st.DataObject) -> None:
    round_trips(data, transfer)


def test_secrets_are_declared_and_kept_out_of_repr() -> None:
    assert secrets_declared_and_hidden(transfer) == []


def test_a_transfer_lives_at_its_id() -> None:
    assert transfer_address("t-1") == "transfer:t-1" and parse_address(transfer_address("t-1")).kind == "transfer"
