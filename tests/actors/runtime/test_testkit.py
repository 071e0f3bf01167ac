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

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.io import Outcome
from actors.runtime.sending import RemoteError
from actors.runtime.testkit import Gate, Gates, TestKit, Timeout
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
    kit.node.observe_epoch("meeting:m-1", 42)  # issued (a kit outside a cluster issues none itself)
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


# -- advance: every timer due in the window, each at its own deadline ------------------


class Doubling(HuddleActor):
    """On ``Ping(n)``: notes the clock, then sets a timer ``n`` s on for
    ``Ping(2n)`` (a retry with doubling backoff); ``Pong(n)`` sets a timer of
    ``n / 4`` s (a fraction)."""

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx)
        self.times: list[float] = []

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        now = self.node.clock.now()
        if isinstance(message, Ping):
            self.times.append(now)
            self.send_later(message.n, Ping(n=message.n * 2))
            return None
        if isinstance(message, Pong):
            self.times.append(now)
            self.send_later(message.n / 4, Ping(n=1000))
            return None
        return super().on_message(message, envelope)


def test_advance_runs_timers_that_handlers_set_during_the_advance(kit: TestKit) -> None:
    actor = kit.spawn("svc:doubling", Doubling)
    start = kit.clock.now()
    kit.inject_message("svc:doubling", Ping(n=1))
    assert kit.advance(60) == 5  # at 1, 3, 7, 15 and 31 s; the next is due at 63 s
    assert [t - start for t in actor.times] == [0, 1, 3, 7, 15, 31]
    assert kit.clock.now() == start + 60
    kit.advance(3)
    assert [t - start for t in actor.times][-1] == 63


def test_one_advance_does_what_stepping_through_the_same_window_does() -> None:
    offsets = []
    for steps in ([60.0], [1.0] * 60, [0.5] * 120):
        with TestKit() as kit:
            actor = kit.spawn("svc:doubling", Doubling)
            start = kit.clock.now()
            kit.inject_message("svc:doubling", Ping(n=1))
            for step in steps:
                kit.advance(step)
            offsets.append([t - start for t in actor.times])
    assert offsets[0] == offsets[1] == offsets[2] == [0, 1, 3, 7, 15, 31]


def test_a_timer_set_during_an_advance_fires_at_its_own_deadline(kit: TestKit) -> None:
    actor = kit.spawn("svc:doubling", Doubling)
    start = kit.clock.now()
    kit.inject_message("svc:doubling", Pong(n=5))  # a timer 1.25 s on
    kit.advance(10)
    # The handler of the 1.25 s timer read exactly that deadline on the
    # clock, and its own 1000 s timer is pending.
    assert actor.times == [start, start + 1.25]
    assert kit.clock.next_deadline() == start + 1.25 + 1000


def test_advance_refuses_a_zero_delay_timer_loop(kit: TestKit) -> None:
    class Loop(HuddleActor):
        def on_message(self, message: Message, envelope: Envelope) -> Any:
            self.send_later(0, Ping(n=0))

    kit.max_rounds_at_one_instant = 20
    kit.spawn("svc:loop", Loop)
    kit.inject_message("svc:loop", Ping(n=0))
    with pytest.raises(RuntimeError, match="zero-delay"):
        kit.advance(1)


def test_advance_does_not_go_back(kit: TestKit) -> None:
    with pytest.raises(ValueError):
        kit.advance(-1)


# -- settle versus settle_actors: I/O held in flight -------------------------------------


class Fetching(HuddleActor):
    """On ``Ping(n)``: one I/O request through ``gate`` (answering ``n``);
    its outcome comes back as ``Pong``. Also keeps a timer 5 s on."""

    def __init__(self, ctx: ActorContext, gates: Gates) -> None:
        super().__init__(ctx)
        self.gates = gates
        self.pongs: list[int] = []
        self.timers = 0

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Ping) and message.n >= 0:
            self.run_io(self.gates.answer("fetch", f"call-{message.n}", message.n), self._done)
            self.send_later(5.0, Ping(n=-1))
        elif isinstance(message, Ping):
            self.timers += 1
        elif isinstance(message, Pong):
            self.pongs.append(message.n)
        else:
            return super().on_message(message, envelope)
        return None

    @staticmethod
    def _done(outcome: Outcome[Any]) -> Message:
        return Pong(n=outcome.value if outcome.ok else -1)


def test_settle_waits_for_io_in_flight_and_settle_actors_does_not(kit: TestKit) -> None:
    gates = Gates("fetch")
    actor = kit.spawn("svc:fetch", Fetching, gates)
    gate = gates.hold("fetch")
    kit.inject_message("svc:fetch", Ping(n=7))
    assert gate.wait_held(timeout=5.0) == "call-7"
    with pytest.raises(Timeout, match="held at a gate"):
        kit.settle(timeout=SHORT)
    kit.settle_actors()
    kit.settle(io=False)
    assert gate.held and actor.pongs == []
    # Time moves while the request is held: timers fire, the actors settle.
    kit.advance(5, io=False)
    assert actor.timers == 1 and actor.pongs == []
    gate.release()
    kit.settle()
    assert not gate.held and actor.pongs == [7]


def test_a_probe_can_expect_no_message_while_io_is_held(kit: TestKit) -> None:
    gates = Gates("fetch")
    kit.spawn("svc:fetch", Fetching, gates)
    probe = kit.probe("probe:p")
    gate = gates.hold("fetch")
    kit.inject_message("svc:fetch", Ping(n=1))
    gate.wait_held()
    probe.expect_no_message(io=False)
    gate.release()


# -- gates ----------------------------------------------------------------------------------


def test_a_gate_holds_one_call_until_released_with_its_own_answer_or_another(kit: TestKit) -> None:
    gates = Gates("fetch")
    first, second = gates.hold("fetch"), gates.hold("fetch")
    io = kit.node.io
    a = io.submit(gates.answer("fetch", "a", "answer-a"))
    b = io.submit(gates.answer("fetch", "b", "answer-b"))
    c = io.submit(gates.answer("fetch", "c", "answer-c"))  # no gate left: passes
    assert c.result(timeout=5.0) == "answer-c"
    assert first.wait_held() == "a" and second.wait_held() == "b"  # in the order the gates were made
    assert not a.done() and not b.done()
    second.release("replaced")
    first.release()
    assert a.result(timeout=5.0) == "answer-a"
    assert b.result(timeout=5.0) == "replaced"


def test_a_gate_can_fail_the_call_and_can_be_let_go_only_once(kit: TestKit) -> None:
    gates = Gates("fetch")
    gate = gates.hold("fetch")
    held = kit.node.io.submit(gates.answer("fetch", "x", "ok"))
    gate.wait_held()
    gate.fail(ConnectionError("late"))
    answer = held.result(timeout=5.0)
    assert isinstance(answer, ConnectionError)  # the fake raises what the gate answered
    with pytest.raises(RuntimeError, match="already"):
        gate.release()
    with pytest.raises(TypeError):
        gates.hold("fetch").fail("not an exception")  # type: ignore[arg-type]


def test_a_gate_let_go_before_the_call_comes_does_not_hold_it(kit: TestKit) -> None:
    gates = Gates("fetch")
    gate = gates.hold("fetch")
    gate.release("early")
    assert kit.node.io.submit(gates.answer("fetch", "x", "own")).result(timeout=5.0) == "early"
    assert gate.wait_held(timeout=SHORT) == "x" and not gate.held


def test_waiting_for_a_call_that_never_comes_times_out(kit: TestKit) -> None:
    gate = Gates("fetch").hold("fetch")
    with pytest.raises(Timeout, match="fetch"):
        gate.wait_held(timeout=SHORT)
    with pytest.raises(ValueError, match="register"):
        Gates("fetch").hold("register")
    assert isinstance(gate, Gate)


def test_a_call_held_when_the_kit_closes_is_cancelled() -> None:
    kit = TestKit()
    gates = Gates("fetch")
    gate = gates.hold("fetch")
    held = kit.node.io.submit(gates.answer("fetch", "x", "ok"))
    gate.wait_held()
    kit.close()
    assert held.cancelled()
    gate.release()  # harmless once the loop is gone
