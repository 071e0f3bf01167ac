"""density: memory and start time per idle actor.

figures: 100,000 huddle actors spawned at addresses on one node (in-process
bus: this measures the runtime, not Redis); also bare ``PooledActor`` s.
baseline: pykka ``ThreadingActor`` x 2,000 (one OS thread each).
Each measurement runs in a fresh subprocess so RSS is not shared.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time

from common import parse_args, report


def _measure(kind: str, n: int) -> dict[str, float]:
    import psutil

    proc = psutil.Process()
    if kind == "threading":
        from pykka import ThreadingActor

        class Idle(ThreadingActor):
            use_daemon_thread = True

        make = Idle.start
    elif kind == "pooled":
        from actors import PooledActor

        class IdlePooled(PooledActor):
            pass

        make = IdlePooled.start
    else:
        from actors.runtime.actor import HuddleActor
        from actors.runtime.node import Node
        from bus.transport import InProcessHub, InProcessTransport

        class IdleHuddle(HuddleActor):
            pass

        node = Node(InProcessTransport(InProcessHub()), node_id="density").start()
        counter = iter(range(n + 1000))
        make = lambda: node.spawn(f"idle:a{next(counter)}", IdleHuddle)  # noqa: E731
    # warm up imports and allocator pools
    warm = [make() for _ in range(100)]
    gc.collect()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    refs = [make() for _ in range(n)]
    elapsed = time.perf_counter() - t0
    gc.collect()
    after = proc.memory_info().rss
    del warm, refs
    return {"rss_per_actor_bytes": (after - before) / n, "start_per_actor_us": elapsed / n * 1e6}


def _child(kind: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args("density", __doc__ or "")
    n = 10_000 if args.quick else 100_000
    n_threads = 500 if args.quick else 2_000
    huddle = _child("huddle", n)
    pooled = _child("pooled", n)
    threading_ = _child("threading", n_threads)
    report(
        args,
        figures={**huddle, "actors": n, "pooled_rss_per_actor_bytes": pooled["rss_per_actor_bytes"],
                 "pooled_start_per_actor_us": pooled["start_per_actor_us"]},
        baseline={**threading_, "actors": n_threads},
        goal={"rss_per_actor_bytes": 4096, "start_per_actor_us": 50},
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_measure(sys.argv[2], int(sys.argv[3]))))
        sys.stdout.flush()
        import os

        os._exit(0)  # idle threads/actors: no orderly shutdown needed for a measurement
    main()
