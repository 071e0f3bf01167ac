"""Two ``huddle node`` processes and the test process as a third node, on one
real redis-server.

Node A hosts an Echo at ``echo:1``, node B one at ``echo:2``; the test
process is a Node on its own RedisTransport (``local_node``) and may host
actors too. Everything crosses process boundaries through Redis.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
import redis

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.node import Node
from actors.runtime.sending import RemoteError
from bus.embedded import pause_process
from bus.envelope import Envelope
from bus.errors import AskTimeout, UnknownAddress
from bus.messages import Message, Ping, Pong, Stop
from tests.waiting import wait_until

from .conftest import DEADLINE, EventLog, NodeProcess, NodeProcesses, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes(node_procs: NodeProcesses, events: EventLog) -> tuple[NodeProcess, NodeProcess]:
    """A (``echo:1``) and B (``echo:2``), started together, both up.
    Depends on ``events`` so that the listener is there before they start."""
    a = node_procs.start("echo:1", wait=False)
    b = node_procs.start("echo:2", wait=False)
    node_procs.wait_ready(a)
    node_procs.wait_ready(b)
    return a, b


class Inbox:
    """What a :class:`Probe` received: ``(message, envelope)`` pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[Message, Envelope]] = []
        self._cond = threading.Condition()

    def add(self, message: Message, envelope: Envelope) -> None:
        with self._cond:
            self.items.append((message, envelope))
            self._cond.notify_all()

    def wait_count(self, count: int, timeout: float = DEADLINE) -> list[tuple[Message, Envelope]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), (
                f"{len(self.items)} of {count} messages within {timeout:g}s"
            )
            return list(self.items)


class Probe(HuddleActor):
    """Lives on the test node. A Ping from the test makes it ping ``target``
    itself (so the remote Echo sees the probe as the sender); every Pong it
    gets is recorded with its envelope."""

    def __init__(self, ctx: ActorContext, target: str, inbox: Inbox) -> None:
        super().__init__(ctx)
        self.target = target
        self.inbox = inbox

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Ping):
            self.tell(self.target, Ping(n=message.n, payload=message.payload))
            return None
        if isinstance(message, Pong):
            self.inbox.add(message, envelope)
            return None
        return super().on_message(message, envelope)


def test_ask_from_the_test_node_reaches_echo_on_each_process(nodes, local_node: Node) -> None:
    for address, n in (("echo:1", 1), ("echo:2", 2)):
        pong = local_node.ask(address, Ping(n=n, payload=b"\x00\xffhello"), timeout=DEADLINE).get(timeout=DEADLINE)
        assert pong == Pong(n=n, payload=b"\x00\xffhello")


def test_many_asks_in_flight_each_get_their_own_answer(nodes, local_node: Node) -> None:
    futures = [(i, local_node.ask(f"echo:{1 + i % 2}", Ping(n=i), timeout=DEADLINE)) for i in range(200)]
    assert [f.get(timeout=DEADLINE).n for _, f in futures] == [i for i, _ in futures]


def test_actor_on_the_test_node_tells_remote_echo_and_gets_the_pong(nodes, local_node: Node) -> None:
    inbox = Inbox()
    probe = unique("probe:p")
    local_node.spawn(probe, Probe, "echo:1", inbox)
    # Its channel must be confirmed before a remote Pong can reach it.
    assert local_node.transport.wait_subscribed(DEADLINE)

    for n in range(5):
        local_node.tell(probe, Ping(n=n, payload=b"x" * n))

    received = inbox.wait_count(5)
    assert [m for m, _ in received] == [Pong(n=n, payload=b"x" * n) for n in range(5)]
    assert {env.sender for _, env in received} == {"echo:1"}
    assert all(env.reply_to is None for _, env in received)  # a tell back, not a reply


def test_actor_to_actor_between_the_two_node_processes(nodes, local_node: Node, events: EventLog) -> None:
    a, _ = nodes
    # echo:2 (on B) answers a Ping by telling a Pong to the sender, echo:1
    # (on A): B -> A directly. An Echo does not handle Pongs, so A turns it
    # into an "unhandled-kind" dead letter that names the sender.
    local_node.tell("echo:2", Ping(n=9), sender="echo:1")
    event = events.wait_for(event="dead-letter", node=a.node_id, address="echo:1", reason="unhandled-kind")
    assert event.detail["kind"] == "sys.pong"
    assert event.detail["sender"] == "echo:2"


def test_tell_of_an_unhandled_kind_is_a_dead_letter(nodes, local_node: Node, events: EventLog) -> None:
    a, _ = nodes
    local_node.tell("echo:1", Pong(n=1))
    event = events.wait_for(event="dead-letter", node=a.node_id, reason="unhandled-kind")
    assert event.address == "echo:1"
    assert event.detail["kind"] == "sys.pong"
    # The Echo keeps running.
    assert local_node.ask("echo:1", Ping(n=2), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=2)


def test_ask_of_an_unhandled_kind_fails_with_the_remote_error(nodes, local_node: Node, events: EventLog) -> None:
    a, _ = nodes
    future = local_node.ask("echo:1", Pong(n=1), timeout=DEADLINE)
    with pytest.raises(RemoteError) as caught:
        future.get(timeout=DEADLINE)
    assert caught.value.error_type == "UnhandledMessage"
    events.wait_for(event="dead-letter", node=a.node_id, address="echo:1", reason="unhandled-kind")


@pytest.mark.parametrize("garbage", [b"\xc1 not msgpack", b"", b"\x92\x01"], ids=["reserved-byte", "empty", "truncated"])
def test_malformed_bytes_are_a_dead_letter_and_echo_still_answers(
    nodes, local_node: Node, events: EventLog, redis_client: redis.Redis, garbage: bytes
) -> None:
    a, _ = nodes
    # Straight onto the Echo's channel, bypassing every encoder.
    assert redis_client.publish("echo:1", garbage) == 1
    event = events.wait_for(event="dead-letter", node=a.node_id, reason="not-msgpack")
    assert event.address == "echo:1"
    assert local_node.ask("echo:1", Ping(n=3), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=3)


def test_sys_stop_stops_the_remote_echo(nodes, local_node: Node, events: EventLog,
                                         redis_client: redis.Redis) -> None:
    a, _ = nodes
    assert local_node.ask("echo:1", Stop(), timeout=DEADLINE).get(timeout=DEADLINE) is True
    events.wait_for(event="stopped", node=a.node_id, address="echo:1")
    # Node A gave up the channel: the server says nobody listens on it.
    wait_until(lambda: redis_client.pubsub_numsub("echo:1")[0][1] == 0, "echo:1 has no subscriber")

    # Nobody hosts echo:1 any more: the publish reaches no subscriber, so the
    # ask fails at once (not at its deadline) and the sender's node records
    # a dead letter.
    with pytest.raises(UnknownAddress):
        local_node.ask("echo:1", Ping(n=4), timeout=DEADLINE).get(timeout=DEADLINE)
    events.wait_for(event="dead-letter", node=local_node.node_id, address="echo:1", reason="no-subscriber")
    # The other process is not affected.
    assert local_node.ask("echo:2", Ping(n=5), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=5)


def test_ask_to_a_paused_node_times_out_and_arrives_expired(nodes, local_node: Node, events: EventLog) -> None:
    a, _ = nodes
    # A paused process still holds its subscription, so the ask is delivered
    # to its socket but nobody answers: the ask fails at its deadline.
    pause_process(a.pid)  # every thread stopped, not just the stop queued
    try:
        future = local_node.ask("echo:1", Ping(n=6), timeout=1.0)
        deadline_at_latest = time.time() + 1.0  # the envelope's deadline is before this
        with pytest.raises(AskTimeout):
            future.get(timeout=DEADLINE)
        # Resume only once the envelope's deadline has passed for sure.
        wait_until(lambda: time.time() > deadline_at_latest, "the ask's deadline passed")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # Resumed after the deadline: node A refuses the stale ask as expired
    # (and its refusal reaches the asker as a late reply), then answers anew.
    events.wait_for(event="dead-letter", node=a.node_id, address="echo:1", reason="expired")
    events.wait_for(event="dead-letter", node=local_node.node_id, reason="late-reply")
    assert local_node.ask("echo:1", Ping(n=7), timeout=DEADLINE).get(timeout=DEADLINE) == Pong(n=7)


def test_node_processes_publish_started_and_stopped(node_procs: NodeProcesses, events: EventLog) -> None:
    node = node_procs.start("echo:1", "echo:7")
    for address in ("echo:1", "echo:7"):
        started = events.wait_for(event="started", node=node.node_id, address=address)
        assert started.detail == {"incarnation": 1, "class": "Echo"}
        assert started.ts > 0

    assert node.stop() == 0  # SIGTERM: a graceful shutdown
    for address in ("echo:1", "echo:7"):
        stopped = events.wait_for(event="stopped", node=node.node_id, address=address)
        assert stopped.reason == ""  # a stop, not a crash
    assert events.undecodable == 0
