"""``huddle dataserver``: run the reference data-channel service."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
from pathlib import Path

__all__ = ["raise_open_file_limit", "register", "run"]

DESCRIPTION = """\
Run the reference data-channel service: register (HTTP), token (HTTP) and the
data-channel WebSocket of docs/protocol.md (section 1), plus a control API
to look at its state and inject faults. When it listens it prints one JSON line
{"http": ..., "ws": ..., "pid": ...} and writes the same to --ready-file.
SIGTERM or SIGINT end it (open sockets are closed with 1001).

Endpoints (HTTP):
  POST {http}/datachannel/MEETING[/practice]      register -> webSocketUrl, binding
  GET  {http}/locus/MEETING                       datachannelUrl, practiceSessionDatachannelUrl
  GET  {http}/locus/MEETING/participant/SELF/[practiceSession/]datachannel/token
  GET  {http}/control/state[?detail=0|open]       what the service saw
  POST {http}/control/faults|send|shutdown|reset|mint_token
"""

EPILOG = """\
example:
  huddle dataserver --http-port 8710 --ws-port 8711
  curl -s -XPOST localhost:8710/datachannel/m1 -d '{"deviceUrl": "dev:1"}'
  curl -s -XPOST localhost:8710/control/faults -d '{"withhold": {"pong": true}}'
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``huddle dataserver`` to the ``huddle`` command line."""
    parser = sub.add_parser("dataserver", help="run the reference data-channel service",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (default 0: any free port)")
    parser.add_argument("--ws-port", type=int, default=0, help="WebSocket port (default 0: any free port)")
    parser.add_argument("--ready-file", help="write the JSON line here (atomically) once listening")
    parser.add_argument("--token-ttl", type=float, default=3600.0, metavar="SECONDS",
                        help="lifetime of issued data-channel tokens (default 3600)")
    parser.add_argument("--require-token", action="store_true",
                        help="refuse registers without a valid Data-Channel-Auth-Token (401)")
    parser.add_argument("--token-secret", default=None,
                        help="HS256 secret for tokens (default: $HUDDLE_DATASERVER_TOKEN_SECRET, else random "
                             "per process)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    raise_open_file_limit()
    secret = args.token_secret or os.environ.get("HUDDLE_DATASERVER_TOKEN_SECRET") or None
    return asyncio.run(_serve(args, secret))


async def _serve(args: argparse.Namespace, secret: str | None) -> int:
    from ops.dataserver.server import DataServer

    server = DataServer(host=args.host, http_port=args.http_port, ws_port=args.ws_port, token_secret=secret,
                        token_ttl_s=args.token_ttl, require_token=args.require_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        line = json.dumps(server.ready_info(os.getpid()))
        if args.ready_file:  # first, so the file is there once the line is seen
            ready = Path(args.ready_file)
            tmp = ready.with_name(ready.name + ".tmp")
            tmp.write_text(line + "\n")
            tmp.replace(ready)
        print(line, flush=True)
        await stop.wait()
    finally:
        await server.stop()
    return 0


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (capped
    when the hard limit is unlimited); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
