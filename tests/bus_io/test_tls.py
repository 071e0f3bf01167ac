"""``rediss://``: real TLS handshakes with a real redis-server behind a
TLS-terminating proxy (trustme certificates), and refusals when the server
cannot be trusted."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
import redis

from bus.redis_transport import RedisTransport
from tests.conftest import TlsSetup, rediss_url
from tests.tls_proxy import TlsProxy

from .conftest import DEADLINE, Collector


def test_pub_sub_over_tls_with_the_ca_from_the_url(
    tls_proxy: TlsProxy, tls_setup: TlsSetup, make_redis_transport: Callable[..., RedisTransport],
    collector: Callable[[], Collector], channel_prefix: str,
) -> None:
    url = rediss_url(tls_proxy, tls_setup.ca_file)
    receiver = make_redis_transport(url, name="tls-receiver")
    got = collector()
    receiver.set_receiver(got)
    receiver.subscribe(channel_prefix + "secure")
    assert receiver.wait_subscribed(DEADLINE)
    sender = make_redis_transport(url, name="tls-sender")
    sender.publish(channel_prefix + "secure", b"over tls")
    assert got.wait_message(channel_prefix + "secure", b"over tls")
    # Two connections per transport, each a completed TLS handshake.
    assert tls_proxy.wait_for(lambda: len(tls_proxy.handshakes) >= 4, DEADLINE), tls_proxy.handshakes
    assert set(tls_proxy.handshakes) <= {"TLSv1.2", "TLSv1.3"}
    assert not tls_proxy.failures


def test_acl_user_and_password_over_tls(
    tls_proxy: TlsProxy, tls_setup: TlsSetup, redis_client: redis.Redis,
    make_redis_transport: Callable[..., RedisTransport], collector: Callable[[], Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, password = "huddle-tls", "tls:pa ss@word"
    redis_client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", "~*", "&*", "+@all")
    try:
        url = rediss_url(tls_proxy, tls_setup.ca_file, f"{user}:{quote(password, safe='')}@")
        transport = make_redis_transport(url, name="tls-acl")
        got = collector()
        transport.set_receiver(got)
        transport.subscribe("tls-acl:one")
        assert transport.wait_subscribed(DEADLINE)
        transport.publish("tls-acl:one", b"hello")
        assert got.wait_message("tls-acl:one", b"hello")
        assert password not in caplog.text and password not in repr(transport)
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)


def test_a_server_certificate_from_an_unknown_ca_is_refused(
    tls_proxy: TlsProxy, tls_setup: TlsSetup, make_redis_transport: Callable[..., RedisTransport]
) -> None:
    transport = make_redis_transport(rediss_url(tls_proxy, tls_setup.other_ca_file), name="tls-untrusted",
                                     connect_timeout=2.0)
    assert tls_proxy.wait_for(lambda: bool(tls_proxy.failures), DEADLINE)
    assert not tls_proxy.handshakes
    assert not transport.wait_subscribed(0)  # it never got through (and keeps retrying)


def test_a_plain_client_on_the_tls_port_gets_nothing_through(
    tls_proxy: TlsProxy, make_redis_transport: Callable[..., RedisTransport]
) -> None:
    transport = make_redis_transport(f"redis://127.0.0.1:{tls_proxy.port}/0", name="tls-plain",
                                     connect_timeout=2.0)
    assert tls_proxy.wait_for(lambda: bool(tls_proxy.failures), DEADLINE)
    assert not tls_proxy.handshakes and not transport.wait_subscribed(0)
