"""The one ``huddle node`` harness (ops/processes.py), on real processes and
a real Redis: ready, paused, resumed, stopped by PID; a node that cannot
start says why at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.embedded import EmbeddedRedis
from ops.processes import NodeProcess, NodeStartError

pytestmark = pytest.mark.integration


def _state(pid: int) -> set[str]:
    states = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        states.add(stat[stat.rindex(")") + 2])
    return states


def test_a_node_is_ready_paused_resumed_and_stopped_gracefully_by_its_pid(redis_server: EmbeddedRedis,
                                                                          tmp_path: Path) -> None:
    node = NodeProcess.start("harness-1", redis_server.url, tmp_path, ["--echo", "echo:harness-1"])
    try:
        node.wait_ready()
        assert node.alive and node.ready_file.read_text().strip() == "harness-1"
        if Path("/proc/self/task").is_dir():
            node.pause()
            assert _state(node.pid) <= {"T", "t"}
            node.resume()
        assert node.stop() == 0, node.output()  # SIGTERM: a clean exit
        assert not node.alive
    finally:
        node.kill()


def test_a_node_that_cannot_start_fails_its_wait_with_its_output(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    node = NodeProcess.start("harness-2", redis_server.url, tmp_path, ["--no-such-option"])
    try:
        with pytest.raises(NodeStartError, match="exited with 2 before it was ready") as caught:
            node.wait_ready()
        assert "--no-such-option" in str(caught.value)  # argparse said what was wrong
    finally:
        node.kill()


def test_kill_is_at_once_and_returns_when_it_was_sent(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    node = NodeProcess.start("harness-3", redis_server.url, tmp_path)
    node.wait_ready()
    sent = node.kill()
    assert node.killed_at == sent and node.proc.returncode == -9
    assert node.stop() == -9  # idempotent: already gone
