"""``huddle demo``: a webinar, end to end, on one machine.

What runs
---------
This process starts an embedded redis-server, the reference data-channel
service (``huddle dataserver``, a process), a reference media receiver (on
a thread here, over real sockets) and two worker nodes (``huddle node
--meetings --cluster`` processes, with the node's access token in a file
only this user can read). It then joins the cluster as one more node that
hosts nothing placed (capacity 0), the *driver*: it hosts the
application's address (``app:webinar``, every meeting's subscriber, which
also hears what the agent's audio output played), the incoming call, and
the agent's voices.

Each participant's client is one meeting tree (meeting, token, two
data-channel sessions; the agent's also an audio output), started through
a worker's meeting host and **placed** by the cluster on the worker that
ranks first for it. The driver plays the meeting service: it tells each
meeting what "locus" reported (joined into the lobby, admitted, promoted,
captions on, left) and never touches a data channel itself. Everything
the demo claims it reads either from what the meetings told the
application over the bus, or from what the reference service saw on the
wire (which worker's device registered a socket, which subscriptions it
holds), or from the cluster's leases.

The phases (:data:`PHASES`) and what each checks are in their methods
below; the summary (:mod:`ops.demo.report`) says: sessions settled,
recoveries and their times, refusals, messages lost, subscriptions lost.

Definitions
-----------
* A session is **settled** when the application was told it is online and
  the service holds exactly one open, online socket for it, subscribed to
  ``transcription``.
* **Messages lost**: at quiet moments the service pushes one caption to
  every online socket (a *caption round*); every session the service wrote
  it to must hand it to the application exactly once. A round is void (and
  pushed again) if the set of online sockets moved during the push or the
  service's count of sockets written differs; outages are never counted as
  losses because no round is pushed during one. Locus events are checked
  by their effects: each phase waits for what the events it sent must
  cause, and one event is sent to a meeting while its worker is dead (it
  must wait in the meeting's backlog and apply after the recovery).
* **Subscriptions lost**: after the service restart (which forgets every
  subscription), the sessions that wanted ``transcription`` and do not hold
  it again on an online socket.
* **Recovery time** of a session: from the fault (the kill, the restart)
  until the application was told it is online again *and* the service
  showed it subscribed (polled every 0.2 s, so times are that coarse); of
  a meeting after the kill: its slowest session, counted only once the
  survivor holds the meeting tree's lease and the sessions are on sockets
  opened after the kill. The cluster notices a dead worker when its lease
  TTL (:data:`LEASE_TTL_S`) runs out, so that is the floor.

Every process is ended by its PID at the end, also on an error, Ctrl-C or
SIGTERM (held off while the processes are being stopped).
"""

from __future__ import annotations

import _thread
import contextlib
import faulthandler
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.runtime.actor import HuddleActor
from actors.sessions.audio.feeder import FrameFeeder
from actors.sessions.audio.machine import OutputConfig
from actors.cluster import Cluster, ClusterConfig
from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import (
    ClearBuffer,
    PausePlayback,
    PlaybackFinished,
    PlaybackStarted,
    ResumePlayback,
    output_address,
)
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from actors.sessions.meeting.actor import meeting_address, tree_address
from actors.sessions.meeting.host import host_address
from actors.runtime.node import Node
from bus.address import SYS_EVENTS, channel_for
from bus.embedded import EmbeddedRedis
from bus.embedded_cluster import INSTALL_HINT, EmbeddedRedisCluster, find_redis7
from bus.sharded import transport_for
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError, HuddleError
from bus.interrupts import held
from bus.messages import Event
from bus.signing import cluster_signer, write_new_cluster_key
from ops.dataserver.harness import DataServerError, DataServerProcess
from ops.demo.app import IncomingCall, WebinarApp
from ops.demo.observed import AppLedger, CaptionRound, RoundResult, ServiceView, caption_frame, recovery_times
from ops.demo.plan import SessionKey, WebinarPlan
from ops.processes import NodeProcess
from ops.demo.report import Check, Recovery, Summary, replay_pattern
from ops.demo.view import FAILED, NOT_RUN, OK, PENDING, RUNNING, DemoStatus, PhaseRow, View, make_view
from ops.mediareceiver import ReceiverHarness

__all__ = ["FAULTS", "PHASES", "DemoOptions", "Webinar", "default_attendees", "run"]

log = logging.getLogger("huddle.demo")

APP = "app:webinar"
#: The user's access token of every demo client (the reference service
#: only wants a non-empty bearer token).
ACCESS_TOKEN = "demo-user-access-token"
AGENT_OUTPUT = "voice"
POLL_S = 0.2
#: Cluster timings of every node: a worker silent for LEASE_TTL_S is dead.
HEARTBEAT_S = 0.25
LEASE_TTL_S = 1.5
STARTS_IN_FLIGHT = 64
#: The longest one part of the run may take to stop (each worker already
#: SIGKILLs itself past its own stop deadline, which is shorter).
CLOSE_STEP_DEADLINE_S = 20.0
#: How long a wait's count may stand still before the demo says what it waits for.
STUCK_NOTE_S = 10.0
CAPTION_GRACE_S = 0.5
"""After a caption round is complete, how long to keep listening for
duplicates before counting."""

PHASES: tuple[tuple[str, str], ...] = (
    ("start", "embedded Redis, reference data-channel service, media receiver, 2 worker nodes"),
    ("lobby", "every attendee joins and waits in the lobby"),
    ("admit", "everyone is admitted: tokens fetched, data channels online"),
    ("practice", "panelists are promoted into the practice session"),
    ("captions", "captions on: transcription subscriptions go live and captions flow"),
    ("incoming call", "an incoming call reaches for a data channel it does not own"),
    ("bad input", "malformed bytes to a meeting: a dead letter, and the meeting carries on"),
    ("agent", "an agent speaks: a false interruption, then a real one"),
    ("node kill", "kill -9 one worker: its meetings recover on the other"),
    ("service restart", "the data-channel service drops and restarts: everyone reconnects and resubscribes"),
    ("leave", "everyone leaves: every socket closes"),
)

FAULTS: dict[str, str] = {
    "datachannel-refused": "the service refuses one attendee's data-channel socket with close code 4403, so that "
    "session gives up for good and the webinar cannot settle (the demo must then fail)",
}


ATTENDEES_PER_CORE = 200


def default_attendees() -> int:
    """Scaled to the machine: 200 participant sessions per core, counting at
    most 4 cores (400 on 2 cores)."""
    return ATTENDEES_PER_CORE * min(os.cpu_count() or 2, 4)


@dataclass(frozen=True)
class DemoOptions:
    attendees: int = field(default_factory=default_attendees)
    #: ``None``: the live view when stdout is a terminal.
    live: bool | None = None
    #: One of :data:`FAULTS`, or empty.
    fault: str = ""
    #: Run the bus and the lease store on a local Redis Cluster (3 primaries,
    #: a replica each: Redis 7 must be installed) instead of one redis-server.
    redis_cluster: bool = False
    #: Seconds the phases may take in all (None: no limit). Past it the demo
    #: writes every thread's stack to stderr, says which phase it was in and
    #: stops as after SIGTERM (exit code 130, every process stopped).
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.fault and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r} (known: {', '.join(FAULTS)})")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"deadline must be positive, not {self.deadline!r}")


class PhaseAborted(HuddleError):
    """A phase could not go on (the rest of the demo would be meaningless)."""


_PAUSE = threading.Event()
"""Never set: ``_PAUSE.wait(x)`` is a bounded pause."""


def cluster_failover_missing() -> str | None:
    """Why a killed worker's meetings cannot be re-activated on the other
    (``None``: they can: the runtime has the cluster layer)."""
    if importlib.util.find_spec("actors.cluster") is None:
        return "cluster failover not available"
    return None


def worker_of_device(device_url: str) -> str:
    """The node id in a worker's default device URL (``huddle node
    --meetings`` registers with ``https://devices.huddle.local/<node-id>``)."""
    return device_url.rstrip("/").rsplit("/", 1)[-1]


class Webinar:
    """One run of the demo. :meth:`run` plays every phase and returns the
    :class:`~ops.demo.report.Summary`; :meth:`close` ends every process."""

    def __init__(self, options: DemoOptions, view: View, workdir: Path) -> None:
        self.options = options
        self.view = view
        self.workdir = workdir
        self.plan = WebinarPlan(options.attendees)
        self.ledger = AppLedger()
        self.summary = Summary(refusals_expected=2)
        self.settle_timeout = 30.0 + 0.05 * options.attendees
        self.service = ServiceView.empty()
        self.redis: EmbeddedRedis | EmbeddedRedisCluster | None = None
        self.ds: DataServerProcess | None = None
        self.receiver: ReceiverHarness | None = None
        self.workers: list[NodeProcess] = []
        self.driver: Node | None = None
        self.cluster: Cluster | None = None
        #: Attendees promoted to panelist so far (one more while its worker is down).
        self.panelists: set[str] = set(self.plan.panelists)
        self._phase = ""
        self._captions = 0
        self._restarts = 0

    # -- the run -----------------------------------------------------------------

    def run(self) -> Summary:
        aborted = False
        for name, _what in PHASES:
            row = self.view.status.phase(name)
            if aborted:
                row.state = NOT_RUN
                self.summary.not_run.append(name)
                continue
            self._phase = name
            row.state, row.started = RUNNING, time.monotonic()
            self.view.phase_started(row)
            failed_before = len(self.summary.failed)
            try:
                getattr(self, "phase_" + name.replace(" ", "_"))()
            except Exception as exc:  # noqa: BLE001 - reported as a failed check, then the demo stops
                self.check(f"{name} ran to its end", False, f"{type(exc).__name__}: {exc}")
                aborted = True
            row.ended = time.monotonic()
            row.state = OK if len(self.summary.failed) == failed_before else FAILED
            self.view.phase_ended(row)
        return self.summary

    @property
    def phase(self) -> str:
        """The phase running now (empty before the first)."""
        return self._phase

    def check(self, claim: str, ok: bool, detail: str = "") -> bool:
        check = Check(self._phase, claim, ok, detail)
        self.summary.checks.append(check)
        self.view.check(check)
        return ok

    # -- phases -------------------------------------------------------------------

    def phase_start(self) -> None:
        # Each start and keeping its handle for close() are one step: an
        # interrupt comes before or after it, never between the two.
        with held():
            self.redis = self._start_redis()
        with held():
            self.ds = DataServerProcess.start(workdir=self.workdir / "dataserver")
        with held():
            self.receiver = ReceiverHarness().__enter__()
        # The workers' own access token, for the meetings the cluster starts
        # on them (placement, failover): a file only this user can read.
        token_file = self.workdir / "access-token"
        token_file.touch(mode=0o600)
        token_file.write_text(ACCESS_TOKEN + "\n")
        # The fleet signs its envelopes with a key made for this run.
        key_file = write_new_cluster_key(self.workdir / "cluster.key")
        extra = ("--cluster", "--heartbeat", str(HEARTBEAT_S), "--lease-ttl", str(LEASE_TTL_S), "--sweep", "1",
                 "--meetings-token-file", str(token_file), "--cluster-key-file", str(key_file))
        quiet = {"HUDDLE_LOG": os.environ.get("HUDDLE_LOG", "ERROR")}
        for w in self.plan.workers:
            with held():
                self.workers.append(NodeProcess.start(w, self.redis.url, self.workdir, ["--meetings", *extra],
                                                      env=quiet))
        for worker in self.workers:
            worker.wait_ready()
        # The driver is a cluster member that hosts nothing placed: its sends
        # to a meeting whose node died wait in that meeting's backlog, and
        # the meetings' outputs find the application's address by its lease.
        transport = transport_for(self.redis.url, name="demo-driver")
        self.driver = Node(transport, node_id="demo-driver", codec=Codec(signer=cluster_signer(key_file)))
        self.cluster = Cluster(self.driver, self.redis.url, config=ClusterConfig(
            capacity=0.0, heartbeat_interval=HEARTBEAT_S, lease_ttl=LEASE_TTL_S, sweep_interval=1.0))
        self.driver.start()
        if not self.cluster.start(10):
            raise PhaseAborted("the driver could not join the cluster")
        self.driver.handle_system_channel(SYS_EVENTS, self._on_event)
        self._spawn(APP, WebinarApp, self.ledger)
        if not transport.wait_subscribed(10):
            raise PhaseAborted("the driver could not subscribe on the bus")
        pids = ", ".join([f"redis {self._redis_pids()}", f"service {self.ds.pid}",
                          *(f"{w.node_id} {w.pid}" for w in self.workers)])
        what = "a Redis Cluster of 3 primaries and 3 replicas" if self.options.redis_cluster else "embedded Redis"
        self.check(f"{what}, reference service, media receiver and a cluster of 2 worker nodes up", True,
                   f"pids {pids}")
        self._figures()

    def _start_redis(self) -> EmbeddedRedis | EmbeddedRedisCluster:
        """One redis-server; with ``--redis-cluster``, a local Redis Cluster."""
        if not self.options.redis_cluster:
            return EmbeddedRedis().start()
        binary = find_redis7()
        if binary is None:
            raise PhaseAborted(f"--redis-cluster needs Redis 7 or later ({INSTALL_HINT})")
        return EmbeddedRedisCluster(binary=binary).start()

    def _redis_pids(self) -> str:
        redis = self.redis
        if isinstance(redis, EmbeddedRedisCluster):
            return " ".join(str(pid) for pid in redis.pids)
        return str(redis.pid) if redis is not None else "-"

    def phase_lobby(self) -> None:
        ds, plan = self._ds(), self.plan
        self._start_meetings()
        for meeting in plan.attendee_ids:
            self._tell(meeting, mt.Joined(
                locus_url=ds.locus_url(meeting), self_id=f"self-{meeting}", datachannel_url=ds.datachannel_url(meeting),
                practice_datachannel_url=ds.datachannel_url(meeting, practice=True), in_lobby=True))
        attendees = plan.attendee_ids
        waited = self.until("attendees in the lobby", lambda: len(self.ledger.in_phase(attendees, "lobby")),
                            len(attendees))
        lobby = self.ledger.in_phase(attendees, "lobby")
        self.check(f"{len(attendees)} attendees wait in the lobby", waited, f"{len(lobby)} reported lobby")
        self._poll_service()
        opened = sum(self.service.open_sockets.get(m, 0) for m in attendees)
        registered = sum(n for key, n in self.service.registers.items() if key.split("/")[0] in set(attendees))
        self.check("no data channel is opened from the lobby", opened == 0 and registered == 0,
                   f"{registered} register calls, {opened} sockets")

    def phase_admit(self) -> None:
        ds, plan = self._ds(), self.plan
        if self.options.fault == "datachannel-refused":
            target = plan.fault_target
            # Every attempt, wherever the meeting runs (a failover starts it afresh).
            ds.fault(refuse_next={"meeting": target, "session": DEFAULT_SESSION, "code": 4403, "count": 1000})
            self.view.note(f"fault injected: the service will refuse {target}'s data-channel socket with 4403")
        for meeting in plan.attendee_ids:
            self._tell(meeting, mt.Admitted())
        agent = plan.agent_meeting
        self._tell(agent, mt.Joined(locus_url=ds.locus_url(agent), self_id=f"self-{agent}",
                                    datachannel_url=ds.datachannel_url(agent)))
        keys = plan.default_sessions()
        settled = self.until("default sessions online", lambda: len(self._online(keys)), len(keys),
                             hopeless=self._failed(keys))
        online = self._online(keys)
        self.check(f"{len(plan.meetings)} participants admitted, {len(keys)} data channels online (one socket each)",
                   settled, f"{len(online)} online")
        late = [m for m in plan.attendee_ids
                if self.ledger.announced_before_online(m, DEFAULT_SESSION, "admitted") is False]
        self.check("admission announced at once, before each data channel came online (S23)", not late,
                   f"{len(late)} not" if late else "")
        issued = self.service.counters.get("tokens_issued", 0)
        self.check("each client fetched its data-channel token from the service", issued >= len(keys),
                   f"{issued} tokens issued")
        self.summary.sessions_wanted = len(keys)
        self.summary.sessions_settled = len(online)
        hosting = self._hosting()
        spread = {w: sum(1 for m in plan.meetings if hosting.get(m) == w) for w in plan.workers}
        self.check("the cluster placed the meetings on both workers", all(spread.values()),
                   ", ".join(f"{w}: {n}" for w, n in spread.items()))

    def phase_practice(self) -> None:
        plan = self.plan
        for meeting in plan.attendee_ids:
            self._tell(meeting, mt.PracticeSessionChanged(on=True))
        for meeting in sorted(plan.panelists):
            self._tell(meeting, mt.RolesChanged(panelist=True))
        keys = self._practice_sessions()
        settled = self.until("practice sessions online", lambda: len(self._online(keys)), len(keys),
                             hopeless=self._failed(keys))
        self.check(f"{len(keys)} panelists promoted: practice sessions online (S27)", settled,
                   f"{len(self._online(keys))} online")
        others = [k for k in self.service.online if k[1] != DEFAULT_SESSION and k[0] not in self.panelists]
        self.check("attendees who are not panelists hold no practice session", not others,
                   f"{len(others)} do" if others else "")
        defaults = plan.default_sessions()
        self.check("the default sessions kept their sockets", len(self._online(defaults)) == len(defaults))

    def phase_captions(self) -> None:
        plan = self.plan
        for meeting in plan.meetings:
            self._tell(meeting, mt.CaptionsChanged(on=True))
        keys = self._wanted()
        settled = self.until("sessions subscribed to transcription", lambda: len(self._settled(keys)), len(keys),
                             hopeless=self._failed(keys))
        self.check(f"captions on: {len(keys)} transcription subscriptions live on the service", settled,
                   f"{len(self._settled(keys))} subscribed")
        self.summary.sessions_wanted = len(keys)
        self.summary.sessions_settled = len(self._settled(keys))
        self.caption_round("captions flow")

    def phase_incoming_call(self) -> None:
        plan = self.plan
        owner = plan.attendee_ids[1]
        key = (owner, DEFAULT_SESSION)
        target = dc.session_address(owner, DEFAULT_SESSION)
        self._poll_service()
        before = self.service.online.get(key, ())
        self._spawn(meeting_address(plan.incoming_call), IncomingCall, target, self.ledger)
        refused = self.ledger.wait(lambda led: len(led.refusals) >= 2 and len(
            led.events_of("refused-not-owner", address=target)) >= 2, self.settle_timeout)
        events = self.ledger.events_of("refused-not-owner", address=target)
        refusals = list(self.ledger.refusals)
        self.summary.refusals = len(refusals)
        self.check("the call's claim and disconnect were both refused: 2 refused-not-owner events, 2 refusals back",
                   refused and all(r.error_type == "NotOwner" for r in refusals),
                   ", ".join(sorted({f"{r.command}: {r.reason}" for r in refusals})))
        self.check("refusals published by the owner's worker",
                   bool(events) and all(e.node == self._hosting().get(owner) for e in events),
                   ", ".join(sorted({e.node for e in events})))
        self._poll_service()
        after = self.service.online.get(key, ())
        self.check(f"{owner}'s data channel untouched (same socket, online, subscribed)",
                   bool(before) and after == before and key in self.service.subscribed,
                   f"socket {before[0] if before else '-'}")
        self.caption_round("the owner still gets captions")

    def phase_bad_input(self) -> None:
        driver, plan = self._driver(), self.plan
        meeting = plan.attendee_ids[-1]
        address = meeting_address(meeting)
        junk = b"\xc1 not an envelope"
        try:  # the reason the fleet's codec gives (signed fleet: the signature check comes first)
            driver.codec.decode(junk)
            reason = ""
        except DecodeError as exc:
            reason = exc.reason
        driver.transport.publish(channel_for(address), junk)
        dead = self.ledger.wait(lambda led: bool(led.events_of("dead-letter", reason=reason, address=address)),
                                self.settle_timeout)
        events = self.ledger.events_of("dead-letter", reason=reason, address=address)
        self.check(f"malformed bytes became a dead letter with its reason ({reason})",
                   dead and events[0].node == self._hosting().get(meeting),
                   f"published by {events[0].node}" if events else "")
        status = driver.ask(dc.session_address(meeting, DEFAULT_SESSION), dc.GetStatus(), timeout=10).get(timeout=11)
        self.check(f"{meeting} carries on (its data channel answers: {status.state})", status.state == dc.ONLINE)

    def phase_agent(self) -> None:
        driver, receiver, plan = self._driver(), self._receiver(), self.plan
        output = output_address(plan.agent_meeting, AGENT_OUTPUT)
        agent = agent_address(plan.agent_meeting)
        config = OutputConfig()
        frame_s = config.frame_ms / 1000

        def seqs(segment: str) -> list[int]:
            return [f[1] for s in receiver.streams() for f in s.frames if f[0] == segment]

        def clears() -> int:
            return sum(s.controls.count("clear") for s in receiver.streams())

        def speak(segment: str, frames: int) -> None:
            # One voice (a TTS stream) per reply, at its own address: it
            # sends the frames and gets the flow control; what played is
            # reported to the application.
            pcm = [_tone(config, segment, i) for i in range(frames)]
            self._spawn(f"{agent}/{segment}", FrameFeeder, output, sample_rate=config.sample_rate,
                        channels=config.channels, credit=config.capacity_frames, segments=[(segment, pcm)])
            if not self.ledger.wait(lambda led: bool(_of(led.playback_of(segment), PlaybackStarted)), 15):
                raise PhaseAborted(f"{segment} never started playing")

        def finished(segment: str) -> PlaybackFinished:
            if not self.ledger.wait(lambda led: bool(_of(led.playback_of(segment), PlaybackFinished)), 30):
                raise PhaseAborted(f"{segment} never finished")
            return _of(self.ledger.playback_of(segment), PlaybackFinished)[0]

        # A false interruption: the user coughs, the agent pauses, then resumes.
        speak("reply-1", 50)
        _PAUSE.wait(0.3)
        driver.tell(output, PausePlayback(), sender=agent)
        _PAUSE.wait(0.2)
        driver.tell(output, ResumePlayback(), sender=agent)
        first = finished("reply-1")
        receiver.wait_for(lambda _s: 49 in seqs("reply-1"), 10)
        ok, replayed = replay_pattern(seqs("reply-1"), 50)
        started = _of(self.ledger.playback_of("reply-1"), PlaybackStarted)
        self.check("false interruption: paused, resumed, the kept audio played first, then the rest (S39, S42)",
                   ok and not first.interrupted and abs(first.position - 50 * frame_s) < 1e-6 and len(started) == 1,
                   f"{len(seqs('reply-1'))} frames heard, {replayed} again after the resume, "
                   f"position {first.position:.2f} s, {len(started)} playback_started")
        # A real interruption: the user speaks over the agent.
        clears_before = clears()
        speak("reply-2", 50)
        _PAUSE.wait(0.3)
        driver.tell(output, PausePlayback(), sender=agent)
        driver.tell(output, ClearBuffer(segment="reply-2"), sender=agent)
        second = finished("reply-2")
        receiver.wait_for(lambda _s: clears() > clears_before, 10)
        # Frames played before the cut may still be on their way to the
        # receiver (a busy machine): wait for what the output says it played.
        with contextlib.suppress(AssertionError):  # judged below: what was heard by then
            receiver.wait_for(lambda _s: len(seqs("reply-2")) * frame_s >= second.position - 1e-6, 10)
        heard = seqs("reply-2")
        driver.tell(output, ResumePlayback(), sender=agent)
        self.check("real interruption: the reply was cut, finished interrupted at the position actually played "
                   "(S40)", second.interrupted and heard == list(range(len(heard))) and 0 < len(heard) < 50
                   and second.position <= len(heard) * frame_s + 1e-6,
                   f"{len(heard)} of 50 frames heard, position {second.position:.2f} s")
        # The next reply is not touched by the interruption before it.
        speak("reply-3", 25)
        third = finished("reply-3")
        receiver.wait_for(lambda _s: len(seqs("reply-3")) >= 25, 10)
        self.check("the next reply played whole, once", seqs("reply-3") == list(range(25)) and not third.interrupted
                   and abs(third.position - 25 * frame_s) < 1e-6, f"position {third.position:.2f} s")
        for segment in ("reply-1", "reply-2", "reply-3"):
            driver.stop_actor(f"{agent}/{segment}", release=True)

    def phase_node_kill(self) -> None:
        plan = self.plan
        missing = cluster_failover_missing()
        if missing is not None:
            self.summary.recoveries.append(Recovery(f"node kill ({plan.victim})", skipped=missing))
            self.check("a killed worker's meetings recover on the other", False, f"skipped: {missing}")
            return
        victim = next(w for w in self.workers if w.node_id == plan.victim)
        survivor = plan.workers[0]
        self._poll_service()
        hosting = self._hosting()
        meetings = sorted(m for m in plan.meetings if hosting.get(m) == plan.victim)
        wanted = self._wanted()
        others = {k: self.service.online.get(k, ()) for k in wanted if k[0] not in meetings}
        old_sockets = {sock for sockets in self.service.online.values() for sock in sockets}
        # One of its attendees is promoted while its meeting is down: the
        # locus event must wait in the backlog and apply after the recovery.
        settled = self._settled(wanted)
        promoted = next((m for m in meetings if m in plan.attendee_ids and m not in self.panelists
                         and (m, DEFAULT_SESSION) in settled), None)
        events_before = self.ledger.event_totals()
        fault_at = victim.kill()
        self.view.note(f"{victim.node_id} (pid {victim.pid}) killed with SIGKILL; it hosted {len(meetings)} meetings")
        if promoted is not None:
            self._tell(promoted, mt.RolesChanged(panelist=True))
            self.panelists.add(promoted)
        keys = {k for k in self._wanted() if k[0] in meetings}
        online_at: dict[SessionKey, float | None] = dict.fromkeys(keys)
        subscribed_at: dict[SessionKey, float | None] = dict.fromkeys(keys)

        def back() -> int:
            now = time.monotonic()
            for key in keys:
                if online_at[key] is None:
                    online_at[key] = self.ledger.reported_after(key, fault_at, dc.ONLINE)
                if subscribed_at[key] is None and key in self.service.settled([key]) \
                        and not set(self.service.online[key]) & old_sockets \
                        and self._cluster().owner(tree_address(key[0])) == survivor:
                    subscribed_at[key] = now
            return sum(1 for k in keys if online_at[k] is not None and subscribed_at[k] is not None)

        def not_back() -> list[str]:
            owner = self._cluster().owner
            return [f"{m}/{s} (tree on {owner(tree_address(m)) or 'nobody'}): {self._describe((m, s), fault_at)}"
                    for m, s in sorted(k for k in keys if online_at[k] is None or subscribed_at[k] is None)]

        recovered = self.until(f"sessions of {victim.node_id}'s meetings back on {survivor}", back, len(keys),
                               timeout=60 + self.settle_timeout, hopeless=self._failed(keys), missing=not_back)
        for line in not_back()[:5]:
            self.view.note(f"not back: {line}")
        self.view.note("cluster since the kill: " + self._cluster_events(since=events_before))
        per_session = recovery_times(fault_at, online_at, subscribed_at)
        per_meeting: list[float | None] = []
        for meeting in meetings:
            times = [t for k, t in per_session.items() if k[0] == meeting]
            per_meeting.append(None if None in times else max(times, default=None))  # type: ignore[type-var]
        recovery = Recovery(f"node kill ({plan.victim} -> {survivor})", per_meeting, unit="meetings")
        self.summary.recoveries.append(recovery)
        self.check(f"the killed worker's meetings recovered on {survivor} (its lease), data channels online on new "
                   f"sockets and subscribed: "
                   f"{recovery.line()}", recovered and bool(meetings) and not recovery.missing)
        if promoted is not None:
            key = (promoted, PRACTICE_SESSION)
            self.check(f"a locus event sent while {promoted} was down was applied after the recovery "
                       "(its practice session is online)", key in self._settled([key]))
        self._poll_service()
        moved = [k for k, sockets in others.items() if self.service.online.get(k, ()) != sockets]
        self.check(f"the sessions of {survivor}'s own meetings kept their sockets", not moved,
                   f"{len(moved)} moved" if moved else f"{len(others)} untouched")
        self.summary.sessions_settled = len(self._settled(self._wanted()))
        self.summary.sessions_wanted = len(self._wanted())
        self.caption_round("captions flow after the failover")

    def phase_service_restart(self) -> None:
        ds = self._ds()
        keys = self._wanted()
        subscribed_at: dict[SessionKey, float | None] = dict.fromkeys(keys)
        fault_at = time.monotonic()
        ds.restart()
        self._restarts += 1
        self.view.note(f"reference service killed and restarted (new pid {ds.pid}) "
                       f"{time.monotonic() - fault_at:.1f} s after the kill")

        def back() -> int:
            now = time.monotonic()
            for key in self.service.settled(keys):
                if subscribed_at[key] is None:
                    subscribed_at[key] = now
            return sum(1 for k in keys if subscribed_at[k] is not None and self.ledger.online_again(k, fault_at))

        def not_back() -> list[str]:
            return [f"{m}/{s}: {self._describe((m, s), fault_at)}" for m, s in sorted(keys)
                    if subscribed_at[(m, s)] is None or not self.ledger.online_again((m, s), fault_at)]

        recovered = self.until("sessions back and resubscribed", back, len(keys), timeout=60 + self.settle_timeout,
                               hopeless=self._failed(keys), missing=not_back)
        times = recovery_times(fault_at, {k: self.ledger.online_again(k, fault_at) for k in keys}, subscribed_at)
        recovery = Recovery("reference service restart", list(times.values()))
        self.summary.recoveries.append(recovery)
        self.check(f"every session reconnected: {recovery.line()}", recovered and not recovery.missing)
        lost = keys - self.service.subscribed
        self.summary.subscriptions_wanted = len(keys)
        self.summary.subscriptions_lost = len(lost)
        self.check("every session that wanted transcription holds it again on the service", not lost,
                   f"{len(lost)} lost" if lost else f"{len(keys)} held")
        self.summary.sessions_settled = len(self._settled(keys))
        self.caption_round("captions flow after the restart")

    def phase_leave(self) -> None:
        plan = self.plan
        for meeting in plan.meetings:
            self._tell(meeting, mt.Left(reason="the webinar ended"))
        meetings = plan.meetings

        def gone() -> int:
            open_by_meeting = self.service.open_sockets
            return sum(1 for m in self.ledger.in_phase(meetings, "left") if not open_by_meeting.get(m))

        left = self.until("participants gone", gone, len(meetings))
        self.check(f"{len(meetings)} participants left; the service holds no socket of theirs", left,
                   f"{gone()} gone")

    # -- caption rounds ---------------------------------------------------------------

    def caption_round(self, claim: str) -> RoundResult | None:
        """Push one caption to every online socket and count what reached
        the application (see the module docstring)."""
        ds = self._ds()
        for _attempt in range(3):
            self._captions += 1
            caption_id = f"c{self._captions}"
            before = ServiceView.of(ds.state(detail="open"))
            reached = ds.send(caption_frame(caption_id, f"caption {self._captions}: {claim}"))
            after = ServiceView.of(ds.state(detail="open"))
            sockets = sum(len(v) for v in before.online.values())
            round_ = CaptionRound(caption_id, frozenset(before.online), reached)
            if not round_.expected:
                self.check(f"{claim}: a caption can be pushed", False, "no session is online")
                return None
            if before.online != after.online or reached != sockets or not round_.valid:
                self.view.note(f"caption round {caption_id} void (sockets moved during the push); pushing again")
                continue
            expected = round_.expected
            self.until(f"caption {caption_id} received", lambda c=caption_id, e=expected: sum(
                1 for k in self.ledger.caption_counts(c) if k in e), len(expected), service=False)
            _PAUSE.wait(CAPTION_GRACE_S)
            result = round_.result(self.ledger.caption_counts(caption_id))
            self.summary.captions_expected += result.expected
            self.summary.messages_lost += len(result.lost)
            self.summary.duplicates += result.duplicates + result.strays
            self.check(f"{claim}: caption {caption_id} reached all {result.expected} sessions exactly once",
                       result.exact, f"{result.delivered} delivered, {len(result.lost)} lost, "
                       f"{result.duplicates} duplicates, {result.strays} strays")
            self._figures()
            return result
        self.check(f"{claim}: a caption round could be pushed while nothing moved", False, "3 rounds void")
        return None

    # -- waiting and observing --------------------------------------------------------

    def until(self, label: str, done: Callable[[], int], total: int, *, timeout: float | None = None,
              service: bool = True, hopeless: Callable[[], set[SessionKey]] | None = None,
              missing: Callable[[], list[str]] | None = None) -> bool:
        """Poll (the service every :data:`POLL_S`, when ``service``) until
        ``done() >= total``. False past ``timeout``, or as soon as the rest
        can never come: the sessions ``hopeless()`` names (given up for
        good) make up everything still missing. Once the count has not
        moved for :data:`STUCK_NOTE_S`, what ``missing()`` says is noted
        (what the run is waiting for, while it still waits)."""
        deadline = time.monotonic() + (self.settle_timeout if timeout is None else timeout)
        last_count, moved_at, noted = -1, time.monotonic(), False
        while True:
            if service:
                self._poll_service()
            count = done()
            if count != last_count:
                last_count, moved_at, noted = count, time.monotonic(), False
            elif missing is not None and not noted and time.monotonic() - moved_at > STUCK_NOTE_S:
                noted = True
                for line in missing()[:5]:
                    self.view.note(f"still waiting for {line}")
            self.view.progress(label, count, total)
            self._figures()
            if count >= total:
                return True
            lost = hopeless() if hopeless is not None else set()
            if lost and count + len(lost) >= total:
                names = ", ".join(f"{m}/{s}" for m, s in sorted(lost)[:3]) + (" ..." if len(lost) > 3 else "")
                self.view.note(f"stopped waiting for {label}: {len(lost)} session(s) gave up for good ({names})")
                return False
            if time.monotonic() > deadline:
                self.view.note(f"stopped waiting for {label}: {count} of {total} after the deadline")
                return False
            _PAUSE.wait(POLL_S if service else POLL_S / 4)

    def _failed(self, keys: Iterable[SessionKey]) -> Callable[[], set[SessionKey]]:
        """Of ``keys``, those that can no longer come: a session that gave
        up (``failed``: refused by the service, it will not try again), and
        the practice session of a meeting whose default session did (a
        practice session connects only once the default is online)."""
        wanted = frozenset(keys)
        defaults = frozenset((m, DEFAULT_SESSION) for m, _s in wanted)

        def hopeless() -> set[SessionKey]:
            failed = self.ledger.in_state(wanted | defaults, (dc.FAILED,))
            meetings = {m for m, s in failed if s == DEFAULT_SESSION}
            return {k for k in wanted if k in failed or k[0] in meetings}

        return hopeless

    def _practice_sessions(self) -> frozenset[SessionKey]:
        return frozenset((m, PRACTICE_SESSION) for m in self.panelists)

    def _wanted(self) -> frozenset[SessionKey]:
        """Every session that must be online and subscribed once captions
        are on: each participant's default session, each panelist's
        practice session."""
        return self.plan.default_sessions() | self._practice_sessions()

    def _hosting(self) -> dict[str, str]:
        """Meeting -> the worker whose device its default session registered
        with (what the service saw on the wire)."""
        return {m: worker_of_device(url) for (m, session), url in self.service.devices.items()
                if session == DEFAULT_SESSION}

    def _cluster_events(self, since: dict[str, int]) -> str:
        """How many of the cluster's events of interest were published since
        ``since`` (a snapshot of :meth:`AppLedger.event_totals`)."""
        now = self.ledger.event_totals()
        names = ("adopted", "lease-acquired", "lease-lost", "lease-refused", "activation-failed", "escalated",
                 "checkpoint-refused")
        return ", ".join(f"{name} {now.get(name, 0) - since.get(name, 0)}" for name in names)

    def _describe(self, key: SessionKey, since: float) -> str:
        """What the application and the service last said about ``key``."""
        told = [state for _seq, at, state in self.ledger.history.get(key, ()) if at > since]
        sockets = self.service.online.get(key, ())
        device = worker_of_device(self.service.devices.get(key, "")) if sockets else "-"
        return (f"told {', '.join(told) or 'nothing'} since; {len(sockets)} online socket(s) on the service "
                f"(from {device}), {'subscribed' if key in self.service.subscribed else 'not subscribed'}")

    def _spawn(self, address: str, actor_class: type[HuddleActor], *args: Any, **kwargs: Any) -> None:
        """Spawn on the driver and wait until it runs (in a cluster, a spawn
        first claims the address's lease)."""
        driver = self._driver()
        driver.spawn(address, actor_class, *args, **kwargs)
        deadline = time.monotonic() + 10
        while driver.lookup(address) is None:
            if time.monotonic() > deadline:
                raise PhaseAborted(f"{address} did not start on the driver")
            _PAUSE.wait(0.01)

    def _online(self, keys: Iterable[SessionKey]) -> set[SessionKey]:
        """Online as the application was told, on exactly one socket as the service sees it."""
        keys = list(keys)
        return self.ledger.online(keys) & {k for k in keys if len(self.service.online.get(k, ())) == 1}

    def _settled(self, keys: Iterable[SessionKey]) -> set[SessionKey]:
        keys = list(keys)
        return self.ledger.online(keys) & self.service.settled(keys)

    def _poll_service(self) -> None:
        try:
            self.service = ServiceView.of(self._ds().state(detail="open"))
        except (DataServerError, OSError):
            pass  # down (being restarted): keep the last view

    def _figures(self) -> None:
        ledger, service, summary = self.ledger, self.service, self.summary
        workers = ", ".join(f"{w.node_id} pid {w.pid}" + ("" if w.alive else " (killed)") for w in self.workers)
        self.view.figures({
            "processes": f"redis pid {self._redis_pids() if self.redis else '-'}, service pid "
                         f"{self.ds.pid if self.ds else '-'} (restarted {self._restarts}x), {workers}",
            "sessions online": f"{ledger.count_in_state(dc.ONLINE)} told to the app, "
                               f"{sum(len(v) for v in service.online.values())} sockets online on the service",
            "subscriptions": f"{len(service.subscribed)} transcription subscriptions live",
            "captions": f"{summary.captions_expected - summary.messages_lost} relayed exactly once, "
                        f"{summary.messages_lost} lost, {summary.duplicates} duplicates",
            "refusals": f"{summary.refusals}",
            "recoveries": "; ".join(r.line() for r in summary.recoveries) or "-",
        })

    def _on_event(self, envelope: Envelope) -> None:
        if isinstance(envelope.message, Event):
            self.ledger.record_event(envelope.message)

    # -- meetings -------------------------------------------------------------------

    def _start_meetings(self) -> None:
        driver, plan = self._driver(), self.plan
        pending: list[tuple[str, Any]] = []

        def drain() -> None:
            for meeting, future in pending:
                address = future.get(timeout=70)
                if address != meeting_address(meeting):
                    raise PhaseAborted(f"{meeting} started at {address!r}")
                self._tell(meeting, mt.Subscribe(address=APP))
            pending.clear()

        for i, meeting in enumerate(plan.meetings):
            agent = {}
            if meeting == plan.agent_meeting:
                agent = {"audio_output": AGENT_OUTPUT, "audio_report_to": APP, "media_url": self._receiver().url}
            start = mt.StartMeeting(meeting_id=meeting, access_token=ACCESS_TOKEN, **agent)
            # Any worker's host: the cluster places the tree where it ranks first.
            host = host_address(plan.workers[i % len(plan.workers)])
            pending.append((meeting, driver.ask(host, start, timeout=60)))
            if len(pending) >= STARTS_IN_FLIGHT:
                drain()
            self.view.progress("meeting trees started", i + 1, len(plan.meetings))
        drain()

    def _tell(self, meeting: str, message: Any) -> None:
        self._driver().tell(meeting_address(meeting), message, sender=APP)

    # -- parts ----------------------------------------------------------------------

    def _ds(self) -> DataServerProcess:
        if self.ds is None:
            raise PhaseAborted("the reference service is not running")
        return self.ds

    def _driver(self) -> Node:
        if self.driver is None:
            raise PhaseAborted("the driver node is not running")
        return self.driver

    def _cluster(self) -> Cluster:
        if self.cluster is None:
            raise PhaseAborted("the driver is not in the cluster")
        return self.cluster

    def _receiver(self) -> ReceiverHarness:
        if self.receiver is None:
            raise PhaseAborted("the media receiver is not running")
        return self.receiver

    def close(self) -> None:
        """End everything this run started, newest first, each by its PID;
        one that fails to stop does not keep the others running."""
        steps: list[Callable[[], Any]] = []
        if self.driver is not None:
            steps.append(self.driver.shutdown)
        steps += [w.stop for w in reversed(self.workers)]
        if self.receiver is not None:
            steps.append(self.receiver.close)
        if self.ds is not None:
            steps.append(self.ds.stop)
        if self.redis is not None:
            steps.append(self.redis.stop)
        for step in steps:
            name = getattr(step, "__qualname__", repr(step))
            t0 = time.monotonic()
            if not _bounded(step, CLOSE_STEP_DEADLINE_S):
                self.view.note(f"closing: {name} did not return within {CLOSE_STEP_DEADLINE_S:g} s; going on")
            log.debug("closing: %s took %.2f s", name, time.monotonic() - t0)


def _bounded(step: Callable[[], Any], seconds: float) -> bool:
    """Run ``step`` (its exceptions ignored), waiting at most ``seconds``:
    one part that hangs while stopping never keeps the next from being
    stopped by its PID. False if it did not return in time."""
    done = threading.Event()

    def call() -> None:
        try:
            step()
        except Exception:  # noqa: BLE001 - closing goes on whatever one part raises
            log.debug("closing: %r raised", step, exc_info=True)
        finally:
            done.set()

    threading.Thread(target=call, name="demo-close-step", daemon=True).start()
    return done.wait(seconds)


def agent_address(meeting: str) -> str:
    """Where the agent of ``meeting`` speaks from (one address per reply below it)."""
    return f"agent:{meeting}"


def _of(messages: list[Any], kind: type) -> list[Any]:
    return [m for m in messages if isinstance(m, kind)]


def _tone(config: OutputConfig, segment: str, seq: int) -> bytes:
    """One frame of a quiet square wave (its pitch says which reply it is)."""
    samples = config.sample_rate * config.frame_ms // 1000 * config.channels
    period = {"reply-1": 96, "reply-2": 72, "reply-3": 120}.get(segment, 80)
    start = seq * samples
    out = bytearray()
    for i in range(start, start + samples):
        out += (2000 if (i // (period // 2)) % 2 else -2000).to_bytes(2, "little", signed=True)
    return bytes(out)


def run(options: DemoOptions) -> int:
    """Run the demo; returns the exit code (0 only when every check held;
    130 after Ctrl-C or SIGTERM, once everything is stopped)."""
    # Crashes and refusals are on purpose here; their log lines would only be noise.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
    plan = WebinarPlan(options.attendees)
    title = (f"huddle demo: webinar of {plan.attendees} attendees, {len(plan.panelists)} panelists, "
             f"1 agent, {len(plan.workers)} workers")
    status = DemoStatus(title=title, phases=[PhaseRow(name, what) for name, what in PHASES])
    workdir = Path(tempfile.mkdtemp(prefix="huddle-demo-"))
    interrupts = _Interrupts()
    interrupted = False
    view = make_view(status, live=options.live)
    webinar = Webinar(options, view, workdir)
    watchdog = _Watchdog(options.deadline, webinar, view)
    try:
        interrupts.install()
        watchdog.start()
        webinar.run()
    except KeyboardInterrupt:
        interrupted = True
        for row in status.phases:
            if row.state in (PENDING, RUNNING):
                row.state = NOT_RUN
                webinar.summary.not_run.append(row.name)
    finally:
        watchdog.cancel()
        interrupts.hold()  # the stop itself is never cut short
        try:
            stopping = time.monotonic()
            webinar.close()
            view.note(f"every process stopped by its PID in {time.monotonic() - stopping:.1f} s")
        finally:
            view.close()
            interrupts.restore()
            shutil.rmtree(workdir, ignore_errors=True)
    summary = webinar.summary
    print("\n".join(summary.lines()), flush=True)
    if interrupted:
        why = f" (the {options.deadline:g} s deadline passed)" if watchdog.fired else ""
        print(f"interrupted{why}: every process was stopped", flush=True)
        return 130
    return summary.exit_code


class _Interrupts:
    """Ctrl-C and SIGTERM end the run (as ``KeyboardInterrupt``, so every
    process is stopped on the way out); while the processes are being
    stopped, both are held off. Only on the main thread (elsewhere signals
    are not ours to handle)."""

    def __init__(self) -> None:
        self._saved: dict[int, Any] = {}
        self._main = threading.current_thread() is threading.main_thread()

    def install(self) -> None:
        if self._main:
            self._saved.setdefault(signal.SIGTERM, signal.signal(signal.SIGTERM, _interrupt))

    def hold(self) -> None:
        if self._main:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved.setdefault(signum, signal.getsignal(signum))
                signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()


class _Watchdog:
    """The ``--deadline``: past it, every thread's stack goes to stderr (what
    the run was waiting for is the whole point) and the main thread is
    interrupted as by SIGTERM, so every process is still stopped."""

    def __init__(self, deadline: float | None, webinar: Webinar, view: View) -> None:
        self._deadline = deadline
        self._webinar = webinar
        self._view = view
        self._timer: threading.Timer | None = None
        self.fired = False

    def start(self) -> None:
        if self._deadline is not None:
            self._timer = threading.Timer(self._deadline, self._fire)
            self._timer.name, self._timer.daemon = "demo-deadline", True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        self.fired = True
        self._view.note(f"deadline of {self._deadline:g} s passed in phase {self._webinar.phase or '-'}; "
                        "every thread's stack follows on stderr")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        _thread.interrupt_main(signal.SIGTERM)  # our SIGTERM handler, on the main thread


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
