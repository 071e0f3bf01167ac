"""storm: restart the reference service under 5,000 online sessions.

figures: a child process runs one node with N ``DataChannelSession`` actors
(one meeting each) online with a ``transcription`` subscription against a
``huddle dataserver`` process, which is then restarted (killed, a new
process on the same ports: every socket drops, the service forgets every
binding and subscription). ``all_resubscribed_s``: from the kill until the
new service holds N online sockets and N sessions subscribed to
``transcription`` (its own counts); ``lost_subscriptions``: sessions without
the subscription at the deadline (0 expected); ``restart_s``: the harness's
kill-and-ready time, included in the former.
baseline: the same with N bare ``websockets`` clients in one asyncio
process that reconnect like the upstream client (at once, then 1, 2, 4 ...
32 s, no jitter) and send their subscription again on each new socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from common import parse_args, ratio, report, tune_baseline_gc
from session_fleet import (
    BareFleet,
    HuddleFleet,
    run_child,
    subscribed_sessions,
    wait_service,
)

from ops.dataserver.harness import DataServerProcess

DEADLINE_S = 600.0
SETTLE_DEADLINE_S = 120.0
PREFIX = "m"


def _all_back(n: int):  # noqa: ANN202 - a predicate over the service's summary state
    return lambda s: s["online"] >= n and subscribed_sessions(s, PREFIX) >= n


def _restart_and_measure(server: DataServerProcess, n: int) -> dict[str, float]:
    start = time.perf_counter()
    server.restart()
    restart = time.perf_counter() - start
    try:
        wait_service(server, _all_back(n), SETTLE_DEADLINE_S)
        resubscribed = time.perf_counter() - start
    except TimeoutError:
        resubscribed = float("nan")
    state = server.state(detail=False)
    return {"all_resubscribed_s": resubscribed, "lost_subscriptions": n - subscribed_sessions(state, PREFIX),
            "restart_s": restart}


def measure_huddle(n: int) -> dict[str, float]:
    with DataServerProcess.start() as server:
        fleet = HuddleFleet(server)
        fleet.start(n, prefix=PREFIX, subscribe=True)
        fleet.wait_online(n, DEADLINE_S)
        wait_service(server, _all_back(n), DEADLINE_S)
        result = _restart_and_measure(server, n)
        result["sessions_online_after"] = fleet.counts()["online"]
        return result


async def _bare(n: int) -> dict[str, float]:
    with DataServerProcess.start() as server:
        async with BareFleet(server, subscribe=True) as fleet:
            await fleet.start(n, prefix=PREFIX)
            await fleet.wait_online(n, DEADLINE_S)
            await asyncio.to_thread(wait_service, server, _all_back(n), DEADLINE_S)
            result = await asyncio.to_thread(_restart_and_measure, server, n)
            result["sessions_online_after"] = len(fleet.online)
            return result


def main() -> None:
    args = parse_args("storm", __doc__ or "")
    n = 200 if args.quick else 5_000
    load = os.getloadavg()[0]
    huddle = run_child(__file__, "huddle", n, timeout=DEADLINE_S * 2)
    bare = run_child(__file__, "bare", n, timeout=DEADLINE_S * 2)
    report(args, figures={"sessions": n, **huddle,
                          "all_resubscribed_ratio": ratio(huddle["all_resubscribed_s"], bare["all_resubscribed_s"])},
           baseline={"sessions": n, **bare},
           goal={"all_resubscribed_ratio": 1.2, "all_resubscribed_s": 10, "lost_subscriptions": 0},
           notes={"load_avg_1m_at_start": load})


def _bare_child(run: Any) -> dict[str, float]:
    tune_baseline_gc()  # Python's default unless HUDDLE_BENCH_BASELINE_GC=tuned
    return run()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        kind, count = sys.argv[2], int(sys.argv[3])
        result: dict[str, Any] = measure_huddle(count) if kind == "huddle" else _bare_child(lambda: asyncio.run(_bare(count)))
        print(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)  # thousands of sockets and actors: no orderly shutdown needed after a measurement
    main()
