"""Traces follow messages (actors/runtime/tracing.py).

What a handler sends is in the trace of the message it handles (same trace
id, a new span id), on the node's loop, on a pool thread and across an
async handler's awaits, without one message's trace leaking into another's;
an answer is in the trace of its ask; an I/O outcome in the trace of the
handler that started the I/O; a timer in none; an untraced message starts
none. With OpenTelemetry's tracing, spans are recorded and a crash marks its
span failed with the error's type, never its text.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors.runtime.actor import HuddleActor
from actors.runtime.builtin import Echo
from actors.runtime.io import Outcome
from actors.runtime.testkit import TestKit
from actors.runtime.tracing import OtelTracing, current_trace, in_trace
from bus.envelope import Envelope, is_valid_traceparent
from bus.messages import Message, Ping, Pong
from tests.actors.conftest import Recorder

DEADLINE = 5.0
T1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
T2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"  # not sampled
T3 = "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01"


def trace_id(traceparent: str | None) -> str | None:
    return None if traceparent is None else traceparent[3:35]


class Sink(HuddleActor):
    """Records every envelope it gets."""

    got: ClassVar[Recorder]

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        Sink.got.add(envelope)
        return None


class Forwarder(HuddleActor):
    """Ping(n): 1 tells sink:1 at once; 2 also sets a timer for it; 3 runs
    I/O whose outcome (a Ping 4) comes back here, and a Ping 4 is told on."""

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if not isinstance(message, Ping):
            return super().on_message(message, envelope)
        if message.n == 2:
            self.send_later(1.0, Ping(n=20), to="sink:1")
        if message.n == 3:
            async def fetch() -> int:
                await asyncio.sleep(0)
                return 4

            self.run_io(fetch(), lambda outcome: Ping(n=outcome.value) if isinstance(outcome, Outcome) else None)
            return None
        self.tell("sink:1", Ping(n=message.n))
        return None


class BlockingForwarder(Forwarder):
    blocking = True


class AsyncForwarder(HuddleActor):
    """Awaits gate n, then tells sink:1 (the trace must survive the await)."""

    gates: ClassVar[dict[int, asyncio.Event]] = {}
    entered: ClassVar[dict[int, threading.Event]] = {}

    async def on_message(self, message: Message, envelope: Envelope) -> Any:
        if not isinstance(message, Ping):
            return await super().on_message(message, envelope)
        gate = AsyncForwarder.gates.setdefault(message.n, asyncio.Event())
        AsyncForwarder.entered.setdefault(message.n, threading.Event()).set()
        await gate.wait()
        self.tell("sink:1", Ping(n=message.n))
        return None


class Crasher(HuddleActor):
    def on_message(self, message: Message, envelope: Envelope) -> Any:
        raise RuntimeError("token sk-live-123 refused")  # a text that must not reach a span


@pytest.fixture
def kit() -> Any:
    Sink.got = Recorder()
    AsyncForwarder.gates = {}
    AsyncForwarder.entered = {}
    with TestKit() as k:
        k.spawn("sink:1", Sink)
        yield k


def received(n: int) -> list[Envelope]:
    assert Sink.got.wait_count(n, DEADLINE), f"sink got {len(Sink.got.snapshot())} of {n}"
    return Sink.got.snapshot()


@pytest.mark.parametrize("forwarder", [Forwarder, BlockingForwarder], ids=["on the loop", "on a pool thread"])
def test_what_a_handler_sends_is_in_the_trace_of_the_message_it_handles(kit: TestKit, forwarder: type) -> None:
    kit.spawn("fwd:1", forwarder)
    kit.inject_message("fwd:1", Ping(n=1), traceparent=T1)
    kit.inject_message("fwd:1", Ping(n=1), traceparent=T2)
    kit.inject_message("fwd:1", Ping(n=1))  # no trace: it starts none, and inherits none
    first, second, third = (env.traceparent for env in received(3))
    assert first is not None and second is not None
    assert trace_id(first) == trace_id(T1) and first != T1 and is_valid_traceparent(first)
    assert trace_id(second) == trace_id(T2) and second.endswith("-00")  # the flags (not sampled) are kept
    assert third is None
    assert current_trace() is None  # nothing leaked into the test's own context


def test_an_answer_is_in_the_trace_of_its_ask(kit: TestKit) -> None:
    kit.spawn("echo:1", Echo)
    # An ask whose answer goes to sink:1, as a node's ask goes to its node address.
    kit.inject_message("echo:1", Ping(n=5), reply_to="sink:1", correlation_id="c-1", traceparent=T1)
    [answer] = received(1)
    assert answer.message == Pong(n=5) and answer.correlation_id == "c-1"
    assert trace_id(answer.traceparent) == trace_id(T1) and answer.traceparent != T1


def test_a_timer_is_in_no_trace_and_an_io_outcome_in_its_handlers(kit: TestKit) -> None:
    kit.spawn("fwd:1", Forwarder)
    kit.inject_message("fwd:1", Ping(n=2), traceparent=T1)  # tells sink now, and sets a timer for it
    kit.inject_message("fwd:1", Ping(n=3), traceparent=T2)  # I/O; its outcome (Ping 4) is told on
    kit.settle()
    kit.advance(1.0)
    by_n = {env.message.n: env.traceparent for env in received(3)}
    assert trace_id(by_n[2]) == trace_id(T1)
    assert by_n[20] is None  # the timer set in T1's handler
    assert trace_id(by_n[4]) == trace_id(T2)  # the outcome of I/O started in T2's handler


def test_an_async_handler_keeps_its_trace_across_awaits_while_others_run(kit: TestKit) -> None:
    kit.spawn("afwd:1", AsyncForwarder)
    kit.spawn("fwd:1", Forwarder)
    kit.inject_message("afwd:1", Ping(n=7), traceparent=T1)
    assert AsyncForwarder.entered.setdefault(7, threading.Event()).wait(DEADLINE)
    # While it waits, a message in another trace is handled on the same loop.
    kit.inject_message("fwd:1", Ping(n=1), traceparent=T2)
    [other] = received(1)
    kit.node.io.loop.call_soon_threadsafe(AsyncForwarder.gates[7].set)
    _, after_await = received(2)
    assert trace_id(other.traceparent) == trace_id(T2)
    assert after_await.message == Ping(n=7) and trace_id(after_await.traceparent) == trace_id(T1)


def test_an_application_trace_is_handed_to_the_bus(kit: TestKit) -> None:
    with in_trace(T1):
        kit.node.tell("sink:1", Ping(n=1))
    kit.node.tell("sink:1", Ping(n=2))
    first, second = received(2)
    assert trace_id(first.traceparent) == trace_id(T1) and second.traceparent is None


def test_opentelemetry_spans_and_a_crash_marked_by_its_type_only() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Sink.got = Recorder()
    with TestKit(tracing=OtelTracing(provider)) as kit:
        kit.spawn("sink:1", Sink)
        kit.spawn("fwd:1", Forwarder)
        kit.spawn("crash:1", Crasher)
        kit.inject_message("fwd:1", Ping(n=1), traceparent=T1)
        kit.inject_message("crash:1", Ping(n=1), traceparent=T3)
        kit.inject_message("fwd:1", Ping(n=1), traceparent=T2)  # not sampled: no spans recorded
        kit.inject_message("fwd:1", Ping(n=1))  # untraced: no spans
        kit.settle()
    spans = {(s.name, f"{s.context.trace_id:032x}"): s for s in exporter.get_finished_spans()}
    assert set(spans) == {("process fwd", trace_id(T1)), ("send sink", trace_id(T1)),
                          ("process sink", trace_id(T1)), ("process crash", trace_id(T3))}
    process, send = spans[("process fwd", trace_id(T1))], spans[("send sink", trace_id(T1))]
    assert process.parent is not None and f"{process.parent.span_id:016x}" == T1[36:52]
    assert send.parent is not None and send.parent.span_id == process.context.span_id
    assert spans[("process sink", trace_id(T1))].parent.span_id == send.context.span_id  # type: ignore[union-attr]
    crash = spans[("process crash", trace_id(T3))]
    assert crash.status.status_code.name == "ERROR" and crash.attributes["error.type"] == "RuntimeError"
    assert "sk-live" not in "".join(s.to_json() for s in exporter.get_finished_spans())


def test_without_opentelemetry_installed_traces_still_follow_messages() -> None:
    # A fresh interpreter where every opentelemetry import fails, as without the extra.
    code = """
import sys
sys.modules["opentelemetry"] = None
from actors.runtime.testkit import TestKit
from actors.runtime.builtin import Echo
from actors.runtime.tracing import in_trace, default_tracing, W3C
from actors.client import connect
from bus.messages import Ping
assert default_tracing() is W3C
with TestKit() as kit:
    kit.spawn("echo:1", Echo)
    with in_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        kit.node.tell("echo:1", Ping(n=1), sender="sink:9")
    kit.settle()
    [pong] = [e for e in kit.sent if e.to == "sink:9"]
    print(pong.traceparent[3:35])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == trace_id(T1)
