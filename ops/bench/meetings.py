"""meetings: N meetings on 2 node processes against the reference service.

figures: an embedded Redis, a ``huddle dataserver`` and two ``huddle node
--meetings`` processes. This process starts N meeting trees (alternating
nodes) through the nodes' meeting hosts and tells each one ``meeting.joined``
with captions on; every tenth is a panelist with the practice session on.
``settle_s`` is the wall time from the first start until the service holds,
for every meeting, an online default socket subscribed to ``transcription``
(and a practice socket likewise for each panelist). ``msgs_per_meeting`` is
the bus messages both nodes received (``received_total`` of their
``sys:metrics``, start to settled) per meeting; ``rss_per_meeting_bytes`` the
growth of both nodes' RSS, all-in (actors, sockets, buffers), per meeting;
``cpu_s_*`` the CPU seconds each process group spent from start to settled
(the nodes, the service, Redis, this driver; the baseline's: its clients
and the service).

baseline: the same sessions made by raw ``websockets`` clients in one
process, with no actors and no bus, each doing what the protocol asks of a
session (docs/protocol.md): token fetch from the locus, register with that
token in ``Data-Channel-Auth-Token``, open, authorization with the token, buffer-state (acknowledged), the keepalive
ping sent at once when online (its numbered pong acknowledged), the
subscription request. Its time to all subscribed and RSS per meeting. The
result's notes also give two earlier forms of this baseline, measured in
the same run, and the ratio to each: without the keepalive step, and
without the token fetch as well (a made-up token).

Every process is started here and ended by PID, also on error.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from common import CpuShare, close_sockets, node_gc, parse_args, ratio, report
from websockets.asyncio.client import ClientConnection, connect

import actors.sessions.contracts.meeting as mt
from actors.sessions.meeting.host import host_address
from actors.runtime.metrics import NodeMetrics
from actors.runtime.node import Node
from bus.embedded import EmbeddedRedis
from bus.envelope import Envelope
from bus.redis_transport import RedisTransport
from ops.dataserver.cli import raise_open_file_limit
from ops.dataserver.harness import DataServerProcess
from ops.processes import NodeProcess

DEADLINE_S = 600.0
NODES = 2
PANELIST_EVERY = 10
STARTS_IN_FLIGHT = 64


def meeting_ids(n: int) -> list[str]:
    return [f"bm-{i}" for i in range(n)]


def wanted(n: int) -> tuple[int, int]:
    """(default sessions, practice sessions) that must be subscribed."""
    return n, len(range(0, n, PANELIST_EVERY))


def subscribed(state: dict[str, Any], session: str) -> int:
    return sum(1 for key, subs in state["subscriptions"].items()
               if key.endswith("/" + session) and "transcription" in subs)


class MeetingNodes:
    """The benchmark's ``huddle node --meetings`` processes, ready."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.ids = [f"bench-n{i}" for i in range(NODES)]
        self.nodes = [NodeProcess.start(node_id, url, workdir, ["--meetings", "--metrics-interval", "0.5", "--gc", node_gc()],
                                        env={"HUDDLE_LOG": "ERROR"}) for node_id in self.ids]
        for node in self.nodes:
            node.wait_ready()

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def rss(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids)

    def stop(self) -> None:
        for node in self.nodes:  # all asked first: they stop together
            node.signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop(30)


class MetricsWatch:
    """The latest sys:metrics of each node."""

    def __init__(self, node: Node) -> None:
        self.latest: dict[str, NodeMetrics] = {}
        self.changed = threading.Condition()
        node.handle_system_channel("sys:metrics", self._on)

    def _on(self, env: Envelope) -> None:
        if isinstance(env.message, NodeMetrics):
            with self.changed:
                self.latest[env.message.node] = env.message
                self.changed.notify_all()

    def received_after(self, ts: float, nodes: list[str]) -> int:
        """Sum of ``received_total`` from samples taken after ``ts``."""
        with self.changed:
            ok = self.changed.wait_for(lambda: all(n in self.latest and self.latest[n].ts > ts for n in nodes), 30)
            if not ok:
                raise TimeoutError("no fresh sys:metrics")
            return sum(self.latest[n].received_total for n in nodes)


def run_huddle(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis, DataServerProcess.start() as ds:
        nodes = MeetingNodes(redis.url, Path(tmp))
        driver = Node(RedisTransport(redis.url, name="bench-driver"), node_id="bench-driver").start()
        try:
            assert driver.transport.wait_subscribed(10)
            watch = MetricsWatch(driver)
            assert driver.transport.wait_subscribed(10)
            before_ts = time.time()
            received0 = watch.received_after(before_ts, nodes.ids)
            rss0 = nodes.rss()
            ids = meeting_ids(n)
            cpu = CpuShare({"nodes": nodes.pids, "dataserver": [ds.pid], "redis": [redis.pid],
                            "driver": [os.getpid()]})
            start = time.perf_counter()
            pending = []
            for i, meeting in enumerate(ids):
                host = host_address(nodes.ids[i % NODES])
                pending.append((meeting, driver.ask(host, mt.StartMeeting(meeting_id=meeting, access_token="bench"),
                                                    timeout=120)))
                if len(pending) >= STARTS_IN_FLIGHT:
                    _join_started(driver, ds, pending)
            _join_started(driver, ds, pending)
            defaults, practices = wanted(n)
            ds.wait_for(lambda s: subscribed(s, "llm-default-session") >= defaults
                        and subscribed(s, "llm-practice-session") >= practices, DEADLINE_S, detail=False)
            settle = time.perf_counter() - start
            cpu_s = cpu.seconds()
            settled_ts = time.time()
            received = watch.received_after(settled_ts, nodes.ids) - received0
            rss = nodes.rss() - rss0
            return {"meetings": n, "settle_s": settle, "msgs_per_meeting": received / n,
                    "rss_per_meeting_bytes": rss / n, **{f"cpu_s_{k}": v for k, v in cpu_s.items()}}
        finally:
            driver.shutdown()
            nodes.stop()


def _join_started(driver: Node, ds: DataServerProcess, pending: list[Any]) -> None:
    for meeting, future in pending:
        future.get(timeout=120)
        i = int(meeting.rsplit("-", 1)[1])
        panelist = i % PANELIST_EVERY == 0
        driver.tell(f"meeting:{meeting}", mt.Joined(
            locus_url=ds.locus_url(meeting), self_id=f"self-{i}", datachannel_url=ds.datachannel_url(meeting),
            practice_datachannel_url=ds.datachannel_url(meeting, practice=True), captions_on=True,
            panelist=panelist, practice_session_on=panelist), sender="app:bench")
    pending.clear()


async def _baseline(n: int, *, fetch_tokens: bool = True, keepalive: bool = True) -> dict[str, float]:
    """Raw clients: each session as huddle's makes it. With
    ``fetch_tokens`` (the baseline), each first fetches its data-channel
    token from the locus (``GET .../datachannel/token``, as the token actor
    does), registers with it (``Data-Channel-Auth-Token``, which the
    service checks) and authorizes with it; without, it sends a made-up
    token in the authorization alone. With
    ``keepalive`` (the baseline), each sends the protocol's ping at once
    when online and acknowledges the numbered pong. The baseline without
    them was less work than the sessions it stands for; both forms are
    still measured for the notes."""
    raise_open_file_limit()
    proc = psutil.Process()
    with DataServerProcess.start() as ds:
        sockets: list[ClientConnection] = []
        rss0 = proc.memory_info().rss
        gate = asyncio.Semaphore(STARTS_IN_FLIGHT * 4)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:

            async def session(meeting: str, practice: bool) -> None:
                async with gate:
                    token = "b"
                    if fetch_tokens:
                        i = int(meeting.rsplit("-", 1)[1])
                        path = "practiceSession/datachannel/token" if practice else "datachannel/token"
                        async with http.get(f"{ds.locus_url(meeting)}/participant/self-{i}/{path}",
                                            headers={"Authorization": "Bearer bench-user"}) as resp:
                            token = (await resp.json())["datachannelToken"]
                    url = ds.datachannel_url(meeting, practice=practice)
                    headers = {"Data-Channel-Auth-Token": token} if fetch_tokens else {}
                    async with http.post(url, json={"deviceUrl": "dev:bench"}, headers=headers) as resp:
                        body = await resp.json()
                    ws = await connect(body["webSocketUrl"] + "?outboundWireFormat=text&bufferStates=true",
                                       compression=None, open_timeout=60, close_timeout=1)
                    sockets.append(ws)
                    await ws.send(json.dumps({"id": "a", "type": "authorization",
                                              "data": {"token": f"Bearer {token}"}}))
                    frame = json.loads(await ws.recv())
                    await ws.send(json.dumps({"messageId": frame["id"], "type": "ack"}))
                    if keepalive:
                        await ws.send(json.dumps({"id": f"p-{meeting}", "type": "ping"}))
                    await ws.send(json.dumps({"id": "s", "type": "subchannelSubscriptionRequest", "data": {
                        "datachannelUri": url, "subscribe": ["transcription"], "unsubscribe": []}}))
                    if keepalive:
                        pong = json.loads(await ws.recv())
                        await ws.send(json.dumps({"messageId": pong["id"], "type": "ack"}))

            cpu = CpuShare({"clients": [os.getpid()], "dataserver": [ds.pid]})
            start = time.perf_counter()
            jobs = [session(m, False) for m in meeting_ids(n)]
            jobs += [session(m, True) for i, m in enumerate(meeting_ids(n)) if i % PANELIST_EVERY == 0]
            await asyncio.gather(*jobs)
            defaults, practices = wanted(n)
            await asyncio.to_thread(ds.wait_for, lambda s: subscribed(s, "llm-default-session") >= defaults
                                    and subscribed(s, "llm-practice-session") >= practices, DEADLINE_S, detail=False)
            settle = time.perf_counter() - start
            rss = proc.memory_info().rss - rss0
            cpu_s = cpu.seconds()
        await close_sockets(sockets)  # before the service stops: see close_sockets
        return {"settle_s": settle, "rss_per_meeting_bytes": rss / n, **{f"cpu_s_{k}": v for k, v in cpu_s.items()}}


def main() -> None:
    args = parse_args("meetings", __doc__.splitlines()[0])
    n = 100 if args.quick else int(os.environ.get("HUDDLE_BENCH_MEETINGS", "1000"))
    figures = run_huddle(n)
    baseline = asyncio.run(_baseline(n))
    no_ping = asyncio.run(_baseline(n, keepalive=False))
    neither = asyncio.run(_baseline(n, fetch_tokens=False, keepalive=False))
    figures["settle_ratio"] = ratio(figures["settle_s"], baseline["settle_s"])
    report(args, figures, baseline, {"settle_ratio": 2.0},
           notes={"baseline_without_keepalive": no_ping,
                  "settle_ratio_to_it": ratio(figures["settle_s"], no_ping["settle_s"]),
                  "baseline_without_keepalive_or_token_fetch": neither,
                  "settle_ratio_to_that": ratio(figures["settle_s"], neither["settle_s"])})


if __name__ == "__main__":
    main()
