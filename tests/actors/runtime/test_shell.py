"""The shell of a sans-I/O core (MachineActor): common effects, timers by key, answers, events about another address."""

from __future__ import annotations

from dataclasses import dataclass

from actors.runtime.effects import Answer, CancelTimer, Emit, SaveCheckpoint, Send, StartTimer
from actors.runtime.shell import MachineActor
from actors.runtime.supervisor import ChildSpec
from actors.runtime.testkit import TestKit
from bus.messages import Message, Ping, message_kind


@message_kind("test.machine-cmd")
@dataclass(frozen=True, slots=True)
class Cmd(Message):
    op: str
    n: int = 0


@message_kind("test.machine-tick")
@dataclass(frozen=True, slots=True)
class Tick(Message):
    n: int


@message_kind("test.machine-outcome")
@dataclass(frozen=True, slots=True)
class Outcome(Message):
    """What only the actor itself sends (an I/O outcome)."""

    n: int


class Counter(MachineActor):
    public_kinds = frozenset({Cmd})
    internal_kinds = frozenset({Tick, Outcome})
    """The core is inline here: the shell is what is under test."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.ticks: list[int] = []

    def step(self, message, envelope, now):
        if isinstance(message, Outcome):
            return [Emit("outcome", detail={"n": message.n})]
        if isinstance(message, Tick):
            self.ticks.append(message.n)
            return [Send("probe:1", Ping(n=message.n))]
        if isinstance(message, Cmd):
            match message.op:
                case "timer":
                    return [StartTimer("t", 5.0, Tick(n=message.n))]
                case "cancel":
                    return [CancelTimer("t")]
                case "event":
                    return [Emit("counted", reason="because", detail={"n": message.n})]
                case "event-about":
                    return [Emit("seen", detail={"n": message.n}, address="peer:9")]
                case "save":
                    return [SaveCheckpoint({"n": message.n}), Answer(message.n + 1)]
                case "send-then-save":
                    # The core lists its checkpoint last; the shell writes it first.
                    return [Send("probe:1", Ping(n=message.n)), Emit("boom"), SaveCheckpoint({"n": message.n})]
                case "lookup-bug":
                    return [Emit("never", detail={"n": {}["missing"]})]  # a core with a bug: KeyError
        raise AssertionError(f"the shell base passed {message!r}")


def test_timer_with_the_same_key_replaces_the_old_one() -> None:
    with TestKit() as kit:
        probe = kit.probe("probe:1")
        actor = kit.spawn("counter:1", Counter)
        kit.inject_message("counter:1", Cmd(op="timer", n=1))
        kit.advance(3)
        kit.inject_message("counter:1", Cmd(op="timer", n=2))
        kit.advance(3)  # the first timer's time has passed: replaced, so nothing
        assert actor.ticks == []
        kit.advance(2)
        assert actor.ticks == [2]
        message, _ = probe.expect_message(Ping)
        assert message == Ping(n=2)


def test_cancelled_timer_never_fires() -> None:
    with TestKit() as kit:
        actor = kit.spawn("counter:2", Counter)
        kit.inject_message("counter:2", Cmd(op="timer", n=1))
        kit.inject_message("counter:2", Cmd(op="cancel"))
        kit.advance(10)
        assert actor.ticks == []


def test_emit_checkpoint_and_answer() -> None:
    with TestKit() as kit:
        kit.spawn("counter:3", Counter)
        kit.inject_message("counter:3", Cmd(op="event", n=7))
        ev = kit.expect_event("counted", "counter:3", reason="because")
        assert ev.detail == {"n": 7}
        kit.inject_message("counter:3", Cmd(op="event-about", n=8))
        about = kit.expect_event("seen", "peer:9")  # the address the core named, not the actor's
        assert about.detail == {"n": 8}
        assert kit.ask("counter:3", Cmd(op="save", n=4)).get(timeout=5) == 5
        assert kit.node.checkpoints.load("counter:3") is not None


def test_unknown_kind_is_a_dead_letter_and_the_actor_keeps_running() -> None:
    with TestKit() as kit:
        actor = kit.spawn("counter:4", Counter)
        kit.inject_message("counter:4", Ping(n=1))
        kit.expect_event("dead-letter", "counter:4", reason="unhandled-kind")
        kit.inject_message("counter:4", Tick(n=3), sender="counter:4")
        kit.settle()
        assert actor.ticks == [3]


def test_an_internal_kind_reaches_the_core_only_from_the_actor_itself() -> None:
    with TestKit() as kit:
        actor = kit.spawn("counter:5", Counter)
        kit.inject_message("counter:5", Outcome(n=1), sender="mallory:1")
        refused = kit.expect_event("bad-input", "counter:5", reason="not-from-self")
        assert refused.detail == {"kind": "test.machine-outcome", "sender": "mallory:1"}
        kit.inject_message("counter:5", Tick(n=2))  # no sender at all: not the actor either
        kit.expect_event("bad-input", "counter:5", reason="not-from-self")
        kit.settle()
        assert actor.ticks == [] and not kit.events_named("outcome", "counter:5")
        kit.inject_message("counter:5", Outcome(n=3), sender="counter:5")
        assert kit.expect_event("outcome", "counter:5").detail == {"n": 3}
        assert actor.actor_ref.is_alive()


def test_an_internal_kind_of_another_incarnation_is_refused() -> None:
    """The same address, another lease: what an incarnation that ran
    elsewhere sent itself (a socket of its closing after the address moved
    here) carries that incarnation's epoch, and its generations may be this
    one's too; it never reaches this core."""
    with TestKit() as kit:
        actor = kit.spawn("counter:6", Counter)
        assert actor.epoch == 0
        kit.inject_message("counter:6", Outcome(n=1), sender="counter:6", epoch=41)
        refused = kit.expect_event("bad-input", "counter:6", reason="other-incarnation")
        assert refused.detail == {"kind": "test.machine-outcome", "epoch": 41}
        kit.settle()
        assert not kit.events_named("outcome", "counter:6")
        kit.inject_message("counter:6", Outcome(n=2), sender="counter:6")  # its own epoch
        assert kit.expect_event("outcome", "counter:6").detail == {"n": 2}
        assert actor.actor_ref.is_alive()


def test_a_core_that_raises_a_lookup_error_crashes_the_actor_and_is_never_a_dead_letter() -> None:
    with TestKit() as kit:
        kit.supervise("sup:bug", [ChildSpec("counter:bug", Counter)])
        kit.settle()
        kit.inject_message("counter:bug", Cmd(op="lookup-bug"))
        kit.expect_event("crashed", "counter:bug", reason="KeyError")
        assert not kit.events_named("dead-letter", "counter:bug")


class Exploding(Counter):
    """Its shell fails on the second effect of a step (an I/O effect that
    raises midway)."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.restored = ctx.checkpoint

    def perform(self, effect) -> None:
        if isinstance(effect, Emit) and effect.event == "boom":
            raise RuntimeError("effect failed midway")
        super().perform(effect)


def test_a_steps_checkpoint_is_written_before_its_effects_so_a_crash_midway_restarts_from_it() -> None:
    with TestKit() as kit:
        probe = kit.probe("probe:1")
        kit.supervise("sup:wa", [ChildSpec("counter:wa", Exploding)])
        kit.settle()
        first = kit.node.lookup("counter:wa")
        assert first.restored is None
        kit.inject_message("counter:wa", Cmd(op="send-then-save", n=9))
        kit.expect_event("crashed", "counter:wa")
        probe.expect_message(Ping)  # the effect before the failing one ran
        kit.advance(1)  # the restart backoff
        restarted = kit.node.lookup("counter:wa")
        assert restarted is not first
        assert restarted.restored == {"n": 9}  # what the step wanted, not what it had before
