"""The webinar workload in a simulated world: meetings, their sessions and
the reference data-channel service, with faults.

One seed, one run: the reference service (``ops/dataserver``: its real
aiohttp and websockets servers, tokens required) and ``nodes`` meeting
nodes (a meeting host each, as ``huddle node --meetings`` runs one) in the
world. An application node starts ``meetings`` meetings, each with its
user's access token, and tells each it joined with captions on (every
fifth a panelist with the practice session on): each meeting's tree
fetches its data-channel tokens, registers, opens its sockets, authorizes,
pings and subscribes, for real, through the simulated network. Meanwhile,
until :data:`CALM_S` before the end, faults drawn from the seed: the
service restarted (every socket closed), a switchover asked of a meeting's
sockets (``shutdown``), sockets dropped or closed with an error, registers
and token fetches failing or slow, a node cut off from the network or
paused.

Then the checks: once the faults stopped, within :data:`CONVERGE_S`,
every meeting holds exactly one open socket per wanted session (default;
practice for panelists), online, authorized and subscribed to
``transcription``, on its own meeting's binding; and no secret (a user's
access token, a data-channel token, a bearer header) in any event the
nodes emitted, any log line, or any checkpoint the nodes hold.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import actors.sessions.contracts.meeting as mt
from actors.sessions.meeting.host import MeetingHost, NodeMeetings, host_address
from bus.messages import Event
from ops.dataserver.model import DEFAULT_SESSION, PRACTICE_SESSION
from ops.dataserver.server import DataServer
from ops.sim.network import current_host
from ops.sim.nodes import SimHost, listening
from ops.sim.world import World, fault_kinds, trace_hash

__all__ = ["CALM_S", "CONVERGE_S", "FAULTS", "WebinarResult", "run_webinar_seed"]

CALM_S = 5.0
#: After the faults stop, every meeting's sessions are where they should be
#: within this: a session's backoff is at most 32 s (the protocol's cap),
#: then an attempt (token, register, open, authorization) takes moments.
CONVERGE_S = 40.0
PANELIST_EVERY = 5
FAULTS = ("service-restart", "switchover", "drop", "close", "register-fail", "token-fail", "token-delay",
          "node-cut", "node-pause")
SERVICE = "dataserver"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


@dataclass
class WebinarResult:
    seed: int
    violations: list[str]
    faults: list[str]
    events: int
    simulated_s: float
    converged_s: float | None
    trace: list[str] = field(repr=False)

    @property
    def trace_hash(self) -> str:
        return trace_hash(self.trace)


class _Logs(logging.Handler):
    """Every log line of the run (the secrets check reads them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a line that cannot be formatted holds nothing to check
            pass


def _wanted(meetings: int) -> dict[str, list[str]]:
    return {f"m{i}": [DEFAULT_SESSION, *([PRACTICE_SESSION] if i % PANELIST_EVERY == 0 else [])]
            for i in range(meetings)}


def _not_converged(service: Any, wanted: dict[str, list[str]]) -> list[str]:
    """What differs from: one open socket per wanted session, online,
    authorized, subscribed to transcription; none for sessions not wanted."""
    open_by: Counter[tuple[str, str]] = Counter()
    good: set[tuple[str, str]] = set()
    for record in service.sockets.values():
        if not record.open or record.refused is not None or record.meeting is None:
            continue
        key = (record.meeting, record.session)
        open_by[key] += 1
        if record.online and record.authorized and "transcription" in record.subscriptions:
            good.add(key)
    out = []
    for meeting, sessions in wanted.items():
        for session in sessions:
            key = (meeting, session)
            if key not in good:
                out.append(f"{meeting}/{session}: no socket online and subscribed")
            elif open_by[key] != 1:
                out.append(f"{meeting}/{session}: {open_by[key]} sockets open")
    for (meeting, session), n in sorted(open_by.items()):
        if session not in wanted.get(meeting, ()):
            out.append(f"{meeting}/{session}: {n} sockets open, none wanted")
    return out


def run_webinar_seed(seed: int, *, nodes: int = 2, meetings: int = 20, seconds: float = 20.0,
                     faults: bool | Sequence[str] = True) -> WebinarResult:
    """One run of the workload (see the module notes). ``faults``: all of
    :data:`FAULTS` (True), none (False), or those named."""
    kinds = fault_kinds(faults, FAULTS)
    world = World(seed)
    draws = random.Random(f"faults:{seed}")
    trace: list[str] = []
    injected: list[str] = []
    violations: list[str] = []
    events: list[Event] = []
    secrets = [f"user-token-{seed}-{i}" for i in range(meetings)]
    wanted = _wanted(meetings)
    token_secret = f"sim-signing-key-of-seed-{seed}".ljust(32, "-")  # HMAC keys of 32 bytes at least
    service_context = contextvars.copy_context()
    service_context.run(current_host.set, SERVICE)
    # Every line any part logs reaches the check; the handlers already
    # there keep showing only what they showed before.
    logs = _Logs()
    root = logging.getLogger()
    level = root.level
    quieted = [h for h in root.handlers if h.level == logging.NOTSET]
    for handler in quieted:
        handler.setLevel(level)
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)

    recording = [True]  # what happens while the world is torn down is not part of the run

    def note(what: str) -> None:
        if recording[0]:
            trace.append(f"{world.now():.6f} {what}")

    def on_event(event: Event) -> None:
        events.append(event)
        if event.event == "session-state":
            note(f"{event.address} {event.reason}")

    state: dict[str, Any] = {}

    async def start_service(http_port: int = 0, ws_port: int = 0) -> DataServer:
        ds = DataServer(host=SERVICE, http_port=http_port, ws_port=ws_port, token_secret=token_secret,
                        require_token=True)
        await service_context.run(asyncio.ensure_future, ds.start())
        return ds

    def service_faults(body: dict[str, Any]) -> None:
        ds = state["ds"]
        _result, actions = ds.service.apply_faults(body)
        service_context.run(ds.perform, actions)

    async def restart_service() -> None:
        old: DataServer = state["ds"]
        http_port, ws_port = int(old.http_url.rsplit(":", 1)[1]), int(old.ws_url.rsplit(":", 1)[1])
        await service_context.run(asyncio.ensure_future, old.stop())
        state["ds"] = await start_service(http_port, ws_port)

    async def inject(until: float, hosts: list[SimHost]) -> None:
        while world.now() + 3.0 < until:
            await asyncio.sleep(draws.uniform(0.3, 2.0))
            kind = draws.choice(kinds)
            meeting = f"m{draws.randrange(meetings)}"
            if kind == "service-restart":
                await restart_service()
                what = "service restarted"
            elif kind == "switchover":
                ds = state["ds"]
                _n, actions = ds.service.shutdown({"meeting": meeting})
                service_context.run(ds.perform, actions)
                what = f"switchover asked of {meeting}"
            elif kind == "drop":
                service_faults({"drop": {"meeting": meeting}})
                what = f"{meeting}'s sockets dropped"
            elif kind == "close":
                service_faults({"close": {"meeting": meeting, "code": 1011, "reason": "injected"}})
                what = f"{meeting}'s sockets closed 1011"
            elif kind == "register-fail":
                count = draws.randint(1, 5)
                service_faults({"register_fail_next": {"status": draws.choice([500, 503, 429]), "count": count}})
                what = f"the next {count} registers fail"
            elif kind == "token-fail":
                count = draws.randint(1, 5)
                service_faults({"token_fail_next": {"status": draws.choice([500, 503]), "count": count}})
                what = f"the next {count} token fetches fail"
            elif kind == "token-delay":
                delay = draws.uniform(0.5, 3.0)
                service_faults({"token_delay_s": delay})
                world.loop.call_later(draws.uniform(0.5, 3.0), service_faults, {"token_delay_s": 0.0})
                what = f"token fetches slow ({delay:.3f}s) for a while"
            else:
                host = draws.choice(hosts)
                length = draws.uniform(0.2, 3.0)
                if kind == "node-cut":
                    world.network.isolate(host.name)
                    world.loop.call_later(length, world.network.heal, host.name)
                    what = f"{host.name} cut off {length:.3f}s"
                else:
                    host.pause()
                    world.loop.call_later(length, host.resume)
                    what = f"{host.name} paused {length:.3f}s"
            injected.append(what)
            note(f"fault {what}")

    async def scenario() -> float | None:
        state["ds"] = ds = await start_service()
        hosts = state["hosts"] = [SimHost(world, f"n{i}") for i in range(nodes)]
        for host in hosts:
            host.start()
            host.node.add_event_listener(on_event)
            host.run(lambda h=host: h.node.spawn(host_address(h.node_id), MeetingHost,
                                                 meetings=NodeMeetings(h.node, f"https://devices.sim/{h.node_id}")))
            await listening(host.node, host_address(host.node_id))
        app = SimHost(world, "app")
        app.start()
        await listening(app.node, app.node.address)
        for i, meeting in enumerate(wanted):
            node = hosts[i % nodes].node_id
            await app.node.ask(host_address(node), mt.StartMeeting(meeting_id=meeting, access_token=secrets[i]),
                               timeout=10)
            base = ds.http_url
            panelist = i % PANELIST_EVERY == 0
            app.run(app.node.tell, f"meeting:{meeting}", mt.Joined(
                locus_url=f"{base}/locus/{meeting}", self_id=f"self-{i}",
                datachannel_url=f"{base}/datachannel/{meeting}",
                practice_datachannel_url=f"{base}/datachannel/{meeting}/practice", captions_on=True,
                panelist=panelist, practice_session_on=panelist), sender="app:sim")
        end = world.now() + seconds
        faulting = asyncio.ensure_future(inject(end - CALM_S, hosts)) if kinds else None
        await asyncio.sleep(max(0.0, end - world.now()))
        if faulting is not None:
            faulting.cancel()
        for host in hosts:
            world.network.heal(host.name)
            host.resume()
        standing = state["ds"].service.faults  # what the faults left standing ends with them
        standing.register_fail = standing.token_fail = None
        standing.token_delay_s = 0.0
        calm = world.now()
        while world.now() < calm + CONVERGE_S:
            if not _not_converged(state["ds"].service, wanted):
                return world.now() - calm
            await asyncio.sleep(0.1)
        return None

    try:
        converged = world.run(scenario())
        if converged is None:
            left = _not_converged(state["ds"].service, wanted)
            violations += [f"convergence ({CONVERGE_S:g}s after the faults): {x}" for x in left[:20]]
        for event in events:
            text = json.dumps({"event": event.event, "address": event.address, "reason": event.reason,
                               "detail": event.detail}, default=str)
            violations += [f"secret in an event: {event.event} {event.address}" for s in secrets if s in text]
            if "Bearer " in text or _JWT.search(text):
                violations.append(f"a token in an event: {event.event} {event.address}")
        for host in state["hosts"]:  # every checkpoint the meeting nodes hold
            for address in host.node.addresses():
                data = host.node.checkpoints.load(address) or b""
                if any(x.encode() in data for x in secrets) or b"Bearer " in data or _JWT.search(data.decode("latin-1")):
                    violations.append(f"a secret in the checkpoint of {address}")
        for line in logs.lines:
            if any(s in line for s in secrets) or "Bearer " in line or _JWT.search(line):
                violations.append(f"a secret in a log line: {line[:120]}")
                break
        simulated = world.now()
        note(f"final sockets {sum(1 for r in state['ds'].service.sockets.values() if r.open)}")
        recording[0] = False
    finally:
        root.removeHandler(logs)
        root.setLevel(level)
        for handler in quieted:
            handler.setLevel(logging.NOTSET)
        if "ds" in state:
            try:
                world.run(service_context.run(world.loop.create_task, state["ds"].stop()))
            except Exception:  # noqa: BLE001 - the end of the world
                pass
        world.close()
    return WebinarResult(seed=seed, violations=violations, faults=injected, events=len(events),
                         simulated_s=simulated, converged_s=converged, trace=trace)
