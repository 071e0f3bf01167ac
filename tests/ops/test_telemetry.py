"""``huddle node`` and the standard OpenTelemetry variables (ops/telemetry.py).

The real path: a node process exporting over OTLP/HTTP to a collector this
test runs on loopback, a traced ``huddle inject --trace --ask``, and the
spans decoded from the protobuf the collector got: in the trace the inject
printed, naming the node, carrying the exporter's headers to the collector
but never into the node's output.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bus.embedded import EmbeddedRedis
from ops.processes import REPO_ROOT, NodeProcess, huddle_command
from ops.telemetry import TelemetryError, telemetry_from_env

SECRET_HEADER = "Bearer otlp-secret-7f3a"


def test_no_exporter_asked_for_means_no_spans() -> None:
    assert telemetry_from_env("n", {}) is None
    assert telemetry_from_env("n", {"OTEL_TRACES_EXPORTER": "none"}) is None


@pytest.mark.parametrize("env, says", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter zipkin"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "use http/protobuf or grpc"),
])
def test_what_cannot_be_set_up_is_refused_with_the_fix(env: dict[str, str], says: str) -> None:
    with pytest.raises(TelemetryError, match=says):
        telemetry_from_env("n", env)


class Collector:
    """An OTLP/HTTP trace endpoint on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                collector.got.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.close()


@pytest.mark.integration
def test_a_node_exports_a_traced_ask_over_otlp(redis_server: EmbeddedRedis, collector: Collector,
                                               tmp_path: Path) -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
           "OTEL_EXPORTER_OTLP_HEADERS": f"authorization={SECRET_HEADER}", "OTEL_SERVICE_NAME": "captions",
           "OTEL_BSP_SCHEDULE_DELAY": "50"}
    node = NodeProcess.start("otlp-1", redis_server.url, tmp_path, ["--echo", "echo:otlp-1"], env=env)
    try:
        node.wait_ready()
        inject = subprocess.run(
            huddle_command("inject", "echo:otlp-1", "sys.ping", '{"n": 3}', "--ask", "--trace",
                           "--redis-url", redis_server.url),
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert inject.returncode == 0, inject.stderr
        assert '"n": 3' in inject.stdout
        [trace_id] = [line.split()[1] for line in inject.stderr.splitlines() if line.startswith("trace ")]
        assert node.stop() == 0  # a graceful stop flushes the batch
    finally:
        node.stop()
    assert collector.got.is_set()
    spans = []
    for headers, body in collector.requests:
        assert headers["authorization"] == SECRET_HEADER
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                spans += [(span, resource) for span in scope_spans.spans]
    process = [(s, r) for s, r in spans if s.name == "process echo"]
    assert len(process) == 1
    span, resource = process[0]
    assert span.trace_id.hex() == trace_id
    assert resource["service.name"] == "captions" and resource["service.instance.id"] == "otlp-1"
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["messaging.destination.name"] == "echo:otlp-1"
    assert attributes["messaging.operation.type"] == "process"
    # The answer went back in the same trace.
    assert any(s.name == "send node" and s.trace_id.hex() == trace_id for s, _ in spans)
    assert "otlp-secret" not in node.output(limit=1_000_000)
