"""The ``huddle`` command line, run as real processes.

The benchmark checks are smoke checks of the output's shape (three flat maps
of numbers), never of speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import redis7_or_skip

from .conftest import DEADLINE, REPO_ROOT, NodeProcesses, huddle_cmd

pytestmark = pytest.mark.integration

BENCH_TIMEOUT = 120.0


def run(*args: str, env: dict[str, str] | None = None, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """``huddle ARGS`` with this interpreter; REDIS_URL only if ``env`` sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    full_env.update(env or {})
    return subprocess.run(huddle_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False)


# -- help ---------------------------------------------------------------------


def test_the_huddle_entry_point_is_installed() -> None:
    script = Path(sys.executable).parent / "huddle"
    assert script.exists(), f"no console script at {script}"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert out.returncode == 0, out.stderr
    assert "usage: huddle" in out.stdout


@pytest.mark.parametrize(
    ("command", "must_mention"),
    [
        ([], ["node", "inject", "bench", "REDIS_URL", "redis://", "--help"]),
        (["node"], ["REDIS_URL", "--redis-url", "--echo", "--ready-file", "embedded", "example:",
                    "huddle inject echo:1 sys.ping"]),
        (["inject"], ["REDIS_URL", "ADDRESS", "KIND", "JSON_BODY", "--ask", "--timeout", "examples:",
                      "huddle inject echo:1 sys.ping"]),
        (["bench"], ["density", "tell-local", "tell-remote", "ask-remote", "--quick", "--json-out", "figures",
                     "baseline", "goal"]),
    ],
    ids=["huddle", "node", "inject", "bench"],
)
def test_help_exits_0_and_teaches(command: list[str], must_mention: list[str]) -> None:
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    for text in must_mention:
        assert text in out.stdout, f"`huddle {' '.join(command)} --help` does not mention {text!r}"


def test_no_command_is_a_usage_error() -> None:
    out = run()
    assert out.returncode == 2
    assert "usage: huddle" in out.stderr


# -- inject: refusals before anything is sent ----------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["echo:1", "sys.ping", '{"n": 3'], "JSON_BODY is not JSON"),
        (["echo:1", "sys.ping", '{"n": "three"}'], "sys.ping.n: expected int, got str"),
        (["echo:1", "sys.ping", '{"m": 1}'], "sys.ping.m: unknown field"),
        (["echo:1", "sys.ping", "[1, 2]"], "body must be a map"),
        (["echo:1", "sys.nope", "{}"], "unknown-kind: sys.nope"),
        (["not an address", "sys.ping", "{}"], "not an address"),
    ],
    ids=["bad-json", "wrong-field-type", "unknown-field", "not-a-map", "unknown-kind", "bad-address"],
)
def test_inject_refuses_bad_input_with_exit_2(redis_url: str, args: list[str], expected: str) -> None:
    out = run("inject", *args, env={"REDIS_URL": redis_url})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_inject_refusal_lists_the_known_kinds(redis_url: str) -> None:
    out = run("inject", "echo:1", "sys.nope", "{}", env={"REDIS_URL": redis_url})
    assert out.returncode == 2
    assert "sys.ping" in out.stderr


def test_inject_without_a_bus_says_how_to_give_one() -> None:
    out = run("inject", "echo:1", "sys.ping", '{"n": 1}')
    assert out.returncode == 2
    assert "REDIS_URL" in out.stderr


# -- inject against a running node -----------------------------------------------


def test_inject_ask_prints_the_pong_as_json(node_procs: NodeProcesses, redis_url: str) -> None:
    node_procs.start("echo:1")
    out = run("inject", "echo:1", "sys.ping", '{"n": 3}', "--ask", env={"REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"kind": "sys.pong", "n": 3, "payload": ""}


def test_inject_with_redis_url_flag_and_a_tell(node_procs: NodeProcesses, redis_url: str) -> None:
    node_procs.start("echo:1")
    out = run("inject", "echo:1", "sys.ping", '{"n": 4}', "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    assert "sent sys.ping to echo:1" in out.stdout


def test_inject_ask_to_an_address_nobody_hosts_fails_with_exit_1(redis_url: str) -> None:
    out = run("inject", "echo:nobody", "sys.ping", '{"n": 1}', "--ask", "--timeout", "5",
              env={"REDIS_URL": redis_url})
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "UnknownAddress" in out.stderr
    assert "echo:nobody" in out.stderr
    assert out.stdout == ""


# -- bench: the output's shape ----------------------------------------------------


def _check_bench_output(stdout: str, written: Path, figures: set[str]) -> None:
    result = json.loads(stdout)
    assert set(result) == {"figures", "baseline", "goal"}
    for section in result.values():
        assert isinstance(section, dict) and section
        for name, value in section.items():
            assert isinstance(name, str)
            assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
    assert figures <= set(result["figures"])
    assert set(result["goal"]) <= set(result["figures"])
    on_disk = json.loads(written.read_text())
    assert {k: on_disk[k] for k in ("figures", "baseline", "goal")} == result
    assert on_disk["meta"]["quick"] is True


@pytest.mark.parametrize(
    ("name", "figures"),
    [
        ("density", {"rss_per_actor_bytes", "start_per_actor_us"}),
        ("tell-local", {"msgs_per_s"}),
        ("tell-remote", {"msgs_per_s", "lost"}),
        ("ask-remote", {"p50_us", "p99_us", "mean_us"}),
        ("failover", {"p50_s", "p99_s", "max_s", "moved", "lost_state"}),
    ],
)
def test_bench_quick_prints_figures_baseline_goal(name: str, figures: set[str], tmp_path: Path) -> None:
    written = tmp_path / f"{name}.json"  # never overwrite ops/bench/results
    out = run("bench", name, "--quick", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, figures)


def test_bench_redis_cluster_quick_spreads_the_load_over_three_shards_and_loses_nothing(tmp_path: Path) -> None:
    redis7_or_skip()
    written = tmp_path / "redis-cluster.json"
    out = run("bench", "redis-cluster", "--quick", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, {"shards", "msgs_per_s", "lost", "shard_imbalance", "resubscribed_s",
                                              "failover_lost", "primary_cpu_s_max", "double_owner_accepted",
                                              "leases_lapsed_elsewhere", "recovered_s", "acked_lost", "duplicated"})
    figures = json.loads(out.stdout)["figures"]
    assert figures["shards"] == 3 and figures["lost"] == 0 and figures["shard_imbalance"] <= 1.25
    assert figures["resubscribed_s"] > 0  # the receiver came back after the kill (NaN if it never did)
    # Cluster mode through a primary's death: one owner at a time, the
    # live shards' leases kept, every acknowledged addition applied once.
    assert figures["double_owner_accepted"] == 0 and figures["leases_lapsed_elsewhere"] == 0
    assert figures["acked_lost"] == 0 and figures["duplicated"] == 0
    assert figures["recovered_s"] > 0  # the dead shard's counters answered again (NaN if they never did)


def test_bench_failover_meetings_quick_loses_no_survivor_lease_and_no_caption(tmp_path: Path) -> None:
    written = tmp_path / "failover-meetings.json"
    out = run("bench", "failover-meetings", "--quick", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, {"p50_s", "p99_s", "max_s", "moved", "survivor_leases_lost", "lost"})
    result = json.loads(out.stdout)
    assert result["figures"]["moved"] > 0 and result["figures"]["captions_expected"] > 0
    assert result["figures"]["survivor_leases_lost"] == 0 and result["figures"]["lost"] == 0
    assert "detection_s" in result["baseline"]


def test_bench_chaos_runs_a_short_soak_and_reports_its_invariants(tmp_path: Path) -> None:
    written = tmp_path / "chaos.json"
    out = run("bench", "chaos", "--quick", "--minutes", "0.2", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, {"double_owner_accepted", "lost", "duplicated", "violations"})
    result = json.loads(out.stdout)
    assert result["figures"]["double_owner_accepted"] == 0 and result["figures"]["lost"] == 0


def test_bench_unknown_name_is_refused() -> None:
    out = run("bench", "no-such-bench")
    assert out.returncode == 2
    assert "tell-remote" in out.stderr  # the choices are listed
