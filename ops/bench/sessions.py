"""sessions: 5,000 data-channel sessions on one node against the reference service.

figures: a child process runs one node (in-process bus) with N
``DataChannelSession`` actors, one meeting each, connected over the real
connector to a ``huddle dataserver`` process. ``all_online_s``: from the
first spawn to the N-th session online (buffer state received, first ping
out); ``rss_per_session_bytes``: the child's RSS growth from before the
first spawn to all online, per session, all-in (actor, core state,
mailbox, timers, socket, connection, buffers; imports and the HTTP pool
are warmed by 10 sessions first); ``idle_cpu_pct``: the child's CPU (% of
one core) over an idle window with every session's keepalive running
(a ping per session every 15 s, its pong, their acks); ``reconnects`` during
that window (0 expected).
baseline: N bare ``websockets`` client connections in one asyncio process
(register, open, authorization, buffer state, acks, a ping per socket every
15 s): the same three figures, in the same run, against the same service.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from common import parse_args, ratio, report, tune_baseline_gc
from session_fleet import (
    BareFleet,
    HuddleFleet,
    cpu_seconds,
    rss_bytes,
    run_child,
    wait_service,
)

from ops.dataserver.harness import DataServerProcess

DEADLINE_S = 600.0
WARM_SESSIONS = 10


def measure_huddle(n: int, idle_s: float) -> dict[str, float]:
    with DataServerProcess.start() as server:
        fleet = HuddleFleet(server)
        fleet.start(WARM_SESSIONS, prefix="warm")
        fleet.wait_online(WARM_SESSIONS, DEADLINE_S)
        before = rss_bytes()
        start = time.perf_counter()
        fleet.start(n)
        fleet.wait_online(WARM_SESSIONS + n, DEADLINE_S)
        all_online = time.perf_counter() - start
        after = rss_bytes()
        wait_service(server, lambda s: s["online"] == WARM_SESSIONS + n, DEADLINE_S)
        reconnecting = fleet.transitions()["connecting"]
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        threading.Event().wait(idle_s)  # the idle window itself is what is measured
        cpu1, t1 = cpu_seconds(), time.perf_counter()
        return {"all_online_s": all_online, "rss_per_session_bytes": (after - before) / n,
                "idle_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
                "reconnects": fleet.transitions()["connecting"] - reconnecting}


async def _bare(n: int, idle_s: float) -> dict[str, float]:
    with DataServerProcess.start() as server:
        async with BareFleet(server, subscribe=False) as fleet:
            await fleet.start(WARM_SESSIONS, prefix="warm")
            await fleet.wait_online(WARM_SESSIONS, DEADLINE_S)
            before = rss_bytes()
            start = time.perf_counter()
            await fleet.start(n)
            await fleet.wait_online(WARM_SESSIONS + n, DEADLINE_S)  # as the huddle fleet counts
            all_online = time.perf_counter() - start
            after = rss_bytes()
            reconnects = fleet.reconnects
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            await asyncio.sleep(idle_s)  # the idle window itself is what is measured
            cpu1, t1 = cpu_seconds(), time.perf_counter()
            return {"all_online_s": all_online, "rss_per_session_bytes": (after - before) / n,
                    "idle_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100, "reconnects": fleet.reconnects - reconnects}


def main() -> None:
    args = parse_args("sessions", __doc__ or "")
    n = 200 if args.quick else 5_000
    idle_s = 3.0 if args.quick else 45.0
    load = os.getloadavg()[0]
    huddle = run_child(__file__, "huddle", n, idle_s, timeout=DEADLINE_S * 2)
    bare = run_child(__file__, "bare", n, idle_s, timeout=DEADLINE_S * 2)
    report(args, figures={"sessions": n, **huddle,
                          "all_online_ratio": ratio(huddle["all_online_s"], bare["all_online_s"])},
           baseline={"sessions": n, **bare},
           goal={"all_online_ratio": 1.2, "rss_per_session_bytes": 40 * 1024, "reconnects": 0},
           notes={"idle_window_s": idle_s, "load_avg_1m_at_start": load})


def _bare_child(run: Any) -> dict[str, float]:
    tune_baseline_gc()  # Python's default unless HUDDLE_BENCH_BASELINE_GC=tuned
    return run()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        kind, count, idle = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        result: dict[str, Any] = measure_huddle(count, idle) if kind == "huddle" else _bare_child(lambda: asyncio.run(_bare(count, idle)))
        print(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)  # thousands of sockets and actors: no orderly shutdown needed after a measurement
    main()
