"""A driver for the sans-I/O data-channel core: feeds messages the way the
shell would (with the sender the envelope would carry) and keeps every
effect, so tests read like the protocol."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from actors.sessions.contracts.datachannel import (
    DEFAULT_SESSION,
    ClaimSession,
    Connect,
    SessionStatus,
    session_address,
)
from actors.sessions.contracts.token import TokenGranted
from actors.sessions.datachannel.machine import (
    Authorize,
    OpenSocket,
    Register,
    Registered,
    SessionConfig,
    ChannelState,
    SessionTimer,
    SocketClosed,
    SocketFrame,
    SocketOpened,
    StartTimer,
    Transmit,
    initial_state,
    status_of,
    step,
)
from actors.runtime.effects import Effect, Send
from bus.messages import Message

E = TypeVar("E", bound=Effect)

MEETING = "m1"
OWNER = "meeting:m1"
DC_URL = "http://relay.test/datachannel/m1"
DEVICE_URL = "https://devices.test/d1"
WS_URL = "ws://relay.test/v1/socket/b1"
NOW = 1_700_000_000.0


class Core:
    """One session's core, stepped by hand."""

    def __init__(self, session_id: str = DEFAULT_SESSION, *, seed: int = 7, **config: Any) -> None:
        self.config = SessionConfig(meeting_id=MEETING, session_id=session_id, device_url=DEVICE_URL, **config)
        self.state: ChannelState = initial_state(self.config, seed=seed)
        self.address = session_address(MEETING, session_id)
        self.now = NOW
        self.last: list[Effect] = []
        self.log: list[Effect] = []

    # -- feeding -------------------------------------------------------------

    def step(self, message: Message, *, sender: str | None = None, asked: bool = False) -> list[Effect]:
        self.state, self.last = step(self.state, message, self.now, sender=sender, asked=asked)
        self.log.extend(self.last)
        return self.last

    def owner(self, message: Message, *, asked: bool = False) -> list[Effect]:
        return self.step(message, sender=OWNER, asked=asked)

    def internal(self, message: Message) -> list[Effect]:
        return self.step(message, sender=self.address)

    def fire(self, timer: StartTimer) -> list[Effect]:
        """The timer's message arrives (as the shell would deliver it)."""
        return self.internal(timer.message)

    # -- protocol shortcuts ---------------------------------------------------------

    def claim(self, epoch: int = 1) -> list[Effect]:
        return self.owner(ClaimSession(epoch=epoch))

    def connect(self, url: str = DC_URL, *, token_auth: bool = False, request_id: str = "",
                sender: str = OWNER) -> list[Effect]:
        return self.step(Connect(epoch=self.state.owner_epoch, datachannel_url=url, token_auth=token_auth,
                                 request_id=request_id), sender=sender)

    def registered(self, ws_url: str = WS_URL, binding: str = "b1", gen: int | None = None) -> list[Effect]:
        return self.internal(Registered(gen=self.gen(gen), websocket_url=ws_url, binding=binding))

    def opened(self, gen: int | None = None) -> list[Effect]:
        return self.internal(SocketOpened(gen=self.gen(gen)))

    def frame(self, gen: int | None = None, **frame: Any) -> list[Effect]:
        return self.internal(SocketFrame(gen=self.gen(gen), text=json.dumps(frame)))

    def event(self, event_type: str, gen: int | None = None, **fields: Any) -> list[Effect]:
        return self.frame(gen, data={"eventType": event_type}, **fields)

    def buffer_state(self, gen: int | None = None, seq: int | None = None) -> list[Effect]:
        extra = {} if seq is None else {"sequenceNumber": seq}
        return self.frame(gen, id=f"bs-{self.gen(gen)}", data={"eventType": "mercury.buffer_state"}, **extra)

    def closed(self, code: int, reason: str = "", gen: int | None = None) -> list[Effect]:
        return self.internal(SocketClosed(gen=self.gen(gen), code=code, reason=reason))

    def grant(self, token: str = "dc-token-secret", gen: int | None = None) -> list[Effect]:
        return self.step(TokenGranted(session_type=self.config.session_id, request_id=str(self.gen(gen)), token=token),
                         sender=self.config.token_address)

    def online(self, *, token_auth: bool = False) -> int:
        """Claim (if needed), connect and walk the attempt to online; returns
        the link's generation."""
        if not self.state.owner:
            self.claim()
        self.connect(token_auth=token_auth)
        return self.walk_attempt(token_auth=token_auth)

    def walk_attempt(self, *, token_auth: bool = False, binding: str = "b1") -> int:
        """Take the attempt in flight (from its first phase) to online."""
        if token_auth:
            self.grant()
        self.registered(binding=binding)
        self.opened()
        gen = self.gen()
        self.buffer_state(gen)
        return gen

    # -- reading -----------------------------------------------------------------

    def gen(self, gen: int | None = None) -> int:
        """``gen``, or the attempt's, or the link's."""
        if gen is not None:
            return gen
        if self.state.attempt is not None:
            return self.state.attempt.gen
        assert self.state.link is not None, "no attempt and no link"
        return self.state.link.gen

    @property
    def status(self) -> SessionStatus:
        return status_of(self.state)

    def of(self, kind: type[E], effects: list[Effect] | None = None) -> list[E]:
        return [e for e in (self.last if effects is None else effects) if isinstance(e, kind)]

    def one(self, kind: type[E], effects: list[Effect] | None = None) -> E:
        found = self.of(kind, effects)
        assert len(found) == 1, f"expected one {kind.__name__}, got {found} in {self.last if effects is None else effects}"
        return found[0]

    def sent(self, to: str | None = None, kind: type[Message] | None = None,
             effects: list[Effect] | None = None) -> list[Message]:
        return [e.message for e in self.of(Send, effects)
                if (to is None or e.to == to) and (kind is None or isinstance(e.message, kind))]

    def frames(self, gen: int | None = None, effects: list[Effect] | None = None) -> list[dict[str, Any]]:
        return [e.frame for e in self.of(Transmit, effects) if gen is None or e.gen == gen]

    def timer(self, name: str, effects: list[Effect] | None = None) -> StartTimer:
        found = [e for e in self.of(StartTimer, effects) if e.message.name == name]  # type: ignore[attr-defined]
        assert found, f"no {name} timer in {self.last if effects is None else effects}"
        return found[-1]

    def registers(self) -> list[Register]:
        return self.of(Register, self.log)

    def opens(self) -> list[OpenSocket]:
        return self.of(OpenSocket, self.log)

    def authorizations(self) -> list[Authorize]:
        return self.of(Authorize, self.log)


def timer_message(effect: StartTimer) -> SessionTimer:
    assert isinstance(effect.message, SessionTimer)
    return effect.message
