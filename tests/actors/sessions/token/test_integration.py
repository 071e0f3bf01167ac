"""The token actor with its real HTTP client against the REAL reference
service's token endpoint (``huddle dataserver``, a separate process) over
real HTTP: URL, headers, 401/403 retry, refresh ahead, and tokens the
service itself then accepts on register.

The node's clock is a manual one whose wall time starts at the real time,
so the service's ``exp`` and the actor's idea of "now" agree while timers
are driven by the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from actors.runtime.clock import ManualClock
from actors.sessions.context import (
    JOB_ID_HEADER,
    PARTICIPANT_ID_HEADER,
    ROOM_ID_HEADER,
    JobContext,
    Secret,
)
from actors.sessions.contracts.token import (
    DEFAULT_SESSION,
    PRACTICE_SESSION,
    TokenConfigure,
    TokenGranted,
    TokenRequest,
    TokenUnavailable,
    UnavailableReason,
    token_address,
)
from actors.runtime.testkit import TestKit
from actors.sessions.token.actor import TokenActor
from actors.sessions.token.http import HttpTokenEndpoint
from actors.sessions.token.machine import EXPIRY_MARGIN_S, jwt_expiry
from ops.dataserver.harness import DataServerProcess

pytestmark = pytest.mark.integration

MEETING_ID = "m-int"
SELF_ID = "self-int"
TOKEN = token_address(MEETING_ID)
DC = f"datachannel:{MEETING_ID}/llm-default-session"
PDC = f"datachannel:{MEETING_ID}/llm-practice-session"
USER_TOKEN = "user-bearer-int-91c4"
DEADLINE = 15.0


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


def start(kit: TestKit, endpoint: HttpTokenEndpoint, service: DataServerProcess, *, practice: bool = False) -> None:
    job = JobContext(job_id="job-int", room_id="room-int", room_service_url="http://rooms.invalid",
                     room_service_credentials=Secret("unused"))
    kit.spawn(TOKEN, TokenActor, endpoint, Secret(USER_TOKEN), job)
    kit.inject_message(TOKEN, TokenConfigure(locus_url=service.locus_url(MEETING_ID), self_id=SELF_ID,
                                             generation=1, practice=practice), sender=f"meeting:{MEETING_ID}")


def token_requests(service: DataServerProcess) -> list[dict[str, Any]]:
    return service.state()["token_requests"]


def accepted_on_register(service: DataServerProcess, token: str, session: str) -> bool:
    """The service itself judges the token: a register that requires one."""
    path = service.datachannel_url(MEETING_ID, practice=session == PRACTICE_SESSION)[len(service.http_url):]
    status, _ = service.request("POST", path, {"deviceUrl": "https://device.test/d-1"},
                                headers={"Data-Channel-Auth-Token": token})
    return status == 200


def test_both_tokens_fetched_from_the_reference_service_with_attribution(
    kit: TestKit, endpoint: HttpTokenEndpoint, dataserver_session: DataServerProcess
) -> None:
    service = dataserver_session
    dc, pdc = kit.probe(DC), kit.probe(PDC)
    start(kit, endpoint, service, practice=True)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    kit.inject_message(TOKEN, TokenRequest(PRACTICE_SESSION, "p1"), sender=PDC)
    default, _ = dc.expect_message(TokenGranted, timeout=DEADLINE)
    practice, _ = pdc.expect_message(TokenGranted, timeout=DEADLINE)
    for granted, session in ((default, DEFAULT_SESSION), (practice, PRACTICE_SESSION)):
        claims = jwt.decode(granted.token, options={"verify_signature": False})
        assert (claims["sub"], claims["aud"]) == (SELF_ID, session)
    requests = token_requests(service)
    assert sorted((r["meeting"], r["self"], r["session"], r["status"]) for r in requests) == [
        (MEETING_ID, SELF_ID, DEFAULT_SESSION, 200), (MEETING_ID, SELF_ID, PRACTICE_SESSION, 200)]
    for recorded in requests:
        assert recorded["authorization"] == {"present": True}
        headers = recorded["headers"]
        assert (headers[JOB_ID_HEADER], headers[ROOM_ID_HEADER], headers[PARTICIPANT_ID_HEADER]) == (
            "job-int", "room-int", SELF_ID)
        assert USER_TOKEN not in repr(recorded)
    service.fault(require_token=True)
    assert accepted_on_register(service, default.token, DEFAULT_SESSION)
    assert accepted_on_register(service, practice.token, PRACTICE_SESSION)
    assert not accepted_on_register(service, default.token, PRACTICE_SESSION)  # a token is for its own session


def test_s9_a_401_from_the_service_is_retried_after_2_s(
    kit: TestKit, endpoint: HttpTokenEndpoint, dataserver_session: DataServerProcess
) -> None:
    service = dataserver_session
    dc = kit.probe(DC)
    service.fault(token_fail_next={"status": 401, "count": 1})
    start(kit, endpoint, service)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    kit.settle(DEADLINE)
    kit.expect_event("token-fetch-refused", TOKEN)
    assert [r["status"] for r in token_requests(service)] == [401]
    kit.advance(2)
    granted, _ = dc.expect_message(TokenGranted, timeout=DEADLINE)
    assert [r["status"] for r in token_requests(service)] == [401, 200]
    service.fault(require_token=True)
    assert accepted_on_register(service, granted.token, DEFAULT_SESSION)


def test_s9_a_403_twice_is_reported_unavailable(
    kit: TestKit, endpoint: HttpTokenEndpoint, dataserver_session: DataServerProcess
) -> None:
    service = dataserver_session
    dc = kit.probe(DC)
    service.fault(token_fail_next={"status": 403, "count": 2})
    start(kit, endpoint, service)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    kit.settle(DEADLINE)
    kit.advance(2)
    unavailable, _ = dc.expect_message(TokenUnavailable, timeout=DEADLINE)
    assert unavailable.reason == UnavailableReason.REFUSED
    assert [r["status"] for r in token_requests(service)] == [403, 403]


def test_refresh_ahead_fetches_a_new_token_from_the_service(
    kit: TestKit, endpoint: HttpTokenEndpoint, dataserver_session: DataServerProcess
) -> None:
    service = dataserver_session
    dc = kit.probe(DC)
    service.fault(token_ttl_s=100)
    start(kit, endpoint, service)
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d1"), sender=DC)
    first, _ = dc.expect_message(TokenGranted, timeout=DEADLINE)
    expires_at = jwt_expiry(first.token)
    assert expires_at is not None
    service.fault(token_ttl_s=3600)  # the next token outlives how far the manual clock runs ahead
    kit.advance(expires_at - EXPIRY_MARGIN_S - kit.clock.wall())
    kit.settle(DEADLINE)
    assert len(token_requests(service)) == 2
    kit.inject_message(TOKEN, TokenRequest(DEFAULT_SESSION, "d2"), sender=DC)
    second, _ = dc.expect_message(TokenGranted, timeout=DEADLINE)
    assert second.token != first.token
    assert (jwt_expiry(second.token) or 0) > expires_at
    service.fault(require_token=True)
    assert accepted_on_register(service, second.token, DEFAULT_SESSION)
