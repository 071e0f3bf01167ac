"""A meeting's whole tree as cores, with a scripted service, no I/O.

The meeting core, the token core and both data-channel session cores are
stepped exactly as their shells would step them; messages between them go
through one FIFO queue. The service answers at once: a register with a
socket URL, an open with the socket open, an authorization with the buffer
state (online), a client's close with the same close. Token fetches are the
exception: they stay **in flight** until :meth:`World.finish_fetches`, so
facts can arrive while a fetch (and the register waiting on it) is pending.
Timers never fire (no time passes). It counts what reached the service:
registers, socket opens and token fetches.

Restarts: every actor's checkpoint is kept as its shell would save it (the
``SaveCheckpoint`` effects, in the order performed). :meth:`World.crash`
makes an actor's next step perform only its first ``performed`` effects and
then restarts the actor from its checkpoint (optionally the one before the
last: a lost write), as a supervisor would. Restarted sessions wait for
their owner (``await_owner``): their hold timer never fires here, so only
the meeting's re-assertion moves them.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import token as tk
from actors.sessions.datachannel import machine as dcm
from actors.runtime.effects import Effect, SaveCheckpoint, Send
from actors.sessions.meeting.machine import MeetingCore
from actors.sessions.token import machine as tkm
from bus.messages import Message

M = "m-1"
ME = "meeting:m-1"
TOKEN = tk.token_address(M)
ADDRESSES = {dc.session_address(M, s): s for s in (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)}
NOW = 1_700_000_000.0


def unsigned_jwt(exp: float) -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'none'})}.{b64({'exp': exp})}.sig"


@dataclass
class World:
    token_auth: bool = True
    meeting: MeetingCore = field(init=False)
    tokens: tkm.TokenState = field(default_factory=tkm.TokenState)
    sessions: dict[str, dcm.SessionState] = field(default_factory=dict)
    queue: deque[tuple[str, Message, str]] = field(default_factory=deque)
    fetches_in_flight: list[tkm.FetchToken] = field(default_factory=list)
    registers: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    fetches: list[str] = field(default_factory=list)
    to_children: list[tuple[str, Message]] = field(default_factory=list)
    gone_sockets: set[tuple[str, int]] = field(default_factory=set)
    checkpoints: dict[str, list[Any]] = field(default_factory=dict)
    incarnations: dict[str, int] = field(default_factory=dict)
    crashing: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for address, session in ADDRESSES.items():
            self.incarnations[address] = 1
            self.sessions[address] = dcm.initial_state(self._config(address), seed=1)
        self.incarnations[ME] = 1
        self.meeting, effects = MeetingCore.start(M, ME, 7, None, token_auth=self.token_auth)
        self._perform(ME, effects)
        self.run()

    def _config(self, address: str) -> dcm.SessionConfig:
        return dcm.SessionConfig(meeting_id=M, session_id=ADDRESSES[address], device_url="https://devices.test/d1",
                                 jitter=False, incarnation=self.incarnations[address], await_owner=5.0)

    # -- restarts --------------------------------------------------------------

    def crash(self, address: str, performed: int, lose_last_write: bool = False) -> None:
        """The next step of ``address`` performs only its first ``performed``
        effects, then the actor crashes and restarts (from the checkpoint
        before the last one, with ``lose_last_write``)."""
        self.crashing[address] = (performed, lose_last_write)

    def restart(self, address: str, lose_last_write: bool = False) -> None:
        saved = self.checkpoints.get(address, [])
        if lose_last_write and saved:
            saved.pop()
        checkpoint = saved[-1] if saved else None
        self.incarnations[address] += 1
        if address == ME:
            epoch = 7 + self.incarnations[address]
            self.meeting, effects = MeetingCore.start(M, ME, epoch, checkpoint, token_auth=self.token_auth)
            self._perform(ME, effects)
            return
        old = self.sessions[address]
        for gen in [x.gen for x in (old.link, old.attempt) if x is not None]:
            self.gone_sockets.add((address, gen))  # aborted with the crashed incarnation
        config = self._config(address)
        self.sessions[address], effects = dcm.restore(config, checkpoint, seed=1,
                                                      first_gen=(self.incarnations[address] << 32) + 1)
        self._perform(address, effects)

    # -- driving -------------------------------------------------------------

    def fact(self, message: Message, *, settle: bool = True) -> None:
        """The application tells the meeting a locus fact."""
        self.queue.append((ME, message, "app:1"))
        if settle:
            self.run()

    def finish_fetches(self) -> None:
        """Every token fetch in flight answers with a fresh token."""
        done, self.fetches_in_flight = self.fetches_in_flight, []
        for fetch in done:
            self.queue.append((TOKEN, tkm.TokenFetched(session_type=fetch.session_type, generation=fetch.generation,
                                                       incarnation=fetch.incarnation, fetch_id=fetch.fetch_id,
                                                       token=unsigned_jwt(NOW + 3600)), TOKEN))
        self.run()

    def drop(self, session: str, code: int = 1006) -> None:
        """The service drops the session's online socket."""
        address = dc.session_address(M, session)
        link = self.sessions[address].link
        if link is not None:
            self.gone_sockets.add((address, link.gen))
            self.queue.append((address, dcm.SocketClosed(gen=link.gen, code=code, reason=""), address))
        self.run()

    def run(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            to, message, sender = self.queue.popleft()
            self._deliver(to, message, sender)
        raise AssertionError("the tree did not settle")

    # -- reading ----------------------------------------------------------------

    def state(self, session: str) -> dcm.SessionState:
        return self.sessions[dc.session_address(M, session)]

    def open_sockets(self, session: str) -> int:
        link = self.state(session).link
        return 0 if link is None else 1

    # -- the plumbing -------------------------------------------------------------

    def _deliver(self, to: str, message: Message, sender: str) -> None:
        crash = self.crashing.pop(to, None)
        if crash is not None:
            performed, lose = crash
            self._perform_prefix(to, message, sender, performed)
            self.restart(to, lose_last_write=lose)
            return
        if to == ME:
            try:
                self.meeting, effects = self.meeting.step(message, sender)
            except LookupError:
                return
            self._perform(ME, effects)
        elif to == TOKEN:
            if type(message) not in (tk.TokenRequest, tk.TokenEnsure, tkm.TokenFetched, tk.TokenConfigure,
                                     tk.TokenSeed, tk.TokenForget):
                return
            self.tokens, effects = tkm.step(self.tokens, message, NOW, sender)
            self._perform(TOKEN, effects)
        elif to in self.sessions:
            if type(message) not in dcm.HANDLED_KINDS:
                return
            self.sessions[to], effects = dcm.step(self.sessions[to], message, NOW, sender=sender)
            self._perform(to, effects)

    def _perform_prefix(self, to: str, message: Message, sender: str, performed: int) -> None:
        if to == ME:
            try:
                _, effects = self.meeting.step(message, sender)
            except LookupError:
                return
        elif to in self.sessions and type(message) in dcm.HANDLED_KINDS:
            _, effects = dcm.step(self.sessions[to], message, NOW, sender=sender)
        else:
            return
        self._perform(to, effects[:performed])

    def _perform(self, me: str, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case SaveCheckpoint(state=state):
                    self.checkpoints.setdefault(me, []).append(state)
                case Send(to=to, message=message):
                    if me == ME and (to == TOKEN or to in self.sessions):
                        self.to_children.append((to, message))
                    self.queue.append((to, message, me))
                case dcm.Register(gen=gen, url=url):
                    self.registers.append(url)
                    self.queue.append((me, dcm.Registered(gen=gen, websocket_url=f"ws://relay.test/{gen}",
                                                          binding=f"b{gen}"), me))
                case dcm.OpenSocket(gen=gen, url=url):
                    self.sockets.append(url.split("?")[0])
                    self.queue.append((me, dcm.SocketOpened(gen=gen), me))
                case dcm.Authorize(gen=gen):
                    frame = json.dumps({"id": f"bs-{gen}", "data": {"eventType": "mercury.buffer_state"}})
                    self.queue.append((me, dcm.SocketFrame(gen=gen, text=frame), me))
                case dcm.CloseSocket(gen=gen, code=code, reason=reason):
                    if (me, gen) not in self.gone_sockets:
                        self.gone_sockets.add((me, gen))
                        self.queue.append((me, dcm.SocketClosed(gen=gen, code=code, reason=reason), me))
                case tkm.FetchToken():
                    self.fetches.append(effect.session_type)
                    self.fetches_in_flight.append(effect)
                case _:
                    pass  # checkpoints, events, timers, transmits, answers
