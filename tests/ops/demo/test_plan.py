"""The webinar plan: who is in it and where each client runs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from ops.demo.plan import WebinarPlan


def test_every_tenth_attendee_from_the_first_is_a_panelist_and_the_agent_runs_on_the_survivor() -> None:
    plan = WebinarPlan(12)
    assert plan.attendee_ids[:2] == ("webinar-a0000", "webinar-a0001")
    assert plan.panelists == {"webinar-a0000", "webinar-a0010"}
    assert plan.meetings[-1] == plan.agent_meeting
    assert plan.worker_of(plan.agent_meeting) == plan.workers[0] != plan.victim
    assert plan.incoming_call not in plan.meetings


def test_the_sessions_that_must_settle_are_every_default_session_and_each_panelists_practice_session() -> None:
    plan = WebinarPlan(12)
    assert len(plan.default_sessions()) == 13
    assert plan.practice_sessions() == {("webinar-a0000", PRACTICE_SESSION), ("webinar-a0010", PRACTICE_SESSION)}
    assert plan.webinar_sessions() == plan.default_sessions() | plan.practice_sessions()
    assert (plan.agent_meeting, DEFAULT_SESSION) in plan.default_sessions()


@given(st.integers(min_value=2, max_value=500))
def test_attendees_alternate_over_the_workers(n: int) -> None:
    plan = WebinarPlan(n)
    hosted = [plan.hosted_by(w) for w in plan.workers]
    assert sorted(m for h in hosted for m in h) == sorted(plan.meetings)
    # Round robin: the two workers differ by at most one attendee (plus the agent).
    attendees = [len([m for m in h if m != plan.agent_meeting]) for h in hosted]
    assert abs(attendees[0] - attendees[1]) <= 1
    assert len(set(plan.attendee_ids)) == n


@pytest.mark.parametrize("kwargs", [{"attendees": 1}, {"attendees": 5, "workers": ("w0",)},
                                    {"attendees": 5, "panelist_every": 1}])
def test_a_plan_that_cannot_run_the_scenario_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WebinarPlan(**kwargs)


def test_a_meeting_outside_the_plan_has_no_worker() -> None:
    with pytest.raises(KeyError):
        WebinarPlan(4).worker_of("someone-else")
