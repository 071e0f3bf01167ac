"""Explicit job context and attribution headers (docs/protocol.md §5.2, S46)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.sessions.context import (
    JOB_ID_HEADER,
    PARTICIPANT_ID_HEADER,
    ROOM_ID_HEADER,
    JobContext,
    Secret,
    attribution_headers,
    valid_participant_id,
)

ROOM_KEY = "rk-7d1f0c9a5e"


def job() -> JobContext:
    return JobContext(job_id="job-1", room_id="room-caller", room_service_url="http://127.0.0.1:1",
                      room_service_credentials=Secret(ROOM_KEY))


def test_s46_headers_before_the_room_is_connected_have_room_and_job_but_no_participant() -> None:
    ctx = job()
    assert ctx.participant_id is None
    assert not ctx.is_connected
    assert attribution_headers(ctx) == {JOB_ID_HEADER: "job-1", ROOM_ID_HEADER: "room-caller"}


def test_s46_headers_after_connect_carry_the_participant_id() -> None:
    ctx = job().connected("PA_agent-7")
    assert ctx.is_connected
    assert attribution_headers(ctx) == {
        JOB_ID_HEADER: "job-1",
        ROOM_ID_HEADER: "room-caller",
        PARTICIPANT_ID_HEADER: "PA_agent-7",
    }


@pytest.mark.parametrize("bad_id", ["", None, 42, 0, b"PA_bytes", ["PA_x"], {"id": "PA_x"}, True])
def test_s46_an_empty_or_non_string_participant_id_is_omitted(bad_id: object) -> None:
    ctx = job().connected(bad_id)
    assert ctx.participant_id is None
    headers = attribution_headers(ctx)
    assert PARTICIPANT_ID_HEADER not in headers
    assert headers[JOB_ID_HEADER] == "job-1"


def test_s46_a_bad_id_given_at_construction_is_not_held_either() -> None:
    ctx = JobContext(job_id="j", room_id="r", room_service_url="http://x", room_service_credentials=Secret("k"),
                     participant_id=17)  # type: ignore[arg-type]
    assert ctx.participant_id is None
    assert PARTICIPANT_ID_HEADER not in attribution_headers(ctx)


@given(st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.binary(), st.text(), st.booleans(),
                 st.lists(st.text(), max_size=2)))
def test_participant_id_is_held_exactly_when_it_is_a_non_empty_string(value: object) -> None:
    ctx = job().connected(value)
    expected = value if isinstance(value, str) and value else None
    assert ctx.participant_id == expected
    assert valid_participant_id(value) == expected
    assert attribution_headers(ctx).get(PARTICIPANT_ID_HEADER) == expected


def test_connecting_makes_a_new_context_and_leaves_the_captured_one_as_it_was() -> None:
    before = job()
    after = before.connected("PA_1")
    assert before.participant_id is None
    assert after.participant_id == "PA_1"
    with pytest.raises(AttributeError):
        before.participant_id = "PA_2"  # type: ignore[misc]


def test_a_job_context_needs_job_and_room_ids() -> None:
    with pytest.raises(ValueError):
        JobContext(job_id="", room_id="r", room_service_url="u", room_service_credentials=Secret("k"))
    with pytest.raises(ValueError):
        JobContext(job_id="j", room_id="", room_service_url="u", room_service_credentials=Secret("k"))


def test_credentials_never_show_in_repr_or_str_and_cannot_be_packed() -> None:
    ctx = job().connected("PA_1")
    for text in (repr(ctx), str(ctx), repr(ctx.room_service_credentials), str(ctx.room_service_credentials),
                 f"{ctx.room_service_credentials}"):
        assert ROOM_KEY not in text
    assert ctx.room_service_credentials.reveal() == ROOM_KEY
    with pytest.raises(TypeError):
        msgpack.packb({"credentials": ctx.room_service_credentials})


def test_secrets_compare_by_value() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("é") == Secret("é")
    assert hash(Secret("a")) == hash(Secret("a"))
    assert not Secret("")
    assert Secret("x")
