"""Fuzzing ``Codec.decode``: for any input it returns an Envelope or raises
DecodeError, nothing else."""

from __future__ import annotations

import math

import msgpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus.envelope import Codec, Envelope
from bus.errors import DecodeError, EncodeError
from bus.messages import Message
from tests.bus import strategies as strat
from tests.bus.test_envelope import CODEC, WIRE, envelopes

# A small limit too, so the oversize check is exercised by the fuzzer.
SMALL = Codec(registry=WIRE, max_size=96)

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HEADER_TYPES = {
    "msg_id": (str,),
    "kind": (str,),
    "to": (str,),
    "sender": (str, type(None)),
    "reply_to": (str, type(None)),
    "correlation_id": (str, type(None)),
    "epoch": (int,),
    "deadline": (float, type(None)),
    "traceparent": (str, type(None)),
    "version": (int,),
}


def check_decode(codec: Codec, data: bytes | bytearray | memoryview) -> None:
    """The property: an Envelope with typed headers, or DecodeError."""
    try:
        env = codec.decode(data)
    except DecodeError as exc:
        assert exc.reason in {
            "oversize",
            "not-msgpack",
            "bad-shape",
            "unknown-version",
            "unknown-kind",
            "bad-field",
        }
        event(exc.reason)
        return
    event("decoded")
    assert type(env) is Envelope
    for name, types in HEADER_TYPES.items():
        assert type(getattr(env, name)) in types, name
    assert env.msg_id
    assert env.epoch >= 0
    assert env.deadline is None or math.isfinite(env.deadline)
    assert isinstance(env.message, Message)
    assert WIRE.lookup(env.kind) is type(env.message)
    # What was accepted can be sent on (or is refused as EncodeError, e.g.
    # when an int deadline grew into a float past the size limit).
    try:
        codec.encode(env)
    except EncodeError:
        pass


# (a) arbitrary bytes -------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    check_decode(CODEC, data)
    check_decode(SMALL, data)


@FUZZ
@given(st.binary(max_size=64).map(lambda tail: b"\x9b\x01" + tail))
def test_arbitrary_bytes_after_a_valid_start(data: bytes) -> None:
    check_decode(CODEC, data)


# (b) arbitrary msgpack structures --------------------------------------------------

values = strat.msgpack_values(size=12, max_leaves=10, allow_nan=True, binary_keys=True)
kinds = st.sampled_from(WIRE.kinds()) | st.text(max_size=12)
field_names = st.sampled_from(
    [
        "n",
        "payload",
        "value",
        "event",
        "detail",
        "ts",
        "name",
        "rows",
        "labels",
        "weight",
    ]
    + ["blob", "extra", "error_type", "message", "node", "address", "reason"]
)
bodies = values | st.dictionaries(field_names | st.text(max_size=6), values, max_size=6)
headers = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(min_value=-2, max_value=2**64 - 1),
    st.floats(),
    values,
)
# Mostly well-typed header items, so the fuzzer also gets deep into the body.
some_text = st.text(min_size=1, max_size=12) | headers
maybe_text = st.none() | st.text(max_size=12) | headers
elevens = st.tuples(
    st.just(1) | st.just(1) | values,  # version
    some_text,  # msg_id
    kinds,
    some_text,  # to
    maybe_text,  # sender
    maybe_text,  # reply_to
    maybe_text,  # correlation_id
    st.integers(min_value=0, max_value=2**64 - 1) | headers,  # epoch
    st.none() | st.floats() | headers,  # deadline
    st.none()
    | st.just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    | headers,
    bodies,
).map(list)
structures = st.one_of(elevens, values, st.lists(values, max_size=14))


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@FUZZ
@given(structures)
def test_arbitrary_msgpack_structures(value: object) -> None:
    data = pack(value)
    check_decode(CODEC, data)
    check_decode(SMALL, data)


@FUZZ
@given(envelopes, st.integers(min_value=0, max_value=10), headers)
def test_one_header_replaced(env: Envelope, index: int, replacement: object) -> None:
    items = msgpack.unpackb(CODEC.encode(env))
    items[index] = replacement
    check_decode(CODEC, pack(items))


# (c) mutations of valid envelopes ----------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(CODEC.encode(draw(envelopes)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "set":
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif action == "truncate":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at : at + draw(st.integers(min_value=1, max_value=4))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_envelopes(data: bytes) -> None:
    check_decode(CODEC, data)
    check_decode(SMALL, data)


@FUZZ
@given(mutated(), st.sampled_from([bytearray, memoryview]))
def test_mutated_envelopes_as_other_buffers(data: bytes, kind: type) -> None:
    check_decode(CODEC, kind(data))
