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
