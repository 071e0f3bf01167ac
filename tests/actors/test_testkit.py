"""The test kit: injected bytes take the node's real receive path, probes
record, sends off the node are captured, expectations wait on conditions
with deadlines and fail with ``Timeout``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from bus.transport import InProcessTransport

from actors.node import ActorContext, HuddleActor, RemoteError
from actors.testkit import TestKit, Timeout
from bus.envelope import Envelope, new_traceparent
from bus.messages import Event, Message, Ping, Pong, Reply, message_kind

SHORT = 0.2
"""A deadline for expectations that must fail; not a sleep."""


@message_kind("testkit.relay")
@dataclass(frozen=True, slots=True)
class Relay(Message):
    to: str
    n: int = 0


class Recording(HuddleActor):
    """Keeps every (message, envelope); pings answer pongs; relays tell ``to``;
    a ping with n < 0 sets a timer."""

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx)
        self.seen: list[tuple[Message, Envelope]] = []

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        self.seen.append((message, envelope))
        if isinstance(message, Relay):
            self.tell(message.to, Ping(n=message.n))
            return None
        if isinstance(message, Ping):
            if message.n < 0:
                self.send_later(3.0, Ping(n=-message.n), to="probe:timer")
            return Pong(n=message.n)
        return super().on_message(message, envelope)


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as k:
        yield k


def test_injected_bytes_reach_on_message_with_the_header_intact(kit: TestKit) -> None:
    actor = kit.spawn("svc:rec", Recording)
    trace = new_traceparent()
    data = kit.envelope("svc:rec", Ping(n=7), sender="meeting:m-1", epoch=42, traceparent=trace, msg_id="m-123")
    assert isinstance(data, bytes)
    kit.inject("svc:rec", data)
    kit.settle()
    assert len(actor.seen) == 1
    message, env = actor.seen[0]
    assert message == Ping(n=7)
    assert env.sender == "meeting:m-1"
    assert env.epoch == 42
    assert env.traceparent == trace
    assert env.msg_id == "m-123"
    assert env.to == "svc:rec"


def test_inject_message_encodes_first(kit: TestKit) -> None:
    actor = kit.spawn("svc:rec", Recording)
    kit.inject_message("svc:rec", Ping(n=1), sender="svc:x")
    kit.settle()
    assert [(m, e.sender) for m, e in actor.seen] == [(Ping(n=1), "svc:x")]


def test_injected_bad_bytes_are_a_dead_letter_event(kit: TestKit) -> None:
    actor = kit.spawn("svc:rec", Recording)
    kit.inject("svc:rec", msgpack.packb([1, "id", "sys.ping"]))
    event = kit.expect_event("dead-letter", "svc:rec", reason="bad-shape", timeout=5.0)
    assert isinstance(event, Event)
    assert kit.node.counters["dead-letter:bad-shape"] == 1
    kit.settle()
    assert actor.seen == []


def test_probe_expects_the_messages_it_receives_in_turn(kit: TestKit) -> None:
    probe = kit.probe("probe:p")
    kit.spawn("svc:rec", Recording)
    kit.inject_message("svc:rec", Relay(to="probe:p", n=1))
    kit.inject_message("svc:rec", Relay(to="probe:p", n=2))
    message, env = probe.expect_message(Ping)
    assert message == Ping(n=1)
    assert env.sender == "svc:rec"
    assert probe.expect_message("sys.ping")[0] == Ping(n=2)
    probe.expect_no_message()
    assert [m for m, _ in probe.received] == [Ping(n=1), Ping(n=2)]


def test_expect_message_raises_timeout_when_nothing_matching_comes(kit: TestKit) -> None:
    probe = kit.probe("probe:p")
    kit.inject_message("probe:p", Ping(n=1))
    with pytest.raises(Timeout) as info:
        probe.expect_message(Pong, timeout=SHORT)
    assert "probe:p" in str(info.value)
    assert isinstance(info.value, AssertionError)
    # The ping was not consumed by the failed expectation.
    assert probe.expect_message(Ping, timeout=SHORT)[0] == Ping(n=1)


def test_expect_no_message_fails_on_an_unexpected_message(kit: TestKit) -> None:
    probe = kit.probe("probe:p")
    kit.inject_message("probe:p", Ping(n=1))
    with pytest.raises(AssertionError, match="sys.ping"):
        probe.expect_no_message()
    probe.expect_no_message(Pong)  # only matching messages count


def test_a_probe_can_answer_asks(kit: TestKit) -> None:
    kit.probe("probe:p", reply=lambda message, env: Pong(n=message.n * 10) if isinstance(message, Ping) else None)
    assert kit.ask("probe:p", Ping(n=4)).get(timeout=5.0) == Pong(n=40)


def test_expect_sent_captures_envelopes_for_addresses_off_the_node(kit: TestKit) -> None:
    kit.spawn("svc:rec", Recording)
    kit.probe("probe:local")
    kit.inject_message("svc:rec", Relay(to="meeting:elsewhere", n=5))
    kit.inject_message("svc:rec", Relay(to="probe:local", n=6))
    env = kit.expect_sent("meeting:elsewhere", Ping)
    assert env.message == Ping(n=5)
    assert env.sender == "svc:rec"
    kit.settle()
    # A send to an actor on the node is not "sent"; events are not either.
    assert [e.to for e in kit.sent] == ["meeting:elsewhere"]
    with pytest.raises(Timeout):
        kit.expect_sent("meeting:elsewhere", timeout=SHORT)  # already consumed
    with pytest.raises(Timeout):
        kit.expect_sent("probe:local", timeout=SHORT)


def test_an_ask_off_the_node_is_captured_and_times_out_on_the_manual_clock(kit: TestKit) -> None:
    silent = InProcessTransport(kit.hub, name="elsewhere")  # another node that never answers
    silent.subscribe("meeting:elsewhere")
    silent.start()
    future = kit.ask("meeting:elsewhere", Ping(n=1), timeout=2.0)
    env = kit.expect_sent("meeting:elsewhere", Ping)
    assert env.reply_to == kit.node.address
    assert env.correlation_id
    kit.advance(2.0)
    with pytest.raises(Exception, match="no reply within 2s"):
        future.get(timeout=0)


def test_expect_event_waits_for_the_named_event(kit: TestKit) -> None:
    kit.spawn("svc:rec", Recording)
    started = kit.expect_event("started", "svc:rec")
    assert started.detail["class"] == "Recording"
    with pytest.raises(Timeout, match="stopped"):
        kit.expect_event("stopped", "svc:rec", timeout=SHORT)
    kit.node.stop_actor("svc:rec")
    assert kit.expect_event("stopped", "svc:rec").reason == ""
    assert [e.event for e in kit.events_named("started")] == ["started"]
    # An event already expected is not returned twice.
    with pytest.raises(Timeout):
        kit.expect_event("started", "svc:rec", timeout=SHORT)


def test_advance_fires_timers_and_settles(kit: TestKit) -> None:
    probe = kit.probe("probe:timer")
    kit.spawn("svc:rec", Recording)
    kit.inject_message("svc:rec", Ping(n=-3))
    kit.advance(2.9)
    probe.expect_no_message()
    kit.advance(0.1)
    assert probe.received[0][0] == Ping(n=3)


def test_an_ask_to_an_actor_on_the_kit_answers(kit: TestKit) -> None:
    kit.spawn("svc:rec", Recording)
    assert kit.ask("svc:rec", Ping(n=2)).get(timeout=5.0) == Pong(n=2)
    with pytest.raises(RemoteError, match="UnhandledMessage"):
        kit.ask("svc:rec", Reply(1)).get(timeout=5.0)
    kit.expect_event("dead-letter", "svc:rec", reason="unhandled-kind")


def test_spawn_returns_the_started_actor(kit: TestKit) -> None:
    class Started(HuddleActor):
        on_start_ran = False

        def on_start(self) -> None:
            self.on_start_ran = True

    actor = kit.spawn("svc:started", Started)
    assert isinstance(actor, Started)
    assert actor.on_start_ran
    assert actor.address == "svc:started"
    assert actor.ctx.node is kit.node
