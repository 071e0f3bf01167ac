"""tell-local: message throughput between actors on one node.

figures:
  msgs_per_s       1,000,000 pykka tells (``ActorRef.tell``) spread over
                   10,000 pooled actors, from sending to handled;
  node_msgs_per_s  tells by address through the node (encode + decode on
                   every send, as the design requires even on one node).
baseline: the same tells to pykka ``ThreadingActor`` s (one thread each),
fewer of them, or the baseline alone would take minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from common import parse_args, report


def _run(kind: str, actors: int, tells: int) -> dict[str, float]:
    done = threading.Event()
    remaining = [tells]
    lock = threading.Lock()

    def handled_batch(k: int) -> None:
        with lock:
            remaining[0] -= k
            if remaining[0] <= 0:
                done.set()

    if kind == "node":
        from actors.node import HuddleActor, Node
        from bus.messages import Ping
        from bus.transport import InProcessHub, InProcessTransport

        per_actor = tells // actors

        class Counter(HuddleActor):
            seen = 0

            def on_message(self, message, envelope):
                self.seen += 1
                if self.seen == per_actor:
                    handled_batch(per_actor)

        node = Node(InProcessTransport(InProcessHub()), node_id="bench").start()
        addresses = [f"count:c{i}" for i in range(actors)]
        for a in addresses:
            node.spawn(a, Counter)
        msg = Ping(n=1)
        t0 = time.perf_counter()
        for i in range(per_actor * actors):
            node.tell(addresses[i % actors], msg)
    else:
        if kind == "threading":
            from pykka import ThreadingActor as Base
        else:
            from actors import PooledActor as Base
        per_actor = tells // actors

        class Counter(Base):  # type: ignore[no-redef]
            use_daemon_thread = True
            seen = 0

            def on_receive(self, message):
                self.seen += 1
                if self.seen == per_actor:
                    handled_batch(per_actor)

        refs = [Counter.start() for _ in range(actors)]
        t0 = time.perf_counter()
        for i in range(per_actor * actors):
            refs[i % actors].tell(i)
    if not done.wait(600):
        raise SystemExit("benchmark did not finish")
    elapsed = time.perf_counter() - t0
    return {"msgs_per_s": per_actor * actors / elapsed}


def _child(kind: str, actors: int, tells: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(actors), str(tells)],
                         capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args("tell-local", __doc__ or "")
    actors = 1_000 if args.quick else 10_000
    tells = 100_000 if args.quick else 1_000_000
    pooled = _child("pooled", actors, tells)
    node = _child("node", actors, tells // 5)
    base_actors = 500 if args.quick else 2_000
    threading_ = _child("threading", base_actors, base_actors * 10)
    report(
        args,
        figures={"msgs_per_s": pooled["msgs_per_s"], "node_msgs_per_s": node["msgs_per_s"],
                 "actors": actors, "tells": tells},
        baseline={"msgs_per_s": threading_["msgs_per_s"], "actors": base_actors, "tells": base_actors * 10},
        goal={"msgs_per_s": 250_000},
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        sys.stdout.flush()
        import os

        os._exit(0)
    main()
