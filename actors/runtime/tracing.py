"""Traces that follow a message: from the message a handler is handling to
every message it sends, asks and replies included, across nodes.

Every envelope has a W3C ``traceparent`` field. While an actor handles a
message, that message's trace is the *current* trace (a context variable,
so it is right on a pool thread, on the node's loop and inside an async
handler's task alike); whatever the handler sends then carries the same
trace id under a new span id. The answer to an ask carries the ask's trace.
A message that carries no trace starts none: traces begin where an
application starts one (``actors.client`` inside an OpenTelemetry span, or
``huddle inject --trace``). Timers are sent outside any trace (a timer
re-armed from its own handler would otherwise make a trace that never
ends); the outcome of an actor's I/O (``run_io``) stays in the trace of the
handler that started it.

Two implementations of the one seam, :class:`Tracing`:

* :data:`W3C` (the default): the field alone. Its whole cost is setting a
  context variable per message handled and a new span id per message sent
  inside a trace. OpenTelemetry is never imported.
* :class:`OtelTracing`, with the ``otel`` extra and a tracer provider:
  spans after the OpenTelemetry messaging conventions: a *producer* span
  per message sent inside a trace (``send <address kind>``), a *consumer*
  span around each traced message handled (``process <address kind>``, the
  current span while the handler runs, so spans the handler makes are its
  children; a crash marks it failed, with the error's type, never its text), and a consumer ``receive`` span per
  traced reply an ask gets back. Span names carry the address's kind only
  (low cardinality); attributes: ``messaging.system``,
  ``messaging.destination.name`` (the address), ``messaging.operation.type``,
  ``messaging.message.id``, ``messaging.message.conversation_id`` (an ask's
  correlation id) and ``huddle.kind`` (each attribute costs: a span costs
  10-20 microseconds on a small machine; sample with the SDK's sampler).
  The traceparent an envelope carries names its producer span, so a
  consumer span's parent is the producer span on the sending node.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol

from bus.envelope import Envelope, child_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["CURRENT", "W3C", "OtelTracing", "Tracing", "W3CTracing", "active_trace", "current_trace", "default_tracing",
           "in_trace"]

#: The trace of the message being handled here and now (``None``: none).
CURRENT: ContextVar[str | None] = ContextVar("huddle_trace", default=None)
_current_get = CURRENT.get
_current_set = CURRENT.set
_current_reset = CURRENT.reset

#: What a message is on the wire, after the conventions' well-known names.
MESSAGING_SYSTEM = "redis"


def current_trace() -> str | None:
    """The traceparent of the message being handled (``None``: none)."""
    return _current_get()


class in_trace:  # noqa: N801 - used as a context manager, like a function
    """``with in_trace(traceparent): ...``: what is sent inside is in that
    trace (an application's own trace, handed to the bus)."""

    __slots__ = ("_token", "_traceparent")

    def __init__(self, traceparent: str | None) -> None:
        self._traceparent = traceparent

    def __enter__(self) -> None:
        self._token = _current_set(self._traceparent)

    def __exit__(self, *exc: object) -> None:
        _current_reset(self._token)


class Tracing(Protocol):
    """The node's seam for traces (see the module's docstring)."""

    def outgoing(self, to: str, kind: str, msg_id: str, correlation_id: str | None,
                 parent: str | None = None) -> str | None:
        """The traceparent of a message sent now: in ``parent``'s trace if
        given, else in the current one; ``None`` outside any trace."""
        ...

    def enter(self, env: Envelope) -> Any:
        """A handler starts on ``env``: its trace becomes the current one.
        Returns what :meth:`exit` needs."""
        ...

    def exit(self, scope: Any, error: BaseException | None = None) -> None:
        """The handler that :meth:`enter` began is done (``error``: it raised)."""
        ...

    def received(self, env: Envelope) -> None:
        """A reply to an ask of this node's arrived."""
        ...


class W3CTracing:
    """The ``traceparent`` field alone: no spans are recorded."""

    __slots__ = ()

    def outgoing(self, to: str, kind: str, msg_id: str, correlation_id: str | None,
                 parent: str | None = None) -> str | None:
        parent = parent or _current_get()
        return None if parent is None else child_traceparent(parent)

    def enter(self, env: Envelope) -> Token[str | None]:
        return _current_set(env.traceparent)

    def exit(self, scope: Token[str | None], error: BaseException | None = None) -> None:
        _current_reset(scope)

    def received(self, env: Envelope) -> None:
        return None


#: The default tracing of a node.
W3C = W3CTracing()


class OtelTracing:
    """OpenTelemetry spans for what a node sends and handles (the ``otel``
    extra). ``provider``: the tracer provider spans go to (default: the
    global one)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

        self._trace = trace
        self._context = context
        self._NonRecordingSpan = NonRecordingSpan
        self._SpanContext = SpanContext
        self._TraceFlags = TraceFlags
        self._producer = SpanKind.PRODUCER
        self._consumer = SpanKind.CONSUMER
        self._StatusCode = StatusCode
        self.tracer = (provider or trace.get_tracer_provider()).get_tracer("huddle")

    # -- conversions -------------------------------------------------------

    def _context_of(self, traceparent: str) -> Any:
        """An OpenTelemetry context whose current span is the remote span
        ``traceparent`` names."""
        span_context = self._SpanContext(
            trace_id=int(traceparent[3:35], 16), span_id=int(traceparent[36:52], 16), is_remote=True,
            trace_flags=self._TraceFlags(int(traceparent[53:55], 16)))
        return self._trace.set_span_in_context(self._NonRecordingSpan(span_context))

    @staticmethod
    def _traceparent_of(span: Any) -> str:
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    @staticmethod
    def _attributes(address: str, operation: str, msg_id: str, kind: str,
                    correlation_id: str | None) -> dict[str, str]:
        attributes = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": address,
            "messaging.operation.type": operation,
            "messaging.message.id": msg_id,
            "huddle.kind": kind,
        }
        if correlation_id:
            attributes["messaging.message.conversation_id"] = correlation_id
        return attributes

    def _parent(self, parent: str | None) -> Any:
        """The context a new span starts in: ``parent``'s, else the active
        OpenTelemetry span's (a handler's process span, or an application's
        own span), else the current trace's; ``None``: outside any trace."""
        if parent is not None:
            return self._context_of(parent)
        if self._trace.get_current_span().get_span_context().is_valid:
            return self._context.get_current()
        current = _current_get()
        return None if current is None else self._context_of(current)

    # -- the seam ------------------------------------------------------------

    def outgoing(self, to: str, kind: str, msg_id: str, correlation_id: str | None,
                 parent: str | None = None) -> str | None:
        context = self._parent(parent)
        if context is None:
            return None
        kind_of_address = to.partition(":")[0]
        span = self.tracer.start_span(f"send {kind_of_address}", context=context, kind=self._producer,
                                      attributes=self._attributes(to, "send", msg_id, kind, correlation_id))
        span.end()
        return self._traceparent_of(span)

    def enter(self, env: Envelope) -> Any:
        traceparent = env.traceparent
        if traceparent is None:
            # No trace: none is current, not even the one of a handler this
            # message was delivered inside of.
            return None, self._context.attach(self._context.Context()), _current_set(None)
        span = self.tracer.start_span(
            f"process {env.to.partition(':')[0]}", context=self._context_of(traceparent), kind=self._consumer,
            attributes=self._attributes(env.to, "process", env.msg_id, env.kind, env.correlation_id))
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token, _current_set(self._traceparent_of(span))

    def exit(self, scope: Any, error: BaseException | None = None) -> None:
        span, token, current = scope
        _current_reset(current)
        self._context.detach(token)
        if span is not None:
            if error is not None:
                # The type alone: an error's text may quote what it failed on.
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(self._StatusCode.ERROR, type(error).__qualname__)
            span.end()

    def received(self, env: Envelope) -> None:
        if env.traceparent is None:
            return
        self.tracer.start_span(
            f"receive {env.to.partition(':')[0]}", context=self._context_of(env.traceparent),
            kind=self._consumer,
            attributes=self._attributes(env.to, "receive", env.msg_id, env.kind, env.correlation_id)).end()


def default_tracing() -> Tracing:
    """:class:`OtelTracing` on the global tracer provider if the process
    has installed OpenTelemetry's SDK one, else :data:`W3C` (OpenTelemetry
    is not imported for the asking)."""
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    if sdk is None:
        return W3C
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return OtelTracing(provider) if isinstance(provider, sdk.TracerProvider) else W3C  # type: ignore[arg-type]


def active_trace() -> str | None:
    """The trace an application's send belongs in: the current one, else
    the active OpenTelemetry span's if the application uses OpenTelemetry
    (``None``: no trace)."""
    current = _current_get()
    if current is not None:
        return current
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    ctx = api.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
