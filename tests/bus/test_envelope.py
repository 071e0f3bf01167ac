from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import envelope as envelope_module
from bus.envelope import (
    DEFAULT_MAX_SIZE,
    SCHEMA_VERSION,
    Codec,
    Envelope,
    child_traceparent,
    is_valid_traceparent,
    new_message_id,
    new_traceparent,
)
from bus.errors import DecodeError, EncodeError
from bus.messages import (
    REGISTRY,
    ErrorReply,
    Event,
    Message,
    MessageRegistry,
    Ping,
    Pong,
    Reply,
    Stop,
    message_kind,
)
from tests.bus import strategies as strat

# Kinds of this test module live in a registry of their own (plus the
# built-ins), so they never leak into the default one.
WIRE = MessageRegistry()
for _builtin in (Reply, ErrorReply, Event, Ping, Pong, Stop):
    WIRE.register(_builtin)


@message_kind("test.nested", registry=WIRE)
@dataclass(frozen=True, slots=True)
class Nested(Message):
    name: str
    rows: list[dict[str, list[int]]] = field(default_factory=list)
    labels: dict[str, str | None] = field(default_factory=dict)
    weight: float = 0.0
    blob: bytes | None = None
    extra: Any = None


CODEC = Codec(registry=WIRE)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def wire(*items: object, **kwargs: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True, **kwargs)


def valid_items(**changes: object) -> list[object]:
    """The wire array of a valid sys.ping envelope, with some items changed."""
    items: dict[str, object] = {
        "version": SCHEMA_VERSION,
        "msg_id": "abc-1",
        "kind": "sys.ping",
        "to": "meeting:m-42",
        "sender": "node:n1",
        "reply_to": None,
        "correlation_id": None,
        "epoch": 0,
        "deadline": None,
        "traceparent": None,
        "body": {"n": 1, "payload": b""},
    }
    unknown = set(changes) - set(items)
    assert not unknown, unknown
    items.update(changes)
    return list(items.values())


def decode_error(data: object, codec: Codec = CODEC) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        codec.decode(data)  # type: ignore[arg-type]
    return info.value


# -- message ids and trace context --------------------------------------------------


def test_message_ids_are_unique_and_compact() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", i) for i in ids)
    assert len({i.split("-")[0] for i in ids}) == 1


def test_reseeding_changes_the_prefix() -> None:
    before = new_message_id().split("-")[0]
    envelope_module._reseed_message_ids()
    after = new_message_id()
    assert after.split("-")[0] != before
    assert after.endswith("-1")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_prefix() -> None:
    parent = new_message_id().split("-")[0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        try:
            os.write(write_end, new_message_id().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_id = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id.split("-")[0] != parent
    assert child_id.endswith("-1")


def test_new_traceparent_is_valid_and_fresh() -> None:
    values = {new_traceparent() for _ in range(200)}
    assert len(values) == 200
    for value in values:
        assert is_valid_traceparent(value)
        assert value.startswith("00-") and value.endswith("-01")


@given(st.sampled_from(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"]))
def test_a_child_traceparent_keeps_the_trace_and_flags_under_a_new_span(parent: str) -> None:
    children = {child_traceparent(parent) for _ in range(50)}
    assert len(children) == 50
    for child in children:
        assert is_valid_traceparent(child)
        assert child[:36] == parent[:36] and child[52:] == parent[52:] and child[36:52] != parent[36:52]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
        None,
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_invalid_traceparents(value: object) -> None:
    assert not is_valid_traceparent(value)


def test_valid_traceparent() -> None:
    assert is_valid_traceparent(TRACEPARENT)
    assert is_valid_traceparent(TRACEPARENT[:-2] + "00")


# -- the envelope ------------------------------------------------------------------------


def test_envelope_fills_msg_id() -> None:
    first = Envelope("meeting:m-42", Ping())
    second = Envelope("meeting:m-42", Ping())
    assert first.msg_id and second.msg_id and first.msg_id != second.msg_id
    assert Envelope("a:b", Ping(), msg_id="given").msg_id == "given"


def test_envelope_defaults_and_kind() -> None:
    env = Envelope("meeting:m-42", Stop())
    assert env.kind == "sys.stop"
    assert (env.sender, env.reply_to, env.correlation_id) == (None, None, None)
    assert (env.epoch, env.deadline, env.traceparent) == (0, None, None)
    assert env.version == SCHEMA_VERSION == 1


def test_envelope_is_frozen_and_slotted() -> None:
    env = Envelope("meeting:m-42", Stop())
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.to = "x:y"  # type: ignore[misc]
    assert not hasattr(env, "__dict__")


def test_envelope_init_takes_exactly_the_fields_in_order() -> None:
    # Envelope.__init__ is written by hand (faster than the generated one):
    # it must take every field, in field order, with the field's default,
    # and set each one to what it was given.
    import inspect

    params = list(inspect.signature(Envelope.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Envelope)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert p.default == (inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
    values = ["a:b", Ping(3), "c:d", "id-1", "node:n1", "corr", 7, 12.5, TRACEPARENT, 1]
    by_position = Envelope(*values)  # type: ignore[arg-type]
    by_name = Envelope(**{f.name: v for f, v in zip(fields, values, strict=True)})
    for env in (by_position, by_name):
        assert [getattr(env, f.name) for f in fields] == values
    assert dataclasses.replace(by_name, to="x:y").to == "x:y"


def test_new_envelope_is_the_envelope_with_a_fresh_id() -> None:
    args = ("a:b", Ping(3), "c:d", "node:n1", "corr", 7, 12.5, TRACEPARENT)
    fast = envelope_module.new_envelope(*args)
    slow = Envelope("a:b", Ping(3), sender="c:d", reply_to="node:n1", correlation_id="corr", epoch=7,
                    deadline=12.5, traceparent=TRACEPARENT)
    assert type(fast) is Envelope
    assert fast.msg_id and fast.msg_id != slow.msg_id
    assert dataclasses.replace(fast, msg_id=slow.msg_id) == slow
    bare = envelope_module.new_envelope("a:b", Ping(), None, None, None, 0, None, None)
    assert bare == Envelope("a:b", Ping(), msg_id=bare.msg_id)


# -- encoding ----------------------------------------------------------------------------


def test_wire_layout() -> None:
    env = Envelope(
        "meeting:m-42",
        Ping(7, b"hi"),
        sender="node:n1",
        msg_id="id-1",
        reply_to="node:n1",
        correlation_id="c-9",
        epoch=12,
        deadline=1700000000.5,
        traceparent=TRACEPARENT,
    )
    assert msgpack.unpackb(CODEC.encode(env)) == [
        1,
        "id-1",
        "sys.ping",
        "meeting:m-42",
        "node:n1",
        "node:n1",
        "c-9",
        12,
        1700000000.5,
        TRACEPARENT,
        {"n": 7, "payload": b"hi"},
    ]


def test_bytes_stay_bytes_and_str_stays_str() -> None:
    env = CODEC.roundtrip(
        Envelope("a:b", Nested("x", blob=b"\xff\x00", extra=[b"b", "s"]))
    )
    assert isinstance(env.message, Nested)
    assert env.message.blob == b"\xff\x00"
    assert env.message.extra == [b"b", "s"]


@pytest.mark.parametrize(
    "extra",
    [object(), {1, 2}, 2**64, -(2**63) - 1, "\ud800", {1: "int key"}.keys()],
)
def test_unpackable_values_are_encode_errors(extra: object) -> None:
    with pytest.raises(EncodeError, match="test.nested"):
        CODEC.encode(Envelope("a:b", Nested("x", extra=extra)))


def test_unregistered_message_is_encode_error() -> None:
    @dataclass(frozen=True, slots=True)
    class Loose(Message):
        n: int = 0

    with pytest.raises(EncodeError, match="not a registered"):
        CODEC.encode(Envelope("a:b", Loose()))


def test_codec_uses_its_own_registry() -> None:
    env = Envelope("a:b", Nested("x"))
    with pytest.raises(EncodeError):
        Codec().encode(env)
    data = CODEC.encode(env)
    assert decode_error(data, Codec()).reason == "unknown-kind"


def test_oversize_encode_is_encode_error() -> None:
    codec = Codec(registry=WIRE, max_size=100)
    codec.encode(Envelope("a:b", Ping(payload=b"x" * 10)))
    with pytest.raises(EncodeError, match="over the limit"):
        codec.encode(Envelope("a:b", Ping(payload=b"x" * 100)))


def test_codec_arguments() -> None:
    assert CODEC.registry is WIRE
    assert Codec().registry is REGISTRY
    assert Codec().max_size == DEFAULT_MAX_SIZE == 1 << 20
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_size"):
            Codec(max_size=bad)  # type: ignore[arg-type]


def test_a_signer_wraps_what_is_encoded_and_unwraps_what_is_decoded() -> None:
    """The seam only; HMAC signing itself is tested in test_signing.py."""

    class Framing:
        def sign(self, data: bytes) -> bytes:
            return b"<" + data + b">"

        def verify(self, data: bytes) -> bytes:
            if data[:1] != b"<" or data[-1:] != b">":
                raise DecodeError("bad-signature", "no frame")
            return data[1:-1]

    codec = Codec(signer=Framing())
    env = Envelope(to="a:b", message=Ping(n=1))
    data = codec.encode(env)
    assert data[:1] == b"<" and Codec().decode(data[1:-1]) == env
    assert codec.decode(data) == env and codec.signed and not Codec().signed
    with pytest.raises(DecodeError) as refused:
        codec.decode(Codec().encode(env))
    assert refused.value.reason == "bad-signature"


# -- decoding: each reason ------------------------------------------------------------------


def test_decode_valid_crafted_bytes() -> None:
    env = CODEC.decode(wire(*valid_items()))
    assert env == Envelope("meeting:m-42", Ping(1), sender="node:n1", msg_id="abc-1")


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_bytes_like(kind: type) -> None:
    data = wire(*valid_items())
    assert CODEC.decode(kind(data)).message == Ping(1)


@pytest.mark.parametrize("data", ["text", None, 12, [1], ["abc"]])
def test_decode_refuses_non_bytes(data: object) -> None:
    error = decode_error(data)
    assert error.reason == "not-msgpack"
    assert "expected bytes" in error.detail


def test_decode_refuses_a_released_memoryview() -> None:
    view = memoryview(wire(*valid_items()))
    view.release()
    assert decode_error(view).reason == "not-msgpack"


def test_decode_refuses_odd_buffers() -> None:
    data = wire(*valid_items())
    assert decode_error(memoryview(data)[::2]).reason == "not-msgpack"
    assert decode_error(memoryview(data).cast("B", (len(data),))[1:]).reason in {
        "not-msgpack",
        "bad-shape",
    }


def test_oversize_is_checked_before_unpacking() -> None:
    codec = Codec(registry=WIRE, max_size=64)
    assert decode_error(b"\xc1" * 65, codec).reason == "oversize"
    assert decode_error(b"\xc1" * 64, codec).reason == "not-msgpack"
    big = wire(*valid_items(body={"n": 1, "payload": b"x" * 100}))
    error = decode_error(big, codec)
    assert error.reason == "oversize"
    assert error.detail == f"{len(big)} bytes, limit 64"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        wire(*valid_items())[:-1],  # truncated
        wire(*valid_items()) + b"\x00",  # trailing bytes
        b"\x9b" + b"\xa2\xff\xfe" * 11,  # invalid UTF-8 in a str
        msgpack.packb({1: 2}),  # int map key
        msgpack.packb([{(1, 2): 3}]),  # array map key
        msgpack.packb(msgpack.ExtType(5, b"abc")),
        wire(*valid_items(body={"n": 1, "payload": msgpack.ExtType(1, b"")})),
        wire(*valid_items(deadline=msgpack.Timestamp(1, 0))),
        b"\x91" * 5000 + b"\x00",  # nested too deep
        b"\xdd\xff\xff\xff\xff",  # claims 4G items
        b"\xdb\xff\xff\xff\xff",  # claims a 4 GB str
    ],
)
def test_not_msgpack(data: bytes) -> None:
    assert decode_error(data).reason == "not-msgpack"


def test_extension_types_name_the_code() -> None:
    error = decode_error(wire(*valid_items(body={"x": msgpack.ExtType(5, b"")})))
    assert (error.reason, error.detail) == ("not-msgpack", "extension type 5")


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({}, "expected an array of 11, got dict"),
        ([], "expected an array of 11, got array of 0"),
        (5, "expected an array of 11, got int"),
        (None, "expected an array of 11, got nil"),
        ("sys.ping", "expected an array of 11, got str"),
        (valid_items()[:10], "expected an array of 11, got array of 10"),
        ([*valid_items(), None], "expected an array of 11, got array of 12"),
        ([1], "expected an array of 11, got array of 1"),
    ],
)
def test_bad_shape(value: object, detail: str) -> None:
    error = decode_error(msgpack.packb(value, use_bin_type=True))
    assert (error.reason, error.detail) == ("bad-shape", detail)


@pytest.mark.parametrize(
    ("version", "detail"),
    [
        (2, "2, expected 1"),
        (0, "0, expected 1"),
        (-1, "-1, expected 1"),
        (True, "bool, expected 1"),
        (1.0, "float, expected 1"),
        ("1", "str, expected 1"),
        (None, "nil, expected 1"),
    ],
)
def test_unknown_version(version: object, detail: str) -> None:
    error = decode_error(wire(*valid_items(version=version)))
    assert (error.reason, error.detail) == ("unknown-version", detail)


def test_unknown_version_is_reported_whatever_the_shape() -> None:
    # A future version may have another header shape: say so, not bad-shape.
    assert decode_error(wire(2, "x")).reason == "unknown-version"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"msg_id": ""}, "msg_id: expected non-empty str, got empty str"),
        ({"msg_id": None}, "msg_id: expected non-empty str, got None"),
        ({"msg_id": 0}, "msg_id: expected non-empty str, got int"),
        ({"msg_id": b"abc"}, "msg_id: expected non-empty str, got bytes"),
        ({"kind": None}, "kind: expected str, got None"),
        ({"kind": b"sys.ping"}, "kind: expected str, got bytes"),
        ({"to": None}, "to: expected str, got None"),
        ({"to": 1}, "to: expected str, got int"),
        ({"sender": 1}, "sender: expected str | None, got int"),
        ({"sender": b"node:n1"}, "sender: expected str | None, got bytes"),
        ({"reply_to": []}, "reply_to: expected str | None, got list"),
        ({"correlation_id": 1.5}, "correlation_id: expected str | None, got float"),
        ({"epoch": -1}, "epoch: expected int >= 0, got negative int"),
        ({"epoch": True}, "epoch: expected int >= 0, got bool"),
        ({"epoch": None}, "epoch: expected int >= 0, got None"),
        ({"epoch": 1.0}, "epoch: expected int >= 0, got float"),
        ({"deadline": "soon"}, "deadline: expected float | None, got str"),
        ({"deadline": True}, "deadline: expected float | None, got bool"),
        ({"deadline": float("nan")}, "deadline: not a finite number"),
        ({"deadline": float("inf")}, "deadline: not a finite number"),
        (
            {"traceparent": "nope"},
            "traceparent: expected W3C traceparent | None, got malformed str",
        ),
        ({"traceparent": 5}, "traceparent: expected W3C traceparent | None, got int"),
        ({"body": []}, "sys.ping: body must be a map, got list"),
        ({"body": None}, "sys.ping: body must be a map, got None"),
        ({"body": {"n": "1"}}, "sys.ping.n: expected int, got str"),
        ({"body": {"n": True}}, "sys.ping.n: expected int, got bool"),
        ({"body": {"payload": "text"}}, "sys.ping.payload: expected bytes, got str"),
        ({"body": {"x": 1}}, "sys.ping.x: unknown field"),
        ({"body": {b"n": 1}}, "sys.ping: field names must be str, got bytes"),
        (
            {"kind": "sys.event", "body": {"node": "n1"}},
            "sys.event.event: missing required field",
        ),
        (
            {"kind": "sys.event", "body": {"event": "x", "detail": {b"k": 1}}},
            "sys.event.detail: expected dict[str, Any], got dict",
        ),
    ],
)
def test_bad_field(change: dict[str, object], detail: str) -> None:
    error = decode_error(wire(*valid_items(**change)))
    assert (error.reason, error.detail) == ("bad-field", detail)


@pytest.mark.parametrize("kind", ["meeting.join", "", "SYS.PING", "sys.ping "])
def test_unknown_kind(kind: str) -> None:
    error = decode_error(wire(*valid_items(kind=kind)))
    assert (error.reason, error.detail) == ("unknown-kind", kind)


def test_header_is_checked_before_the_kind() -> None:
    error = decode_error(wire(*valid_items(kind="meeting.join", epoch=-5)))
    assert error.reason == "bad-field"


def test_int_deadline_becomes_float() -> None:
    env = CODEC.decode(wire(*valid_items(deadline=1700000000)))
    assert type(env.deadline) is float and env.deadline == 1700000000.0


def test_largest_epoch_and_negative_deadline() -> None:
    env = CODEC.decode(wire(*valid_items(epoch=2**64 - 1, deadline=-1.5)))
    assert env.epoch == 2**64 - 1
    assert env.deadline == -1.5


def test_decoded_envelope_has_a_fresh_id_only_when_sent() -> None:
    env = CODEC.decode(wire(*valid_items(msg_id="keep-me")))
    assert env.msg_id == "keep-me"


# -- roundtrips --------------------------------------------------------------------------------

msgpack_values = strat.msgpack_values(size=16, max_leaves=16, binary_keys=True)
short_text = st.text(max_size=24)
messages = st.one_of(
    st.builds(Reply, msgpack_values),
    st.builds(ErrorReply, short_text, short_text),
    st.builds(
        Event,
        short_text,
        short_text,
        short_text,
        short_text,
        st.dictionaries(st.text(max_size=6), msgpack_values, max_size=4),
        st.floats(allow_nan=False),
    ),
    st.builds(
        Ping,
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.binary(max_size=64),
    ),
    st.builds(
        Pong, st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=64)
    ),
    st.just(Stop()),
    st.builds(
        Nested,
        short_text,
        st.lists(
            st.dictionaries(
                st.text(max_size=4),
                st.lists(st.integers(min_value=-(2**63), max_value=2**63), max_size=4),
                max_size=3,
            ),
            max_size=3,
        ),
        st.dictionaries(st.text(max_size=4), st.none() | short_text, max_size=3),
        st.floats(allow_nan=False),
        st.none() | st.binary(max_size=8),
        msgpack_values,
    ),
)
traceparents = st.builds(
    lambda trace, span, flags: f"00-{trace:032x}-{span:016x}-{flags:02x}",
    st.integers(min_value=1, max_value=2**128 - 1),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=255),
)
optional_text = st.none() | short_text
envelopes = st.builds(
    Envelope,
    to=short_text,
    message=messages,
    sender=optional_text,
    msg_id=st.text(min_size=1, max_size=24),
    reply_to=optional_text,
    correlation_id=optional_text,
    epoch=st.integers(min_value=0, max_value=2**64 - 1),
    deadline=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    traceparent=st.none() | traceparents,
)


@settings(max_examples=300, deadline=None)
@given(envelopes)
def test_decode_inverts_encode(env: Envelope) -> None:
    data = CODEC.encode(env)
    assert isinstance(data, bytes)
    assert CODEC.decode(data) == env
    assert CODEC.roundtrip(env) == env
    assert CODEC.encode(CODEC.decode(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=5))
def test_roundtrip_shares_nothing_mutable(values: list[int]) -> None:
    saved = list(values)
    original = Envelope("a:b", Nested("x", rows=[{"k": values}], extra={"v": values}))
    copy = CODEC.roundtrip(original)
    assert copy == original and copy is not original
    assert isinstance(copy.message, Nested)
    copy.message.rows[0]["k"].append(99)
    copy.message.extra["v"].append(99)
    assert values == saved


def test_float_field_given_an_int_comes_back_float() -> None:
    env = CODEC.roundtrip(Envelope("a:b", Nested("x", weight=3)))
    assert isinstance(env.message, Nested)
    assert type(env.message.weight) is float


def test_ask_headers_survive() -> None:
    ask = Envelope(
        "meeting:m-42",
        Ping(1),
        sender="meeting:m-1",
        reply_to="node:n1",
        correlation_id="c-1",
        epoch=4,
        deadline=1700000005.0,
        traceparent=new_traceparent(),
    )
    back = CODEC.roundtrip(ask)
    assert back == ask
    answer = Envelope(
        back.reply_to or "",
        Reply({"ok": True, "n": [1, 2]}),
        correlation_id=back.correlation_id,
        traceparent=back.traceparent,
    )
    assert CODEC.roundtrip(answer).message == Reply({"ok": True, "n": [1, 2]})


def test_an_encode_failure_leaves_the_next_encode_intact() -> None:
    """The codec reuses a packer per thread; a value msgpack refuses must not
    leave half an envelope in it for the next one."""
    from bus.messages import Reply

    codec = Codec()
    with pytest.raises(EncodeError):
        codec.encode(Envelope(to="svc:a", message=Reply(value=[1, 2, object()])))
    good = Envelope(to="svc:a", message=Reply(value=[1, 2, 3]))
    assert codec.decode(codec.encode(good)) == good
