"""The public token-endpoint fake (``actors.sessions.token.testing``) with the token
actor in the test kit: scripted answers, and a fetch held in flight at a
gate while the meeting moves on, then let go: the late answer changes
nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.sessions.context import Secret
from actors.sessions.contracts.token import (
    DEFAULT_SESSION,
    TokenConfigure,
    TokenForget,
    TokenGranted,
    TokenRequest,
    TokenUnavailable,
    token_address,
)
from actors.runtime.testkit import TestKit, Timeout
from actors.sessions.token.actor import TokenActor
from actors.sessions.service_errors import ServiceRefused, ServiceUnreachable
from actors.sessions.token.machine import jwt_expiry
from actors.sessions.token.testing import FakeTokenEndpoint, FetchCall, fake_jwt

TOKEN = token_address("m-9")
MEETING = "meeting:m-9"
DC = "datachannel:m-9/llm-default-session"
LOCUS = "http://locus.test/locus/m-9"


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as kit:
        yield kit


def start(kit: TestKit, endpoint: FakeTokenEndpoint) -> TokenActor:
    actor = kit.spawn(TOKEN, TokenActor, endpoint, Secret("user-bearer"))
    configure(kit, 1)
    return actor


def configure(kit: TestKit, generation: int, locus: str = LOCUS) -> None:
    kit.inject_message(TOKEN, TokenConfigure(locus_url=locus, self_id="self-9", generation=generation),
                       sender=MEETING)


def request(kit: TestKit, request_id: str) -> None:
    kit.inject_message(TOKEN, TokenRequest(session_type=DEFAULT_SESSION, request_id=request_id), sender=DC)


def test_fake_jwt_carries_the_expiry_the_actor_reads() -> None:
    assert jwt_expiry(fake_jwt(1_700_000_100.0, sub="x")) == 1_700_000_100.0
    assert jwt_expiry(fake_jwt(None)) is None


def test_scripted_answers_in_turn_then_unreachable(kit: TestKit) -> None:
    token = fake_jwt(kit.clock.wall() + 3600)
    endpoint = FakeTokenEndpoint(token)
    dc = kit.probe(DC)
    start(kit, endpoint)
    request(kit, "r1")
    assert dc.expect_message(TokenGranted)[0].token == token
    [call] = endpoint.wait_calls(1)
    assert isinstance(call, FetchCall) and call.url.startswith(LOCUS)
    assert "user-bearer" not in repr(call)  # credentials stay out of reprs
    assert call.headers["Authorization"] == "Bearer user-bearer"
    with pytest.raises(Timeout):
        endpoint.wait_calls(2, timeout=0.2)
    with pytest.raises(ServiceUnreachable, match="nothing scripted"):
        kit.node.io.submit(endpoint.fetch(LOCUS, {})).result(timeout=5.0)


def test_a_fetch_held_while_the_meeting_leaves_grants_nothing_when_it_lands(kit: TestKit) -> None:
    endpoint = FakeTokenEndpoint(fake_jwt(kit.clock.wall() + 3600, sub="late"))
    dc = kit.probe(DC)
    actor = start(kit, endpoint)
    gate = endpoint.hold()
    request(kit, "r1")
    call = gate.wait_held(timeout=5.0)
    assert call is endpoint.calls[0]
    kit.settle_actors()  # the actor waits for the fetch
    kit.inject_message(TOKEN, TokenForget(generation=2), sender=MEETING)
    kit.settle_actors()
    unavailable, _ = dc.expect_message(TokenUnavailable)
    assert unavailable.request_id == "r1"
    gate.release()  # the token arrives after the meeting left
    kit.settle()
    kit.expect_event("stale-dropped", TOKEN, reason="fetch")
    assert actor.describe()["held"] == {}
    dc.expect_no_message(TokenGranted)
    kit.advance(3600)  # nothing refreshes a token that was never stored
    assert len(endpoint.calls) == 1


def test_a_refusal_held_until_a_new_generation_answered_is_not_retried(kit: TestKit) -> None:
    fresh = fake_jwt(kit.clock.wall() + 3600, sub="fresh")
    endpoint = FakeTokenEndpoint(ServiceRefused("no", status=401), fresh)
    dc = kit.probe(DC)
    start(kit, endpoint)
    gate = endpoint.hold()
    request(kit, "r1")
    gate.wait_held()
    configure(kit, 2, locus=LOCUS + "-replaced")  # the second fetch is not held
    assert dc.expect_message(TokenGranted)[0].token == fresh
    gate.release()  # the first fetch's refusal lands late
    kit.settle()
    kit.advance(10)  # a refusal of the current generation would have been retried at 2 s
    assert len(endpoint.calls) == 2
    dc.expect_no_message()
