"""Node metrics: what a node publishes on ``sys:metrics``.

Three parts, in the usual shape:

* :class:`NodeSample` is what the shell reads off a node at one instant
  (counters that only grow, the gauges of a :class:`MetricsRegistry`) plus
  the last :class:`ActorScan` (actors by kind, mailbox depths);
* :func:`summarize` is the pure core: two samples in, one
  :class:`NodeMetrics` message out (rates are the counter deltas over the
  time between the samples; the first sample has no rates);
* :class:`MetricsPublisher` is the shell: on the node's clock, every
  ``interval`` seconds, it samples the node, summarizes, keeps the result
  as :attr:`MetricsPublisher.latest` (the Prometheus endpoint reads it) and
  publishes it on ``sys:metrics``.

Counters cost nothing to read; an actor scan visits every actor (about a
microsecond each). So a scan is repeated only when the last one is old
enough for scanning to stay within :data:`SCAN_CPU_BUDGET` of one core: on
a node of a few thousand actors that is every sample, on one of 100,000 a
scan every ten seconds or so. ``actors_age`` in the message says how old
the actor figures are.

Other parts of the node plug figures in through the node's registry,
``node.metrics.add_source(name, fn)``: ``fn()`` returns a number (or
``None`` for "nothing to say now") and is called once per sample, on the
sampling thread, so it must be quick and must not block. The cluster layer
reports its lease renew latency under :data:`LEASE_RENEW_LATENCY`.

Nothing here carries a message body, so nothing here can carry a secret.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bus.address import SYS_METRICS, channel_for
from bus.envelope import Envelope
from bus.errors import HuddleError
from bus.messages import Message, message_kind

if TYPE_CHECKING:
    from actors.runtime.clock import TimerHandle
    from actors.runtime.node import Node

__all__ = [
    "BUS_RECONNECTS",
    "LEASE_RENEW_LATENCY",
    "GC_COLLECTIONS",
    "GC_PAUSE_MAX",
    "GC_SECONDS",
    "NODE_GAUGES",
    "ActorScan",
    "MetricsPublisher",
    "MetricsRegistry",
    "NodeMetrics",
    "NodeSample",
    "percentile",
    "sample_node",
    "scan_actors",
    "summarize",
]

log = logging.getLogger("huddle.metrics")

DEFAULT_INTERVAL = 1.0
LEASE_RENEW_LATENCY = "lease_renew_latency_s"
#: Gauge every node reports: how often its bus connection came back.
BUS_RECONNECTS = "bus_reconnects"
#: Gauges of the garbage collector in a ``huddle node`` process
#: (:class:`actors.runtime.gcpolicy.GcWatch`): collections and the seconds
#: they took since the watch began, and the longest pause since the
#: previous sample.
GC_COLLECTIONS, GC_SECONDS, GC_PAUSE_MAX = "gc_collections", "gc_seconds", "gc_pause_max_s"
#: Every gauge some part of a node may report (dashboards and alerts use these).
NODE_GAUGES = (LEASE_RENEW_LATENCY, BUS_RECONNECTS, GC_COLLECTIONS, GC_SECONDS, GC_PAUSE_MAX)
"""The gauge name under which the cluster layer reports how long its last
lease renewal round trip took, in seconds."""

_GAUGE_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")


# -- the message -------------------------------------------------------------------


@message_kind("sys.metrics")
@dataclass(frozen=True, slots=True)
class NodeMetrics(Message):
    """One node's figures at ``ts`` (wall-clock unix seconds).

    ``*_total`` are counters since the node started; ``*_per_s`` are rates
    over the ``interval`` seconds before ``ts`` (0.0 on a node's first
    sample, whose ``interval`` is 0.0). Actors by kind and mailbox depths
    were counted ``actors_age`` seconds before ``ts`` (0 with no actors;
    ``mailbox_depth_p99`` is the nearest-rank 99th percentile). ``gauges``
    holds what the node's :class:`MetricsRegistry` sources reported (e.g.
    :data:`LEASE_RENEW_LATENCY`).
    """

    node: str
    ts: float
    interval: float = 0.0
    actors_age: float = 0.0
    actors: int = 0
    actors_by_kind: dict[str, int] = field(default_factory=dict)
    mailbox_depth_max: int = 0
    mailbox_depth_p99: int = 0
    received_per_s: float = 0.0
    sent_per_s: float = 0.0
    dead_letters_per_s: float = 0.0
    received_total: int = 0
    sent_total: int = 0
    restarts_total: int = 0
    crashes_total: int = 0
    dead_letters_total: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


# -- the core ------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorScan:
    """The node's actors at monotonic time ``at``: how many of each address
    kind, and ``depths``: mailbox depth -> how many actors have it."""

    at: float
    kinds: Mapping[str, int] = field(default_factory=dict)
    depths: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeSample:
    """What a node's counters said at one instant, with its last actor scan.

    ``at`` is the node clock's monotonic time, ``wall`` its unix time.
    """

    at: float
    wall: float
    received: int = 0
    sent: int = 0
    restarts: int = 0
    crashes: int = 0
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    actors: ActorScan | None = None
    gauges: Mapping[str, float] = field(default_factory=dict)


def percentile(histogram: Mapping[int, int], q: float) -> int:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of the values counted in
    ``histogram`` (value -> how many times it occurs); 0 when it is empty."""
    total = sum(histogram.values())
    if total <= 0:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)  # pragma: no cover - rank <= total always stops above


MIN_RATE_INTERVAL_S = 1e-6
"""Samples closer together than this give no rate (a division by a
vanishing interval would say infinity)."""


def _rate(delta: int, seconds: float) -> float:
    return delta / seconds if seconds >= MIN_RATE_INTERVAL_S and delta > 0 else 0.0


def summarize(node_id: str, previous: NodeSample | None, current: NodeSample) -> NodeMetrics:
    """The :class:`NodeMetrics` for ``current``, with rates since
    ``previous`` (none if ``previous`` is ``None`` or not earlier)."""
    scan = current.actors or ActorScan(at=current.at)
    histogram = {depth: n for depth, n in scan.depths.items() if n > 0}
    dead_total = sum(current.dead_letters.values())
    interval = 0.0
    received_rate = sent_rate = dead_rate = 0.0
    if previous is not None and current.at > previous.at:
        interval = current.at - previous.at
        received_rate = _rate(current.received - previous.received, interval)
        sent_rate = _rate(current.sent - previous.sent, interval)
        dead_rate = _rate(dead_total - sum(previous.dead_letters.values()), interval)
    return NodeMetrics(
        node=node_id,
        ts=current.wall,
        interval=interval,
        actors_age=max(0.0, current.at - scan.at),
        actors=sum(scan.kinds.values()),
        actors_by_kind=dict(sorted(scan.kinds.items())),
        mailbox_depth_max=max(histogram) if histogram else 0,
        mailbox_depth_p99=percentile(histogram, 0.99),
        received_per_s=received_rate,
        sent_per_s=sent_rate,
        dead_letters_per_s=dead_rate,
        received_total=current.received,
        sent_total=current.sent,
        restarts_total=current.restarts,
        crashes_total=current.crashes,
        dead_letters_total=dead_total,
        dead_letters_by_reason=dict(sorted(current.dead_letters.items())),
        gauges=dict(sorted(current.gauges.items())),
    )


# -- gauges other parts plug in ------------------------------------------------------


class InvalidGaugeName(HuddleError):
    """A gauge name is not ``[a-z][a-z0-9_]*`` (it becomes a Prometheus name)."""


class MetricsRegistry:
    """Named gauges other parts of a node add (``node.metrics``).

    ``add_source(name, fn)``: ``fn()`` is called once per sample and returns
    a number, or ``None`` when it has nothing to report. A source that
    raises, or returns something that is not a finite number, is left out
    of that sample and counted in :attr:`errors`; the others still count.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], float | None]] = {}
        self._lock = threading.Lock()
        self.errors = 0

    def add_source(self, name: str, fn: Callable[[], float | None]) -> Callable[[], None]:
        """Add (or replace) the gauge ``name``; returns a function that
        removes it. Units go in the name (``_s``, ``_bytes``)."""
        if not isinstance(name, str) or not _GAUGE_NAME_RE.fullmatch(name):
            raise InvalidGaugeName(f"gauge name {name!r}: expected [a-z][a-z0-9_]*")
        with self._lock:
            self._sources[name] = fn

        def remove() -> None:
            with self._lock:
                if self._sources.get(name) is fn:
                    del self._sources[name]

        return remove

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._sources)

    def read(self) -> dict[str, float]:
        """Every source's current value (see the class docstring)."""
        with self._lock:
            sources = list(self._sources.items())
        values: dict[str, float] = {}
        for name, fn in sources:
            try:
                value = fn()
            except Exception:  # one broken gauge must not stop the others
                self.errors += 1
                log.exception("metrics source %s failed", name)
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                self.errors += 1
                log.warning("metrics source %s returned %s, not a finite number", name, type(value).__name__)
                continue
            values[name] = float(value)
        return values


# -- the shell -----------------------------------------------------------------------


SCAN_CPU_BUDGET = 0.01
"""Share of one core that actor scans may take (see the module docstring)."""


def scan_actors(node: Node) -> ActorScan:
    """Count ``node``'s actors by kind and their mailbox depths now (any thread)."""
    addresses = node.addresses()
    kinds = collections.Counter([address[: address.find(":")] for address in addresses])
    lookup = node.lookup
    depths = collections.Counter([len(actor.actor_inbox) for actor in map(lookup, addresses) if actor is not None])
    return ActorScan(at=node.clock.now(), kinds=dict(kinds), depths=dict(depths))


def sample_node(node: Node, actors: ActorScan | None = None) -> NodeSample:
    """Read ``node``'s counters and gauges now (any thread), with ``actors``
    (default: a fresh :func:`scan_actors`)."""
    counters = node.counters.copy()
    prefix = "dead-letter:"
    dead = {key[len(prefix):]: n for key, n in counters.items() if key.startswith(prefix)}
    return NodeSample(
        at=node.clock.now(),
        wall=node.clock.wall(),
        received=counters["received"],
        sent=counters["sent"],
        restarts=counters["event:restarted"],
        crashes=counters["event:crashed"],
        dead_letters=dead,
        actors=actors if actors is not None else scan_actors(node),
        gauges=node.metrics.read(),
    )


class MetricsPublisher:
    """Publishes a node's :class:`NodeMetrics` on ``sys:metrics`` every
    ``interval`` seconds of the node's clock, from :meth:`start` until
    :meth:`close` (or until the node's transport closes).

    ``interval=None`` samples only when asked (:meth:`sample`), never on a
    timer, and publishes nothing. ``cpu_clock`` measures what a scan cost
    (the calling thread's CPU seconds).
    """

    def __init__(self, node: Node, interval: float | None = DEFAULT_INTERVAL,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"metrics interval must be positive, got {interval!r}")
        self.node = node
        self.interval = interval
        self.published = 0
        self._channel = channel_for(SYS_METRICS, node.namespace)
        self._lock = threading.Lock()
        self._previous: NodeSample | None = None
        self._latest: NodeMetrics | None = None
        self._scan: ActorScan | None = None
        self._next_scan = 0.0
        self._cpu_clock = cpu_clock
        self.scans = 0
        self._timer: TimerHandle | None = None
        self._closed = False

    @property
    def latest(self) -> NodeMetrics | None:
        """The last figures computed (published or not)."""
        return self._latest

    def start(self) -> MetricsPublisher:
        """Sample once now (so rates start from here), then every interval."""
        self.sample()
        self._schedule()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def sample(self) -> NodeMetrics:
        """Sample the node now; the result becomes :attr:`latest`. Actors are
        scanned again only if the last scan is due (see the module docstring)."""
        now = self.node.clock.now()
        scan = self._scan
        if scan is None or now >= self._next_scan:
            started = self._cpu_clock()
            scan = self._scan = scan_actors(self.node)
            cost = self._cpu_clock() - started
            self._next_scan = now + cost / SCAN_CPU_BUDGET
            self.scans += 1
        current = sample_node(self.node, scan)
        with self._lock:
            metrics = summarize(self.node.node_id, self._previous, current)
            self._previous = current
            self._latest = metrics
        return metrics

    def _schedule(self) -> None:
        if self.interval is None:
            return
        with self._lock:
            if not self._closed:
                self._timer = self.node.clock.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if self._closed:
            return
        try:
            self.publish(self.sample())
        except HuddleError as exc:  # the transport closed under us: the node is going
            log.debug("metrics not published: %s", exc)
            self.close()
            return
        self._schedule()

    def publish(self, metrics: NodeMetrics) -> None:
        """Encode ``metrics`` with the node's codec and publish it."""
        data = self.node.codec.encode(Envelope(to=SYS_METRICS, message=metrics, sender=self.node.address))
        self.node.transport.publish(self._channel, data)
        self.published += 1

