"""The backlog scripts on a real redis-server: routing to a live holder's
node channel, appending when there is none, the cap, draining."""

from __future__ import annotations

from bus.address import channel_for, node_address
from bus.envelope import Envelope
from bus.messages import Ping

from .conftest import ClusterRedis, channel_log


def _env(cr: ClusterRedis, n: int) -> tuple[bytes, str]:
    env = Envelope(to="counter:1", message=Ping(n=n))
    return cr.codec.encode(env), env.msg_id


def test_with_no_lease_a_routed_envelope_waits_in_the_backlog(cr: ClusterRedis) -> None:
    data, msg_id = _env(cr, 1)
    result = cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender"))
    assert (result.outcome, result.holder) == ("backlogged", "")
    assert cr.run(cr.backlog.length("counter:1")) == 1


def test_a_live_holder_gets_it_on_its_node_channel(cr: ClusterRedis) -> None:
    cr.heartbeat("owner")
    lease = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    inbox = channel_log(cr, channel_for(node_address("owner"), cr.namespace))
    try:
        data, msg_id = _env(cr, 2)
        result = cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender"))
        assert (result.outcome, result.holder, result.epoch) == ("published", "owner", lease.epoch)
        got = inbox.wait(lambda e: e.msg_id == msg_id)
        assert got.to == "counter:1" and got.message == Ping(n=2)
    finally:
        inbox.close()
    assert cr.run(cr.backlog.length("counter:1")) == 0


def test_a_holder_whose_connection_is_gone_finds_it_marked_at_its_next_heartbeat(cr: ClusterRedis) -> None:
    cr.heartbeat("owner")
    lease = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    data, msg_id = _env(cr, 3)  # nobody listens on node:owner
    result = cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender"))
    assert (result.outcome, result.holder) == ("backlogged", "owner")
    renewed = cr.heartbeat("owner", {"counter:1": lease.epoch})
    assert renewed.backlogged == ("counter:1",)
    # One server: the mark is reported once. A cluster has no mark to clear
    # (it lives on another shard): each renewal says so while envelopes wait.
    again = cr.heartbeat("owner", {"counter:1": lease.epoch}).backlogged
    assert again == (("counter:1",) if cr.sharded else ())
    assert cr.run(cr.backlog.drain("counter:1", me="owner", epoch=lease.epoch)) == [data]
    assert cr.run(cr.backlog.drain("counter:1", me="owner", epoch=lease.epoch)) == []
    assert cr.heartbeat("owner", {"counter:1": lease.epoch}).backlogged == ()


def test_only_the_holder_may_drain(cr: ClusterRedis) -> None:
    cr.heartbeat("owner")
    lease = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    data, msg_id = _env(cr, 4)
    cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender"))
    assert cr.run(cr.backlog.drain("counter:1", me="other", epoch=lease.epoch)) is None
    assert cr.run(cr.backlog.drain("counter:1", me="owner", epoch=lease.epoch - 1)) is None
    assert cr.run(cr.backlog.length("counter:1")) == 1


def test_a_full_backlog_refuses_more(cr: ClusterRedis) -> None:
    outcomes = []
    for n in range(cr.backlog.cap + 2):
        data, msg_id = _env(cr, n)
        outcomes.append(cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender")).outcome)
    assert outcomes == ["backlogged"] * cr.backlog.cap + ["full", "full"]
    assert cr.run(cr.backlog.length("counter:1")) == cr.backlog.cap


def test_the_holder_never_routes_to_itself(cr: ClusterRedis) -> None:
    cr.heartbeat("owner")
    lease = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    data, msg_id = _env(cr, 5)
    result = cr.run(cr.backlog.route("counter:1", data, msg_id, me="owner"))
    assert (result.outcome, result.holder, result.epoch) == ("self", "owner", lease.epoch)
    assert cr.run(cr.backlog.length("counter:1")) == 0


def test_a_dead_holder_is_no_holder(cr: ClusterRedis) -> None:
    cr.heartbeat("owner")
    cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    cr.kill("owner")
    data, msg_id = _env(cr, 6)
    assert cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender")).outcome == "backlogged"
    assert cr.sync.smembers(cr.keys.backlogged("owner")) == set()


def test_place_registers_an_address_for_its_first_ranked_node(cr: ClusterRedis) -> None:
    assert cr.run(cr.backlog.place("counter:1", b"args")) is None
    assert cr.sync.get(cr.keys.spec("counter:1")) == b"args"
    assert cr.run(cr.leases.unowned()) == ["counter:1"]
    cr.heartbeat("owner")
    lease = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    assert cr.run(cr.leases.unowned()) == []
    assert cr.run(cr.backlog.place("counter:1", b"other")) == ("owner", lease.epoch)
    assert cr.sync.get(cr.keys.spec("counter:1")) == b"args"


def test_append_keeps_it_for_the_next_owner_whoever_holds_the_lease(cr: ClusterRedis) -> None:
    """A node whose id holds a lease it does not host (its previous
    process's) appends instead of refusing: the next owner drains it."""
    cr.heartbeat("owner")
    old = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    data, msg_id = _env(cr, 9)
    assert cr.run(cr.backlog.route("counter:1", data, msg_id, me="owner")).outcome == "self"
    result = cr.run(cr.backlog.route("counter:1", data, msg_id, me="owner", append=True))
    assert (result.outcome, result.holder, result.epoch) == ("backlogged", "owner", old.epoch)
    cr.sync.delete(cr.keys.lease("counter:1"))  # the old lease lapsed
    cr.heartbeat("next")
    taken = cr.run(cr.leases.claim("counter:1", "next", ttl=5))
    assert taken.won and list(taken.backlog) == [data]  # delivered to the next owner with its claim


def test_a_waiting_backlog_is_news_for_the_process_that_holds_its_lease(cr: ClusterRedis) -> None:
    """Two processes under one node id (a deploy that starts the new one
    before the old one stopped): the one that renews without holding the
    lease neither hears of the waiting backlog nor takes the news from the
    one that does (the simulation found the news taken and dropped: the
    envelopes waited for the next activation, past the dedupe window, and
    were applied twice)."""
    cr.heartbeat("owner")
    lease = cr.run(cr.leases.claim("counter:1", "owner", ttl=5))
    data, msg_id = _env(cr, 7)
    assert cr.run(cr.backlog.route("counter:1", data, msg_id, me="sender")).outcome == "backlogged"
    assert cr.heartbeat("owner").backlogged == ()  # the other process: renews none of it
    assert cr.heartbeat("owner", {"counter:1": lease.epoch}).backlogged == ("counter:1",)
