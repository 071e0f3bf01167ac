"""``huddle roomservice``: the stand-in room service as a process.

    HUDDLE_ROOMSERVICE_KEY=secret huddle roomservice --room caller-room [--port 0] [--ready-file F]

Prints one JSON line ``{"url": "http://127.0.0.1:P", "pid": N}`` once
listening (also written atomically to ``--ready-file``); SIGTERM/SIGINT
stop it. The credentials come from the environment, never the command line
(where ``ps`` would show them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ops import signals

__all__ = ["register"]

CREDENTIALS_ENV = "HUDDLE_ROOMSERVICE_KEY"


def _run(args: argparse.Namespace) -> int:
    credentials = os.environ.get(CREDENTIALS_ENV, "")
    if not credentials:
        print(f"set {CREDENTIALS_ENV} to the credentials clients must present", file=sys.stderr)
        return 2
    stop = signals.stop_event()
    from ops.roomservice import RoomServiceStandIn  # aiohttp only when it runs

    with RoomServiceStandIn(credentials, args.room, host=args.host, port=args.port) as service:
        line = json.dumps({"url": service.url, "pid": os.getpid()})
        print(line, flush=True)
        if args.ready_file:
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(line)
            tmp.replace(args.ready_file)
        signals.wait(stop)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "roomservice",
        help="run a stand-in room service (HTTP) that records room deletions",
        description=f"A stand-in room service: DELETE /rooms/NAME with the bearer credentials from "
                    f"${CREDENTIALS_ENV}; GET /control/state shows rooms and recorded deletions.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--room", action="append", default=[], help="a room that exists at start (repeatable)")
    parser.add_argument("--ready-file", help="write the JSON line here once listening")
    parser.set_defaults(func=_run)
