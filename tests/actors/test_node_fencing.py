"""Fencing at the receiver: envelopes from a former owner of an address
(an older epoch than one already seen from it) are refused."""

from __future__ import annotations

import pytest

from actors.testkit import TestKit
from bus.errors import StaleEpoch
from bus.messages import Ping, Pong


def test_an_older_epoch_than_one_seen_from_the_same_sender_is_a_stale_epoch_dead_letter() -> None:
    with TestKit() as kit:
        probe = kit.probe("p:1")
        kit.inject_message("p:1", Ping(n=1), sender="counter:1", epoch=5)
        kit.inject_message("p:1", Ping(n=2), sender="counter:1", epoch=3)  # a former owner
        kit.inject_message("p:1", Ping(n=3), sender="counter:1", epoch=5)  # the same owner again
        kit.inject_message("p:1", Ping(n=4), sender="counter:1", epoch=7)  # a newer owner
        kit.inject_message("p:1", Ping(n=5), sender="counter:1", epoch=5)  # now stale too
        kit.settle()
        assert [m.n for m, _ in probe.received] == [1, 3, 4]
        ev = kit.expect_event("dead-letter", "p:1", reason="stale-epoch")
        assert ev.detail == {"kind": "sys.ping", "sender": "counter:1"}
        kit.expect_event("dead-letter", "p:1", reason="stale-epoch")
        assert kit.node.newest_epoch("counter:1") == 7


def test_epoch_zero_means_no_fencing() -> None:
    with TestKit() as kit:
        probe = kit.probe("p:1")
        kit.inject_message("p:1", Ping(n=1), sender="counter:1", epoch=5)
        kit.inject_message("p:1", Ping(n=2), sender="counter:1")
        kit.settle()
        assert [m.n for m, _ in probe.received] == [1, 2]


def test_an_announced_epoch_fences_a_sender_never_heard_from() -> None:
    with TestKit() as kit:
        probe = kit.probe("p:1")
        kit.node.observe_epoch("counter:1", 10)
        kit.node.observe_epoch("counter:1", 4)  # never lowers it
        kit.inject_message("p:1", Ping(n=1), sender="counter:1", epoch=9)
        kit.settle()
        assert probe.received == []
        kit.expect_event("dead-letter", "p:1", reason="stale-epoch")


def test_a_stale_ask_is_answered_with_a_typed_refusal() -> None:
    with TestKit() as kit:
        kit.probe("p:1", reply=lambda m, e: Pong(n=1))
        kit.node.observe_epoch("counter:1", 10)
        future = kit.node.ask("p:1", Ping(n=1), sender="counter:1", epoch=9)
        with pytest.raises(StaleEpoch):
            future.get(timeout=5)

