"""Checks, recoveries, the summary and its exit code; the replay pattern
of a false interruption as a sink hears it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.demo.report import Check, Recovery, Summary, percentile, replay_pattern


def test_s39_what_the_sink_receives_after_pause_and_resume_is_the_replay_pattern() -> None:
    # S39 (docs/scenarios.md): frames 0-9, then 5-9 again, then frame 10.
    assert replay_pattern([*range(10), *range(5, 11)], 11) == (True, 5)
    # A media endpoint fed at each slot's start hears at most the frame in play again.
    assert replay_pattern([*range(17), *range(16, 50)], 50) == (True, 1)
    assert replay_pattern(list(range(50)), 50) == (True, 0)


@pytest.mark.parametrize("seqs", [
    [0, 1, 2, 4, 5],            # a frame missing
    [0, 1, 2, 3, 4, 5, 3, 4],   # replayed but never went on to the end (frames=6)
    [1, 2, 3, 4, 5],            # the first frame missing
    [0, 1, 2, 3, 2, 3, 2, 3, 4, 5],  # replayed twice
    [0, 1, 2, 4, 3, 5],         # out of order
])
def test_anything_else_is_not_the_replay_pattern(seqs: list[int]) -> None:
    assert replay_pattern(seqs, 6) == (False, 0)


@given(st.integers(1, 60), st.data())
def test_every_pause_point_and_kept_run_makes_a_valid_pattern(frames: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, frames))
    j = data.draw(st.integers(0, k))
    seqs = [*range(k), *range(j, frames)]
    assert replay_pattern(seqs, frames) == (True, k - j)


def test_the_exit_code_is_0_only_when_there_were_checks_and_all_held() -> None:
    assert Summary().exit_code == 1
    held = Summary(checks=[Check("p", "a", True), Check("p", "b", True)])
    assert held.exit_code == 0
    assert Summary(checks=[Check("p", "a", True), Check("p", "b", False)]).exit_code == 1
    assert Summary(checks=[Check("p", "a", True)], not_run=["leave"]).exit_code == 1


def test_the_summary_states_the_figures_and_names_each_failed_check() -> None:
    summary = Summary(sessions_wanted=15, sessions_settled=14, refusals=2, refusals_expected=2,
                      captions_expected=45, messages_lost=1, duplicates=0, subscriptions_wanted=15,
                      subscriptions_lost=1,
                      recoveries=[Recovery("node kill (w1)", skipped="cluster failover not available"),
                                  Recovery("service restart", [0.5, 1.0, 2.0, None])],
                      checks=[Check("captions", "caption c1 reached everyone", False, "1 lost"),
                              Check("leave", "everyone left", True)])
    text = "\n".join(summary.lines())
    assert "sessions settled    14 of 15" in text
    assert "node kill (w1): skipped: cluster failover not available" in text
    assert "service restart: 3 of 4 sessions back, p50 1.00 s, max 2.00 s, 1 never" in text
    assert "refusals            2 (expected 2" in text
    assert "messages lost       1 (of 45 captions relayed; 0 duplicates)" in text
    assert "subscriptions lost  1 (of 15" in text
    assert "checks              1 of 2 passed" in text
    assert "FAIL caption c1 reached everyone (1 lost)" in text
    assert text.endswith("result: FAILED")


def test_a_recovery_with_nobody_back_says_so() -> None:
    assert Recovery("restart", [None, None]).line() == "restart: none of 2 sessions back"
    assert Recovery("restart", [12.345]).line() == "restart: 1 of 1 sessions back, p50 12.3 s, max 12.3 s"


def test_percentile_by_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert percentile([5.0], 0.99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
