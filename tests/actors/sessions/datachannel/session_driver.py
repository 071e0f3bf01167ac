"""Drive one data-channel session actor as its owner would, through the
test kit (encoded envelopes in, probes for the owner, token actor, watchers)."""

from __future__ import annotations

from typing import Any

from actors.sessions.contracts.datachannel import (
    DEFAULT_SESSION,
    ONLINE,
    PRACTICE_SESSION,
    ClaimSession,
    Connect,
    GetStatus,
    SessionStatus,
    session_address,
)
from actors.sessions.contracts.token import TokenGranted, TokenRequest
from actors.sessions.datachannel.actor import DataChannelSession
from actors.sessions.datachannel.connector import DataChannelConnector
from actors.runtime.supervisor import Backoff, ChildSpec
from actors.runtime.testkit import Probe, TestKit
from bus.envelope import Envelope
from bus.messages import Message

MEETING = "m1"
OWNER = "meeting:m1"
TOKEN_ACTOR = "token:m1"
DC_URL = "http://relay.test/datachannel/m1"
PRACTICE_URL = "http://relay.test/datachannel/m1/practice"
DEVICE_URL = "https://devices.test/d1"
USER_TOKEN = "user-access-token-secret"
DC_TOKEN = "dc-token-secret"
DEFAULT = session_address(MEETING, DEFAULT_SESSION)
PRACTICE = session_address(MEETING, PRACTICE_SESSION)


class Session:
    """One session actor under test, with the owner's hands."""

    def __init__(self, kit: TestKit, connector: DataChannelConnector, session_id: str = DEFAULT_SESSION,
                 *, meeting_id: str = MEETING, owner: str = OWNER, claim: bool = True, supervised: bool = False,
                 **options: Any) -> None:
        self.kit = kit
        self.fake = connector
        self.session_id = session_id
        self.address = session_address(meeting_id, session_id)
        self.owner = owner
        args = (meeting_id, session_id, DEVICE_URL, USER_TOKEN, connector)
        kwargs = {"seed": 1, **options}
        if supervised:
            kit.supervise(f"sup:{meeting_id}.{session_id}", [ChildSpec(self.address, DataChannelSession, args, kwargs)],
                          backoff=Backoff(base=0.01, jitter=False), intensity=3)
        else:
            kit.spawn(self.address, DataChannelSession, *args, **kwargs)
        if claim:
            self.tell(ClaimSession(epoch=1))

    @property
    def actor(self) -> DataChannelSession:
        actor = self.kit.node.lookup(self.address)
        assert isinstance(actor, DataChannelSession)
        return actor

    def tell(self, message: Message, *, sender: str | None = None) -> None:
        self.kit.inject_message(self.address, message, sender=sender or self.owner)
        self.kit.settle()

    def ask(self, message: Message, *, sender: str | None = None) -> Any:
        return self.kit.node.ask(self.address, message, sender=sender or self.owner).get(timeout=5)

    def status(self) -> SessionStatus:
        status = self.kit.node.ask(self.address, GetStatus()).get(timeout=5)
        assert isinstance(status, SessionStatus)
        return status

    def connect(self, url: str = DC_URL, **kwargs: Any) -> None:
        self.tell(Connect(epoch=1, datachannel_url=url, **kwargs))

    def bring_online(self, url: str = DC_URL, **kwargs: Any) -> Any:
        """Connect, have the (fake) service send its buffer state; returns
        the fake socket."""
        self.connect(url, **kwargs)
        sock = self.fake.last
        sock.buffer_state()
        self.kit.settle()
        assert self.status().state == ONLINE
        return sock


def granting_token_actor(kit: TestKit, tokens: list[str] | None = None) -> Probe:
    """A stand-in ``token:m1`` that grants every request (next token from
    ``tokens``, else ``DC_TOKEN``)."""
    supply = list(tokens or [])

    def reply(message: Message, envelope: Envelope) -> None:
        if isinstance(message, TokenRequest):
            token = supply.pop(0) if supply else DC_TOKEN
            kit.node.tell(envelope.sender or "", TokenGranted(session_type=message.session_type,
                                                             request_id=message.request_id, token=token),
                          sender=TOKEN_ACTOR)

    return kit.probe(TOKEN_ACTOR, reply)


def messages(probe: Probe, kind: type[Message]) -> list[Any]:
    return [m for m, _ in probe.received if isinstance(m, kind)]


