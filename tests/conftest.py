"""Fixtures shared by every test folder: real redis-servers and the
reference data-channel service.

Each is a real process, ended by its own PID at teardown, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.embedded import EmbeddedRedis
from ops.dataserver.harness import DataServerProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server (TCP, plus a unix socket) for the whole session."""
    server = EmbeddedRedis(unix_socket=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server for tests that kill, pause or restart it."""
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dataserver() -> Iterator[DataServerProcess]:
    """A private ``huddle dataserver`` process (for tests that restart it,
    stop it or need start-up options of their own)."""
    server = DataServerProcess.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dataserver_session() -> Iterator[DataServerProcess]:
    """One ``huddle dataserver`` shared by the session. Every test that uses
    it starts from a reset service (no sockets, state or faults); a test may
    ``restart()`` it (same ports), and one that stopped it gets a new one."""
    server = DataServerProcess.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _reset_shared_dataserver(request: pytest.FixtureRequest) -> None:
    if "dataserver_session" in request.fixturenames:
        server: DataServerProcess = request.getfixturevalue("dataserver_session")
        if not server.alive():
            server.restart()
        server.reset()
