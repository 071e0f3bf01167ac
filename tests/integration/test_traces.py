"""A trace follows a message across real node processes.

An asyncio application (this test, with OpenTelemetry's SDK and its
in-memory exporter) asks ``relay:1`` on node A inside a span of its own;
the relay's async handler asks ``echo:2`` on node B; the answers come back.
Both nodes run ``huddle node`` with ``OTEL_TRACES_EXPORTER=console`` (one
JSON span per line on their output). Every span of the three processes must
be in the application's trace, each consumer span the child of the
producer span of the message it handles (on another process), each message
sent inside a handler the child of that handler's process span, and the
spans must carry the messaging conventions' attributes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors.client import connect
from actors.runtime.tracing import OtelTracing
from bus.embedded import EmbeddedRedis
from bus.messages import Ping, Pong
from ops.processes import NodeProcess

pytestmark = pytest.mark.integration

OTEL_ENV = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "huddle-test"}


@pytest.fixture
def two_nodes(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    a = NodeProcess.start("trace-a", redis_server.url, tmp_path, ["--relay", "relay:trace-1=echo:trace-2"],
                          env=OTEL_ENV)
    b = NodeProcess.start("trace-b", redis_server.url, tmp_path, ["--echo", "echo:trace-2"], env=OTEL_ENV)
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


def _span(name: str, kind: str, trace_id: str, span_id: str, parent: str | None,
          attributes: dict[str, Any], where: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "trace": trace_id, "id": span_id, "parent": parent,
            "attributes": attributes, "where": where}


def _node_spans(node: NodeProcess) -> list[dict[str, Any]]:
    spans = []
    for line in node.log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        raw = json.loads(line)
        spans.append(_span(raw["name"], raw["kind"].removeprefix("SpanKind."), raw["context"]["trace_id"][2:],
                           raw["context"]["span_id"][2:], (raw["parent_id"] or "")[2:] or None,
                           raw["attributes"], node.node_id))
    return spans


def _app_spans(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [_span(s.name, s.kind.name, f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}",
                  f"{s.parent.span_id:016x}" if s.parent else None, dict(s.attributes or {}), "app")
            for s in exporter.get_finished_spans()]


def test_a_trace_follows_an_ask_across_two_node_processes(
        redis_server: EmbeddedRedis, two_nodes: tuple[NodeProcess, NodeProcess]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("the-application")

    async def main() -> Any:
        async with connect(redis_server.url, tracing=OtelTracing(provider)) as client:
            with tracer.start_as_current_span("caption-bot request"):
                return await client.ask("relay:trace-1", Ping(n=7), timeout=10)

    assert asyncio.run(asyncio.wait_for(main(), 30)) == Pong(n=7)
    a, b = two_nodes
    assert a.stop() == 0 and b.stop() == 0  # a graceful stop flushes their batched spans

    spans = _app_spans(exporter) + _node_spans(a) + _node_spans(b)
    [root] = [s for s in spans if s["name"] == "caption-bot request"]
    by_id = {s["id"]: s for s in spans}
    # One trace: every span of the three processes is in the application's.
    assert {s["trace"] for s in spans} == {root["trace"]}

    def one(name: str, where: str) -> dict[str, Any]:
        [span] = [s for s in spans if s["name"] == name and s["where"] == where]
        return span

    ask_relay = one("send relay", "app")
    process_relay = one("process relay", "trace-a")
    ask_echo = one("send echo", "trace-a")
    process_echo = one("process echo", "trace-b")
    assert ask_relay["parent"] == root["id"] and ask_relay["kind"] == "PRODUCER"
    # Each handler's span is the child of the producer span of the message it handles, across processes.
    assert process_relay["parent"] == ask_relay["id"] and process_relay["kind"] == "CONSUMER"
    assert process_echo["parent"] == ask_echo["id"] and process_echo["kind"] == "CONSUMER"
    # What a handler sends is the child of its process span (the relay's ask, from inside its async handler).
    assert ask_echo["parent"] == process_relay["id"]
    # The answers: each reply in the trace of the ask it answers, and received by the asker.
    reply_to_a = one("send node", "trace-b")
    reply_to_app = one("send node", "trace-a")
    assert by_id[reply_to_a["parent"]]["id"] in (ask_echo["id"], process_echo["id"])
    assert by_id[reply_to_app["parent"]]["id"] in (ask_relay["id"], process_relay["id"])
    assert one("receive node", "trace-a")["parent"] == reply_to_a["id"]
    assert one("receive node", "app")["parent"] == reply_to_app["id"]

    # The conventions' attributes; a message's id is the same on both sides.
    assert ask_relay["attributes"]["messaging.system"] == "redis"
    assert ask_relay["attributes"]["messaging.operation.type"] == "send"
    assert ask_relay["attributes"]["messaging.destination.name"] == "relay:trace-1"
    assert ask_relay["attributes"]["huddle.kind"] == "sys.ping"
    assert process_relay["attributes"]["messaging.operation.type"] == "process"
    assert process_relay["attributes"]["messaging.message.id"] == ask_relay["attributes"]["messaging.message.id"]
    assert process_echo["attributes"]["messaging.message.id"] == ask_echo["attributes"]["messaging.message.id"]
    assert (reply_to_app["attributes"]["messaging.message.conversation_id"]
            == ask_relay["attributes"]["messaging.message.conversation_id"])
    # The node names itself in its spans' resource (checked on the raw output).
    assert '"service.instance.id": "trace-a"' in a.log.read_text()
