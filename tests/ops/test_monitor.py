"""The monitor's core: what it makes of what arrives on the system channels,
and how it draws it. No I/O here (the real thing runs in
tests/integration/test_observability.py)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from rich.console import Console

from actors.runtime.gcpolicy import GC_PAUSE_MAX
from actors.runtime.metrics import LEASE_RENEW_LATENCY, NodeMetrics
from ops.monitor import MonitorState, render
from bus.address import SYS_EVENTS, SYS_METRICS, SYS_NODES
from bus.envelope import Envelope
from bus.messages import Event, Message, MessageRegistry, message_kind

HEARTBEATS = MessageRegistry()


@message_kind("test.heartbeat", registry=HEARTBEATS)
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    node_id: str


def metrics(node: str, ts: float, **figures: object) -> Envelope:
    return Envelope(to=SYS_METRICS, message=NodeMetrics(node=node, ts=ts, **figures),  # type: ignore[arg-type]
                    sender=f"node:{node}")


def event(node: str, name: str, address: str = "", reason: str = "", ts: float = 0.0) -> Envelope:
    return Envelope(to=SYS_EVENTS, message=Event(event=name, node=node, address=address, reason=reason, ts=ts),
                    sender=f"node:{node}")


def test_metrics_of_two_nodes_add_up_in_the_totals() -> None:
    state = MonitorState()
    state.observe(SYS_METRICS, metrics("a", 100.0, interval=1.0, actors=3, actors_by_kind={"echo": 2, "meeting": 1},
                                       received_per_s=10.0, sent_per_s=4.0, restarts_total=1,
                                       dead_letters_total=2), now=100.0)
    state.observe(SYS_METRICS, metrics("b", 100.0, interval=1.0, actors=1, actors_by_kind={"echo": 1},
                                       received_per_s=5.0, sent_per_s=1.0), now=100.5)
    snap = state.snapshot(now=101.0)
    assert [n["node"] for n in snap["nodes"]] == ["a", "b"]
    assert snap["nodes"][0]["metrics"]["actors_by_kind"] == {"echo": 2, "meeting": 1}
    assert snap["totals"] == {"nodes": 2, "live_nodes": 2, "actors": 4, "received_per_s": 15.0, "sent_per_s": 5.0,
                              "restarts_total": 1, "dead_letters_total": 2,
                              "actors_by_kind": {"echo": 3, "meeting": 1}}
    assert state.nodes_with_metrics() == 2
    json.dumps(snap)  # JSON-able as it is


def test_a_node_not_heard_from_for_three_intervals_is_stale_and_leaves_the_live_totals() -> None:
    state = MonitorState()
    state.observe(SYS_METRICS, metrics("a", 100.0, interval=2.0, actors=5, actors_by_kind={"echo": 5}), now=100.0)
    assert not state.snapshot(now=105.9)["nodes"][0]["stale"]
    snap = state.snapshot(now=106.1)
    assert snap["nodes"][0]["stale"] and snap["totals"]["live_nodes"] == 0 and snap["totals"]["actors"] == 0
    # Anything from the node (an event) counts as a sign of life.
    state.observe(SYS_EVENTS, event("a", "started", "echo:9"), now=106.5)
    assert not state.snapshot(now=107.0)["nodes"][0]["stale"]


def test_events_are_kept_newest_last_and_counted() -> None:
    state = MonitorState(recent_events=3)
    for i in range(5):
        state.observe(SYS_EVENTS, event("a", "dead-letter", f"echo:{i}", "unknown-address", ts=float(i)), now=1.0)
    state.observe(SYS_EVENTS, event("b", "crashed", "meeting:m", "RuntimeError"), now=1.0)
    snap = state.snapshot(now=2.0)
    assert [e["address"] for e in snap["events"]] == ["echo:3", "echo:4", "meeting:m"]
    assert snap["event_counts"] == {"crashed": 1, "dead-letter": 5}
    assert {n["node"] for n in snap["nodes"]} == {"a", "b"}
    assert all(n["metrics"] is None for n in snap["nodes"])


def test_heartbeats_name_their_node_by_sender_or_field() -> None:
    state = MonitorState()
    state.observe(SYS_NODES, Envelope(to=SYS_NODES, message=Heartbeat(node_id="c")), now=5.0)
    state.observe(SYS_NODES, Envelope(to=SYS_NODES, message=Heartbeat(node_id="c")), now=6.0)
    state.observe(SYS_NODES, Envelope(to=SYS_NODES, message=Heartbeat(node_id="x"), sender="node:d"), now=6.0)
    snap = state.snapshot(now=6.0)
    assert [(n["node"], n["heartbeats"]) for n in snap["nodes"]] == [("c", 2), ("d", 1)]


def test_what_does_not_decode_is_counted_by_reason_only() -> None:
    state = MonitorState()
    state.refused("unknown-kind")
    state.refused("bad-signature")
    state.refused("bad-signature")
    snap = state.snapshot(now=0.0)
    assert snap["undecodable"] == {"bad-signature": 2, "unknown-kind": 1}
    assert snap["messages"] == 3 and snap["nodes"] == []


def test_render_shows_nodes_kinds_rates_lease_latency_gc_pauses_and_events() -> None:
    state = MonitorState()
    state.observe(SYS_METRICS, metrics("node-a", 50.0, interval=1.0, actors=2, actors_by_kind={"meeting": 2},
                                       received_per_s=12_345.0, mailbox_depth_max=9, mailbox_depth_p99=1,
                                       dead_letters_by_reason={"mailbox-full": 3},
                                       gauges={LEASE_RENEW_LATENCY: 0.0021, GC_PAUSE_MAX: 0.087},
                                       actors_age=7.2), now=50.0)
    state.observe(SYS_EVENTS, event("node-a", "restarted", "meeting:m-42", ts=50.0), now=50.0)
    state.refused("unsigned")
    out = io.StringIO()
    Console(file=out, width=200).print(render(state.snapshot(now=50.2)))
    text = out.getvalue()
    for expected in ("node-a", "2 (7s old)", "meeting 2", "12.3k", "9/1", "mailbox-full 3", "2.1 ms", "87 ms", "restarted",
                     "meeting:m-42", "undecodable: unsigned 1", "1/1 nodes live"):
        assert expected in text, expected
