"""The transfer actor over real HTTP against the stand-in room service (S45).

The room service listens on a real port; the actor deletes through its real
aiohttp client on the node's I/O loop. The node's clock is manual, so "long
after the start" is hours of manual time, and retries are driven by it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.sessions.context import (
    JOB_ID_HEADER,
    PARTICIPANT_ID_HEADER,
    ROOM_ID_HEADER,
    JobContext,
    Secret,
)
from actors.sessions.contracts.transfer import (
    CleanupOutcome,
    PartyHungUp,
    TransferFinished,
    TransferMerged,
    transfer_address,
)
from actors.runtime.supervisor import ChildSpec
from actors.runtime.testkit import TestKit
from actors.sessions.transfer.actor import TransferActor
from actors.sessions.transfer.machine import RoomDeleteDone
from actors.sessions.transfer.rooms import HttpRoomService
from ops.roomservice import RoomServiceStandIn

pytestmark = pytest.mark.integration

ROOM_KEY = "rs-key-4e1d7b"
CALLER_ROOM = "room-caller-1"
TRANSFER = transfer_address("t-1")
MEETING = "meeting:call-1"
DEADLINE = 15.0


@pytest.fixture
def rooms() -> Iterator[RoomServiceStandIn]:
    with RoomServiceStandIn(ROOM_KEY, rooms=[CALLER_ROOM, "room-agent-1"]) as service:
        yield service


@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as kit:
        yield kit


def job(rooms: RoomServiceStandIn, credentials: str = ROOM_KEY) -> JobContext:
    """The context captured when the job started, connected as the agent."""
    return JobContext(job_id="job-1", room_id=CALLER_ROOM, room_service_url=rooms.url,
                      room_service_credentials=Secret(credentials)).connected("PA_agent")


def merge_and_hang_up_later(kit: TestKit, later_s: float = 6 * 3600) -> None:
    kit.inject_message(TRANSFER, TransferMerged(caller_id="PA_caller", agent_id="PA_agent"), sender=MEETING)
    kit.advance(later_s)
    kit.inject_message(TRANSFER, PartyHungUp("PA_caller"), sender=MEETING)
    kit.settle(DEADLINE)


def test_s45_a_late_hang_up_deletes_the_callers_room_with_the_captured_context(
    kit: TestKit, rooms: RoomServiceStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    meeting = kit.probe(MEETING)
    kit.spawn(TRANSFER, TransferActor, job(rooms))
    merge_and_hang_up_later(kit)
    finished, _ = meeting.expect_message(TransferFinished, timeout=DEADLINE)
    assert finished == TransferFinished("t-1", CALLER_ROOM, CleanupOutcome.ROOM_DELETED)
    state = rooms.state()
    assert state["rooms"] == ["room-agent-1"]
    assert state["refused"] == 0
    assert state["deletions"] == [{"room": CALLER_ROOM, "headers": {
        JOB_ID_HEADER: "job-1", ROOM_ID_HEADER: CALLER_ROOM, PARTICIPANT_ID_HEADER: "PA_agent"}}]
    assert not kit.events_named("crashed")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert ROOM_KEY not in caplog.text
    assert not [e for e in kit.events if ROOM_KEY in repr(e)]


def test_s45_wrong_credentials_are_refused_and_reported(kit: TestKit, rooms: RoomServiceStandIn) -> None:
    meeting = kit.probe(MEETING)
    kit.spawn(TRANSFER, TransferActor, job(rooms, credentials="not-the-key"))
    merge_and_hang_up_later(kit, later_s=60)
    finished, _ = meeting.expect_message(TransferFinished, timeout=DEADLINE)
    assert finished.outcome == CleanupOutcome.REFUSED
    kit.expect_event("room-delete-refused", TRANSFER)
    assert CALLER_ROOM in rooms.state()["rooms"]
    assert rooms.state()["refused"] == 1


def test_a_failing_room_service_is_retried_on_the_clock(kit: TestKit, rooms: RoomServiceStandIn) -> None:
    meeting = kit.probe(MEETING)
    rooms.fail_next(503, count=2)
    kit.spawn(TRANSFER, TransferActor, job(rooms))
    merge_and_hang_up_later(kit, later_s=1)
    kit.expect_event("room-delete-failed", TRANSFER)
    assert rooms.state()["requests"] == 1
    kit.advance(1)  # first retry after 1 s: 503 again
    kit.settle(DEADLINE)
    assert rooms.state()["requests"] == 2
    kit.advance(2)  # second retry after 2 s: deleted
    kit.settle(DEADLINE)
    finished, _ = meeting.expect_message(TransferFinished, timeout=DEADLINE)
    assert finished.outcome == CleanupOutcome.ROOM_DELETED
    assert [d["room"] for d in rooms.state()["deletions"]] == [CALLER_ROOM]


def test_s45_a_restarted_transfer_actor_still_cleans_up_with_its_start_context(
    kit: TestKit, rooms: RoomServiceStandIn
) -> None:
    meeting = kit.probe(MEETING)
    kit.supervise("transfer-sup:t-1", [ChildSpec(TRANSFER, TransferActor, (job(rooms),))])
    kit.inject_message(TRANSFER, TransferMerged(caller_id="PA_caller", agent_id="PA_agent"), sender=MEETING)
    kit.settle()
    kit.node.stop_actor(TRANSFER)  # its supervisor starts a new incarnation from the checkpoint
    kit.advance(5)
    kit.expect_event("restarted", TRANSFER)
    kit.advance(3600)
    kit.inject_message(TRANSFER, PartyHungUp("PA_agent"), sender=MEETING)
    kit.settle(DEADLINE)
    finished, _ = meeting.expect_message(TransferFinished, timeout=DEADLINE)
    assert finished.outcome == CleanupOutcome.ROOM_DELETED
    assert CALLER_ROOM not in rooms.state()["rooms"]


def test_outcomes_from_anyone_else_are_refused(kit: TestKit, rooms: RoomServiceStandIn) -> None:
    meeting = kit.probe(MEETING)
    kit.spawn(TRANSFER, TransferActor, job(rooms))
    kit.inject_message(TRANSFER, TransferMerged(caller_id="PA_caller", agent_id="PA_agent"), sender=MEETING)
    kit.inject_message(TRANSFER, RoomDeleteDone(1), sender="meeting:evil")
    kit.expect_event("bad-input", TRANSFER)
    meeting.expect_no_message(TransferFinished)
    assert CALLER_ROOM in rooms.state()["rooms"]


# -- the stand-in as a process ------------------------------------------------------------


@pytest.fixture
def roomservice_process(tmp_path: Path) -> Iterator[dict]:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "HUDDLE_ROOMSERVICE_KEY": ROOM_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "roomservice", "--room", CALLER_ROOM,
                             "--ready-file", str(ready)], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + DEADLINE
        while not ready.exists():
            try:  # waiting on the process is the poll interval, and catches an early exit
                code = proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                code = None
            assert code is None, f"huddle roomservice exited with {code} before it was ready"
            assert time.monotonic() < deadline, "huddle roomservice not ready in time"
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        yield info
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(DEADLINE)


def test_the_room_service_runs_as_a_process_and_deletes_over_http(roomservice_process: dict, kit: TestKit) -> None:
    url = roomservice_process["url"]
    job_context = JobContext(job_id="job-p", room_id=CALLER_ROOM, room_service_url=url,
                             room_service_credentials=Secret(ROOM_KEY))
    kit.node.io.submit(HttpRoomService.for_job(job_context).delete_room(CALLER_ROOM)).result(DEADLINE)
    with urllib.request.urlopen(f"{url}/control/state", timeout=DEADLINE) as response:
        state = json.load(response)
    assert state["rooms"] == []
    assert state["deletions"] == [{"room": CALLER_ROOM, "headers": {JOB_ID_HEADER: "job-p", ROOM_ID_HEADER: CALLER_ROOM}}]
