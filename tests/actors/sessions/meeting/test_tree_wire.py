"""A meeting's whole tree on a real node: real Redis, real WebSockets
against the reference data-channel service, real token endpoint.

Waits are on the service's own state (what it saw on the wire) with
deadlines; nothing sleeps and nothing is timed.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.runtime.actor import HuddleActor
from actors.sessions.context import Secret
from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION, token_address
from actors.sessions.meeting.actor import meeting_address, start_meeting
from actors.runtime.node import Node
from bus.envelope import Envelope
from bus.messages import Message
from ops.dataserver.harness import DataServerProcess
from tests.actors.sessions.meeting.conftest import M, sockets
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

USER_TOKEN = "user-access-token-XYZ"


def start(node: Node, meeting_id: str = M, **options: Any) -> str:
    return start_meeting(node, meeting_id, node.meeting_services, Secret(USER_TOKEN), **options)  # type: ignore[attr-defined]


def joined(ds: DataServerProcess, **kw: Any) -> mt.Joined:
    return mt.Joined(locus_url=ds.locus_url(M), self_id="self-1", datachannel_url=ds.datachannel_url(M),
                     practice_datachannel_url=ds.datachannel_url(M, practice=True), **kw)


def tell(node: Node, message: Message, to: str = meeting_address(M), sender: str = "app:test") -> None:
    node.tell(to, message, sender=sender)


def test_webinar_panelist_with_captions_gets_both_sessions_online_and_subscribed(node: Node, dataserver) -> None:
    address = start(node)
    tell(node, joined(dataserver, captions_on=True))
    dataserver.wait_for(lambda s: any("transcription" in x["subscriptions"] for x in sockets(s)), 15)
    tell(node, mt.PracticeSessionChanged(on=True))
    tell(node, mt.RolesChanged(panelist=True))
    state = dataserver.wait_for(
        lambda s: any("transcription" in x["subscriptions"] for x in sockets(s, session=PRACTICE_SESSION)), 15)
    # One socket each; the token endpoint was asked for the practice token.
    assert len(sockets(state)) == 1 and len(sockets(state, session=PRACTICE_SESSION)) == 1
    assert any(r["session"] == PRACTICE_SESSION and r["status"] == 200 for r in state["token_requests"])
    assert USER_TOKEN not in repr(state.get("token_requests"))
    assert address == meeting_address(M)


def test_s16_a_meeting_that_does_not_own_the_session_cannot_disconnect_it(node: Node, dataserver) -> None:
    events: list[Any] = []
    node.add_event_listener(events.append)
    start(node)
    tell(node, joined(dataserver))
    dataserver.wait_for(lambda s: len(sockets(s)) == 1, 15)
    # Meeting B (an incoming call, not joined) reaches for A's session.
    tell(node, dc.Disconnect(epoch=1, permanent=True, reason="incoming call cleanup"),
         to=dc.session_address(M, DEFAULT_SESSION), sender="meeting:call-b")
    assert node.wait_idle(10)
    refusals = [e for e in events if e.event == "refused-not-owner"]
    assert refusals and refusals[0].address == dc.session_address(M, DEFAULT_SESSION)
    state = dataserver.state()
    assert len(sockets(state)) == 1
    assert all(s["close"] is None for s in state["sockets"] if s["meeting"] == M)


@pytest.mark.parametrize("child", ["token", "default", "practice", "meeting"])
def test_a_crashed_child_comes_back_to_the_same_wanted_state_without_duplicates(node: Node, dataserver,
                                                                              child: str) -> None:
    start(node)
    tell(node, joined(dataserver, captions_on=True, panelist=True, practice_session_on=True))
    ready = dataserver.wait_for(lambda s: all(
        any("transcription" in x["subscriptions"] for x in sockets(s, session=sess))
        for sess in (DEFAULT_SESSION, PRACTICE_SESSION)), 20)
    before = {x["id"] for x in ready["sockets"] if x["open"]}
    target = {"token": token_address(M), "default": dc.session_address(M, DEFAULT_SESSION),
              "practice": dc.session_address(M, PRACTICE_SESSION), "meeting": meeting_address(M)}[child]
    actor = node.lookup(target)
    assert actor is not None
    incarnation = actor.ctx.incarnation
    crash(node, target)
    wait_until(lambda: (a := node.lookup(target)) is not None and a.ctx.incarnation > incarnation,
               f"{target} restarted", 15)

    def settled(s: dict[str, Any]) -> bool:
        return all(len(sockets(s, session=sess)) == 1
                   and "transcription" in sockets(s, session=sess)[0]["subscriptions"]
                   for sess in (DEFAULT_SESSION, PRACTICE_SESSION))

    state = dataserver.wait_for(settled, 20)
    after = {x["id"] for x in state["sockets"] if x["open"]}
    if child in ("token", "meeting"):
        assert after == before  # the sessions kept their sockets
    # Exactly one watcher (the meeting) per session: events are bound once.
    for sess in (DEFAULT_SESSION, PRACTICE_SESSION):
        status = node.ask(dc.session_address(M, sess), dc.GetStatus()).get(timeout=10)
        assert status.watchers == [meeting_address(M)]


def crash(node: Node, address: str) -> None:
    """Make the actor at ``address`` raise in its handler (a crash the
    runtime reports to its supervisor)."""
    actor = node.lookup(address)
    assert actor is not None

    def boom(message: Message, envelope: Envelope) -> Any:
        raise RuntimeError("injected crash")

    actor.on_message = boom  # type: ignore[method-assign]
    actor.step = lambda *a: (_ for _ in ()).throw(RuntimeError("injected crash"))  # type: ignore[method-assign]
    node.tell(address, dc.GetStatus(), sender="app:test")


class Collector(HuddleActor):
    """An application's address: records what the meeting tells it."""

    def __init__(self, ctx, received: list[Message]) -> None:
        super().__init__(ctx)
        self.received = received

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        self.received.append(message)


def test_relayed_events_reach_the_subscriber_tagged_by_session(node: Node, dataserver) -> None:
    received: list[Message] = []
    node.spawn("app:captions", Collector, received)
    start(node)
    tell(node, mt.Subscribe(address="app:captions"))
    tell(node, joined(dataserver, panelist=True, practice_session_on=True))
    dataserver.wait_for(lambda s: len(sockets(s, session=PRACTICE_SESSION)) == 1, 20)
    assert dataserver.send({"data": {"eventType": "relay.event", "caption": "hello practice"}},
                           meeting=M, session=PRACTICE_SESSION) == 1
    assert dataserver.send({"data": {"eventType": "relay.event", "caption": "hello all"}},
                           meeting=M, session=DEFAULT_SESSION) == 1
    wait_until(lambda: len([m for m in received if isinstance(m, mt.RelayedEvent)]) == 2, "two relayed events", 15)
    relayed = {m.session: m.data.get("caption") for m in received if isinstance(m, mt.RelayedEvent)}
    assert relayed == {PRACTICE_SESSION: "hello practice", DEFAULT_SESSION: "hello all"}
    phases = [m.phase for m in received if isinstance(m, mt.MeetingState)]
    assert phases[-1] == "admitted"


def test_start_meeting_returns_once_every_address_of_the_tree_is_subscribed_on_the_bus(node: Node) -> None:
    # Pub/sub drops what is published to a channel before its subscription
    # is confirmed: the first locus event must not be sent into that gap.
    address = start(node, "reach-1")
    confirmed = node.transport.subscribed_channels  # type: ignore[attr-defined]
    tree = [address, dc.session_address("reach-1", DEFAULT_SESSION), dc.session_address("reach-1", PRACTICE_SESSION),
            token_address("reach-1")]
    assert [a for a in tree if a not in confirmed] == []
