"""A meeting's tree through the test kit: the real shells (meeting and both
data-channel sessions) under a supervisor, a scripted connector, a probe for
the token actor, a manual clock. Locus facts are injected as encoded
envelopes; every wait is on an explicit condition."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts import token as tk
from actors.sessions.datachannel.actor import DataChannelSession
from actors.sessions.datachannel.machine import CloseSocket
from actors.sessions.datachannel.testing import FakeConnector, FakeSocket
from actors.runtime.effects import Send
from actors.sessions.meeting.actor import AWAIT_OWNER, MeetingActor, meeting_address
from actors.runtime.supervisor import Backoff, ChildSpec
from actors.runtime.testkit import Probe, TestKit

M = "m-7"
MEETING = meeting_address(M)
DEFAULT = dc.session_address(M, tk.DEFAULT_SESSION)
PRACTICE = dc.session_address(M, tk.PRACTICE_SESSION)
DC_URL = "http://relay.test/datachannel/m-7"
PS_URL = "http://relay.test/datachannel/m-7/practice"


class BrokenCloseSocket(FakeSocket):
    """A socket whose close raises (once armed), as a buggy transport's would."""

    def close(self, code: int, reason: str) -> None:
        if self.connector.close_raises:  # type: ignore[attr-defined]
            self.close_requests.append((code, reason))
            raise OSError("close failed")
        super().close(code, reason)


class Connector(FakeConnector):
    def __init__(self) -> None:
        super().__init__()
        self.close_raises = False

    def socket(self, url: str, events: Any) -> FakeSocket:
        with self._lock:
            fail = self.open_script.popleft() if self.open_script else None
            sock = BrokenCloseSocket(self, url, events, fail)
            self.sockets.append(sock)
        return sock



@pytest.fixture
def kit() -> Iterator[TestKit]:
    with TestKit() as k:
        yield k


@pytest.fixture
def token(kit: TestKit) -> Probe:
    return kit.probe(tk.token_address(M))


def tree(kit: TestKit, connector: Connector) -> None:
    sessions = [ChildSpec(dc.session_address(M, s), DataChannelSession,
                          (M, s, "https://devices.test/d1", "user-token", connector),
                          {"seed": 1, "await_owner": AWAIT_OWNER})
                for s in (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)]
    kit.supervise(f"meeting-tree:{M}", [*sessions, ChildSpec(MEETING, MeetingActor, (M,), {"token_auth": False})],
                  backoff=Backoff(base=0.01, jitter=False), intensity=10)


def fact(kit: TestKit, message: Any) -> None:
    kit.inject_message(MEETING, message, sender="app:1")
    kit.settle()


def online(kit: TestKit, sock: FakeSocket) -> None:
    sock.buffer_state()
    kit.settle()


def status(kit: TestKit, address: str) -> dc.SessionStatus:
    return kit.ask(address, dc.GetStatus()).get(timeout=5)


def webinar_panelist(kit: TestKit, connector: Connector) -> tuple[FakeSocket, FakeSocket]:
    """Both sessions online: returns (default socket, practice socket)."""
    tree(kit, connector)
    fact(kit, mt.Joined(locus_url="http://svc/locus/m-7", self_id="me", datachannel_url=DC_URL,
                        practice_datachannel_url=PS_URL, panelist=True, practice_session_on=True))
    default = connector.last
    online(kit, default)
    practice = connector.last
    assert practice is not default
    online(kit, practice)
    assert status(kit, PRACTICE).state == dc.ONLINE
    return default, practice


def incarnation(kit: TestKit, address: str) -> int:
    return kit.node.lookup(address).ctx.incarnation  # type: ignore[union-attr]


def restart(kit: TestKit, address: str, before: int) -> None:
    """Wait for the crash of ``address`` and its restart as ``before + 1``."""
    kit.expect_event("crashed", address)
    kit.advance(0.5)  # the supervisor's restart backoff (well below AWAIT_OWNER)
    kit.expect_event("started", address)
    kit.settle()
    assert incarnation(kit, address) == before + 1


# -- a close that raises ------------------------------------------------------------------------


def test_a_close_that_raises_while_a_demoted_panelist_disconnects_counts_as_closed(kit, token) -> None:
    connector = Connector()
    _, practice = webinar_panelist(kit, connector)
    registers = len(connector.registers)
    connector.close_raises = True
    fact(kit, mt.RolesChanged(panelist=False))
    kit.expect_event("close-failed", PRACTICE)
    assert practice.close_requests == [(1000, "done (permanent)")] and practice.aborted
    assert kit.events_named("crashed", PRACTICE) == []
    assert status(kit, PRACTICE).state == dc.OFFLINE
    kit.advance(10.0)  # no reconnect ever comes
    assert len(connector.registers) == registers and status(kit, PRACTICE).state == dc.OFFLINE


def test_a_crash_between_the_effects_of_a_disconnect_restarts_disconnected(kit, token) -> None:
    connector = Connector()
    _, practice = webinar_panelist(kit, connector)
    registers = len(connector.registers)
    actor = kit.node.lookup(PRACTICE)
    before = incarnation(kit, PRACTICE)
    perform = actor.perform

    def crash_on_close(effect: Any) -> None:
        if isinstance(effect, CloseSocket):
            raise RuntimeError("injected: a bug between two effects")
        perform(effect)

    actor.perform = crash_on_close  # type: ignore[method-assign]
    fact(kit, mt.RolesChanged(panelist=False))
    restart(kit, PRACTICE, before)
    kit.advance(AWAIT_OWNER + 1)  # past any wait for the owner
    assert len(connector.registers) == registers
    after = status(kit, PRACTICE)
    assert after.datachannel_url == "" and after.state in (dc.IDLE, dc.OFFLINE) and not after.awaiting_owner


def test_a_session_restored_from_an_older_checkpoint_follows_its_owner_not_the_checkpoint(kit, token) -> None:
    connector = Connector()
    _, practice = webinar_panelist(kit, connector)
    stale = kit.node.checkpoints.load(PRACTICE)  # wants the practice URL
    fact(kit, mt.RolesChanged(panelist=False))
    kit.settle()
    registers = len(connector.registers)
    kit.node.checkpoints.save(PRACTICE, 0, stale)  # the disconnect's write is lost
    actor = kit.node.lookup(PRACTICE)
    before = incarnation(kit, PRACTICE)
    actor.step = lambda *a: (_ for _ in ()).throw(RuntimeError("injected crash"))  # type: ignore[method-assign]
    kit.inject_message(PRACTICE, dc.GetStatus(), sender="app:1")
    restart(kit, PRACTICE, before)
    kit.advance(AWAIT_OWNER + 1)
    assert len(connector.registers) == registers  # never re-opened on the stale target
    assert status(kit, PRACTICE).datachannel_url == ""


def test_a_meeting_that_crashed_before_its_disconnect_went_out_re_asserts_it_after_restarting(kit, token) -> None:
    connector = Connector()
    default, practice = webinar_panelist(kit, connector)
    registers = len(connector.registers)
    actor = kit.node.lookup(MEETING)
    before = incarnation(kit, MEETING)
    perform = actor.perform

    def crash_before_disconnect(effect: Any) -> None:
        if isinstance(effect, Send) and isinstance(effect.message, dc.Disconnect):
            raise RuntimeError("injected: crashed after the checkpoint, before the command")
        perform(effect)

    actor.perform = crash_before_disconnect  # type: ignore[method-assign]
    fact(kit, mt.RolesChanged(panelist=False))
    restart(kit, MEETING, before)
    kit.advance(AWAIT_OWNER + 1)
    assert practice.close_requests == [(1000, "done (permanent)")]
    assert status(kit, PRACTICE).datachannel_url == "" and status(kit, PRACTICE).state == dc.OFFLINE
    assert len(connector.registers) == registers
    assert status(kit, DEFAULT).state == dc.ONLINE and default.close_requests == []


# -- sessions are independent -----------------------------------------------------------------------


def test_a_transient_drop_of_the_default_leaves_the_practice_socket_untouched(kit, token) -> None:
    connector = Connector()
    default, practice = webinar_panelist(kit, connector)
    practice_registers = [r for r in connector.registers if r.url == PS_URL]
    default.close_from_server(1006)
    kit.settle()
    assert status(kit, DEFAULT).state in (dc.CONNECTING, dc.BACKOFF)
    online(kit, connector.last)
    assert status(kit, DEFAULT).state == dc.ONLINE
    assert practice.close_requests == [] and not practice.aborted and not practice.closed
    assert [r for r in connector.registers if r.url == PS_URL] == practice_registers
    assert status(kit, PRACTICE).state == dc.ONLINE


# -- facts are idempotent ------------------------------------------------------------------------------


def test_repeated_facts_reach_no_child(kit, token) -> None:
    connector = Connector()
    tree(kit, connector)
    joined = mt.Joined(locus_url="http://svc/locus/m-7", self_id="me", datachannel_url=DC_URL, in_lobby=True)
    fact(kit, joined)
    fact(kit, mt.Admitted())
    kit.settle()
    configures = [m for m, _ in token.received if isinstance(m, tk.TokenConfigure)]
    registers = len(connector.registers)
    for repeat in (mt.Admitted(), mt.Admitted(), mt.CaptionsChanged(on=False), mt.DatachannelUrlChanged(url=DC_URL),
                   mt.Joined(locus_url="http://svc/locus/m-7", self_id="me", datachannel_url=DC_URL)):
        fact(kit, repeat)
    kit.settle()
    assert [m for m, _ in token.received if isinstance(m, tk.TokenConfigure)] == configures
    assert len(connector.registers) == registers == 1


# -- what reaches the meeting's core ------------------------------------------------------------


def test_the_meetings_own_timer_from_anyone_else_is_refused_and_an_unknown_kind_is_a_dead_letter(kit, token) -> None:
    from actors.sessions.meeting.machine import PracticeTokenRetry
    from bus.messages import Ping

    tree(kit, Connector())
    kit.settle()
    kit.inject_message(MEETING, PracticeTokenRetry(generation=1), sender="app:1")
    refused = kit.expect_event("bad-input", MEETING, reason="not-from-self")
    assert refused.detail["kind"] == PracticeTokenRetry.KIND
    kit.inject_message(MEETING, Ping(n=1), sender="app:1")
    kit.expect_event("dead-letter", MEETING, reason="unhandled-kind")
    assert not kit.events_named("crashed", MEETING)
    assert kit.node.lookup(MEETING) is not None
