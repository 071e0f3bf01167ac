"""tracing: what a trace costs per message, on one node.

Each round sends 20,000 messages to 1,000 actors; each handler tells one
more message on to a second actor (through the node: encode and decode on
every send), so 40,000 messages are sent and handled per round, in three
modes, each in a fresh process, best of three rounds:

  untraced   messages in no trace (the baseline, measured in the same run);
  w3c        every message in a trace, the W3C field alone (no OpenTelemetry):
             a context variable set per message handled, a new span id per
             message sent;
  otel       every message in a sampled trace with OpenTelemetry's SDK: a
             producer span per send, a consumer span per handled message,
             batched to an exporter that drops them (the cost of making and
             ending spans, not of shipping them);
  otel-unsampled  the same in a trace the sampler did not keep (flags 00):
             what most messages cost when traces are sampled.

figures: ``<mode>_us_per_msg`` (wall time per message sent and handled) and
``<mode>_vs_untraced``; the modes run interleaved, each in a fresh process; goal: the W3C field within 1.15x of untraced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from common import parse_args, ratio, report

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = TRACE[:-2] + "00"
MODES = ("untraced", "w3c", "otel", "otel-unsampled")


def _run(mode: str, actors: int, chains: int) -> dict[str, float]:
    from actors.runtime.actor import HuddleActor
    from actors.runtime.node import Node
    from actors.runtime.tracing import OtelTracing, in_trace
    from bus.messages import Ping
    from bus.transport import InProcessHub, InProcessTransport

    tracing = None
    if mode.startswith("otel"):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans: object) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
        tracing = OtelTracing(provider)
    done = threading.Event()
    remaining = [chains]
    lock = threading.Lock()

    class Hop(HuddleActor):
        def on_message(self, message, envelope):  # type: ignore[no-untyped-def]
            if message.n == 0:
                self.tell(self.address.replace("hop:", "end:"), Ping(n=1))
            else:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

    node = Node(InProcessTransport(InProcessHub()), node_id="bench", tracing=tracing).start()
    starts = [f"hop:{i}" for i in range(actors)]
    for address in starts:
        node.spawn(address, Hop)
        node.spawn(address.replace("hop:", "end:"), Hop)
    first = Ping(n=0)
    trace = {"untraced": None, "otel-unsampled": UNSAMPLED}.get(mode, TRACE)
    t0 = time.perf_counter()
    with in_trace(trace):
        for i in range(chains):
            node.tell(starts[i % actors], first)
    if not done.wait(300):
        raise SystemExit("benchmark did not finish")
    elapsed = time.perf_counter() - t0
    node.shutdown()
    return {"us_per_msg": elapsed / (2 * chains) * 1e6}


def _child(mode: str, actors: int, chains: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(actors), str(chains)],
                         capture_output=True, text=True, check=True, timeout=600)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_msg"])


def main() -> None:
    args = parse_args("tracing", __doc__ or "")
    actors, chains = (200, 4_000) if args.quick else (1_000, 20_000)
    best = {mode: float("inf") for mode in MODES}
    for _ in range(3):  # interleaved, so a burst of other load hits every mode alike
        for mode in MODES:
            best[mode] = min(best[mode], _child(mode, actors, chains))
    report(
        args,
        figures={**{f"{mode.replace('-', '_')}_us_per_msg": best[mode] for mode in MODES[1:]},
                 **{f"{mode.replace('-', '_')}_vs_untraced": ratio(best[mode], best["untraced"])
                    for mode in MODES[1:]},
                 "messages_per_round": 2 * chains},
        baseline={"untraced_us_per_msg": best["untraced"]},
        goal={"w3c_vs_untraced": 1.15},
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        sys.stdout.flush()
        import os

        os._exit(0)
    main()
