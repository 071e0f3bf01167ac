"""The effect vocabulary's helper: :func:`actors.runtime.effects.evolve`, the copy
every core makes of its frozen state."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import pytest

from actors.runtime.effects import Emit, evolve

@dataclass(frozen=True, slots=True)
class _Point:
    x: int
    y: list[int]
    label: str = "p"


@dataclass(frozen=True)
class _Plain:  # no slots: a __dict__ class
    a: int
    b: int = 2


@pytest.mark.parametrize("value", [_Point(1, [2]), _Plain(1)], ids=["slots", "dict"])
def test_evolve_copies_every_field_and_applies_the_changes_like_replace(value: Any) -> None:
    assert evolve(value) == value and evolve(value) is not value
    first = fields(value)[0].name
    changed = evolve(value, **{first: 41})
    assert changed == replace(value, **{first: 41})
    assert getattr(value, first) != 41  # the original is untouched


def test_evolve_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="_Point has no field 'z'"):
        evolve(_Point(1, []), z=3)


def test_evolve_shares_field_values_as_replace_does() -> None:
    point = _Point(1, [2])
    assert evolve(point, x=5).y is point.y


def test_an_event_is_about_the_emitting_actor_unless_it_names_an_address() -> None:
    assert Emit("started").address == ""
    assert Emit("lease-lost", reason="expired", address="meeting:m1").address == "meeting:m1"
