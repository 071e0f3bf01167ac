"""ask-remote: request/reply latency between two node processes over Redis.

figures: one process hosts an :class:`actors.runtime.builtin.Echo` at ``echo:1``;
the other makes 10,000 sequential ``node.ask("echo:1", Ping(i)).get()``
(after 200 warm-up asks) and times each one (``time.perf_counter()``):
``p50_us``, ``p99_us``, ``mean_us``, ``max_us``. Each round trip is: encode,
PUBLISH, the echo node decodes and runs the handler on its loop, encodes
the Pong as a ``sys.reply``, PUBLISH, the asking node's loop decodes and
completes the future, the calling (main) thread wakes. ``loop_p50_us``,
``loop_p99_us``: the same asks awaited by a coroutine on the asking node's
own loop (as an actor or a task there asks): no thread is woken.
baseline: redis-py pub/sub ping-pong between two processes, same Redis
(``raw_redis.baseline_ping_pong``).

Every process is started here and ended by PID, also on error.
"""

from __future__ import annotations

import os
from typing import Any

from common import parse_args, ratio, report
from nodeproc import ScriptedNode
from raw_redis import baseline_ping_pong

from bus.embedded import EmbeddedRedis

WARMUP = 200


def measure(url: str, n: int) -> dict[str, float]:
    echo = asker = None
    try:
        echo = ScriptedNode("echo", url, "bench-echo", "--echo", "echo:1")
        asker = ScriptedNode("asker", url, "bench-ask")
        echo.ready()
        asker.ready()
        result: dict[str, Any] = {}
        for on_loop, tag in ((False, "ask-remote"), (True, "ask-remote-loop")):
            echo.send(cmd="mark")
            echo.start_profile(tag)
            asker.start_profile(tag)
            asker.send(cmd="run", target="echo:1", n=n, warmup=WARMUP, timeout=5.0, on_loop=on_loop)
            asked = asker.expect("event", "asked", timeout=600)
            echo.end_profile()
            asker.end_profile()
            asker.send(cmd="stats")
            asker_stats = asker.expect("event", "stats", timeout=30)
            echo.send(cmd="stats")
            echo_stats = echo.expect("event", "stats", timeout=30)
            prefix = "loop_" if on_loop else ""
            result.update({f"{prefix}{k}": v for k, v in asked.items() if k != "event"})
            result[f"{prefix}asker_cpu_us_per_ask"] = asker_stats["cpu_seconds"] / (n + WARMUP) * 1e6
            result[f"{prefix}echo_cpu_us_per_ask"] = echo_stats["cpu_seconds"] / (n + WARMUP) * 1e6
    finally:
        for proc in (asker, echo):
            if proc is not None:
                proc.stop()
    return result


def main() -> None:
    args = parse_args("ask-remote", __doc__ or "")
    n = 1_000 if args.quick else 10_000
    load = os.getloadavg()[0]
    redis = EmbeddedRedis()
    try:
        redis.start()
        huddle = measure(redis.url, n)
        base = baseline_ping_pong(redis.url, n)
    finally:
        redis.stop()
    report(
        args,
        figures={"p50_us": huddle["p50_us"], "p99_us": huddle["p99_us"], "mean_us": huddle["mean_us"],
                 "max_us": huddle["max_us"], "asks": n, "errors": huddle["errors"] + huddle["loop_errors"],
                 "p50_ratio": ratio(huddle["p50_us"], base["p50_us"]),
                 "loop_p50_us": huddle["loop_p50_us"], "loop_p99_us": huddle["loop_p99_us"],
                 "loop_p50_ratio": ratio(huddle["loop_p50_us"], base["p50_us"])},
        baseline={"p50_us": base["p50_us"], "p99_us": base["p99_us"], "max_us": base["max_us"], "round_trips": n},
        goal={"p50_ratio": 1.0, "p99_us": 1000},
        notes={"warmup": WARMUP, "loadavg_1m_before": load,
               **{k: round(huddle[k], 1) for k in ("asker_cpu_us_per_ask", "echo_cpu_us_per_ask",
                                                   "loop_asker_cpu_us_per_ask", "loop_echo_cpu_us_per_ask")}},
    )


if __name__ == "__main__":
    main()
