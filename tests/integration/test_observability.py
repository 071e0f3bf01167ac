"""Monitoring through the bus with real processes and a real Redis:
``huddle node`` publishes sys:metrics and serves Prometheus figures,
``huddle monitor --once --json`` and ``huddle tap`` read them."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from actors.sessions.contracts.token import TokenGranted
from actors.runtime.metrics import NodeMetrics
from actors.runtime.node import Node
from ops.tap import REDACTED, TapRecord, tap_channel
from bus.address import SYS_METRICS
from bus.envelope import Codec
from bus.errors import DecodeError, UnknownAddress
from bus.messages import Ping, Pong

from .conftest import DEADLINE, Command, NodeProcess, NodeProcesses, listening, unique

pytestmark = pytest.mark.integration

FAST_METRICS = ("--metrics-interval", "0.2")


class MetricsLog:
    """Every NodeMetrics published on sys:metrics while it listens."""

    def __init__(self) -> None:
        self.items: list[NodeMetrics] = []
        self._codec = Codec()
        self._cond = threading.Condition()

    def __call__(self, channel: str, data: bytes) -> None:
        try:
            message = self._codec.decode(data).message
        except DecodeError:
            return
        if isinstance(message, NodeMetrics):
            with self._cond:
                self.items.append(message)
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[NodeMetrics], bool], what: str) -> NodeMetrics:
        found: list[NodeMetrics] = []

        def seen() -> bool:
            found[:] = [m for m in self.items if predicate(m)]
            return bool(found)

        with self._cond:
            assert self._cond.wait_for(seen, DEADLINE), f"no metrics {what}; saw {[m.node for m in self.items][-10:]}"
        return found[0]


@pytest.fixture
def metrics_log(redis_url: str) -> Iterator[MetricsLog]:
    log = MetricsLog()
    with listening(redis_url, log, SYS_METRICS):
        yield log


def test_node_processes_publish_metrics_and_monitor_once_json_shows_them(
    node_procs: NodeProcesses, metrics_log: MetricsLog, local_node: Node, redis_url: str,
    commands: Callable[..., Command],
) -> None:
    a = node_procs.start("echo:mon-a", "meeting:mon-m", options=FAST_METRICS)
    b = node_procs.start("echo:mon-b", options=FAST_METRICS)
    for n in range(5):
        assert local_node.ask("echo:mon-a", Ping(n=n)).get(timeout=DEADLINE) == Pong(n=n)
    local_node.tell("echo:mon-a", Ping(n=99))  # Echo tells a pong back to nobody: no sender
    published = metrics_log.wait_for(lambda m: m.node == a.node_id and m.received_total >= 6, "of node A's asks")
    assert published.actors_by_kind == {"echo": 1, "meeting": 1}
    assert published.interval > 0 and published.mailbox_depth_max >= 0
    # The collector's work: the start-up collection before the freeze at least.
    assert published.gauges["gc_collections"] >= 1 and published.gauges["gc_seconds"] > 0
    assert "gc_pause_max_s" in published.gauges

    monitor = commands("monitor", "--once", "--json", "--min-nodes", "2", "--timeout", str(DEADLINE),
                       env={"REDIS_URL": redis_url})
    assert monitor.wait(DEADLINE + 5) == 0, monitor.stderr
    snapshot = json.loads(monitor.stdout[-1])
    by_node = {n["node"]: n for n in snapshot["nodes"]}
    assert {a.node_id, b.node_id} <= set(by_node)
    figures_a = by_node[a.node_id]["metrics"]
    assert figures_a["actors_by_kind"] == {"echo": 1, "meeting": 1}
    assert figures_a["received_total"] >= 6
    assert by_node[b.node_id]["metrics"]["actors_by_kind"] == {"echo": 1}
    assert not by_node[a.node_id]["stale"]
    assert snapshot["totals"]["actors_by_kind"]["echo"] >= 2


def test_monitor_once_fails_clearly_when_too_few_nodes_report(redis_url: str,
                                                              commands: Callable[..., Command]) -> None:
    monitor = commands("monitor", "--once", "--json", "--min-nodes", "1000", "--timeout", "0.5",
                       env={"REDIS_URL": redis_url})
    assert monitor.wait() == 1
    assert "wanted 1000" in "\n".join(monitor.stderr)
    assert "nodes" in json.loads(monitor.stdout[-1])


def _metrics_url(node: NodeProcess) -> str:
    match = re.search(r"prometheus metrics at (http://\S+)", node.output())
    assert match, node.output()
    return match.group(1)


def test_prometheus_endpoint_of_a_node_process_is_scraped_over_http(
    node_procs: NodeProcesses, metrics_log: MetricsLog, local_node: Node
) -> None:
    node = node_procs.start("echo:prom-1", options=(*FAST_METRICS, "--metrics-port", "0"))
    for n in range(3):
        local_node.ask("echo:prom-1", Ping(n=n)).get(timeout=DEADLINE)
    local_node.tell("echo:prom-gone", Ping())  # a dead letter on the test node, not this one
    metrics_log.wait_for(lambda m: m.node == node.node_id and m.received_total >= 3, "after the asks")
    with urllib.request.urlopen(_metrics_url(node), timeout=DEADLINE) as response:
        text = response.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    me = (("node", node.node_id),)
    assert samples[("huddle_actors", (("kind", "echo"), ("node", node.node_id)))] == 1
    assert samples[("huddle_messages_received_total", me)] >= 3
    assert samples[("huddle_messages_sent_total", me)] >= 3  # the pongs
    assert ("huddle_mailbox_depth_p99", me) in samples and ("huddle_restarts_total", me) in samples
    assert samples[("huddle_gc_collections", me)] >= 1 and ("huddle_gc_pause_max_s", me) in samples


# -- huddle tap ---------------------------------------------------------------------


def _armed(tap: Command, node: NodeProcess) -> None:
    tap.wait_line(lambda line: f"armed on node {node.node_id}" in line, stream="stderr")


def test_tap_prints_each_message_to_one_address_as_a_json_line(
    node_procs: NodeProcesses, local_node: Node, redis_url: str, redis_client: redis.Redis,
    commands: Callable[..., Command],
) -> None:
    node = node_procs.start("echo:tap-1", "echo:tap-other")
    tap = commands("tap", "echo:tap-1", "--json", "--count", "4", "--for", str(DEADLINE * 2),
                   env={"REDIS_URL": redis_url})
    _armed(tap, node)
    # The tap listens on sys:tap:echo:tap-1, never on the address's own channel.
    assert redis_client.pubsub_numsub("echo:tap-1") == [(b"echo:tap-1", 1)]

    local_node.tell("echo:tap-other", Ping(n=0))  # not tapped: not shown
    local_node.tell("echo:tap-1", Ping(n=1), epoch=7)
    assert local_node.ask("echo:tap-1", Ping(n=2)).get(timeout=DEADLINE) == Pong(n=2)
    local_node.tell("echo:tap-1", TokenGranted(session_type="llm-default-session", request_id="r1",
                                               token="tok-" + unique("secret")))
    assert tap.wait(DEADLINE * 2) == 0, tap.stderr
    first, second, token, unhandled = (json.loads(line) for line in tap.stdout)
    assert (first["kind"], first["epoch"], first["body"], first["outcome"]) == (
        "sys.ping", 7, {"n": 1, "payload": "<0 bytes>"}, "delivered")
    assert first["node"] == node.node_id and first["msg_id"]
    assert second["body"]["n"] == 2 and second["reply_to"] == local_node.address and second["correlation_id"]
    assert token["kind"] == "token.granted" and token["body"]["token"] == REDACTED and token["redacted"] == ["token"]
    assert (unhandled["outcome"], unhandled["reason"], unhandled["kind"]) == (
        "dead-letter", "unhandled-kind", "token.granted")
    assert "tok-" not in "\n".join(tap.stdout + tap.stderr)


def test_tap_of_an_address_nobody_hosts_does_not_hide_that_nobody_hosts_it(
    node_procs: NodeProcesses, local_node: Node, redis_url: str, commands: Callable[..., Command]
) -> None:
    node = node_procs.start("echo:tap-2")
    tap = commands("tap", "echo:tap-nobody", "--for", str(DEADLINE), env={"REDIS_URL": redis_url})
    _armed(tap, node)
    with pytest.raises(UnknownAddress):
        local_node.ask("echo:tap-nobody", Ping(n=1)).get(timeout=DEADLINE)


def test_tap_text_lines_and_the_tap_ends_on_every_node_when_it_exits(
    node_procs: NodeProcesses, local_node: Node, redis_url: str, commands: Callable[..., Command]
) -> None:
    node = node_procs.start("echo:tap-3")
    mirrored: list[int] = []
    seen = threading.Condition()
    codec = Codec()

    def record(channel: str, data: bytes) -> None:
        message = codec.decode(data).message
        if isinstance(message, TapRecord) and message.body is not None:
            with seen:
                mirrored.append(message.body["n"])
                seen.notify_all()

    with listening(redis_url, record, tap_channel("echo:tap-3")):
        tap = commands("tap", "echo:tap-3", "--count", "1", "--for", str(DEADLINE), env={"REDIS_URL": redis_url})
        _armed(tap, node)
        local_node.tell("echo:tap-3", Ping(n=5), epoch=2)
        assert tap.wait(DEADLINE) == 0, tap.stderr
        (line,) = tap.stdout
        assert re.search(r"echo:tap-3 <- sys\.ping from - epoch 2 id \S+ \{\"n\": 5, \"payload\": \"<0 bytes>\"\}$",
                         line), line
        # The tap ended itself (ttl 0) before it exited: n=6 is not mirrored,
        # and n=7, under a new tap and sent after n=6, is.
        local_node.tell("echo:tap-3", Ping(n=6))
        again = commands("tap", "echo:tap-3", "--for", str(DEADLINE), env={"REDIS_URL": redis_url})
        _armed(again, node)
        local_node.tell("echo:tap-3", Ping(n=7))
        with seen:
            assert seen.wait_for(lambda: 7 in mirrored, DEADLINE), mirrored
        assert mirrored == [5, 7]


def test_tap_refuses_a_bad_address(redis_url: str, commands: Callable[..., Command]) -> None:
    tap = commands("tap", "not an address", env={"REDIS_URL": redis_url})
    assert tap.wait() == 2 and "not an address" in "\n".join(tap.stderr)


def test_help_of_the_new_commands(commands: Callable[..., Command]) -> None:
    for command, words in (("monitor", ["--once", "--json", "--for", "sys:metrics", "--cluster-key-file"]),
                           ("tap", ["ADDRESS", "sys:taps", "--count", "redacted", "--json"]),
                           ("node", ["--metrics-port", "--metrics-interval", "--cluster-key-file"])):
        run = commands(command, "--help")
        assert run.wait() == 0
        text = "\n".join(run.stdout)
        for word in words:
            assert word in text, (command, word)

