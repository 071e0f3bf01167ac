"""A meeting's tree converges to what the facts want, over real parts: a
node on a real redis-server, real WebSockets to the reference data-channel
service, its real token endpoint.

Faults are real: a connector wrapper whose socket ``close()`` raises (as a
broken transport's would), actors that crash between two effects and are
restarted by their supervisor, a socket the service drops without a close
frame (1006). Waits are on the service's own state and on the actors'
incarnations, with deadlines; nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.sessions.context import Secret
from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from actors.sessions.datachannel.connector import DataChannelSocket, SocketEvents, WebSocketConnector
from actors.sessions.datachannel.machine import CloseSocket
from actors.runtime.effects import Send
from actors.sessions.meeting.actor import MeetingActor, MeetingServices, meeting_address, start_meeting
from actors.runtime.node import Node
from actors.sessions.token.http import HttpTokenEndpoint
from bus.embedded import EmbeddedRedis
from bus.messages import Message
from bus.redis_transport import RedisTransport
from ops.dataserver.harness import DataServerProcess
from tests.waiting import wait_until

from .conftest import DEADLINE, unique

pytestmark = pytest.mark.integration

USER_TOKEN = "user-access-token-convergence"


class RaisingSocket:
    """A real socket whose ``close()`` raises while its connector says so
    (before anything is closed: the socket stays open on the wire)."""

    def __init__(self, inner: DataChannelSocket, connector: FaultyConnector, url: str) -> None:
        self._inner = inner
        self._connector = connector
        self.url = url

    async def open(self) -> None:
        await self._inner.open()

    def send(self, text: str) -> None:
        self._inner.send(text)

    def close(self, code: int, reason: str) -> None:
        if self._connector.close_raises.is_set():
            self._connector.raised += 1
            raise OSError("injected: close failed")
        self._inner.close(code, reason)

    def abort(self) -> None:
        self._inner.abort()


class FaultyConnector:
    """The real connector, with ``close()`` failing on demand."""

    def __init__(self, inner: WebSocketConnector) -> None:
        self._inner = inner
        self.close_raises = threading.Event()
        self.raised = 0

    async def register(self, url: str, device_url: str, token: str | None) -> Any:
        return await self._inner.register(url, device_url, token)

    def socket(self, url: str, events: SocketEvents) -> RaisingSocket:
        return RaisingSocket(self._inner.socket(url, events), self, url)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def node(redis_server: EmbeddedRedis) -> Iterator[Node]:
    node_id = unique("converge")
    transport = RedisTransport(redis_server.url, name=node_id)
    node = Node(transport, node_id=node_id).start()
    assert transport.wait_subscribed(DEADLINE)
    connector = FaultyConnector(WebSocketConnector(node.io))
    node.meeting_services = MeetingServices(  # type: ignore[attr-defined]
        connector=connector, token_endpoint=HttpTokenEndpoint(),  # type: ignore[arg-type]
        device_url="https://devices.example/d-1")
    try:
        yield node
    finally:
        for address in [a for a in node.addresses() if a.startswith("meeting-tree:")]:
            node.stop_actor(address, release=True)
        node.meeting_services.close(node)  # type: ignore[attr-defined]
        node.shutdown()


def connector(node: Node) -> FaultyConnector:
    return node.meeting_services.connector  # type: ignore[attr-defined,no-any-return]


def sockets(state: dict[str, Any], meeting: str, session: str, *, online: bool = True) -> list[dict[str, Any]]:
    return [s for s in state["sockets"] if s["meeting"] == meeting and s["session"] == session
            and s["open"] and (s["online"] or not online)]


def registers(state: dict[str, Any], meeting: str, session: str) -> int:
    return sum(1 for r in state["register_requests"] if r.get("meeting") == meeting and r.get("session") == session)


def webinar_panelist(node: Node, ds: DataServerProcess) -> tuple[str, dict[str, Any]]:
    """A meeting whose panelist has both sessions online and subscribed."""
    meeting = unique("conv")
    start_meeting(node, meeting, node.meeting_services, Secret(USER_TOKEN))  # type: ignore[attr-defined]
    node.tell(meeting_address(meeting), mt.Joined(
        locus_url=ds.locus_url(meeting), self_id="self-1", datachannel_url=ds.datachannel_url(meeting),
        practice_datachannel_url=ds.datachannel_url(meeting, practice=True), panelist=True,
        practice_session_on=True, captions_on=True), sender="app:test")
    state = ds.wait_for(lambda s: all(
        any("transcription" in x["subscriptions"] for x in sockets(s, meeting, session))
        for session in (DEFAULT_SESSION, PRACTICE_SESSION)), DEADLINE)
    return meeting, state


def incarnation(node: Node, address: str) -> int:
    actor = node.lookup(address)
    assert actor is not None, address
    return actor.ctx.incarnation


def crash(node: Node, address: str) -> int:
    """Make the actor at ``address`` raise on its next message, send it one;
    returns its incarnation before the crash."""
    before = incarnation(node, address)
    actor = node.lookup(address)
    assert actor is not None
    actor.step = lambda *a: (_ for _ in ()).throw(RuntimeError("injected crash"))  # type: ignore[method-assign]
    # A kind its core takes (the shell base hands nothing else to step).
    nudge = mt.Unsubscribe(address="app:test") if isinstance(actor, MeetingActor) else dc.GetStatus()
    node.tell(address, nudge, sender="app:test")
    return before


def restarted(node: Node, address: str, before: int) -> None:
    wait_until(lambda: (a := node.lookup(address)) is not None and a.ctx.incarnation > before,
               f"{address} restarted", DEADLINE)


def status(node: Node, address: str) -> dc.SessionStatus:
    answer = node.ask(address, dc.GetStatus()).get(timeout=DEADLINE)
    assert isinstance(answer, dc.SessionStatus)
    return answer


def settled_disconnected(node: Node, ds: DataServerProcess, meeting: str, practice_registers: int) -> None:
    """The practice session is disconnected and stays so: no open socket,
    no new register, nothing wanted, nothing in flight; the default is
    untouched and online."""
    practice = dc.session_address(meeting, PRACTICE_SESSION)
    wait_until(lambda: (s := status(node, practice)).state in (dc.OFFLINE, dc.IDLE) and not s.awaiting_owner
               and s.datachannel_url == "" and s.phase == "", "practice session disconnected", DEADLINE)
    assert node.wait_idle(DEADLINE)
    state = ds.wait_for(lambda s: sockets(s, meeting, PRACTICE_SESSION, online=False) == [], DEADLINE)
    assert registers(state, meeting, PRACTICE_SESSION) == practice_registers
    assert len(sockets(state, meeting, DEFAULT_SESSION)) == 1
    assert status(node, dc.session_address(meeting, DEFAULT_SESSION)).state == dc.ONLINE


# -- a close that raises, and crashes between effects ------------------------------------------------


def test_a_close_raising_mid_disconnect_converges_to_disconnected_also_after_restarts(
        node: Node, dataserver_session: DataServerProcess) -> None:
    ds = dataserver_session
    meeting, state = webinar_panelist(node, ds)
    practice_registers = registers(state, meeting, PRACTICE_SESSION)
    connector(node).close_raises.set()
    node.tell(meeting_address(meeting), mt.RolesChanged(panelist=False), sender="app:test")
    wait_until(lambda: connector(node).raised >= 1, "the practice close raised", DEADLINE)
    settled_disconnected(node, ds, meeting, practice_registers)
    # Both the session and its owner restart: neither brings the practice
    # session back, whichever checkpoint each starts from.
    connector(node).close_raises.clear()
    practice = dc.session_address(meeting, PRACTICE_SESSION)
    restarted(node, practice, crash(node, practice))
    restarted(node, meeting_address(meeting), crash(node, meeting_address(meeting)))
    settled_disconnected(node, ds, meeting, practice_registers)


def test_a_crash_between_the_effects_of_a_disconnect_restarts_disconnected(
        node: Node, dataserver_session: DataServerProcess) -> None:
    ds = dataserver_session
    meeting, state = webinar_panelist(node, ds)
    practice_registers = registers(state, meeting, PRACTICE_SESSION)
    practice = dc.session_address(meeting, PRACTICE_SESSION)
    actor = node.lookup(practice)
    assert actor is not None
    before = actor.ctx.incarnation
    perform = actor.perform

    def crash_on_close(effect: Any) -> None:
        if isinstance(effect, CloseSocket):
            raise RuntimeError("injected: a bug between two effects")
        perform(effect)

    actor.perform = crash_on_close  # type: ignore[method-assign]
    node.tell(meeting_address(meeting), mt.RolesChanged(panelist=False), sender="app:test")
    restarted(node, practice, before)
    settled_disconnected(node, ds, meeting, practice_registers)


def test_a_meeting_that_crashed_before_its_disconnect_went_out_re_asserts_it(
        node: Node, dataserver_session: DataServerProcess) -> None:
    ds = dataserver_session
    meeting, state = webinar_panelist(node, ds)
    practice_registers = registers(state, meeting, PRACTICE_SESSION)
    address = meeting_address(meeting)
    actor = node.lookup(address)
    assert actor is not None
    before = actor.ctx.incarnation
    perform = actor.perform

    def crash_before_disconnect(effect: Any) -> None:
        if isinstance(effect, Send) and isinstance(effect.message, dc.Disconnect):
            raise RuntimeError("injected: crashed after the checkpoint, before the command")
        perform(effect)

    actor.perform = crash_before_disconnect  # type: ignore[method-assign]
    node.tell(address, mt.RolesChanged(panelist=False), sender="app:test")
    restarted(node, address, before)
    settled_disconnected(node, ds, meeting, practice_registers)


# -- sessions are independent ---------------------------------------------------------------------------


def test_a_transient_drop_of_the_default_session_leaves_the_practice_socket_untouched(
        node: Node, dataserver_session: DataServerProcess) -> None:
    ds = dataserver_session
    meeting, state = webinar_panelist(node, ds)
    [practice_socket] = sockets(state, meeting, PRACTICE_SESSION)
    [default_socket] = sockets(state, meeting, DEFAULT_SESSION)
    practice_registers = registers(state, meeting, PRACTICE_SESSION)
    dropped = ds.fault(drop={"meeting": meeting, "session": DEFAULT_SESSION})
    assert dropped["affected"]["drop"] == 1
    # The default comes back on a new socket, subscribed again.
    state = ds.wait_for(lambda s: any(x["id"] != default_socket["id"] and "transcription" in x["subscriptions"]
                                      for x in sockets(s, meeting, DEFAULT_SESSION)), DEADLINE)
    assert node.wait_idle(DEADLINE)
    state = ds.state()
    assert [x["id"] for x in sockets(state, meeting, PRACTICE_SESSION)] == [practice_socket["id"]]
    assert registers(state, meeting, PRACTICE_SESSION) == practice_registers
    practice_now = next(x for x in state["sockets"] if x["id"] == practice_socket["id"])
    assert practice_now["open"] and practice_now["close"] is None
    assert status(node, dc.session_address(meeting, PRACTICE_SESSION)).counters["reconnects"] == 0


# -- facts are idempotent -------------------------------------------------------------------------------


def test_repeated_admissions_make_one_token_fetch_and_one_register(
        node: Node, dataserver_session: DataServerProcess) -> None:
    ds = dataserver_session
    meeting = unique("conv")
    start_meeting(node, meeting, node.meeting_services, Secret(USER_TOKEN))  # type: ignore[attr-defined]
    joined = mt.Joined(locus_url=ds.locus_url(meeting), self_id="self-1", datachannel_url=ds.datachannel_url(meeting),
                       in_lobby=True)
    facts: list[Message] = [joined, joined, mt.Admitted(), mt.Admitted(), mt.Admitted()]
    for message in facts:
        node.tell(meeting_address(meeting), message, sender="app:test")
    ds.wait_for(lambda s: len(sockets(s, meeting, DEFAULT_SESSION)) == 1, DEADLINE)
    for message in (mt.Admitted(), mt.Admitted()):
        node.tell(meeting_address(meeting), message, sender="app:test")
    assert node.wait_idle(DEADLINE)
    state = ds.state()
    fetches = [r for r in state["token_requests"] if r.get("meeting") == meeting]
    assert len(fetches) == 1, fetches
    assert registers(state, meeting, DEFAULT_SESSION) == 1
    assert len([x for x in state["sockets"] if x["meeting"] == meeting]) == 1
