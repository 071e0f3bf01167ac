"""The data-channel session actor through the test kit: encoded envelopes in
its mailbox, a manual clock, a scripted connector (with gates that hold a
register or an open in flight), probes for the owner, the token actor and
watchers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import msgpack
import pytest

from actors.sessions.contracts.datachannel import (
    BACKOFF,
    CONNECTING,
    DEFAULT_SESSION,
    FAILED,
    IDLE,
    OFFLINE,
    ONLINE,
    PRACTICE_SESSION,
    Connect,
    ConnectOutcome,
    Disconnect,
    GetStatus,
    Refusal,
    RelayedEvent,
    SessionStateChanged,
    SessionStatus,
    Subscribe,
    Watch,
)
from actors.sessions.contracts.token import TokenRequest
from actors.sessions.datachannel.connector import RegisterError, Registration, SocketOpenError
from actors.sessions.datachannel.machine import Registered, SocketFrame
from actors.sessions.datachannel.testing import FakeConnector
from actors.runtime.sending import RemoteError
from actors.runtime.testkit import TestKit
from .session_driver import (
    DC_TOKEN,
    DC_URL,
    OWNER,
    PRACTICE_URL,
    USER_TOKEN,
    Session,
    granting_token_actor,
    messages,
)

# -- data-channel scenarios ----------------------------------------------------------


def test_s1_two_connect_requests_back_to_back_one_register_one_socket_both_told(kit, fake, owner) -> None:
    s = Session(kit, fake)
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL, request_id="a"), sender=OWNER)
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL, request_id="b"), sender=OWNER)
    kit.settle()
    assert len(fake.registers) == 1 and len(fake.sockets) == 1
    fake.last.buffer_state()
    kit.settle()
    outcomes = messages(owner, ConnectOutcome)
    assert sorted((o.request_id, o.online) for o in outcomes) == [("a", True), ("b", True)]


def test_s2_connect_again_while_online_does_nothing_new(kit, fake, owner) -> None:
    s = Session(kit, fake)
    s.bring_online()
    s.connect(request_id="again")
    assert len(fake.registers) == 1 and len(fake.sockets) == 1
    assert messages(owner, ConnectOutcome)[-1].online


def test_s3_practice_online_default_offline_each_reports_its_own_state(kit, fake, owner) -> None:
    default = Session(kit, fake, DEFAULT_SESSION)
    practice = Session(kit, fake, PRACTICE_SESSION)
    practice.bring_online(PRACTICE_URL)
    assert practice.status().state == ONLINE
    assert default.status().state == IDLE
    changes = messages(owner, SessionStateChanged)
    assert {c.session_id for c in changes} == {PRACTICE_SESSION}


def test_s4_an_event_on_the_practice_socket_is_tagged_with_the_practice_session(kit, fake, owner) -> None:
    watcher = kit.probe("captions:m1")
    default = Session(kit, fake, DEFAULT_SESSION)
    practice = Session(kit, fake, PRACTICE_SESSION)
    for s in (default, practice):
        s.tell(Watch(epoch=1, watcher="captions:m1"))
    default.bring_online()
    practice_socket = practice.bring_online(PRACTICE_URL)
    practice_socket.push({"data": {"eventType": "relay.event", "caption": "hello"}})
    kit.settle()
    [event] = messages(watcher, RelayedEvent)
    assert event.session_id == PRACTICE_SESSION and event.data["caption"] == "hello"


def test_s5_disconnecting_the_practice_session_leaves_the_default_untouched(kit, fake, owner) -> None:
    default = Session(kit, fake, DEFAULT_SESSION)
    practice = Session(kit, fake, PRACTICE_SESSION)
    default_socket = default.bring_online()
    practice_socket = practice.bring_online(PRACTICE_URL)
    practice.tell(Disconnect(epoch=1, permanent=True))
    assert practice_socket.close_requests == [(1000, "done (permanent)")]
    assert practice.status().state == OFFLINE
    assert default_socket.close_requests == [] and default.status().state == ONLINE


@pytest.mark.parametrize(
    ("code", "reason", "reconnects"),
    [(3050, "done (permanent)", False), (1000, "Pong not received", True), (1006, "", True), (4000, "", False)],
)
def test_s8_close_codes(kit, fake, owner, code: int, reason: str, reconnects: bool) -> None:
    s = Session(kit, fake)
    s.bring_online().close_from_server(code, reason)
    kit.settle()
    assert len(fake.registers) == (2 if reconnects else 1)
    assert s.status().state == (CONNECTING if reconnects else OFFLINE)
    kit.advance(60)
    assert len(fake.registers) == (2 if reconnects else 1)


def test_s9_open_fails_with_4401_credentials_refreshed_then_retry(kit, fake, owner) -> None:
    tokens = granting_token_actor(kit, ["old-token", "fresh-token"])
    s = Session(kit, fake)
    s.connect(token_auth=True)
    fake.last.close_from_server(4401, "token expired")
    kit.settle()
    kit.advance(1.0)  # within the first backoff step
    requests = messages(tokens, TokenRequest)
    assert [r.refresh for r in requests] == [False, True]
    assert [r.token for r in fake.registers] == ["old-token", "fresh-token"]
    fake.last.buffer_state()
    kit.settle()
    assert s.status().state == ONLINE


@pytest.mark.parametrize("code", [4403, 4400])
def test_s9_open_fails_with_4403_or_4400_gives_up_and_says_so(kit, fake, owner, code: int) -> None:
    s = Session(kit, fake)
    s.connect(request_id="r")
    fake.last.close_from_server(code, "refused")
    kit.settle()
    kit.advance(120)
    assert len(fake.registers) == 1
    status = s.status()
    assert status.state == FAILED and str(code) in status.reason
    [outcome] = messages(owner, ConnectOutcome)
    assert not outcome.online and outcome.state == FAILED


def test_s10_repeated_failures_back_off_0_1_2_4_8_16_32_32(kit, fake, owner) -> None:
    fake.register_script.extend(RegisterError(503, "down") for _ in range(8))
    s = Session(kit, fake, jitter=False)
    s.connect()
    times = [0.0]
    elapsed = 0.0
    for step in (1, 2, 4, 8, 16, 32, 32, 32):
        assert len(fake.registers) == len(times)
        kit.advance(step - 0.01)
        assert len(fake.registers) == len(times), f"attempt came before its {step} s step"
        kit.advance(0.01)
        elapsed += step
        times.append(elapsed)
    assert len(fake.registers) == 9
    assert s.status().state == CONNECTING and s.status().failures == 8


def failed_register_attempts_within(steps: list[float]) -> int:
    """How many registers a session makes, every one failing, while the
    kit's clock is moved through ``steps`` (jitter off)."""
    with TestKit() as kit:
        fake = FakeConnector()
        fake.register_script.extend(RegisterError(503, "down") for _ in range(100))
        kit.probe(OWNER)
        s = Session(kit, fake, jitter=False)
        s.connect()
        assert len(fake.registers) == 1 and s.status().state == BACKOFF
        for step in steps:
            kit.advance(step)
        return len(fake.registers)


def test_advance_60_after_a_failed_register_gives_what_stepping_through_60_s_gives() -> None:
    # Retries 1, 3, 7, 15 and 31 s after the first failure (backoff 1, 2, 4,
    # 8, 16 s); the next is due at 63 s. Each retry is set by the handler of
    # the previous failure, during the advance.
    assert failed_register_attempts_within([60.0]) == 6
    assert failed_register_attempts_within([1.0] * 60) == 6
    assert failed_register_attempts_within([59.0, 1.0]) == 6


def test_s11_authorized_without_buffer_state_is_not_online_then_online_and_pings(kit, fake, owner) -> None:
    s = Session(kit, fake)
    s.connect()
    sock = fake.last
    [auth] = sock.of_type("authorization")
    assert auth["data"] == {"token": f"Bearer {USER_TOKEN}"}
    assert auth["trackingId"].startswith(f"{DEFAULT_SESSION}_")
    assert s.status().state == CONNECTING and not sock.of_type("ping")
    sock.buffer_state()
    kit.settle()
    assert s.status().state == ONLINE
    assert len(sock.of_type("ping")) == 1
    assert {"messageId": sock.sent[1]["messageId"], "type": "ack"} == sock.sent[1]  # the buffer state is acked


def test_s12_pong_with_another_id_closes_pong_mismatch_and_reconnects(kit, fake, owner) -> None:
    s = Session(kit, fake)
    sock = s.bring_online()
    sock.push({"type": "pong", "id": "someone-else"})
    kit.settle()
    assert sock.close_requests == [(1000, "Pong mismatch")]
    assert len(fake.sockets) == 2 and s.status().state == CONNECTING


def test_s12_no_pong_for_14s_closes_pong_not_received_and_reconnects(kit, fake, owner) -> None:
    s = Session(kit, fake)
    sock = s.bring_online()
    kit.advance(13.9)
    assert sock.close_requests == []
    kit.advance(0.1)
    assert sock.close_requests == [(1000, "Pong not received")]
    assert len(fake.registers) == 2


def test_keepalive_pings_15s_after_each_pong(kit, fake, owner) -> None:
    s = Session(kit, fake)
    sock = s.bring_online()
    for n in range(1, 4):
        sock.push({"type": "pong", "id": sock.of_type("ping")[-1]["id"]})
        kit.advance(14.9)
        assert len(sock.of_type("ping")) == n
        kit.advance(0.1)
        assert len(sock.of_type("ping")) == n + 1
    assert s.status().state == ONLINE


def test_forced_close_of_a_permanent_disconnect_never_reconnects(kit, fake, owner) -> None:
    fake.echo_close = False  # the close frame never comes
    s = Session(kit, fake)
    sock = s.bring_online()
    s.tell(Disconnect(epoch=1, permanent=True, reason="meeting left"))
    assert s.status().state == "closing"
    kit.advance(2.0)
    assert sock.aborted
    kit.advance(120)
    assert len(fake.registers) == 1
    status = s.status()
    assert (status.state, status.reason) == (OFFLINE, "meeting left")


def test_s13_sequence_5_then_7_raises_mismatch_7_6_and_keeps_the_socket(kit, fake, owner) -> None:
    s = Session(kit, fake)
    sock = s.bring_online()  # the buffer-state frame was number 1
    for n in (2, 3, 4, 5, 7):
        sock.push({"data": {"eventType": "relay.event"}, "sequenceNumber": n})
    kit.settle()
    event = kit.expect_event("sequence-mismatch", s.address)
    assert (event.detail["actual"], event.detail["expected"]) == (7, 6)
    sock.push({"data": {"eventType": "relay.event"}, "sequenceNumber": 8})
    kit.settle()
    assert s.status().counters["sequence_mismatches"] == 1
    assert sock.close_requests == [] and s.status().state == ONLINE


def test_s14_token_auth_on_register_carries_the_token_and_the_url_subscription_awareness(kit, fake, owner) -> None:
    granting_token_actor(kit)
    s = Session(kit, fake)
    s.connect(token_auth=True)
    assert fake.registers[0].token == DC_TOKEN
    assert parse_qs(urlsplit(fake.last.url).query)["subscriptionAwareSubchannels"] == ["transcription"]


def test_s14_token_auth_off_neither(kit, fake, owner) -> None:
    tokens = granting_token_actor(kit)
    s = Session(kit, fake)
    s.connect(token_auth=False)
    assert fake.registers[0].token is None and not tokens.received
    assert "subscriptionAwareSubchannels" not in fake.last.url


def test_s15_token_held_session_disconnects_the_token_is_still_held(kit, fake, owner) -> None:
    tokens = granting_token_actor(kit)
    s = Session(kit, fake)
    s.bring_online(token_auth=True)
    s.tell(Disconnect(epoch=1, permanent=True))
    s.connect(token_auth=True)
    requests = [m for m, _ in tokens.received]
    assert all(isinstance(m, TokenRequest) for m in requests)  # nothing asks it to forget
    assert [m.refresh for m in requests] == [False, False]


def test_s35_captions_on_socket_drops_and_comes_back_transcription_is_sent_again(kit, fake, owner) -> None:
    s = Session(kit, fake)
    first = s.bring_online()
    s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
    assert first.subscriptions() == [{"datachannelUri": DC_URL, "subscribe": ["transcription"], "unsubscribe": []}]
    first.close_from_server(1006)
    kit.settle()
    second = fake.last
    assert second is not first and second.subscriptions() == []
    second.buffer_state()
    kit.settle()
    assert second.subscriptions() == [{"datachannelUri": DC_URL, "subscribe": ["transcription"], "unsubscribe": []}]


def test_switchover_on_shutdown_is_make_before_break(kit, fake, owner) -> None:
    s = Session(kit, fake)
    old = s.bring_online()
    s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
    old.push({"type": "shutdown"})
    kit.settle()
    new = fake.last
    assert new is not old and old.close_requests == [] and s.status().state == ONLINE
    new.buffer_state()
    kit.settle()
    assert old.close_requests == [(1000, "done (switched)")]
    assert new.subscriptions()[0]["subscribe"] == ["transcription"]
    assert s.status().binding == "b2"
    note = messages(owner, SessionStateChanged)[-1]
    assert (note.state, note.reason, note.binding) == (ONLINE, "switchover", "b2")


# -- ownership ------------------------------------------------------------------------


def test_s16_a_non_owner_disconnect_is_refused_by_ask_and_by_tell_and_the_owner_keeps_its_socket(kit, fake, owner) -> None:
    intruder = kit.probe("meeting:m2")
    s = Session(kit, fake)
    sock = s.bring_online()
    with pytest.raises(RemoteError) as refused:
        s.ask(Disconnect(epoch=1), sender="meeting:m2")
    assert refused.value.error_type == "NotOwner"
    s.tell(Disconnect(epoch=1), sender="meeting:m2")
    [refusal] = messages(intruder, Refusal)
    assert (refusal.error_type, refusal.reason, refusal.command) == ("NotOwner", "not-owner", "datachannel.disconnect")
    assert len(kit.events_named("refused-not-owner", s.address)) == 2
    assert sock.close_requests == [] and s.status().state == ONLINE


def test_owner_asks_are_answered_with_the_status(kit, fake, owner) -> None:
    s = Session(kit, fake)
    status = s.ask(Connect(epoch=1, datachannel_url=DC_URL))
    assert isinstance(status, SessionStatus) and status.state == CONNECTING and status.owner == OWNER


def test_connect_without_url_is_rejected_and_nothing_is_registered(kit, fake, owner) -> None:
    s = Session(kit, fake)
    with pytest.raises(RemoteError) as rejected:
        s.ask(Connect(epoch=1, datachannel_url=""))
    assert rejected.value.error_type == "CommandRejected" and "no-datachannel-url" in str(rejected.value)
    kit.expect_event("command-rejected", s.address, reason="no-datachannel-url")
    assert fake.registers == [] and s.status().state == IDLE


# -- generations and bad input -----------------------------------------------------------


def test_a_stale_register_outcome_in_the_mailbox_opens_nothing(kit, fake, owner) -> None:
    fake.register_script.append(RegisterError(503, "down"))
    s = Session(kit, fake, jitter=False)
    s.connect()
    old_gen = s.actor.state.backoff_gen - 1  # the failed attempt's generation
    kit.inject_message(s.address, Registered(gen=old_gen, websocket_url="ws://relay.fake/x", binding="x"),
                       sender=s.address)
    kit.settle()
    assert fake.sockets == [] and s.status().state == BACKOFF
    assert s.status().counters["stale_dropped"] == 1


def test_frames_forged_by_another_actor_are_bad_input(kit, fake, owner) -> None:
    s = Session(kit, fake)
    sock = s.bring_online()
    kit.inject_message(s.address, SocketFrame(gen=sock.gen, text='{"type": "shutdown"}'), sender="meeting:evil")
    kit.settle()
    kit.expect_event("bad-input", s.address, reason="not-from-self")  # the shell base refuses it: the core never sees it
    assert len(fake.registers) == 1 and s.status().state == ONLINE


def test_garbage_bytes_become_a_dead_letter_and_the_session_keeps_running(kit, fake, owner) -> None:
    s = Session(kit, fake)
    kit.inject(s.address, b"\xc1 not an envelope")
    kit.expect_event("dead-letter", reason="not-msgpack")
    s.bring_online()


def test_a_register_failure_is_counted_by_the_shell_not_raised(kit, fake, owner) -> None:
    fake.register_script.append(RegisterError(500, "boom"))
    s = Session(kit, fake)
    s.connect()
    assert s.status().state == BACKOFF and "500" in s.status().reason


def test_an_open_that_fails_is_a_transient_failure(kit, fake, owner) -> None:
    fake.open_script.append(SocketOpenError(1006, "ConnectionRefusedError"))
    s = Session(kit, fake, jitter=False)
    s.connect()
    assert s.status().state == BACKOFF
    kit.advance(1.0)
    fake.last.buffer_state()
    kit.settle()
    assert s.status().state == ONLINE


# -- late results: a request held in flight while the session moves on --------------------


def test_a_register_held_in_flight_while_the_session_is_told_to_disconnect_reopens_nothing(kit, fake, owner) -> None:
    s = Session(kit, fake)
    gate = fake.hold("register")
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL, request_id="r"), sender=OWNER)
    call = gate.wait_held()
    assert call is fake.registers[0]
    kit.settle_actors()  # the session waits for the register's outcome
    assert s.status().state == CONNECTING
    kit.inject_message(s.address, Disconnect(epoch=1, permanent=True, reason="left"), sender=OWNER)
    kit.settle_actors()
    assert s.status().state == OFFLINE
    gate.release()  # the registration lands after the session moved on
    kit.settle()
    assert fake.sockets == []
    assert s.status().state == OFFLINE and s.status().counters["stale_dropped"] == 1
    kit.advance(60)
    assert len(fake.registers) == 1 and fake.sockets == [] and s.status().state == OFFLINE


def test_a_register_failing_late_after_a_disconnect_starts_no_backoff(kit, fake, owner) -> None:
    s = Session(kit, fake, jitter=False)
    gate = fake.hold("register")
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL), sender=OWNER)
    gate.wait_held()
    kit.settle_actors()
    kit.inject_message(s.address, Disconnect(epoch=1, permanent=True), sender=OWNER)
    kit.settle_actors()
    gate.fail(RegisterError(503, "down"))
    kit.settle()
    kit.advance(60)  # a backoff would have retried 5 times by now
    assert len(fake.registers) == 1 and s.status().state == OFFLINE


def test_a_late_registration_of_a_replaced_attempt_opens_no_second_socket(kit, fake, owner) -> None:
    s = Session(kit, fake)
    first = fake.hold("register")
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL), sender=OWNER)
    first.wait_held()
    kit.settle_actors()
    opening = fake.hold("open")  # the second attempt's socket
    kit.inject_message(s.address, Disconnect(epoch=1), sender=OWNER)
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL), sender=OWNER)
    sock = opening.wait_held()  # the second attempt registered and is opening
    assert len(fake.registers) == 2
    opening.release()
    first.release(Registration("ws://relay.fake/v1/socket/late", "late"))
    kit.settle()
    assert fake.sockets == [sock] and "late" not in sock.url
    sock.buffer_state()
    kit.settle()
    status = s.status()
    assert (status.state, status.binding) == (ONLINE, "b2") and len(fake.sockets) == 1
    assert status.counters["stale_dropped"] == 1


def test_an_open_held_in_flight_while_the_session_is_told_to_disconnect_never_comes_online(kit, fake, owner) -> None:
    s = Session(kit, fake)
    gate = fake.hold("open")
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=DC_URL), sender=OWNER)
    sock = gate.wait_held()
    assert sock is fake.last and not sock.opened
    kit.settle_actors()
    kit.inject_message(s.address, Disconnect(epoch=1, permanent=True, reason="left"), sender=OWNER)
    kit.settle_actors()
    gate.release()  # the open finishes after the session gave up on it
    kit.settle()
    assert not sock.opened and sock.sent == []
    kit.advance(60)
    assert len(fake.registers) == 1 and len(fake.sockets) == 1
    status = s.status()
    assert (status.state, status.reason) == (OFFLINE, "left")


# -- crash and restart ---------------------------------------------------------------------


class CrashingConnector(FakeConnector):
    """A connector with a bug: its next ``socket()`` raises."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_next = False

    def socket(self, url, events):
        if self.crash_next:
            self.crash_next = False
            raise RuntimeError("connector bug")
        return super().socket(url, events)


def test_a_crashed_session_restarts_reconnects_and_resubscribes_by_itself(kit, owner) -> None:
    fake = CrashingConnector()
    s = Session(kit, fake, supervised=True)
    s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
    first = s.bring_online()
    fake.crash_next = True
    first.push({"type": "shutdown"})  # the switchover's open hits the bug
    kit.expect_event("crashed", s.address)
    kit.advance(1.0)  # the supervisor's restart backoff
    kit.expect_event("started", s.address)
    assert first.aborted  # the crashed incarnation's socket does not linger
    assert s.actor.ctx.incarnation == 2
    restarted = fake.last
    assert restarted is not first
    restarted.buffer_state()
    kit.settle()
    status = s.status()
    assert (status.state, status.owner, status.subscriptions) == (ONLINE, OWNER, ["transcription"])
    assert restarted.subscriptions()[0]["subscribe"] == ["transcription"]
    # Still owned: the owner's commands are accepted by the new incarnation.
    assert s.ask(GetStatus()).owner == OWNER
    s.tell(Disconnect(epoch=1))
    assert restarted.close_requests == [(1000, "done (permanent)")]


def test_an_old_incarnations_socket_news_is_stale_for_the_new_one(kit, owner) -> None:
    fake = CrashingConnector()
    s = Session(kit, fake, supervised=True)
    first = s.bring_online()
    fake.crash_next = True
    first.push({"type": "shutdown"})
    kit.expect_event("crashed", s.address)
    kit.advance(1.0)
    kit.expect_event("started", s.address)
    new_gen = fake.last.gen
    assert new_gen > first.gen
    kit.inject_message(s.address, SocketFrame(gen=first.gen, text='{"data": {"eventType": "mercury.buffer_state"}}'),
                       sender=s.address)
    kit.settle()
    assert s.status().state == CONNECTING


# -- secrets ----------------------------------------------------------------------------------


def test_no_secret_reaches_events_checkpoints_or_reprs(kit, fake, owner) -> None:
    granting_token_actor(kit)
    s = Session(kit, fake)
    s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
    s.bring_online(token_auth=True)
    s.tell(Disconnect(epoch=1))
    for event in kit.events:
        assert USER_TOKEN not in repr(event) and DC_TOKEN not in repr(event)
    raw = kit.node.checkpoints.load(s.address)
    assert raw is not None
    text = repr(msgpack.unpackb(raw))
    assert USER_TOKEN not in text and DC_TOKEN not in text
    assert USER_TOKEN not in repr(s.actor) and DC_TOKEN not in repr(s.actor.state)
    assert DC_TOKEN not in repr(fake.registers)
