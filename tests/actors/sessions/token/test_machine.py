"""The token core, driven directly: no I/O, no clock, no actor."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

import msgpack
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

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
)
from actors.runtime.effects import CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer
from actors.sessions.service_errors import Failure
from actors.sessions.token.machine import (
    AUTH_RETRY_DELAY_S,
    EXPIRY_MARGIN_S,
    MAX_WAITING,
    MIN_REFRESH_DELAY_S,
    FetchToken,
    RefreshDue,
    RetryDue,
    TokenFetched,
    TokenState,
    counts_as_expired,
    jwt_expiry,
    step,
    token_url,
)
from bus.messages import Message
from tests.actors.sessions.token.jwts import make_jwt

NOW = 1_700_000_000.0
LOCUS = "https://locus.example/locus/api/v1/loci/m-1"
DC = "datachannel:m-1/llm-default-session"
PDC = "datachannel:m-1/llm-practice-session"
MEETING = "meeting:m-1"


def token_for(ttl: float, now: float = NOW, sub: str = "self-1") -> str:
    return make_jwt(now + ttl, sub=sub)


class Core:
    """A core under test: keeps the state, records every effect."""

    def __init__(self, state: TokenState | None = None) -> None:
        self.state = state or TokenState()
        self.now = NOW
        self.effects: list[Effect] = []

    def feed(self, message: Message, sender: str | None = None) -> list[Effect]:
        self.state, effects = step(self.state, message, self.now, sender)
        self.effects += effects
        return effects

    def configure(self, generation: int = 1, *, locus: str = LOCUS, self_id: str = "self-1",
                  practice: bool = False) -> list[Effect]:
        return self.feed(TokenConfigure(locus_url=locus, self_id=self_id, generation=generation, practice=practice),
                         MEETING)

    def request(self, request_id: str = "r1", session_type: str = DEFAULT_SESSION, sender: str = DC,
                refresh: bool = False) -> list[Effect]:
        return self.feed(TokenRequest(session_type=session_type, request_id=request_id, refresh=refresh), sender)

    def complete(self, fetch: FetchToken, token: str = "", failure: str = "", status: int = 0) -> list[Effect]:
        return self.feed(TokenFetched(session_type=fetch.session_type, generation=fetch.generation,
                                      incarnation=fetch.incarnation, fetch_id=fetch.fetch_id, token=token,
                                      failure=failure, status=status), "token:m-1")


def of(effects: Iterable[Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def sends(effects: Iterable[Effect]) -> list[tuple[str, Message]]:
    return [(e.to, e.message) for e in of(effects, Send)]


def only_fetch(effects: Iterable[Effect]) -> FetchToken:
    fetches = of(effects, FetchToken)
    assert len(fetches) == 1, effects
    return fetches[0]


def events(effects: Iterable[Effect]) -> list[tuple[str, str]]:
    return [(e.event, e.reason) for e in of(effects, Emit)]


# -- tokens: decoding and the expiry rule ------------------------------------------


def test_jwt_expiry_reads_exp_without_verifying() -> None:
    assert jwt_expiry(make_jwt(NOW + 60)) == NOW + 60
    assert jwt_expiry(make_jwt(1234.5, key=b"another key")) == 1234.5


def _raw_jwt(payload: bytes) -> str:
    return f"e30.{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.sig"


@pytest.mark.parametrize("token", [
    "", "opaque-token", "a.b", "a.b.c.d", "e30.!!!not-base64!!!.sig",
    _raw_jwt(b"not json"), _raw_jwt(b"[1, 2]"), _raw_jwt(b'{"sub": "x"}'), _raw_jwt(b'{"exp": "soon"}'),
    _raw_jwt(b'{"exp": true}'), _raw_jwt(b'{"exp": NaN}'), _raw_jwt(b'{"exp": Infinity}'), _raw_jwt(b'{"exp": null}'),
    _raw_jwt("\u00e9".encode("latin-1")),
])
def test_a_token_that_cannot_be_decoded_has_no_expiry_and_counts_as_expired(token: str) -> None:
    assert jwt_expiry(token) is None
    assert counts_as_expired(jwt_expiry(token), NOW)


@given(exp=st.integers(min_value=0, max_value=4_000_000_000), half_seconds=st.integers(min_value=-10_000, max_value=10_000))
def test_expiry_boundary_is_exp_ms_below_now_plus_30_s(exp: int, half_seconds: int) -> None:
    now = exp - EXPIRY_MARGIN_S + half_seconds / 2  # exact in binary floating point
    assert counts_as_expired(float(exp), now) == (half_seconds > 0)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
       st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.floats(allow_nan=False, allow_infinity=False)))
def test_any_numeric_exp_is_read_back_whatever_else_the_payload_holds(claims: dict, exp: float) -> None:
    claims = {k: v for k, v in claims.items() if k != "exp"}
    token = _raw_jwt(json.dumps({**claims, "exp": exp}).encode())
    assert jwt_expiry(token) == float(exp)


def test_token_urls() -> None:
    assert token_url(LOCUS, "self-1", DEFAULT_SESSION) == f"{LOCUS}/participant/self-1/datachannel/token"
    assert token_url(LOCUS + "/", "self-1", PRACTICE_SESSION) == (
        f"{LOCUS}/participant/self-1/practiceSession/datachannel/token")
    assert token_url(LOCUS, "a/b c", DEFAULT_SESSION) == f"{LOCUS}/participant/a%2Fb%20c/datachannel/token"


# -- fetching and answering ----------------------------------------------------------


def test_a_request_before_configure_is_answered_not_configured() -> None:
    core = Core()
    assert sends(core.request()) == [(DC, TokenUnavailable(DEFAULT_SESSION, "r1", UnavailableReason.NOT_CONFIGURED))]


def test_request_fetches_then_grants_and_schedules_the_refresh_ahead_of_expiry() -> None:
    core = Core()
    core.configure()
    fetch = only_fetch(core.request())
    assert fetch.url == f"{LOCUS}/participant/self-1/datachannel/token"
    assert (fetch.generation, fetch.self_id) == (1, "self-1")
    token = token_for(3600)
    effects = core.complete(fetch, token=token)
    assert sends(effects) == [(DC, TokenGranted(DEFAULT_SESSION, "r1", token))]
    [timer] = of(effects, StartTimer)
    assert timer.delay == pytest.approx(3600 - EXPIRY_MARGIN_S)
    assert timer.message == RefreshDue(DEFAULT_SESSION, 1, NOW + 3600)
    # Held now: the next request is answered at once, no fetch.
    again = core.request("r2")
    assert sends(again) == [(DC, TokenGranted(DEFAULT_SESSION, "r2", token))]
    assert not of(again, FetchToken)


def test_concurrent_requests_for_one_type_share_one_fetch() -> None:
    core = Core()
    core.configure(practice=True)
    fetch = only_fetch(core.request("a"))
    assert not of(core.request("b", sender="datachannel:m-1/other"), FetchToken)
    assert not of(core.feed(TokenEnsure(DEFAULT_SESSION, "e"), MEETING), FetchToken)
    # Another type is another fetch.
    practice_fetch = only_fetch(core.request("p", PRACTICE_SESSION, PDC))
    assert practice_fetch.url.endswith("/practiceSession/datachannel/token")
    token = token_for(600)
    answered = sends(core.complete(fetch, token=token))
    assert answered == [
        (DC, TokenGranted(DEFAULT_SESSION, "a", token)),
        ("datachannel:m-1/other", TokenGranted(DEFAULT_SESSION, "b", token)),
        (MEETING, TokenHeld(DEFAULT_SESSION, "e", NOW + 600)),
    ]
    assert core.state.slot(PRACTICE_SESSION).fetching == practice_fetch.fetch_id


def test_s9_refused_fetch_is_retried_once_after_2_s_then_granted() -> None:
    core = Core()
    core.configure()
    first = only_fetch(core.request())
    effects = core.complete(first, failure=Failure.REFUSED, status=401)
    assert not of(effects, Send)
    [timer] = of(effects, StartTimer)
    assert timer.delay == AUTH_RETRY_DELAY_S
    assert timer.message == RetryDue(DEFAULT_SESSION, 1, first.fetch_id)
    # Requests during the wait join it, no fetch of their own.
    assert not of(core.request("r2"), FetchToken)
    second = only_fetch(core.feed(timer.message, "token:m-1"))
    assert second.fetch_id != first.fetch_id
    token = token_for(600)
    assert [m for _, m in sends(core.complete(second, token=token))] == [
        TokenGranted(DEFAULT_SESSION, "r1", token), TokenGranted(DEFAULT_SESSION, "r2", token)]


def test_s9_refused_twice_answers_unavailable_and_the_next_request_starts_over() -> None:
    core = Core()
    core.configure()
    first = only_fetch(core.request())
    [timer] = of(core.complete(first, failure=Failure.REFUSED, status=403), StartTimer)
    second = only_fetch(core.feed(timer.message, "token:m-1"))
    effects = core.complete(second, failure=Failure.REFUSED, status=403)
    assert sends(effects) == [(DC, TokenUnavailable(DEFAULT_SESSION, "r1", UnavailableReason.REFUSED))]
    assert not of(effects, StartTimer)
    # A later request gets its own fresh attempt, with its own one retry.
    third = only_fetch(core.request("r3"))
    assert of(core.complete(third, failure=Failure.REFUSED, status=401), StartTimer)


def test_other_failures_are_not_retried() -> None:
    core = Core()
    core.configure()
    fetch = only_fetch(core.request())
    effects = core.complete(fetch, failure=Failure.http(500), status=500)
    assert sends(effects) == [(DC, TokenUnavailable(DEFAULT_SESSION, "r1", "fetch-failed:http-500"))]
    assert ("token-fetch-failed", "http-500") in events(effects)
    assert not of(effects, StartTimer)


def test_a_fetched_token_that_counts_as_expired_is_not_stored() -> None:
    core = Core()
    core.configure()
    fetch = only_fetch(core.request())
    effects = core.complete(fetch, token=token_for(EXPIRY_MARGIN_S - 1))
    assert sends(effects) == [(DC, TokenUnavailable(DEFAULT_SESSION, "r1", UnavailableReason.TOKEN_EXPIRED_ON_ARRIVAL))]
    assert ("token-rejected", "expired") in events(effects)
    assert core.state.slot(DEFAULT_SESSION).held is None
    fetch = only_fetch(core.request("r2"))
    assert ("token-rejected", "undecodable") in events(core.complete(fetch, token="opaque"))


def test_refresh_true_drops_the_held_token_and_fetches_a_new_one() -> None:
    core = Core()
    core.configure()
    core.complete(only_fetch(core.request()), token=token_for(3600))
    effects = core.request("r2", refresh=True)
    assert CancelTimer(f"refresh:{DEFAULT_SESSION}") in effects
    fetch = only_fetch(effects)
    assert core.state.slot(DEFAULT_SESSION).held is None
    fresh = token_for(3000)
    assert sends(core.complete(fetch, token=fresh)) == [(DC, TokenGranted(DEFAULT_SESSION, "r2", fresh))]


def test_a_held_token_past_the_margin_is_never_handed_out() -> None:
    core = Core()
    core.configure()
    old = token_for(100)
    core.complete(only_fetch(core.request()), token=old)
    core.now = NOW + 100 - EXPIRY_MARGIN_S + 0.5
    effects = core.request("r2")
    assert not of(effects, Send)
    assert ("token-dropped", "expired") in events(effects)
    only_fetch(effects)


def test_refresh_ahead_fetches_while_the_old_token_is_still_handed_out() -> None:
    core = Core()
    core.configure()
    old = token_for(300)
    [timer] = of(core.complete(only_fetch(core.request()), token=old), StartTimer)
    core.now = NOW + timer.delay - 0.001  # the timer fires (a little early: clocks differ)
    fetch = only_fetch(core.feed(timer.message, "token:m-1"))
    assert sends(core.request("r2")) == [(DC, TokenGranted(DEFAULT_SESSION, "r2", old))]
    new = token_for(600, now=core.now)
    effects = core.complete(fetch, token=new)
    assert not of(effects, Send)  # nobody was waiting
    [timer2] = of(effects, StartTimer)
    assert timer2.message.expires_at == core.now + 600
    assert sends(core.request("r3")) == [(DC, TokenGranted(DEFAULT_SESSION, "r3", new))]
    # The old token's timer, if it still comes, does nothing.
    assert core.feed(timer.message, "token:m-1") == []


def test_a_short_lived_token_is_refreshed_no_sooner_than_the_floor() -> None:
    core = Core()
    core.configure()
    [timer] = of(core.complete(only_fetch(core.request()), token=token_for(EXPIRY_MARGIN_S + 0.2)), StartTimer)
    assert timer.delay == MIN_REFRESH_DELAY_S


def test_a_failed_refresh_keeps_the_held_token() -> None:
    core = Core()
    core.configure()
    token = token_for(300)
    [timer] = of(core.complete(only_fetch(core.request()), token=token), StartTimer)
    fetch = only_fetch(core.feed(timer.message, "token:m-1"))
    core.complete(fetch, failure=Failure.UNREACHABLE)
    assert sends(core.request("r2")) == [(DC, TokenGranted(DEFAULT_SESSION, "r2", token))]


def test_practice_token_is_refreshed_ahead_only_while_wanted() -> None:
    core = Core()
    core.configure(practice=False)
    effects = core.complete(only_fetch(core.request("p", PRACTICE_SESSION, PDC)), token=token_for(600))
    assert not of(effects, StartTimer)  # held and handed out, but not kept fresh
    core.configure(2, practice=True)
    assert core.state.slot(PRACTICE_SESSION).held is not None
    effects = core.configure(3, practice=False)  # demoted: the practice token goes
    assert core.state.slot(PRACTICE_SESSION).held is None
    assert CancelTimer(f"refresh:{PRACTICE_SESSION}") in effects


# -- seeds ---------------------------------------------------------------------------


def test_seeded_tokens_are_held_and_handed_out_without_a_fetch() -> None:
    core = Core()
    core.configure(practice=True)
    default, practice = token_for(3600), token_for(1800)
    effects = core.feed(TokenSeed(generation=1, default_token=default, practice_token=practice), MEETING)
    assert {t.key for t in of(effects, StartTimer)} == {f"refresh:{DEFAULT_SESSION}", f"refresh:{PRACTICE_SESSION}"}
    assert sends(core.request()) == [(DC, TokenGranted(DEFAULT_SESSION, "r1", default))]
    assert sends(core.request("p", PRACTICE_SESSION, PDC)) == [(PDC, TokenGranted(PRACTICE_SESSION, "p", practice))]
    assert not of(core.effects, FetchToken)


def test_a_seed_of_another_generation_or_before_configure_is_dropped() -> None:
    core = Core()
    assert events(core.feed(TokenSeed(generation=-1, default_token=token_for(60)), MEETING)) == [
        ("stale-dropped", "seed")]
    core.configure(2)
    assert events(core.feed(TokenSeed(generation=1, default_token=token_for(3600)), MEETING)) == [
        ("stale-dropped", "seed")]
    assert core.state.slot(DEFAULT_SESSION).held is None


def test_an_expired_seed_is_rejected_and_the_first_request_fetches() -> None:
    core = Core()
    core.configure()
    effects = core.feed(TokenSeed(generation=1, default_token=token_for(10)), MEETING)
    assert ("token-rejected", "expired") in events(effects)
    only_fetch(core.request())


def test_a_seed_never_replaces_a_longer_lived_token() -> None:
    core = Core()
    core.configure()
    fetched = token_for(3600)
    core.complete(only_fetch(core.request()), token=fetched)
    core.feed(TokenSeed(generation=1, default_token=token_for(600)), MEETING)
    assert sends(core.request("r2")) == [(DC, TokenGranted(DEFAULT_SESSION, "r2", fetched))]


# -- generations ------------------------------------------------------------------------


def test_a_fetch_of_an_older_generation_is_dropped_and_waiters_get_a_fresh_fetch() -> None:
    core = Core()
    core.configure(1)
    old_fetch = only_fetch(core.request())
    # The locus URL is replaced while the fetch runs.
    effects = core.configure(2, locus="https://locus.example/locus/api/v1/loci/m-1-moved")
    new_fetch = only_fetch(effects)
    assert new_fetch.generation == 2
    assert new_fetch.url.startswith("https://locus.example/locus/api/v1/loci/m-1-moved/")
    stale = core.complete(old_fetch, token=token_for(3600, sub="stale"))
    assert events(stale) == [("stale-dropped", "fetch")]
    assert not of(stale, Send)
    assert core.state.slot(DEFAULT_SESSION).held is None
    token = token_for(3600)
    assert sends(core.complete(new_fetch, token=token)) == [(DC, TokenGranted(DEFAULT_SESSION, "r1", token))]


def test_locus_replacement_keeps_held_tokens_a_new_participant_drops_them() -> None:
    core = Core()
    core.configure(1)
    token = token_for(3600)
    core.complete(only_fetch(core.request()), token=token)
    core.configure(2, locus=LOCUS + "-replaced")
    assert sends(core.request("r2")) == [(DC, TokenGranted(DEFAULT_SESSION, "r2", token))]
    core.configure(3, locus=LOCUS + "-replaced", self_id="self-2")
    assert not of(core.request("r3"), Send)


def test_an_older_or_conflicting_configure_is_dropped_and_a_repeat_is_a_no_op() -> None:
    core = Core()
    core.configure(5)
    assert core.configure(5) == []
    assert events(core.configure(4, locus="https://elsewhere")) == [("stale-dropped", "configure")]
    assert events(core.configure(5, self_id="self-9")) == [("stale-dropped", "configure")]
    assert core.state.config is not None and core.state.config.locus_url == LOCUS


def test_a_stale_retry_timer_does_nothing() -> None:
    core = Core()
    core.configure(1)
    first = only_fetch(core.request())
    [timer] = of(core.complete(first, failure=Failure.REFUSED, status=401), StartTimer)
    effects = core.configure(2)
    assert CancelTimer(f"retry:{DEFAULT_SESSION}") in effects
    fresh = only_fetch(effects)  # the waiter gets a fetch under generation 2 at once
    assert core.feed(timer.message, "token:m-1") == []
    assert core.state.slot(DEFAULT_SESSION).fetching == fresh.fetch_id


def test_a_fetch_from_a_previous_incarnation_is_dropped() -> None:
    core = Core(TokenState(incarnation=2))
    core.configure(1)
    fetch = only_fetch(core.request())
    old = TokenFetched(DEFAULT_SESSION, 1, 1, fetch.fetch_id, token=token_for(600))
    assert events(core.feed(old, "token:m-1")) == [("stale-dropped", "fetch")]


# -- forget (meeting left) ------------------------------------------------------------------


def test_forget_drops_tokens_answers_waiters_and_later_requests() -> None:
    core = Core()
    core.configure(1, practice=True)
    core.complete(only_fetch(core.request()), token=token_for(3600))
    pending = only_fetch(core.request("p", PRACTICE_SESSION, PDC))
    effects = core.feed(TokenForget(generation=2), MEETING)
    assert sends(effects) == [(PDC, TokenUnavailable(PRACTICE_SESSION, "p", UnavailableReason.MEETING_LEFT))]
    assert {e.key for e in of(effects, CancelTimer)} >= {f"refresh:{DEFAULT_SESSION}", f"refresh:{PRACTICE_SESSION}"}
    assert of(effects, SaveCheckpoint)[0].state["left"] is True
    # A late fetch result stores nothing; requests are told the meeting left.
    assert events(core.complete(pending, token=token_for(3600))) == [("stale-dropped", "fetch")]
    assert sends(core.request("r2")) == [(DC, TokenUnavailable(DEFAULT_SESSION, "r2", UnavailableReason.MEETING_LEFT))]
    # A forget older than the current generation changes nothing; a rejoin does.
    assert events(core.feed(TokenForget(generation=1), MEETING)) == [("stale-dropped", "forget")]
    core.configure(3)
    only_fetch(core.request("r3"))


# -- S15: tokens outlive sockets ---------------------------------------------------------------


def test_s15_a_token_held_survives_a_data_channel_disconnect() -> None:
    """The token actor is not told about sockets at all: after the session
    disconnects and reconnects, its next request gets the held token."""
    core = Core()
    core.configure()
    token = token_for(3600)
    core.complete(only_fetch(core.request()), token=token)
    fetches_before = len(of(core.effects, FetchToken))
    # ... the data channel disconnects and reconnects; it asks again:
    assert sends(core.request("after-reconnect")) == [(DC, TokenGranted(DEFAULT_SESSION, "after-reconnect", token))]
    assert len(of(core.effects, FetchToken)) == fetches_before


# -- bad input -------------------------------------------------------------------------------


def test_bad_requests_are_answered_and_reported() -> None:
    core = Core()
    core.configure()
    effects = core.request(session_type="llm-unknown-session")
    assert sends(effects) == [(DC, TokenUnavailable("llm-unknown-session", "r1", UnavailableReason.UNKNOWN_SESSION_TYPE))]
    assert ("bad-input", "unknown-session-type") in events(effects)
    effects = core.feed(TokenRequest(DEFAULT_SESSION, "r1"), None)
    assert events(effects) == [("bad-input", "no-sender")]
    assert events(core.configure(2, locus="")) == [("bad-input", "configure-incomplete")]
    assert events(core.feed(TokenFetched("llm-unknown-session", 1, 1, 1), "token:m-1")) == [
        ("bad-input", "unknown-session-type")]


def test_waiting_requests_are_bounded() -> None:
    core = Core()
    core.configure()
    for i in range(MAX_WAITING):
        core.request(f"r{i}")
    assert sends(core.request("one-too-many")) == [
        (DC, TokenUnavailable(DEFAULT_SESSION, "one-too-many", UnavailableReason.TOO_MANY_WAITING))]
    assert len(of(core.effects, FetchToken)) == 1


def test_the_core_refuses_kinds_it_does_not_know() -> None:
    with pytest.raises(TypeError):
        step(TokenState(), TokenHeld(DEFAULT_SESSION, "r", 1.0), NOW)


# -- checkpoints and secrets -------------------------------------------------------------------


def test_checkpoint_holds_the_configuration_and_restores_it_without_tokens() -> None:
    core = Core()
    core.configure(4, practice=True)
    token = token_for(3600)
    core.complete(only_fetch(core.request()), token=token)
    saved = of(core.effects, SaveCheckpoint)[-1].state
    assert token.encode() not in msgpack.packb(saved)
    restored = TokenState.restore(msgpack.unpackb(msgpack.packb(saved)), incarnation=2)
    assert restored.generation == 4 and restored.incarnation == 2
    assert restored.config == core.state.config
    assert all(slot.held is None for slot in restored.slots.values())
    assert TokenState.restore({"generation": "x"}, incarnation=3) == TokenState(incarnation=3)
    assert TokenState.restore(None) == TokenState()


def test_reprs_of_state_and_messages_never_show_a_token() -> None:
    core = Core()
    core.configure()
    token = token_for(3600)
    fetch = only_fetch(core.request())
    core.complete(fetch, token=token)
    texts = [repr(core.state), repr(core.effects),
             repr(TokenFetched(DEFAULT_SESSION, 1, 1, 1, token=token)),
             repr(TokenSeed(1, token, token)), repr(TokenGranted(DEFAULT_SESSION, "r", token))]
    for text in texts:
        assert token not in text
    for effect in of(core.effects, Emit):
        assert token not in repr(effect.detail)


# -- the generation guard, as a property -------------------------------------------------------


_request_op = st.tuples(st.just("request"), st.sampled_from([DEFAULT_SESSION, PRACTICE_SESSION]), st.booleans())
_complete_op = st.tuples(st.just("complete"), st.integers(0, 3), st.sampled_from(["ok", "refused", "http-500"]))
_ops = st.lists(st.one_of(
    st.tuples(st.just("configure"), st.integers(0, 3), st.sampled_from(["self-1", "self-2"]), st.booleans()),
    st.tuples(st.just("forget"), st.integers(0, 3)),
    _request_op, _request_op, _complete_op, _complete_op,
    st.tuples(st.just("timer"), st.integers(0, 3)),
    st.tuples(st.just("late"), st.integers(0, 400)),
), min_size=3, max_size=40)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_only_a_fetch_of_the_current_generation_ever_stores_or_grants(ops: list[tuple]) -> None:
    core = Core()
    issued: list[FetchToken] = []
    timers: list[Message] = []
    generation = 0
    for op in [("configure", 0, "self-1", False), *ops]:
        before = core.state
        match op:
            case ("configure", bump, self_id, practice):
                generation += bump
                effects = core.configure(generation, self_id=self_id, practice=practice)
            case ("forget", bump):
                generation += bump
                effects = core.feed(TokenForget(generation=generation), MEETING)
            case ("request", session_type, refresh):
                effects = core.request(f"r{len(core.effects)}", session_type, refresh=refresh)
            case ("complete", index, result):
                if not issued:
                    continue
                fetch = issued[-1 - index % len(issued)]  # mostly recent ones
                failure = {"ok": "", "refused": Failure.REFUSED, "http-500": "http-500"}[result]
                effects = core.complete(fetch, token=token_for(3600, now=core.now) if not failure else "",
                                        failure=failure, status=401 if failure == Failure.REFUSED else 0)
                current = (fetch.generation == before.generation and before.config is not None
                           and before.slot(fetch.session_type).fetching == fetch.fetch_id)
                event("completed a current fetch" if current else "completed a stale fetch")
                if not current:
                    assert core.state == before
                    assert events(effects) == [("stale-dropped", "fetch")]
                    assert not of(effects, Send) and not of(effects, StartTimer)
            case ("timer", index):
                if not timers:
                    continue
                effects = core.feed(timers[-1 - index % len(timers)], "token:m-1")
            case ("late", seconds):
                core.now += seconds
                continue
        issued += of(effects, FetchToken)
        timers += [t.message for t in of(effects, StartTimer)]
        for fetch in of(effects, FetchToken):
            assert fetch.generation == core.state.generation
        # Whatever is held was never expired when handed out, and a grant
        # only ever goes out while configured.
        for sent in of(effects, Send):
            if isinstance(sent.message, TokenGranted):
                assert core.state.config is not None
                assert not counts_as_expired(jwt_expiry(sent.message.token), core.now)
        # At most one fetch in flight per type.
        for slot in core.state.slots.values():
            assert not (slot.fetching and slot.retry_of)
