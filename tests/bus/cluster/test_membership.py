"""The live-node view: joins, expiry by ttl, clean leaves, hosts per kind."""

from __future__ import annotations

from bus.cluster.membership import Member, Membership
from bus.cluster.messages import NodeHeartbeat


def view() -> Membership:
    me = Member(node="me", capacity=1.0, kinds=frozenset({"counter"}), draining=False, ttl=2.0, last_seen=0.0)
    return Membership(me=me, default_ttl=2.0)


def test_a_first_heartbeat_is_a_join_and_later_ones_are_not() -> None:
    v = view()
    assert v.observe(NodeHeartbeat(node="n2", ttl=2.0), now=0.0)
    assert not v.observe(NodeHeartbeat(node="n2", ttl=2.0), now=1.0)
    assert not v.observe(NodeHeartbeat(node="me"), now=1.0)  # we know we are here
    assert v.live == {"me", "n2"}


def test_a_node_is_gone_after_its_own_ttl_without_a_heartbeat() -> None:
    v = view()
    v.observe(NodeHeartbeat(node="quick", ttl=1.0), now=0.0)
    v.observe(NodeHeartbeat(node="slow", ttl=5.0), now=0.0)
    assert v.expire(now=1.0) == []
    assert v.expire(now=1.5) == ["quick"]
    assert v.expire(now=5.5) == ["slow"]
    assert v.live == {"me"}


def test_a_heartbeat_without_a_ttl_gets_the_default() -> None:
    v = view()
    v.observe(NodeHeartbeat(node="n2"), now=0.0)
    assert v.expire(now=1.9) == [] and v.expire(now=2.1) == ["n2"]


def test_a_clean_leave_removes_at_once() -> None:
    v = view()
    v.observe(NodeHeartbeat(node="n2"), now=0.0)
    assert v.left("n2") and not v.left("n2")
    assert not v.is_live("n2")


def test_hosts_are_the_live_non_draining_nodes_with_that_kind() -> None:
    v = view()
    v.observe(NodeHeartbeat(node="counting", kinds=["counter"], capacity=2.0), now=0.0)
    v.observe(NodeHeartbeat(node="draining", kinds=["counter"], draining=True), now=0.0)
    v.observe(NodeHeartbeat(node="meetings", kinds=["meeting"]), now=0.0)
    v.observe(NodeHeartbeat(node="empty", kinds=["counter"], capacity=0.0), now=0.0)
    assert v.hosts_for("counter") == {"me": 1.0, "counting": 2.0}
    assert v.hosts_for("meeting") == {"meetings": 1.0}
    assert v.hosts_for("audio") == {}
