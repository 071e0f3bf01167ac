"""The real connector against the reference service: HTTP register and
WebSockets, on an I/O loop of its own (no actor involved)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.sessions.datachannel.connector import (
    RegisterError,
    SocketOpenError,
    WebSocketConnector,
)
from actors.runtime.actor import HuddleActor
from actors.runtime.io import IoLoop
from actors.runtime.testkit import TestKit
from actors.runtime.tracing import current_trace, in_trace
from actors.sessions.datachannel.actor import SessionSocketEvents
from ops.dataserver.harness import DataServerProcess

pytestmark = pytest.mark.integration

DEADLINE = 10.0
DEVICE_URL = "https://devices.test/d1"


class Recorder:
    """A socket's events, waitable."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        self._cond = threading.Condition()

    def on_frame(self, text: str) -> None:
        with self._cond:
            self.frames.append(json.loads(text))
            self._cond.notify_all()

    def on_close(self, code: int, reason: str) -> None:
        with self._cond:
            self.closes.append((code, reason))
            self._cond.notify_all()

    def wait(self, predicate, what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, DEADLINE), f"no {what}: frames {self.frames}, closes {self.closes}"


@pytest.fixture
def io() -> Iterator[IoLoop]:
    loop = IoLoop("test-connector-io")
    yield loop
    loop.close()


@pytest.fixture
def connector(io: IoLoop) -> Iterator[WebSocketConnector]:
    c = WebSocketConnector(io, close_timeout=1.0)
    yield c
    c.close()
    io.wait_idle(DEADLINE)


def run(io: IoLoop, coro: Any) -> Any:
    return io.submit(coro).result(DEADLINE)


def open_socket(server: DataServerProcess, connector: WebSocketConnector, io: IoLoop, *,
                authorize: bool = False) -> tuple[Any, Recorder]:
    """Register m1, open its socket (and authorize it: the service then
    sends the buffer state)."""
    reg = run(io, connector.register(server.datachannel_url("m1"), DEVICE_URL, None))
    events = Recorder()
    sock = connector.socket(reg.websocket_url, events)
    run(io, sock.open())
    if authorize:
        sock.send(json.dumps({"id": "a1", "type": "authorization", "data": {"token": "Bearer user"}}))
        events.wait(lambda: events.frames, "buffer state")
    return sock, events


def test_register_returns_the_websocket_url_and_binding(dataserver_session: DataServerProcess,
                                                        connector: WebSocketConnector, io: IoLoop) -> None:
    reg = run(io, connector.register(dataserver_session.datachannel_url("m1"), DEVICE_URL, None))
    assert reg.websocket_url.startswith(dataserver_session.ws_url) and reg.binding in reg.websocket_url
    [request] = dataserver_session.state()["register_requests"]
    assert (request["deviceUrl"], request["token"]) == (DEVICE_URL, "absent")


def test_register_carries_the_token_header(dataserver_session: DataServerProcess, connector: WebSocketConnector,
                                           io: IoLoop) -> None:
    token = dataserver_session.mint_token(session="llm-default-session", meeting="m1")
    run(io, connector.register(dataserver_session.datachannel_url("m1"), DEVICE_URL, token))
    assert dataserver_session.state()["register_requests"][0]["token"] == "valid"


def test_register_failures_carry_the_status(dataserver_session: DataServerProcess, connector: WebSocketConnector,
                                            io: IoLoop) -> None:
    dataserver_session.fault(register_fail_next={"status": 503, "count": 1})
    with pytest.raises(RegisterError) as failed:
        run(io, connector.register(dataserver_session.datachannel_url("m1"), DEVICE_URL, None))
    assert failed.value.status == 503
    dataserver_session.fault(register_omit_websocket_url=1)
    reg = run(io, connector.register(dataserver_session.datachannel_url("m1"), DEVICE_URL, None))
    assert reg.websocket_url == "" and reg.binding


def test_register_with_nobody_listening_has_status_0(connector: WebSocketConnector, io: IoLoop) -> None:
    with DataServerProcess.start() as server:
        url = server.datachannel_url("m1")
    with pytest.raises(RegisterError) as failed:
        run(io, connector.register(url, DEVICE_URL, None))
    assert failed.value.status == 0


def test_socket_opens_exchanges_frames_and_reports_the_close(dataserver_session: DataServerProcess,
                                                             connector: WebSocketConnector, io: IoLoop) -> None:
    sock, events = open_socket(dataserver_session, connector, io, authorize=True)
    assert events.frames[0]["data"]["eventType"] == "mercury.buffer_state"
    sock.send(json.dumps({"id": "p1", "type": "ping"}))
    events.wait(lambda: any(f.get("type") == "pong" for f in events.frames), "pong")
    sock.close(1000, "done (permanent)")
    events.wait(lambda: events.closes, "close")
    assert events.closes == [(1000, "done (permanent)")]
    [record] = dataserver_session.state()["sockets"]
    assert record["close"]["code"] == 1000


def test_an_unknown_binding_is_closed_4400(dataserver_session: DataServerProcess, connector: WebSocketConnector,
                                           io: IoLoop) -> None:
    events = Recorder()
    sock = connector.socket(f"{dataserver_session.ws_url}/v1/socket/nope", events)
    run(io, sock.open())
    events.wait(lambda: events.closes, "close")
    assert events.closes[0][0] == 4400


def test_open_with_nobody_listening_fails_as_1006(connector: WebSocketConnector, io: IoLoop) -> None:
    with DataServerProcess.start() as server:
        url = f"{server.ws_url}/v1/socket/x"
    with pytest.raises(SocketOpenError) as failed:
        run(io, connector.socket(url, Recorder()).open())
    assert failed.value.code == 1006


def test_abort_drops_the_connection_without_a_close_frame(dataserver_session: DataServerProcess,
                                                          connector: WebSocketConnector, io: IoLoop) -> None:
    sock, events = open_socket(dataserver_session, connector, io)
    sock.abort()
    events.wait(lambda: events.closes, "close")
    assert events.closes[0][0] == 1006


def test_close_before_the_open_finishes_closes_it_once_open(dataserver_session: DataServerProcess,
                                                            connector: WebSocketConnector, io: IoLoop) -> None:
    reg = run(io, connector.register(dataserver_session.datachannel_url("m1"), DEVICE_URL, None))
    events = Recorder()
    sock = connector.socket(reg.websocket_url, events)
    opening = io.submit(sock.open())
    sock.close(1000, "done (forced)")
    opening.result(DEADLINE)
    events.wait(lambda: events.closes, "close")
    dataserver_session.wait_for(lambda s: all(not r["open"] for r in s["sockets"]), DEADLINE)


def test_fragmented_messages_are_joined_and_the_close_code_is_reported(connector: WebSocketConnector,
                                                                      io: IoLoop) -> None:
    from websockets.asyncio.server import serve

    async def relay(ws) -> None:
        await ws.send(['{"part": ', '"one"}'])  # one message in two frames
        await ws.send('{"part": "two"}')
        await ws.close(4000, "replaced")

    async def start():
        return await serve(relay, "127.0.0.1", 0, compression=None, ping_interval=None)

    server = run(io, start())
    try:
        port = server.sockets[0].getsockname()[1]
        events = Recorder()
        run(io, connector.socket(f"ws://127.0.0.1:{port}/", events).open())
        events.wait(lambda: events.closes, "close")
        assert events.frames == [{"part": "one"}, {"part": "two"}]
        assert events.closes == [(4000, "replaced")]
    finally:
        server.close()
        run(io, server.wait_closed())


def test_frames_sent_from_many_threads_keep_each_senders_order(dataserver_session: DataServerProcess,
                                                               connector: WebSocketConnector, io: IoLoop) -> None:
    sock, events = open_socket(dataserver_session, connector, io, authorize=True)

    def pinger(prefix: str) -> None:
        for i in range(50):
            sock.send(json.dumps({"id": f"{prefix}{i}", "type": "ping"}))

    threads = [threading.Thread(target=pinger, args=(p,)) for p in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    events.wait(lambda: sum(f.get("type") == "pong" for f in events.frames) == 150, "150 pongs")
    pongs = [f["id"] for f in events.frames if f.get("type") == "pong"]
    for prefix in "xyz":
        assert [p for p in pongs if p.startswith(prefix)] == [f"{prefix}{i}" for i in range(50)]


def test_numbered_pongs_pass_the_sessions_sequence_check_and_every_ack_names_a_sent_frame(
        dataserver_session: DataServerProcess, connector: WebSocketConnector, io: IoLoop) -> None:
    """The session's core (the sans-I/O machine, where the client parses
    server frames) fed with what the real connector reads from the service:
    buffer state, pongs and relayed events come in one numbered run; the
    core's sequence check passes every one of them, pongs included, and the
    acks and pings it writes go back over the same socket."""
    from actors.sessions.datachannel.machine import Authorize, SocketFrame, Transmit
    from actors.runtime.effects import Emit

    from .core_driver import Core

    server = dataserver_session
    core = Core()
    core.claim()
    core.connect(url=server.datachannel_url("m1"))
    [register] = core.registers()
    reg = run(io, connector.register(register.url, register.device_url, None))
    core.registered(ws_url=reg.websocket_url, binding=reg.binding)
    events = Recorder()
    sock = connector.socket(reg.websocket_url, events)
    run(io, sock.open())
    gen = core.gen()
    authorize = core.one(Authorize, core.opened())
    sock.send(json.dumps({"id": authorize.message_id, "type": "authorization", "data": {"token": "Bearer user"},
                          "trackingId": authorize.tracking_id}))
    fed = 0

    def feed_next(what: str) -> dict[str, Any]:
        """Feed the core the next frame read from the service (once it is
        there), and write what the core transmits; returns the frame."""
        nonlocal fed
        events.wait(lambda: len(events.frames) > fed, what)
        frame = events.frames[fed]
        fed += 1
        for transmit in core.of(Transmit, core.internal(SocketFrame(gen=gen, text=json.dumps(frame)))):
            sock.send(json.dumps(transmit.frame))
        return frame

    feed_next("buffer state")  # online: its ack and the first ping go out
    assert core.status.state == "online"
    rounds = 3
    for i in range(rounds):
        assert feed_next(f"pong {i}")["type"] == "pong"
        assert server.send({"data": {"eventType": "relay.event", "round": i}}, meeting="m1") == 1
        assert feed_next(f"relayed event {i}")["data"]["round"] == i
        for transmit in core.of(Transmit, core.fire(core.timer("ping", core.log))):  # the next ping, now
            sock.send(json.dumps(transmit.frame))
    assert feed_next("last pong")["type"] == "pong"

    pongs = [f for f in events.frames if f.get("type") == "pong"]
    assert len(pongs) == rounds + 1 and all("sequenceNumber" in p for p in pongs)
    assert [f["sequenceNumber"] for f in events.frames] == list(range(1, len(events.frames) + 1))
    assert [e for e in core.log if isinstance(e, Emit) and e.event == "sequence-mismatch"] == []
    assert core.state.sequence_mismatches == 0 and core.status.state == "online"
    state = server.wait_for(lambda s: s["counters"].get("acks", 0) == len(events.frames), DEADLINE)
    assert state["counters"].get("acks_unknown", 0) == 0
    assert (state["sockets"][0]["unacked"], state["sockets"][0]["pings"]) == (0, rounds + 1)
    sock.close(1000, "done (permanent)")
    events.wait(lambda: events.closes, "close")


# -- the handshake gate ------------------------------------------------------------------


def test_the_handshake_gate_lets_at_most_its_limit_in_at_once_in_arrival_order() -> None:
    from actors.sessions.datachannel.connector import HandshakeGate

    async def main() -> tuple[list[int], int]:
        gate = HandshakeGate(2)
        inside = 0
        most = 0
        order: list[int] = []
        release = asyncio.Event()

        async def one(i: int) -> None:
            nonlocal inside, most
            async with gate:
                order.append(i)
                inside += 1
                most = max(most, inside)
                await release.wait()
                inside -= 1

        tasks = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.sleep(0)
        assert order == [0, 1] and gate.waiting == 4
        release.set()
        await asyncio.gather(*tasks)
        return order, most

    order, most = asyncio.run(main())
    assert order == [0, 1, 2, 3, 4, 5] and most == 2


def test_a_waiter_cancelled_in_line_or_as_its_turn_comes_loses_no_place() -> None:
    from actors.sessions.datachannel.connector import HandshakeGate

    async def main() -> list[str]:
        gate = HandshakeGate(1)
        got: list[str] = []

        async def one(name: str) -> None:
            async with gate:
                got.append(name)

        await gate.__aenter__()  # the one place is ours
        in_line = asyncio.create_task(one("cancelled in line"))
        handed = asyncio.create_task(one("cancelled as its turn came"))
        last = asyncio.create_task(one("last"))
        await asyncio.sleep(0)  # all three wait, in this order
        in_line.cancel()
        await asyncio.sleep(0)
        await gate.__aexit__(None, None, None)  # the place goes to `handed` ...
        handed.cancel()  # ... cancelled before it runs: the place passes on
        await asyncio.gather(in_line, handed, return_exceptions=True)
        await asyncio.wait_for(last, 5)
        async with gate:  # and the gate is free again afterwards
            got.append("after")
        return got

    assert asyncio.run(main()) == ["last", "after"]


def test_frames_from_a_socket_opened_in_a_trace_reach_the_session_in_no_trace(
        dataserver_session: DataServerProcess, connector: WebSocketConnector, io: IoLoop) -> None:
    """The socket's callbacks run in the context its open ran in, so each
    frame would join the trace of the connect that opened it, for the
    socket's whole life; the session's adapter sends them in none."""
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    got = Recorder()

    class Sink(HuddleActor):
        def on_message(self, message: Any, envelope: Any) -> None:
            got.on_frame(json.dumps({"kind": envelope.kind, "trace": envelope.traceparent}))

    class Watched(SessionSocketEvents):
        seen: list[str | None] = []

        def on_frame(self, text: str) -> None:
            Watched.seen.append(current_trace())
            super().on_frame(text)

    with TestKit() as kit:
        kit.spawn("datachannel:m1/s1", Sink)
        reg = run(io, connector.register(dataserver_session.datachannel_url("m1"), DEVICE_URL, None))
        sock = connector.socket(reg.websocket_url, Watched(kit.node, "datachannel:m1/s1", gen=1))

        async def open_in_trace() -> None:
            with in_trace(trace):
                await sock.open()

        run(io, open_in_trace())
        sock.send(json.dumps({"id": "a1", "type": "authorization", "data": {"token": "Bearer user"}}))
        got.wait(lambda: got.frames, "a frame at the session")
        sock.close(1000, "done (permanent)")
        assert Watched.seen[0] == trace  # the hazard: the socket's callback runs in the open's trace
        assert got.frames[0] == {"kind": "datachannel.io.frame", "trace": None}
