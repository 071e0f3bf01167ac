"""Node metrics: the pure core (percentiles, rates), the gauge registry, and
the publisher through the test kit (manual clock, in-process bus)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actors.runtime.actor import HuddleActor
from actors.runtime.metrics import (
    BUS_RECONNECTS,
    LEASE_RENEW_LATENCY,
    ActorScan,
    InvalidGaugeName,
    MetricsPublisher,
    MetricsRegistry,
    NodeMetrics,
    NodeSample,
    percentile,
    summarize,
)
from actors.runtime.supervisor import Backoff, ChildSpec
from actors.runtime.testkit import TestKit
from bus.address import SYS_METRICS
from bus.envelope import Codec, Envelope
from bus.messages import Message, Ping
from bus.transport import InProcessTransport

from tests.actors.conftest import Recorder

# -- the core ---------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=300),
       st.floats(min_value=0.01, max_value=1.0))
def test_percentile_is_the_nearest_rank_of_the_sorted_values(values: list[int], q: float) -> None:
    histogram: dict[int, int] = {}
    for v in values:
        histogram[v] = histogram.get(v, 0) + 1
    ordered = sorted(values)
    assert percentile(histogram, q) == ordered[max(1, math.ceil(q * len(values))) - 1]


def test_percentile_of_nothing_is_zero() -> None:
    assert percentile({}, 0.99) == 0


def test_p99_of_a_hundred_idle_actors_and_one_busy_one_ignores_the_outlier() -> None:
    scan = ActorScan(at=1.0, kinds={"meeting": 100, "audio": 1}, depths={0: 100, 500: 1})
    sample = NodeSample(at=1.0, wall=100.0, actors=scan)
    metrics = summarize("n1", None, sample)
    assert (metrics.mailbox_depth_max, metrics.mailbox_depth_p99) == (500, 0)
    assert metrics.actors_by_kind == {"audio": 1, "meeting": 100}
    assert metrics.actors == 101


def test_first_sample_has_totals_but_no_rates() -> None:
    sample = NodeSample(at=5.0, wall=105.0, received=40, sent=30, restarts=2, crashes=3,
                        dead_letters={"unknown-address": 4, "mailbox-full": 1})
    metrics = summarize("n1", None, sample)
    assert metrics == NodeMetrics(
        node="n1", ts=105.0, received_total=40, sent_total=30, restarts_total=2, crashes_total=3,
        dead_letters_total=5, dead_letters_by_reason={"mailbox-full": 1, "unknown-address": 4},
    )


def test_rates_are_counter_deltas_over_the_time_between_samples() -> None:
    before = NodeSample(at=10.0, wall=110.0, received=100, sent=50, dead_letters={"expired": 1})
    after = NodeSample(at=12.0, wall=112.0, received=300, sent=150, dead_letters={"expired": 3, "mailbox-full": 2})
    metrics = summarize("n1", before, after)
    assert metrics.interval == 2.0
    assert (metrics.received_per_s, metrics.sent_per_s, metrics.dead_letters_per_s) == (100.0, 50.0, 2.0)


@example(a=0, b=1, t0=0.0, t1=5e-324)  # a subnormal interval: 1 / 5e-324 is infinite
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.floats(0.0, 100.0), st.floats(0.0, 100.0))
def test_rates_are_never_negative_nor_infinite(a: int, b: int, t0: float, t1: float) -> None:
    """A counter that went back (a restarted node) or a clock that did not
    move gives a rate of 0, not a negative or infinite one."""
    metrics = summarize("n", NodeSample(at=t0, wall=0.0, received=a), NodeSample(at=t1, wall=0.0, received=b))
    assert metrics.received_per_s >= 0.0 and math.isfinite(metrics.received_per_s)


def test_metrics_survive_the_codec() -> None:
    codec = Codec()
    scan = ActorScan(at=0.5, kinds={"echo": 2}, depths={1: 1, 2: 1})
    metrics = summarize("n1", None, NodeSample(at=1.0, wall=2.0, actors=scan, gauges={"x_s": 0.5}))
    assert metrics.actors_age == 0.5
    assert codec.roundtrip(Envelope(to=SYS_METRICS, message=metrics)).message == metrics


# -- the gauge registry ----------------------------------------------------------------


def test_registry_reads_each_source_and_leaves_out_the_broken_ones() -> None:
    registry = MetricsRegistry()
    registry.add_source(LEASE_RENEW_LATENCY, lambda: 0.002)
    registry.add_source("leases_held", lambda: 7)
    registry.add_source("not_yet", lambda: None)
    registry.add_source("broken", lambda: 1 / 0)
    registry.add_source("nan_gauge", lambda: float("nan"))
    registry.add_source("text_gauge", lambda: "7")  # type: ignore[arg-type,return-value]
    assert registry.read() == {LEASE_RENEW_LATENCY: 0.002, "leases_held": 7.0}
    assert registry.errors == 3


def test_registry_source_can_be_removed_and_names_are_checked() -> None:
    registry = MetricsRegistry()
    remove = registry.add_source("a_s", lambda: 1.0)
    assert registry.names() == ["a_s"]
    remove()
    assert registry.read() == {}
    for bad in ("", "Latency", "lease-latency", "1st", "a b"):
        with pytest.raises(InvalidGaugeName):
            registry.add_source(bad, lambda: 1.0)


# -- the publisher, through the test kit ------------------------------------------------


class Quiet(HuddleActor):
    def on_message(self, message: Message, envelope: Any) -> Any:
        if isinstance(message, Ping) and message.n < 0:
            raise RuntimeError("asked to crash")
        return None


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as k:
        yield k


@pytest.fixture
def published(kit: TestKit) -> Iterator[Recorder]:
    """Every NodeMetrics published on sys:metrics of the kit's bus."""
    got = Recorder()
    codec = Codec()
    spy = InProcessTransport(kit.hub, name="metrics-spy")
    spy.set_receiver(lambda channel, data: got.add(codec.decode(data).message))
    spy.subscribe(SYS_METRICS)
    spy.start()
    yield got
    spy.close()


def test_publisher_publishes_every_interval_of_the_node_clock(kit: TestKit, published: Recorder) -> None:
    publisher = MetricsPublisher(kit.node, interval=1.0).start()
    try:
        assert published.snapshot() == []  # the first sample is kept, not published
        kit.advance(1.0)
        kit.advance(1.0)
        assert published.wait_count(2)
        first, second = published.snapshot()
        assert isinstance(first, NodeMetrics) and first.node == "testkit"
        assert first.interval == 1.0 and second.ts == first.ts + 1.0
    finally:
        publisher.close()
    kit.advance(5.0)
    assert len(published.snapshot()) == 2  # closed: no more


def test_published_figures_count_actors_messages_dead_letters_restarts(kit: TestKit, published: Recorder) -> None:
    kit.spawn("echo:a", Quiet)
    kit.spawn("echo:b", Quiet)
    kit.supervise("sup:s", [ChildSpec("meeting:m1", Quiet)], backoff=Backoff(base=0.0, cap=0.0, jitter=False))
    kit.node.metrics.add_source(LEASE_RENEW_LATENCY, lambda: 0.004)
    publisher = MetricsPublisher(kit.node, interval=2.0).start()
    try:
        for n in range(10):
            kit.inject_message("echo:a", Ping(n=n))
        kit.inject_message("echo:nobody", Ping())
        kit.inject("echo:a", b"\xc1 not msgpack")
        kit.inject_message("meeting:m1", Ping(n=-1))
        kit.advance(0.0)  # the restart is a timer with no backoff
        kit.expect_event("restarted", "meeting:m1")
        kit.advance(2.0)
        assert published.wait_count(1)
        m: NodeMetrics = published.snapshot()[0]
    finally:
        publisher.close()
    assert m.actors_by_kind == {"echo": 2, "meeting": 1, "sup": 1}
    assert m.received_total >= 12 and m.received_per_s >= 12 / 2.0
    assert m.dead_letters_by_reason == {"not-msgpack": 1, "unknown-address": 1}
    assert m.dead_letters_total == 2 and m.dead_letters_per_s == 1.0
    assert (m.restarts_total, m.crashes_total) == (1, 1)
    assert m.gauges == {LEASE_RENEW_LATENCY: 0.004, BUS_RECONNECTS: 0.0}
    assert publisher.latest == m


def test_mailbox_depth_counts_messages_waiting_in_mailboxes(kit: TestKit) -> None:
    kit.spawn("echo:busy", Quiet)
    kit.spawn("echo:idle", Quiet)
    actor = kit.node.lookup("echo:busy")
    assert actor is not None
    inbox: Any = actor.actor_inbox
    inbox.hold()  # accept messages, run nothing: they wait in the mailbox
    try:
        for n in range(7):
            kit.inject_message("echo:busy", Ping(n=n))
        metrics = MetricsPublisher(kit.node, interval=None).sample()
    finally:
        inbox.kick()
    kit.settle()
    assert (metrics.mailbox_depth_max, metrics.mailbox_depth_p99) == (7, 7)
    assert MetricsPublisher(kit.node, interval=None).sample().mailbox_depth_max == 0


def test_publisher_stops_by_itself_when_the_transport_is_closed(kit: TestKit, published: Recorder) -> None:
    publisher = MetricsPublisher(kit.node, interval=1.0).start()
    kit.node.transport.close()
    kit.clock.advance(1.0)  # the tick finds the transport closed
    kit.clock.advance(5.0)
    assert publisher.published == 0 and kit.clock.pending() == 0


def test_interval_must_be_positive(kit: TestKit) -> None:
    with pytest.raises(ValueError, match="positive"):
        MetricsPublisher(kit.node, interval=0)


def test_an_expensive_actor_scan_is_repeated_only_within_the_cpu_budget(kit: TestKit, published: Recorder) -> None:
    """Counters are fresh every interval; actors are counted again only once
    the last scan's cost is under SCAN_CPU_BUDGET of the time since."""
    cpu = [0.0]

    def cpu_clock() -> float:  # every scan "costs" 0.05 s of CPU: rescan after 5 s
        cpu[0] += 0.05
        return cpu[0]

    kit.spawn("echo:a", Quiet)
    publisher = MetricsPublisher(kit.node, interval=1.0, cpu_clock=cpu_clock).start()
    try:
        kit.spawn("echo:b", Quiet)
        kit.inject_message("echo:a", Ping())
        kit.advance(1.0)
        kit.advance(1.0)
        assert published.wait_count(2)
        first, second = published.snapshot()
        assert (first.actors, first.actors_age, second.actors_age) == (1, 1.0, 2.0)  # not rescanned yet
        assert second.received_total >= 1  # counters are fresh every time
        kit.advance(3.0)  # 5 s after the first scan: rescanned
        assert published.wait_count(5)
        latest = published.snapshot()[-1]
        assert (latest.actors, latest.actors_age, publisher.scans) == (2, 0.0, 2)
    finally:
        publisher.close()
