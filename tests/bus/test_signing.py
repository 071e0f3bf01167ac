"""HMAC signing of envelopes: what is accepted, what is refused and why,
key loading, and that keys never show."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.envelope import DEFAULT_MAX_SIZE, Codec, Envelope
from bus.errors import DecodeError
from bus.messages import Ping
from bus.signing import (
    CLUSTER_KEY_ENV,
    MIN_KEY_BYTES,
    SIGNATURE_OVERHEAD,
    ClusterKeyError,
    HmacSigner,
    cluster_signer,
    load_cluster_keys,
)

KEY = b"k" * 32
OTHER = b"o" * 32
SIGNED = Codec(signer=HmacSigner(KEY))
PLAIN = Codec()
ENV = Envelope(to="echo:1", message=Ping(n=7, payload=b"abc"), sender="node:a", epoch=3)


def reason(codec: Codec, data: bytes | bytearray | memoryview) -> str:
    with pytest.raises(DecodeError) as refused:
        codec.decode(data)
    return refused.value.reason


def test_signed_envelopes_round_trip_in_every_buffer_type() -> None:
    data = SIGNED.encode(ENV)
    assert len(data) == len(PLAIN.encode(ENV)) + SIGNATURE_OVERHEAD
    for buffer in (data, bytearray(data), memoryview(data)):
        assert SIGNED.decode(buffer) == ENV


def test_unsigned_envelope_is_refused_as_unsigned() -> None:
    assert reason(SIGNED, PLAIN.encode(ENV)) == "unsigned"
    assert reason(SIGNED, b"") == "unsigned"


def test_signed_envelope_is_not_msgpack_to_a_codec_without_a_key() -> None:
    assert reason(PLAIN, SIGNED.encode(ENV)) == "not-msgpack"


def test_another_key_a_changed_tag_a_changed_body_or_a_cut_are_bad_signatures() -> None:
    data = SIGNED.encode(ENV)
    assert reason(Codec(signer=HmacSigner(OTHER)), data) == "bad-signature"
    tag_flipped = data[:5] + bytes([data[5] ^ 1]) + data[6:]
    body_flipped = data[:-1] + bytes([data[-1] ^ 1])
    assert reason(SIGNED, tag_flipped) == "bad-signature"
    assert reason(SIGNED, body_flipped) == "bad-signature"
    assert reason(SIGNED, data[:SIGNATURE_OVERHEAD]) == "bad-signature"
    # A forger who re-frames a plain envelope with a made-up tag:
    assert reason(SIGNED, b"\xc1" + b"\x00" * 32 + PLAIN.encode(ENV)) == "bad-signature"


@given(st.binary(min_size=MIN_KEY_BYTES, max_size=200), st.binary(max_size=500))
def test_tags_are_rfc_2104_hmac_sha256(key: bytes, data: bytes) -> None:
    signed = HmacSigner(key).sign(data)
    assert signed == b"\xc1" + hmac.digest(key, data, "sha256") + data


@given(st.binary(max_size=300))
def test_decoding_with_a_key_is_total(data: bytes) -> None:
    try:
        SIGNED.decode(data)
    except DecodeError as exc:
        assert exc.reason in {"unsigned", "bad-signature"}


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_refused(position: int, flip: int) -> None:
    data = bytearray(SIGNED.encode(ENV))
    data[position % len(data)] ^= flip
    assert reason(SIGNED, bytes(data)) in {"unsigned", "bad-signature"}


def test_oversize_is_refused_before_any_hashing() -> None:
    class Exploding(HmacSigner):
        def verify(self, data):  # type: ignore[no-untyped-def]
            raise AssertionError("hashed an oversized input")

    codec = Codec(signer=Exploding(KEY), max_size=100)
    assert reason(codec, b"\xc1" + b"x" * 1000) == "oversize"
    assert reason(SIGNED, b"\xc1" + b"x" * (DEFAULT_MAX_SIZE + SIGNATURE_OVERHEAD)) == "bad-signature"


def test_rotation_signs_with_the_first_key_and_accepts_the_others() -> None:
    rotated = Codec(signer=HmacSigner(OTHER, KEY))
    assert rotated.decode(SIGNED.encode(ENV)) == ENV  # old key still accepted
    assert reason(SIGNED, rotated.encode(ENV)) == "bad-signature"  # signs with the new one


def test_keys_never_show_in_reprs_or_errors() -> None:
    signer = HmacSigner(KEY, OTHER)
    assert "k" * 8 not in repr(signer) and "o" * 8 not in repr(signer)
    for data in (PLAIN.encode(ENV), SIGNED.encode(ENV)[:-1] + b"!"):
        with pytest.raises(DecodeError) as refused:
            Codec(signer=signer).decode(data)
        assert "kkkk" not in str(refused.value) and "oooo" not in str(refused.value)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ClusterKeyError, match="at least 16 bytes"):
        HmacSigner(b"short")
    with pytest.raises(ClusterKeyError):
        HmacSigner(KEY, b"")


# -- loading keys ------------------------------------------------------------------------


def test_no_key_configured_means_signing_off() -> None:
    assert load_cluster_keys(None, {}) == []
    assert cluster_signer(None, {CLUSTER_KEY_ENV: "  "}) is None


def test_key_from_the_environment() -> None:
    signer = cluster_signer(None, {CLUSTER_KEY_ENV: "an env key of 24 bytes!!\n"})
    assert signer is not None
    assert Codec(signer=signer).decode(Codec(signer=HmacSigner(b"an env key of 24 bytes!!")).encode(ENV)) == ENV


def test_key_file_wins_over_the_environment_and_may_hold_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_bytes(OTHER + b"\n\n" + KEY + b"\n")
    assert load_cluster_keys(path, {CLUSTER_KEY_ENV: "x" * 20}) == [OTHER, KEY]
    signer = cluster_signer(path, {})
    assert signer is not None and Codec(signer=signer).decode(SIGNED.encode(ENV)) == ENV


def test_key_file_problems_are_clear_and_keyless(tmp_path: Path) -> None:
    with pytest.raises(ClusterKeyError, match="cannot read"):
        load_cluster_keys(tmp_path / "missing.key", {})
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"\n \n")
    with pytest.raises(ClusterKeyError, match="holds no key"):
        load_cluster_keys(empty, {})
    short = tmp_path / "short.key"
    short.write_bytes(b"tiny-secret\n")
    with pytest.raises(ClusterKeyError) as refused:
        cluster_signer(short, {})
    assert "tiny-secret" not in str(refused.value)
