"""The webinar plan: who is in it and where each client runs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from ops.demo.plan import WebinarPlan


def test_every_tenth_attendee_from_the_first_is_a_panelist() -> None:
    plan = WebinarPlan(12)
    assert plan.attendee_ids[:2] == ("webinar-a0000", "webinar-a0001")
    assert plan.panelists == {"webinar-a0000", "webinar-a0010"}
    assert plan.meetings[-1] == plan.agent_meeting
    assert plan.victim == plan.workers[-1] != plan.workers[0]
    assert plan.incoming_call not in plan.meetings
    # The fault hits neither the first panelist nor the incoming call's target.
    assert plan.fault_target == "webinar-a0002"


def test_the_sessions_that_must_settle_are_every_default_session_and_each_panelists_practice_session() -> None:
    plan = WebinarPlan(12)
    assert len(plan.default_sessions()) == 13
    assert plan.practice_sessions() == {("webinar-a0000", PRACTICE_SESSION), ("webinar-a0010", PRACTICE_SESSION)}
    assert plan.webinar_sessions() == plan.default_sessions() | plan.practice_sessions()
    assert (plan.agent_meeting, DEFAULT_SESSION) in plan.default_sessions()


@given(st.integers(min_value=2, max_value=500))
def test_ids_are_unique_and_every_meeting_is_a_participant_or_the_agent(n: int) -> None:
    plan = WebinarPlan(n)
    assert len(set(plan.meetings)) == n + 1
    assert plan.panelists <= set(plan.attendee_ids)
    assert len(plan.panelists) == len(range(0, n, plan.panelist_every))
    assert plan.fault_target in plan.attendee_ids


@pytest.mark.parametrize("kwargs", [{"attendees": 1}, {"attendees": 5, "workers": ("w0",)},
                                    {"attendees": 5, "panelist_every": 1}])
def test_a_plan_that_cannot_run_the_scenario_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WebinarPlan(**kwargs)

