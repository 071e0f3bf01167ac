"""bus/resp.py: the hand-written RESP2 encoding, read back by hiredis (the
parser the transport uses), for any channel and payload."""

from __future__ import annotations

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.resp import PublishEncoder, encode_command


def parsed(data: bytes) -> list[object]:
    """Every RESP value in ``data``, in order (a command is an array)."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


#: Payloads up to and past the cached length prefixes (8,192): the long ones
#: are built, not drawn byte by byte (a draw that size exhausts hypothesis).
PAYLOADS = st.binary(max_size=64) | st.tuples(st.integers(8180, 8200), st.binary(min_size=1, max_size=4)).map(
    lambda n_b: (n_b[1] * n_b[0])[: n_b[0]])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), PAYLOADS), max_size=6))
def test_a_batch_of_publishes_reads_back_as_the_commands_in_order(batch: list[tuple[str, bytes]]) -> None:
    encoder = PublishEncoder(max_cached_channels=3)  # small: the cache is cleared on the way
    for _ in range(2):  # the second time from the header cache
        assert parsed(encoder.encode(batch)) == [[b"PUBLISH", ch.encode(), data] for ch, data in batch]


def test_the_header_cache_stays_within_its_bound() -> None:
    encoder = PublishEncoder(max_cached_channels=2)
    encoder.encode([("a", b"1"), ("b", b"2"), ("c", b"3")])
    assert len(encoder._headers) <= 2


@given(st.lists(st.binary(max_size=20) | st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1), min_size=1,
                max_size=5))
def test_a_command_of_bytes_text_and_integers_reads_back_as_bulk_strings(args: list[bytes | str | int]) -> None:
    expected = [a if isinstance(a, bytes) else (a.encode() if isinstance(a, str) else b"%d" % a) for a in args]
    assert parsed(encode_command(*args)) == [expected]
