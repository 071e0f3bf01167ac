"""The ``huddle`` command line.

    huddle node      run a worker node (REDIS_URL, or an embedded Redis)
    huddle inject    send one message to an address through the bus
    huddle demo      a webinar end to end on one machine
    huddle bench     run a benchmark and print figures next to a baseline
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import sys
from pathlib import Path
from typing import Any

from ops import signals
from ops.options import UNSIGNED_CLUSTER_REFUSED, add_cluster_key_option, bus_of, cluster_codec, redis_url_of

__all__ = ["build_parser", "main"]

log = logging.getLogger("huddle.cli")

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "ops" / "bench"

BENCHMARKS = {
    "audio": "200 audio outputs on one node, 20 ms frames into paced sinks: delivery jitter and CPU (baseline: the same streams paced by a plain asyncio loop, no actors).",
    "density": "100,000 idle pooled actors on one node: RSS and start time per actor (baseline: pykka ThreadingActor x 2,000).",
    "tell-local": "10,000 actors, 1,000,000 tells on one node (baseline: pykka ThreadingActor).",
    "tell-remote": "two node processes over a real Redis, 500,000 tells across (baseline: raw redis-py pipelined publish -> subscriber).",
    "ask-remote": "10,000 sequential asks across two node processes (baseline: raw redis-py pub/sub ping-pong).",
    "dataserver-sockets": "5,000 raw clients online on one huddle dataserver: time, RSS per socket, fan-out, restart (baseline: bare websockets server).",
    "token-fetch": "1,000 token actors fetch a token each from huddle dataserver over HTTP, then 20,000 grants from held tokens (baseline: the same GETs from one bare aiohttp session).",
    "meetings": "N meetings (default 1,000; HUDDLE_BENCH_MEETINGS) on 2 node processes against the reference service: settle time, messages and RSS per meeting (baseline: the same sessions as raw websockets clients).",
    "sessions": "5,000 data-channel session actors online on one node against the reference service: time, RSS per session, idle CPU with keepalives (baseline: bare websockets clients).",
    "storm": "restart the reference service under 5,000 online sessions with transcription subscriptions: time until all resubscribed, lost subscriptions (baseline: bare clients, upstream backoff without jitter).",
    "failover": "3 cluster node processes, 1,000 stateful actors; kill -9 one: seconds until each of its actors is live elsewhere (baseline: the detection delay).",
    "failover-meetings": "3 node processes hosting N meetings (default 1,000; HUDDLE_BENCH_MEETINGS) against the reference service, 1 s leases; kill -9 one: seconds until each of its meetings holds its lease on a survivor with every session online on a new socket and subscribed, survivor leases lost, captions lost (baseline: the detection delay).",
    "tracing": "40,000 messages sent and handled on one node in no trace (baseline), in W3C traces (the field alone) and with OpenTelemetry spans: microseconds per message.",
    "redis-cluster": "the tell-remote load over a Redis Cluster of 3 primaries (shard channels): msgs/s, lost, shard imbalance, each primary's CPU; a primary killed mid-run: lost, time until resubscribed (baseline: the same load on one redis-server).",
    "chaos": "a bounded soak (--minutes) that kills, pauses and restarts nodes and Redis; invariants from sys:events, sys:nodes and the fencing log (baseline: the same load without chaos).",
}


#: Modules that add their own subcommands; each has ``register(subparsers)``.
#: A feature keeps its command next to its code and adds one line here.
COMMAND_MODULES: tuple[str, ...] = (
    "ops.dataserver.cli",
    "ops.roomservice_command",
    "ops.monitor",
    "ops.tap",
    "ops.sim.command",
)


# -- huddle node ---------------------------------------------------------------


def _load_contracts() -> None:
    """Register every session actor's message kinds, so a worker decodes
    (and a tap redacts) any of them."""
    import pkgutil

    import actors.sessions.contracts

    for module in pkgutil.iter_modules(actors.sessions.contracts.__path__, "actors.sessions.contracts."):
        importlib.import_module(module.name)


def cmd_node(args: argparse.Namespace) -> int:
    from actors.runtime.builtin import Echo, Relay
    from ops import cluster_command as cluster_cli
    from actors.runtime.gcpolicy import GcWatch
    from actors.runtime.gcpolicy import tune as tune_gc
    from actors.runtime.metrics import MetricsPublisher
    from actors.runtime.node import Node, default_node_id
    from ops.prometheus import serve_metrics
    from ops.telemetry import TelemetryError, telemetry_from_env
    from ops.tap import TapService
    from bus.embedded import EmbeddedRedis
    from bus.errors import HuddleError

    _load_contracts()
    from bus.endpoint import mask_url
    from bus.sharded import transport_for
    from bus.signing import write_new_cluster_key

    codec = cluster_codec(args)
    if codec is None:
        return 2
    url = redis_url_of(args)
    if args.drain:
        if url is None:
            print("huddle node --drain needs the cluster's bus: set REDIS_URL or pass --redis-url", file=sys.stderr)
            return 2
        return cluster_cli.drain_node(url, args.drain, args.namespace, timeout=args.run_for or 60.0, codec=codec)
    clustered = cluster_cli.cluster_requested(args)
    key_file = None
    if clustered and not codec.signed and not args.insecure_no_signing:
        if url is not None:
            print(UNSIGNED_CLUSTER_REFUSED, file=sys.stderr)
            return 2
        # A private embedded bus: this node makes the fleet's key itself.
        key_file = write_new_cluster_key(Path(tempfile.mkdtemp(prefix="huddle-key-")) / "cluster.key")
        args.cluster_key_file = str(key_file)
        codec = cluster_codec(args)
        assert codec is not None
    node_id = args.node_id or default_node_id()
    try:
        telemetry = telemetry_from_env(node_id)
    except TelemetryError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    embedded = None
    if url is None:
        embedded = EmbeddedRedis().start()
        url = embedded.url
        print(f"embedded redis-server (pid {embedded.pid}) at {url}", flush=True)
        key_hint = f" --cluster-key-file {key_file}" if key_file is not None else ""
        if key_file is not None:
            print(f"cluster key (made for this bus) in {key_file}: pass --cluster-key-file {key_file} to every "
                  "other node and tool on it", flush=True)
        print(f"  try: REDIS_URL={url} huddle inject echo:1 sys.ping '{{\"n\": 1}}' --ask{key_hint}", flush=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 PID: every thread's stack to stderr
    stop = signals.stop_event()
    transport = transport_for(url, name=node_id)
    node = Node(transport, node_id=node_id, namespace=args.namespace, codec=codec,
                tracing=telemetry.tracing if telemetry is not None else None)
    publisher = MetricsPublisher(node, interval=args.metrics_interval or None)
    endpoint = None
    meetings = None
    if args.meetings is not None:
        from actors.sessions.meeting.host import TREE_KIND, MissingAccessToken, NodeMeetings, read_access_token

        try:
            token = read_access_token(args.meetings_token_file) if args.meetings_token_file else None
        except MissingAccessToken as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
        meetings = NodeMeetings(node, args.meetings or f"https://devices.huddle.local/{node.node_id}",
                                access_token=token)
    cluster = None
    if cluster_cli.cluster_requested(args):
        # This node starts meeting trees by itself (placement, failover) when it hosts meetings.
        factories = {TREE_KIND: meetings.tree} if meetings is not None else {}
        cluster = cluster_cli.join_cluster(node, url, args, stop, factories)
    gc_watch = GcWatch()
    gc_watch.install()
    gc_watch.add_gauges(node.metrics)
    if args.gc == "tuned":
        tune_gc()  # start-up is done: what exists now lives as long as the process
    try:
        try:
            node.start()
        except HuddleError as exc:  # e.g. a wrong password: the message names the masked URL only
            print(f"cannot join the bus: {exc}", file=sys.stderr)
            return 2
        if not transport.wait_subscribed(10):
            print(f"could not subscribe on {mask_url(url)}", file=sys.stderr)
            return 2
        for address in args.echo:
            node.spawn(address, Echo)
        for address, target in args.relay:
            node.spawn(address, Relay, target=target)
        hosted = [*args.echo, *(address for address, _ in args.relay)]
        if meetings is not None:
            from actors.sessions.meeting.host import MeetingHost, host_address

            node.spawn(host_address(node.node_id), MeetingHost, meetings=meetings)
            hosted.append(host_address(node.node_id))
        if cluster is not None and not cluster_cli.settle_cluster(node, cluster, hosted, args):
            return 2
        if not transport.wait_subscribed(10):
            print("could not subscribe the hosted addresses", file=sys.stderr)
            return 2
        TapService(node).start()
        if not transport.wait_subscribed(10):
            print("could not subscribe the system channels", file=sys.stderr)
            return 2
        publisher.start()
        if args.metrics_port is not None:
            endpoint = serve_metrics(publisher, args.metrics_port, args.metrics_host)
            print(f"prometheus metrics at {endpoint.url}", flush=True)
        print(f"node {node.node_id} up on {mask_url(url)}; hosting {', '.join(node.addresses()) or 'nothing yet'}",
              flush=True)
        if args.ready_file:  # written whole, once every channel is live
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(node.node_id)
            tmp.replace(args.ready_file)
        signals.wait(stop, args.run_for or None)
        return 0
    finally:
        if endpoint is not None:
            endpoint.close()
        publisher.close()
        node.shutdown()
        if telemetry is not None:
            telemetry.shutdown()  # the spans still batched are exported
        if embedded is not None:
            embedded.stop()
        print(f"node {node.node_id} stopped", flush=True)


# -- huddle inject ------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    """``huddle keygen FILE``: a new cluster key, in a file only its owner reads."""
    from bus.signing import write_new_cluster_key

    try:
        path = write_new_cluster_key(Path(args.file))
    except FileExistsError:
        print(f"{args.file} exists; not overwriting (add a new key as its first line to rotate)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot write {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"cluster key written to {path} (mode 0600); give it to every node and tool with --cluster-key-file")
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    import actors.runtime.messages  # noqa: F401 - registers the runtime's kinds
    from actors.runtime.node import Node
    from actors.runtime.tracing import in_trace
    from bus.envelope import new_traceparent
    from bus.errors import HuddleError
    from bus.messages import REGISTRY
    from bus.sharded import transport_for

    _load_contracts()  # so any session actor's message can be sent (and its answer read)
    bus = bus_of(args, "inject")
    if bus is None:
        return 2
    url, codec = bus
    try:
        body = json.loads(args.json_body)
    except json.JSONDecodeError as exc:
        print(f"JSON_BODY is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        message = REGISTRY.from_body(args.kind, body)
    except HuddleError as exc:
        print(f"refused: {exc}. Known kinds: {', '.join(sorted(REGISTRY.kinds()))}", file=sys.stderr)
        return 2
    transport = transport_for(url, name="huddle-inject")
    node = Node(transport, node_id=args.node_id, namespace=args.namespace, codec=codec)
    node.start()
    try:
        if not transport.wait_subscribed(10):
            print("bus unreachable", file=sys.stderr)
            return 2
        trace = new_traceparent() if args.trace else None
        if trace is not None:
            print(f"trace {trace[3:35]}", file=sys.stderr, flush=True)
        if args.ask:
            try:
                with in_trace(trace):
                    future = node.ask(args.address, message, timeout=args.timeout)
                reply = future.get(timeout=args.timeout + 1)
            except HuddleError as exc:
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(_jsonable(reply)))
        else:
            with in_trace(trace):
                node.tell(args.address, message)
            if not transport.flush(args.timeout):
                print("not sent: the bus did not take the message in time", file=sys.stderr)
                return 1
            print(f"sent {args.kind} to {args.address}")
        return 0
    finally:
        node.shutdown()


def _jsonable(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return {"kind": value.KIND, **{k: _jsonable(v) for k, v in asdict(value).items()}}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# -- huddle demo --------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from ops.demo.webinar import DemoOptions, default_attendees, run

    attendees = args.attendees if args.attendees is not None else default_attendees()
    return run(DemoOptions(attendees=attendees, live=False if args.plain else None, fault=args.fault or "",
                           deadline=args.deadline, redis_cluster=args.redis_cluster))


def _attendees(text: str) -> int:
    """An argparse type: a number of attendees, 2 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError("a webinar needs at least 2 attendees")
    return value


# -- huddle bench -------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    script = BENCH_DIR / f"{args.name.replace('-', '_')}.py"
    if not script.exists():
        print(f"benchmark files not found at {BENCH_DIR} (run from a checkout)", file=sys.stderr)
        return 2
    cmd = [sys.executable, str(script)]
    if args.quick:
        cmd.append("--quick")
    if args.json_out:
        cmd += ["--json-out", args.json_out]
    if args.minutes is not None:
        cmd += ["--minutes", str(args.minutes)]
    return subprocess.call(cmd, cwd=REPO_ROOT)


# -- parser -------------------------------------------------------------------


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more: {text!r}")
    return value


def _relay(text: str) -> tuple[str, str]:
    """An argparse type: ``ADDRESS=TARGET``, two bus addresses."""
    from bus.address import parse_address
    from bus.errors import HuddleError

    address, sep, target = text.partition("=")
    try:
        if not sep:
            raise HuddleError("expected ADDRESS=TARGET")
        parse_address(address)
        parse_address(target)
    except HuddleError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return address, target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="huddle",
        description="huddle: supervised actors for meeting and voice-agent fleets, "
        "talking msgpack over Redis pub/sub.",
        epilog="Every command takes --help. The bus is REDIS_URL (redis://[user:pass@]host:port/db, "
        "rediss:// for TLS, unix:///path); `huddle node` starts an embedded redis-server when it is unset.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser(
        "node",
        help="run a worker node",
        description="Run a worker node: it hosts actors by address and bridges its Redis channels to their "
        "mailboxes. With no REDIS_URL (and no --redis-url) it starts a private embedded redis-server and "
        "prints its URL, so other commands can join the same bus.",
        epilog="example: huddle node --echo echo:1   then, in another shell:  "
        "REDIS_URL=<printed url> huddle inject echo:1 sys.ping '{\"n\": 7}' --ask",
    )
    node.add_argument("--redis-url", help="bus to join (default: $REDIS_URL, else an embedded Redis)")
    node.add_argument("--node-id", help="this node's id; its address is node:<id> (default: host-pid-n)")
    node.add_argument("--namespace", default="", help="prefix for every channel, to share one Redis between clusters")
    node.add_argument("--echo", action="append", default=[], metavar="ADDRESS",
                      help="host an Echo actor at ADDRESS (answers sys.ping with sys.pong); repeatable")
    node.add_argument("--relay", action="append", default=[], type=_relay, metavar="ADDRESS=TARGET",
                      help="host a Relay actor at ADDRESS that answers sys.ping with TARGET's answer to it "
                      "(a cross-node smoke check, e.g. relay:1=echo:2); repeatable")
    node.add_argument("--meetings", nargs="?", const="", default=None, metavar="DEVICE_URL",
                      help="host meetings: a meeting host at meetings:<node-id> starts and stops meeting trees "
                      "(meeting.start / meeting.stop); DEVICE_URL is what the data channels register with. In a "
                      "cluster the trees are placed, and re-activated elsewhere when their node dies")
    node.add_argument("--meetings-token-file", metavar="FILE",
                      help="the access token (first line of FILE) of meetings that start on this node without "
                      "one of their own: placed here by the cluster, or re-activated after a failover")
    node.add_argument("--run-for", type=float, default=None, metavar="SECONDS",
                      help="stop by itself after SECONDS (default: run until SIGINT/SIGTERM)")
    node.add_argument("--ready-file", help="write the node id to this file once the node is up (for scripts)")
    add_cluster_key_option(node)
    node.add_argument("--metrics-interval", type=_seconds, default=1.0, metavar="SECONDS",
                      help="publish this node's figures on sys:metrics every SECONDS (default 1; 0: never)")
    node.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                      help="serve Prometheus figures at http://HOST:PORT/metrics (0: any free port, printed)")
    node.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                      help="address the metrics endpoint binds (default 127.0.0.1)")
    node.add_argument("--gc", choices=("tuned", "default"), default="tuned",
                      help="the garbage collector: 'tuned' (default: young collections every 50,000 allocations, "
                      "start-up's objects frozen out of full collections) or Python's 'default' thresholds; "
                      "either way its pauses are node gauges (gc_pause_max_s, gc_seconds)")
    from ops.cluster_command import add_node_options

    add_node_options(node)
    node.add_argument("--insecure-no-signing", action="store_true",
                      help="run a cluster node without a cluster key (envelopes unsigned: anyone who can publish "
                      "on Redis can speak for any actor). Without it, a cluster node on a given Redis refuses to "
                      "start with no key; on the embedded Redis it makes one")
    node.set_defaults(func=cmd_node)

    keygen = sub.add_parser(
        "keygen",
        help="make a new cluster key",
        description="Write a new random cluster key (32 bytes, hex) to FILE, readable by its owner only. "
        "Every node and tool of one fleet gets the same file (--cluster-key-file).",
    )
    keygen.add_argument("file", metavar="FILE", help="where to write the key (never overwritten)")
    keygen.set_defaults(func=cmd_keygen)

    inject = sub.add_parser(
        "inject",
        help="send one message through the bus",
        description="Encode one message of kind KIND with body JSON_BODY and send it to ADDRESS through the bus, "
        "exactly as an actor would. The body is checked against the kind's typed fields first: a wrong field is "
        "refused here, not on the receiver.",
        epilog="examples:  huddle inject echo:1 sys.ping '{\"n\": 1}' --ask\n"
        "           huddle inject meeting:m-42 sys.stop '{}'",
    )
    inject.add_argument("address", metavar="ADDRESS", help="where to send, kind:id[/sub], e.g. echo:1")
    inject.add_argument("kind", metavar="KIND", help="message kind, e.g. sys.ping")
    inject.add_argument("json_body", metavar="JSON_BODY", help="the message fields as a JSON object")
    inject.add_argument("--ask", action="store_true", help="wait for the reply and print it as JSON")
    inject.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply (default 5)")
    inject.add_argument("--trace", action="store_true",
                        help="start a trace: the message (and all it causes, across nodes) carries a new W3C "
                        "traceparent; its trace id is printed on stderr (nodes with OTEL_TRACES_EXPORTER set "
                        "export its spans)")
    inject.add_argument("--redis-url", help="bus to use (default: $REDIS_URL)")
    inject.add_argument("--node-id", help="id of the short-lived node that sends (default: host-pid-n)")
    inject.add_argument("--namespace", default="", help="channel prefix of the cluster")
    add_cluster_key_option(inject)
    inject.set_defaults(func=cmd_inject)

    from ops.demo.webinar import FAULTS

    demo = sub.add_parser(
        "demo",
        help="a webinar end to end on one machine",
        description="With nothing configured: start an embedded redis-server, the reference data-channel\n"
        "service, a media receiver and 2 worker node processes, then run a webinar on them:\n"
        "  - attendees wait in the lobby and are admitted;\n"
        "  - panelists are promoted into a practice session;\n"
        "  - captions are on, so transcription subscriptions are live and captions flow;\n"
        "  - an incoming call tries to take a data channel it does not own, and is refused;\n"
        "  - an agent speaks through an audio output, with a false interruption and a real one;\n"
        "  - one worker is killed (kill -9) and its meetings recover on the other;\n"
        "  - the data-channel service drops and restarts: everyone reconnects and resubscribes.\n"
        "A live view shows the progress (plain lines when stdout is not a terminal). The summary\n"
        "states sessions settled, recoveries and their times, refusals, messages lost and\n"
        "subscriptions lost. Exit code 0 only when every check held.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="faults (--fault NAME):\n" + "\n".join(f"  {k}: {v}" for k, v in FAULTS.items()),
    )
    demo.add_argument("--attendees", type=_attendees, default=None, metavar="N",
                      help="participant sessions in the webinar (default: 200 per core, at most 800; 400 on 2 "
                      "cores); every 10th is a panelist")
    demo.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
    demo.add_argument("--redis-cluster", action="store_true",
                      help="run the bus and the lease store on a local Redis Cluster (3 primaries, a replica "
                      "each) instead of one redis-server; needs redis-server 7 or later installed")
    demo.add_argument("--fault", choices=sorted(FAULTS), metavar="NAME",
                      help="inject a fault the demo's checks must catch (exit code 1); see below")
    demo.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                      help="stop past this many seconds, writing every thread's stack to stderr (exit code 130)")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark",
        description="Run one benchmark. It prints one JSON object: `figures` (huddle), `baseline` (the "
        "alternative, measured in the same run) and `goal`, each a flat map of name -> number with the unit "
        "in the name. Benchmarks start their own embedded Redis and node processes.\n\n"
        + "\n".join(f"  {k:12s} {v}" for k, v in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME", help=", ".join(sorted(BENCHMARKS)))
    bench.add_argument("--quick", action="store_true", help="a smaller run (smoke check, figures not comparable)")
    bench.add_argument("--json-out", metavar="FILE", help="also write the JSON object to FILE")
    bench.add_argument("--minutes", type=float, default=None, help="how long a soak runs (chaos)")
    bench.set_defaults(func=cmd_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("HUDDLE_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
