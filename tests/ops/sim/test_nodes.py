"""Real huddle nodes in a simulated world: two nodes, their Redis
transports and actors on the world's one loop, talking through the model
Redis; the same seed gives the same run, to the virtual microsecond."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from actors.runtime.actor import HuddleActor
from actors.runtime.pooled import BlockingOnLoop
from bus.envelope import Envelope
from bus.messages import Message, message_kind
from ops.sim.nodes import SimHost, listening
from ops.sim.world import World


@message_kind("test.sim.add")
@dataclass(frozen=True, slots=True)
class Add(Message):
    n: int


class Counter(HuddleActor):
    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.total = 0

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        assert isinstance(message, Add)
        self.total += message.n
        return self.total


def _two_nodes_counting(seed: int) -> list[tuple[int, float]]:
    """Node b asks node a's counter five times; each answer and when it came."""
    world = World(seed)

    async def scenario() -> list[tuple[int, float]]:
        a, b = SimHost(world, "a").start(), SimHost(world, "b").start()
        a.spawn("counter:1", Counter)
        assert await listening(a, "counter:1")
        assert await listening(b, b.address)
        out = []
        for i in range(5):
            total = await b.ask("counter:1", Add(n=i + 1), timeout=2)
            out.append((total, world.now()))
        return out

    try:
        return world.run(scenario())
    finally:
        world.close()


def test_two_nodes_answer_each_other_through_the_simulated_redis() -> None:
    answers = _two_nodes_counting(3)
    assert [total for total, _ in answers] == [1, 3, 6, 10, 15]
    times = [t for _, t in answers]
    assert times == sorted(times) and times[-1] < 1.0  # round trips of the network's delays, no timeouts


def test_the_same_seed_replays_the_same_run_and_another_seed_does_not() -> None:
    first = _two_nodes_counting(11)
    assert _two_nodes_counting(11) == first
    assert _two_nodes_counting(12) != first


def test_a_blocking_get_inside_the_world_is_refused_with_the_fix_named() -> None:
    world = World(4)

    async def scenario() -> None:
        a = SimHost(world, "a").start()
        a.spawn("counter:1", Counter)
        assert await listening(a, "counter:1")
        future = a.ask("counter:1", Add(n=1), timeout=2)
        with pytest.raises(BlockingOnLoop, match="await"):
            future.get(timeout=1)
        assert await future == 1

    try:
        world.run(scenario())
    finally:
        world.close()


def test_a_world_leaves_no_actor_in_the_process_registry() -> None:
    """A world's actors live on its loop; once it closed, a later
    ``ActorRegistry.stop_all`` (a test's clean-up) must not wait on them."""
    from pykka import ActorRegistry

    from ops.sim.webinar import run_webinar_seed

    before = len(ActorRegistry.get_all())
    assert run_webinar_seed(1, meetings=2, seconds=6, faults=False).violations == []
    assert len(ActorRegistry.get_all()) == before
