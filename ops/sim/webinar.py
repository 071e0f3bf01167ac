"""The webinar workload in a simulated world: meetings, their sessions and
the reference data-channel service, with meetings that change as they run
and faults.

One seed, one run: the reference service (``ops/dataserver``: its real
aiohttp and websockets servers, tokens required) and ``nodes`` meeting
nodes (a meeting host each, as ``huddle node --meetings`` runs one) in the
world. An application node starts ``meetings`` meetings, each with its
user's access token, and tells each it joined with captions on (every
fifth a panelist with the practice session on): each meeting's tree
fetches its data-channel tokens, registers, opens its sockets, authorizes,
pings and subscribes, for real, through the simulated network.

Meanwhile, until :data:`CALM_S` before the end, two streams drawn from the
seed. **Changes** (what a meeting client sees happen): the practice session
turned on or off, a participant promoted or demoted, captions on or off,
the lobby and admission, a participant leaving, rejoining under a new
participant id (sometimes twice in quick succession, as a flaky client
does), and an incoming call reaching for a data channel another meeting
owns. **Faults**: the service restarted (every socket closed), at once or
after seconds down, a switchover
asked of a meeting's sockets (``shutdown``), sockets dropped or closed with
an error, registers and token fetches failing or slow, a node cut off from
the network, or from Redis alone, or paused, one of its connections to
Redis dropped, Redis restarted with or without its data. When the faults stop, the application sends each
meeting its facts once more (a locus snapshot: a change told to a node that
was cut off was lost, as on a real bus). With ``cluster``, if Redis lost its
data, it first starts its meetings again, as the runbook asks of an
application (an ensure: a tree whose placement went with the data while no
node held it is placed anew; nothing changes for the others).

Checked all along:

* **S27**: a practice session starts only while its meeting knows the
  default session online (the meeting's ``practice-session-started``
  event says what it knew);
* **tokens**: every register the service sees that carries a token
  carries one issued by it to the participant the meeting's token actor
  serves at that moment (or :data:`TOKEN_GRACE_S` before: a register
  already on its way); a token of a participant that left, or of another
  meeting, is a violation. (A register without a token is the protocol's
  answer to a token that could not be had.)

And at the end: within :data:`CONVERGE_S` after the faults, every meeting
holds exactly one open socket per wanted session (default when admitted;
practice for a panelist with the practice session on), online, authorized,
subscribed to ``transcription`` exactly when captions are on, on its own
meeting's binding, and none for a session not wanted; and no secret (a
user's access token, a data-channel token, a bearer header) in any event
the nodes emitted, any log line, or any checkpoint the nodes hold.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import dataclasses
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import actors.sessions.contracts.datachannel as dc
import actors.sessions.contracts.meeting as mt
from actors.cluster.machine import ClusterConfig
from actors.cluster.shell import ActorFactories
from actors.sessions.context import Secret
from actors.sessions.meeting.host import TREE_KIND, MeetingHost, NodeMeetings, host_address
from bus.errors import HuddleError
from bus.messages import Event, Message
from ops.dataserver.model import DEFAULT_SESSION, PRACTICE_SESSION
from ops.demo.app import IncomingCall
from ops.dataserver.server import DataServer
from ops.sim.network import current_host
from ops.sim.nodes import SimHost, listening
from ops.sim.world import World, fault_kinds, trace_hash

__all__ = ["CALM_S", "CHANGES", "CLUSTER_FAULTS", "CONVERGE_S", "FAULTS", "TOKEN_GRACE_S", "WebinarResult", "run_webinar_seed"]

CALM_S = 5.0
#: After the faults stop, every meeting's sessions are where they should be
#: within this: a session's backoff is at most 32 s (the protocol's cap),
#: then an attempt (token, register, open, authorization) takes moments.
CONVERGE_S = 40.0
#: A register that reaches the service within this of a time the token
#: actor served its token's participant was sent then (on its way).
TOKEN_GRACE_S = 0.25
PANELIST_EVERY = 5
#: How long the service takes to answer a token fetch and a register (a
#: real one's latency, drawn per request; faults add to it).
TOKEN_LATENCY_S = (0.02, 0.6)
REGISTER_LATENCY_S = (0.02, 0.3)
FAULTS = ("service-restart", "switchover", "drop", "close", "register-fail", "token-fail", "token-delay",
          "node-cut", "node-pause", "bus-cut", "bus-drop", "redis-restart")
#: Faults only a fleet of cluster members has (a node's trees move).
CLUSTER_FAULTS = ("node-kill",)
LEASE_TTL_S = 1.0
#: How long the service's tokens are valid: short, so sessions fetch new
#: ones during a run, faults and all (the service and the nodes read the
#: world's clock).
TOKEN_TTL_S = 45.0
SOCKET_FAULTS = ("switchover", "drop", "close")
#: How often a change to a meeting is followed, within 0.8 s, by a socket
#: fault on that meeting (an aftershock).
AFTERSHOCK_P = 0.5
CHANGES = ("practice", "role", "captions", "lobby", "leave", "rejoin", "incoming-call")
SERVICE = "dataserver"
#: The changes that turn one fact of a meeting over: the fact, the message
#: that says its new value, and how the trace says it (off, on).
_TOGGLES: dict[str, tuple[str, Any, tuple[str, str]]] = {
    "practice": ("practice", lambda on: mt.PracticeSessionChanged(on=on),
                 ("practice session off", "practice session on")),
    "role": ("panelist", lambda on: mt.RolesChanged(panelist=on), ("demoted to attendee", "promoted to panelist")),
    "captions": ("captions", lambda on: mt.CaptionsChanged(on=on), ("captions off", "captions on")),
}
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
    changes: list[str] = field(default_factory=list, repr=False)
    #: what the incoming calls' claims and disconnects got back (refusals)
    calls_refused: int = 0

    @property
    def trace_hash(self) -> str:
        return trace_hash(self.trace)


@dataclass
class _Meeting:
    """What the application told one meeting (the facts it should hold)."""

    index: int
    panelist: bool
    practice: bool
    captions: bool = True
    joined: bool = True
    lobby: bool = False
    participant: int = 0
    busy: bool = False  # a change with a follow-up is under way

    @property
    def id(self) -> str:
        return f"m{self.index}"

    @property
    def self_id(self) -> str:
        return f"self-{self.index}-{self.participant}"

    def wanted(self) -> dict[str, bool]:
        """Session type → whether it should be subscribed to transcription."""
        if not self.joined or self.lobby:
            return {}
        out = {DEFAULT_SESSION: self.captions}
        if self.panelist and self.practice:
            out[PRACTICE_SESSION] = self.captions
        return out

    def urls(self, base: str) -> dict[str, str]:
        return {"locus_url": f"{base}/locus/{self.id}", "datachannel_url": f"{base}/datachannel/{self.id}",
                "practice_datachannel_url": f"{base}/datachannel/{self.id}/practice"}

    def joined_message(self, base: str) -> mt.Joined:
        return mt.Joined(**self.urls(base), self_id=self.self_id, in_lobby=self.lobby, captions_on=self.captions,
                         panelist=self.panelist, practice_session_on=self.practice)

    def snapshot(self, base: str) -> Message:
        if not self.joined:
            return mt.Left(reason="resynchronised")
        return mt.LocusSnapshot(joined=True, **self.urls(base), self_id=self.self_id, in_lobby=self.lobby,
                                panelist=self.panelist, practice_session_on=self.practice, captions_on=self.captions)


class _Refusals(list):  # type: ignore[type-arg]
    """What the incoming calls got back: the demo's call records into this."""

    def record(self, refusal: dc.Refusal) -> None:
        self.append(refusal)


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


def _not_converged(service: Any, wanted: dict[str, dict[str, bool]]) -> list[str]:
    """What differs from: one open socket per wanted session, online,
    authorized, subscribed to transcription exactly when captions are on;
    none for sessions not wanted."""
    open_by: Counter[tuple[str, str]] = Counter()
    good: set[tuple[str, str]] = set()
    for record in service.sockets.values():
        if not record.open or record.refused is not None or record.meeting is None:
            continue
        key = (record.meeting, record.session)
        open_by[key] += 1
        captions = wanted.get(record.meeting, {}).get(record.session)
        if record.online and record.authorized and captions == ("transcription" in record.subscriptions):
            good.add(key)
    out = []
    for meeting, sessions in wanted.items():
        for session, captions in sessions.items():
            key = (meeting, session)
            if key not in good:
                out.append(f"{meeting}/{session}: no socket online and {'' if captions else 'un'}subscribed")
            elif open_by[key] != 1:
                out.append(f"{meeting}/{session}: {open_by[key]} sockets open")
    for (meeting, session), n in sorted(open_by.items()):
        if session not in wanted.get(meeting, {}):
            out.append(f"{meeting}/{session}: {n} sockets open, none wanted")
    return out


def _secrets_in_redis(world: World, secrets: list[str]) -> list[str]:
    """The keys whose values (strings, hashes, sets, streams) hold a secret."""
    redis = world.redis.inspector()
    found = []
    for key in sorted(redis.keys("*")):
        kind = redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            values = [redis.get(key)]
        elif kind == "hash":
            values = [v for pair in redis.hgetall(key).items() for v in pair]
        elif kind == "set":
            values = list(redis.smembers(key))
        elif kind == "stream":
            values = [v for _id, fields in redis.xrange(key) for pair in fields.items() for v in pair]
        else:
            values = []
        text = b" ".join(v if isinstance(v, bytes) else str(v).encode() for v in values if v is not None)
        if any(x.encode() in text for x in secrets) or b"Bearer " in text or _JWT.search(text.decode("latin-1")):
            found.append(key.decode() if isinstance(key, bytes) else key)
    return found


class _Participants:
    """Whom each meeting's token actor serves over time, from its events:
    ``configured`` (a participant) and ``forgotten`` (nobody: left)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.whom: dict[str, list[str | None]] = defaultdict(list)

    def seen(self, event: Event, now: float) -> None:
        if not event.address.startswith("token:"):
            return
        meeting = event.address.split(":", 1)[1]
        if event.event == "configured":
            self.times[meeting].append(now)
            self.whom[meeting].append(str(event.detail.get("participant")))
        elif event.event == "forgotten":
            self.times[meeting].append(now)
            self.whom[meeting].append(None)

    def at(self, meeting: str, t: float) -> str | None:
        i = bisect.bisect_right(self.times[meeting], t)
        return self.whom[meeting][i - 1] if i else None

    def during(self, meeting: str, t0: float, t1: float) -> set[str | None]:
        """Everyone the meeting's token actor served at some time in ``[t0, t1]``."""
        times, whom = self.times[meeting], self.whom[meeting]
        first, last = bisect.bisect_right(times, t0), bisect.bisect_right(times, t1)
        return {self.at(meeting, t0), *whom[first:last]}

    def stale_register(self, t: float, record: dict[str, Any]) -> str | None:
        """A violation, if the register at ``t`` carries a token that is not
        the meeting's participant's (now or :data:`TOKEN_GRACE_S` ago)."""
        meeting, session = record.get("meeting"), record.get("session")
        holder = (record.get("token_meeting"), record.get("token_self"))
        if holder[0] is None:
            if record.get("token") == "absent":
                return None  # the token actor could not get one: registers without (the protocol's rule)
            return f"{meeting}/{session} registered with a token this service did not issue ({record.get('token')})"
        if holder[0] != meeting:
            return f"{meeting}/{session} registered with a token of meeting {holder[0]}"
        if holder[1] not in self.during(meeting, t - TOKEN_GRACE_S, t):
            now = self.at(meeting, t)
            return (f"{meeting}/{session} registered with {holder[1]}'s token while its token actor serves "
                    f"{now or 'nobody (left)'}")
        return None


def run_webinar_seed(seed: int, *, nodes: int = 2, meetings: int = 20, seconds: float = 20.0,
                     faults: bool | Sequence[str] = True, changes: bool | Sequence[str] = True,
                     cluster: bool = False) -> WebinarResult:
    """One run of the workload (see the module notes). ``faults``: all of
    :data:`FAULTS` (True; with ``cluster``, :data:`CLUSTER_FAULTS` too), none
    (False), or those named; ``changes`` the same for :data:`CHANGES`.
    ``cluster``: the meeting nodes are cluster members and meeting trees
    are placed, and moved when their node fails."""
    kinds = fault_kinds(faults, FAULTS + CLUSTER_FAULTS if cluster else FAULTS)
    change_kinds = fault_kinds(changes, CHANGES, "changes")
    world = World(seed)
    draws = random.Random(f"faults:{seed}")
    acts = random.Random(f"changes:{seed}")
    latency = random.Random(f"latency:{seed}")
    trace: list[str] = []
    injected: list[str] = []
    changed: list[str] = []
    violations: list[str] = []
    events: list[Event] = []
    node_tokens = {f"n{i}": f"node-token-{seed}-{i}" for i in range(nodes)}
    secrets = [f"user-token-{seed}-{i}" for i in range(meetings)] + list(node_tokens.values())
    incarnations: dict[str, int] = {}
    plan = [_Meeting(i, panelist=i % PANELIST_EVERY == 0, practice=i % 2 == 0) for i in range(meetings)]
    participants = _Participants()
    refusals = _Refusals()
    aftershocks = random.Random(f"aftershocks:{seed}")
    faulting_now = [bool(kinds)]
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

    def violation(what: str) -> None:
        if recording[0] and len(violations) < 40:
            violations.append(f"{world.now():.3f}s {what}")

    def on_event(event: Event) -> None:
        events.append(event)
        participants.seen(event, world.now())
        if event.event == "session-state":
            note(f"{event.address} {event.reason}")
        elif event.event == "token-stored" and event.detail.get("expires_in_s", 0) > TOKEN_TTL_S:
            violation(f"{event.address} holds a token for {event.detail['expires_in_s']} s, longer than the "
                      f"service grants ({TOKEN_TTL_S:g} s): the two read different clocks")
        elif event.event == "practice-session-started":
            note(f"{event.address} practice started, default {event.detail.get('default_session')}")
            if event.detail.get("default_session") != dc.ONLINE:
                violation(f"S27: {event.address} started its practice session while it knew the default session "
                          f"{event.detail.get('default_session') or 'in no state'}")

    state: dict[str, Any] = {}

    def watch_registers(ds: DataServer) -> None:
        register = ds.service.register

        def watched(meeting: str, session: str, body: Any, token: str | None, now: float) -> Any:
            answer = dataclasses.replace(register(meeting, session, body, token, now))
            answer = dataclasses.replace(answer, delay=answer.delay + latency.uniform(*REGISTER_LATENCY_S))
            record = ds.service.register_requests[-1]
            note(f"register {meeting}/{session} {record.get('token_self')} {answer.status}")
            if isinstance(body, dict):  # a malformed body is not a session's
                problem = participants.stale_register(world.now(), record)
                if problem:
                    violation(f"tokens: {problem}")
            return answer

        ds.service.register = watched  # type: ignore[method-assign]
        token = ds.service.token

        def slow_token(*args: Any, **kwargs: Any) -> Any:
            answer = token(*args, **kwargs)
            return dataclasses.replace(answer, delay=answer.delay + latency.uniform(*TOKEN_LATENCY_S))

        ds.service.token = slow_token  # type: ignore[method-assign]

    async def start_service(http_port: int = 0, ws_port: int = 0) -> DataServer:
        ds = DataServer(host=SERVICE, http_port=http_port, ws_port=ws_port, token_secret=token_secret,
                        require_token=True, token_ttl_s=TOKEN_TTL_S, wall=world.wall)
        watch_registers(ds)
        await service_context.run(asyncio.ensure_future, ds.start())
        return ds

    def service_faults(body: dict[str, Any]) -> None:
        ds = state["ds"]
        _result, actions = ds.service.apply_faults(body)
        service_context.run(ds.perform, actions)

    async def restart_service(down_s: float) -> None:
        old: DataServer = state["ds"]
        http_port, ws_port = int(old.http_url.rsplit(":", 1)[1]), int(old.ws_url.rsplit(":", 1)[1])
        await service_context.run(asyncio.ensure_future, old.stop())
        await asyncio.sleep(down_s)  # nothing listens: registers, sockets and token fetches are refused
        state["ds"] = await start_service(http_port, ws_port)

    def socket_fault(kind: str, meeting: str, rng: random.Random) -> str:
        if kind == "switchover":
            ds = state["ds"]
            _n, actions = ds.service.shutdown({"meeting": meeting})
            service_context.run(ds.perform, actions)
            return f"switchover asked of {meeting}"
        if kind == "drop":
            service_faults({"drop": {"meeting": meeting}})
            return f"{meeting}'s sockets dropped"
        # 1011: the relay failed; 4401: the token was revoked (the next
        # attempt fetches a fresh one, slowly when fetches are slow)
        code = rng.choice([1011, 4401])
        service_faults({"close": {"meeting": meeting, "code": code, "reason": "injected"}})
        return f"{meeting}'s sockets closed {code}"

    def aftershock(meeting: str) -> None:
        """Faults strike where things change, while they change: now and
        then a socket fault on a meeting moments after a change to it."""
        shocks = [k for k in kinds if k in SOCKET_FAULTS]
        if not shocks or not faulting_now[0] or aftershocks.random() >= AFTERSHOCK_P:
            return
        kind = aftershocks.choice(shocks)

        def strike() -> None:
            if faulting_now[0]:
                what = socket_fault(kind, meeting, aftershocks)
                injected.append(what)
                note(f"fault (aftershock) {what}")

        world.loop.call_later(aftershocks.uniform(0.0, 0.8), strike)

    async def inject(until: float, hosts: list[SimHost]) -> None:
        while world.now() + 3.0 < until:
            await asyncio.sleep(draws.uniform(0.3, 2.0))
            kind = draws.choice(kinds)
            meeting = f"m{draws.randrange(meetings)}"
            if kind == "service-restart":
                down = draws.choice([0.0, draws.uniform(0.1, 3.0)])
                note(f"fault service restarting, down {down:.3f}s")
                # Not cancelled with the faults: a service down comes back up.
                state["restarting"] = restarting = asyncio.ensure_future(restart_service(down))
                await asyncio.shield(restarting)
                what = f"service restarted after {down:.3f}s down"
            elif kind in SOCKET_FAULTS:
                what = socket_fault(kind, meeting, draws)
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
                world.loop.call_later(draws.uniform(1.0, 5.0), service_faults, {"token_delay_s": 0.0})
                what = f"token fetches slow ({delay:.3f}s) for a while"
            elif kind == "redis-restart":
                keep = draws.random() < 0.5
                cut = world.redis.restart(keep_data=keep)
                state["wiped"] = state.get("wiped", False) or not keep
                what = f"redis restarted {'from its data' if keep else 'without its data'} ({cut} connections reset)"
            else:
                index = draws.randrange(len(hosts))
                host = hosts[index]
                if host.killed:
                    continue
                length = draws.uniform(0.2, 3.0)
                if kind == "node-kill":  # kill -9; started again under its id a while later
                    host.kill()
                    world.loop.call_later(length, restart_node, index, host.node_id)
                    what = f"{host.node_id} killed, restarted in {length:.3f}s"
                elif kind == "bus-drop":  # one of its connections to Redis reset
                    opened = [t for t in world.network.opened_by(host.name) if t.get_extra_info("peername")[0]
                              == world.redis.host]
                    if not opened:
                        continue
                    dropped = draws.choice(opened)
                    world.network.drop(dropped)
                    what = f"{host.name}'s redis connection {dropped.conn_id} dropped"
                elif kind == "bus-cut":  # the node loses Redis alone: its sockets to the service stay
                    world.network.partition(host.name, world.redis.host)
                    world.loop.call_later(length, world.network.heal, host.name)
                    what = f"{host.name} cut off from redis {length:.3f}s"
                elif kind == "node-cut":
                    world.network.isolate(host.name)
                    world.loop.call_later(length, world.network.heal, host.name)
                    what = f"{host.name} cut off {length:.3f}s"
                else:
                    host.pause()
                    world.loop.call_later(length, host.resume)
                    what = f"{host.name} paused {length:.3f}s"
            injected.append(what)
            note(f"fault {what}")

    def tell(m: _Meeting, message: Message) -> None:
        app: SimHost = state["app"]
        app.run(app.node.tell, f"meeting:{m.id}", message, sender="app:sim")

    async def change(until: float) -> None:
        """The changes stream: one change every so often to a meeting not
        in the middle of one (those with a follow-up run as their own task)."""
        base = state["ds"].http_url
        calls = 0
        while world.now() + 1.0 < until:
            await asyncio.sleep(acts.uniform(0.05, 0.5))
            kind = acts.choice(change_kinds)
            m = acts.choice(plan)
            if m.busy:
                continue
            if kind == "incoming-call":
                owner = acts.choice([x for x in plan if x.joined and not x.lobby] or plan)
                calls += 1
                target = dc.session_address(owner.id, DEFAULT_SESSION)
                app: SimHost = state["app"]
                app.run(app.node.spawn, f"meeting:call-{calls}", IncomingCall, target, refusals)
                what = f"incoming call {calls} reaches for {target}"
            elif not m.joined:
                if kind not in ("rejoin", "leave"):
                    continue
                m.joined, m.lobby, m.participant = True, False, m.participant + 1
                tell(m, m.joined_message(base))
                what = f"{m.id} joins again as {m.self_id}"
            elif kind in _TOGGLES:
                fact, message, said = _TOGGLES[kind]
                value = not getattr(m, fact)
                setattr(m, fact, value)
                tell(m, message(value))
                what = f"{m.id} {said[value]}"
            elif kind == "leave":
                m.joined = False
                tell(m, mt.Left(reason="left"))
                what = f"{m.id} left"
            elif kind == "lobby":
                if m.lobby:
                    continue
                m.lobby = m.busy = True
                tell(m, mt.Lobby())
                asyncio.ensure_future(admit(m, acts.uniform(0.2, 2.0)))
                what = f"{m.id} moved to the lobby"
            else:  # rejoin: a flaky client leaves and joins again, sometimes twice in quick succession
                m.busy = True
                times = 2 if acts.random() < 0.5 else 1
                gaps = [acts.uniform(0.02, 0.8) for _ in range(2 * times - 1)]
                asyncio.ensure_future(rejoin(m, base, gaps))
                what = f"{m.id} rejoins {times}x ({', '.join(f'{g:.3f}' for g in gaps)})"
            changed.append(what)
            note(f"change {what}")
            aftershock(m.id)

    async def admit(m: _Meeting, after: float) -> None:
        await asyncio.sleep(after)
        m.lobby = m.busy = False
        tell(m, mt.Admitted())
        note(f"change {m.id} admitted")
        aftershock(m.id)

    async def rejoin(m: _Meeting, base: str, gaps: list[float]) -> None:
        for i, gap in enumerate([0.0, *gaps]):
            await asyncio.sleep(gap)
            if i % 2 == 0:
                m.joined = False
                tell(m, mt.Left(reason="rejoining"))
            else:
                m.joined, m.lobby, m.participant = True, False, m.participant + 1
                tell(m, m.joined_message(base))
                note(f"change {m.id} joined as {m.self_id}")
                aftershock(m.id)
        m.busy = False

    def meeting_node(name: str, host: str | None = None) -> SimHost:
        """A meeting node: a meeting host, and with ``cluster`` a member
        whose cluster places meeting trees (and moves them when it fails)."""
        h = SimHost(world, name, host=host)
        h.start()
        h.node.add_event_listener(on_event)
        meetings = NodeMeetings(h.node, f"https://devices.sim/{name}",
                                access_token=Secret(node_tokens[name]) if cluster else None)
        if cluster:
            h.join_cluster(ClusterConfig(lease_ttl=LEASE_TTL_S, heartbeat_interval=LEASE_TTL_S / 4),
                           ActorFactories({TREE_KIND: meetings.tree}))
        h.run(h.node.spawn, host_address(name), MeetingHost, meetings=meetings)
        return h

    def restart_node(index: int, name: str) -> None:
        incarnations[name] = incarnations.get(name, 1) + 1
        state["hosts"][index] = meeting_node(name, host=f"{name}#{incarnations[name]}")
        note(f"restart {name}")

    async def scenario() -> float | None:
        state["ds"] = ds = await start_service()
        hosts = state["hosts"] = [meeting_node(f"n{i}") for i in range(nodes)]
        for host in hosts:
            if host.cluster is not None and not await host.cluster.wait_joined(10):
                raise RuntimeError(f"{host.name} did not join")
            await listening(host.node, host_address(host.node_id))
        app = state["app"] = SimHost(world, "app")
        app.start()
        if cluster:  # a member that hosts nothing: what it sends to a meeting between owners waits for the next
            app.join_cluster(ClusterConfig(lease_ttl=LEASE_TTL_S, heartbeat_interval=LEASE_TTL_S / 4, capacity=0.0),
                             ActorFactories())
            assert app.cluster is not None and await app.cluster.wait_joined(10)
        await listening(app.node, app.node.address)
        for i, m in enumerate(plan):
            node = hosts[i % nodes].node_id
            await app.node.ask(host_address(node), mt.StartMeeting(meeting_id=m.id, access_token=secrets[i]),
                               timeout=10)
            tell(m, m.joined_message(ds.http_url))
        end = world.now() + seconds
        faulting = asyncio.ensure_future(inject(end - CALM_S, hosts)) if kinds else None
        changing = asyncio.ensure_future(change(end - CALM_S)) if change_kinds else None
        await asyncio.sleep(max(0.0, end - world.now()))
        faulting_now[0] = False
        for task in (faulting, changing):
            if task is not None:
                task.cancel()
        if "restarting" in state:
            await state["restarting"]
        for host in hosts:
            world.network.heal(host.name)
            host.resume()
        standing = state["ds"].service.faults  # what the faults left standing ends with them
        standing.register_fail = standing.token_fail = None
        standing.token_delay_s = 0.0
        if cluster and state.get("wiped"):
            # What the runbook asks of an application after Redis lost its
            # data: start its meetings again (an ensure: nothing changes for
            # a tree still placed; one whose placement went with the data
            # while no node held it is placed anew).
            for i, m in enumerate(plan):
                for host in sorted(state["hosts"], key=lambda h: h.killed):
                    try:
                        await app.node.ask(host_address(host.node_id),
                                           mt.StartMeeting(meeting_id=m.id, access_token=secrets[i]), timeout=5)
                        break
                    except HuddleError:
                        continue
        for m in plan:  # what a cut-off node missed, told again
            tell(m, m.snapshot(state["ds"].http_url))
        wanted = {m.id: m.wanted() for m in plan}
        calm = world.now()
        converged = None
        while world.now() < calm + CONVERGE_S:
            if not _not_converged(state["ds"].service, wanted):
                converged = world.now() - calm
                break
            await asyncio.sleep(0.1)
        # read on the loop (a cluster node's checkpoints live there)
        state["checkpoints"] = [(address, h.node.checkpoints.load(address) or b"")
                                for h in state["hosts"] if not h.killed for address in h.node.addresses()]
        return converged

    try:
        converged = world.run(scenario())
        if converged is None:
            left = _not_converged(state["ds"].service, {m.id: m.wanted() for m in plan})
            violations += [f"convergence ({CONVERGE_S:g}s after the faults): {x}" for x in left[:20]]
        for refusal in refusals:
            if refusal.error_type != "NotOwner":
                violations.append(f"an incoming call's {refusal.command} refused as {refusal.error_type}, "
                                  "not as a non-owner's")
        for event in events:
            text = json.dumps({"event": event.event, "address": event.address, "reason": event.reason,
                               "detail": event.detail}, default=str)
            violations += [f"secret in an event: {event.event} {event.address}" for s in secrets if s in text]
            if "Bearer " in text or _JWT.search(text):
                violations.append(f"a token in an event: {event.event} {event.address}")
        for address, data in state["checkpoints"]:  # every checkpoint the meeting nodes hold
            if any(x.encode() in data for x in secrets) or b"Bearer " in data or _JWT.search(data.decode("latin-1")):
                violations.append(f"a secret in the checkpoint of {address}")
        violations += [f"a secret in Redis, at {key}" for key in _secrets_in_redis(world, secrets)]
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
                         simulated_s=simulated, converged_s=converged, trace=trace, changes=changed,
                         calls_refused=len(refusals))
