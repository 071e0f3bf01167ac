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
(``raw_redis.PingPong``). The three kinds take their round trips in
``ROUNDS`` interleaved rounds (see there): a baseline from the same run,
and from the same minutes of it.

Every process is started here and ended by PID, also on error.
"""

from __future__ import annotations

import os
from typing import Any

from common import parse_args, ratio, report
from nodeproc import ScriptedNode
from raw_redis import PingPong, round_trip_figures

from bus.embedded import EmbeddedRedis

WARMUP = 200
ROUNDS = 5
"""The round trips are taken in this many rounds; each round runs the three
kinds (blocking asks, asks on the loop, the baseline) one after the other,
in an order that rotates from round to round, so a drift in the host's
speed (seen here: 40 % between runs a minute apart) falls on all three
alike. Each kind's percentiles are over all its round trips."""
KINDS = ("block", "loop", "base")


def measure(url: str, n: int) -> dict[str, Any]:
    per = max(1, n // ROUNDS)
    rtts: dict[str, list[float]] = {k: [] for k in KINDS}
    errors = {"block": 0, "loop": 0}
    cpu = {f"{side}_{kind}": 0.0 for side in ("asker", "echo") for kind in ("block", "loop")}
    asks = {"block": 0, "loop": 0}
    warmed: set[str] = set()
    echo = asker = None
    try:
        echo = ScriptedNode("echo", url, "bench-echo", "--echo", "echo:1")
        asker = ScriptedNode("asker", url, "bench-ask")
        echo.ready()
        asker.ready()
        with PingPong(url, "redispy") as base:
            base.run(WARMUP)
            for r in range(ROUNDS):
                for kind in KINDS[r % 3:] + KINDS[:r % 3]:
                    if kind == "base":
                        rtts["base"] += base.run(per, first=WARMUP + r * per)
                        continue
                    first = kind not in warmed  # warmed up, and profiled, in its first round
                    warmed.add(kind)
                    warmup = WARMUP if first else 0
                    tag = "ask-remote" if kind == "block" else "ask-remote-loop"
                    echo.send(cmd="mark")
                    if first:
                        echo.start_profile(tag)
                        asker.start_profile(tag)
                    asker.send(cmd="run", target="echo:1", n=per, warmup=warmup, timeout=5.0,
                               on_loop=kind == "loop", samples=True)
                    asked = asker.expect("event", "asked", timeout=600)
                    if first:
                        echo.end_profile()
                        asker.end_profile()
                    rtts[kind] += asked["rtts_s"]
                    errors[kind] += asked["errors"]
                    asks[kind] += per + warmup
                    for side, proc in (("asker", asker), ("echo", echo)):
                        proc.send(cmd="stats")
                        cpu[f"{side}_{kind}"] += proc.expect("event", "stats", timeout=30)["cpu_seconds"]
    finally:
        for proc in (asker, echo):
            if proc is not None:
                proc.stop()
    result: dict[str, Any] = {"errors": errors}
    for kind in KINDS:
        result[kind] = {**round_trip_figures(rtts[kind]),
                        "mean_us": round(sum(rtts[kind]) / len(rtts[kind]) * 1e6, 1)}
    for kind in ("block", "loop"):
        result[kind]["asker_cpu_us_per_ask"] = round(cpu[f"asker_{kind}"] / asks[kind] * 1e6, 1)
        result[kind]["echo_cpu_us_per_ask"] = round(cpu[f"echo_{kind}"] / asks[kind] * 1e6, 1)
    return result


def main() -> None:
    args = parse_args("ask-remote", __doc__ or "")
    n = 1_000 if args.quick else 10_000
    load = os.getloadavg()[0]
    redis = EmbeddedRedis()
    try:
        redis.start()
        m = measure(redis.url, n)
    finally:
        redis.stop()
    block, loop, base = m["block"], m["loop"], m["base"]
    report(
        args,
        figures={"p50_us": block["p50_us"], "p99_us": block["p99_us"], "mean_us": block["mean_us"],
                 "max_us": block["max_us"], "asks": block["n"], "errors": m["errors"]["block"] + m["errors"]["loop"],
                 "p50_ratio": ratio(block["p50_us"], base["p50_us"]),
                 "loop_p50_us": loop["p50_us"], "loop_p99_us": loop["p99_us"],
                 "loop_p50_ratio": ratio(loop["p50_us"], base["p50_us"])},
        baseline={"p50_us": base["p50_us"], "p99_us": base["p99_us"], "max_us": base["max_us"],
                  "round_trips": base["n"]},
        goal={"p50_ratio": 1.0, "p99_us": 1000},
        notes={"warmup": WARMUP, "rounds": ROUNDS, "loadavg_1m_before": load,
               "asker_cpu_us_per_ask": block["asker_cpu_us_per_ask"],
               "echo_cpu_us_per_ask": block["echo_cpu_us_per_ask"],
               "loop_asker_cpu_us_per_ask": loop["asker_cpu_us_per_ask"],
               "loop_echo_cpu_us_per_ask": loop["echo_cpu_us_per_ask"]},
    )


if __name__ == "__main__":
    main()
