"""Fencing at the receiver: envelopes from a former owner of an address
(an older epoch than the floor) are refused, and the floor only rises to
epochs the authority says were issued (see actors.runtime.fencing)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.runtime.fencing import Fencing, Issued, LocalEpochs, Verdict
from actors.runtime.testkit import TestKit
from bus.envelope import Envelope
from bus.errors import StaleEpoch, UnissuedEpoch
from bus.messages import Ping, Pong


class HeldAuthority:
    """An authority whose answers the test releases, one look-up at a time;
    each answer is what was issued when the question was asked."""

    def __init__(self, issued: dict[str, int]) -> None:
        self.issued = issued
        self.asked: list[tuple[str, int]] = []
        self.fencing: Fencing | None = None

    def look_up(self, address: str) -> None:
        self.asked.append((address, self.issued.get(address, 0)))

    def answer(self) -> None:
        assert self.fencing is not None
        address, epoch = self.asked.pop(0)
        self.fencing.resolve(address, Issued(epoch=epoch, holder="n1", live=bool(epoch)))


def test_an_older_epoch_than_the_floor_is_a_stale_epoch_dead_letter() -> None:
    with TestKit() as kit:
        probe = kit.probe("p:1")
        kit.node.observe_epoch("counter:1", 5)  # the authority says: held under 5
        kit.inject_message("p:1", Ping(n=1), sender="counter:1", epoch=5)
        kit.inject_message("p:1", Ping(n=2), sender="counter:1", epoch=3)  # a former owner
        kit.inject_message("p:1", Ping(n=3), sender="counter:1", epoch=5)  # the same owner again
        kit.node.observe_epoch("counter:1", 7)  # a newer owner
        kit.inject_message("p:1", Ping(n=4), sender="counter:1", epoch=7)
        kit.inject_message("p:1", Ping(n=5), sender="counter:1", epoch=5)  # now stale too
        kit.settle()
        assert [m.n for m, _ in probe.received] == [1, 3, 4]
        ev = kit.expect_event("dead-letter", "p:1", reason="stale-epoch")
        assert ev.detail == {"kind": "sys.ping", "sender": "counter:1"}
        kit.expect_event("dead-letter", "p:1", reason="stale-epoch")
        assert kit.node.newest_epoch("counter:1") == 7


def test_an_epoch_never_issued_is_refused_and_moves_nothing() -> None:
    """One forged envelope (an epoch above anything issued, from a live
    actor's address) must not cut the real owner off."""
    with TestKit() as kit:
        kit.node.fencing.set_authority(LocalEpochs(kit.node.fencing))
        probe = kit.probe("p:1")
        kit.node.observe_epoch("counter:1", 5)
        kit.inject_message("p:1", Ping(n=1), sender="counter:1", epoch=10**15)  # forged
        kit.inject_message("p:1", Ping(n=2), sender="counter:1", epoch=5)  # the real owner
        kit.settle()
        assert [m.n for m, _ in probe.received] == [2]
        ev = kit.expect_event("dead-letter", "p:1", reason="unissued-epoch")
        assert ev.detail == {"kind": "sys.ping", "sender": "counter:1"}
        assert kit.node.newest_epoch("counter:1") == 5
        assert kit.node.fencing.floor("counter:1") == 5
        assert kit.node.counters["dead-letter:unissued-epoch"] == 1


def test_a_forged_ask_is_answered_with_a_typed_refusal() -> None:
    with TestKit() as kit:
        kit.node.fencing.set_authority(LocalEpochs(kit.node.fencing))
        kit.probe("p:1", reply=lambda m, e: Pong(n=1))
        future = kit.node.ask("p:1", Ping(n=1), sender="counter:1", epoch=99)
        with pytest.raises(UnissuedEpoch):
            future.get(timeout=5)


def test_without_an_authority_an_unverifiable_epoch_is_delivered_and_moves_nothing() -> None:
    """A node outside a cluster (e.g. a client asking a cluster actor) gets
    its replies, and a forged epoch still cannot cut anyone off."""
    with TestKit() as kit:
        probe = kit.probe("p:1")
        kit.node.observe_epoch("counter:1", 5)
        kit.inject_message("p:1", Ping(n=1), sender="counter:1", epoch=10**15)
        kit.inject_message("p:1", Ping(n=2), sender="counter:1", epoch=5)
        kit.inject_message("p:1", Ping(n=3), sender="counter:1", epoch=4)
        kit.settle()
        assert [m.n for m, _ in probe.received] == [1, 2]
        assert kit.node.fencing.floor("counter:1") == 5
        kit.expect_event("dead-letter", "p:1", reason="stale-epoch")


def test_epoch_zero_means_no_fencing() -> None:
    with TestKit() as kit:
        probe = kit.probe("p:1")
        kit.node.observe_epoch("counter:1", 5)
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


# -- the mechanism, with an authority that answers when told -----------------------


def _fencing(issued: dict[str, int]) -> tuple[Fencing, HeldAuthority, list[tuple[int, str]]]:
    authority = HeldAuthority(issued)
    fencing = Fencing(authority)
    authority.fencing = fencing
    out: list[tuple[int, str]] = []
    fencing.deliver = lambda env: out.append((env.message.n, "deliver"))
    fencing.refuse = lambda env, verdict: out.append((env.message.n, verdict.value))
    return fencing, authority, out


def _env(n: int, epoch: int, sender: str = "a:1") -> Envelope:
    return Envelope(to="p:1", message=Ping(n=n), sender=sender, epoch=epoch)


def test_a_sender_waits_for_the_authority_in_order() -> None:
    fencing, authority, out = _fencing({"a:1": 7})
    assert fencing.check(_env(1, 7)) is Verdict.PARKED
    assert fencing.check(_env(2, 7)) is Verdict.PARKED  # behind the question, not judged alone
    assert fencing.check(_env(3, 99)) is Verdict.PARKED
    assert out == []
    authority.answer()
    # 3 came after the question was sent: its epoch may be newer than the answer
    assert out == [(1, "deliver"), (2, "deliver")]
    assert fencing.check(_env(4, 7)) is Verdict.PARKED  # still behind 3
    authority.answer()
    assert out == [(1, "deliver"), (2, "deliver"), (3, "unissued-epoch"), (4, "deliver")]
    assert fencing.floor("a:1") == 7
    assert fencing.check(_env(5, 7)) is Verdict.DELIVER  # settled locally from now on
    assert fencing.check(_env(9, 1, sender="b:1")) is Verdict.PARKED  # another sender asks for itself
    assert authority.asked == [("b:1", 0)]


def test_an_announcement_fences_at_its_place_in_the_stream() -> None:
    """Envelopes read before the announcement are judged by what was issued
    then; those after it wait, and a former owner's are then stale."""
    fencing, authority, out = _fencing({"a:1": 5})
    fencing.confirm("a:1", 5)
    assert fencing.check(_env(1, 5)) is Verdict.DELIVER
    authority.issued["a:1"] = 8  # claimed by someone else under 8, and announced
    fencing.announced("a:1")
    assert fencing.check(_env(2, 5)) is Verdict.PARKED  # the former owner, after the claim
    assert fencing.check(_env(3, 8)) is Verdict.PARKED  # the new owner
    authority.answer()
    assert out == [(2, "stale-epoch"), (3, "deliver")]
    assert fencing.floor("a:1") == 8


def test_a_forged_announcement_moves_the_floor_only_to_what_was_issued() -> None:
    fencing, authority, out = _fencing({"a:1": 5})
    fencing.announced("a:1", 10**15)
    authority.answer()
    assert fencing.floor("a:1") == 5
    assert fencing.check(_env(1, 5)) is Verdict.DELIVER


def test_an_announcement_while_a_look_up_is_in_flight_asks_again() -> None:
    fencing, authority, out = _fencing({"a:1": 5})
    assert fencing.check(_env(1, 5)) is Verdict.PARKED
    authority.issued["a:1"] = 8  # claimed after the look-up was sent
    fencing.announced("a:1")
    assert fencing.check(_env(2, 5)) is Verdict.PARKED
    authority.answer()  # the old answer: 5
    assert out == [(1, "deliver")]
    assert authority.asked == [("a:1", 8)]
    authority.answer()  # the new one: 8
    assert out == [(1, "deliver"), (2, "stale-epoch")]


def test_an_epoch_newer_than_the_answer_that_arrived_after_the_question_is_asked_again() -> None:
    fencing, authority, out = _fencing({"a:1": 5})
    assert fencing.check(_env(1, 5)) is Verdict.PARKED
    authority.issued["a:1"] = 8
    assert fencing.check(_env(2, 8)) is Verdict.PARKED  # arrived after the question was sent
    authority.answer()
    assert out == [(1, "deliver")]
    authority.answer()
    assert out == [(1, "deliver"), (2, "deliver")]


def test_an_unreachable_authority_refuses_only_what_it_could_not_verify() -> None:
    fencing, authority, out = _fencing({})
    fencing.confirm("a:1", 5)
    assert fencing.check(_env(1, 6)) is Verdict.PARKED
    authority.asked.pop()
    fencing.resolve("a:1", Issued(known=False))
    assert out == [(1, "epoch-unverified")]
    assert fencing.floor("a:1") == 5


@settings(max_examples=300, deadline=None)
@given(
    issued=st.integers(min_value=1, max_value=20),
    epochs=st.lists(st.integers(min_value=1, max_value=10**6), max_size=12),
)
def test_property_no_envelope_moves_the_floor_above_what_was_issued(issued: int, epochs: list[int]) -> None:
    """Whatever arrives, the floor never exceeds the issued epoch, so the
    owner of the newest issued epoch is never refused."""
    fencing, authority, out = _fencing({"a:1": issued})

    def send(n: int, epoch: int) -> None:
        verdict = fencing.check(_env(n, epoch))
        if verdict is not Verdict.PARKED:
            out.append((n, verdict.value))
        while authority.asked:
            authority.answer()

    for n, epoch in enumerate(epochs):
        send(n, epoch)
        assert fencing.floor("a:1") <= issued
    send(-1, issued)
    assert out[-1] == (-1, "deliver")
    assert all(verdict != "deliver" or epochs[n] <= issued for n, verdict in out if n >= 0)
