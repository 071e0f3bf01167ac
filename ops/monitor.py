"""``huddle monitor``: the fleet, live, from the system channels alone.

A monitor is only a subscriber: it listens to ``sys:nodes`` (heartbeats),
``sys:metrics`` (each node's :class:`~actors.runtime.metrics.NodeMetrics`) and
``sys:events``, and never sends anything, so running one (or ten) changes
nothing in the fleet.

* :class:`MonitorState` is the core: envelopes (or decode refusals) go in
  with the time they arrived; :meth:`MonitorState.snapshot` gives the view
  as JSON-able data. No I/O, no clock of its own.
* :func:`render` draws a snapshot for a person with ``rich``.
* :class:`MonitorFeed` is the shell: a Redis subscription that feeds the
  state from the I/O thread.

Which node a message is about: the envelope's sender (``node:<id>``), which
every node sets on what it publishes; a message on ``sys:nodes`` without
one may name it in a ``node`` or ``node_id`` field. A node is *stale* when
nothing was heard from it for three of its metrics intervals (at least 3 s).
What cannot be decoded (an unknown kind, a bad signature) is counted by
reason, never shown raw.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.runtime.gcpolicy import GC_PAUSE_MAX
from actors.runtime.metrics import LEASE_RENEW_LATENCY, NodeMetrics
from bus.address import SYS_EVENTS, SYS_METRICS, SYS_NODES, channel_for
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError
from bus.messages import Event

__all__ = ["MonitorFeed", "MonitorState", "register", "render"]

MONITORED = (SYS_NODES, SYS_METRICS, SYS_EVENTS)
MIN_STALE_AFTER = 3.0
RECENT_EVENTS = 20
PRINT_WIDTH = 160
OLD_SCAN = 2.0
"""Actor figures at least this old (seconds) are shown with their age."""


def _node_of(env: Envelope) -> str | None:
    sender = env.sender or ""
    if sender.startswith("node:"):
        return sender[len("node:"):]
    for name in ("node", "node_id"):
        value = getattr(env.message, name, None)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass
class NodeView:
    """What the monitor knows about one node."""

    node: str
    last_seen: float
    metrics: NodeMetrics | None = None
    heartbeats: int = 0

    def stale_after(self) -> float:
        interval = self.metrics.interval if self.metrics is not None and self.metrics.interval > 0 else 1.0
        return max(MIN_STALE_AFTER, 3 * interval)


class MonitorState:
    """The monitor's view of the fleet, fed one message at a time."""

    def __init__(self, recent_events: int = RECENT_EVENTS) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.events: collections.deque[Event] = collections.deque(maxlen=recent_events)
        self.event_counts: collections.Counter[str] = collections.Counter()
        self.undecodable: collections.Counter[str] = collections.Counter()
        self.messages = 0

    def observe(self, channel: str, env: Envelope, now: float) -> None:
        """``env`` arrived on system channel ``channel`` (``sys:metrics``...) at ``now``."""
        self.messages += 1
        message = env.message
        node = _node_of(env)
        if channel == SYS_EVENTS and isinstance(message, Event):
            self.events.append(message)
            self.event_counts[message.event] += 1
            node = message.node or node
        view = self._seen(node, now) if node else None
        if view is None:
            return
        if channel == SYS_METRICS and isinstance(message, NodeMetrics):
            view.metrics = message
        elif channel == SYS_NODES:
            view.heartbeats += 1

    def refused(self, reason: str) -> None:
        """Something arrived that did not decode, for ``reason``."""
        self.messages += 1
        self.undecodable[reason] += 1

    def _seen(self, node: str, now: float) -> NodeView:
        view = self.nodes.get(node)
        if view is None:
            view = self.nodes[node] = NodeView(node=node, last_seen=now)
        view.last_seen = max(view.last_seen, now)
        return view

    def nodes_with_metrics(self) -> int:
        return sum(1 for v in self.nodes.values() if v.metrics is not None)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The whole view as JSON-able data (what ``--json`` prints)."""
        nodes = []
        by_kind: collections.Counter[str] = collections.Counter()
        totals = {"nodes": 0, "live_nodes": 0, "actors": 0, "received_per_s": 0.0, "sent_per_s": 0.0,
                  "restarts_total": 0, "dead_letters_total": 0}
        for name in sorted(self.nodes):
            view = self.nodes[name]
            age = max(0.0, now - view.last_seen)
            stale = age > view.stale_after()
            entry: dict[str, Any] = {"node": name, "age_s": round(age, 3), "stale": stale,
                                     "heartbeats": view.heartbeats, "metrics": None}
            totals["nodes"] += 1
            totals["live_nodes"] += not stale
            m = view.metrics
            if m is not None:
                figures = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
                entry["metrics"] = figures
                if not stale:
                    by_kind.update(m.actors_by_kind)
                    totals["actors"] += m.actors
                    totals["received_per_s"] += m.received_per_s
                    totals["sent_per_s"] += m.sent_per_s
                totals["restarts_total"] += m.restarts_total
                totals["dead_letters_total"] += m.dead_letters_total
            nodes.append(entry)
        return {
            "ts": now,
            "nodes": nodes,
            "totals": {**totals, "actors_by_kind": dict(sorted(by_kind.items()))},
            "events": [_event_json(e) for e in self.events],
            "event_counts": dict(sorted(self.event_counts.items())),
            "undecodable": dict(sorted(self.undecodable.items())),
            "messages": self.messages,
        }


def _event_json(event: Event) -> dict[str, Any]:
    return {"ts": event.ts, "event": event.event, "node": event.node, "address": event.address,
            "reason": event.reason, "detail": event.detail}


# -- drawing -------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def render(snapshot: dict[str, Any], title: str = "huddle monitor") -> Any:
    """A ``rich`` renderable of :meth:`MonitorState.snapshot`'s output."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    totals = snapshot["totals"]
    kinds = ", ".join(f"{k} {n}" for k, n in totals["actors_by_kind"].items()) or "none"
    header = Text.assemble(
        (title, "bold"),
        f"  {totals['live_nodes']}/{totals['nodes']} nodes live, {totals['actors']} actors ({kinds}), "
        f"in {_rate(totals['received_per_s'])}/s, out {_rate(totals['sent_per_s'])}/s, "
        f"restarts {totals['restarts_total']}, dead letters {totals['dead_letters_total']}",
    )
    nodes = Table(title="nodes", title_justify="left", expand=False)
    for column, justify in (("node", "left"), ("seen", "right"), ("actors", "right"), ("kinds", "left"),
                            ("in/s", "right"), ("out/s", "right"), ("mbox max/p99", "right"),
                            ("restarts", "right"), ("dead letters", "left"), ("lease", "right"),
                            ("gc pause", "right")):
        nodes.add_column(column, justify=justify)  # type: ignore[arg-type]
    for entry in snapshot["nodes"]:
        seen = f"{entry['age_s']:.1f}s"
        m = entry["metrics"]
        style = "dim" if entry["stale"] else None
        if m is None:
            nodes.add_row(entry["node"], seen, "-", "", "", "", "", "", "", "", "", style=style)
            continue
        by_kind = ", ".join(f"{k} {n}" for k, n in m["actors_by_kind"].items())
        dead = ", ".join(f"{r} {n}" for r, n in m["dead_letters_by_reason"].items()) or "0"
        lease = m["gauges"].get(LEASE_RENEW_LATENCY)
        gc_pause = m["gauges"].get(GC_PAUSE_MAX)
        actors = str(m["actors"]) + (f" ({m['actors_age']:.0f}s old)" if m["actors_age"] >= OLD_SCAN else "")
        nodes.add_row(
            entry["node"] + (" (stale)" if entry["stale"] else ""), seen, actors, by_kind,
            _rate(m["received_per_s"]), _rate(m["sent_per_s"]),
            f"{m['mailbox_depth_max']}/{m['mailbox_depth_p99']}", str(m["restarts_total"]), dead,
            "-" if lease is None else f"{lease * 1000:.1f} ms",
            "-" if gc_pause is None else f"{gc_pause * 1000:.0f} ms", style=style,
        )
    events = Table(title="recent events", title_justify="left", expand=False)
    for column in ("time", "node", "event", "address", "reason"):
        events.add_column(column)
    for ev in reversed(snapshot["events"]):
        stamp = time.strftime("%H:%M:%S", time.localtime(ev["ts"])) if ev["ts"] else ""
        events.add_row(stamp, ev["node"], ev["event"], ev["address"], ev["reason"])
    parts: list[Any] = [header, nodes, events]
    if snapshot["undecodable"]:
        parts.append(Text("undecodable: " + ", ".join(f"{r} {n}" for r, n in snapshot["undecodable"].items()),
                          style="yellow"))
    return Group(*parts)


# -- the shell ------------------------------------------------------------------------


class MonitorFeed:
    """Subscribes to the system channels on the bus at ``url`` and feeds a
    :class:`MonitorState` (the state is only touched under :attr:`lock`)."""

    def __init__(self, url: str, *, namespace: str = "", codec: Codec | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from bus.sharded import transport_for

        self.state = MonitorState()
        self.lock = threading.Condition()
        self._codec = codec or Codec()
        self._clock = clock
        self._names = {channel_for(name, namespace): name for name in MONITORED}
        self.transport = transport_for(url, name="huddle-monitor")
        self.transport.set_receiver(self._receive)
        self.transport.subscribe(*self._names)

    def start(self, timeout: float) -> bool:
        """Connect and subscribe; False if not subscribed within ``timeout``."""
        self.transport.start()
        return self.transport.wait_subscribed(timeout)

    def close(self) -> None:
        self.transport.close(flush_timeout=0)

    def _receive(self, channel: str, data: bytes) -> None:
        now = self._clock()
        try:
            env = self._codec.decode(data)
        except DecodeError as exc:
            with self.lock:
                self.state.refused(exc.reason)
                self.lock.notify_all()
            return
        with self.lock:
            self.state.observe(self._names.get(channel, channel), env, now)
            self.lock.notify_all()

    def wait_for(self, predicate: Callable[[MonitorState], bool], timeout: float) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: predicate(self.state), timeout)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self.state.snapshot(self._clock())


# -- the command ----------------------------------------------------------------------


def cmd_monitor(args: argparse.Namespace) -> int:
    from ops.options import bus_of
    from bus.endpoint import mask_url

    bus = bus_of(args, "monitor")
    if bus is None:
        return 2
    url, codec = bus
    feed = MonitorFeed(url, namespace=args.namespace, codec=codec)
    title = f"huddle monitor  {mask_url(url)}{'  ns ' + args.namespace if args.namespace else ''}"
    try:
        if not feed.start(args.timeout):
            print(f"could not subscribe on {mask_url(url)}", file=sys.stderr)
            return 2
        if args.once:
            complete = feed.wait_for(lambda s: s.nodes_with_metrics() >= args.min_nodes, args.timeout)
            _print(feed.snapshot(), args.json, title)
            if not complete:
                print(f"only {feed.state.nodes_with_metrics()} node(s) reported metrics within {args.timeout:g}s "
                      f"(wanted {args.min_nodes})", file=sys.stderr)
            return 0 if complete else 1
        if args.json:
            # Scripts: collect for the whole period, then print once.
            threading.Event().wait(args.for_seconds if args.for_seconds is not None else args.timeout)
            _print(feed.snapshot(), True, title)
            return 0
        return _live(feed, title, args.for_seconds)
    except KeyboardInterrupt:
        return 0
    finally:
        feed.close()


def _print(snapshot: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(snapshot, default=_hex), flush=True)
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=PRINT_WIDTH)  # a pipe or a file: no terminal width to fit
    console.print(render(snapshot, title))


def _hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _live(feed: MonitorFeed, title: str, seconds: float | None) -> int:
    from rich.live import Live

    deadline = None if seconds is None else time.monotonic() + seconds
    tick = threading.Event()
    with Live(render(feed.snapshot(), title), refresh_per_second=4, screen=False) as live:
        while deadline is None or time.monotonic() < deadline:
            tick.wait(0.25)
            live.update(render(feed.snapshot(), title))
    return 0


def register(subparsers: Any) -> None:
    """Add ``huddle monitor`` to the command line."""
    from ops.options import add_cluster_key_option

    monitor = subparsers.add_parser(
        "monitor",
        help="watch nodes, actors, rates and events live",
        description="Draw the fleet live from sys:nodes, sys:metrics and sys:events: nodes (stale ones\n"
        "dimmed), actors by kind, messages in/out per second, mailbox depth (max and p99), restarts,\n"
        "dead letters by reason, lease renew latency, and the most recent events. The monitor only\n"
        "subscribes; it sends nothing. Ctrl-C quits.",
        epilog="examples:  huddle monitor\n"
        "           huddle monitor --once --json --min-nodes 2     (scripts: one JSON snapshot, exit 1 if "
        "fewer nodes reported)\n"
        "           huddle monitor --for 10 --json                 (collect 10 s, print one JSON snapshot)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    monitor.add_argument("--once", action="store_true",
                         help="wait until --min-nodes nodes reported metrics (at most --timeout), print, exit")
    monitor.add_argument("--for", dest="for_seconds", type=float, default=None, metavar="SECONDS",
                         help="watch for SECONDS, then exit (with --json: print one snapshot at the end)")
    monitor.add_argument("--json", action="store_true", help="print JSON instead of drawing tables")
    monitor.add_argument("--min-nodes", type=int, default=1, metavar="N",
                         help="with --once: how many nodes must have reported metrics (default 1)")
    monitor.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                         help="with --once: how long to wait for them (default 10)")
    monitor.add_argument("--redis-url", help="bus to watch (default: $REDIS_URL)")
    monitor.add_argument("--namespace", default="", help="channel prefix of the cluster")
    add_cluster_key_option(monitor)
    monitor.set_defaults(func=cmd_monitor)
