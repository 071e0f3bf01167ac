"""``huddle bench sessions`` and ``huddle bench storm`` run end to end
(``--quick``): smoke checks of the output's shape and of the invariants
that hold at any size (every session online, nothing lost), never of speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli import BENCH_TIMEOUT, _check_bench_output, run

pytestmark = pytest.mark.integration


def test_bench_sessions_quick(tmp_path: Path) -> None:
    written = tmp_path / "sessions.json"
    out = run("bench", "sessions", "--quick", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, {"all_online_s", "rss_per_session_bytes", "idle_cpu_pct", "reconnects"})
    result = json.loads(out.stdout)
    assert result["figures"]["reconnects"] == 0 and result["baseline"]["reconnects"] == 0


def test_bench_storm_quick(tmp_path: Path) -> None:
    written = tmp_path / "storm.json"
    out = run("bench", "storm", "--quick", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, {"all_resubscribed_s", "lost_subscriptions"})
    result = json.loads(out.stdout)
    assert result["figures"]["lost_subscriptions"] == 0
    assert result["figures"]["sessions_online_after"] == result["figures"]["sessions"]
