"""``huddle sim``: run the fleet in a simulated world, seed after seed.

    huddle sim --seeds 200 [--workload counter|webinar] [--first 0] [--nodes N] [--seconds 20] [--faults all|none|KIND,...] [--changes all|none|KIND,...] [--cluster] [--json]
    huddle sim --seed 17 [--trace]

Each seed is one run of a workload: ``counter`` (:mod:`ops.sim.counters`:
cluster members, counters under acknowledged additions, ``--counters``)
or ``webinar`` (:mod:`ops.sim.webinar`: meeting nodes, ``--meetings``
meetings and their data-channel sessions against the reference service,
the meetings changing as they run: ``--changes``);
real nodes on one virtual clock, faults drawn from the seed, the
invariants checked. A failing seed prints
its violations, the end of its trace and the command that replays it
exactly (``--seed S``: the same run, the same ``trace_hash``). The figures
(``--json``): ``seeds``, ``violations``, ``faults_injected``, ``events``,
``simulated_s``, ``seconds``, ``seeds_per_min``, ``failed_seeds``, and for
one seed its ``trace_hash``.

Replays are exact across processes too: the command runs itself with
``PYTHONHASHSEED=0`` (Python otherwise orders sets of strings differently
in every process).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

__all__ = ["register"]

TRACE_TAIL = 30


def _same_hashing() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "ops.cli", *sys.argv[1:]])


def _run(args: argparse.Namespace) -> int:
    _same_hashing()
    logging.getLogger().setLevel(logging.CRITICAL)  # faults make nodes complain; the checks judge
    from ops.sim.counters import FAULTS as COUNTER_FAULTS  # the simulation's parts only when it runs
    from ops.sim.counters import run_seed
    from ops.sim.webinar import CHANGES as WEBINAR_CHANGES
    from ops.sim.webinar import CLUSTER_FAULTS as WEBINAR_CLUSTER_FAULTS
    from ops.sim.webinar import FAULTS as WEBINAR_FAULTS
    from ops.sim.webinar import run_webinar_seed
    from ops.sim.world import fault_kinds

    faults, changes = _kinds(args.faults), _kinds(args.changes)
    try:
        webinar_faults = WEBINAR_FAULTS + WEBINAR_CLUSTER_FAULTS if args.cluster else WEBINAR_FAULTS
        fault_kinds(faults, webinar_faults if args.workload == "webinar" else COUNTER_FAULTS)
        if args.workload == "webinar":
            fault_kinds(changes, WEBINAR_CHANGES, "changes")
        elif args.changes != "all" or args.cluster:
            raise ValueError("--changes and --cluster are the webinar workload's")
    except ValueError as exc:
        print(f"huddle sim: {exc}", file=sys.stderr)
        return 2

    def run(seed: int) -> Any:
        if args.workload == "webinar":
            return run_webinar_seed(seed, nodes=args.nodes or 2, meetings=args.meetings, seconds=args.seconds,
                                    faults=faults, changes=changes, cluster=args.cluster)
        return run_seed(seed, nodes=args.nodes or 3, counters=args.counters, seconds=args.seconds, faults=faults)

    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    started = time.perf_counter()
    totals: dict[str, Any] = {"seeds": 0, "violations": 0, "faults_injected": 0, "events": 0, "simulated_s": 0.0}
    failed: list[int] = []
    last = None
    for seed in seeds:
        result = run(seed)
        last = result
        totals["seeds"] += 1
        totals["violations"] += len(result.violations)
        totals["faults_injected"] += len(result.faults)
        totals["events"] += result.events
        totals["simulated_s"] += result.simulated_s
        if result.violations:
            failed.append(seed)
            out = sys.stderr if args.json else sys.stdout
            print(f"seed {seed} failed: {len(result.violations)} violations", file=out)
            for line in result.violations[:10]:
                print(f"  {line}", file=out)
            print(f"  faults: {'; '.join(result.faults)}", file=out)
            print(f"  the end of its trace (trace_hash {result.trace_hash}):", file=out)
            for line in result.trace[-TRACE_TAIL:]:
                print(f"    {line}", file=out)
            print(f"  replay: huddle sim --seed {seed} {_replay_options(args)}", file=out)
        elif not args.json:
            print(f"seed {seed}: ok ({len(result.faults)} faults, {result.simulated_s:.1f} s simulated, "
                  f"trace_hash {result.trace_hash})")
        if args.trace and last is not None:
            print("\n".join(result.trace), file=sys.stderr if args.json else sys.stdout)
    elapsed = time.perf_counter() - started
    figures = {**totals, "simulated_s": round(totals["simulated_s"], 3), "seconds": round(elapsed, 3),
               "seeds_per_min": round(60 * totals["seeds"] / elapsed, 1) if elapsed else 0.0,
               "failed_seeds": failed}
    if len(seeds) == 1 and last is not None:
        figures["trace_hash"] = last.trace_hash
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{totals['seeds']} seeds, {len(failed)} failed, {totals['faults_injected']} faults, "
              f"{figures['simulated_s']:.0f} s simulated in {elapsed:.1f} s ({figures['seeds_per_min']} seeds/min)")
    return 1 if failed else 0


def _kinds(option: str) -> bool | list[str]:
    """``all`` → True, ``none`` → False, else the names given."""
    if option in ("all", "none"):
        return option == "all"
    return [k.strip() for k in option.split(",") if k.strip()]


def _replay_options(args: argparse.Namespace) -> str:
    size = f"--meetings {args.meetings}" if args.workload == "webinar" else f"--counters {args.counters}"
    nodes = f" --nodes {args.nodes}" if args.nodes else ""
    return (f"--workload {args.workload}{nodes} {size} --seconds {args.seconds:g}"
            f"{'' if args.faults == 'all' else ' --faults ' + args.faults}"
            f"{'' if args.changes == 'all' else ' --changes ' + args.changes}"
            f"{' --cluster' if args.cluster else ''}")


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="run the fleet in a simulated world, seed after seed (faults, invariants, replay)",
                       description=(__doc__ or "").split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, default=20, help="how many seeds to run (default 20)")
    which.add_argument("--seed", type=int, default=None, help="run (replay) this one seed")
    p.add_argument("--first", type=int, default=0, help="the first seed of --seeds (default 0)")
    p.add_argument("--workload", choices=("counter", "webinar"), default="counter",
                   help="counter: cluster members and counters; webinar: meetings and their sessions (default counter)")
    p.add_argument("--nodes", type=int, default=0,
                   help="nodes that host the work (default: 3 cluster members, or 2 meeting nodes)")
    p.add_argument("--counters", type=int, default=4, help="counter workload: counters placed (default 4)")
    p.add_argument("--meetings", type=int, default=20, help="webinar workload: meetings (default 20)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="virtual seconds of load per seed (default 20; faults stop 5 s before the end)")
    p.add_argument("--faults", default="all", metavar="all|none|KIND,...",
                   help="which faults are drawn (default all). counter: pause, kill, cut, conn-drop, redis-restart, redis-wipe, twin; "
                        "webinar: service-restart, switchover, drop, close, register-fail, token-fail, "
                        "token-delay, node-cut, node-pause, bus-cut, bus-drop, redis-restart")
    p.add_argument("--changes", default="all", metavar="all|none|KIND,...",
                   help="webinar workload: which changes the meetings go through (default all): practice, role, "
                        "captions, lobby, leave, rejoin, incoming-call")
    p.add_argument("--cluster", action="store_true",
                   help="webinar workload: the meeting nodes are cluster members, meeting trees are placed and "
                        "move when their node fails (adds the node-kill fault)")
    p.add_argument("--trace", action="store_true", help="print each run's whole trace")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=_run)
