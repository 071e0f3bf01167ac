"""Taps: the live-tap table (pure), redaction, and the node side through the
test kit (requests through the node's receive path, records on the bus)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.runtime.builtin import Echo
from actors.sessions.contracts.token import TokenGranted
from ops.tap import (
    MAX_TTL,
    REDACTED,
    SYS_TAPS,
    TapArmed,
    TapRecord,
    TapRequest,
    TapService,
    TapTable,
    format_record,
    redacted_body,
    tap_channel,
)
from actors.runtime.testkit import TestKit
from bus.envelope import Codec
from bus.messages import Message, Ping, message_kind
from bus.transport import InProcessTransport

from tests.actors.conftest import Recorder

SECRET = "eyJhbGciOi.secret-token-value.sig"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@message_kind("test.tap-credentials")
@dataclass(frozen=True, slots=True)
class Credentials(Message):
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("password", "api_key")

    user: str
    password: str = field(repr=False)
    api_key: bytes = field(default=b"", repr=False)
    notes: list[str] = field(default_factory=list)


# -- the table --------------------------------------------------------------------------

_ops = st.lists(
    st.tuples(st.sampled_from(["a:1", "a:2", "b:1"]), st.sampled_from(["t1", "t2"]),
              st.sampled_from([0.0, 1.0, 5.0, 1000.0]), st.floats(0.0, 3.0)),
    max_size=40,
)


@given(_ops)
def test_table_agrees_with_a_model_of_expiries(ops: list[tuple[str, str, float, float]]) -> None:
    table = TapTable(max_taps=3)
    model: dict[tuple[str, str], float] = {}
    now = 0.0
    for address, tap_id, ttl, step in ops:
        now += step
        model = {k: u for k, u in model.items() if u > now}
        table.expire(now)
        outcome = table.renew(address, tap_id, ttl, now)
        key = (address, tap_id)
        if ttl <= 0:
            model.pop(key, None)
            assert outcome == "ended"
        elif key in model:
            model[key] = now + min(ttl, MAX_TTL)
            assert outcome == "renewed"
        elif len(model) >= 3:
            assert outcome == "refused"
        else:
            model[key] = now + min(ttl, MAX_TTL)
            assert outcome == "armed"
        assert table.tapped() == {a for a, _ in model}
        assert len(table) == len(model)
        assert table.next_expiry() == min(model.values(), default=None)


def test_expire_reports_the_addresses_it_untapped() -> None:
    table = TapTable()
    table.renew("a:1", "t1", 5.0, now=0.0)
    table.renew("a:1", "t2", 10.0, now=0.0)
    table.renew("b:1", "t1", 5.0, now=0.0)
    assert sorted(table.expire(5.0)) == ["b:1"]
    assert table.tapped() == {"a:1"}
    assert table.expire(10.0) == ["a:1"] and not table.tapped()


# -- redaction ---------------------------------------------------------------------------


def test_declared_secrets_are_redacted_and_named() -> None:
    body, withheld = redacted_body(TokenGranted(session_type="llm-default-session", request_id="r1", token=SECRET))
    assert body == {"session_type": "llm-default-session", "request_id": "r1", "token": REDACTED}
    assert withheld == ["token"]
    body, withheld = redacted_body(Credentials(user="u", password=SECRET, api_key=SECRET.encode()))
    assert body["password"] == body["api_key"] == REDACTED and sorted(withheld) == ["api_key", "password"]
    assert SECRET not in repr(body)


def test_bodies_are_bounded_for_display() -> None:
    body, _ = redacted_body(Credentials(user="u" * 1000, password="p", notes=[f"n{i}" for i in range(50)]))
    assert len(body["user"]) < 250 and body["user"].endswith("(+800 chars)")
    assert len(body["notes"]) == 21 and body["notes"][-1] == "...(+30 items)"
    body, _ = redacted_body(Ping(n=1, payload=bytes(range(40))))
    assert body["payload"] == "<40 bytes: 000102030405060708090a0b0c0d0e0f...>"
    assert redacted_body(Ping())[0]["payload"] == "<0 bytes>"


# -- the node side, through the test kit ------------------------------------------------------


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit(node_id="tapped") as k:
        TapService(k.node).start()
        yield k


def listen(kit: TestKit, address: str) -> tuple[Recorder, InProcessTransport]:
    got = Recorder()
    codec = Codec()
    spy = InProcessTransport(kit.hub, name="tap-spy")
    spy.set_receiver(lambda channel, data: got.add(codec.decode(data).message))
    spy.subscribe(tap_channel(address))
    spy.start()
    return got, spy


def request(kit: TestKit, address: str, tap_id: str = "t1", ttl: float = 10.0) -> None:
    kit.inject(SYS_TAPS, kit.envelope(SYS_TAPS, TapRequest(address=address, tap_id=tap_id, ttl=ttl)))


def records(got: Recorder) -> list[TapRecord]:
    return [m for m in got.snapshot() if isinstance(m, TapRecord)]


def test_a_tapped_address_has_its_deliveries_mirrored_with_secrets_redacted(kit: TestKit) -> None:
    kit.spawn("echo:a", Echo)
    got, spy = listen(kit, "echo:a")
    try:
        request(kit, "echo:a")
        assert got.snapshot() == [TapArmed(address="echo:a", tap_id="t1", node="tapped")]
        kit.inject_message("echo:a", Ping(n=1), sender="node:x", epoch=4, traceparent=TRACE)
        kit.inject_message("echo:a", TokenGranted(session_type="s", request_id="r", token=SECRET))
        kit.settle()
        ping, token, unhandled = records(got)  # Echo handles no tokens: a dead letter after the delivery
        assert (ping.outcome, ping.kind, ping.sender, ping.epoch, ping.body) == (
            "delivered", "sys.ping", "node:x", 4, {"n": 1, "payload": "<0 bytes>"})
        assert ping.msg_id and ping.node == "tapped" and ping.traceparent == TRACE
        assert token.traceparent is None
        assert token.body is not None and token.body["token"] == REDACTED and token.redacted == ["token"]
        assert (unhandled.outcome, unhandled.reason, unhandled.kind) == ("dead-letter", "unhandled-kind",
                                                                          "token.granted")
        assert SECRET not in repr(got.snapshot())
    finally:
        spy.close()


def test_dead_letters_for_a_tapped_address_show_their_reason_never_their_bytes(kit: TestKit) -> None:
    got, spy = listen(kit, "echo:gone")
    try:
        request(kit, "echo:gone")
        kit.inject("echo:gone", b"\xc1" + SECRET.encode())
        kit.inject_message("echo:gone", Ping(n=2), sender="node:y")
        kit.settle()
        undecodable, unknown = records(got)
        assert (undecodable.outcome, undecodable.reason, undecodable.body, undecodable.kind) == (
            "dead-letter", "not-msgpack", None, "")
        assert (unknown.reason, unknown.kind, unknown.sender) == ("unknown-address", "sys.ping", "node:y")
        assert SECRET not in repr(got.snapshot())
        assert "DEAD LETTER (not-msgpack)" in format_record(undecodable)
    finally:
        spy.close()


def test_the_tap_never_subscribes_the_address_channel(kit: TestKit) -> None:
    _, spy = listen(kit, "echo:nobody")
    try:
        request(kit, "echo:nobody")
        assert kit.hub.subscribers("echo:nobody") == 0
        assert kit.hub.subscribers(SYS_TAPS) == 1
    finally:
        spy.close()


def test_a_tap_ends_when_cancelled_or_not_renewed(kit: TestKit) -> None:
    kit.spawn("echo:a", Echo)
    got, spy = listen(kit, "echo:a")
    try:
        request(kit, "echo:a", ttl=5.0)
        kit.inject_message("echo:a", Ping(n=1))
        kit.settle()
        kit.advance(3.0)
        request(kit, "echo:a", ttl=5.0)  # renewed: live until 8 s from the start
        kit.advance(4.0)
        kit.inject_message("echo:a", Ping(n=2))
        kit.settle()
        kit.advance(1.5)  # past the renewed expiry
        kit.inject_message("echo:a", Ping(n=3))
        kit.settle()
        assert [r.body["n"] for r in records(got) if r.body] == [1, 2]
        assert kit.node.delivery_hook is None  # nothing tapped: the hook is off again

        request(kit, "echo:a", tap_id="t2")
        kit.inject_message("echo:a", Ping(n=4))
        request(kit, "echo:a", tap_id="t2", ttl=0.0)
        kit.inject_message("echo:a", Ping(n=5))
        kit.settle()
        assert [r.body["n"] for r in records(got) if r.body] == [1, 2, 4]
        assert kit.node.delivery_hook is None
    finally:
        spy.close()


def test_requests_for_system_or_malformed_addresses_are_refused(kit: TestKit) -> None:
    for address in ("sys:events", "not an address"):
        request(kit, address)
        event = kit.expect_event("dead-letter", SYS_TAPS, reason="bad-tap")
        assert event.detail["kind"] == "sys.tap"
    kit.inject(SYS_TAPS, kit.envelope(SYS_TAPS, Ping()))
    kit.expect_event("dead-letter", SYS_TAPS, reason="unhandled-kind")
    assert kit.node.delivery_hook is None


def test_format_record_is_one_line_with_kind_sender_epoch_id_and_body() -> None:
    record = TapRecord(address="echo:a", node="n", outcome="delivered", ts=0.5, kind="sys.ping", sender="node:x",
                       epoch=3, msg_id="abc-1", reply_to="node:x", correlation_id="c-9", body={"n": 1},
                       traceparent=TRACE)
    line = format_record(record)
    assert "\n" not in line
    for part in ("echo:a <- sys.ping", "from node:x", "epoch 3", "id abc-1", "ask c-9", f"trace {TRACE_ID}",
                 '{"n": 1}'):
        assert part in line
    assert "trace" not in format_record(dataclasses.replace(record, traceparent=None))

