"""The data-channel core, rule by rule (docs/protocol.md §1), no I/O."""

from __future__ import annotations

import itertools
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.contracts.datachannel import (
    BACKOFF,
    CLOSING,
    CONNECTING,
    FAILED,
    IDLE,
    OFFLINE,
    ONLINE,
    PRACTICE_SESSION,
    ClaimSession,
    Connect,
    ConnectOutcome,
    Disconnect,
    GetStatus,
    Refusal,
    RelayedEvent,
    ReleaseSession,
    SendFrame,
    SessionStateChanged,
    SessionStatus,
    Subscribe,
    Unsubscribe,
    Watch,
)
from actors.sessions.contracts.token import TokenGranted, TokenRequest, TokenUnavailable
from actors.sessions.datachannel.machine import (
    AbortSocket,
    Authorize,
    CloseSocket,
    OpenSocket,
    Register,
    RegisterFailed,
    SessionTimer,
    SocketFrame,
    backoff_step,
    classify_close,
    restore,
    socket_url,
)
from actors.runtime.effects import Answer, CancelTimer, Emit, SaveCheckpoint, StartTimer
from bus.messages import ErrorReply

from .core_driver import DC_URL, DEVICE_URL, OWNER, WS_URL, Core

TOKEN = "dc-token-secret"


def emitted(core: Core, event: str, effects=None) -> list[Emit]:
    return [e for e in core.of(Emit, effects) if e.event == event]


# -- ownership -------------------------------------------------------------------------


def test_claim_makes_the_sender_the_owner_and_is_checkpointed() -> None:
    core = Core()
    fx = core.claim(epoch=3)
    assert (core.state.owner, core.state.owner_epoch) == (OWNER, 3)
    assert core.one(SaveCheckpoint, fx).state["owner"] == OWNER


@pytest.mark.parametrize(
    ("sender", "epoch", "reason"),
    [("meeting:m2", 1, "not-owner"), (OWNER, 0, "stale-epoch"), (OWNER, 2, "unclaimed-epoch"), ("", 1, "anonymous")],
)
def test_control_from_a_non_owner_is_refused_with_a_tell_and_an_event(sender: str, epoch: int, reason: str) -> None:
    core = Core()
    core.claim(epoch=1)
    before = core.state
    fx = core.step(Connect(epoch=epoch, datachannel_url=DC_URL), sender=sender or None)
    assert core.state == before
    assert not core.registers()
    [event] = emitted(core, "refused-not-owner", fx)
    assert event.reason == reason and event.detail["command"] == "datachannel.connect"
    if sender:
        [refusal] = core.sent(sender, Refusal, fx)
        assert (refusal.error_type, refusal.reason, refusal.session_id) == ("NotOwner", reason, core.config.session_id)


def test_refused_ask_is_answered_with_a_not_owner_error() -> None:
    core = Core()
    fx = core.step(Connect(epoch=1, datachannel_url=DC_URL), sender="meeting:m2", asked=True)
    answer = core.one(Answer, fx).value
    assert isinstance(answer, ErrorReply) and answer.error_type == "NotOwner" and "no-owner" in answer.message
    assert emitted(core, "refused-not-owner", fx)[0].reason == "no-owner"


def test_s16_a_meeting_that_does_not_own_the_session_cannot_disconnect_it() -> None:
    core = Core()
    gen = core.online()
    fx = core.step(Disconnect(epoch=5, permanent=True), sender="meeting:incoming-call")
    assert core.state.state == ONLINE and core.state.link is not None and core.state.link.gen == gen
    assert not core.of(CloseSocket, fx) and not core.of(CancelTimer, fx)
    assert emitted(core, "refused-not-owner", fx)[0].reason == "not-owner"


def test_owner_reclaims_with_a_newer_epoch_and_older_epochs_are_then_stale() -> None:
    core = Core()
    core.claim(epoch=1)
    core.claim(epoch=2)
    assert core.state.owner_epoch == 2
    fx = core.step(ClaimSession(epoch=1), sender=OWNER)
    assert emitted(core, "refused-not-owner", fx)[0].reason == "stale-epoch"
    fx = core.step(ClaimSession(epoch=9), sender="meeting:m2")
    assert emitted(core, "refused-not-owner", fx)[0].reason == "not-owner"
    core.owner(ReleaseSession(epoch=2))
    core.step(ClaimSession(epoch=1), sender="meeting:m2")
    assert core.state.owner == "meeting:m2"


def test_with_a_founder_a_stranger_never_claims_the_session_first() -> None:
    """A meeting's session starting afresh (its first start, or Redis lost
    its checkpoint) belongs to its meeting: an incoming call's claim that
    arrives first is refused, the meeting's taken; once the meeting
    releases it, anyone may claim it. The release survives a restart."""
    core = Core(founder=OWNER)
    fx = core.step(ClaimSession(epoch=9), sender="meeting:call-1")
    assert core.state.owner == "" and emitted(core, "refused-not-owner", fx)[0].reason == "not-founder"
    [refusal] = core.sent("meeting:call-1", Refusal, fx)
    assert refusal.error_type == "NotOwner"
    core.claim(epoch=1)
    assert core.state.owner == OWNER
    fx = core.owner(ReleaseSession(epoch=1))
    assert core.one(SaveCheckpoint, fx).state["released"] is True
    restored, _fx = restore(core.config, core.one(SaveCheckpoint, fx).state, seed=1, first_gen=1 << 32)
    assert restored.released
    core.step(ClaimSession(epoch=9), sender="meeting:call-1")
    assert core.state.owner == "meeting:call-1"


def test_without_a_founder_the_first_claim_wins() -> None:
    core = Core()
    core.step(ClaimSession(epoch=9), sender="meeting:call-1")
    assert core.state.owner == "meeting:call-1"


def test_accepted_ask_is_answered_with_the_status_after_the_command() -> None:
    core = Core()
    core.claim()
    fx = core.owner(Connect(epoch=1, datachannel_url=DC_URL), asked=True)
    status = core.one(Answer, fx).value
    assert isinstance(status, SessionStatus) and status.state == CONNECTING and status.phase == "register"


def test_status_may_be_asked_by_anyone() -> None:
    core = Core()
    fx = core.step(GetStatus(), sender="monitor:1", asked=True)
    assert core.one(Answer, fx).value.state == IDLE
    fx = core.step(GetStatus(), sender="monitor:1")
    assert core.sent("monitor:1", SessionStatus, fx)


# -- register ---------------------------------------------------------------------------


def test_connect_without_a_datachannel_url_makes_no_register_and_says_why() -> None:
    core = Core()
    core.claim()
    before = core.state
    fx = core.connect(url="")
    assert core.state == before and not core.registers()
    [event] = emitted(core, "command-rejected", fx)
    assert event.reason == "no-datachannel-url"
    assert core.sent(OWNER, Refusal, fx)[0].error_type == "CommandRejected"
    answer = core.one(Answer, core.owner(Connect(epoch=1, datachannel_url=""), asked=True)).value
    assert answer.error_type == "CommandRejected"


def test_connect_registers_with_the_device_url() -> None:
    core = Core()
    core.claim()
    fx = core.connect()
    reg = core.one(Register, fx)
    assert (reg.url, reg.device_url, reg.token) == (DC_URL, DEVICE_URL, None)
    assert core.state.state == CONNECTING


def test_register_response_without_websocket_url_is_an_error_not_a_fallback() -> None:
    core = Core(jitter=False)
    core.claim()
    core.connect()
    fx = core.registered(ws_url="")
    assert not core.of(OpenSocket, fx)
    assert core.state.state == BACKOFF and "webSocketUrl" in core.state.reason
    assert core.timer("retry", fx).delay == 1.0


def test_s1_two_connects_back_to_back_make_one_register_one_socket_and_tell_both() -> None:
    core = Core()
    core.claim()
    core.connect(request_id="r1")
    core.connect(request_id="r2")
    assert len(core.registers()) == 1
    fx = core.registered()
    fx += core.opened()
    fx += core.buffer_state()
    assert len(core.opens()) == 1
    outcomes = core.sent(OWNER, ConnectOutcome, fx)
    assert [(o.request_id, o.online) for o in outcomes] == [("r1", True), ("r2", True)]


def test_s2_connect_while_online_changes_nothing() -> None:
    core = Core()
    core.online()
    before = core.state
    fx = core.connect(request_id="again")
    assert core.state.link == before.link and core.state.attempt is None
    assert not core.of(Register, fx) and not core.of(OpenSocket, fx)
    [outcome] = core.sent(OWNER, ConnectOutcome, fx)
    assert outcome.online


def test_open_url_carries_the_query_parameters() -> None:
    core = Core()
    core.claim()
    core.connect()
    fx = core.registered(ws_url=WS_URL + "?keep=1")
    query = parse_qs(urlsplit(core.one(OpenSocket, fx).url).query)
    assert query == {"keep": ["1"], "outboundWireFormat": ["text"], "bufferStates": ["true"],
                     "aliasHttpStatus": ["true"], "clientTimestamp": [str(int(core.now * 1000))]}


def test_socket_url_replaces_parameters_it_sets() -> None:
    url = socket_url("ws://h/p?bufferStates=false&x=1", True, 1.5)
    assert parse_qs(urlsplit(url).query) == {
        "x": ["1"], "outboundWireFormat": ["text"], "bufferStates": ["true"], "aliasHttpStatus": ["true"],
        "clientTimestamp": ["1500"], "subscriptionAwareSubchannels": ["transcription"]}


def test_s14_token_auth_on_asks_for_the_token_and_registers_with_it() -> None:
    core = Core()
    core.claim()
    fx = core.connect(token_auth=True)
    [request] = core.sent(core.config.token_address, TokenRequest, fx)
    assert (request.session_type, request.refresh) == (core.config.session_id, False)
    assert not core.of(Register, fx)
    fx = core.grant(TOKEN)
    assert core.one(Register, fx).token == TOKEN
    fx = core.registered()
    query = parse_qs(urlsplit(core.one(OpenSocket, fx).url).query)
    assert query["subscriptionAwareSubchannels"] == ["transcription"]


def test_s14_token_auth_off_sends_neither_token_nor_subscription_awareness() -> None:
    core = Core()
    core.claim()
    fx = core.connect(token_auth=False)
    assert not core.sent(kind=TokenRequest, effects=fx)
    assert core.one(Register, fx).token is None
    fx = core.registered()
    assert "subscriptionAwareSubchannels" not in core.one(OpenSocket, fx).url


def test_practice_session_asks_for_its_own_token_type() -> None:
    core = Core(PRACTICE_SESSION)
    core.claim()
    fx = core.connect(token_auth=True)
    assert core.sent(kind=TokenRequest, effects=fx)[0].session_type == PRACTICE_SESSION


def test_token_unavailable_or_no_answer_registers_without_a_token() -> None:
    core = Core()
    core.claim()
    core.connect(token_auth=True)
    fx = core.step(TokenUnavailable(session_type=core.config.session_id, request_id=str(core.gen()), reason="down"),
                   sender=core.config.token_address)
    assert core.one(Register, fx).token is None
    core.owner(Disconnect(epoch=1))
    fx = core.connect(token_auth=True)
    fx = core.fire(core.timer("token-deadline", fx))
    assert core.one(Register, fx).token is None
    assert emitted(core, "token-unavailable", fx)


def test_a_token_from_anyone_but_the_token_actor_is_bad_input() -> None:
    core = Core()
    core.claim()
    core.connect(token_auth=True)
    fx = core.step(TokenGranted(session_type=core.config.session_id, request_id=str(core.gen()), token=TOKEN),
                   sender="meeting:evil")
    assert not core.of(Register, fx)
    assert emitted(core, "bad-input", fx)[0].reason == "token-from-stranger"


def test_register_401_with_a_token_is_retried_once_after_2s_with_a_fresh_token() -> None:
    core = Core(jitter=False)
    core.claim()
    core.connect(token_auth=True)
    core.grant(TOKEN)
    fx = core.internal(RegisterFailed(gen=core.gen(), status=401, reason="expired"))
    retry = core.timer("token-retry", fx)
    assert retry.delay == 2.0 and not core.of(Register, fx)
    fx = core.fire(retry)
    assert core.sent(kind=TokenRequest, effects=fx)[0].refresh is True
    core.grant("fresh-token")
    fx = core.internal(RegisterFailed(gen=core.gen(), status=401, reason="expired"))
    assert core.state.state == BACKOFF and core.timer("retry", fx).delay == 1.0


def test_register_400_gives_up_and_500_backs_off() -> None:
    core = Core()
    core.claim()
    core.connect()
    core.internal(RegisterFailed(gen=core.gen(), status=500, reason="boom"))
    assert core.state.state == BACKOFF
    core2 = Core()
    core2.claim()
    core2.connect()
    core2.internal(RegisterFailed(gen=core2.gen(), status=400, reason="bad body"))
    assert core2.state.state == FAILED and core2.state.target is None


# -- open, authorize, online ---------------------------------------------------------------


def test_s11_authorized_but_no_buffer_state_is_not_online_then_buffer_state_is_and_pings() -> None:
    core = Core()
    core.claim()
    core.connect()
    core.registered()
    fx = core.opened()
    auth = core.one(Authorize, fx)
    assert auth.tracking_id == f"{core.config.session_id}_{int(core.now * 1000)}"
    assert core.state.state == CONNECTING
    fx = core.event("relay.event", id="e1")
    assert core.state.state == CONNECTING and not core.frames(effects=fx)[1:]
    fx = core.buffer_state()
    assert core.state.state == ONLINE
    ping = [f for f in core.frames(effects=fx) if f.get("type") == "ping"]
    assert len(ping) == 1
    assert core.timer("pong-deadline", fx).delay == 14.0
    assert core.sent(OWNER, SessionStateChanged, fx)[0].state == ONLINE


def test_registration_status_frame_also_brings_the_session_online() -> None:
    core = Core()
    core.claim()
    core.connect()
    core.registered()
    core.opened()
    core.frame(data={"eventType": "mercury.registration_status"})
    assert core.state.state == ONLINE


def test_a_frame_with_a_type_is_not_the_online_signal() -> None:
    core = Core()
    core.claim()
    core.connect()
    core.registered()
    core.opened()
    core.frame(type="other", data={"eventType": "mercury.buffer_state"})
    assert core.state.state == CONNECTING


def test_every_frame_with_an_id_is_acked_on_its_own_socket() -> None:
    core = Core()
    gen = core.online()
    for frame in ({"id": "a", "data": {"eventType": "relay.event"}}, {"id": 7, "type": "shutdown"},
                  {"id": "p", "type": "whatever"}):
        fx = core.frame(gen, **frame)
        assert {"messageId": frame["id"], "type": "ack"} in core.frames(gen, fx)
    fx = core.frame(gen, data={"eventType": "relay.event"})
    assert not [f for f in core.frames(effects=fx) if f.get("type") == "ack"]


def test_events_are_relayed_to_watchers_tagged_with_the_session() -> None:
    core = Core(PRACTICE_SESSION)
    core.claim()
    core.owner(Watch(epoch=1, watcher="captions:m1"))
    gen = core.online()
    fx = core.event("relay.event", gen, id="x", sequenceNumber=3)
    [event] = core.sent("captions:m1", RelayedEvent, fx)
    assert (event.session_id, event.event_type, event.sequence_number) == (PRACTICE_SESSION, "relay.event", 3)
    assert not core.sent(OWNER, RelayedEvent, fx)


def test_unparseable_frames_are_counted_bad_input_and_the_session_keeps_going() -> None:
    core = Core()
    gen = core.online()
    fx = core.internal(SocketFrame(gen=gen, text="{not json"))
    assert emitted(core, "bad-input", fx)[0].reason == "bad-frame"
    assert core.state.state == ONLINE and core.status.counters["bad_input"] == 1


# -- keepalive -------------------------------------------------------------------------------


def test_pong_with_the_same_id_schedules_the_next_ping_15s_later() -> None:
    core = Core()
    gen = core.online()
    ping_id = core.state.link.ping_id
    fx = core.frame(gen, id=ping_id, type="pong")
    nxt = core.timer("ping", fx)
    assert nxt.delay == 15.0 and nxt.key == "keepalive"
    fx = core.fire(nxt)
    assert [f["type"] for f in core.frames(gen, fx)] == ["ping"]


def test_s12_pong_with_another_id_closes_pong_mismatch_and_reconnects() -> None:
    core = Core()
    gen = core.online()
    fx = core.frame(gen, id="not-the-ping", type="pong")
    close = core.one(CloseSocket, fx)
    assert (close.gen, close.code, close.reason) == (gen, 1000, "Pong mismatch")
    assert core.state.state == CLOSING
    fx = core.closed(1000, "Pong mismatch", gen=gen)
    assert core.one(Register, fx) and core.state.state == CONNECTING


def test_s12_no_pong_in_14s_closes_pong_not_received_and_reconnects() -> None:
    core = Core()
    gen = core.online()
    deadline = core.timer("pong-deadline", core.log)
    fx = core.fire(deadline)
    assert core.one(CloseSocket, fx).reason == "Pong not received"
    fx = core.closed(1000, "Pong not received", gen=gen)
    assert core.one(Register, fx)


def test_a_pong_deadline_of_an_answered_ping_is_stale() -> None:
    core = Core()
    gen = core.online()
    deadline = core.timer("pong-deadline", core.log)
    core.frame(gen, id=core.state.link.ping_id, type="pong")
    fx = core.fire(deadline)
    assert not core.of(CloseSocket, fx) and core.state.state == ONLINE


def test_close_frame_never_comes_the_close_is_forced_after_2s_and_then_reconnects() -> None:
    core = Core()
    gen = core.online()
    fx = core.fire(core.timer("pong-deadline", core.log))
    force = core.timer("force-close", fx)
    assert force.delay == 2.0
    fx = core.fire(force)
    assert core.one(AbortSocket, fx).gen == gen
    assert core.one(Register, fx)


def test_forced_close_of_a_permanent_disconnect_does_not_reconnect() -> None:
    core = Core()
    gen = core.online()
    fx = core.owner(Disconnect(epoch=1, permanent=True, reason="left"))
    close = core.one(CloseSocket, fx)
    assert (close.code, close.reason) == (1000, "done (permanent)")
    fx = core.fire(core.timer("force-close", fx))
    assert core.one(AbortSocket, fx).gen == gen
    assert not core.of(Register, fx) and core.state.state == OFFLINE and core.state.reason == "left"
    # The close that finally comes changes nothing either.
    fx = core.closed(1006, gen=gen)
    assert not core.of(Register, fx) and core.state.state == OFFLINE


def test_disconnect_not_permanent_closes_and_reconnects_at_once() -> None:
    core = Core()
    gen = core.online()
    fx = core.owner(Disconnect(epoch=1, permanent=False))
    assert core.one(CloseSocket, fx).reason == "done (forced)"
    fx = core.closed(1000, "done (forced)", gen=gen)
    assert core.one(Register, fx)


# -- close codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [(1001, "", "transient"), (1005, "", "transient"), (1006, "", "transient"), (1011, "", "transient"),
     (1000, "idle", "transient"), (3050, "done (forced)", "transient"), (1000, "Pong not received", "transient"),
     (1000, "pong mismatch", "transient"), (1000, "done (permanent)", "permanent"), (3050, "bye", "permanent"),
     (4000, "", "replaced"), (4001, "", "permanent"), (1003, "", "permanent"), (1008, "", "permanent"),
     (4402, "", "permanent"), (2999, "", "permanent"), (4401, "", "refresh"), (4400, "", "refused"),
     (4403, "", "refused")],
)
def test_close_code_table(code: int, reason: str, expected: str) -> None:
    assert classify_close(code, reason) == expected


@pytest.mark.parametrize(
    ("code", "reason", "reconnects", "state"),
    [(3050, "done (permanent)", False, OFFLINE), (1000, "Pong not received", True, CONNECTING),
     (1006, "", True, CONNECTING), (4000, "", False, OFFLINE), (4001, "", False, OFFLINE),
     (1008, "", False, OFFLINE), (4403, "", False, FAILED)],
)
def test_s8_close_of_the_online_socket(code: int, reason: str, reconnects: bool, state: str) -> None:
    core = Core()
    gen = core.online()
    fx = core.closed(code, reason, gen=gen)
    assert bool(core.of(Register, fx)) == reconnects
    assert core.state.state == state
    if not reconnects:
        assert core.state.target is None  # not wanted: a restart will not reconnect either
        assert core.one(SaveCheckpoint, fx).state["target"] is None


def test_s8_replaced_4000_says_replaced() -> None:
    core = Core()
    gen = core.online()
    core.closed(4000, gen=gen)
    assert core.state.reason.startswith("replaced")


def test_s9_open_fails_with_4401_refreshes_the_token_then_retries() -> None:
    core = Core()
    core.claim()
    core.connect(token_auth=True)
    core.grant()
    core.registered()
    core.opened()
    fx = core.closed(4401, "stale")
    assert core.state.state == BACKOFF
    fx = core.fire(core.timer("retry", fx))
    assert core.sent(kind=TokenRequest, effects=fx)[0].refresh is True


def test_4401_on_the_online_socket_also_refreshes_at_once() -> None:
    core = Core()
    gen = core.online(token_auth=True)
    fx = core.closed(4401, gen=gen)
    assert core.sent(kind=TokenRequest, effects=fx)[0].refresh is True


@pytest.mark.parametrize("code", [4400, 4403])
def test_s9_open_fails_with_4400_or_4403_gives_up_and_says_so(code: int) -> None:
    core = Core()
    core.claim()
    core.connect(request_id="r")
    core.registered()
    core.opened()
    fx = core.closed(code, "refused")
    assert core.state.state == FAILED and str(code) in core.state.reason
    assert not core.of(StartTimer, fx) and not core.of(Register, fx)
    [outcome] = core.sent(OWNER, ConnectOutcome, fx)
    assert not outcome.online and outcome.state == FAILED
    assert core.sent(OWNER, SessionStateChanged, fx)[0].state == FAILED


def test_only_a_close_of_the_current_socket_acts() -> None:
    core = Core()
    first = core.online()
    core.frame(first, id="s", type="shutdown")
    second = core.walk_attempt(binding="b2")
    assert core.state.link.gen == second != first
    fx = core.closed(4001, "replaced", gen=first)
    assert core.state.state == ONLINE and core.state.link.gen == second
    assert not core.of(Register, fx) and not core.of(CloseSocket, fx)


# -- backoff ---------------------------------------------------------------------------------


def _fail_attempt(core: Core) -> list:
    return core.internal(RegisterFailed(gen=core.gen(), status=503, reason="down"))


def test_s10_backoff_without_jitter_is_0_1_2_4_8_16_32_32_and_unlimited() -> None:
    core = Core(jitter=False)
    gen = core.online()
    fx = core.closed(1006, gen=gen)
    assert core.of(Register, fx)  # the first attempt: at once
    delays = []
    for _ in range(9):
        fx = _fail_attempt(core)
        timer = core.timer("retry", fx)
        delays.append(timer.delay)
        assert core.state.state == BACKOFF
        core.fire(timer)
    assert delays == [1, 2, 4, 8, 16, 32, 32, 32, 32]


def test_max_attempts_gives_up() -> None:
    core = Core(max_attempts=3, jitter=False)
    core.claim()
    core.connect(request_id="r")
    _fail_attempt(core)
    core.fire(core.timer("retry"))
    _fail_attempt(core)
    core.fire(core.timer("retry"))
    fx = _fail_attempt(core)
    assert core.state.state == FAILED and "3 attempts" in core.state.reason
    assert not core.of(StartTimer, fx)
    assert not core.sent(OWNER, ConnectOutcome, fx)[0].online


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**64 - 1), failures=st.integers(min_value=1, max_value=12))
def test_s10_jittered_delays_lie_within_each_step(seed: int, failures: int) -> None:
    core = Core(seed=seed)
    core.claim()
    core.connect()
    for n in range(1, failures + 1):
        timer = core.timer("retry", _fail_attempt(core))
        assert 0.0 <= timer.delay <= backoff_step(n) <= 32.0
        core.fire(timer)


def test_full_jitter_spreads_sessions_over_the_whole_step() -> None:
    delays = []
    for seed in range(200):
        core = Core(seed=seed)
        core.claim()
        core.connect()
        for _ in range(3):  # third failure: step of 4 s
            fx = _fail_attempt(core)
            core.fire(core.timer("retry", fx))
        delays.append(core.timer("retry", fx).delay)
    assert min(delays) < 1.0 and max(delays) > 3.0
    assert len(set(delays)) == len(delays)


@given(st.integers(min_value=0, max_value=100))
def test_backoff_step_bounds(n: int) -> None:
    assert backoff_step(n) == (0.0 if n == 0 else min(32.0, 2.0 ** (n - 1)))


# -- sequence numbers -------------------------------------------------------------------------


def test_s13_sequence_5_then_7_is_a_mismatch_7_6_and_the_expectation_moves_to_8() -> None:
    core = Core()
    gen = core.online()
    core.event("relay.event", gen, id="a", sequenceNumber=5)
    fx = core.event("relay.event", gen, id="b", sequenceNumber=7)
    [mismatch] = emitted(core, "sequence-mismatch", fx)
    assert (mismatch.detail["actual"], mismatch.detail["expected"]) == (7, 6)
    fx = core.event("relay.event", gen, id="c", sequenceNumber=8)
    assert not emitted(core, "sequence-mismatch", fx)
    assert not core.of(CloseSocket, core.log) and core.state.state == ONLINE


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=30))
def test_sequence_mismatches_count_every_break_in_the_run(numbers: list[int]) -> None:
    core = Core()
    gen = core.online()  # the buffer-state frame carried no number
    for n in numbers:
        core.event("relay.event", gen, sequenceNumber=n)
    breaks = sum(1 for prev, cur in itertools.pairwise(numbers) if cur != prev + 1)
    assert core.status.counters["sequence_mismatches"] == breaks
    assert core.state.link.expected_seq == numbers[-1] + 1


def test_sequence_restarts_on_a_new_socket() -> None:
    core = Core()
    gen = core.online()
    core.event("relay.event", gen, sequenceNumber=40)
    core.closed(1006, gen=gen)
    gen2 = core.walk_attempt()
    fx = core.event("relay.event", gen2, sequenceNumber=1)
    assert not emitted(core, "sequence-mismatch", fx)


# -- subscriptions, switchover -------------------------------------------------------------


def _subscription_frames(core: Core, gen: int, effects=None) -> list[dict]:
    return [f for f in core.frames(gen, effects) if f.get("type") == "subchannelSubscriptionRequest"]


def test_subscribe_while_online_sends_the_request_frame() -> None:
    core = Core()
    gen = core.online()
    fx = core.owner(Subscribe(epoch=1, subchannels=["transcription"]))
    [frame] = _subscription_frames(core, gen, fx)
    assert frame["data"] == {"datachannelUri": DC_URL, "subscribe": ["transcription"], "unsubscribe": []}
    assert frame["trackingId"].startswith("huddle_") and frame["id"].isdigit()
    fx = core.owner(Unsubscribe(epoch=1, subchannels=["transcription"]))
    assert _subscription_frames(core, gen, fx)[0]["data"]["unsubscribe"] == ["transcription"]


def test_s35_the_socket_drops_and_comes_back_the_subscription_is_sent_again() -> None:
    core = Core()
    core.claim()
    core.owner(Subscribe(epoch=1, subchannels=["transcription"]))
    gen = core.online()
    assert _subscription_frames(core, gen, core.log)[0]["data"]["subscribe"] == ["transcription"]
    core.closed(1006, gen=gen)
    core.registered()
    core.opened()
    gen2 = core.gen()
    fx = core.buffer_state(gen2)
    [again] = _subscription_frames(core, gen2, fx)
    assert again["data"]["subscribe"] == ["transcription"]


def test_switchover_is_make_before_break_and_resubscribes() -> None:
    core = Core()
    core.claim()
    core.owner(Subscribe(epoch=1, subchannels=["transcription"]))
    old = core.online()
    fx = core.frame(old, id="sd", type="shutdown")
    assert core.one(Register, fx) and core.state.state == ONLINE and core.status.switching
    # Events on the old socket still flow while the new one is built.
    core.owner(Watch(epoch=1, watcher="captions:m1"))
    assert core.sent("captions:m1", RelayedEvent, core.event("relay.event", old))
    core.registered(binding="b2")
    core.opened()
    new = core.gen()
    assert not core.of(CloseSocket, core.last)
    fx = core.buffer_state(new)
    assert core.state.link.gen == new and core.state.link.binding == "b2"
    assert core.one(CloseSocket, fx).gen == old
    assert _subscription_frames(core, new, fx)[0]["data"]["subscribe"] == ["transcription"]
    [note] = core.sent(OWNER, SessionStateChanged, fx)
    assert (note.state, note.previous, note.reason, note.binding) == (ONLINE, ONLINE, "switchover", "b2")


def test_old_socket_closing_with_4001_before_the_new_one_is_online_reconnects() -> None:
    core = Core()
    old = core.online()
    core.frame(old, type="shutdown")
    core.registered(binding="b2")
    core.closed(4001, "replaced", gen=old)
    assert core.state.state == CONNECTING and core.state.attempt is not None  # the switch carries on
    core.opened()
    core.buffer_state()
    assert core.state.state == ONLINE and core.state.link.binding == "b2"


def test_a_new_datachannel_url_while_online_moves_to_it_before_leaving_the_old() -> None:
    core = Core()
    old = core.online()
    fx = core.connect(url="http://relay.test/datachannel/m1-new")
    assert core.one(Register, fx).url == "http://relay.test/datachannel/m1-new"
    assert core.state.state == ONLINE
    new = core.walk_attempt(binding="b9")
    assert new != old and core.state.link.target.datachannel_url.endswith("m1-new")


def test_send_frame_needs_an_online_socket_and_gets_an_id() -> None:
    core = Core()
    core.claim()
    fx = core.owner(SendFrame(epoch=1, frame={"type": "announce"}))
    assert emitted(core, "command-rejected", fx)[0].reason == "not-online"
    gen = core.online()
    fx = core.owner(SendFrame(epoch=1, frame={"type": "announce", "data": {"x": 1}}))
    [frame] = core.frames(gen, fx)
    assert frame["type"] == "announce" and frame["id"]


# -- generations ----------------------------------------------------------------------------


def test_disconnect_during_register_makes_the_late_response_stale() -> None:
    core = Core()
    core.claim()
    core.connect()
    gen = core.gen()
    core.owner(Disconnect(epoch=1))
    assert core.state.state == OFFLINE
    fx = core.registered(gen=gen)
    assert not core.of(OpenSocket, fx) and core.status.counters["stale_dropped"] == 1


def test_disconnect_during_open_closes_that_socket_and_a_late_open_is_refused() -> None:
    core = Core()
    core.claim()
    core.connect()
    core.registered()
    gen = core.gen()
    fx = core.owner(Disconnect(epoch=1))
    assert core.one(CloseSocket, fx).gen == gen
    fx = core.opened(gen=gen)
    assert not core.of(Authorize, fx) and core.one(CloseSocket, fx).gen == gen


def test_disconnect_during_backoff_cancels_the_retry() -> None:
    core = Core()
    core.claim()
    core.connect()
    retry = core.timer("retry", _fail_attempt(core))
    fx = core.owner(Disconnect(epoch=1))
    assert CancelTimer("attempt") in fx
    fx = core.fire(retry)
    assert not core.of(Register, fx) and core.state.state == OFFLINE


def test_a_token_for_an_old_attempt_is_dropped() -> None:
    core = Core()
    core.claim()
    core.connect(token_auth=True)
    old = core.gen()
    core.owner(Disconnect(epoch=1))
    core.connect(token_auth=True)
    fx = core.grant(gen=old)
    assert not core.of(Register, fx)


def test_a_new_target_while_connecting_abandons_the_old_attempt() -> None:
    core = Core()
    core.claim()
    core.connect()
    old = core.gen()
    fx = core.connect(url="http://relay.test/datachannel/other")
    assert core.one(Register, fx).url.endswith("other")
    assert not core.of(OpenSocket, core.registered(gen=old))


# -- tokens and secrets ------------------------------------------------------------------------


def test_s15_a_disconnect_does_not_touch_the_token_and_the_next_connect_reuses_it() -> None:
    core = Core()
    gen = core.online(token_auth=True)
    fx = core.owner(Disconnect(epoch=1))
    fx += core.closed(1000, "done (permanent)", gen=gen)
    assert not core.sent(core.config.token_address, effects=fx)
    fx = core.connect(token_auth=True)
    assert core.sent(kind=TokenRequest, effects=fx)[0].refresh is False


def test_tokens_never_reach_state_checkpoints_events_or_reprs() -> None:
    core = Core()
    core.claim()
    core.owner(Subscribe(epoch=1, subchannels=["transcription"]))
    core.online(token_auth=True)
    assert TOKEN not in repr(core.state)
    assert TOKEN not in repr(core.log)
    for effect in core.log:
        if isinstance(effect, SaveCheckpoint | Emit):
            assert TOKEN not in json.dumps(effect.state if isinstance(effect, SaveCheckpoint) else effect.detail)
    assert core.registers()[0].token == TOKEN


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_restores_owner_target_subscriptions_and_reconnects() -> None:
    core = Core()
    core.claim(epoch=4)
    core.owner(Watch(epoch=4, watcher="captions:m1"))
    core.owner(Subscribe(epoch=4, subchannels=["transcription"]))
    core.online()
    checkpoint = [e for e in core.log if isinstance(e, SaveCheckpoint)][-1].state
    assert checkpoint == {"owner": OWNER, "owner_epoch": 4, "target": [DC_URL, DEVICE_URL, False],
                          "subscriptions": ["transcription"], "watchers": ["captions:m1"], "released": False}
    state, fx = restore(core.config, checkpoint, seed=1, first_gen=1 << 32)
    [reg] = [e for e in fx if isinstance(e, Register)]
    assert reg.gen == 1 << 32 and state.state == CONNECTING and state.owner_epoch == 4


def test_a_broken_checkpoint_starts_fresh_and_says_so() -> None:
    core = Core()
    state, fx = restore(core.config, {"owner": 3}, seed=1)
    assert state.state == IDLE and [e.reason for e in fx if isinstance(e, Emit)] == ["bad-checkpoint"]


def test_no_checkpoint_means_idle() -> None:
    state, fx = restore(Core().config, None, seed=1)
    assert state.state == IDLE and fx == []


def test_unknown_timer_names_are_bad_input() -> None:
    core = Core()
    fx = core.internal(SessionTimer(name="nope", gen=1))
    assert emitted(core, "bad-input", fx)[0].reason == "unknown-timer"
