"""Typed message kinds: what an envelope's body may be.

A message kind is a frozen, slotted dataclass whose fields hold only msgpack
primitives, declared with :func:`message_kind`::

    @message_kind("meeting.join")
    @dataclass(frozen=True, slots=True)
    class JoinMeeting(Message):
        meeting_id: str
        display_name: str | None = None
        tags: list[str] = field(default_factory=list)

Allowed field annotations: ``int``, ``float``, ``str``, ``bytes``, ``bool``,
``None``, ``X | None``, ``list[T]``, ``dict[str, T]`` (nested freely) and
``typing.Any`` (any msgpack-decodable value, not checked). Anything else is a
programming error and raises ``TypeError`` when the class is declared.

Decoding is the untrusted direction, so :meth:`MessageRegistry.from_body` is
strict: the body must be a map with exactly the declared field names (those
with defaults may be left out) and every value must match its annotation.
``bool`` is not accepted for ``int`` (msgpack keeps them apart, so should
we); ``int`` is accepted for ``float`` and, at the top level of a field, is
turned into a ``float``. Every refusal is a ``DecodeError("bad-field", ...)``
or ``DecodeError("unknown-kind", ...)`` whose detail names the kind and field
and the types involved, never the values.

Validators are compiled once per class at registration: the decode path runs
no ``typing`` introspection.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from bus.errors import DecodeError, EncodeError

__all__ = [
    "REGISTRY",
    "ErrorReply",
    "Event",
    "Message",
    "MessageRegistry",
    "Ping",
    "Pong",
    "Reply",
    "Stop",
    "message_kind",
]

M = TypeVar("M", bound="Message")

# "meeting.join", "sys.reply", "datachannel.send_frame": dotted lowercase words.
_KIND_RE = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)*")
_MAX_KIND_LENGTH = 100
# Caps how much of an untrusted string a DecodeError detail repeats.
_MAX_DETAIL_NAME = 64

# A check answers "does this decoded value match the annotation?". ``None``
# stands for "anything goes" (``typing.Any``), so callers can skip the call.
_Check = Callable[[object], bool] | None
# An annotation compiles to (check, description, inline). ``inline`` is a
# Python expression over ``$v`` that the generated fast path uses instead of
# calling ``check`` (``None``: call it). It may be stricter than ``check``
# (e.g. no int for float), never looser: the checked path decides the rest.
_Compiled = tuple[_Check, str, str | None]
_MISSING = object()


class Message:
    """Base of every message kind.

    Subclasses are declared with :func:`message_kind`, which sets ``KIND``
    (the stable name on the wire) and registers the class.
    """

    __slots__ = ()
    KIND: ClassVar[str] = ""


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _clip(name: str) -> str:
    """A wire-supplied name, shortened for an error detail."""
    if len(name) <= _MAX_DETAIL_NAME:
        return name
    return name[:_MAX_DETAIL_NAME] + "..."


# -- compiling annotations into checks ---------------------------------------


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_float(v: object) -> bool:
    t = type(v)
    return t is float or t is int


def _is_str(v: object) -> bool:
    return type(v) is str


def _is_bytes(v: object) -> bool:
    return type(v) is bytes


def _is_bool(v: object) -> bool:
    return type(v) is bool


def _is_none(v: object) -> bool:
    return v is None


def _is_list(v: object) -> bool:
    return type(v) is list


def _is_str_dict(v: object) -> bool:
    return type(v) is dict and all(type(k) is str for k in v)


_SCALARS: dict[object, _Compiled] = {
    int: (_is_int, "int", "type($v) is int"),
    # An int for a float goes the checked way, which turns it into a float.
    float: (_is_float, "float", "type($v) is float"),
    str: (_is_str, "str", "type($v) is str"),
    bytes: (_is_bytes, "bytes", "type($v) is bytes"),
    bool: (_is_bool, "bool", "type($v) is bool"),
    None: (_is_none, "None", "$v is None"),
    type(None): (_is_none, "None", "$v is None"),
}


def _optional(inner: Callable[[object], bool]) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        return v is None or inner(v)

    return check


def _list_of(inner: Callable[[object], bool]) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        return type(v) is list and all(map(inner, v))

    return check


def _dict_of(inner: Callable[[object], bool]) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        return (
            type(v) is dict
            and all(type(k) is str for k in v)
            and all(map(inner, v.values()))
        )

    return check


def _compile(tp: object, where: str) -> _Compiled:
    """Turn an annotation into ``(check, description, inline)``.

    Raises ``TypeError`` naming ``where`` for an annotation a message field
    may not have.
    """
    if tp is Any:
        return None, "Any", None
    try:
        scalar = _SCALARS.get(tp)
    except TypeError:  # an unhashable annotation object
        scalar = None
    if scalar is not None:
        return scalar
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(args) != 2:
            raise TypeError(
                f"{where}: only 'X | None' unions are allowed in messages, got {tp!r}"
            )
        inner, desc, inline = _compile(others[0], where)
        if inner is None:
            return None, "Any", None
        if inline is not None:
            inline = f"($v is None or {inline})"
        return _optional(inner), f"{desc} | None", inline
    if origin is list and len(args) == 1:
        inner, desc, _ = _compile(args[0], where)
        if inner is None:
            return _is_list, f"list[{desc}]", "type($v) is list"
        return _list_of(inner), f"list[{desc}]", None
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise TypeError(f"{where}: message dict keys must be str, got {tp!r}")
        inner, desc, _ = _compile(args[1], where)
        check = _is_str_dict if inner is None else _dict_of(inner)
        return check, f"dict[str, {desc}]", None
    raise TypeError(
        f"{where}: unsupported message field type {tp!r} (allowed: int, float, "
        "str, bytes, bool, None, X | None, list[T], dict[str, T], Any)"
    )


# (name, check, expected description, int->float at the top level)
_FieldCheck = tuple[str, Callable[[object], bool], str, bool]


def _plain_dataclass(cls: type) -> bool:
    """Whether building ``cls`` is only setting its fields: its ``__init__``
    is the one ``dataclasses`` generated (no ``__post_init__`` anywhere, no
    ``__new__`` of its own), so the decoder may set the slots itself."""
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    return (
        code is not None
        and code.co_filename == "<string>"  # dataclasses compiles it from source
        and getattr(init, "__qualname__", "") == f"{cls.__qualname__}.__init__"
        and not hasattr(cls, "__post_init__")
        and cls.__new__ is object.__new__
        and all(type(cls.__dict__.get(f.name)).__name__ == "member_descriptor"
                for f in dataclasses.fields(cls))
    )


class _KindSpec:
    """Everything the hot path needs to know about one message class.

    ``build`` is a function generated for the class (as ``dataclasses`` does
    for ``__init__``) that checks a well-formed body with inline type tests
    and constructs the message. Anything unusual (a bad body, an int for a
    float, a constructor that raises) it hands to :meth:`build_checked`,
    the one place that decides what is refused and says why.
    """

    __slots__ = ("body", "build", "checks", "cls", "kind", "name_set", "names", "required")

    def __init__(self, cls: type[Message], kind: str) -> None:
        self.cls = cls
        self.kind = kind
        where = f"{cls.__qualname__} ({kind!r})"
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # NameError for a forward ref, etc.
            raise TypeError(
                f"{where}: cannot resolve field annotations: {exc}"
            ) from exc
        names: list[str] = []
        required: list[str] = []
        checks: list[_FieldCheck] = []
        fast: list[tuple[str, _Check, str | None, bool]] = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            fwhere = f"{where}.{f.name}"
            if not f.init:
                raise TypeError(f"{fwhere}: message fields must be init fields")
            check, expected, inline = _compile(hints[f.name], fwhere)
            if f.default is not dataclasses.MISSING:
                default: object = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
                required.append(f.name)
            if (
                default is not dataclasses.MISSING
                and check is not None
                and not check(default)
            ):
                raise TypeError(
                    f"{fwhere}: default {default!r} does not match {expected}"
                )
            names.append(f.name)
            fast.append((f.name, check, inline, default is dataclasses.MISSING))
            if check is not None:
                to_float = expected in ("float", "float | None")
                checks.append((f.name, check, expected, to_float))
        self.names = tuple(names)
        self.name_set = frozenset(names)
        self.required = tuple(required)
        self.checks = tuple(checks)
        self.build = self._generate_build(fast)
        self.body = self._generate_body()

    def _generate_body(self) -> Callable[[Message], dict[str, Any]]:
        """``body(msg)``: the dict of every field by name, as one dict
        display (a comprehension of ``getattr`` calls costs twice as much)."""
        items = ", ".join(f"{name!r}: msg.{name}" for name in self.names)
        namespace: dict[str, object] = {}
        exec(f"def body(msg):\n    return {{{items}}}", namespace)  # noqa: S102 - field names are identifiers
        body: Callable[[Message], dict[str, Any]] = namespace["body"]  # type: ignore[assignment]
        body.__qualname__ = f"{self.cls.__qualname__}.<body>"
        return body

    def _generate_build(
        self, fields: list[tuple[str, _Check, str | None, bool]]
    ) -> Callable[[object], Message]:
        cls = self.cls
        namespace: dict[str, object] = {
            "type": type,
            "dict": dict,
            "Exception": Exception,
            "_MISSING": _MISSING,
            "_cls": cls,
            "_new": object.__new__,
            "_checked": self.build_checked,
            "_names_cover": self.name_set.issuperset,
        }
        lines = [
            "def build(body):",
            "    if type(body) is not dict or not _names_cover(body):",
            "        return _checked(body)",
        ]
        plain = _plain_dataclass(cls)
        for i, (name, check, inline, required) in enumerate(fields):
            if check is None:
                if required:
                    lines.append(f"    if {name!r} not in body:")
                    lines.append("        return _checked(body)")
                if plain:
                    lines.append(f"    v{i} = body.get({name!r}, _MISSING)")
                continue
            if inline is None:
                namespace[f"_check{i}"] = check
                test = f"_check{i}(v{i})"
            else:
                test = inline.replace("$v", f"v{i}")
            lines.append(f"    v{i} = body.get({name!r}, _MISSING)")
            if required:
                lines.append(f"    if v{i} is _MISSING or not ({test}):")
            else:
                lines.append(f"    if v{i} is not _MISSING and not ({test}):")
            lines.append("        return _checked(body)")
        if plain:
            # What the generated __init__ does, with the slot setters (half
            # the cost of object.__setattr__, and no keyword arguments).
            lines.append("    msg = _new(_cls)")
            by_name = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            for i, (name, _check, _inline, required) in enumerate(fields):
                namespace[f"_set{i}"] = cls.__dict__[name].__set__
                field = by_name[name]
                if required:
                    lines.append(f"    _set{i}(msg, v{i})")
                elif field.default_factory is not dataclasses.MISSING:
                    namespace[f"_factory{i}"] = field.default_factory
                    lines.append(f"    _set{i}(msg, _factory{i}() if v{i} is _MISSING else v{i})")
                else:
                    namespace[f"_default{i}"] = field.default
                    lines.append(f"    _set{i}(msg, _default{i} if v{i} is _MISSING else v{i})")
            lines.append("    return msg")
        else:
            lines += [
                "    try:",
                "        return _cls(**body)",
                "    except Exception:",
                "        return _checked(body)",
            ]
        exec("\n".join(lines), namespace)  # noqa: S102 - code built above from field names
        build: Callable[[object], Message] = namespace["build"]  # type: ignore[assignment]
        build.__qualname__ = f"{self.cls.__qualname__}.<build>"
        return build

    def build_checked(self, body: object) -> Message:
        """Check ``body`` field by field and build the message, or raise the
        ``DecodeError`` that says what is wrong. Slower than ``build``."""
        kind = self.kind
        if type(body) is not dict:
            raise DecodeError(
                "bad-field", f"{kind}: body must be a map, got {_type_name(body)}"
            )
        if not self.name_set.issuperset(body):
            for key in body:
                if type(key) is not str:
                    raise DecodeError(
                        "bad-field",
                        f"{kind}: field names must be str, got {_type_name(key)}",
                    )
                if key not in self.name_set:
                    raise DecodeError(
                        "bad-field", f"{kind}.{_clip(key)}: unknown field"
                    )
        if len(body) < len(self.names):
            for name in self.required:
                if name not in body:
                    raise DecodeError(
                        "bad-field", f"{kind}.{name}: missing required field"
                    )
        converted: dict[str, object] | None = None
        for name, check, expected, to_float in self.checks:
            if name not in body:
                continue
            value = body[name]
            if not check(value):
                raise DecodeError(
                    "bad-field",
                    f"{kind}.{name}: expected {expected}, got {_type_name(value)}",
                )
            if to_float and type(value) is int:
                if converted is None:
                    converted = dict(body)
                try:
                    converted[name] = float(value)
                except OverflowError:
                    raise DecodeError(
                        "bad-field", f"{kind}.{name}: int too large for float"
                    ) from None
        try:
            return self.cls(**(body if converted is None else converted))
        except Exception as exc:
            # A kind's own __post_init__ may refuse values; that is still a
            # bad body, never a crash of the decoder.
            raise DecodeError(
                "bad-field",
                f"{kind}: rejected by {self.cls.__qualname__}: {type(exc).__name__}",
            ) from exc


# -- the registry --------------------------------------------------------------


class MessageRegistry:
    """Maps wire kinds to message classes and converts bodies both ways.

    After ``register(cls)``, ``lookup(cls.KIND) is cls`` and
    ``from_body(cls.KIND, to_body(msg)) == msg`` for every ``msg`` of ``cls``
    whose values are msgpack primitives.
    """

    __slots__ = ("_by_class", "_by_kind")

    def __init__(self) -> None:
        self._by_kind: dict[str, _KindSpec] = {}
        self._by_class: dict[type, _KindSpec] = {}

    def register(self, cls: type[M]) -> type[M]:
        """Add ``cls`` under ``cls.KIND``; registering it again is a no-op.

        Raises ``TypeError`` if ``cls`` is not a frozen, slotted dataclass
        subclass of :class:`Message` with allowed field types, and
        ``ValueError`` if its kind is malformed or taken by another class.
        """
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise TypeError(f"{cls!r} is not a Message subclass")
        kind = cls.__dict__.get("KIND")
        if not isinstance(kind, str) or not kind:
            raise TypeError(
                f"{cls.__qualname__} has no KIND; declare it with @message_kind"
            )
        _check_kind_name(kind)
        if (
            not dataclasses.is_dataclass(cls)
            or "__dataclass_fields__" not in cls.__dict__
        ):
            raise TypeError(
                f"{cls.__qualname__}: a message kind must be a dataclass; put "
                "@message_kind above @dataclass(frozen=True, slots=True)"
            )
        params = cls.__dict__.get("__dataclass_params__")
        if params is None or not params.frozen or "__slots__" not in cls.__dict__:
            raise TypeError(
                f"{cls.__qualname__}: a message kind must be "
                "@dataclass(frozen=True, slots=True)"
            )
        existing = self._by_kind.get(kind)
        if existing is not None:
            if existing.cls is cls:
                return cls
            raise ValueError(
                f"message kind {kind!r} is already registered to "
                f"{existing.cls.__module__}.{existing.cls.__qualname__}"
            )
        spec = _KindSpec(cls, kind)
        self._by_kind[kind] = spec
        self._by_class[cls] = spec
        return cls

    def lookup(self, kind: str) -> type[Message] | None:
        """The class registered under ``kind``, or ``None``."""
        spec = self._by_kind.get(kind)
        return None if spec is None else spec.cls

    def kinds(self) -> list[str]:
        """All registered kinds, sorted."""
        return sorted(self._by_kind)

    def to_body(self, msg: Message) -> dict[str, Any]:
        """The wire body of ``msg``: a dict of every field by name.

        Raises ``EncodeError`` if ``msg``'s class is not registered here.
        Values are not type-checked (the packer refuses non-primitives).
        """
        spec = self._by_class.get(type(msg))
        if spec is None:
            raise EncodeError(
                f"{type(msg).__qualname__} is not a registered message kind"
            )
        return spec.body(msg)

    def from_body(self, kind: str, body: object) -> Message:
        """Build the message of ``kind`` from an untrusted decoded ``body``.

        Raises ``DecodeError("unknown-kind")`` for a kind not registered here
        and ``DecodeError("bad-field")`` for a body that is not a map of
        exactly the declared, correctly typed fields.
        """
        spec = self._by_kind.get(kind) if type(kind) is str else None
        if spec is None:
            shown = _clip(kind) if type(kind) is str else _type_name(kind)
            raise DecodeError("unknown-kind", shown)
        return spec.build(body)


def _check_kind_name(kind: str) -> None:
    if len(kind) > _MAX_KIND_LENGTH or not _KIND_RE.fullmatch(kind):
        raise ValueError(
            f"malformed message kind {kind!r}: expected dotted lowercase words "
            f"like 'meeting.join', at most {_MAX_KIND_LENGTH} characters"
        )


REGISTRY = MessageRegistry()
"""The default registry: built-in ``sys.*`` kinds and every kind declared
with :func:`message_kind` without an explicit registry."""


def message_kind(
    kind: str, registry: MessageRegistry = REGISTRY
) -> Callable[[type[M]], type[M]]:
    """Class decorator: name a message kind on the wire and register it.

    Apply it above ``@dataclass(frozen=True, slots=True)``. Sets
    ``cls.KIND = kind``. Raises ``TypeError`` for an unsupported class or
    field annotation and ``ValueError`` for a malformed or taken kind.
    """
    _check_kind_name(kind)

    def declare(cls: type[M]) -> type[M]:
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise TypeError(
                f"@message_kind({kind!r}) needs a Message subclass, got {cls!r}"
            )
        previous = cls.__dict__.get("KIND")
        if previous is not None and previous != kind:
            raise ValueError(
                f"{cls.__qualname__} is already message kind {previous!r}, not {kind!r}"
            )
        cls.KIND = kind
        try:
            return registry.register(cls)
        except Exception:
            # Leave a refused class as it was.
            if previous is None:
                del cls.KIND
            raise

    return declare


# -- built-in kinds ------------------------------------------------------------


@message_kind("sys.reply")
@dataclass(frozen=True, slots=True)
class Reply(Message):
    """The answer to an ask whose handler returned a plain value."""

    value: Any = None


@message_kind("sys.error")
@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """The answer to an ask whose handler raised.

    ``error_type`` is the exception's class name; ``message`` its text.
    """

    error_type: str
    message: str


@message_kind("sys.event")
@dataclass(frozen=True, slots=True)
class Event(Message):
    """Something that happened, published on ``sys:events``.

    ``event`` is a short token: started, stopped, crashed, restarted,
    escalated, dead-letter, refused, ... ``ts`` is wall-clock unix seconds.
    """

    event: str
    node: str = ""
    address: str = ""
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0


@message_kind("sys.ping")
@dataclass(frozen=True, slots=True)
class Ping(Message):
    """A probe; used by tests and benchmarks."""

    n: int = 0
    payload: bytes = b""


@message_kind("sys.pong")
@dataclass(frozen=True, slots=True)
class Pong(Message):
    """The answer to a :class:`Ping`."""

    n: int = 0
    payload: bytes = b""


@message_kind("sys.stop")
@dataclass(frozen=True, slots=True)
class Stop(Message):
    """Ask the actor at the envelope's address to stop."""
