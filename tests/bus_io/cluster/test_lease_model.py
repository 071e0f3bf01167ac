"""The lease scripts against a model, on a real redis-server: random
sequences of heartbeats, deaths, claims, releases, lapsed leases and
checkpoint writes (hypothesis stateful testing).

Invariants: at most one holder per address; a claim wins exactly when the
model says it may; every epoch drawn is above every epoch drawn before; a
checkpoint write is accepted exactly when its (node, epoch) holds the lease.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bus.embedded import EmbeddedRedis

from .conftest import ClusterRedis

NODES = ("n1", "n2", "n3")
ADDRESSES = ("a:1", "a:2")


@pytest.fixture
def machine(redis_server: EmbeddedRedis) -> type[RuleBasedStateMachine]:
    url = redis_server.url

    class Leases(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.cr = ClusterRedis(url)
            self.alive: set[str] = set()
            self.holder: dict[str, tuple[str, int]] = {}
            self.epochs_seen: list[int] = []
            self.known_epochs: dict[tuple[str, str], int] = {}  # (node, address) -> epoch it was given

        def teardown(self) -> None:
            self.cr.close()

        @rule(node=st.sampled_from(NODES))
        def heartbeat(self, node: str) -> None:
            self.cr.heartbeat(node)
            self.alive.add(node)

        @rule(node=st.sampled_from(NODES))
        def die(self, node: str) -> None:
            self.cr.kill(node)
            self.alive.discard(node)

        @rule(node=st.sampled_from(NODES), address=st.sampled_from(ADDRESSES))
        def claim(self, node: str, address: str) -> None:
            current = self.holder.get(address)
            may = node in self.alive and (current is None or current[0] == node or current[0] not in self.alive)
            result = self.cr.run(self.cr.leases.claim(address, node, ttl=60))
            assert result.won == may, (node, address, current, self.alive)
            if result.won:
                assert not self.epochs_seen or result.epoch > max(self.epochs_seen)
                self.epochs_seen.append(result.epoch)
                self.holder[address] = (node, result.epoch)
                self.known_epochs[(node, address)] = result.epoch
            elif node in self.alive:
                assert current is not None and (result.holder, result.epoch) == current

        @rule(node=st.sampled_from(NODES), address=st.sampled_from(ADDRESSES))
        def release(self, node: str, address: str) -> None:
            epoch = self.known_epochs.get((node, address), 1)
            ours = self.holder.get(address) == (node, epoch)
            released = self.cr.run(self.cr.leases.release(address, node, epoch))
            assert released == (ours or address not in self.holder)
            if ours:
                del self.holder[address]

        @rule(address=st.sampled_from(ADDRESSES))
        def lapse(self, address: str) -> None:
            self.cr.sync.delete(self.cr.keys.lease(address))
            self.holder.pop(address, None)

        @precondition(lambda self: bool(self.known_epochs))
        @rule(data=st.data())
        def save(self, data: st.DataObject) -> None:
            (node, address), epoch = data.draw(st.sampled_from(sorted(self.known_epochs.items())))
            accepted = self.cr.run(self.cr.leases.save_checkpoint(address, node, epoch, b"x"))
            assert accepted == (self.holder.get(address) == (node, epoch))

        @invariant()
        def redis_agrees_with_the_model(self) -> None:
            for address in ADDRESSES:
                assert self.cr.run(self.cr.leases.lease(address)) == self.holder.get(address)

    return Leases


def test_lease_scripts_follow_the_model(machine: type[RuleBasedStateMachine]) -> None:
    run = settings(max_examples=25, stateful_step_count=30, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])(machine).TestCase
    run().runTest()
