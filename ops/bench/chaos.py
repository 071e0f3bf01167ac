"""chaos: a bounded soak that breaks things at random and checks invariants.

Three ``huddle node --cluster --fencing-log`` processes host 100 placed
Counter actors on an embedded Redis with persistence on (AOF, fsync every
write: a restarted Redis keeps its data, as a production one would). The
benchmark process places them and sends a steady load of additions, each
with a unique tag and ``ack_to``: a counter acknowledges an addition only
once its checkpoint holding it is stored (under its lease).

First the load runs undisturbed (the baseline), then, every few seconds,
one of: kill -9 a node (a fresh one replaces it), pause one (SIGSTOP) past
its lease and resume it, stop one gracefully (SIGTERM: hand-off, leave; a
fresh one replaces it), restart Redis, kill -9 Redis and start it again.
At the end everything is resumed, the load stops, and the final state of
every counter is read.

Invariants (each breach is listed in ``violations``):
  lost                   acknowledged additions missing from the final state
  duplicated             additions applied twice (a tag twice in a counter):
                         a copy of an addition (a publisher's retry after a
                         reconnect, a routed retry, a forward) that reached
                         the counter after it changed owner must be dropped
                         by the msg ids that travel with its checkpoints
  double_owner_accepted  accepted checkpoint writes that went back in epoch
                         (the fencing log, in Redis's order), and lease
                         announcements on sys:nodes that went back in epoch:
                         a former owner's write or claim accepted after a
                         newer owner's
figures: the above (goal 0, 0, 0), acks_per_s under chaos, the actions,
and duplicates_dropped (copies the owners dropped by msg id: the retries
the run provoked, each one a duplicate had it been applied).
baseline: acks_per_s and the same invariants over the undisturbed phase.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
from typing import Any

from clusterproc import BenchMember, EventTap, Timing, cluster_node, workdir
from common import parse_args, report

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.builtin import CounterAck, CounterAdd, CounterGet
from bus.address import SYS_NODES, channel_for
from bus.cluster.messages import LeaseChange
from bus.embedded import EmbeddedRedis
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError, HuddleError
from bus.messages import Message
from bus.redis_transport import RedisTransport
from ops.invariants import additions, fencing
from ops.processes import NodeProcess

TIMING = Timing(heartbeat=0.25, lease_ttl=1.5)
NAMESPACE = "chaos:"
ACKS = "chaosack:bench"
RATE = 100.0
"""Additions per second."""
ACTIONS = ("kill", "pause", "term", "redis-restart", "redis-kill")


class AckLog:
    """Acknowledgements, by tag (thread-safe)."""

    def __init__(self) -> None:
        self.acks: dict[str, CounterAck] = {}
        self.times: list[float] = []
        self.lock = threading.Lock()

    def add(self, ack: CounterAck) -> None:
        with self.lock:
            if ack.tag not in self.acks:
                self.acks[ack.tag] = ack
                self.times.append(time.monotonic())

    def count_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t in self.times if start <= t < end)

    def last(self) -> float:
        with self.lock:
            return self.times[-1] if self.times else 0.0


class Acks(HuddleActor):
    """Where the counters acknowledge durable additions."""

    def __init__(self, ctx: ActorContext, log: AckLog) -> None:
        super().__init__(ctx)
        self.log = log

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, CounterAck):
            self.log.add(message)
            return None
        return super().on_message(message, envelope)


class LeaseOrder:
    """Lease announcements on sys:nodes, in Redis's order: epochs of an
    address must never go back. A claim's announcement carries no epoch
    (the claiming node encodes and signs it before the script draws one):
    those are counted, and the accepted writes of the fencing log order the
    claims' epochs instead."""

    def __init__(self, redis_url: str) -> None:
        self.codec = Codec()
        self.newest: dict[str, int] = {}
        self.regressions: list[str] = []
        self.unnumbered = 0
        self.transport = RedisTransport(redis_url, name="chaos-leases")
        self.transport.set_receiver(self._receive)
        self.transport.start()
        self.transport.subscribe(channel_for(SYS_NODES, NAMESPACE))
        if not self.transport.wait_subscribed(10):
            raise RuntimeError("could not listen on sys:nodes")

    def _receive(self, _channel: str, data: bytes) -> None:
        try:
            message = self.codec.decode(data).message
        except DecodeError:
            return
        if isinstance(message, LeaseChange) and message.change in ("acquired", "restored"):
            if not message.epoch:
                self.unnumbered += 1
                return
            newest = self.newest.get(message.address, 0)
            if message.epoch < newest or (message.epoch == newest and message.change == "acquired"):
                self.regressions.append(f"sys:nodes: {message.address} {message.change} under epoch "
                                        f"{message.epoch} after {newest}")
            self.newest[message.address] = max(newest, message.epoch)

    def close(self) -> None:
        self.transport.close()


class Chaos:
    def __init__(self, redis_server: EmbeddedRedis, rng: random.Random) -> None:
        self.redis = redis_server
        self.rng = rng
        self.tmp = workdir("chaos")
        self.nodes: list[NodeProcess] = []
        self.started = 0
        self.actions: collections.Counter[str] = collections.Counter()

    def add_node(self) -> NodeProcess:
        node = cluster_node(self.redis.url, f"chaos-{self.started}", NAMESPACE, TIMING, self.tmp,
                                  options=["--fencing-log"])
        self.started += 1
        node.wait_ready()
        self.nodes.append(node)
        return node

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive]

    def act(self, action: str) -> None:
        self.actions[action] += 1
        if action == "kill":
            victim = self.rng.choice(self.live())
            victim.kill()
            self.add_node()
        elif action == "pause":
            victim = self.rng.choice(self.live())
            victim.pause()
            time.sleep(TIMING.lease_ttl * 2)  # past its lease (a soak, not a test)
            victim.resume()
        elif action == "term":
            victim = self.rng.choice(self.live())
            victim.stop()
            self.add_node()
        elif action == "redis-restart":
            self.redis.restart()
        elif action == "redis-kill":
            self.redis.kill()
            self.redis.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def run_load(member: BenchMember, counters: list[str], sent: dict[str, list[str]], stop: threading.Event,
             rng: random.Random) -> None:
    seq = 0
    pause = threading.Event()
    next_at = time.monotonic()
    while not stop.is_set():
        address = rng.choice(counters)
        tag = f"s{seq}"
        seq += 1
        sent[address].append(tag)
        try:
            member.node.tell(address, CounterAdd(n=1, tag=tag, ack_to=ACKS))
        except HuddleError:
            pass  # not sent: never acknowledged, not counted
        next_at += 1.0 / RATE
        pause.wait(max(0.0, next_at - time.monotonic()))


def final_state(member: BenchMember, counters: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for address in counters:
        for attempt in range(10):
            try:
                out[address] = member.node.ask(address, CounterGet(), timeout=10).get(timeout=11)["tags"]
                break
            except HuddleError:
                if attempt == 9:
                    raise
    return out


def fencing_regressions(member: BenchMember) -> list[str]:
    import redis

    client = redis.Redis.from_url(member.redis_url)
    try:
        log = client.xrange(member.keys.fencing)
    finally:
        client.close()
    return fencing([fields for _id, fields in log])


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # reconnect warnings are the point here
    args = parse_args("chaos", __doc__ or "", lambda p: p.add_argument(
        "--minutes", type=float, default=None, help="how long to run (default 2; --quick: 0.5)"))
    minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 2.0)
    counters = [f"counter:ch-{i}" for i in range(50 if args.quick else 100)]
    rng = random.Random(int(os.environ.get("HUDDLE_CHAOS_SEED", "7")))
    redis_server = EmbeddedRedis(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    chaos = Chaos(redis_server, rng)
    member = tap = leases = None
    acks = AckLog()
    sent: dict[str, list[str]] = {a: [] for a in counters}
    stop = threading.Event()
    load: threading.Thread | None = None
    try:
        redis_server.start()
        tap = EventTap(redis_server.url, NAMESPACE)
        leases = LeaseOrder(redis_server.url)
        for _ in range(3):
            chaos.add_node()
        member = BenchMember(redis_server.url, NAMESPACE, TIMING)
        member.node.spawn(ACKS, Acks, acks)
        while member.node.lookup(ACKS) is None:
            threading.Event().wait(0.01)
        member.place(counters)
        load = threading.Thread(target=run_load, args=(member, counters, sent, stop, rng), daemon=True)
        load.start()

        total = minutes * 60.0
        calm = max(10.0, total * 0.2)
        began = time.monotonic()
        time.sleep(calm)
        calm_end = time.monotonic()
        calm_tags = {tag for tags in sent.values() for tag in tags}
        while time.monotonic() - began < total:
            chaos.act(rng.choice(ACTIONS))
            time.sleep(rng.uniform(1.0, 3.0))
        chaos_end = time.monotonic()
        stop.set()
        load.join(10)
        # Settle: until no acknowledgement came for 5 s (at most a minute).
        settle_until = time.monotonic() + 60
        while time.monotonic() < settle_until and time.monotonic() - max(acks.last(), chaos_end) < 5:
            time.sleep(0.5)
        final = final_state(member, counters)
        with acks.lock:
            acked = dict(acks.acks)
        result = additions(acked, final)
        calm_result = additions(acked, final, calm_tags)
        double = fencing_regressions(member) + leases.regressions
        unnumbered = leases.unnumbered
        sent_total = sum(len(v) for v in sent.values())
        applied = {tag for tags in final.values() for tag in tags}
        tap_events = collections.Counter(e.event for e in tap.events)
        dead_letters = collections.Counter(e.reason for e in tap.events if e.event == "dead-letter")
    finally:
        stop.set()
        if member is not None:
            member.close()
        chaos.stop()
        for closable in (tap, leases):
            if closable is not None:
                closable.close()
        redis_server.stop()
    violations = result["violations"] + double[:20]
    report(
        args,
        figures={"minutes": minutes, "double_owner_accepted": len(double), "lost": result["lost"],
                 "duplicated": result["duplicated"], "violations": len(violations),
                 "acks_per_s": acks.count_between(calm_end, chaos_end) / max(1e-9, chaos_end - calm_end),
                 "sent": sent_total, "acked": len(acked), "applied_unacked": len(applied - set(acked)),
                 "duplicates_dropped": dead_letters.get("duplicate", 0),
                 **{f"actions_{k.replace('-', '_')}": v for k, v in sorted(chaos.actions.items())}},
        baseline={"acks_per_s": acks.count_between(began, calm_end) / max(1e-9, calm_end - began),
                  "lost": calm_result["lost"], "duplicated": calm_result["duplicated"], "seconds": calm},
        goal={"double_owner_accepted": 0, "lost": 0, "duplicated": 0},
        notes={"violations": violations, "nodes_started": chaos.started, "rate_per_s": RATE,
               "announcements_without_epoch": unnumbered,
               "counters": len(counters), "lease_ttl_s": TIMING.lease_ttl, "events": dict(tap_events),
               "dead_letters": dict(dead_letters)},
    )


if __name__ == "__main__":
    main()
