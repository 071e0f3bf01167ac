"""token-fetch: token actors fetching from the reference service over HTTP.

figures:
  fetches_per_s      N token actors (one per meeting) on one node, each
                     asked for its default token at once: every request goes
                     through the bus to the actor, the fetch runs on the
                     node's I/O loop against ``huddle dataserver`` (a real
                     process, real HTTP), the grant comes back through the
                     bus; from the first request to the last grant;
  held_grants_per_s  then N x 20 more requests, answered from held tokens
                     (no HTTP): the cost of the actor path alone.
baseline: the same N GETs of the same endpoint from one bare aiohttp client
session on one loop, all at once, against the same service in the same run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
from common import parse_args, report

from actors.runtime.actor import HuddleActor
from actors.sessions.context import Secret
from actors.sessions.contracts.token import (
    DEFAULT_SESSION,
    TokenConfigure,
    TokenGranted,
    TokenRequest,
    token_address,
)
from actors.runtime.node import Node
from actors.sessions.token.actor import TokenActor
from actors.sessions.token.http import HttpTokenEndpoint
from bus.transport import InProcessHub, InProcessTransport
from ops.dataserver.harness import DataServerProcess

COLLECTOR = "bench:collector"
HEADERS = {"Authorization": "Bearer bench-user"}


class Collector(HuddleActor):
    """Counts grants; sets ``done`` when ``expected`` have come."""

    mailbox_capacity = None  # every grant of a burst must fit (10,000 is the default bound)

    def __init__(self, ctx: Any, state: dict[str, Any]) -> None:
        super().__init__(ctx)
        self.shared = state

    def on_message(self, message: Any, envelope: Any) -> Any:
        if isinstance(message, TokenGranted):
            self.shared["granted"] += 1
            if self.shared["granted"] >= self.shared["expected"]:
                self.shared["done"].set()
            return None
        return super().on_message(message, envelope)


def _wait(shared: dict[str, Any], expected: int) -> None:
    shared.update(granted=0, expected=expected, done=threading.Event())


def run_actors(service: DataServerProcess, meetings: int, repeats: int) -> dict[str, float]:
    node = Node(InProcessTransport(InProcessHub()), node_id="bench-token").start()
    endpoint = HttpTokenEndpoint(timeout_s=60)
    shared: dict[str, Any] = {}
    try:
        node.spawn(COLLECTOR, Collector, shared)
        for i in range(meetings):
            address = token_address(f"m{i}")
            node.spawn(address, TokenActor, endpoint, Secret("bench-user"))
            node.tell(address, TokenConfigure(locus_url=service.locus_url(f"m{i}"), self_id=f"self-{i}",
                                              generation=1), sender=f"meeting:m{i}")
        node.wait_idle(60)
        _wait(shared, meetings)
        t0 = time.perf_counter()
        for i in range(meetings):
            node.tell(token_address(f"m{i}"), TokenRequest(DEFAULT_SESSION, f"r{i}"), sender=COLLECTOR)
        if not shared["done"].wait(300):
            raise SystemExit(f"only {shared['granted']} of {meetings} tokens granted")
        fetch_s = time.perf_counter() - t0
        _wait(shared, meetings * repeats)
        t0 = time.perf_counter()
        for k in range(repeats):
            for i in range(meetings):
                node.tell(token_address(f"m{i}"), TokenRequest(DEFAULT_SESSION, f"h{k}-{i}"), sender=COLLECTOR)
        if not shared["done"].wait(300):
            raise SystemExit("held grants did not all come")
        held_s = time.perf_counter() - t0
    finally:
        try:
            node.io.submit(endpoint.close()).result(10)
        finally:
            node.shutdown()
    return {"fetches_per_s": meetings / fetch_s, "held_grants_per_s": meetings * repeats / held_s,
            "fetch_all_s": fetch_s}


def run_baseline(service: DataServerProcess, meetings: int) -> dict[str, float]:
    async def fetch_all() -> float:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def one(i: int) -> None:
                url = f"{service.locus_url(f'm{i}')}/participant/self-{i}/datachannel/token"
                async with session.get(url, headers=HEADERS) as response:
                    body = await response.json()
                    assert response.status == 200 and body["datachannelToken"]

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(meetings)))
            return time.perf_counter() - t0

    elapsed = asyncio.run(fetch_all())
    return {"fetches_per_s": meetings / elapsed, "fetch_all_s": elapsed}


def main() -> None:
    args = parse_args("token-fetch", __doc__ or "")
    meetings = 200 if args.quick else 1_000
    repeats = 5 if args.quick else 20
    with DataServerProcess.start() as service:
        run_baseline(service, min(meetings, 100))  # warm the service up
        service.reset()
        baseline = run_baseline(service, meetings)
        service.reset()
        figures = run_actors(service, meetings, repeats)
    report(
        args,
        figures={**figures, "meetings": meetings,
                 "fetches_per_s_vs_baseline": figures["fetches_per_s"] / baseline["fetches_per_s"]},
        baseline={**baseline, "meetings": meetings},
        goal={"fetches_per_s_vs_baseline": 0.8},
    )


if __name__ == "__main__":
    main()
