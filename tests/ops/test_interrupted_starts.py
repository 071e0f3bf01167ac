"""An interrupt that lands while a child process starts leaves nothing
running (bus.interrupts.held, used by every launcher).

The interrupt is made to land at the worst instant, right after the fork
and before ``Popen`` returns its handle: ``subprocess.Popen`` is wrapped to
raise SIGINT on this (the main) thread once the real one has forked. The
test's SIGINT handler raises :class:`Interrupted`, as Python's raises
``KeyboardInterrupt``.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bus.embedded import EmbeddedRedis
from bus.interrupts import held
from ops.dataserver.harness import DataServerProcess
from ops.processes import NodeProcess

pytestmark = pytest.mark.integration

DEADLINE = 30.0


class Interrupted(Exception):
    pass


def _interrupt(_signum: int, _frame: Any) -> None:
    raise Interrupted


@pytest.fixture
def interrupts() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every child started while the test runs, by PID; each interrupted
    right after its fork."""
    pids: list[int] = []
    real = subprocess.Popen

    class InterruptedPopen(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pids.append(self.pid)
            signal.raise_signal(signal.SIGINT)  # the forked child runs; Popen has not returned

    monkeypatch.setattr(subprocess, "Popen", InterruptedPopen)
    return pids


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _check(start: Callable[[], Any], spawned: list[int]) -> None:
    with pytest.raises(Interrupted):
        start()
    assert spawned, "nothing was started"
    alive = [pid for pid in spawned if not _gone(pid)]
    for pid in alive:  # end them even when the test fails
        psutil.Process(pid).kill()
    assert alive == []


@pytest.mark.usefixtures("interrupts")
def test_a_redis_server_interrupted_as_it_starts_is_stopped(spawned: list[int]) -> None:
    server = EmbeddedRedis()
    try:
        _check(server.start, spawned)
        assert server.pid is None
    finally:
        server.stop()


@pytest.mark.usefixtures("interrupts")
def test_a_dataserver_interrupted_as_it_starts_is_stopped(spawned: list[int]) -> None:
    _check(DataServerProcess.start, spawned)


@pytest.mark.usefixtures("interrupts")
def test_a_node_interrupted_as_it_starts_is_stopped(spawned: list[int], tmp_path: Path) -> None:
    _check(lambda: NodeProcess.start("interrupted", "redis://127.0.0.1:1/0", tmp_path), spawned)


@pytest.mark.usefixtures("interrupts")
def test_the_hazard_without_held_the_child_outlives_the_interrupt(spawned: list[int]) -> None:
    """What the launchers guard against: a plain Popen interrupted there
    leaves a running child with no handle anywhere."""
    with pytest.raises(Interrupted):
        subprocess.Popen(["sleep", "60"], cwd=tempfile.gettempdir())
    try:
        assert spawned and not _gone(spawned[0])
    finally:
        for pid in spawned:
            if not _gone(pid):
                psutil.Process(pid).kill()


@pytest.mark.usefixtures("interrupts")
def test_held_delivers_the_interrupt_after_the_step_once() -> None:
    done = []
    with pytest.raises(Interrupted):
        with held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            done.append("step")
    assert done == ["step"]
    assert signal.getsignal(signal.SIGINT) is _interrupt  # the handler in place before is back


@pytest.mark.usefixtures("interrupts")
def test_held_without_an_interrupt_changes_nothing() -> None:
    with held():
        pass
    assert signal.getsignal(signal.SIGINT) is _interrupt
