"""The cluster counter workload in a simulated world, with faults.

One seed, one run: ``nodes`` cluster members that host counters and one
application node (a member that hosts nothing) on the model Redis. The
application places ``counters`` counters and sends an acknowledged
addition every :data:`ADD_EVERY_S` to one drawn from the seed. Meanwhile,
until :data:`CALM_S` before the end, faults drawn from the seed: a member
paused (``SIGSTOP``) for a while, killed (``kill -9``) and started again as
a new process, cut off from the network for a while, one of its
connections to Redis dropped, twinned (a second
process started under its node id while the first still runs, one of the
two stopped after a while), or Redis restarted from its data or without
it (then what Redis alone held is gone: the application places its
counters again once the faults stop, and additions a counter acknowledged
before such a restart are not counted as lost unless its holder wrote its
lease and state back before the next one; none may be applied twice,
ever). All along,
every :data:`OWNERS_EVERY_S`: no two running processes hold one address's
lease as valid by their own clocks for more than :data:`OWNERS_OVERLAP_S`
(at most one owner acts per address). Then everything heals, the fleet
settles, and the checks of :mod:`ops.invariants` run: no acknowledged
addition lost, none applied twice, the fencing log never going back and
never two writers per epoch, and every counter answering once the faults
stopped.

Everything random comes from the seed, so :func:`run_seed` with the same
arguments is the same run: :attr:`SeedResult.trace_hash` (over the faults,
every acknowledgement and the final states, with their virtual times) is
the same on every replay.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from actors.cluster.machine import ClusterConfig
from actors.cluster.shell import ActorFactories
from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.builtin import Counter, CounterAck, CounterAdd, CounterGet
from bus.cluster.leases import LeaseStore
from bus.envelope import Envelope
from bus.errors import HuddleError
from bus.messages import Event, Message
from ops.invariants import additions, fencing
from ops.sim.nodes import SimHost, listening
from ops.sim.world import World, fault_kinds, trace_hash

__all__ = ["ADD_EVERY_S", "CALM_S", "FAULTS", "SeedResult", "run_seed"]

ADD_EVERY_S = 0.02
#: Faults stop this long before the end; then the fleet settles for as long.
CALM_S = 5.0
SETTLE_S = 5.0
FAULTS = ("pause", "kill", "cut", "conn-drop", "redis-restart", "redis-wipe", "twin")
#: Two processes may both believe they own an address for at most this
#: long (a takeover's news reaches the former owner with its next renewal).
OWNERS_OVERLAP_S = 1.0
#: How often the world looks at who believes it owns what.
OWNERS_EVERY_S = 0.05
LEASE_TTL_S = 1.0


@dataclass
class SeedResult:
    seed: int
    violations: list[str]
    faults: list[str]
    acked: int
    sent: int
    events: int
    simulated_s: float
    trace: list[str] = field(repr=False)

    @property
    def trace_hash(self) -> str:
        return trace_hash(self.trace)


class _AckSink(HuddleActor):
    def __init__(self, ctx: ActorContext, on_ack: Any) -> None:
        super().__init__(ctx)
        self.on_ack = on_ack

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, CounterAck):
            self.on_ack(message)
            return None
        return super().on_message(message, envelope)


def run_seed(seed: int, *, nodes: int = 3, counters: int = 4, seconds: float = 20.0,
             faults: bool | Sequence[str] = True) -> SeedResult:
    """One run of the workload (see the module notes). ``faults``: all of
    :data:`FAULTS` (True), none (False), or those named."""
    kinds = fault_kinds(faults, FAULTS)
    if nodes < 2:
        raise ValueError("the workload needs at least 2 members (a fault leaves a survivor)")
    world = World(seed)
    draws = random.Random(f"faults:{seed}")
    load = random.Random(f"load:{seed}")
    trace: list[str] = []
    acked: dict[str, CounterAck] = {}
    acked_at: dict[str, float] = {}
    #: when Redis lost its data, which running process held each counter
    #: then, and when each counter's holder wrote its lease (and state) back
    wipes: list[float] = []
    keepers: list[dict[str, list[str]]] = []
    restored: dict[str, list[float]] = {}
    #: faults as (from, until, host; None: every host), for the wipe check
    disturbed: list[tuple[float, float, str | None]] = []
    injected: list[str] = []
    violations: list[str] = []
    addresses = [f"counter:c{i}" for i in range(counters)]
    hosts: dict[str, SimHost] = {}
    extra: list[SimHost] = []  # twins, and processes a twin's end stopped
    incarnations: dict[str, int] = {}
    twins: dict[str, int] = {}

    def note(what: str) -> None:
        trace.append(f"{world.now():.6f} {what}")

    def on_ack(ack: CounterAck) -> None:
        if ack.tag not in acked:
            acked[ack.tag] = ack
            acked_at[ack.tag] = world.now()
            note(f"ack {ack.tag} {ack.address} {ack.count}")

    def on_event(event: Event) -> None:
        if event.event == "lease-restored":
            restored.setdefault(event.address, []).append(world.now())
            note(f"lease-restored {event.address} on {event.node}")

    def member(name: str, host: str | None = None) -> SimHost:
        h = SimHost(world, name, host=host)
        h.node.add_event_listener(on_event)
        h.start()
        h.join_cluster(ClusterConfig(lease_ttl=LEASE_TTL_S, heartbeat_interval=LEASE_TTL_S / 4, fencing_log=True),
                       ActorFactories({"counter": Counter}))
        return h

    async def inject(until: float) -> None:
        while world.now() + 3.0 < until:
            await asyncio.sleep(draws.uniform(0.5, 2.5))
            live = sorted(n for n, h in hosts.items() if n != "app" and not h.killed and not world.loop.frozen(h.name))
            kind = draws.choice(kinds)
            if kind == "redis-restart":
                disturbed.append((world.now(), world.now(), None))
                cut = world.redis.restart(keep_data=True)
                what = f"redis restarted from its data ({cut} connections reset)"
            elif kind == "redis-wipe":
                # Which running processes hold which counters now: each must
                # write its lease and state back, unless disturbed meanwhile.
                keepers.append({a: [n.split("@")[0] for n in names if not world.network.isolated(n.split("@")[0])]
                                for a, names in believers().items()})
                wipes.append(world.now())
                disturbed.append((world.now(), world.now(), None))
                cut = world.redis.restart(keep_data=False)
                what = f"redis restarted without its data ({cut} connections reset)"
            elif len(live) < 2:
                continue  # keep a survivor
            else:
                name = draws.choice(live)
                host = hosts[name]
                length = draws.uniform(0.2, 3.0)
                disturbed.append((world.now(), world.now() + length, host.name))
                if kind == "pause":
                    host.pause()
                    world.loop.call_later(length, host.resume)
                    what = f"{name} paused {length:.3f}s"
                elif kind == "cut":
                    world.network.isolate(host.name)
                    world.loop.call_later(length, world.network.heal, host.name)
                    what = f"{name} cut off {length:.3f}s"
                elif kind == "conn-drop":
                    # One of its connections to Redis reset (its subscriber's,
                    # its publisher's, its renewals', its store client's...).
                    opened = world.network.opened_by(host.name)
                    if not opened:
                        continue
                    dropped = draws.choice(opened)
                    world.network.drop(dropped)
                    what = f"{name}'s connection {dropped.conn_id} dropped"
                elif kind == "twin":
                    # A second process started under the same node id while
                    # the first still runs (a deploy that starts the new one
                    # before the old one stopped); after a while one of the
                    # two is stopped (kill -9).
                    twins[name] = twins.get(name, 0) + 1
                    twin = member(name, host=f"{name}~{twins[name]}")
                    extra.append(twin)
                    disturbed.append((world.now(), world.now() + length, twin.name))
                    old_goes = draws.random() < 0.5
                    world.loop.call_later(length, end_twin, name, host, twin, old_goes)
                    what = f"{name} twinned {length:.3f}s, then the {'old' if old_goes else 'new'} one stopped"
                else:
                    disturbed.append((world.now(), float("inf"), host.name))
                    host.kill()
                    world.loop.call_later(length, restart, name)
                    what = f"{name} killed, restarted in {length:.3f}s"
            injected.append(what)
            note(f"fault {what}")

    def end_twin(name: str, old: SimHost, twin: SimHost, old_goes: bool) -> None:
        gone = old if old_goes else twin
        disturbed.append((world.now(), float("inf"), gone.name))
        gone.kill()
        if old_goes and hosts.get(name) is old:
            hosts[name] = twin
        extra.append(old)
        note(f"twin of {name}: {gone.name} stopped")

    def believers() -> dict[str, list[str]]:
        """Address → the running processes whose cluster core holds its
        lease as valid now (by the process's own clock)."""
        out: dict[str, list[str]] = {}
        for h in {id(h): h for h in [*hosts.values(), *extra]}.values():
            if h.killed or h.cluster is None or world.loop.frozen(h.name):
                continue  # a stopped process acts on nothing
            now = h.clock.now()
            state = h.cluster.state
            for address, epoch in state.held().items():
                if now < state.leases[address].valid_until:
                    out.setdefault(address, []).append(f"{h.name}@{epoch}")
        return out

    async def watch_owners() -> None:
        since: dict[str, float] = {}
        seen: dict[str, list[str]] = {}
        while True:
            await asyncio.sleep(OWNERS_EVERY_S)
            now_owned = believers()
            for address in sorted(set(now_owned) | set(seen)):
                if sorted(now_owned.get(address, [])) != seen.get(address, []):
                    seen[address] = sorted(now_owned.get(address, []))
                    note(f"owners {address} {' '.join(seen[address]) or '-'}")
            for address in [a for a in since if len(now_owned.get(a, ())) < 2]:
                del since[address]
            for address, names in now_owned.items():
                if len(names) < 2:
                    continue
                first = since.setdefault(address, world.now())
                if first >= 0 and world.now() - first > OWNERS_OVERLAP_S:
                    violations.append(f"owners: {address} owned by {' and '.join(sorted(names))} at once for "
                                      f"more than {OWNERS_OVERLAP_S:g}s (since {first:.3f}s)")
                    since[address] = -1.0  # said once per stretch

    def restart(name: str) -> None:
        incarnations[name] = incarnations.get(name, 1) + 1
        hosts[name] = member(name, host=f"{name}#{incarnations[name]}")
        note(f"restart {name}")

    def forgotten() -> dict[str, float]:
        """Counter -> the last time Redis lost its data while nobody could
        write it back: what it acknowledged before may be gone, and Redis
        no longer knows it exists. Its holder could, if it wrote its lease
        back, or ran undisturbed for a lease ttl after (then it had to)."""
        def undisturbed(host: str, since: float) -> bool:
            return not any(start <= since + LEASE_TTL_S and end > since and who in (host, None)
                           for start, end, who in disturbed)

        out: dict[str, float] = {}
        for i, wiped in enumerate(wipes):
            until = wipes[i + 1] if i + 1 < len(wipes) else float("inf")
            for address in addresses:
                if any(wiped < t < until for t in restored.get(address, ())):
                    continue
                if not any(undisturbed(h, wiped) for h in keepers[i].get(address, ())):
                    out[address] = wiped
        return out

    async def scenario() -> tuple[dict[str, list[str]], list[dict[str, Any]], int]:
        for i in range(nodes):
            hosts[f"m{i}"] = member(f"m{i}")
        app = hosts["app"] = SimHost(world, "app")
        app.start()
        app.join_cluster(ClusterConfig(lease_ttl=LEASE_TTL_S, heartbeat_interval=LEASE_TTL_S / 4, capacity=0.0),
                         ActorFactories())
        for h in hosts.values():
            assert h.cluster is not None
            if not await h.cluster.wait_joined(10):
                raise RuntimeError(f"{h.name} did not join")
        app.run(app.node.spawn, "acks:app", _AckSink, on_ack)
        await listening(app.node, "acks:app")
        assert app.cluster is not None
        for address in addresses:
            async with asyncio.timeout(10):
                note(f"placed {address} on {await app.run(app.cluster.ensure, address)}")
        end = world.now() + seconds
        faulting = asyncio.ensure_future(inject(end - CALM_S)) if kinds else None
        watching = asyncio.ensure_future(watch_owners())
        sent = 0
        while world.now() < end:
            address = load.choice(addresses)
            try:
                app.run(app.node.tell, address, CounterAdd(n=1, tag=f"s{sent}", ack_to="acks:app"))
            except HuddleError:
                pass  # not sent: never acknowledged
            sent += 1
            await asyncio.sleep(ADD_EVERY_S)
        if faulting is not None:
            faulting.cancel()
        for twin in [h for h in extra if not h.killed and h not in hosts.values()]:
            twin.kill()  # a twin still running ends with the faults
        for h in hosts.values():  # every fault ends (a killed process stays dead; its restart is up)
            world.network.heal(h.name)
            h.resume()
        # What Redis alone remembered (that a counter exists) when it lost its
        # data with nobody to write it back is the application's to say again.
        for address in forgotten():
            try:
                async with asyncio.timeout(5):
                    await app.run(app.cluster.ensure, address)
            except (HuddleError, TimeoutError):
                pass  # the liveness check says it
        await asyncio.sleep(SETTLE_S)
        final: dict[str, list[str]] = {}
        for address in addresses:
            try:
                state = await app.node.ask(address, CounterGet(), timeout=5)
            except HuddleError as exc:
                violations.append(f"liveness: {address} did not answer {SETTLE_S:g}s after the faults ({exc})")
                continue
            final[address] = state["tags"]
            note(f"final {address} {state['count']} {len(state['tags'])}")
        client = aioredis.Redis.from_url(world.redis.url)
        try:
            log = await LeaseStore(client).fencing_log()
        finally:
            await client.aclose()
        for entry in log:
            note(f"fenced-write {entry.get('a')} {entry.get('e')} {entry.get('n')}")
        watching.cancel()
        return final, log, sent

    try:
        final, log, sent = world.run(scenario())
        lost_before = forgotten()
        checked = {tag: ack for tag, ack in acked.items() if acked_at[tag] >= lost_before.get(ack.address, 0.0)}
        judged = additions(checked, final)  # none applied twice: all of them, lost ones or not
        violations += judged["violations"] + fencing(log)
        events = sum(n for h in hosts.values() for k, n in h.node.counters.items() if k.startswith("event:"))
        simulated = world.now()
    finally:
        world.close()
    return SeedResult(seed=seed, violations=violations, faults=injected, acked=len(acked), sent=sent,
                      events=events, simulated_s=simulated, trace=trace)
