"""Meetings in a cluster, over real processes: two ``huddle node --meetings
--cluster`` workers, the reference data-channel service, and the test
process as a cluster member that hosts nothing placed (the application).

A meeting's tree is placed by the cluster; when its worker is killed with
SIGKILL, the survivor re-activates the tree from its checkpoints, its data
channel reconnects from the survivor's device and resubscribes, and a
locus event sent while the meeting was down is applied after it. Waits are
on the service's own state and on what the application was told, with
deadlines; nothing is timed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from actors.runtime.actor import ActorContext, HuddleActor
from actors.cluster import Cluster, ClusterConfig
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.token import DEFAULT_SESSION
from actors.sessions.meeting.host import host_address
from actors.runtime.node import Node
from bus.envelope import Envelope
from bus.messages import Message
from bus.redis_transport import RedisTransport
from ops.dataserver.harness import DataServerProcess
from tests.waiting import wait_until

from .conftest import DEADLINE, NodeProcesses, unique

pytestmark = pytest.mark.integration

TIMING = ("--heartbeat", "0.2", "--lease-ttl", "1.5", "--sweep", "1")
APP = "app:failover-test"


class Application(HuddleActor):
    """Records what the meetings tell it."""

    def __init__(self, ctx: ActorContext, heard: list[Message], changed: threading.Condition) -> None:
        super().__init__(ctx)
        self.heard = heard
        self.changed = changed

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        with self.changed:
            self.heard.append(message)
            self.changed.notify_all()


@pytest.fixture
def member(redis_url: str) -> Iterator[Node]:
    node = Node(RedisTransport(redis_url, name=unique("app")), node_id=unique("app"))
    Cluster(node, redis_url, config=ClusterConfig(capacity=0.0, heartbeat_interval=0.2, lease_ttl=1.5,
                                                  sweep_interval=1.0))
    node.start()
    assert node.ownership is not None and node.ownership.start(DEADLINE)  # type: ignore[attr-defined]
    try:
        yield node
    finally:
        node.shutdown()


def online_sockets(state: dict[str, Any], meeting: str) -> list[dict[str, Any]]:
    return [s for s in state["sockets"] if s["meeting"] == meeting and s["session"] == DEFAULT_SESSION
            and s["open"] and s["online"]]


def test_a_killed_workers_meeting_comes_back_on_the_survivor_and_applies_what_was_sent_meanwhile(
        node_procs: NodeProcesses, member: Node, dataserver: DataServerProcess, redis_client: redis.Redis,
        tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("worker-access-token\n")
    workers = [node_procs.start(node_id=unique("mw"), options=["--meetings", "--cluster", *TIMING,
                                                                "--meetings-token-file", str(token_file)])
               for _ in range(2)]
    heard: list[Message] = []
    changed = threading.Condition()
    member.spawn(APP, Application, heard, changed)
    wait_until(lambda: member.lookup(APP) is not None, "the application's lease")
    meeting = unique("fm")
    assert member.ask(host_address(workers[0].node_id), mt.StartMeeting(meeting_id=meeting, access_token="user"),
                      timeout=DEADLINE).get(timeout=DEADLINE + 1) == f"meeting:{meeting}"
    member.tell(f"meeting:{meeting}", mt.Subscribe(address=APP), sender=APP)
    member.tell(f"meeting:{meeting}", mt.Joined(locus_url=dataserver.locus_url(meeting), self_id="s",
                                                datachannel_url=dataserver.datachannel_url(meeting)), sender=APP)
    state = dataserver.wait_for(lambda s: len(online_sockets(s, meeting)) == 1, DEADLINE)
    device = online_sockets(state, meeting)[0]["device_url"]
    holder = next(w for w in workers if device.endswith("/" + w.node_id))
    survivor = next(w for w in workers if w is not holder)

    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.wait(DEADLINE)
    # Once Redis has seen the holder's connections close: a publish Redis
    # handles in the instant of the death itself is lost like anything in
    # flight to a dead process (bus/cluster/backlog.py, "The race").
    wait_until(lambda: redis_client.pubsub_numsub(f"meeting:{meeting}")[0][1] == 0,
               "Redis noticing the killed holder's connections")
    with changed:
        told_before = len(heard)
    # Sent while the meeting has no live owner: it waits in the meeting's backlog.
    member.tell(f"meeting:{meeting}", mt.CaptionsChanged(on=True), sender=APP)

    def back_on_survivor(s: dict[str, Any]) -> bool:
        sockets = online_sockets(s, meeting)
        return (len(sockets) == 1 and sockets[0]["device_url"].endswith("/" + survivor.node_id)
                and "transcription" in sockets[0]["subscriptions"])

    dataserver.wait_for(back_on_survivor, 4 * DEADLINE)
    # The application is still the meeting's subscriber (from its checkpoint)
    # and hears the session come back online.
    with changed:
        assert changed.wait_for(lambda: any(
            isinstance(m, mt.SessionState) and m.state == "online" for m in heard[told_before:]), DEADLINE)
