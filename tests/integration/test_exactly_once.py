"""Exactly once across owner changes, over real ``huddle node --cluster``
processes on a real redis-server.

A counter acknowledges an addition once its checkpoint holding it is
stored; the msg ids the counter handled are stored in the same step. Then
the counter changes owner (its node is killed, stopped gracefully, or the
only node is killed and a new process started), and the very same envelope
is sent again, as a publisher's retry after a reconnect sends it: the new
owner drops it as a ``duplicate`` dead letter, and the addition is applied
once. Nothing waits by sleeping: every wait is on an event on
``sys:events``, a reply or an acknowledgement, with a deadline reached only
when something is broken; every process is ended by its PID at teardown.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.builtin import CounterAck, CounterAdd, CounterGet
from actors.cluster import Cluster, ClusterConfig
from actors.runtime.node import Node
from bus.envelope import Envelope
from bus.messages import Event, Message
from bus.redis_transport import RedisTransport
from tests.waiting import wait_until

from .conftest import DEADLINE, EventLog, NodeProcess, NodeProcesses, listening_events, unique

pytestmark = pytest.mark.integration

HEARTBEAT, LEASE_TTL = 0.2, 1.5


class Acks(HuddleActor):
    """Where counters acknowledge durable additions (on the test's node)."""

    def __init__(self, ctx: ActorContext, acks: list[CounterAck], got: threading.Event) -> None:
        super().__init__(ctx)
        self.acks = acks
        self.got = got

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, CounterAck):
            self.acks.append(message)
            self.got.set()
            return None
        return super().on_message(message, envelope)


class Run:
    """Node processes in one namespace; the test process is a member that
    hosts nothing placed (it places, sends and asks)."""

    def __init__(self, procs: NodeProcesses, redis_url: str, events: EventLog, namespace: str) -> None:
        self.procs = procs
        self.redis_url = redis_url
        self.events = events
        self.namespace = namespace
        self.client = Node(RedisTransport(redis_url, name=unique("client")), node_id=unique("client"),
                           namespace=namespace)
        self.cluster = Cluster(self.client, redis_url, config=ClusterConfig(
            heartbeat_interval=HEARTBEAT, lease_ttl=LEASE_TTL, sweep_interval=1.0))
        self.client.start()
        assert self.cluster.start(DEADLINE)

    def node(self) -> NodeProcess:
        options = ["--namespace", self.namespace, "--actors", "counter", "--heartbeat", str(HEARTBEAT),
                   "--lease-ttl", str(LEASE_TTL), "--sweep", "1"]
        return self.procs.start(options=options, wait=False, redis_url=self.redis_url)

    def started_elsewhere(self, address: str, not_on: str) -> Event:
        return self.events.wait_match(lambda e: e.event == "started" and e.address == address and e.node != not_on,
                                      f"{address} started on a node other than {not_on}")

    def dropped(self, env: Envelope, node: str) -> Event:
        return self.events.wait_match(
            lambda e: (e.event == "dead-letter" and e.reason == "duplicate" and e.address == env.to
                       and e.node == node and e.detail.get("detail") == env.msg_id),
            f"the copy of {env.msg_id} dropped as a duplicate on {node}")

    def close(self) -> None:
        self.client.shutdown()


@pytest.fixture
def run(node_procs: NodeProcesses, redis_url: str) -> Iterator[Run]:
    namespace = f"{unique('eo')}:"
    with listening_events(redis_url, namespace) as events:
        r = Run(node_procs, redis_url, events, namespace)
        try:
            yield r
        finally:
            node_procs.stop_all()
            r.close()


@pytest.mark.parametrize("change", ["kill", "term", "restart"])
def test_a_copy_of_an_acknowledged_addition_after_the_owner_changed_is_dropped(run: Run, change: str) -> None:
    """``kill``: kill -9 the owner, the other node takes over from the
    checkpoint; ``term``: SIGTERM (the owner hands off, then leaves);
    ``restart``: the only node is killed and a new process takes over."""
    nodes = [run.node() for _ in range(1 if change == "restart" else 2)]
    for node in nodes:
        run.procs.wait_ready(node)
    acks: list[CounterAck] = []
    got = threading.Event()
    acks_address = f"acks:{unique('t')}"
    run.client.spawn(acks_address, Acks, acks, got)
    wait_until(lambda: run.client.lookup(acks_address) is not None, "the acknowledgements' actor started")
    address = f"counter:{unique('x')}"
    owner_id = run.cluster.ensure(address).get(timeout=DEADLINE)
    owner = next(n for n in nodes if n.node_id == owner_id)

    env = Envelope(to=address, message=CounterAdd(n=1, tag="once", ack_to=acks_address))
    run.client.send_envelope(env)
    assert got.wait(DEADLINE), "the addition was not acknowledged"

    if change == "term":
        assert owner.stop() == 0, owner.output()
    else:
        os.kill(owner.pid, signal.SIGKILL)
        owner.proc.wait(DEADLINE)
        if change == "restart":
            run.procs.wait_ready(run.node())
    new_owner = run.started_elsewhere(address, owner_id).node

    run.client.send_envelope(env)  # the same envelope (msg id) again
    run.dropped(env, new_owner)
    value = run.client.ask(address, CounterGet(), timeout=DEADLINE).get(timeout=DEADLINE + 1)
    assert value["node"] == new_owner
    assert value["tags"] == ["once"] and value["count"] == 1
    assert [a.tag for a in acks] == ["once"]
