"""The one error tree of calls to HTTP services, and its causes."""

from __future__ import annotations

import pytest

from actors.sessions.service_errors import (
    BadServiceResponse,
    Failure,
    ServiceError,
    ServiceNotFound,
    ServiceRefused,
    ServiceStatus,
    ServiceUnreachable,
)
from bus.errors import HuddleError


@pytest.mark.parametrize("error, cause, status", [
    (ServiceRefused("refused", status=403), Failure.REFUSED, 403),
    (ServiceNotFound("gone", status=404), Failure.NOT_FOUND, 404),
    (ServiceStatus("busy", status=503), "http-503", 503),
    (ServiceUnreachable("reset"), Failure.UNREACHABLE, 0),
    (BadServiceResponse("not json", status=200), Failure.BAD_RESPONSE, 200),
], ids=["refused", "not-found", "status", "unreachable", "bad-response"])
def test_each_failure_says_its_cause_and_status(error: ServiceError, cause: str, status: int) -> None:
    assert isinstance(error, ServiceError) and isinstance(error, HuddleError)
    assert (error.cause, error.status) == (cause, status)


def test_the_token_and_transfer_actors_share_the_tree() -> None:
    import actors.sessions.token.http as token_http
    import actors.sessions.transfer.rooms as rooms

    assert token_http.ServiceRefused is rooms.ServiceRefused is ServiceRefused
