"""OpenTelemetry traces for ``huddle node``, set up from the standard
environment variables (the ``otel`` extra: ``pip install 'huddle-runtime[otel]'``).

* ``OTEL_TRACES_EXPORTER``: ``console`` (one JSON object per span and line
  on standard output), ``otlp``, both (``console,otlp``) or ``none`` (the
  default: no spans; envelopes still carry their W3C trace field).
* ``otlp`` sends to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended; default
  ``http://localhost:4318``) over ``http/protobuf``; ``grpc``
  (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``) needs the gRPC exporter
  installed. Headers (``OTEL_EXPORTER_OTLP_HEADERS``) are read by the
  exporter and never printed.
* ``OTEL_SERVICE_NAME`` (default ``huddle-node``), ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*`` (batching) as the SDK
  reads them; the resource also names the node (``service.instance.id``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from actors.runtime.tracing import OtelTracing, Tracing

__all__ = ["EXPORTERS", "Telemetry", "TelemetryError", "telemetry_from_env"]

EXPORTERS = ("console", "otlp")


class TelemetryError(Exception):
    """The environment asks for traces that cannot be set up (names the fix)."""


@dataclass
class Telemetry:
    """The node's tracing, and how to flush and end it."""

    tracing: Tracing
    exporters: tuple[str, ...]
    shutdown: Callable[[], None]


def _one_line(span: object) -> str:
    return span.to_json(indent=None) + "\n"  # type: ignore[attr-defined]


def _otlp_exporter(env: Mapping[str, str]) -> object:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") \
        or "http/protobuf"
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TelemetryError("OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: "
                                 "pip install 'huddle-runtime[otel]'") from None
        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise TelemetryError("OTLP over grpc needs opentelemetry-exporter-otlp-proto-grpc installed "
                                 "(or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)") from None
        return GrpcExporter()
    raise TelemetryError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf or grpc")


def telemetry_from_env(node_id: str, env: Mapping[str, str] | None = None) -> Telemetry | None:
    """The tracing ``OTEL_TRACES_EXPORTER`` asks for (``None``: none), on a
    tracer provider of its own that is also made the global one (so spans
    an actor makes with the OpenTelemetry API join the node's)."""
    env = os.environ if env is None else env
    wanted = tuple(name.strip() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip())
    if not wanted or wanted == ("none",):
        return None
    unknown = [name for name in wanted if name not in EXPORTERS]
    if unknown:
        raise TelemetryError(f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)} "
                             f"(known: {', '.join(EXPORTERS)}, none)")
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise TelemetryError("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: "
                             "pip install 'huddle-runtime[otel]'") from None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "huddle-node",
                                "service.instance.id": node_id})
    provider = TracerProvider(resource=resource)
    for name in wanted:
        exporter = ConsoleSpanExporter(out=sys.stdout, formatter=_one_line) if name == "console" \
            else _otlp_exporter(env)
        provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    return Telemetry(OtelTracing(provider), wanted, provider.shutdown)
