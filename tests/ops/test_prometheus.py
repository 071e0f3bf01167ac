"""The Prometheus endpoint: the node's figures, scraped over real HTTP and
parsed with prometheus-client's own parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.runtime.metrics import LEASE_RENEW_LATENCY, MetricsPublisher
from ops.prometheus import MetricsEndpoint, serve_metrics
from actors.runtime.testkit import TestKit
from bus.messages import Ping

from tests.actors.runtime.test_metrics import Quiet

DEADLINE = 10.0


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit(node_id="prom-1") as k:
        yield k


@pytest.fixture
def endpoint(kit: TestKit) -> Iterator[tuple[MetricsPublisher, MetricsEndpoint]]:
    publisher = MetricsPublisher(kit.node, interval=1.0).start()
    server = serve_metrics(publisher, 0)
    try:
        yield publisher, server
    finally:
        server.close()
        publisher.close()


def test_scrape_exports_the_published_figures(kit: TestKit, endpoint: tuple[MetricsPublisher, MetricsEndpoint]) -> None:
    publisher, server = endpoint
    kit.spawn("echo:a", Quiet)
    kit.spawn("meeting:m1", Quiet)
    kit.node.metrics.add_source(LEASE_RENEW_LATENCY, lambda: 0.25)
    for n in range(4):
        kit.inject_message("echo:a", Ping(n=n))
    kit.inject_message("echo:gone", Ping())
    kit.advance(1.0)
    published = publisher.latest
    assert published is not None
    node = (("node", "prom-1"),)
    got = scrape(server.url)
    assert got[("huddle_actors", (("kind", "echo"), ("node", "prom-1")))] == 1
    assert got[("huddle_actors", (("kind", "meeting"), ("node", "prom-1")))] == 1
    assert got[("huddle_messages_received_total", node)] == published.received_total >= 5
    assert got[("huddle_messages_received_per_second", node)] == published.received_per_s > 0
    assert got[("huddle_dead_letters_total", (("node", "prom-1"), ("reason", "unknown-address")))] == 1
    assert got[("huddle_mailbox_depth_max", node)] == 0
    assert got[("huddle_actors_scan_age_seconds", node)] == published.actors_age
    assert got[("huddle_restarts_total", node)] == 0
    assert got[("huddle_lease_renew_latency_s", node)] == 0.25


def test_endpoint_samples_per_scrape_when_nothing_publishes(kit: TestKit) -> None:
    publisher = MetricsPublisher(kit.node, interval=None)
    server = serve_metrics(publisher, 0)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert scrape(server.url)[("huddle_messages_received_total", (("node", "prom-1"),))] == 0
        kit.spawn("echo:a", Quiet)
        kit.inject_message("echo:a", Ping())
        kit.settle()
        assert scrape(server.url)[("huddle_messages_received_total", (("node", "prom-1"),))] == 1
    finally:
        server.close()
