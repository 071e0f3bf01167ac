"""Spawning at an address: what holds before an actor's first slice."""

from __future__ import annotations

import pytest
from pykka import ActorRegistry

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.testkit import TestKit
from bus.address import InvalidAddress
from bus.messages import Ping


class Witness(HuddleActor):
    def __init__(self, ctx: ActorContext, started_seen: list[bool]) -> None:
        super().__init__(ctx)
        self.started_seen = started_seen
        self.registered_at_start = False

    def on_start(self) -> None:
        self.registered_at_start = ActorRegistry.get_by_urn(self.actor_urn) is not None
        self.started_seen.append(True)

    def on_message(self, message, envelope):  # type: ignore[no-untyped-def]
        return "ok"


def test_actor_is_registered_and_announced_before_it_runs() -> None:
    with TestKit() as kit:
        order: list[str] = []
        seen: list[bool] = []
        kit.node.add_event_listener(lambda ev: order.append(ev.event) if ev.address == "w:1" else None)
        actor = kit.spawn("w:1", Witness, seen)
        assert actor.registered_at_start
        assert order[0] == "started" and seen == [True]


def test_messages_buffered_for_a_restart_run_only_after_registration() -> None:
    with TestKit() as kit:
        kit.node._reserved["w:2"] = __import__("collections").deque()
        kit.inject_message("w:2", Ping())
        order: list[str] = []
        kit.node.add_event_listener(lambda ev: order.append(ev.event) if ev.address == "w:2" else None)
        actor = kit.spawn("w:2", Witness, [])
        assert actor.registered_at_start
        assert order == ["started"]
        assert not kit.events_named("dead-letter")


def test_the_sys_kind_is_reserved_for_system_channels() -> None:
    with TestKit() as kit, pytest.raises(InvalidAddress):
        kit.spawn("sys:events", Witness, [])


def test_a_send_to_an_address_nobody_hosts_is_a_dead_letter_and_an_ask_fails_fast() -> None:
    from bus.errors import UnknownAddress

    with TestKit() as kit:
        future = kit.ask("nobody:1", Ping(n=1))
        with pytest.raises(UnknownAddress):
            future.get(timeout=5)  # the manual clock never moved: no timeout involved
        kit.node.tell("nobody:2", Ping())
        ev = kit.expect_event("dead-letter", "nobody:2", reason="no-subscriber")
        assert ev.detail["kind"] == "sys.ping"
