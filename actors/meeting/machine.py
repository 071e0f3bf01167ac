"""The meeting core: locus facts in, data-channel and token commands out.

PROTOCOL.md section 2 as a sans-I/O state machine. The meeting owns its two
data-channel sessions (``datachannel:<id>/llm-default-session`` and
``.../llm-practice-session``) and its token actor (``token:<id>``), and is
the only party that changes them. It never holds a socket or a token: it
knows them only by address and message (``actors.contracts``).

How it decides
--------------
Every input updates the **facts** (joined, lobby, left, URLs, role,
practice session, captions). :func:`wanted` derives, from the facts and the
sessions' last reported states, what each session should be: connected to
which URL, with which subchannels. :func:`reconcile` compares that with what
was last **commanded** and emits only the difference, so a repeated fact
changes nothing (S2), and a crash restart re-commands everything once (the
sessions treat a repeated connect to the same target as a no-op).

The rules that make it so:

* ``datachannelUrl`` cleared by a delta: the last URL stays wanted, so the
  connection is kept (S17); changed to a new value: connect to it (the
  session moves make-before-break and resubscribes; the meeting stays its
  only watcher, so events are bound once: S18);
* lobby, leave or end: the meeting's own sessions disconnect for good; after
  leaving, late locus updates change facts but want nothing (S22);
* admitted: :class:`MeetingState` goes out at once; the default session is
  told to connect, and fetches its token itself through ``token:<id>``
  (the meeting never waits for a token: S23);
* panelist and practice session on: once the default session is online, the
  practice token is ensured (``token.ensure``), then the practice session
  connects (S27); demoted or practice ended: only the practice session
  disconnects;
* an announcement (:class:`~actors.contracts.meeting.Announce`) is sent on
  every session when it comes online, so a practice session that starts
  later gets it too (S36);
* ownership is by meeting identity and **claim epoch**, never by URL: the
  meeting claims both sessions when it starts, with an epoch that grows
  with every incarnation and every lease epoch, so a restarted meeting
  re-claims and an older incarnation's commands are refused.

Every asynchronous step is tagged with the meeting's **generation**, which
grows on join, leave, lobby, admission, a locus URL replacement and a role or
practice-session change: a token answer for an older generation is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from actors.contracts import datachannel as dc
from actors.contracts import meeting as mt
from actors.contracts import token as tk
from actors.machine import Effect, Emit, SaveCheckpoint, Send
from bus.messages import Message

__all__ = ["Facts", "MeetingCore", "SessionWant", "Sessions", "wanted"]

SESSIONS = (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)
TRANSCRIPTION = "transcription"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the meeting service last reported (no secrets)."""

    joined: bool = False
    in_lobby: bool = False
    left: bool = False
    ended: bool = False
    locus_url: str = ""
    self_id: str = ""
    datachannel_url: str = ""
    practice_datachannel_url: str = ""
    panelist: bool = False
    practice_session_on: bool = False
    captions_on: bool = False

    @property
    def phase(self) -> str:
        if self.ended:
            return "ended"
        if self.left:
            return "left"
        if not self.joined:
            return "idle"
        return "lobby" if self.in_lobby else "admitted"

    @property
    def admitted(self) -> bool:
        return self.phase == "admitted"

    @property
    def wants_practice(self) -> bool:
        return self.admitted and self.panelist and self.practice_session_on


@dataclass(frozen=True, slots=True)
class SessionWant:
    """What one session should be: connected to ``url`` (empty: not
    connected) with ``subchannels``."""

    url: str = ""
    subchannels: tuple[str, ...] = ()


Sessions = Mapping[str, SessionWant]


def wanted(facts: Facts, session_states: Mapping[str, str], practice_token_held: bool, token_auth: bool) -> dict[str, SessionWant]:
    """The wanted state of both sessions, from the facts alone."""
    subs = (TRANSCRIPTION,) if facts.captions_on else ()
    default = SessionWant(facts.datachannel_url, subs) if facts.admitted and facts.datachannel_url else SessionWant()
    practice = SessionWant()
    if (facts.wants_practice and facts.practice_datachannel_url and default.url
            and session_states.get(tk.DEFAULT_SESSION) == dc.ONLINE
            and (practice_token_held or not token_auth)):
        practice = SessionWant(facts.practice_datachannel_url, subs)
    return {tk.DEFAULT_SESSION: default, tk.PRACTICE_SESSION: practice}


@dataclass(frozen=True, slots=True)
class MeetingCore:
    """The whole state of one meeting actor (immutable; ``step`` returns a new one)."""

    meeting_id: str
    address: str
    claim_epoch: int
    token_auth: bool = True
    facts: Facts = Facts()
    generation: int = 1
    subscribers: tuple[str, ...] = ()
    announcement: dict[str, Any] | None = None
    #: Last reported state of each session (from ``datachannel.state-changed``).
    session_states: Mapping[str, str] = field(default_factory=dict)
    #: What each session was last told to be.
    commanded: Mapping[str, SessionWant] = field(default_factory=dict)
    practice_token: str = "none"  # none | ensuring | held
    counters: Mapping[str, int] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def start(cls, meeting_id: str, address: str, claim_epoch: int, checkpoint: Any, *,
              token_auth: bool = True) -> tuple[MeetingCore, list[Effect]]:
        """A fresh core, or one restored from ``checkpoint``: it claims and
        watches both sessions, then re-commands whatever the facts want."""
        core = cls(meeting_id=meeting_id, address=address, claim_epoch=claim_epoch, token_auth=token_auth)
        if isinstance(checkpoint, dict):
            core = core._restored(checkpoint)
        effects: list[Effect] = []
        for session in SESSIONS:
            to = dc.session_address(meeting_id, session)
            # Claim, watch, then ask where it stands: a session that is
            # already online (this meeting restarted) reports no change.
            effects += [Send(to, dc.ClaimSession(epoch=claim_epoch)),
                        Send(to, dc.Watch(epoch=claim_epoch, watcher=address)),
                        Send(to, dc.GetStatus())]
        if core.facts.joined and not core.facts.left:
            effects.append(core._configure_tokens())
        core, more = core._reconcile()
        return core, effects + more

    def _restored(self, data: dict[str, Any]) -> MeetingCore:
        facts_data = data.get("facts", {})
        known = {f for f in Facts.__dataclass_fields__}
        facts = Facts(**{k: v for k, v in facts_data.items() if k in known})
        return replace(self, facts=facts, generation=int(data.get("generation", 1)) + 1,
                       subscribers=tuple(data.get("subscribers", ())), announcement=data.get("announcement"))

    def checkpoint(self) -> dict[str, Any]:
        """msgpack primitives, never a token."""
        return {"facts": {k: getattr(self.facts, k) for k in Facts.__dataclass_fields__},
                "generation": self.generation, "subscribers": list(self.subscribers),
                "announcement": self.announcement}

    # -- the step -------------------------------------------------------------

    def step(self, message: Message, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        """Apply one message; returns the new core and the effects."""
        match message:
            case mt.Joined():
                return self._joined(message)
            case mt.LocusSnapshot():
                facts = Facts(joined=message.joined, in_lobby=message.in_lobby, locus_url=message.locus_url,
                              self_id=message.self_id, datachannel_url=message.datachannel_url,
                              practice_datachannel_url=message.practice_datachannel_url,
                              panelist=message.panelist, practice_session_on=message.practice_session_on,
                              captions_on=message.captions_on)
                return self._with_facts(facts, new_generation=True)
            case mt.Left() | mt.MeetingEnded():
                ended = isinstance(message, mt.MeetingEnded)
                return self._with_facts(replace(self.facts, left=True, ended=self.facts.ended or ended),
                                        new_generation=True)
            case mt.Lobby():
                return self._with_facts(replace(self.facts, in_lobby=True), new_generation=True)
            case mt.Admitted():
                return self._with_facts(replace(self.facts, in_lobby=False), new_generation=True)
            case mt.LocusUrlReplaced(locus_url=url):
                # The sessions keep their sockets: ownership is not by URL.
                return self._with_facts(replace(self.facts, locus_url=url), new_generation=True)
            case mt.DatachannelUrlChanged(url=url):
                if not url:  # cleared by a delta: keep the connection (S17)
                    return self._count("datachannel-url-cleared"), []
                return self._with_facts(replace(self.facts, datachannel_url=url))
            case mt.PracticeDatachannelUrlChanged(url=url):
                if not url:
                    return self._count("practice-url-cleared"), []
                return self._with_facts(replace(self.facts, practice_datachannel_url=url))
            case mt.RolesChanged(panelist=panelist):
                return self._with_facts(replace(self.facts, panelist=panelist), new_generation=True)
            case mt.PracticeSessionChanged(on=on):
                return self._with_facts(replace(self.facts, practice_session_on=on), new_generation=True)
            case mt.CaptionsChanged(on=on):
                return self._with_facts(replace(self.facts, captions_on=on))
            case mt.Subscribe(address=address):
                if address in self.subscribers:
                    return self, []
                core = replace(self, subscribers=(*self.subscribers, address))
                return core, [Send(address, core._meeting_state()), SaveCheckpoint(core.checkpoint())]
            case mt.Unsubscribe(address=address):
                core = replace(self, subscribers=tuple(s for s in self.subscribers if s != address))
                return core, [SaveCheckpoint(core.checkpoint())]
            case mt.Announce(frame=frame):
                core = replace(self, announcement=dict(frame))
                effects: list[Effect] = [SaveCheckpoint(core.checkpoint())]
                effects += [core._announce(s) for s in SESSIONS if core.session_states.get(s) == dc.ONLINE]
                return core, effects
            case dc.SessionStateChanged():
                return self._session_changed(message, sender)
            case dc.RelayedEvent():
                if sender != dc.session_address(self.meeting_id, message.session_id):
                    return self._refuse_input(message, sender, "not-my-session")
                return self, self._to_subscribers(mt.RelayedEvent(meeting=self.meeting_id, session=message.session_id,
                                                                  event_type=message.event_type, data=message.data))
            case tk.TokenHeld() | tk.TokenUnavailable():
                return self._token_answer(message, sender)
            case dc.SessionStatus():
                if sender != dc.session_address(self.meeting_id, message.session_id):
                    return self._refuse_input(message, sender, "not-my-session")
                core = replace(self, session_states={**self.session_states, message.session_id: message.state})
                return core._reconcile()
            case dc.Refusal() | dc.ConnectOutcome():
                return self._count(f"seen:{message.KIND}"), []
        raise LookupError(message.KIND)

    # -- facts ----------------------------------------------------------------

    def _joined(self, message: mt.Joined) -> tuple[MeetingCore, list[Effect]]:
        facts = Facts(joined=True, in_lobby=message.in_lobby, locus_url=message.locus_url, self_id=message.self_id,
                      datachannel_url=message.datachannel_url or self.facts.datachannel_url,
                      practice_datachannel_url=message.practice_datachannel_url or self.facts.practice_datachannel_url,
                      panelist=message.panelist, practice_session_on=message.practice_session_on,
                      captions_on=message.captions_on)
        core, effects = self._with_facts(facts, new_generation=True)
        if message.datachannel_token or message.practice_datachannel_token:
            # Handed on at once, never kept here (the token actor stores them).
            seed = tk.TokenSeed(generation=core.generation, default_token=message.datachannel_token or None,
                                practice_token=message.practice_datachannel_token or None)
            effects.insert(1, Send(tk.token_address(self.meeting_id), seed))
        return core, effects

    def _with_facts(self, facts: Facts, *, new_generation: bool = False) -> tuple[MeetingCore, list[Effect]]:
        before = self.facts
        core = replace(self, facts=facts, generation=self.generation + (1 if new_generation else 0))
        effects: list[Effect] = []
        if new_generation:
            if facts.phase in ("left", "ended"):
                if before.phase not in ("left", "ended"):
                    effects.append(Send(tk.token_address(self.meeting_id), tk.TokenForget(generation=core.generation)))
                core = replace(core, practice_token="none")
            elif facts.joined:
                effects.append(core._configure_tokens())
            if not facts.wants_practice or core.practice_token == "ensuring":
                # An ensure in flight belongs to the old generation: its answer
                # will be dropped, so ask again under the new one.
                core = replace(core, practice_token="none")
        if before.phase != facts.phase or before.panelist != facts.panelist:
            effects += core._to_subscribers(core._meeting_state())
        core, more = core._reconcile()
        return core, [*effects, *more, SaveCheckpoint(core.checkpoint())]

    def _configure_tokens(self) -> Send:
        return Send(tk.token_address(self.meeting_id),
                    tk.TokenConfigure(locus_url=self.facts.locus_url, self_id=self.facts.self_id,
                                      generation=self.generation, practice=self.facts.wants_practice))

    # -- sessions ---------------------------------------------------------------

    def _session_changed(self, message: dc.SessionStateChanged, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        if message.meeting_id != self.meeting_id or message.session_id not in SESSIONS \
                or sender != dc.session_address(self.meeting_id, message.session_id):
            return self._refuse_input(message, sender, "not-my-session")
        states = {**self.session_states, message.session_id: message.state}
        core = replace(self, session_states=states)
        effects = core._to_subscribers(mt.SessionState(meeting=self.meeting_id, session=message.session_id,
                                                       state=message.state, reason=message.reason))
        if message.state == dc.ONLINE and core.announcement is not None:
            # A new socket (first online, reconnect or switchover) gets the
            # announcement again: it is state of the meeting, not of a socket.
            effects.append(core._announce(message.session_id))
        core, more = core._reconcile()
        return core, effects + more

    def _reconcile(self) -> tuple[MeetingCore, list[Effect]]:
        want = wanted(self.facts, self.session_states, self.practice_token == "held", self.token_auth)
        core: MeetingCore = self
        effects: list[Effect] = []
        if (self.facts.wants_practice and self.facts.practice_datachannel_url and self.token_auth
                and self.practice_token == "none" and self.session_states.get(tk.DEFAULT_SESSION) == dc.ONLINE):
            core = replace(core, practice_token="ensuring")
            effects.append(Send(tk.token_address(self.meeting_id),
                                tk.TokenEnsure(session_type=tk.PRACTICE_SESSION, request_id=f"g{self.generation}")))
        commanded = dict(core.commanded)
        for session, target in want.items():
            before = commanded.get(session, SessionWant())
            if target == before:
                continue
            to = dc.session_address(self.meeting_id, session)
            epoch = self.claim_epoch
            if target.url and target.url != before.url:
                effects.append(Send(to, dc.Connect(epoch=epoch, datachannel_url=target.url, token_auth=self.token_auth)))
            elif not target.url and before.url:
                effects.append(Send(to, dc.Disconnect(epoch=epoch, permanent=True, reason=f"meeting {self.facts.phase}")))
            added = [s for s in target.subchannels if s not in before.subchannels]
            removed = [s for s in before.subchannels if s not in target.subchannels]
            if added:
                effects.append(Send(to, dc.Subscribe(epoch=epoch, subchannels=added)))
            if removed:
                effects.append(Send(to, dc.Unsubscribe(epoch=epoch, subchannels=removed)))
            commanded[session] = target
        return replace(core, commanded=commanded), effects

    def _token_answer(self, message: tk.TokenHeld | tk.TokenUnavailable, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        if sender != tk.token_address(self.meeting_id):
            return self._refuse_input(message, sender, "not-my-token-actor")
        if message.request_id != f"g{self.generation}" or self.practice_token != "ensuring":
            return self._count("stale-token-answer"), []  # started under an older generation
        if isinstance(message, tk.TokenUnavailable):
            core = replace(self, practice_token="none")
            return core, [Emit("practice-token-unavailable", reason=message.reason)]
        core, effects = replace(self, practice_token="held")._reconcile()
        return core, effects

    # -- outputs ----------------------------------------------------------------

    def _meeting_state(self) -> mt.MeetingState:
        return mt.MeetingState(meeting=self.meeting_id, phase=self.facts.phase, panelist=self.facts.panelist)

    def _to_subscribers(self, message: Message) -> list[Effect]:
        return [Send(s, message) for s in self.subscribers]

    def _announce(self, session: str) -> Send:
        return Send(dc.session_address(self.meeting_id, session),
                    dc.SendFrame(epoch=self.claim_epoch, frame=dict(self.announcement or {})))

    def _count(self, name: str) -> MeetingCore:
        return replace(self, counters={**self.counters, name: self.counters.get(name, 0) + 1})

    def _refuse_input(self, message: Message, sender: str | None, reason: str) -> tuple[MeetingCore, list[Effect]]:
        return self._count("refused-input"), [Emit("bad-input", reason=reason,
                                                    detail={"kind": message.KIND, "sender": sender or ""})]
