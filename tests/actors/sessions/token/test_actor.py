"""The token actor's shell through the test kit: real mailbox, manual clock,
a scripted endpoint on the node's real I/O loop."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

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
    TokenEnsure,
    TokenForget,
    TokenGranted,
    TokenHeld,
    TokenRequest,
    TokenSeed,
    TokenUnavailable,
    UnavailableReason,
    token_address,
)
from actors.runtime.supervisor import ChildSpec
from actors.runtime.testkit import Probe, TestKit
from actors.sessions.token.actor import TokenActor
from actors.sessions.service_errors import ServiceRefused, ServiceStatus
from actors.sessions.token.machine import EXPIRY_MARGIN_S, TokenFetched
from actors.sessions.token.testing import FakeTokenEndpoint
from bus.messages import Ping
from tests.actors.sessions.token.jwts import make_jwt

MEETING_ID = "m-7"
TOKEN = token_address(MEETING_ID)
MEETING = f"meeting:{MEETING_ID}"
DC = f"datachannel:{MEETING_ID}/llm-default-session"
PDC = f"datachannel:{MEETING_ID}/llm-practice-session"
LOCUS = "http://locus.test/locus/m-7"
USER_TOKEN = "user-bearer-5b2e9c"
ROOM_KEY = "room-key-0f3a"


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as kit:
        yield kit


@pytest.fixture
def endpoint() -> FakeTokenEndpoint:
    return FakeTokenEndpoint()


def job() -> JobContext:
    return JobContext(job_id="job-7", room_id="room-7", room_service_url="http://rooms.test",
                      room_service_credentials=Secret(ROOM_KEY))


def start(kit: TestKit, endpoint: FakeTokenEndpoint, *, with_job: bool = True) -> TokenActor:
    return kit.spawn(TOKEN, TokenActor, endpoint, Secret(USER_TOKEN), job() if with_job else None)


def jwt(kit: TestKit, ttl: float, sub: str = "self-7") -> str:
    return make_jwt(kit.clock.wall() + ttl, sub=sub)


def configure(kit: TestKit, generation: int = 1, *, locus: str = LOCUS, practice: bool = False) -> None:
    kit.inject_message(TOKEN, TokenConfigure(locus_url=locus, self_id="self-7", generation=generation,
                                             practice=practice), sender=MEETING)


def request(kit: TestKit, request_id: str, sender: str = DC, session_type: str = DEFAULT_SESSION,
            refresh: bool = False) -> None:
    kit.inject_message(TOKEN, TokenRequest(session_type=session_type, request_id=request_id, refresh=refresh),
                       sender=sender)


def test_request_fetches_over_the_seam_with_credentials_and_attribution(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit)
    token = jwt(kit, 3600)
    endpoint.answer(token)
    request(kit, "r1")
    message, _ = dc.expect_message(TokenGranted)
    assert message == TokenGranted(DEFAULT_SESSION, "r1", token)
    [call] = endpoint.calls
    url, headers = call.url, call.headers
    assert url == f"{LOCUS}/participant/self-7/datachannel/token"
    assert headers == {
        "Authorization": f"Bearer {USER_TOKEN}",
        JOB_ID_HEADER: "job-7",
        ROOM_ID_HEADER: "room-7",
        PARTICIPANT_ID_HEADER: "self-7",
    }


def test_without_a_job_no_attribution_headers_are_sent(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint, with_job=False)
    configure(kit)
    endpoint.answer(jwt(kit, 3600))
    request(kit, "r1")
    dc.expect_message(TokenGranted)
    assert endpoint.calls[0].headers == {"Authorization": f"Bearer {USER_TOKEN}"}


def test_refresh_ahead_of_expiry_on_the_manual_clock(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit)
    first, second = jwt(kit, 300), jwt(kit, 900)
    endpoint.answer(first, second)
    request(kit, "r1")
    dc.expect_message(TokenGranted)
    kit.advance(300 - EXPIRY_MARGIN_S - 1)
    assert len(endpoint.calls) == 1  # not yet
    kit.advance(1)
    assert len(endpoint.calls) == 2  # refreshed before it counts as expired
    request(kit, "r2")
    message, _ = dc.expect_message(TokenGranted)
    assert message.token == second
    kit.expect_event("token-refreshing", TOKEN)


def test_s9_a_refused_fetch_is_retried_once_after_2_s(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit)
    token = jwt(kit, 3600)
    endpoint.answer(ServiceRefused("no", status=401), token)
    request(kit, "r1")
    kit.settle()
    assert len(endpoint.calls) == 1
    kit.expect_event("token-fetch-refused", TOKEN)
    kit.advance(1.9)
    assert len(endpoint.calls) == 1
    dc.expect_no_message()
    kit.advance(0.1)
    assert len(endpoint.calls) == 2
    message, _ = dc.expect_message(TokenGranted)
    assert message.token == token


def test_s9_refused_again_after_the_retry_is_unavailable(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit)
    endpoint.answer(ServiceRefused("no", status=403), ServiceRefused("still no", status=403))
    request(kit, "r1")
    kit.advance(2)
    message, _ = dc.expect_message(TokenUnavailable)
    assert message.reason == UnavailableReason.REFUSED
    assert len(endpoint.calls) == 2


def test_a_server_error_is_answered_at_once_and_not_retried(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit)
    endpoint.answer(ServiceStatus("boom", status=500))
    request(kit, "r1")
    message, _ = dc.expect_message(TokenUnavailable)
    assert message.reason == "fetch-failed:http-500"
    kit.advance(10)
    assert len(endpoint.calls) == 1


def test_concurrent_requests_share_one_fetch(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc, other, meeting = kit.probe(DC), kit.probe("datachannel:m-7/again"), kit.probe(MEETING)
    start(kit, endpoint)
    configure(kit)
    token = jwt(kit, 3600)
    endpoint.answer(token)
    gate = endpoint.hold()
    request(kit, "a")
    gate.wait_held()
    request(kit, "b", sender=other.address)
    kit.inject_message(TOKEN, TokenEnsure(DEFAULT_SESSION, "e"), sender=MEETING)
    kit.settle_actors()
    gate.release()
    kit.settle()
    assert len(endpoint.calls) == 1
    assert dc.expect_message(TokenGranted)[0] == TokenGranted(DEFAULT_SESSION, "a", token)
    assert other.expect_message(TokenGranted)[0] == TokenGranted(DEFAULT_SESSION, "b", token)
    held, _ = meeting.expect_message(TokenHeld)
    assert held.expires_at == pytest.approx(kit.clock.wall() + 3600)


def test_a_fetch_of_a_stale_generation_is_not_stored(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit, 1)
    stale, fresh = jwt(kit, 3600, sub="stale"), jwt(kit, 3600, sub="fresh")
    endpoint.answer(stale, fresh)
    first, second = endpoint.hold(), endpoint.hold()
    request(kit, "r1")
    first.wait_held()
    configure(kit, 2, locus="http://locus.test/locus/m-7-replaced")  # the locus URL is replaced
    assert second.wait_held().url.startswith("http://locus.test/locus/m-7-replaced/")
    first.release()
    second.release()
    kit.settle()
    message, _ = dc.expect_message(TokenGranted)
    assert message.token == fresh
    dc.expect_no_message()
    kit.expect_event("stale-dropped", TOKEN, reason="fetch")


def test_s15_the_token_survives_a_data_channel_disconnect(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    configure(kit)
    token = jwt(kit, 3600)
    endpoint.answer(token)
    request(kit, "before")
    dc.expect_message(TokenGranted)
    # The session disconnects: its actor goes away and comes back, later.
    kit.node.stop_actor(DC, release=True)
    kit.advance(600)
    reconnected = Probe(kit, DC, None)
    request(kit, "after")
    message, _ = reconnected.expect_message(TokenGranted)
    assert message.token == token
    assert len(endpoint.calls) == 1


def test_forget_answers_waiters_and_drops_late_results(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc, pdc = kit.probe(DC), kit.probe(PDC)
    start(kit, endpoint)
    configure(kit, practice=True)
    endpoint.answer(jwt(kit, 3600))
    gate = endpoint.hold()
    request(kit, "p", sender=PDC, session_type=PRACTICE_SESSION)
    gate.wait_held()
    kit.inject_message(TOKEN, TokenForget(generation=2), sender=MEETING)
    kit.settle_actors()
    assert pdc.expect_message(TokenUnavailable)[0].reason == UnavailableReason.MEETING_LEFT
    gate.release()
    kit.settle()
    kit.expect_event("stale-dropped", TOKEN, reason="fetch")
    request(kit, "later")
    assert dc.expect_message(TokenUnavailable)[0].reason == UnavailableReason.MEETING_LEFT


def test_seeded_tokens_are_handed_out_without_a_fetch(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    pdc = kit.probe(PDC)
    start(kit, endpoint)
    configure(kit, practice=True)
    practice = jwt(kit, 1800)
    kit.inject_message(TOKEN, TokenSeed(generation=1, default_token=jwt(kit, 3600), practice_token=practice),
                       sender=MEETING)
    request(kit, "p", sender=PDC, session_type=PRACTICE_SESSION)
    assert pdc.expect_message(TokenGranted)[0].token == practice
    assert endpoint.calls == []


def test_a_restarted_token_actor_keeps_its_configuration_but_no_token(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    kit.supervise(f"meeting-sup:{MEETING_ID}", [ChildSpec(TOKEN, TokenActor, (endpoint, Secret(USER_TOKEN), job()))])
    configure(kit, 3)
    endpoint.answer(jwt(kit, 3600), jwt(kit, 3600, sub="second"))
    request(kit, "r1")
    dc.expect_message(TokenGranted)
    kit.node.stop_actor(TOKEN)  # the supervisor restarts it
    kit.advance(5)
    kit.expect_event("restarted", TOKEN)
    actor = kit.node.lookup(TOKEN)
    assert isinstance(actor, TokenActor) and actor.ctx.incarnation == 2
    assert actor.describe() == {"generation": 3, "configured": True, "held": {}, "fetching": {}}
    request(kit, "r2")
    assert dc.expect_message(TokenGranted)[0].request_id == "r2"
    assert len(endpoint.calls) == 2


def test_outcomes_from_anyone_else_are_refused(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    actor = start(kit, endpoint)
    configure(kit)
    gate = endpoint.hold()
    request(kit, "r1")
    gate.wait_held()
    kit.settle_actors()
    fetching = actor.describe()["fetching"][DEFAULT_SESSION]
    planted = TokenFetched(DEFAULT_SESSION, 1, 1, fetching, token=jwt(kit, 3600, sub="planted"))
    kit.inject_message(TOKEN, planted, sender="datachannel:evil/x")
    kit.settle_actors()
    kit.expect_event("bad-input", TOKEN, reason="not-from-self")
    assert dc.received == []
    gate.release()
    kit.settle()


def test_unknown_kinds_are_dead_letters_and_the_actor_keeps_running(kit: TestKit, endpoint: FakeTokenEndpoint) -> None:
    dc = kit.probe(DC)
    start(kit, endpoint)
    kit.inject_message(TOKEN, Ping(n=1), sender=DC)
    kit.expect_event("dead-letter", TOKEN, reason="unhandled-kind")
    request(kit, "r1")
    assert dc.expect_message(TokenUnavailable)[0].reason == UnavailableReason.NOT_CONFIGURED


def test_tokens_never_reach_events_logs_checkpoints_or_reprs(
    kit: TestKit, endpoint: FakeTokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """A full cycle: seed, fetch, 401 retry, refresh ahead, forced refresh,
    forget; every token string is looked for everywhere it must not be."""
    caplog.set_level(logging.DEBUG)
    dc = kit.probe(DC)
    actor = start(kit, endpoint)
    configure(kit, practice=True)
    tokens = [jwt(kit, 3600, sub="seed"), jwt(kit, 300, sub="fetched"), jwt(kit, 3600, sub="refreshed"),
              jwt(kit, 3600, sub="forced")]
    kit.inject_message(TOKEN, TokenSeed(generation=1, practice_token=tokens[0]), sender=MEETING)
    endpoint.answer(ServiceRefused("no", status=401), tokens[1], tokens[2], tokens[3])
    request(kit, "r1")
    kit.advance(2)
    dc.expect_message(TokenGranted)
    kit.advance(300)  # refresh ahead
    request(kit, "r2", refresh=True)  # the data channel got 4401
    assert dc.expect_message(TokenGranted)[0].token == tokens[3]
    reprs = [repr(actor), repr(actor.state), str(actor.describe())]
    kit.inject_message(TOKEN, TokenForget(generation=2), sender=MEETING)
    kit.settle()
    assert len(endpoint.calls) == 4
    checkpoint = kit.node.checkpoints.load(TOKEN)
    assert checkpoint is not None
    events = [repr(e) for e in kit.events]
    published = [repr(env) for env in kit.sent]
    for token in [*tokens, USER_TOKEN]:
        assert token.encode() not in checkpoint
        assert not [e for e in events if token in e]
        assert not [line for line in caplog.messages if token in line]
        assert not [text for text in reprs + published if token in text]
    for record in caplog.records:
        for token in tokens:
            assert token not in record.getMessage()
