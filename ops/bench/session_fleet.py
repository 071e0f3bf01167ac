"""Fleets of data-channel sessions for the ``sessions`` and ``storm`` benches.

:class:`HuddleFleet`: one node (in-process bus: these benches measure the
sessions, not Redis) hosting N ``DataChannelSession`` actors, one meeting
each, claimed and connected by a sink owner the way a meeting actor would,
over the real connector, against a ``huddle dataserver`` process.

:class:`BareFleet`: the baseline, N bare ``websockets`` client connections
in one asyncio process speaking the least of the same protocol (register,
open with the query, authorization, wait for the buffer state, ack frames,
one ping per socket every 15 s, subscription request), reconnecting like
the upstream client: at once, then 1, 2, 4 ... 32 s **without** jitter.

Both count their sockets' states so a bench can wait on "all online" with a
deadline, and neither sleeps to let things settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import psutil
from common import close_sockets, tune_node_gc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors.runtime.actor import HuddleActor
from actors.sessions.contracts.datachannel import (
    DEFAULT_SESSION,
    ClaimSession,
    Connect,
    Subscribe,
    session_address,
)
from actors.sessions.datachannel.actor import DataChannelSession
from actors.sessions.datachannel.connector import WebSocketConnector
from actors.runtime.node import Node
from bus.envelope import Envelope
from bus.messages import Event, Message
from bus.transport import InProcessHub, InProcessTransport
from ops.dataserver.cli import raise_open_file_limit
from ops.dataserver.harness import DataServerProcess

OWNER = "meeting:bench-owner"
DEVICE_URL = "https://devices.bench/d"
USER_TOKEN = "bench-user-token"
PING_INTERVAL_S = 15.0
HANDSHAKES_AT_ONCE = 256


def rss_bytes() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


class _Sink(HuddleActor):
    """The owner of every bench session: takes their notes, does nothing."""

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        return None


class HuddleFleet:
    """N sessions on one node; ``counts()`` says how many are in each state."""

    def __init__(self, server: DataServerProcess) -> None:
        raise_open_file_limit()
        self.server = server
        tune_node_gc()  # this process hosts a huddle node (HUDDLE_BENCH_GC)
        self.node = Node(InProcessTransport(InProcessHub(), name="bench"), node_id="bench-sessions").start()
        self.connector = WebSocketConnector(self.node.io)
        self.node.spawn(OWNER, _Sink)
        self._states: dict[str, str] = {}
        self._transitions: Counter[str] = Counter()
        self._online = 0
        self._cond = threading.Condition()
        self.node.add_event_listener(self._on_event)
        self.addresses: list[str] = []

    def _on_event(self, event: Event) -> None:
        if event.event != "session-state":
            return
        with self._cond:
            was = self._states.get(event.address)
            self._states[event.address] = event.reason
            self._transitions[event.reason] += 1
            if (was == "online") != (event.reason == "online"):
                # the waiter only counts sessions online: wake it only when that count moves
                self._online += 1 if event.reason == "online" else -1
                self._cond.notify_all()

    def start(self, n: int, *, prefix: str = "m", subscribe: bool = False) -> list[str]:
        """Spawn, claim (and subscribe) and connect ``n`` sessions."""
        started = []
        for i in range(n):
            meeting = f"{prefix}{i}"
            address = session_address(meeting, DEFAULT_SESSION)
            self.node.spawn(address, DataChannelSession, meeting, DEFAULT_SESSION, DEVICE_URL, USER_TOKEN,
                            self.connector)
            self.node.tell(address, ClaimSession(epoch=1), sender=OWNER)
            if subscribe:
                self.node.tell(address, Subscribe(epoch=1, subchannels=["transcription"]), sender=OWNER)
            self.node.tell(address, Connect(epoch=1, datachannel_url=self.server.datachannel_url(meeting)),
                           sender=OWNER)
            started.append(address)
        self.addresses += started
        return started

    def counts(self) -> Counter[str]:
        with self._cond:
            return Counter(self._states.values())

    def transitions(self) -> Counter[str]:
        with self._cond:
            return Counter(self._transitions)

    def wait_online(self, n: int, timeout: float) -> None:
        def done() -> bool:
            return self._online >= n

        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise TimeoutError(f"only {Counter(self._states.values())} after {timeout:g}s")


class BareFleet:
    """N bare ``websockets`` clients in this process's asyncio loop."""

    def __init__(self, server: DataServerProcess, *, subscribe: bool) -> None:
        raise_open_file_limit()
        self.server = server
        self.subscribe = subscribe
        # By meeting: batches started with different prefixes never collide.
        self.online: set[str] = set()
        self.sockets: dict[str, ClientConnection] = {}
        self.reconnects = 0
        self._changed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, n: int, *, prefix: str = "m") -> None:
        first = self._http is None
        if first:  # one HTTP session and one pinger for every batch started
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=HANDSHAKES_AT_ONCE))
            self._tasks.append(asyncio.create_task(self._pinger()))
        self._tasks += [asyncio.create_task(self._client(i, f"{prefix}{i}")) for i in range(n)]

    async def wait_online(self, n: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.online) < n:
                self._changed.clear()
                await self._changed.wait()

    async def __aenter__(self) -> BareFleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every client and close its socket, on this loop, before the
        service is stopped (``async with`` the fleet inside the service's
        ``with``): a service stopping closes its sockets with a handshake,
        which clients whose loop is blocked (in the service's stop, called
        from it) could only time out (seconds per run)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_sockets(self.sockets.values())
        if self._http is not None:
            await self._http.close()

    async def _client(self, i: int, meeting: str) -> None:
        failures = 0
        while True:
            try:
                ws = await self._open(i, meeting)
            except (OSError, aiohttp.ClientError, ConnectionClosed, TimeoutError, KeyError, ValueError):
                failures += 1
                await asyncio.sleep(min(32.0, 2.0 ** (failures - 1)))  # upstream: no jitter
                continue
            failures = 0
            self.online.add(meeting)
            self.sockets[meeting] = ws
            self._changed.set()
            with contextlib.suppress(ConnectionClosed):
                async for text in ws:
                    frame = json.loads(text)
                    if "id" in frame:
                        await ws.send(json.dumps({"messageId": frame["id"], "type": "ack"}))
            self.online.discard(meeting)
            self.sockets.pop(meeting, None)
            self.reconnects += 1
            self._changed.set()

    async def _open(self, i: int, meeting: str) -> ClientConnection:
        assert self._http is not None
        async with self._gate:
            async with self._http.post(self.server.datachannel_url(meeting), json={"deviceUrl": DEVICE_URL}) as resp:
                body = await resp.json(content_type=None)
            query = f"?outboundWireFormat=text&bufferStates=true&aliasHttpStatus=true&clientTimestamp={int(time.time() * 1000)}"
            ws = await connect(body["webSocketUrl"] + query, compression=None, ping_interval=None, open_timeout=60,
                               close_timeout=2)
            await ws.send(json.dumps({"id": str(uuid.uuid4()), "type": "authorization",
                                      "data": {"token": f"Bearer {USER_TOKEN}"}}))
            first = json.loads(await ws.recv())
            await ws.send(json.dumps({"messageId": first["id"], "type": "ack"}))
            if self.subscribe:
                await ws.send(json.dumps({"id": "1", "type": "subchannelSubscriptionRequest",
                                          "data": {"datachannelUri": self.server.datachannel_url(meeting),
                                                   "subscribe": ["transcription"], "unsubscribe": []}}))
            return ws

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            for ws in list(self.sockets.values()):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"id": str(uuid.uuid4()), "type": "ping"}))


def wait_service(server: DataServerProcess, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> float:
    """Seconds until the service's summary state satisfies ``predicate``."""
    start = time.perf_counter()
    server.wait_for(predicate, timeout, detail=False)
    return time.perf_counter() - start


def subscribed_sessions(state: dict[str, Any], prefix: str) -> int:
    """Sessions of meetings named ``prefix<i>`` holding the transcription subscription."""
    return sum(1 for key, subs in state["subscriptions"].items()
               if key.startswith(prefix) and "transcription" in subs)


def run_child(script: str, *args: object, timeout: float) -> dict[str, float]:
    """Run ``script --child ARGS`` in a fresh interpreter (its RSS and CPU are
    its own) and return the JSON object it printed last."""
    out = subprocess.run([sys.executable, script, "--child", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{script} --child {args} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
