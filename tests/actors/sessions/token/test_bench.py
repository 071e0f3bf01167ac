"""``huddle bench token-fetch --quick``: a smoke check of the output's shape
(never of speed), as for the other benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli import BENCH_TIMEOUT, _check_bench_output, run

pytestmark = pytest.mark.integration


def test_token_fetch_bench_quick_prints_figures_baseline_goal(tmp_path: Path) -> None:
    written = tmp_path / "token-fetch.json"  # never overwrite ops/bench/results
    out = run("bench", "token-fetch", "--quick", "--json-out", str(written), timeout=BENCH_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_bench_output(out.stdout, written, {"fetches_per_s", "held_grants_per_s", "fetches_per_s_vs_baseline"})
