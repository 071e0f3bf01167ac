from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.address import (
    MAX_ADDRESS_LENGTH,
    SYS_EVENTS,
    SYS_METRICS,
    SYS_NODES,
    Address,
    InvalidAddress,
    channel_for,
    is_valid_address,
    node_address,
    parse_address,
    system_channel,
)
from bus.errors import HuddleError

SEGMENT_CHARS = "ABCXYZabcxyz0189._~@+=-"


@pytest.mark.parametrize(
    ("text", "kind", "ident", "sub"),
    [
        ("meeting:m-42", "meeting", "m-42", None),
        (
            "datachannel:m-42/llm-default-session",
            "datachannel",
            "m-42",
            "llm-default-session",
        ),
        ("node:worker-3", "node", "worker-3", None),
        ("audio:m.1/out_2", "audio", "m.1", "out_2"),
        ("a:b", "a", "b", None),
        ("k_9-x:A~b@c+d=e.f_g-h", "k_9-x", "A~b@c+d=e.f_g-h", None),
        ("sys:events", "sys", "events", None),
    ],
)
def test_parse_valid(text: str, kind: str, ident: str, sub: str | None) -> None:
    addr = parse_address(text)
    assert addr == Address(kind, ident, sub)
    assert (addr.kind, addr.id, addr.sub) == (kind, ident, sub)
    assert str(addr) == text
    assert is_valid_address(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected kind:id"),
        ("meeting", "expected kind:id"),
        ("meeting:", "bad address id"),
        (":m-42", "bad address kind"),
        ("Meeting:m-42", "bad address kind"),
        ("1meeting:m-42", "bad address kind"),
        ("mee ting:m-42", "bad address kind"),
        ("meeting:m 42", "bad address id"),
        ("meeting:m:42", "bad address id"),
        ("meeting:m/", "bad address sub"),
        ("meeting:/sub", "bad address id"),
        ("meeting:m/a/b", "at most one '/'"),
        ("meeting:m/a b", "bad address sub"),
        ("meeting:m-42\n", "bad address id"),
        ("meeting:m\u00e9", "bad address id"),
        ("meeting:\uff11", "bad address id"),  # a fullwidth digit is not [0-9]
        ("k:" + "x" * (MAX_ADDRESS_LENGTH - 1), "too long"),
    ],
)
def test_parse_invalid(text: str, why: str) -> None:
    with pytest.raises(InvalidAddress, match=why):
        parse_address(text)
    assert not is_valid_address(text)


def test_invalid_address_is_a_huddle_error() -> None:
    assert issubclass(InvalidAddress, HuddleError)


def test_length_limit_is_inclusive() -> None:
    longest = "k:" + "x" * (MAX_ADDRESS_LENGTH - 2)
    assert len(longest) == MAX_ADDRESS_LENGTH == 200
    assert str(parse_address(longest)) == longest
    assert is_valid_address(longest)
    with pytest.raises(InvalidAddress, match="too long"):
        Address("k", "x" * (MAX_ADDRESS_LENGTH - 4), "yy")


@pytest.mark.parametrize("value", [None, 42, b"meeting:m-42", ["meeting:m-42"]])
def test_non_str_is_invalid(value: object) -> None:
    with pytest.raises(InvalidAddress, match="must be a str"):
        parse_address(value)  # type: ignore[arg-type]
    assert not is_valid_address(value)


@pytest.mark.parametrize(
    "parts",
    [(1, "a", None), ("a", 1, None), ("a", "b", 1), ("a", "b", ""), ("A", "b", None)],
)
def test_constructing_validates(parts: tuple[object, object, object]) -> None:
    with pytest.raises(InvalidAddress):
        Address(*parts)  # type: ignore[arg-type]


def test_address_is_frozen() -> None:
    addr = parse_address("meeting:m-42")
    with pytest.raises(dataclasses.FrozenInstanceError):
        addr.kind = "node"  # type: ignore[misc]
    assert hash(addr) == hash(Address("meeting", "m-42"))


def test_error_message_names_the_address() -> None:
    with pytest.raises(InvalidAddress) as info:
        parse_address("meeting:m 42")
    assert "'m 42'" in str(info.value)


def test_node_address() -> None:
    assert node_address("worker-3") == "node:worker-3"
    assert parse_address(node_address("n1")).kind == "node"
    with pytest.raises(InvalidAddress):
        node_address("bad id")
    with pytest.raises(InvalidAddress):
        node_address("")


def test_channel_for() -> None:
    assert channel_for("meeting:m-42") == "meeting:m-42"
    assert channel_for("meeting:m-42", "huddle-test:") == "huddle-test:meeting:m-42"


def test_system_channels() -> None:
    assert (SYS_EVENTS, SYS_METRICS, SYS_NODES) == (
        "sys:events",
        "sys:metrics",
        "sys:nodes",
    )
    assert system_channel(SYS_EVENTS) == "sys:events"
    assert system_channel("events") == "sys:events"
    assert system_channel(SYS_NODES, "ns:") == "ns:sys:nodes"
    assert system_channel("metrics", "ns:") == "ns:sys:metrics"
    for name in (SYS_EVENTS, SYS_METRICS, SYS_NODES):
        assert is_valid_address(name)


@pytest.mark.parametrize("name", ["", "sys:", "Events", "sys:a b", "sys:x/y", "a:b"])
def test_bad_system_channel_names(name: str) -> None:
    with pytest.raises(InvalidAddress, match="system channel"):
        system_channel(name)


kinds = st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)
segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=30)
addresses = st.builds(Address, kinds, segments, st.none() | segments)


@settings(max_examples=200, deadline=None)
@given(addresses)
def test_str_and_parse_are_inverse(addr: Address) -> None:
    text = str(addr)
    assert parse_address(text) == addr
    assert is_valid_address(text)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet=SEGMENT_CHARS + ":/ abAZ", max_size=40),
        st.builds(str, addresses),
    )
)
def test_is_valid_agrees_with_parse(text: str) -> None:
    try:
        addr = parse_address(text)
    except InvalidAddress:
        assert not is_valid_address(text)
    else:
        assert is_valid_address(text)
        assert str(addr) == text
