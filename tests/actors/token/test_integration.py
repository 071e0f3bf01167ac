"""The token actor with its real HTTP client against a token endpoint over
real HTTP: URL, headers, 401 retry and refresh ahead on the wire.

The node's clock is a manual one whose wall time starts at the real time,
so the server's ``exp`` and the actor's idea of "now" agree while timers
are driven by the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from actors.clock import ManualClock
from actors.context import (
    JOB_ID_HEADER,
    PARTICIPANT_ID_HEADER,
    ROOM_ID_HEADER,
    JobContext,
    Secret,
)
from actors.contracts.token import (
    DEFAULT_SESSION,
    PRACTICE_SESSION,
    TokenConfigure,
    TokenGranted,
    TokenRequest,
    token_address,
)
from actors.testkit import TestKit
from actors.token.actor import TokenActor
from actors.token.http import HttpTokenEndpoint
from actors.token.machine import EXPIRY_MARGIN_S, jwt_expiry
from tests.actors.token.token_service import TokenService

pytestmark = pytest.mark.integration

MEETING_ID = "m-int"
TOKEN = token_address(MEETING_ID)
DC = f"datachannel:{MEETING_ID}/llm-default-session"
PDC = f"datachannel:{MEETING_ID}/llm-practice-session"


@pytest.fixture
def service() -> Iterator[TokenService]:
    service = TokenService().start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit(clock=ManualClock(start=1000.0, wall_offset=time.time() - 1000.0)) as kit:
        yield kit


@pytest.fixture
def endpoint(kit: TestKit) -> Iterator[HttpTokenEndpoint]:
    endpoint = HttpTokenEndpoint(timeout_s=10)
    try:
        yield endpoint
    finally:
        kit.node.io.submit(endpoint.close()).result(10)


def start(kit: TestKit, endpoint: HttpTokenEndpoint, service: TokenService, *, practice: bool = False) -> None:
    job = JobContext(job_id="job-int", room_id="room-int", room_service_url="http://rooms.invalid",
                     room_service_credentials=Secret("unused"))
    kit.spawn(TOKEN, TokenActor, endpoint, Secret("user-bearer"), job)
    kit.inject_message(TOKEN, TokenConfigure(locus_url=service.locus_url(MEETING_ID), self_id="self-int",
                                             generation=1, practice=practice), sender=f"meeting:{MEETING_ID}")


def test_both_tokens_fetched_over_http_with_attribution(kit: TestKit, endpoint: HttpTokenEndpoint,
                                                        service: TokenService) -> None:
    dc, pdc = kit.probe(DC), kit.probe(PDC)
    start(kit, endpoint, service, practice=True)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    kit.inject_message(TOKEN, TokenRequest(PRACTICE_SESSION, "p1"), sender=PDC)
    default, _ = dc.expect_message(TokenGranted, timeout=15)
    practice, _ = pdc.expect_message(TokenGranted, timeout=15)
    assert {default.token, practice.token} == set(service.issued)
    paths = sorted(r["path"] for r in service.requests)
    assert paths == [f"/locus/{MEETING_ID}/participant/self-int/datachannel/token",
                     f"/locus/{MEETING_ID}/participant/self-int/practiceSession/datachannel/token"]
    for recorded in service.requests:
        headers = recorded["headers"]
        assert headers["Authorization"] == "present"
        assert (headers[JOB_ID_HEADER], headers[ROOM_ID_HEADER], headers[PARTICIPANT_ID_HEADER]) == (
            "job-int", "room-int", "self-int")


def test_s9_a_401_on_the_wire_is_retried_after_2_s(kit: TestKit, endpoint: HttpTokenEndpoint,
                                                  service: TokenService) -> None:
    dc = kit.probe(DC)
    service.script(401, '{"error": "unauthorized"}')
    start(kit, endpoint, service)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    kit.settle(15)
    kit.expect_event("token-fetch-refused", TOKEN)
    assert len(service.requests) == 1
    kit.advance(2)
    kit.settle(15)
    granted, _ = dc.expect_message(TokenGranted, timeout=15)
    assert granted.token == service.issued[0]
    assert len(service.requests) == 2


def test_refresh_ahead_fetches_a_new_token_over_http(kit: TestKit, endpoint: HttpTokenEndpoint,
                                                     service: TokenService) -> None:
    dc = kit.probe(DC)
    service.ttl_s = 100
    start(kit, endpoint, service)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    first, _ = dc.expect_message(TokenGranted, timeout=15)
    expires_at = jwt_expiry(first.token)
    assert expires_at is not None
    service.ttl_s = 3600  # the next token lives longer than our manual clock runs ahead
    kit.advance(expires_at - EXPIRY_MARGIN_S - kit.clock.wall())
    kit.settle(15)
    assert len(service.requests) == 2
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d2"), sender=DC)
    second, _ = dc.expect_message(TokenGranted, timeout=15)
    assert second.token == service.issued[1] != first.token
