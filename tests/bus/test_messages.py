from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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

# A registry of its own, so these kinds never leak into the default one.
LOCAL = MessageRegistry()


@message_kind("test.scalars", registry=LOCAL)
@dataclass(frozen=True, slots=True)
class Scalars(Message):
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    nothing: None = None


@message_kind("test.shapes", registry=LOCAL)
@dataclass(frozen=True, slots=True)
class Shapes(Message):
    maybe: int | None = None
    old_style: Optional[str] = None  # noqa: UP045 - typing.Optional is accepted too
    ratio: float | None = None
    ints: list[int] = field(default_factory=list)
    table: dict[str, list[dict[str, float | None]]] = field(default_factory=dict)
    anything: Any = None
    any_list: list[Any] = field(default_factory=list)
    any_map: dict[str, Any] = field(default_factory=dict)


@message_kind("test.picky", registry=LOCAL)
@dataclass(frozen=True, slots=True)
class Picky(Message):
    """Refuses odd numbers in its own __post_init__."""

    n: int

    def __post_init__(self) -> None:
        if self.n % 2:
            raise ValueError("odd")


def bad_field(reason_detail: str) -> Any:
    return pytest.raises(DecodeError, match=f"^bad-field: {reason_detail}$")


# -- declaring kinds -----------------------------------------------------------


def test_message_kind_sets_kind_and_registers() -> None:
    assert Scalars.KIND == "test.scalars"
    assert LOCAL.lookup("test.scalars") is Scalars
    assert REGISTRY.lookup("test.scalars") is None


def test_builtin_kinds_are_in_the_default_registry() -> None:
    expected: dict[str, type[Message]] = {
        "sys.reply": Reply,
        "sys.error": ErrorReply,
        "sys.event": Event,
        "sys.ping": Ping,
        "sys.pong": Pong,
        "sys.stop": Stop,
    }
    for kind, cls in expected.items():
        assert cls.KIND == kind
        assert REGISTRY.lookup(kind) is cls
    assert set(expected) <= set(REGISTRY.kinds())


def test_builtin_defaults() -> None:
    assert Event("started") == Event(
        event="started", node="", address="", reason="", detail={}, ts=0.0
    )
    assert Event("a").detail is not Event("b").detail
    assert Ping() == Ping(n=0, payload=b"")
    assert Pong(3).n == 3
    assert dataclasses.fields(Stop) == ()
    assert Reply().value is None


def test_messages_are_frozen_and_slotted() -> None:
    msg = Ping(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.n = 2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")


def test_kinds_are_sorted() -> None:
    assert LOCAL.kinds() == ["test.picky", "test.scalars", "test.shapes"]


def test_lookup_unknown_is_none() -> None:
    assert LOCAL.lookup("nope.nope") is None


@pytest.mark.parametrize(
    "annotation",
    [
        "set[int]",
        "tuple[int, int]",
        "list",
        "dict",
        "dict[int, str]",
        "dict[bytes, str]",
        "int | str",
        "int | str | None",
        "list[int | str]",
        "object",
        "complex",
        "Message",
        "NoSuchName",
    ],
)
def test_unsupported_annotations_are_type_errors(annotation: str) -> None:
    registry = MessageRegistry()
    namespace: dict[str, Any] = {}
    source = (
        "@dataclass(frozen=True, slots=True)\n"
        "class Bad(Message):\n"
        f"    x: {annotation}\n"
    )
    exec(source, globals(), namespace)  # noqa: S102 - builds test classes
    with pytest.raises(TypeError, match="Bad"):
        message_kind("test.bad", registry=registry)(namespace["Bad"])
    assert registry.kinds() == []


def test_default_must_match_annotation() -> None:
    registry = MessageRegistry()
    with pytest.raises(TypeError, match="default"):

        @message_kind("test.bad-default", registry=registry)
        @dataclass(frozen=True, slots=True)
        class BadDefault(Message):
            n: int = True  # bool is not an int here


def test_default_factory_must_match_annotation() -> None:
    registry = MessageRegistry()
    with pytest.raises(TypeError, match="default"):

        @message_kind("test.bad-factory", registry=registry)
        @dataclass(frozen=True, slots=True)
        class BadFactory(Message):
            names: list[str] = field(default_factory=lambda: [1])  # type: ignore[list-item]


def test_kind_must_be_a_frozen_slotted_dataclass() -> None:
    registry = MessageRegistry()

    class Plain(Message):
        n: int

    @dataclass(frozen=True)
    class NoSlots(Message):
        n: int

    @dataclass(slots=True)
    class NotFrozen(Message):
        n: int

    for cls in (Plain, NoSlots, NotFrozen):
        with pytest.raises(TypeError, match=r"dataclass"):
            message_kind("test.x", registry=registry)(cls)
        assert "KIND" not in cls.__dict__
    assert registry.kinds() == []


def test_kind_must_subclass_message() -> None:
    @dataclass(frozen=True, slots=True)
    class Stranger:
        n: int

    with pytest.raises(TypeError, match="Message"):
        message_kind("test.x", registry=MessageRegistry())(Stranger)  # type: ignore[type-var]


def test_init_false_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="init"):

        @message_kind("test.no-init", registry=MessageRegistry())
        @dataclass(frozen=True, slots=True)
        class NoInit(Message):
            n: int = field(default=0, init=False)


@pytest.mark.parametrize(
    "kind", ["", "Meeting.join", "meeting..join", "meeting join", "1abc", "a" * 101]
)
def test_malformed_kind_names(kind: str) -> None:
    with pytest.raises(ValueError, match="malformed message kind"):
        message_kind(kind, registry=MessageRegistry())


def test_duplicate_kind_with_another_class_is_refused() -> None:
    registry = MessageRegistry()

    @message_kind("test.dup", registry=registry)
    @dataclass(frozen=True, slots=True)
    class First(Message):
        n: int

    @dataclass(frozen=True, slots=True)
    class Second(Message):
        n: int

    with pytest.raises(ValueError, match="already registered"):
        message_kind("test.dup", registry=registry)(Second)
    assert registry.lookup("test.dup") is First
    assert "KIND" not in Second.__dict__


def test_registering_the_same_class_again_is_a_noop() -> None:
    registry = MessageRegistry()
    assert registry.register(Ping) is Ping
    assert registry.register(Ping) is Ping
    assert message_kind("sys.ping", registry=registry)(Ping) is Ping
    assert registry.kinds() == ["sys.ping"]


def test_a_class_has_one_kind() -> None:
    with pytest.raises(ValueError, match="already message kind"):
        message_kind("test.other", registry=MessageRegistry())(Ping)
    assert Ping.KIND == "sys.ping"


def test_register_needs_a_kind() -> None:
    @dataclass(frozen=True, slots=True)
    class Unnamed(Message):
        n: int

    with pytest.raises(TypeError, match="KIND"):
        MessageRegistry().register(Unnamed)


def test_a_subclass_does_not_inherit_registration() -> None:
    @dataclass(frozen=True, slots=True)
    class Ping2(Ping):
        extra: int = 0

    with pytest.raises(TypeError, match="KIND"):
        MessageRegistry().register(Ping2)


# -- to_body / from_body ----------------------------------------------------------


def test_to_body_holds_every_field() -> None:
    msg = Shapes(maybe=1, ints=[1, 2])
    assert LOCAL.to_body(msg) == {
        "maybe": 1,
        "old_style": None,
        "ratio": None,
        "ints": [1, 2],
        "table": {},
        "anything": None,
        "any_list": [],
        "any_map": {},
    }
    assert REGISTRY.to_body(Stop()) == {}


def test_to_body_is_every_field_in_order_for_every_registered_kind() -> None:
    # to_body is generated per class; it must agree with the fields.
    import dataclasses as dc

    for kind in REGISTRY.kinds():
        cls = REGISTRY.lookup(kind)
        assert cls is not None
        names = [f.name for f in dc.fields(cls)]
        sentinel = {name: object() for name in names}
        fake = object.__new__(cls)
        for name, value in sentinel.items():
            object.__setattr__(fake, name, value)
        body = REGISTRY.to_body(fake)
        assert list(body) == names
        assert all(body[name] is sentinel[name] for name in names)


def test_to_body_of_unregistered_class_is_encode_error() -> None:
    with pytest.raises(EncodeError, match="Ping"):
        LOCAL.to_body(Ping())


def test_from_body_builds_the_message() -> None:
    body = {"i": 1, "f": 2.5, "s": "x", "b": b"y", "flag": False}
    assert LOCAL.from_body("test.scalars", body) == Scalars(1, 2.5, "x", b"y", False)


def test_from_body_fills_defaults() -> None:
    assert LOCAL.from_body("test.shapes", {}) == Shapes()
    assert REGISTRY.from_body("sys.event", {"event": "stopped"}) == Event("stopped")
    assert REGISTRY.from_body("sys.stop", {}) == Stop()


def test_from_body_does_not_mutate_the_body() -> None:
    body = {"i": 1, "f": 2, "s": "x", "b": b"y", "flag": True}
    snapshot = dict(body)
    LOCAL.from_body("test.scalars", body)
    assert body == snapshot


def test_int_is_accepted_for_float_and_becomes_float() -> None:
    msg = LOCAL.from_body(
        "test.scalars", {"i": 1, "f": 3, "s": "", "b": b"", "flag": True}
    )
    assert isinstance(msg, Scalars)
    assert type(msg.f) is float and msg.f == 3.0
    shapes = LOCAL.from_body("test.shapes", {"ratio": 2, "table": {"a": [{"x": 1}]}})
    assert isinstance(shapes, Shapes)
    assert type(shapes.ratio) is float
    # Nested floats accept ints as they are.
    assert shapes.table == {"a": [{"x": 1}]}


def test_unknown_kind() -> None:
    with pytest.raises(DecodeError) as info:
        LOCAL.from_body("meeting.join", {})
    assert info.value.reason == "unknown-kind"
    assert info.value.detail == "meeting.join"


def test_unknown_kind_detail_is_clipped() -> None:
    with pytest.raises(DecodeError) as info:
        LOCAL.from_body("x" * 10_000, {})
    assert info.value.reason == "unknown-kind"
    assert len(info.value.detail) < 100


def test_non_str_kind_is_unknown() -> None:
    with pytest.raises(DecodeError) as info:
        LOCAL.from_body(5, {})  # type: ignore[arg-type]
    assert info.value.reason == "unknown-kind"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ([], "test.scalars: body must be a map, got list"),
        (None, "test.scalars: body must be a map, got None"),
        ({b"i": 1}, "test.scalars: field names must be str, got bytes"),
        (
            {"i": 1, "f": 1.0, "s": "", "b": b"", "flag": True, "zz": 1},
            r"test.scalars.zz: unknown field",
        ),
        (
            {"f": 1.0, "s": "", "b": b"", "flag": True},
            "test.scalars.i: missing required field",
        ),
        (
            {"i": "1", "f": 1.0, "s": "", "b": b"", "flag": True},
            "test.scalars.i: expected int, got str",
        ),
        (
            {"i": True, "f": 1.0, "s": "", "b": b"", "flag": True},
            "test.scalars.i: expected int, got bool",
        ),
        (
            {"i": 1.0, "f": 1.0, "s": "", "b": b"", "flag": True},
            "test.scalars.i: expected int, got float",
        ),
        (
            {"i": 1, "f": True, "s": "", "b": b"", "flag": True},
            "test.scalars.f: expected float, got bool",
        ),
        (
            {"i": 1, "f": None, "s": "", "b": b"", "flag": True},
            "test.scalars.f: expected float, got None",
        ),
        (
            {"i": 1, "f": 1.0, "s": b"", "b": b"", "flag": True},
            "test.scalars.s: expected str, got bytes",
        ),
        (
            {"i": 1, "f": 1.0, "s": "", "b": "", "flag": True},
            "test.scalars.b: expected bytes, got str",
        ),
        (
            {"i": 1, "f": 1.0, "s": "", "b": b"", "flag": 1},
            "test.scalars.flag: expected bool, got int",
        ),
        (
            {"i": 1, "f": 1.0, "s": "", "b": b"", "flag": True, "nothing": 0},
            "test.scalars.nothing: expected None, got int",
        ),
    ],
)
def test_from_body_refusals(body: object, detail: str) -> None:
    with pytest.raises(DecodeError) as info:
        LOCAL.from_body("test.scalars", body)
    assert info.value.reason == "bad-field"
    assert info.value.detail == detail


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"maybe": "1"}, "test.shapes.maybe: expected int | None, got str"),
        ({"old_style": 1}, "test.shapes.old_style: expected str | None, got int"),
        ({"ratio": "x"}, "test.shapes.ratio: expected float | None, got str"),
        ({"ints": [1, True]}, r"test.shapes.ints: expected list\[int\], got list"),
        ({"ints": {"a": 1}}, r"test.shapes.ints: expected list\[int\], got dict"),
        (
            {"table": {"a": [{"x": "y"}]}},
            r"test.shapes.table: expected dict\[str, list\[dict\[str, float \| None\]\]\], got dict",
        ),
        (
            {"table": {b"a": []}},
            r"test.shapes.table: expected dict\[str, list\[dict\[str, float \| None\]\]\], got dict",
        ),
        ({"any_list": {}}, r"test.shapes.any_list: expected list\[Any\], got dict"),
        (
            {"any_map": {b"k": 1}},
            r"test.shapes.any_map: expected dict\[str, Any\], got dict",
        ),
    ],
)
def test_nested_refusals(body: object, detail: str) -> None:
    with bad_field(detail):
        LOCAL.from_body("test.shapes", body)


def test_any_fields_are_not_checked() -> None:
    odd = {
        "anything": {b"bytes-key": [None, 1.5, {"x": b""}]},
        "any_list": [1, "a", None],
    }
    msg = LOCAL.from_body("test.shapes", odd)
    assert isinstance(msg, Shapes)
    assert msg.anything == odd["anything"]


def test_required_any_field_must_be_present() -> None:
    with bad_field(r"sys.error.message: missing required field"):
        REGISTRY.from_body("sys.error", {"error_type": "ValueError"})


def test_a_kinds_own_refusal_is_a_decode_error() -> None:
    assert LOCAL.from_body("test.picky", {"n": 2}) == Picky(2)
    with pytest.raises(DecodeError) as info:
        LOCAL.from_body("test.picky", {"n": 3})
    assert info.value.reason == "bad-field"
    assert "ValueError" in info.value.detail
    assert isinstance(info.value.__cause__, ValueError)


def test_error_details_do_not_repeat_values() -> None:
    secret = "token-abc123"
    with pytest.raises(DecodeError) as info:
        LOCAL.from_body(
            "test.scalars", {"i": secret, "f": 1.0, "s": "", "b": b"", "flag": True}
        )
    assert secret not in str(info.value)


# -- properties ---------------------------------------------------------------------

msgpack_leaves = strat.msgpack_leaves(size=20)
msgpack_values = strat.msgpack_values(size=20, max_leaves=12)
floats = st.floats(allow_nan=False)

scalars = st.builds(
    Scalars,
    i=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    f=floats,
    s=st.text(max_size=30),
    b=st.binary(max_size=30),
    flag=st.booleans(),
)
shapes = st.builds(
    Shapes,
    maybe=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    old_style=st.none() | st.text(max_size=10),
    ratio=st.none() | floats,
    ints=st.lists(st.integers(min_value=0, max_value=2**32), max_size=5),
    table=st.dictionaries(
        st.text(max_size=5),
        st.lists(
            st.dictionaries(st.text(max_size=5), st.none() | floats, max_size=3),
            max_size=3,
        ),
        max_size=3,
    ),
    anything=msgpack_values,
    any_list=st.lists(msgpack_values, max_size=3),
    any_map=st.dictionaries(st.text(max_size=5), msgpack_values, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(scalars, shapes))
def test_from_body_inverts_to_body(msg: Message) -> None:
    assert LOCAL.from_body(msg.KIND, LOCAL.to_body(msg)) == msg


body_values = st.one_of(
    msgpack_values,
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(
        st.text(max_size=3),
        st.lists(
            st.dictionaries(st.text(max_size=2), st.none() | floats | st.integers())
        ),
        max_size=2,
    ),
)
FIELD_NAMES = sorted(
    {f.name for cls in (Scalars, Shapes, Event) for f in dataclasses.fields(cls)}
    | {"zz"}
)
bodies = st.one_of(
    st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.binary(max_size=2),
        body_values,
        max_size=6,
    ),
    st.dictionaries(
        st.sampled_from([f.name for f in dataclasses.fields(Scalars)]),
        msgpack_leaves,
        max_size=6,
    ),
    msgpack_values,
)


def _outcome(build: Any, body: object) -> object:
    try:
        return ("ok", build(body))
    except DecodeError as exc:
        return ("refused", exc.reason, exc.detail)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["test.scalars", "test.shapes", "sys.event"]), bodies)
def test_fast_and_checked_paths_agree(kind: str, body: object) -> None:
    """The generated fast path accepts exactly what the checked path accepts."""
    registry = REGISTRY if kind.startswith("sys.") else LOCAL
    spec = registry._by_kind[kind]  # the two paths, side by side
    assert _outcome(spec.build, body) == _outcome(spec.build_checked, body)


def test_built_messages_equal_constructed_ones_with_fresh_defaults() -> None:
    # from_body sets the slots of a plain dataclass itself (no __init__);
    # the result must be what the constructor makes, defaults included,
    # with a new object from each default_factory.
    from bus.messages import _plain_dataclass

    assert _plain_dataclass(Shapes) and _plain_dataclass(Ping)
    assert not _plain_dataclass(Picky)  # its __post_init__ must run
    first = LOCAL.from_body("test.shapes", {})
    second = LOCAL.from_body("test.shapes", {"maybe": 3})
    assert first == Shapes() and second == Shapes(maybe=3)
    assert type(first) is Shapes
    assert first.ints is not second.ints and first.table is not second.table
    body = {"maybe": 1, "old_style": "x", "ratio": 2.5, "ints": [1], "table": {"a": []}, "anything": [1],
            "any_list": [None], "any_map": {"k": 1}}
    assert LOCAL.from_body("test.shapes", body) == Shapes(**body)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        LOCAL.from_body("test.picky", {"n": 3})
    for kind in REGISTRY.kinds():
        cls = REGISTRY.lookup(kind)
        assert cls is not None
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if not required:
            assert REGISTRY.from_body(kind, {}) == cls()
