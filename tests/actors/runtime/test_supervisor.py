"""Supervision with OTP semantics, driven through the test kit.

Crashes are caused by injecting a message whose handler raises; restarts
are timers, so the manual clock decides when they happen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.pooled import PooledFuture
from actors.runtime.supervisor import Backoff, ChildSpec, Restart, Strategy, Supervisor, restart_rng
from actors.runtime.testkit import TestKit
from bus.envelope import Envelope
from bus.messages import Message, Ping, message_kind


@message_kind("test.sup.crash")
@dataclass(frozen=True, slots=True)
class Crash(Message):
    pass


@message_kind("test.sup.remember")
@dataclass(frozen=True, slots=True)
class Remember(Message):
    value: str


@message_kind("test.sup.whoami")
@dataclass(frozen=True, slots=True)
class WhoAmI(Message):
    pass


class Worker(HuddleActor):
    """Remembers values (and checkpoints them); crashes on request."""

    def __init__(self, ctx: ActorContext, label: str) -> None:
        super().__init__(ctx)
        self.label = label
        self.values: list[str] = list((ctx.checkpoint or {}).get("values", []))

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError("asked to crash")
        if isinstance(message, Remember):
            self.values.append(message.value)
            self.checkpoint({"values": self.values})
            return None
        if isinstance(message, WhoAmI):
            return {"label": self.label, "incarnation": self.ctx.incarnation, "values": self.values}
        if isinstance(message, Ping):
            return message.n
        return super().on_message(message, envelope)

    def on_failure(self, *exc_info: Any) -> None:
        # Deliberately silent: the supervisor must learn of the crash from
        # the runtime, not from the crashed actor.
        pass


NO_JITTER = Backoff(base=0.1, cap=1.0, jitter=False)


def spec(address: str, restart: Restart = Restart.PERMANENT) -> ChildSpec:
    return ChildSpec(address, Worker, args=(address.split(":")[1],), restart=restart)


def who(kit: TestKit, address: str) -> dict[str, Any]:
    return kit.ask(address, WhoAmI()).get(timeout=5)


@pytest.fixture
def kit() -> Any:
    with TestKit() as k:
        yield k


def crash(kit: TestKit, address: str) -> None:
    kit.inject_message(address, Crash())
    kit.expect_event("crashed", address)
    kit.settle()


def test_one_for_one_restarts_only_the_crashed_child_at_the_same_address(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a"), spec("w:b")], backoff=NO_JITTER)
    before_b = kit.node.lookup("w:b")
    kit.inject_message("w:a", Remember("kept"))
    crash(kit, "w:a")

    assert kit.node.lookup("w:a") is None, "restart must wait for the backoff"
    kit.advance(0.1)
    kit.expect_event("restarted", "w:a")

    a = who(kit, "w:a")
    assert a == {"label": "a", "incarnation": 2, "values": ["kept"]}  # args + checkpoint back
    assert kit.node.lookup("w:b") is before_b  # sibling untouched
    assert who(kit, "w:b")["incarnation"] == 1


def test_messages_sent_while_a_child_is_down_reach_the_next_incarnation(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a")], backoff=NO_JITTER)
    crash(kit, "w:a")
    kit.inject_message("w:a", Remember("while-down"))
    assert not kit.events_named("dead-letter", "w:a")
    kit.advance(0.1)
    assert who(kit, "w:a")["values"] == ["while-down"]


def test_one_for_all_restarts_every_child(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a"), spec("w:b"), spec("w:c")], strategy=Strategy.ONE_FOR_ALL, backoff=NO_JITTER)
    crash(kit, "w:b")
    kit.advance(0.1)
    assert [who(kit, a)["incarnation"] for a in ("w:a", "w:b", "w:c")] == [2, 2, 2]
    # the siblings were stopped by the supervisor, not crashed
    assert not kit.events_named("crashed", "w:a") and not kit.events_named("crashed", "w:c")
    assert kit.events_named("stopped", "w:a") and kit.events_named("stopped", "w:c")


def test_rest_for_one_restarts_the_child_and_those_started_after_it(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a"), spec("w:b"), spec("w:c")], strategy="rest_for_one", backoff=NO_JITTER)
    crash(kit, "w:b")
    kit.advance(0.1)
    assert [who(kit, a)["incarnation"] for a in ("w:a", "w:b", "w:c")] == [1, 2, 2]


def test_restarted_children_start_in_spec_order(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a"), spec("w:b"), spec("w:c")], strategy=Strategy.ONE_FOR_ALL, backoff=NO_JITTER)
    crash(kit, "w:a")
    kit.advance(0.1)
    restarted = [e.address for e in kit.events_named("restarted")]
    assert restarted == ["w:a", "w:b", "w:c"]


def test_transient_child_is_restarted_after_a_crash_but_not_after_a_normal_stop(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:t", Restart.TRANSIENT)], backoff=NO_JITTER)
    crash(kit, "w:t")
    kit.advance(0.1)
    assert who(kit, "w:t")["incarnation"] == 2

    kit.node.stop_actor("w:t")
    kit.advance(10)
    assert kit.node.lookup("w:t") is None
    kit.inject_message("w:t", Ping())
    kit.expect_event("dead-letter", "w:t", reason="unknown-address")


def test_temporary_child_is_never_restarted(kit: TestKit) -> None:
    sup = kit.supervise("sup:s", [spec("w:tmp", Restart.TEMPORARY), spec("w:p")], backoff=NO_JITTER)
    kit.node.save_checkpoint("w:tmp", 0, {"n": 1})
    crash(kit, "w:tmp")
    kit.advance(10)
    assert kit.node.lookup("w:tmp") is None
    assert [c["address"] for c in sup.which_children()] == ["w:p"]
    assert kit.node.checkpoints.load("w:tmp") is None  # given up: no incarnation will restore it


def test_permanent_child_is_restarted_even_after_a_normal_stop(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:p")], backoff=NO_JITTER)
    kit.node.stop_actor("w:p")
    kit.advance(0.1)
    assert who(kit, "w:p")["incarnation"] == 2


def test_intensity_exceeded_escalates_stops_children_and_crashes_the_supervisor(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a"), spec("w:b")], backoff=NO_JITTER)  # default: 1 restart in 5 s
    crash(kit, "w:a")
    kit.advance(0.1)
    crash(kit, "w:a")  # second crash within 5 s
    kit.expect_event("escalated", "sup:s")
    kit.expect_event("crashed", "sup:s", reason="SupervisorEscalated")
    kit.settle()
    assert kit.node.lookup("w:b") is None
    assert kit.node.lookup("sup:s") is None
    kit.advance(10)
    assert kit.node.lookup("w:a") is None  # nobody restarts it


def test_restarts_spread_beyond_the_period_do_not_escalate(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a")], backoff=NO_JITTER)
    for expected in (2, 3, 4):
        crash(kit, "w:a")
        kit.advance(6)  # past the 5 s period
        assert who(kit, "w:a")["incarnation"] == expected
    assert not kit.events_named("escalated")


def test_escalation_reaches_the_parent_which_restarts_the_subtree(kit: TestKit) -> None:
    inner = ChildSpec("sup:inner", Supervisor, args=([spec("w:leaf")],), kwargs={"backoff": NO_JITTER})
    kit.supervise("sup:outer", [inner, spec("w:x")], intensity=3, backoff=NO_JITTER)
    kit.settle()
    crash(kit, "w:leaf")
    kit.advance(0.1)
    crash(kit, "w:leaf")  # inner gives up
    kit.expect_event("escalated", "sup:inner")
    kit.advance(0.1)
    kit.expect_event("restarted", "sup:inner")
    kit.settle()
    leaf = who(kit, "w:leaf")
    assert leaf["values"] == [] and leaf["label"] == "leaf"
    assert who(kit, "w:x")["incarnation"] == 1  # outer's other child untouched


def test_backoff_grows_exponentially_with_jitter_inside_each_step() -> None:
    backoff = Backoff(base=1.0, cap=32.0)
    rng = random.Random(7)
    for attempt, full in enumerate([1, 2, 4, 8, 16, 32, 32]):
        for _ in range(50):
            d = backoff.delay(attempt, rng)
            assert full / 2 <= d <= full


def test_restart_waits_for_the_backoff(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a")], intensity=5, backoff=Backoff(base=1.0, cap=8.0, jitter=False))
    crash(kit, "w:a")
    kit.advance(0.9)
    assert kit.node.lookup("w:a") is None
    kit.advance(0.1)
    assert who(kit, "w:a")["incarnation"] == 2
    crash(kit, "w:a")  # second restart within the period waits twice as long
    kit.advance(1.9)
    assert kit.node.lookup("w:a") is None
    kit.advance(0.1)
    assert who(kit, "w:a")["incarnation"] == 3


def test_stopping_the_supervisor_stops_its_children_for_good(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a"), spec("w:b")], backoff=NO_JITTER)
    kit.node.stop_actor("sup:s")
    kit.settle()
    assert kit.node.lookup("w:a") is None and kit.node.lookup("w:b") is None
    kit.advance(10)
    assert kit.node.addresses() == []
    assert not kit.events_named("dead-letter")


class FailsToStart(HuddleActor):
    def __init__(self, ctx: ActorContext) -> None:
        raise RuntimeError("cannot start")


def test_started_is_set_once_every_child_is_started_without_blocking_anyone(kit: TestKit) -> None:
    kit.node.spawn("sup:s", Supervisor, [spec("w:a"), spec("w:b")])
    supervisor = kit.node.lookup("sup:s")
    assert isinstance(supervisor, Supervisor)
    seen: list[tuple[bool, bool]] = []
    supervisor.started.add_done_callback(
        lambda _f: seen.append((kit.node.lookup("w:a") is not None, kit.node.lookup("w:b") is not None)))
    supervisor.started.get(timeout=5)
    assert seen == [(True, True)]  # when it fired, both children were there


class KeptSupervisor(Supervisor):
    """Keeps each instance: one that fails at once may be gone from its
    address before a lookup could find it."""

    made: ClassVar[list[Supervisor]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        KeptSupervisor.made.append(self)


def test_started_fails_when_a_child_cannot_be_started(kit: TestKit) -> None:
    KeptSupervisor.made.clear()
    kit.node.spawn("sup:s", KeptSupervisor, [spec("w:a"), ChildSpec("w:broken", FailsToStart)])
    [supervisor] = KeptSupervisor.made
    with pytest.raises(RuntimeError, match="cannot start"):
        supervisor.started.get(timeout=5)


# -- a supervisor never blocks --------------------------------------------------------

#: What a ``SlowToStop`` child's exit waits for (set by the test).
GATES: dict[str, PooledFuture[None]] = {}


class SlowToStop(Worker):
    """Its exit is reported only once the test opens its gate (a child
    whose stop takes time: it closes a socket, flushes a file)."""

    def on_stop(self) -> None:
        self.exit_after(GATES[self.address])


def slow(address: str) -> ChildSpec:
    return ChildSpec(address, SlowToStop, args=(address.split(":")[1],), shutdown_timeout=2.0)


def test_a_supervisor_runs_on_the_nodes_loop(kit: TestKit) -> None:
    kit.supervise("sup:s", [spec("w:a")], backoff=NO_JITTER)
    supervisor = kit.node.lookup("sup:s")
    assert supervisor is not None and not Supervisor.blocking
    assert supervisor.actor_inbox._dispatcher is kit.node.dispatcher


def test_a_child_that_does_not_stop_in_time_is_left_and_the_next_is_stopped(kit: TestKit) -> None:
    GATES["w:slow"] = gate = PooledFuture()
    kit.supervise("sup:s", [spec("w:a"), slow("w:slow")], backoff=NO_JITTER)
    kit.node.request_stop("sup:s")
    kit.advance(1.9)  # newest first: w:slow is asked, w:a waits its turn
    assert kit.node.lookup("w:a") is not None and kit.node.lookup("sup:s") is not None
    assert not kit.events_named("stop-timeout")
    kit.advance(0.1)  # w:slow's shutdown_timeout runs out on the node's clock
    kit.expect_event("stop-timeout", "w:slow")
    kit.expect_event("stopped", "sup:s")
    names = [(e.event, e.address) for e in kit.events if e.event in ("stop-timeout", "stopped")]
    assert names.index(("stop-timeout", "w:slow")) < names.index(("stopped", "w:a")) < names.index(("stopped", "sup:s"))
    assert kit.node.lookup("w:slow") is not None  # left to the node
    gate.set(None)
    kit.expect_event("stopped", "w:slow")


def test_a_restart_waits_for_the_exit_of_a_child_that_is_still_stopping(kit: TestKit) -> None:
    GATES["w:slow"] = gate = PooledFuture()
    kit.supervise("sup:s", [spec("w:a"), slow("w:slow")], strategy=Strategy.ONE_FOR_ALL, intensity=3,
                  backoff=NO_JITTER)
    crash(kit, "w:a")  # one_for_all: w:slow is stopped too, and takes its time
    kit.advance(0.1)  # both restarts are due
    assert who(kit, "w:a")["incarnation"] == 2
    old = kit.node.lookup("w:slow")
    assert old is not None and old.ctx.incarnation == 1  # still stopping: its restart waits
    GATES["w:slow"] = PooledFuture()
    gate.set(None)
    kit.expect_event("restarted", "w:slow")
    kit.settle()
    assert who(kit, "w:slow")["incarnation"] == 2
    assert not kit.events_named("crashed", "sup:s")
    GATES["w:slow"].set(None)  # the second incarnation stops at once when the kit ends (not after 10 s)


def test_an_exit_of_a_child_another_incarnation_started_restarts_nothing(kit: TestKit) -> None:
    """The exits of an earlier incarnation's children (under another
    lease) reach the tree's next incarnation, through the backlog, while
    the same child's start is still to come (its lease being claimed): it
    does not run here yet, and restarting it on such an exit crashed the
    supervisor once the start came (address in use) and left the children
    running without their tree (found by the cluster webinar simulation).
    An exit names the epoch of the supervisor that started the child; one
    of another epoch is dropped, with an event, whether the child runs or
    not."""
    from actors.runtime.messages import ChildExit

    kit.supervise("sup:s", [spec("w:t", Restart.TRANSIENT)], backoff=NO_JITTER)
    assert who(kit, "w:t")["incarnation"] == 1
    kit.node.stop_actor("w:t")  # a normal stop: a transient child stays down
    kit.advance(10)
    assert kit.node.lookup("w:t") is None
    kit.inject_message("sup:s", ChildExit(address="w:t", crashed=True, reason="lease-expired", incarnation=1,
                                          parent_epoch=77), sender="w:t")
    dropped = kit.expect_event("stale-dropped", "w:t")
    assert dropped.detail["parent_epoch"] == 77
    kit.advance(10)
    kit.settle()
    assert kit.node.lookup("w:t") is None and not kit.events_named("restarted", "w:t")
    assert kit.node.lookup("sup:s") is not None


def test_an_exit_of_a_child_that_runs_here_is_another_incarnations_and_changes_nothing(kit: TestKit) -> None:
    """A tree that moved between nodes gets the exits of its former
    children there (they follow the tree's address): restarting a child
    that runs here crashed the supervisor (address in use) and took the
    whole tree down (found by the webinar simulation with meeting trees as
    cluster members). Such an exit is dropped, with an event."""
    from actors.runtime.messages import ChildExit

    kit.supervise("sup:s", [spec("w:a"), spec("w:b")], backoff=NO_JITTER)
    before = kit.node.lookup("w:a")
    kit.inject_message("sup:s", ChildExit(address="w:a", crashed=True, reason="lease-expired", incarnation=1),
                       sender="w:a")
    kit.expect_event("stale-dropped", "w:a")
    kit.advance(1.0)
    kit.settle()
    assert kit.node.lookup("w:a") is before and kit.node.lookup("sup:s") is not None
    assert who(kit, "w:a")["incarnation"] == 1


def test_an_unseeded_supervisors_restart_jitter_follows_the_process_generator() -> None:
    """So a simulated world, which seeds the process's generator, is the
    same run every time (the cluster webinar simulation replayed a seed
    differently when a tree restarted a child: its jitter came from the
    operating system)."""
    import random

    backoff = Backoff()
    random.seed("replay")
    first = [backoff.delay(n, restart_rng(None)) for n in range(4)]
    random.seed("replay")
    assert [backoff.delay(n, restart_rng(None)) for n in range(4)] == first
    assert restart_rng(7).random() == random.Random(7).random()
