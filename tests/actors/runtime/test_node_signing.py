"""Nodes with a cluster key: signed traffic flows, unsigned or forged
envelopes become dead letters with a typed reason, the actor keeps running,
and the key never shows in events."""

from __future__ import annotations

from actors.runtime.builtin import Echo
from bus.envelope import Codec, Envelope
from bus.messages import Ping, Pong
from bus.signing import HmacSigner

from tests.actors.conftest import DEADLINE, Cluster

KEY = b"cluster-key-for-tests-0123456789"


def test_signed_nodes_talk_and_refuse_unsigned_or_forged_envelopes(cluster: Cluster) -> None:
    cluster.spy.codec = Codec(signer=HmacSigner(KEY))  # events are signed too
    signed = Codec(signer=HmacSigner(KEY))
    server = cluster.node("server", codec=signed)
    client = cluster.node("client", codec=Codec(signer=HmacSigner(KEY)))
    server.spawn("echo:1", Echo)
    assert client.ask("echo:1", Ping(n=1)).get(timeout=DEADLINE) == Pong(n=1)

    intruder = cluster.peer("intruder")
    forged_tag = b"\xc1" + b"\x00" * 32 + Codec().encode(Envelope(to="echo:1", message=Ping(n=2)))
    other_key = Codec(signer=HmacSigner(b"not-the-cluster-key-0123456789ab"))
    intruder.publish("echo:1", Codec().encode(Envelope(to="echo:1", message=Ping(n=3))))
    intruder.publish("echo:1", forged_tag)
    intruder.publish("echo:1", other_key.encode(Envelope(to="echo:1", message=Ping(n=4))))

    unsigned = cluster.spy.wait("dead-letter", address="echo:1", reason="unsigned", node="server")
    bad = [e for e in cluster.spy.events.snapshot() if e.reason == "bad-signature"]
    assert cluster.spy.events.wait_for(
        lambda evs: sum(e.reason == "bad-signature" for e in evs) == 2, DEADLINE), bad
    assert server.counters["dead-letter:unsigned"] == 1 and server.counters["dead-letter:bad-signature"] == 2
    assert client.ask("echo:1", Ping(n=5)).get(timeout=DEADLINE) == Pong(n=5)  # still running
    echo = server.lookup("echo:1")
    assert isinstance(echo, Echo)
    server.wait_idle(DEADLINE)
    assert echo.handled == 2  # only the signed pings reached it
    assert KEY.decode() not in repr(unsigned) + repr(cluster.spy.events.snapshot())


def test_a_node_without_the_key_cannot_reach_signed_actors(cluster: Cluster) -> None:
    cluster.spy.codec = Codec(signer=HmacSigner(KEY))
    server = cluster.node("server", codec=Codec(signer=HmacSigner(KEY)))
    outsider = cluster.node("outsider")
    server.spawn("echo:1", Echo)
    outsider.tell("echo:1", Ping(n=1))
    cluster.spy.wait("dead-letter", address="echo:1", reason="unsigned", node="server")
