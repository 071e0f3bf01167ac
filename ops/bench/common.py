"""Shared shape of every benchmark's output.

A benchmark prints ONE JSON object with three flat maps, each name -> number
with the unit in the name::

    {"figures": {...}, "baseline": {...}, "goal": {...}}

``figures`` is huddle, ``baseline`` the alternative measured in the same
run, ``goal`` the target. ``--json-out FILE`` also writes it to FILE
(default ``ops/bench/results/<name>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(name: str, description: str,
               options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The common options; ``options(parser)`` adds a benchmark's own."""
    parser = argparse.ArgumentParser(prog=f"huddle bench {name}", description=description)
    parser.add_argument("--quick", action="store_true", help="smaller run, for smoke checks")
    parser.add_argument("--json-out", help=f"write the result here (default {RESULTS}/{name}.json)")
    if options is not None:
        options(parser)
    args = parser.parse_args()
    args.name = name
    return args


def ratio(huddle: float, baseline: float) -> float:
    """huddle / baseline (the form every goal against a baseline takes);
    infinite when the baseline is 0."""
    return huddle / baseline if baseline else float("inf")


def report(args: argparse.Namespace, figures: dict[str, float], baseline: dict[str, float],
           goal: dict[str, float], notes: dict[str, Any] | None = None) -> None:
    result = {
        "figures": {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()},
        "baseline": {k: round(v, 3) if isinstance(v, float) else v for k, v in baseline.items()},
        "goal": goal,
    }
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    out = Path(args.json_out) if args.json_out else RESULTS / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": args.name, "quick": args.quick, "cpus": os.cpu_count(),
            "python": platform.python_version(), "node_gc": node_gc(), "baseline_gc": baseline_gc(),
            **(notes or {})}
    out.write_text(json.dumps({**result, "meta": meta}, indent=2) + "\n")
    print(f"(written to {out})", file=sys.stderr)


def _gc_setting(variable: str, default: str) -> str:
    value = os.environ.get(variable, default)
    if value not in ("tuned", "default"):
        raise SystemExit(f"{variable} must be 'tuned' or 'default', not {value!r}")
    return value


def node_gc() -> str:
    """How the huddle node processes of a benchmark set the collector: as
    ``huddle node`` does (``tuned``), or Python's ``default`` with
    ``HUDDLE_BENCH_GC=default`` (to compare the two)."""
    return _gc_setting("HUDDLE_BENCH_GC", "tuned")


def baseline_gc() -> str:
    """How a baseline process sets the collector: Python's ``default``, as
    the bare program it stands for would; ``HUDDLE_BENCH_BASELINE_GC=tuned``
    gives it huddle's settings too (``sessions``, ``storm``), to see what of
    a ratio is the collector."""
    return _gc_setting("HUDDLE_BENCH_BASELINE_GC", "default")


def _tune(setting: str) -> None:
    if setting == "tuned":
        from actors.runtime.gcpolicy import tune

        tune()


def tune_node_gc() -> None:
    """In a benchmark process that hosts a huddle node: :func:`node_gc`'s
    setting (call it once start-up is done)."""
    _tune(node_gc())


def tune_baseline_gc() -> None:
    """In a baseline process: :func:`baseline_gc`'s setting."""
    _tune(baseline_gc())


class CpuShare:
    """CPU seconds (user + system) each group of processes spent since
    this was made: where a run's time went, across processes."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        import psutil

        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self.start = {name: self._used(procs) for name, procs in self.groups.items()}

    @staticmethod
    def _used(procs: list[Any]) -> float:
        total = 0.0
        for proc in procs:
            try:
                total += sum(proc.cpu_times()[:2])
            except Exception:  # noqa: BLE001 - a process that ended (a killed node) counts no more
                continue
        return total

    def seconds(self) -> dict[str, float]:
        return {name: round(self._used(procs) - self.start[name], 3) for name, procs in self.groups.items()}


class Profile:
    """An optional sampling profile of one process (all its threads) with
    py-spy, from :meth:`start` to :meth:`stop`: set ``HUDDLE_BENCH_PROFILE=DIR``
    (and ``HUDDLE_PYSPY=/path/to/py-spy`` if it is not on PATH;
    ``HUDDLE_PYSPY_ARGS`` for other options, default ``--rate 500``). The output
    is py-spy's "raw" (collapsed stacks) format, ``DIR/TAG-NAME.txt``. Without
    the variable, both calls do nothing."""

    def __init__(self, pid: int, tag: str, name: str) -> None:
        self.pid, self.tag, self.name = pid, tag, name
        self._profiler: subprocess.Popen[bytes] | None = None

    def start(self) -> Profile:
        out_dir = os.environ.get("HUDDLE_BENCH_PROFILE")
        if not out_dir or self._profiler is not None:
            return self
        pyspy = os.environ.get("HUDDLE_PYSPY") or shutil.which("py-spy")
        if not pyspy:
            sys.stderr.write("HUDDLE_BENCH_PROFILE is set but py-spy is not found (HUDDLE_PYSPY)\n")
            return self
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, f"{self.tag}-{self.name}.txt")
        self._profiler = subprocess.Popen(
            [pyspy, "record", "--pid", str(self.pid), "--format", "raw", "--threads", "--output", out,
             "--nonblocking", *(os.environ.get("HUDDLE_PYSPY_ARGS") or "--rate 500").split()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """End the profiler (SIGINT: py-spy writes its file), by its PID."""
        profiler, self._profiler = self._profiler, None
        if profiler is None:
            return
        if profiler.poll() is None:
            os.kill(profiler.pid, signal.SIGINT)
        try:
            profiler.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(profiler.pid, signal.SIGKILL)
            profiler.wait(timeout=timeout)


async def close_sockets(sockets: Iterable[Any]) -> None:
    """Drop these client WebSockets and wait until each is closed here: an
    abort only schedules the close on the loop. Do it before stopping a
    service from the same loop: the service closes its sockets with a
    handshake, which clients on a loop blocked in its stop could only let
    time out (seconds per run)."""
    sockets = list(sockets)
    for ws in sockets:
        ws.transport.abort()
    await asyncio.gather(*(ws.wait_closed() for ws in sockets), return_exceptions=True)
