"""A Prometheus ``/metrics`` endpoint for one node (``huddle node --metrics-port``).

It exports the figures of :class:`~actors.runtime.metrics.NodeMetrics`, the same
ones the node publishes on ``sys:metrics``, so a scrape and ``huddle
monitor`` never disagree about what a figure means. Every family carries a
``node`` label (the node id). Counters are exported as counters (Prometheus
computes its own rates from them); the node's own per-second rates over its
last metrics interval are exported as gauges too.

================================================  =========  ==================
family                                            type       labels
================================================  =========  ==================
``huddle_actors``                                 gauge      node, kind
``huddle_actors_scan_age_seconds``                gauge      node
``huddle_mailbox_depth_max``                      gauge      node
``huddle_mailbox_depth_p99``                      gauge      node
``huddle_messages_received_total``                counter    node
``huddle_messages_sent_total``                    counter    node
``huddle_messages_received_per_second``           gauge      node
``huddle_messages_sent_per_second``               gauge      node
``huddle_restarts_total``                         counter    node
``huddle_crashes_total``                          counter    node
``huddle_dead_letters_total``                     counter    node, reason
``huddle_<gauge>`` (e.g. ``huddle_lease_renew_latency_s``)  gauge  node
================================================  =========  ==================

The server is prometheus-client's own (a daemon thread); it binds
``127.0.0.1`` unless told otherwise, since figures are for the operator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.runtime.metrics import MetricsPublisher, NodeMetrics

__all__ = ["MetricsEndpoint", "NodeMetricsCollector", "serve_metrics"]


class NodeMetricsCollector(Collector):
    """A Prometheus collector over a source of :class:`NodeMetrics`;
    ``figures()`` is called once per scrape."""

    def __init__(self, figures: Callable[[], NodeMetrics]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        m = self._figures()
        node = [m.node]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["node"])
            family.add_metric(node, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["node"])
            family.add_metric(node, value)
            return family

        actors = GaugeMetricFamily("huddle_actors", "Actors hosted by the node, by address kind.",
                                   labels=["node", "kind"])
        for kind, count in m.actors_by_kind.items():
            actors.add_metric([m.node, kind], count)
        yield actors
        yield gauge("huddle_actors_scan_age_seconds", "How old the actor and mailbox figures are (large nodes "
                    "are scanned less often).", m.actors_age)
        yield gauge("huddle_mailbox_depth_max", "Deepest mailbox of the node's actors, in messages.",
                    m.mailbox_depth_max)
        yield gauge("huddle_mailbox_depth_p99", "99th percentile (nearest rank) of the actors' mailbox depths.",
                    m.mailbox_depth_p99)
        yield counter("huddle_messages_received", "Envelopes decoded for this node's actors.", m.received_total)
        yield counter("huddle_messages_sent", "Envelopes sent by this node.", m.sent_total)
        yield gauge("huddle_messages_received_per_second", "Received envelopes per second over the last "
                    "metrics interval.", m.received_per_s)
        yield gauge("huddle_messages_sent_per_second", "Sent envelopes per second over the last metrics interval.",
                    m.sent_per_s)
        yield counter("huddle_restarts", "Actors restarted by supervisors on this node.", m.restarts_total)
        yield counter("huddle_crashes", "Actors on this node that crashed.", m.crashes_total)
        dead = CounterMetricFamily("huddle_dead_letters", "Messages refused as dead letters, by reason.",
                                   labels=["node", "reason"])
        for reason, count in m.dead_letters_by_reason.items():
            dead.add_metric([m.node, reason], count)
        yield dead
        for name, value in m.gauges.items():
            yield gauge(f"huddle_{name}", f"Gauge {name!r} reported by a part of the node.", value)


def scrape_figures(publisher: MetricsPublisher) -> NodeMetrics:
    """What a scrape shows: the publisher's last figures if it publishes on
    a timer, else a fresh sample (rates then run from the previous scrape)."""
    latest = publisher.latest
    if publisher.interval is None or latest is None:
        return publisher.sample()
    return latest


class MetricsEndpoint:
    """A running ``/metrics`` HTTP server; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def serve_metrics(publisher: MetricsPublisher, port: int, host: str = "127.0.0.1") -> MetricsEndpoint:
    """Serve the node's figures at ``http://host:port/metrics`` (port 0: any
    free port; see :attr:`MetricsEndpoint.port`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetricsCollector(lambda: scrape_figures(publisher)))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server, thread, host)
