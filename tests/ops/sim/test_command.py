"""``huddle sim`` as a user runs it: a bounded number of seeds of each
workload on every change (faults drawn from each seed, the invariants
checked), and a seed replayed in another process giving the same run (the
same ``trace_hash``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

CI_SEEDS = 5


def _sim(*args: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}  # the command sets its own
    proc = subprocess.run([sys.executable, "-m", "ops.cli", "sim", *args, "--json"], capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("workload", ["counter", "webinar"])
def test_a_bounded_number_of_seeds_runs_clean(workload: str) -> None:
    code, figures, err = _sim("--workload", workload, "--seeds", str(CI_SEEDS), "--first", "100")
    assert code == 0, err
    assert figures["seeds"] == CI_SEEDS and figures["violations"] == 0 and figures["failed_seeds"] == []
    assert figures["faults_injected"] >= CI_SEEDS  # faults were injected: the runs were not calm ones
    assert figures["simulated_s"] >= CI_SEEDS * 20
    assert set(figures) >= {"events", "seconds", "seeds_per_min"}


@pytest.mark.parametrize("workload", ["counter", "webinar"])
def test_a_seed_replays_exactly_in_another_process(workload: str) -> None:
    short = ("--workload", workload, "--seconds", "10")  # faults for the first 5 of them
    first = _sim(*short, "--seed", "42")[1]
    second = _sim(*short, "--seed", "42")[1]
    assert first["faults_injected"] > 0
    assert first["trace_hash"] == second["trace_hash"]
    assert first["faults_injected"] == second["faults_injected"] and first["events"] == second["events"]
    assert _sim(*short, "--seed", "43")[1]["trace_hash"] != first["trace_hash"]


def test_faults_are_chosen_by_name_and_a_wrong_name_is_refused() -> None:
    code, figures, _ = _sim("--workload", "webinar", "--seed", "1", "--faults", "none")
    assert code == 0 and figures["faults_injected"] == 0
    code, figures, _ = _sim("--workload", "webinar", "--seed", "1", "--faults", "drop,close")
    assert code == 0 and figures["faults_injected"] > 0
    proc = subprocess.run([sys.executable, "-m", "ops.cli", "sim", "--seed", "1", "--faults", "meteor"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "unknown faults meteor" in proc.stderr and "redis-restart" in proc.stderr


def test_changes_are_chosen_by_name_and_a_wrong_name_is_refused() -> None:
    code, calm, _ = _sim("--workload", "webinar", "--seed", "1", "--faults", "none", "--changes", "none")
    assert code == 0 and calm["events"] > 0
    code, changing, _ = _sim("--workload", "webinar", "--seed", "1", "--faults", "none", "--changes", "rejoin,role")
    assert code == 0 and changing["events"] > calm["events"]  # rejoins reconnect sessions: more happens
    proc = subprocess.run([sys.executable, "-m", "ops.cli", "sim", "--workload", "webinar", "--seed", "1",
                           "--changes", "meteor"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "unknown changes meteor" in proc.stderr and "incoming-call" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ops.cli", "sim", "--seed", "1", "--changes", "none"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "webinar" in proc.stderr
