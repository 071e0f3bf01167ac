"""The real token client (aiohttp) against a real HTTP server on a real port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from actors.sessions.service_errors import BadServiceResponse, ServiceError, ServiceRefused, ServiceStatus, ServiceUnreachable
from actors.sessions.token.http import HttpTokenEndpoint
from actors.sessions.service_errors import Failure
from actors.sessions.token.machine import jwt_expiry
from tests.actors.sessions.token.token_service import TokenService

BEARER = {"Authorization": "Bearer user-token"}


@pytest.fixture
def service() -> Iterator[TokenService]:
    service = TokenService().start()
    try:
        yield service
    finally:
        service.stop()


def fetch(url: str, headers: dict[str, str]) -> str:
    """One fetch on a loop of its own, the client's session closed after."""
    endpoint = HttpTokenEndpoint(timeout_s=5)

    async def run() -> str:
        try:
            return await endpoint.fetch(url, headers)
        finally:
            await endpoint.close()

    return asyncio.run(run())


def test_fetch_returns_the_token_and_sends_the_headers(service: TokenService) -> None:
    url = f"{service.locus_url('m-1')}/participant/self-1/datachannel/token"
    token = fetch(url, {**BEARER, "X-Huddle-Job-Id": "job-1"})
    assert token == service.issued[0]
    assert jwt_expiry(token) is not None
    [recorded] = service.requests
    assert recorded["headers"]["Authorization"] == "present"
    assert recorded["headers"]["X-Huddle-Job-Id"] == "job-1"


@pytest.mark.parametrize(("status", "error", "cause"), [
    (401, ServiceRefused, Failure.REFUSED),
    (403, ServiceRefused, Failure.REFUSED),
    (500, ServiceStatus, "http-500"),
    (404, ServiceStatus, "http-404"),
])
def test_statuses_become_typed_errors(service: TokenService, status: int, error: type, cause: str) -> None:
    service.script(status, '{"error": "no"}')
    with pytest.raises(error) as caught:
        fetch(f"{service.locus_url('m-1')}/participant/s/datachannel/token", BEARER)
    assert caught.value.status == status
    assert caught.value.cause == cause


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"other": "x"}', '{"datachannelToken": 7}',
                                  '{"datachannelToken": ""}'])
def test_a_200_without_a_string_token_is_a_bad_response(service: TokenService, body: str) -> None:
    service.script(200, body)
    with pytest.raises(BadServiceResponse) as caught:
        fetch(f"{service.locus_url('m-1')}/participant/s/datachannel/token", BEARER)
    assert caught.value.cause == Failure.BAD_RESPONSE


def test_no_bearer_is_refused_by_the_server(service: TokenService) -> None:
    with pytest.raises(ServiceRefused):
        fetch(f"{service.locus_url('m-1')}/participant/s/datachannel/token", {})


def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServiceUnreachable) as caught:
        fetch(f"http://127.0.0.1:{port}/locus/m/participant/s/datachannel/token", BEARER)
    assert isinstance(caught.value, ServiceError)
    assert caught.value.cause == Failure.UNREACHABLE
