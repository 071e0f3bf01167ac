"""Hypothesis strategies for msgpack data, shared by the bus tests."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy


def msgpack_leaves(*, size: int, allow_nan: bool = False) -> SearchStrategy[object]:
    """Scalars msgpack can carry (ints over the whole 64-bit range)."""
    return (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=allow_nan)
        | st.text(max_size=size)
        | st.binary(max_size=size)
    )


def msgpack_values(
    *, size: int, max_leaves: int, allow_nan: bool = False, binary_keys: bool = False
) -> SearchStrategy[object]:
    """Nested lists and maps of leaves; map keys are text (and bytes, with
    ``binary_keys``, which a body may carry but never as a field name)."""
    keys: SearchStrategy[object] = st.text(max_size=8)
    if binary_keys:
        keys = st.text(max_size=6) | st.binary(max_size=4)
    return st.recursive(
        msgpack_leaves(size=size, allow_nan=allow_nan),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=max_leaves,
    )


def _for_annotation(annotation: object) -> SearchStrategy[object]:
    """Values of one field annotation a message kind may declare (see
    :mod:`bus.messages`: scalars, ``X | None``, ``list[T]``,
    ``dict[str, T]``, ``Any``)."""
    import types
    import typing

    scalars: dict[object, SearchStrategy[object]] = {
        int: st.integers(min_value=-(2**53), max_value=2**53),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=12),
        bytes: st.binary(max_size=12),
        bool: st.booleans(),
        type(None): st.none(),
        None: st.none(),
    }
    if annotation in scalars:
        return scalars[annotation]
    if annotation is typing.Any:
        return msgpack_values(size=6, max_leaves=4)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_for_annotation(a) for a in args))
    if origin is list:
        return st.lists(_for_annotation(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), _for_annotation(args[1]), max_size=3)
    raise TypeError(f"no strategy for the annotation {annotation!r}")


def messages_of(cls: type) -> SearchStrategy[object]:
    """Instances of the message kind ``cls`` with any field values its
    annotations allow (a kind whose constructor validates further may
    refuse some: filter those with ``hypothesis.assume``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    fields = {f.name: _for_annotation(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries(fields).map(lambda values: (cls, values))
