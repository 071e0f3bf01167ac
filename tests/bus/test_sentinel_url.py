"""redis+sentinel:// URLs: the sentinels, the master's name, the data
nodes' credentials and options; a bad one is refused with a typed error
that never shows the password."""

from __future__ import annotations

import pytest

from bus.endpoint import mask_url
from bus.errors import TransportError
from bus.sentinel import SentinelUrl, is_sentinel_url


def test_sentinels_master_and_credentials() -> None:
    url = SentinelUrl.parse("redis+sentinel://app:s3cret@10.0.0.1:26379,[::1]:26380,h3:26381/mymaster"
                            "?db=2&sentinel_password=watch")
    assert url.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("h3", 26381))
    assert url.master == "mymaster" and url.db == 2 and not url.tls
    assert (url.username, url.password, url.sentinel_password) == ("app", "s3cret", "watch")
    primary = url.endpoint("10.0.0.9", 6380)
    assert (primary.host, primary.port, primary.db, primary.username, primary.password) == (
        "10.0.0.9", 6380, 2, "app", "s3cret")
    assert "s3cret" not in repr(url) and "watch" not in repr(url)


def test_tls_options_reach_the_data_nodes() -> None:
    url = SentinelUrl.parse("rediss+sentinel://h:26379/m?ssl_cert_reqs=none")
    primary = url.endpoint("h", 6379)
    assert primary.tls and primary.ssl_cert_reqs == "none"


@pytest.mark.parametrize("bad", [
    "redis+sentinel://h:26379",            # no master name
    "redis+sentinel://h:26379/a/b",        # a path, not a name
    "redis+sentinel://h/m",                # no port
    "redis+sentinel://h:port/m",           # not a port
    "redis://h:6379/0",                    # not a sentinel URL
])
def test_a_bad_url_is_refused_with_a_typed_error(bad: str) -> None:
    with pytest.raises(TransportError, match="bad redis URL"):
        SentinelUrl.parse(bad.replace("h:", "u:pw@h:", 1))


def test_the_scheme_decides() -> None:
    assert is_sentinel_url("redis+sentinel://h:1/m") and is_sentinel_url("REDISS+SENTINEL://h:1/m")
    assert not is_sentinel_url("redis://h:1/0") and not is_sentinel_url("redis+cluster://h:1")


def test_the_masked_form_hides_the_password() -> None:
    masked = mask_url("redis+sentinel://app:s3cret@h1:26379,h2:26379/m")
    assert "s3cret" not in masked and "h1:26379,h2:26379/m" in masked
