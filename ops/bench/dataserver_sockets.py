"""dataserver-sockets: how many data-channel sockets one ``huddle dataserver`` holds.

figures: a ``huddle dataserver`` process; this process brings N raw
``websockets`` clients online through the full protocol (register over
HTTP, open, authorization, buffer-state frame), at most 256 handshakes at a
time. ``connect_all_s`` is the wall time until all N are online (the
service's own count), ``service_rss_mb`` its RSS with all N online,
``service_rss_per_socket_kb`` the growth over its idle RSS per socket,
``fanout_ms`` the time from one ``/control/send`` to all N clients holding
the frame, ``restart_s`` the harness's ``restart()`` with N sockets open
(kill, new process on the same ports, ready).
baseline: a bare ``websockets`` server (same settings: no compression, no
keepalive; the handler only reads) in its own process, with N clients that
just open a socket: its RSS growth per socket and its connect time.

Every process is started here and ended by PID, also on error.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import psutil
from common import close_sockets, parse_args, report
from websockets.asyncio.client import ClientConnection, connect

from ops.dataserver.cli import raise_open_file_limit
from ops.dataserver.harness import DataServerProcess

HANDSHAKES_AT_ONCE = 256
DEADLINE_S = 300.0

BARE_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
async def handler(ws):
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
async def main():
    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None, backlog=4096) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def open_many(n: int, open_one: Callable[[int], Awaitable[ClientConnection]]) -> list[ClientConnection]:
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)

    async def gated(i: int) -> ClientConnection:
        async with gate:
            return await open_one(i)

    return list(await asyncio.gather(*(gated(i) for i in range(n))))


async def measure_service(n: int) -> dict[str, float]:
    server = DataServerProcess.start()
    sockets: list[ClientConnection] = []
    try:
        idle = rss_mb(server.pid)
        connector = aiohttp.TCPConnector(limit=HANDSHAKES_AT_ONCE)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def online(i: int) -> ClientConnection:
                async with http.post(server.datachannel_url(f"m{i}"), json={"deviceUrl": f"dev:{i}"}) as resp:
                    body = await resp.json()
                ws = await connect(body["webSocketUrl"] + "?outboundWireFormat=text&bufferStates=true",
                                   compression=None, open_timeout=60, close_timeout=1)
                await ws.send(json.dumps({"id": str(i), "type": "authorization",
                                          "data": {"token": "Bearer bench"}}))
                await ws.recv()  # the buffer-state frame
                return ws

            start = time.perf_counter()
            sockets = await open_many(n, online)
            await asyncio.to_thread(server.wait_for, lambda s: s["online"] == n, DEADLINE_S, detail=False)
            connect_all = time.perf_counter() - start
            full = rss_mb(server.pid)

            start = time.perf_counter()
            reached = await asyncio.to_thread(server.send, {"data": {"eventType": "relay.event"}})
            await asyncio.gather(*(ws.recv() for ws in sockets))
            fanout = time.perf_counter() - start
            assert reached == n, reached

            start = time.perf_counter()
            await asyncio.to_thread(server.restart)
            restart = time.perf_counter() - start
        return {"connect_all_s": connect_all, "service_idle_rss_mb": idle, "service_rss_mb": full,
                "service_rss_per_socket_kb": (full - idle) * 1024 / n, "fanout_ms": fanout * 1e3,
                "restart_s": restart}
    finally:
        await close_sockets(sockets)  # before the service stops: see close_sockets
        server.stop()


async def connect_bare(port: int, pid: int, n: int) -> dict[str, float]:
    sockets: list[ClientConnection] = []
    try:
        idle = rss_mb(pid)

        async def opened(i: int) -> ClientConnection:
            return await connect(f"ws://127.0.0.1:{port}/", compression=None, open_timeout=60, close_timeout=1)

        start = time.perf_counter()
        sockets = await open_many(n, opened)
        connect_all = time.perf_counter() - start
        full = rss_mb(pid)
        return {"connect_all_s": connect_all, "rss_mb": full, "rss_per_socket_kb": (full - idle) * 1024 / n}
    finally:
        await close_sockets(sockets)


def measure_bare(n: int) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return asyncio.run(connect_bare(port, proc.pid, n))
    finally:
        proc.kill()  # by its own handle (its PID)
        proc.wait()


def main() -> None:
    args = parse_args("dataserver-sockets", __doc__ or "")
    n = 500 if args.quick else 5_000
    raise_open_file_limit()
    load = os.getloadavg()[0]
    service = asyncio.run(measure_service(n))
    bare = measure_bare(n)
    figures: dict[str, Any] = {"sockets_online": n, **service}
    report(args, figures=figures, baseline={f"bare_websockets_{k}": v for k, v in bare.items()},
           goal={"sockets_online": 5_000, "connect_all_s": 30, "service_rss_per_socket_kb": 64},
           notes={"load_avg_1m_at_start": load})


if __name__ == "__main__":
    main()
