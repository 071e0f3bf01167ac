"""Data-channel sessions over real WebSockets against the reference service.

The actor runs in the test kit (its timers on the manual clock: keepalive,
backoff and forced closes happen when the test advances time), the real
connector does the HTTP and WebSocket I/O on the node's loop, and the
reference service (``huddle dataserver``, a separate process) plays the
relay. Waits are on the session's events or on the service's state, each
with a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actors.sessions.contracts.datachannel import (
    FAILED,
    OFFLINE,
    ONLINE,
    PRACTICE_SESSION,
    Connect,
    ConnectOutcome,
    Disconnect,
    RelayedEvent,
    Subscribe,
    Watch,
)
from actors.sessions.contracts.token import TokenRequest
from actors.sessions.datachannel.connector import WebSocketConnector
from actors.runtime.testkit import Probe, TestKit
from ops.dataserver.harness import DataServerProcess

from .session_driver import OWNER, Session, granting_token_actor, messages

pytestmark = pytest.mark.integration

DEADLINE = 15.0
DEFAULT_KEY = "m1/llm-default-session"


@pytest.fixture
def wire(kit: TestKit) -> Iterator[WebSocketConnector]:
    connector = WebSocketConnector(kit.node.io, close_timeout=1.0)
    yield connector
    connector.close()


def wait_state(kit: TestKit, s: Session, state: str) -> None:
    """The next time this session enters ``state``."""
    kit.expect_event("session-state", s.address, reason=state, timeout=DEADLINE)


def connect(kit: TestKit, s: Session, server: DataServerProcess, **kwargs: Any) -> None:
    practice = s.session_id == PRACTICE_SESSION
    kit.inject_message(s.address, Connect(epoch=1, datachannel_url=server.datachannel_url("m1", practice=practice),
                                          **kwargs), sender=OWNER)


def go_online(kit: TestKit, s: Session, server: DataServerProcess, **kwargs: Any) -> None:
    connect(kit, s, server, **kwargs)
    wait_state(kit, s, ONLINE)


def sockets(server: DataServerProcess) -> list[dict[str, Any]]:
    return server.state()["sockets"]


def online_sockets(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in state["sockets"] if r["online"] and r["open"]]


def test_s1_two_connects_one_register_one_socket_both_told(kit: TestKit, wire, owner: Probe,
                                                           dataserver_session: DataServerProcess) -> None:
    s = Session(kit, wire)
    connect(kit, s, dataserver_session, request_id="a")
    connect(kit, s, dataserver_session, request_id="b")
    first, _ = owner.expect_message(ConnectOutcome, timeout=DEADLINE)
    second, _ = owner.expect_message(ConnectOutcome, timeout=DEADLINE)
    assert {(first.request_id, first.online), (second.request_id, second.online)} == {("a", True), ("b", True)}
    state = dataserver_session.state()
    assert state["registers"] == {DEFAULT_KEY: 1} and len(state["sockets"]) == 1
    [record] = state["sockets"]
    assert record["authorized"] and record["online"] and record["tracking_id"].startswith("llm-default-session_")
    assert record["query"]["outboundWireFormat"] == "text" and record["query"]["bufferStates"] == "true"
    # The buffer-state frame was acked and the first ping went out.
    dataserver_session.wait_for(lambda st: st["sockets"][0]["acks"] >= 1 and st["sockets"][0]["pings"] >= 1,
                                DEADLINE)


@pytest.mark.parametrize(
    ("fault", "reconnects"),
    [({"close": {"code": 3050, "reason": "done (permanent)"}}, False),
     ({"close": {"code": 1000, "reason": "Pong not received"}}, True),
     ({"drop": {}}, True),
     ({"close": {"code": 4000, "reason": "replaced"}}, False)],
    ids=["3050-permanent", "1000-pong-not-received", "1006-drop", "4000-replaced"],
)
def test_s8_close_codes_over_the_wire(kit: TestKit, wire, owner: Probe, dataserver_session: DataServerProcess,
                                      fault: dict[str, Any], reconnects: bool) -> None:
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)
    dataserver_session.fault(**{name: {**spec, "meeting": "m1"} for name, spec in fault.items()})
    if reconnects:
        wait_state(kit, s, ONLINE)
        state = dataserver_session.state()
        assert state["registers"] == {DEFAULT_KEY: 2} and len(online_sockets(state)) == 1
    else:
        wait_state(kit, s, OFFLINE)
        kit.advance(60)  # any retry would have happened by now
        assert dataserver_session.state()["registers"] == {DEFAULT_KEY: 1}
        assert s.status().state == OFFLINE


def test_s9_open_refused_4401_refreshes_the_token_and_retries(kit: TestKit, wire, owner: Probe,
                                                              dataserver_session: DataServerProcess) -> None:
    tokens = [dataserver_session.mint_token(meeting="m1") for _ in range(2)]
    token_actor = granting_token_actor(kit, tokens)
    s = Session(kit, wire)
    dataserver_session.fault(refuse_next={"code": 4401, "count": 1, "meeting": "m1"})
    connect(kit, s, dataserver_session, token_auth=True)
    kit.expect_event("session-state", s.address, reason="backoff", timeout=DEADLINE)
    kit.advance(1.0)  # the first backoff step
    wait_state(kit, s, ONLINE)
    assert [m.refresh for m in messages(token_actor, TokenRequest)] == [False, True]
    assert [r["token"] for r in dataserver_session.state()["register_requests"]] == ["valid", "valid"]


def test_s9_open_refused_4403_gives_up(kit: TestKit, wire, owner: Probe, dataserver_session: DataServerProcess) -> None:
    s = Session(kit, wire)
    dataserver_session.fault(refuse_next={"code": 4403, "count": 1, "meeting": "m1"})
    connect(kit, s, dataserver_session, request_id="r")
    wait_state(kit, s, FAILED)
    outcome, _ = owner.expect_message(ConnectOutcome, timeout=DEADLINE)
    assert not outcome.online and "4403" in outcome.reason
    kit.advance(60)
    assert dataserver_session.state()["registers"] == {DEFAULT_KEY: 1}


def test_s11_no_buffer_state_no_online_then_online_and_the_first_ping(kit: TestKit, wire, owner: Probe,
                                                                      dataserver_session: DataServerProcess) -> None:
    dataserver_session.fault(withhold={"buffer_state": True})
    s = Session(kit, wire)
    connect(kit, s, dataserver_session)
    dataserver_session.wait_for(lambda st: any(r["authorized"] for r in st["sockets"]), DEADLINE)
    kit.settle()
    status = s.status()
    assert (status.state, status.phase) == ("connecting", "authorize")
    assert sockets(dataserver_session)[0]["pings"] == 0
    dataserver_session.fault(withhold={"buffer_state": False})
    wait_state(kit, s, ONLINE)
    dataserver_session.wait_for(lambda st: st["sockets"][0]["pings"] == 1, DEADLINE)


def test_s12_no_pong_for_14s_closes_and_reconnects(kit: TestKit, wire, owner: Probe,
                                                   dataserver_session: DataServerProcess) -> None:
    dataserver_session.fault(withhold={"pong": True})
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)
    dataserver_session.wait_for(lambda st: st["sockets"][0]["pings"] == 1, DEADLINE)
    kit.advance(13.5)
    assert s.status().state == ONLINE
    kit.advance(0.5)
    wait_state(kit, s, ONLINE)  # a new socket
    state = dataserver_session.state()
    first = state["sockets"][0]
    assert first["close"]["code"] == 1000 and first["close"]["reason"] == "Pong not received"
    assert state["registers"] == {DEFAULT_KEY: 2} and len(online_sockets(state)) == 1


def test_s12_a_pong_with_another_id_closes_pong_mismatch_and_reconnects(
        kit: TestKit, wire, owner: Probe, dataserver_session: DataServerProcess) -> None:
    dataserver_session.fault(pong_mismatch=True)
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)  # the first ping goes out at once; its pong does not match
    # Lifted only once that pong did its work (not before the ping got there).
    dataserver_session.wait_for(lambda st: st["sockets"][0].get("close") is not None, DEADLINE)
    dataserver_session.fault(pong_mismatch=False)
    wait_state(kit, s, ONLINE)  # a new socket
    state = dataserver_session.state()
    first = state["sockets"][0]
    assert first["close"]["code"] == 1000 and first["close"]["reason"] == "Pong mismatch"
    assert state["registers"][DEFAULT_KEY] >= 2  # (the fault may still have caught the next socket's first ping)


def test_s13_a_skipped_sequence_number_is_reported_and_the_socket_stays(kit: TestKit, wire, owner: Probe,
                                                                        dataserver_session: DataServerProcess) -> None:
    watcher = kit.probe("captions:m1")
    s = Session(kit, wire)
    s.tell(Watch(epoch=1, watcher="captions:m1"))
    go_online(kit, s, dataserver_session)
    dataserver_session.wait_for(lambda st: st["sockets"][0]["acks"] >= 2, DEADLINE)  # buffer state and pong
    last = sockets(dataserver_session)[0]["last_sequence"]
    assert dataserver_session.send({"data": {"eventType": "relay.event", "n": 1}}, sequence_skip=1, meeting="m1") == 1
    event = kit.expect_event("sequence-mismatch", s.address, timeout=DEADLINE)
    assert (event.detail["actual"], event.detail["expected"]) == (last + 2, last + 1)
    relayed, _ = watcher.expect_message(RelayedEvent, timeout=DEADLINE)
    assert relayed.data["n"] == 1 and relayed.session_id == "llm-default-session"
    kit.settle()
    assert s.status().state == ONLINE and online_sockets(dataserver_session.state())


def test_s14_token_auth_on_header_and_subscription_awareness(kit: TestKit, wire, owner: Probe,
                                                             dataserver_session: DataServerProcess) -> None:
    granting_token_actor(kit, [dataserver_session.mint_token(session=PRACTICE_SESSION, meeting="m1")])
    dataserver_session.fault(require_token=True)
    s = Session(kit, wire, PRACTICE_SESSION)
    go_online(kit, s, dataserver_session, token_auth=True)
    state = dataserver_session.state()
    assert [r["token"] for r in state["register_requests"]] == ["valid"]
    [record] = state["sockets"]
    assert record["session"] == PRACTICE_SESSION
    assert record["query"]["subscriptionAwareSubchannels"] == "transcription"


def test_s14_token_auth_off_neither(kit: TestKit, wire, owner: Probe, dataserver_session: DataServerProcess) -> None:
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session, token_auth=False)
    state = dataserver_session.state()
    assert [r["token"] for r in state["register_requests"]] == ["absent"]
    assert "subscriptionAwareSubchannels" not in state["sockets"][0]["query"]


def test_s35_the_socket_drops_and_comes_back_and_transcription_is_subscribed_again(
        kit: TestKit, wire, owner: Probe, dataserver_session: DataServerProcess) -> None:
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)
    s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
    dataserver_session.wait_for(lambda st: st["sockets"][0]["subscriptions"] == ["transcription"], DEADLINE)
    dataserver_session.fault(drop={"meeting": "m1"})
    wait_state(kit, s, ONLINE)
    state = dataserver_session.wait_for(
        lambda st: [r["subscriptions"] for r in online_sockets(st)] == [["transcription"]], DEADLINE)
    assert state["registers"] == {DEFAULT_KEY: 2}


def test_switchover_on_shutdown_moves_make_before_break_and_resubscribes(
        kit: TestKit, wire, owner: Probe, dataserver_session: DataServerProcess) -> None:
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)
    s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
    old = sockets(dataserver_session)[0]["id"]
    assert dataserver_session.shutdown(meeting="m1") == 1
    wait_state(kit, s, ONLINE)  # the switchover note
    state = dataserver_session.wait_for(
        lambda st: [r["subscriptions"] for r in online_sockets(st)] == [["transcription"]]
        and all(not r["open"] for r in st["sockets"] if r["id"] == old), DEADLINE)
    new = online_sockets(state)[0]
    assert new["id"] != old and state["registers"] == {DEFAULT_KEY: 2}
    assert s.status().binding == new["binding"] and s.status().state == ONLINE


def test_forced_close_of_a_permanent_disconnect_when_the_close_frame_never_comes(
        kit: TestKit, owner: Probe, dataserver_session: DataServerProcess) -> None:
    # The connector's own close timeout is far off: the session's 2 s grace
    # (manual clock) is what ends the socket.
    wire = WebSocketConnector(kit.node.io, close_timeout=60.0)
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)
    dataserver_session.fault(withhold={"close_frame": True})
    s.tell(Disconnect(epoch=1, permanent=True, reason="left"))
    assert s.status().state == "closing"
    kit.advance(2.0)
    wait_state(kit, s, OFFLINE)
    dataserver_session.wait_for(lambda st: not st["sockets"][0]["open"], DEADLINE)
    kit.advance(60)
    assert dataserver_session.state()["registers"] == {DEFAULT_KEY: 1} and s.status().state == OFFLINE
    wire.close()


def test_service_restart_sessions_come_back_and_resubscribe(kit: TestKit, wire, dataserver: DataServerProcess) -> None:
    sessions = []
    for meeting in ("r1", "r2", "r3"):
        kit.probe(f"meeting:{meeting}")
        s = Session(kit, wire, owner=f"meeting:{meeting}", meeting_id=meeting)
        s.tell(Subscribe(epoch=1, subchannels=["transcription"]))
        kit.inject_message(s.address, Connect(epoch=1, datachannel_url=dataserver.datachannel_url(meeting)),
                           sender=s.owner)
        wait_state(kit, s, ONLINE)
        sessions.append(s)
    dataserver.restart()
    for s in sessions:
        kit.expect_event("session-state", s.address, reason="connecting", timeout=DEADLINE)
    # Each session retries on its own jittered schedule: move the manual
    # clock on (at most 40 s: several backoff steps) until the service has
    # them all back.
    for _ in range(40):
        if len(online_sockets(dataserver.state())) == 3:
            break
        kit.advance(1.0)
    for s in sessions:
        wait_state(kit, s, ONLINE)
    state = dataserver.wait_for(lambda st: len(online_sockets(st)) == 3
                                and all(r["subscriptions"] == ["transcription"] for r in online_sockets(st)), DEADLINE)
    assert sorted(r["meeting"] for r in online_sockets(state)) == ["r1", "r2", "r3"]


def test_a_stopping_node_closes_its_sockets_with_1001(kit: TestKit, wire, owner: Probe,
                                                      dataserver_session: DataServerProcess) -> None:
    s = Session(kit, wire)
    go_online(kit, s, dataserver_session)
    kit.close()
    state = dataserver_session.wait_for(lambda st: not st["sockets"][0]["open"], DEADLINE)
    assert state["sockets"][0]["close"]["code"] == 1001
