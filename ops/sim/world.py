"""One simulated world: a seeded network, a loop on virtual time, Redis.

:class:`World` is what a simulation (and a test of the simulation's parts)
starts from: ``run(coro)`` runs a coroutine on the world's loop, whose
clock starts at :data:`START_WALL` Unix seconds (wall) and 0 (monotonic),
and only moves when nothing is ready. Same seed, same program: same run.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from pykka import ActorRegistry

from ops.sim.loop import SimLoop
from ops.sim.network import Latency, SimNetwork
from ops.sim.redis_model import RedisModel

__all__ = ["START_WALL", "World", "fault_kinds", "trace_hash"]

T = TypeVar("T")

#: The world's wall clock at virtual time 0 (2026-01-01T00:00:00Z).
START_WALL = 1_767_225_600.0


class World:
    """The network, the loop and the Redis of one simulated run."""

    def __init__(self, seed: int = 0, *, latency: Latency = Latency()) -> None:
        self.seed = seed
        # The process's generator too: the nodes draw jitter and their
        # sessions' backoff from it (a world runs alone on its thread, so
        # the draws come in the same order every run).
        random.seed(f"huddle-sim:{seed}")
        self.network = SimNetwork(seed, latency)
        self.loop = SimLoop(self.network)
        self.redis = RedisModel(self.network, self.loop, self.wall)
        self._actors_before = {ref.actor_urn for ref in ActorRegistry.get_all()}

    def now(self) -> float:
        """Monotonic seconds since the world began."""
        return self.loop.time()

    def wall(self) -> float:
        return START_WALL + self.loop.time()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def run_for(self, seconds: float) -> None:
        self.loop.run_for(seconds)

    def close(self) -> None:
        """The end of the world: every task still running is cancelled and
        allowed to finish (as a node's loop does when it closes), then the
        Redis and the loop go."""
        self.loop.thaw_all()  # a frozen host's tasks end too (a killed one's, cut off, harmlessly)
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.redis.close()
        self.loop.run_for(0.01)  # the connections' ends reach their protocols
        self.loop.close()
        # The world's actors go with it: none is left in the process's
        # registry for a later stop_all to wait on (their loop is closed).
        for ref in ActorRegistry.get_all():
            if ref.actor_urn not in self._actors_before:
                ActorRegistry.unregister(ref)


def trace_hash(trace: list[str]) -> str:
    """What identifies a run: a hash of its trace (the same on every replay of a seed)."""
    return hashlib.sha256("\n".join(trace).encode()).hexdigest()[:16]


def fault_kinds(faults: bool | Sequence[str], known: Sequence[str], what: str = "faults") -> tuple[str, ...]:
    """The faults a workload draws from: all of ``known`` (True), none
    (False), or those named (in ``known``'s order); ValueError names any
    that is not a fault of the workload."""
    if faults is True:
        return tuple(known)
    if faults is False:
        return ()
    unknown = sorted(set(faults) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)} (this workload's: {', '.join(known)})")
    return tuple(k for k in known if k in set(faults))
