"""bus/cluster/messages.py: what the cluster says on ``sys:nodes`` goes
through the codec unchanged and holds nothing secret (monitors decode it)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.cluster import messages
from bus.cluster.messages import LeaseChange
from tests.kinds import kinds_in, round_trips, secrets_declared_and_hidden


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_kind_goes_through_the_codec_unchanged(data: st.DataObject) -> None:
    round_trips(data, messages)


def test_nothing_on_sys_nodes_is_secret() -> None:
    assert {cls.__name__ for cls in kinds_in(messages)} == {"NodeHeartbeat", "LeaseChange", "NodeLeft", "DrainNode"}
    assert secrets_declared_and_hidden(messages) == []


def test_a_claims_announcement_carries_no_epoch_of_its_own() -> None:
    # The claim script draws the epoch after the node encoded the
    # announcement: receivers ask the lease store, never this field.
    assert LeaseChange(address="meeting:m-1", node="n1", change="acquired").epoch == 0
