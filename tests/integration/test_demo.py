"""The README's main job, as CI runs it: a short `huddle demo` on an
embedded Redis with real worker processes, ending in a green summary."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(180)
def test_demo_runs_to_a_green_summary() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "actors.cli", "demo", "--workers", "2", "--asks", "20"],
        capture_output=True, text=True, timeout=170,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "summary: 7 of 7 checks passed" in out, out
    assert "FAIL" not in out
