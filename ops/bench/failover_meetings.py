"""failover-meetings: how long until a killed node's meetings are back.

Three ``huddle node --meetings --cluster`` processes (a signed fleet, lease
TTL 1 s, heartbeat 0.25 s) on an embedded Redis, against the reference
data-channel service (``huddle dataserver``). This process is one more
cluster member that hosts nothing placed but the application's address: it
starts N meeting trees (placed by the cluster), subscribes to them and tells
each ``meeting.joined`` with captions on; every tenth is a panelist with the
practice session on. Once every session is online and subscribed to
``transcription`` on the service, the node hosting the most meetings is
killed (SIGKILL). Until each of its meetings is back, the service pushes a
caption to every online socket every ``POLL_S``.

figures:
  p50_s, p99_s, max_s   kill -> the meeting is back, per meeting of the
                         killed node: the latest of a survivor's
                         ``lease-acquired`` of its tree, and for each of its
                         sessions the report "online" to the application
                         and the subscription to ``transcription`` on a
                         socket opened after the kill (the service's own
                         time of the request). Every time is the wall clock
                         of one host; the run ends once Redis holds each
                         tree's lease for a survivor and the service shows
                         each session settled on a new socket
  lease_p50_s, lease_p99_s   kill -> a survivor's ``lease-acquired`` of the
                         tree (the cluster's part of the failover)
  moved                  meetings the killed node hosted
  survivor_leases_lost   ``lease-lost`` events of any surviving node from
                         the kill until the last meeting is back (must be 0)
  lost                   captions pushed during the failover to sessions of
                         the surviving meetings (online and subscribed at the
                         push) that never reached the application
  redis_in_mb, redis_in_kb_per_s   bytes Redis read from its clients from
                         the kill until the last meeting is back (in all,
                         and per second of it)
  cpu_s_*                CPU seconds from the kill until the last meeting
                         was back: the surviving nodes, the service, Redis
                         and this process (it polls the service and hears
                         every caption): where the failover's time went on
                         a host all of them share
baseline (same run):
  detection_s            kill -> the first survivor's ``node-dead``: the
                         part of the failover that is waiting out the lease
  lease_ttl_s            the configured lease
goal: p99_s <= 2, survivor_leases_lost 0, lost 0.

With ``HUDDLE_BENCH_PROFILE`` set, the survivors are profiled from the
kill until the last meeting is back (``common.Profile``).

N is ``HUDDLE_BENCH_MEETINGS`` (default :data:`DEFAULT_MEETINGS`, what a
2-core host carries; see the README), 60 with ``--quick``. Every process is
started here and ended by its PID, also on error.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from clusterproc import percentile, workdir
from common import CpuShare, Profile, node_gc, parse_args, report

from actors.cluster import Cluster, ClusterConfig
from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION, token_address
from actors.sessions.meeting.actor import meeting_address, tree_address
from actors.sessions.meeting.host import host_address
from actors.runtime.node import Node
from bus.address import SYS_EVENTS
from bus.cluster.keys import ClusterKeys
from bus.embedded import EmbeddedRedis
from bus.envelope import Codec, Envelope
from bus.messages import Event
from bus.redis_transport import RedisTransport
from bus.signing import cluster_signer, write_new_cluster_key
from ops.dataserver.cli import raise_open_file_limit
from ops.dataserver.harness import DataServerProcess
from ops.demo.app import WebinarApp
from ops.demo.observed import AppLedger, ServiceView, caption_frame
from ops.demo.plan import SessionKey
from ops.processes import NodeProcess

DEFAULT_MEETINGS = 1000
QUICK_MEETINGS = 60
HEARTBEAT_S = 0.25
LEASE_TTL_S = 1.0
WORKERS = ("fm-0", "fm-1", "fm-2")
APP = "app:bench"
ACCESS_TOKEN = "bench-access-token"
PANELIST_EVERY = 10
STARTS_IN_FLIGHT = 64
POLL_S = 0.2
SETTLE_DEADLINE_S = 600.0
RECOVERY_DEADLINE_S = 120.0
#: After the last meeting is back: how long the captions pushed during the
#: failover may take to reach the application before they count as lost.
CAPTION_DEADLINE_S = 30.0

_PAUSE = threading.Event()
"""Never set: ``_PAUSE.wait(x)`` is a bounded poll interval."""


def worker_of_device(device_url: str) -> str:
    """The node id in a worker's default device URL (``huddle node
    --meetings`` registers with ``https://devices.huddle.local/<node-id>``)."""
    return device_url.rstrip("/").rsplit("/", 1)[-1]


def sessions_of(meetings: list[str]) -> set[SessionKey]:
    wanted = {(m, DEFAULT_SESSION) for m in meetings}
    wanted |= {(m, PRACTICE_SESSION) for i, m in enumerate(meetings) if i % PANELIST_EVERY == 0}
    return wanted


class Fleet:
    """The embedded Redis, the reference service, the workers and this
    process's member node (the application's address lives here)."""

    def __init__(self, tmp: Path) -> None:
        self.events: list[Event] = []
        self._events_lock = threading.Lock()
        self.ledger = AppLedger(clock=time.time)
        self.redis = EmbeddedRedis().start()
        self.ds: DataServerProcess | None = None
        self.workers: list[NodeProcess] = []
        self.driver: Node | None = None
        self.ds = DataServerProcess.start(workdir=tmp / "dataserver")
        token_file = tmp / "access-token"
        token_file.touch(mode=0o600)
        token_file.write_text(ACCESS_TOKEN + "\n")
        key_file = write_new_cluster_key(tmp / "cluster.key")
        extra = ("--cluster", "--heartbeat", str(HEARTBEAT_S), "--lease-ttl", str(LEASE_TTL_S), "--sweep", "1",
                 "--meetings-token-file", str(token_file), "--cluster-key-file", str(key_file), "--gc", node_gc())
        quiet = {"HUDDLE_LOG": os.environ.get("HUDDLE_LOG", "ERROR")}
        self.workers = [NodeProcess.start(w, self.redis.url, tmp, ["--meetings", *extra], env=quiet) for w in WORKERS]
        for worker in self.workers:
            worker.wait_ready()
        transport = RedisTransport(self.redis.url, name="bench-driver")
        self.driver = Node(transport, node_id="bench-driver", codec=Codec(signer=cluster_signer(key_file)))
        self.cluster = Cluster(self.driver, self.redis.url, config=ClusterConfig(
            capacity=0.0, heartbeat_interval=HEARTBEAT_S, lease_ttl=LEASE_TTL_S, sweep_interval=1.0))
        self.driver.start()
        if not self.cluster.start(30):
            raise RuntimeError("the benchmark process could not join the cluster")
        self.driver.handle_system_channel(SYS_EVENTS, self._on_event)
        self.driver.spawn(APP, WebinarApp, self.ledger)
        deadline = time.monotonic() + 30
        while self.driver.lookup(APP) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{APP} did not start")
            _PAUSE.wait(0.01)
        if not transport.wait_subscribed(30):
            raise RuntimeError("the benchmark process could not subscribe")

    def _on_event(self, envelope: Envelope) -> None:
        if isinstance(envelope.message, Event) and envelope.message.event in ("node-dead", "lease-lost",
                                                                              "lease-acquired", "started",
                                                                              "session-state", "token-stored"):
            with self._events_lock:
                self.events.append(envelope.message)

    def events_of(self, name: str) -> list[Event]:
        with self._events_lock:
            return [e for e in self.events if e.event == name]

    def service(self) -> tuple[ServiceView, dict[str, Any]]:
        assert self.ds is not None
        state = self.ds.state(detail="open")
        return ServiceView.of(state), state

    def start_meetings(self, meetings: list[str]) -> None:
        assert self.driver is not None and self.ds is not None
        pending: list[tuple[int, str, Any]] = []

        def drain() -> None:
            for i, meeting, future in pending:
                address = future.get(timeout=120)
                if address != meeting_address(meeting):
                    raise RuntimeError(f"{meeting} started at {address!r}")
                self.tell(meeting, mt.Subscribe(address=APP))
                panelist = i % PANELIST_EVERY == 0
                self.tell(meeting, mt.Joined(
                    locus_url=self.ds.locus_url(meeting), self_id=f"self-{i}",
                    datachannel_url=self.ds.datachannel_url(meeting),
                    practice_datachannel_url=self.ds.datachannel_url(meeting, practice=True), captions_on=True,
                    panelist=panelist, practice_session_on=panelist))
            pending.clear()

        for i, meeting in enumerate(meetings):
            host = host_address(WORKERS[i % len(WORKERS)])  # the cluster places the tree where it ranks first
            start = mt.StartMeeting(meeting_id=meeting, access_token=ACCESS_TOKEN)
            pending.append((i, meeting, self.driver.ask(host, start, timeout=120)))
            if len(pending) >= STARTS_IN_FLIGHT:
                drain()
        drain()

    def tell(self, meeting: str, message: Any) -> None:
        assert self.driver is not None
        self.driver.tell(meeting_address(meeting), message, sender=APP)

    def close(self) -> None:
        """End everything, newest first, each by its PID; one that fails to
        stop does not keep the others running."""
        steps: list[Any] = []
        if self.driver is not None:
            steps.append(self.driver.shutdown)
        steps += [w.stop for w in reversed(self.workers)]
        if self.ds is not None:
            steps.append(self.ds.stop)
        steps.append(self.redis.stop)
        for stop in steps:
            try:
                stop()
            except Exception:  # noqa: BLE001 - the next process is stopped anyway
                pass


def main() -> None:
    args = parse_args("failover-meetings", __doc__ or "")
    n = QUICK_MEETINGS if args.quick else int(os.environ.get("HUDDLE_BENCH_MEETINGS", DEFAULT_MEETINGS))
    raise_open_file_limit()
    load = os.getloadavg()[0]
    tmp = workdir("failover-meetings")
    fleet = None
    try:
        fleet = Fleet(tmp)
        result = run(fleet, n)
    finally:
        if fleet is not None:
            fleet.close()
    figures, baseline, why = result
    report(args, figures=figures, baseline=baseline,
           goal={"p99_s": 2.0, "survivor_leases_lost": 0, "lost": 0},
           notes={"survivor_leases_lost_by_reason": why, "nodes": len(WORKERS), "heartbeat_s": HEARTBEAT_S, "poll_s": POLL_S, "loadavg_1m_before": load})


def run(fleet: Fleet, n: int) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    assert fleet.ds is not None
    meetings = [f"fm-{i}" for i in range(n)]
    wanted = sessions_of(meetings)
    started = time.monotonic()
    fleet.start_meetings(meetings)
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while True:
        view, _state = fleet.service()
        settled = fleet.ledger.online(wanted) & view.settled(wanted)
        if len(settled) == len(wanted):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(settled)} of {len(wanted)} sessions settled within {SETTLE_DEADLINE_S:g}s")
        _PAUSE.wait(POLL_S)
    settle_s = time.monotonic() - started

    hosting = {m: worker_of_device(url) for (m, s), url in view.devices.items() if s == DEFAULT_SESSION}
    counts = Counter(hosting.values())
    victim = next(w for w in fleet.workers if w.node_id == max(WORKERS, key=lambda w: counts[w]))
    survivors = {w for w in WORKERS if w != victim.node_id} | {"bench-driver"}
    moved = sorted(m for m in meetings if hosting.get(m) == victim.node_id)
    keys = {k for k in wanted if k[0] in moved}
    staying = wanted - keys
    old_sockets = {sock for sockets in view.online.values() for sock in sockets}
    lease_keys = [ClusterKeys().lease(tree_address(m)) for m in moved]
    probe = redis.Redis.from_url(fleet.redis.url)

    cpu = CpuShare({"survivors": [w.pid for w in fleet.workers if w is not victim],
                    "dataserver": [fleet.ds.pid], "redis": [fleet.redis.pid or 0], "driver": [os.getpid()]})
    profiles = [Profile(w.pid, "failover-meetings", w.node_id).start() for w in fleet.workers if w is not victim]
    redis_in = int(probe.info("stats")["total_net_input_bytes"])
    killed_wall = time.time()
    fault_at = victim.kill()
    back_at: dict[SessionKey, float] = {}  # wall clock
    held_at: dict[str, float] = {}
    captions: list[tuple[str, frozenset[SessionKey]]] = []
    holders: dict[str, str] = {}  # meeting -> node holding its lease, as last read
    try:
        deadline = fault_at + RECOVERY_DEADLINE_S
        while len(back_at) < len(keys):
            now = time.monotonic()
            if now > deadline:
                missing = sorted(keys - set(back_at))
                detail = "; ".join(_describe(fleet, key, killed_wall, view, old_sockets, holders)
                                   for key in missing[:5])
                raise RuntimeError(f"{len(missing)} sessions of {len(moved)} meetings not back within "
                                   f"{RECOVERY_DEADLINE_S:g}s: {detail}; lease-lost since the kill: "
                                   f"{dict(Counter(f'{e.node}:{e.reason}' for e in fleet.events_of('lease-lost')))}")
            view, state = fleet.service()
            subscribed_at = _subscribed_at(state)
            # A caption to everything online; the surviving meetings' sessions
            # online and subscribed just before the push must all get it.
            caption_id = f"fo-{len(captions)}"
            expected = frozenset(view.settled(staying))
            fleet.ds.send(caption_frame(caption_id, "during the failover"))
            captions.append((caption_id, expected))
            holders = {m: _holder(v) for m, v in zip(moved, probe.mget(lease_keys), strict=True)}
            for m, holder in holders.items():
                if holder in survivors:
                    held_at.setdefault(m, time.time())  # if its lease-acquired event is missed
            for key in keys - set(back_at):
                online = fleet.ledger.reported_after(key, killed_wall, dc.ONLINE)
                if (online is not None and holders[key[0]] in survivors and key in view.settled([key])
                        and not set(view.online[key]) & old_sockets):
                    back_at[key] = max(online, subscribed_at.get(key, time.time()))
            _PAUSE.wait(POLL_S)
        recovered_at = time.monotonic()
        cpu_s = cpu.seconds()
        redis_in = int(probe.info("stats")["total_net_input_bytes"]) - redis_in
        for profile in profiles:
            profile.stop()
        acquired = {}
        for e in fleet.events_of("lease-acquired"):
            if e.node in survivors and e.ts >= killed_wall:
                acquired.setdefault(e.address, e.ts)
        lease_times = [acquired.get(tree_address(m), held_at[m]) - killed_wall for m in moved]
        per_meeting = [max([acquired.get(tree_address(m), held_at[m]),
                            *(t for k, t in back_at.items() if k[0] == m)]) - killed_wall for m in moved]
        leases_lost = [e for e in fleet.events_of("lease-lost") if e.node in survivors and e.ts >= killed_wall]
        # Captions: every expected one must arrive (no timing: a deadline only for never).
        expected_total = sum(len(e) for _c, e in captions)

        fleet.ledger.wait(lambda ledger: ledger.captions_missing(captions) == 0, CAPTION_DEADLINE_S)
        lost = fleet.ledger.captions_missing(captions)
    finally:
        for profile in profiles:
            profile.stop()
        probe.close()
    stages = _stages(fleet, moved, keys, survivors, killed_wall, fleet.service()[1])
    dead = [e for e in fleet.events_of("node-dead") if e.address == f"node:{victim.node_id}" and e.node in survivors]
    detection = min(e.ts for e in dead) - killed_wall if dead else float("nan")
    figures = {"p50_s": percentile(per_meeting, 0.5), "p99_s": percentile(per_meeting, 0.99),
               "max_s": max(per_meeting), "lease_p50_s": percentile(lease_times, 0.5),
               "lease_p99_s": percentile(lease_times, 0.99), "meetings": n, "moved": len(moved),
               "sessions_moved": len(keys), "survivor_leases_lost": len(leases_lost), "lost": lost,
               "captions_expected": expected_total, "settle_s": settle_s,
               "recovery_wall_s": recovered_at - fault_at, **{f"cpu_s_{k}": v for k, v in cpu_s.items()},
               "redis_in_mb": round(redis_in / 1e6, 2), "redis_in_kb_per_s": round(redis_in / 1e3 / (recovered_at - fault_at)),
               **stages}
    baseline = {"detection_s": detection, "lease_ttl_s": LEASE_TTL_S}
    return figures, baseline, dict(Counter(f"{e.node}:{e.reason}" for e in leases_lost))


def _stages(fleet: Fleet, moved: list[str], keys: set[SessionKey], survivors: set[str], since: float,
            state: dict[str, Any]) -> dict[str, float]:
    """Where the failover's time goes: p50 from the kill to each stage, over
    the moved meetings' trees and sessions (events from survivors, on their
    clocks; socket times are the service's, same host)."""
    def earliest(name: str, reason: str | None = None, by_node: bool = False) -> dict[str, Event]:
        """Per address (or per survivor), its first event ``name`` since the kill."""
        out: dict[str, Event] = {}
        for e in fleet.events_of(name):
            if e.node in survivors and e.ts >= since and (reason is None or e.reason == reason):
                out.setdefault(e.node if by_node else e.address, e)
        return out

    def p50(times: list[float]) -> float:
        return round(percentile([t - since for t in times], 0.5), 3)

    def at(events: dict[str, Event], addresses: list[str]) -> list[float]:
        return [events[a].ts for a in addresses if a in events]

    acquired, started, stored = earliest("lease-acquired"), earliest("started"), earliest("token-stored")
    trees = [tree_address(m) for m in moved]
    sessions = [dc.session_address(m, s) for m, s in keys]
    meetings = [meeting_address(m) for m in moved]
    tokens = [token_address(m) for m in moved]
    opened: dict[SessionKey, float] = {}
    for sock in state.get("sockets", ()):
        when = float(sock.get("opened_at") or 0.0)
        key = (sock["meeting"], sock["session"])
        if key in keys and when >= since:
            opened[key] = min(opened.get(key, when), when)
    subscribed = _subscribed_at(state)
    told: dict[str, list[float]] = {}  # what the application heard, first time per session and state
    for key in keys:
        seen: set[str] = set()
        for _seq, when, session_state in fleet.ledger.history.get(key, ()):
            if when >= since and session_state not in seen:
                seen.add(session_state)
                told.setdefault(session_state, []).append(when)
    per_node: dict[str, float] = {}
    for node in sorted(survivors):
        times = [acquired[a].ts for a in trees if a in acquired and acquired[a].node == node]
        if times:
            per_node[f"stage_trees_{node}"] = len(times)
            for q, v in (("p50", 0.5), ("p99", 0.99)):
                per_node[f"stage_tree_lease_{node}_{q}_s"] = round(percentile([t - since for t in times], v), 3)
    per_node.update({f"stage_dead_seen_{node}_s": round(e.ts - since, 3)
                     for node, e in earliest("node-dead", by_node=True).items()})
    return {**per_node, "stage_tree_lease_p50_s": p50(at(acquired, trees)),
            **{f"stage_told_{name}_p50_s": p50(times) for name, times in sorted(told.items())},
            "stage_tree_started_p50_s": p50(at(started, trees)),
            "stage_session_lease_p50_s": p50(at(acquired, sessions)),
            "stage_session_started_p50_s": p50(at(started, sessions)),
            "stage_token_started_p50_s": p50(at(started, tokens)),
            "stage_meeting_lease_p50_s": p50(at(acquired, meetings)),
            "stage_meeting_started_p50_s": p50(at(started, meetings)),
            "stage_token_stored_p50_s": p50(at(stored, tokens)),
            "stage_session_connecting_p50_s": p50(at(earliest("session-state", "connecting"), sessions)),
            "stage_socket_opened_p50_s": p50(list(opened.values())),
            "stage_session_online_p50_s": p50(at(earliest("session-state", "online"), sessions)),
            "stage_subscribed_p50_s": p50([t for k, t in subscribed.items() if k in keys])}


def _subscribed_at(state: dict[str, Any]) -> dict[SessionKey, float]:
    """Per session: when its open, online socket (the newest) asked for its
    subscriptions, on the service's clock."""
    out: dict[SessionKey, float] = {}
    for sock in state.get("sockets", ()):
        at = sock.get("subscribed_at")
        if sock.get("open") and sock.get("online") and at is not None and "transcription" in sock.get(
                "subscriptions", ()):
            key = (sock["meeting"], sock["session"])
            out[key] = max(out.get(key, 0.0), float(at))
    return out


def _describe(fleet: Fleet, key: SessionKey, since: float, view: ServiceView, old: set[str],
              holders: dict[str, str]) -> str:
    told = [state for _seq, at, state in fleet.ledger.history.get(key, ()) if at > since]
    sockets = view.online.get(key, ())
    return (f"{key[0]}/{key[1]}: lease held by {holders.get(key[0]) or 'nobody'}; told {', '.join(told) or 'nothing'} "
            f"since the kill; {len(sockets)} online socket(s) ({len(set(sockets) & old)} old), "
            f"{'subscribed' if key in view.subscribed else 'not subscribed'}")


def _holder(value: bytes | None) -> str:
    if not value:
        return ""
    return value.decode().partition(" ")[2]


if __name__ == "__main__":
    main()
