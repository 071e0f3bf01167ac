"""The examples as their README runs them: each one command, a real
subprocess, read back from what it prints and its exit code.

With ``--local`` an example starts an embedded redis-server, the reference
data-channel service and a worker node itself, and must end each by its PID
however it ends: done, failed, Ctrl-C or SIGTERM (also while it is still
starting them). Without it, an example uses the fleet the environment names
(here: the session's redis-server, a ``huddle node --meetings`` and the
reference service, which the test makes relay a caption).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bus.embedded import EmbeddedRedis
from ops.dataserver.harness import DataServerProcess
from ops.demo.observed import caption_frame
from ops.processes import REPO_ROOT, NodeProcess

pytestmark = pytest.mark.integration

#: Bounds on whole runs; reached only when something is broken.
RUN_TIMEOUT_S = 90
DEADLINE = 30.0


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"examples.{name}", *args]


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end. Past :data:`RUN_TIMEOUT_S` it is interrupted
    as Ctrl-C would (so it still stops what it started) and the test fails
    with what it printed."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        pytest.fail(f"{' '.join(cmd[1:])} did not end within {RUN_TIMEOUT_S} s:\n{out}{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def started_pids(out: str) -> dict[str, int]:
    """What a ``--local`` run says it started (name -> pid)."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^local: (redis-server|huddle dataserver|huddle node "
                                                               r"[\w-]+) pid (\d+)", out, re.MULTILINE)}


def stopped_pids(out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^local: stopped (.+) pid (\d+)$", out, re.MULTILINE)}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_everything_stopped(out: str, expected: int = 3) -> None:
    started = started_pids(out)
    assert len(started) == expected, out
    assert stopped_pids(out) == started, out
    assert [name for name, pid in started.items() if not gone(pid)] == [], out


def test_the_caption_bot_prints_captions_then_stops_the_meeting_and_every_process() -> None:
    proc = run(example("caption_bot", "--local", "--max-captions", "3"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    captions = re.findall(r"^caption (\d) \[llm-default-session\]: (.+)$", proc.stdout, re.MULTILINE)
    assert [n for n, _text in captions] == ["1", "2", "3"], out
    assert all(text.strip() for _n, text in captions), out
    lines = proc.stdout.splitlines()
    # Subscribed before joining: the whole story, in order.
    assert lines.index("meeting idle") < lines.index("meeting admitted") < lines.index("llm-default-session online")
    assert re.search(r"^stopped meeting:captions-\w+: True$", proc.stdout, re.MULTILINE), out
    assert_everything_stopped(out)


def test_the_voice_agent_speaks_through_the_meetings_audio_output_and_stops_every_process() -> None:
    proc = run(example("voice_agent", "--local", "--replies", "2"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"^started meeting:(agent-\w+) on examples-worker, speaking through audio:\1/voice$",
                     proc.stdout, re.MULTILINE), out
    played = re.findall(r"^played (greeting|reply-\d+): (\d+\.\d\d) s", proc.stdout, re.MULTILINE)
    assert len(played) == 2 and played[0][0] == "greeting", out
    assert "speaking greeting" in proc.stdout and "heard: " in proc.stdout, out
    # What played crossed a real socket to the media endpoint.
    received = re.search(r"^local: the media receiver got (\d+) frames", proc.stdout, re.MULTILINE)
    assert received and int(received.group(1)) > 0, out
    assert_everything_stopped(out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("when, line", [("starting", "local: redis-server pid"), ("running", "caption 1 ")],
                         ids=["while starting", "while running"])
def test_an_interrupted_example_stops_every_process_it_started(signum: int, when: str, line: str) -> None:
    proc = subprocess.Popen(example("caption_bot", "--local"), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen = []
        for text in proc.stdout:  # bounded by the test's timeout at worst
            seen.append(text)
            if text.startswith(line):
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signum)
        out = "".join(seen) + proc.stdout.read()
        assert proc.wait(DEADLINE) == 130, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted: everything started here was stopped" in out
    assert children, out
    assert [c.pid for c in children if not gone(c.pid)] == [], out
    started = started_pids(out)
    assert stopped_pids(out) == started and all(gone(pid) for pid in started.values()), out
    if when == "running":
        assert re.search(r"^stopped meeting:captions-\w+: True$", out, re.MULTILINE), out


def test_a_failing_example_says_why_and_still_stops_every_process() -> None:
    proc = run(example("caption_bot", "--local", "--meeting", "not/one"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "error: BadMeetingRequest: meeting id 'not/one' cannot name a meeting" in proc.stderr, out
    assert_everything_stopped(out)


def test_without_local_an_example_says_what_it_needs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "HUDDLE_"))}
    proc = run(example("voice_agent"), env=env)
    assert proc.returncode == 1
    assert "without --local, give REDIS_URL, --host, --dataserver, HUDDLE_ACCESS_TOKEN, --media-url" in proc.stderr
    assert started_pids(proc.stdout) == {}


@pytest.fixture
def meetings_node(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess.start(f"examples-{uuid.uuid4().hex[:8]}", redis_server.url, tmp_path, ["--meetings"])
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def test_the_caption_bot_on_the_fleet_the_environment_names(
        redis_server: EmbeddedRedis, meetings_node: NodeProcess, dataserver_session: DataServerProcess) -> None:
    ds, meeting = dataserver_session, f"env-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REDIS_URL": redis_server.url, "HUDDLE_MEETING_HOST": meetings_node.node_id,
           "HUDDLE_DATASERVER_URL": ds.http_url, "HUDDLE_ACCESS_TOKEN": "user-access-token"}
    proc = subprocess.Popen(example("caption_bot", "--meeting", meeting, "--max-captions", "1"), cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Once its data channel holds transcription, the service relays a caption.
        ds.wait_for(lambda s: any(x["meeting"] == meeting and x["online"] and "transcription" in x["subscriptions"]
                                  for x in s["sockets"]), DEADLINE)
        assert ds.send(caption_frame("c1", "relayed by the service"), meeting=meeting) == 1
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "caption 1 [llm-default-session]: relayed by the service" in out, out
    assert f"stopped meeting:{meeting}: True" in out, out
    assert started_pids(out) == {}  # nothing of its own started
    ds.wait_for(lambda s: not any(x["meeting"] == meeting and x["open"] for x in s["sockets"]), DEADLINE)
