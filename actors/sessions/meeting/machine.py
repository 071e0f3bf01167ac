"""The meeting core: locus facts in, data-channel and token commands out.

docs/protocol.md §2 as a sans-I/O state machine. The meeting owns its two
data-channel sessions (``datachannel:<id>/llm-default-session`` and
``.../llm-practice-session``) and its token actor (``token:<id>``), and is
the only party that changes them. It never holds a socket or a token: it
knows them only by address and message (``actors.sessions.contracts``).

How it decides
--------------
Every input updates the **facts** (joined, lobby, left, URLs, role,
practice session, captions). :func:`wanted` derives, from the facts and the
sessions' last reported states, what each session should be: connected to
which URL, with which subchannels. The core compares that with what was
last **commanded** and sends only the difference.

Facts are idempotent
--------------------
The meeting service repeats itself (full states and deltas, again and
again). A fact that changes nothing changes nothing: the facts are compared
first, and an equal fact (a duplicate ``Joined``, ``Admitted``, ``Lobby``,
``Left``, role, practice on/off, captions, the same URLs, an equal
snapshot) leaves the core as it was, with no effect at all: no generation
bump, no message to any child (not even a token reconfigure with the same
values), no new fetch, no new register, no event to subscribers. This
holds whatever is in flight. Join tokens repeated in a duplicate ``Joined``
are not seeded again once seeded under the current generation.

The **generation** tags every asynchronous step (a practice-token ensure;
the token actor's fetches, through ``token.configure``). It grows only when what the token actor works from
changes: joined or gone (left, ended), the locus URL, the participant id,
or whether the practice token is wanted. Only then is the token actor
reconfigured (which makes its running fetches stale) and an ensure in
flight asked again; a token answer for an older generation is dropped.

Sessions are independent
------------------------
The default session must be online (and, with token auth, the practice
token held) to **start** the practice session. Once the practice session
was told to connect (``practice_started``), it stays wanted while the facts
want it, through any number of the default session's reconnects: a
transient drop of the default never closes the practice socket. Only a fact
(demotion, practice ended, lobby, leave) disconnects it, and only a
deliberate disconnect is permanent.

Restarts: write-ahead and re-assertion
--------------------------------------
What the meeting wants is checkpointed **before** the commands it implies
(the :class:`~actors.runtime.effects.SaveCheckpoint` effect comes first in every
step whose checkpoint changed): the facts, the generation and whether the
practice session was started. A crash between two sends therefore restarts
from the facts the sends came from.

An owner cannot trust a diff against its log of commands sent: a restarted
meeting rebuilds that log empty, and a restarted session may have come back
from a checkpoint older than the owner's last command. So the meeting
**re-asserts the complete wanted state** of a session
(:class:`~actors.sessions.contracts.datachannel.Assert`: connected to which URL or
disconnected, with exactly which subchannels):

* for both sessions when it starts (fresh or restored);
* for a session whose **incarnation** changed (every state change and
  status carries it; a restored session announces itself with reason
  ``restored``).

The token actor's wanted state is re-asserted at every start too: a
configure under the current generation while joined, a forget while gone.

A restored meeting's generation starts :data:`GENERATION_STRIDE` above
its checkpoint's, so even after a lost checkpoint write no generation is
used twice. Every start, a fresh one too, writes its checkpoint before
anything else, so there is always one to stride from: a meeting that
restarted without any (its first write after the start lost) would start
at generation 1 again, reusing a generation the token actor already took
(a configure or forget of that generation is then dropped, and the token
actor stays forgotten or configured from older facts). When one of its sessions refuses a command because it lost the
meeting's claim (``no-owner``, ``unclaimed-epoch``: restored without it),
the meeting claims it again and re-asserts; it never fights another owner.

Sessions treat an assert of what they already are as a no-op, so a
re-assertion costs nothing when nothing was lost. Whatever restarts (the
meeting, a session, both), the tree converges to what the facts want.

The other rules
---------------
* a data-channel URL (default or practice) reported empty, by any source
  (a delta, a snapshot, a join): the known URL stays, so the connection is
  kept; an empty URL never disconnects (S17). Changed to a new value:
  connect to it (the
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
* an announcement (:class:`~actors.sessions.contracts.meeting.Announce`) is sent on
  every session when it comes online, so a practice session that starts
  later gets it too (S36);
* ownership is by meeting identity and **claim epoch**, never by URL: the
  meeting claims both sessions when it starts, with an epoch that grows
  with every incarnation and every lease epoch, so a restarted meeting
  re-claims and an older incarnation's commands are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts import token as tk
from actors.runtime.effects import CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer, evolve
from bus.messages import Message, message_kind

__all__ = ["INTERNAL_KINDS", "PUBLIC_KINDS", "step", "Facts", "MeetingCore", "PracticeTokenRetry", "SessionWant", "Sessions", "practice_possible",
           "token_view", "wanted"]

SESSIONS = (tk.DEFAULT_SESSION, tk.PRACTICE_SESSION)
#: A restored meeting's generation starts this far above its checkpoint's,
#: so generations used after a checkpoint write that was lost are not reused
#: (the token actor drops a configure that is not newer than its own).
GENERATION_STRIDE = 1 << 10
TRANSCRIPTION = "transcription"
#: After a practice token was unavailable, the meeting asks again after
#: FIRST, then twice as long each time, at most CAP seconds (a fetch that
#: failed during a failover or an endpoint outage is retried: the wanted
#: practice session is never given up while the facts still want it).
PRACTICE_TOKEN_RETRY_FIRST_S = 0.5
PRACTICE_TOKEN_RETRY_CAP_S = 30.0
_PRACTICE_TOKEN_TIMER = "practice-token-retry"


@message_kind("meeting.practice-token-retry")
@dataclass(frozen=True, slots=True)
class PracticeTokenRetry(Message):
    """The meeting's own timer: ask for the practice token again (accepted
    only from the meeting itself, and only under ``generation``)."""

    generation: int


PUBLIC_KINDS: tuple[type[Message], ...] = (
    mt.Joined, mt.LocusSnapshot, mt.Left, mt.MeetingEnded, mt.Lobby, mt.Admitted, mt.LocusUrlReplaced,
    mt.DatachannelUrlChanged, mt.PracticeDatachannelUrlChanged, mt.RolesChanged, mt.PracticeSessionChanged,
    mt.CaptionsChanged, mt.Subscribe, mt.Unsubscribe, mt.Announce, dc.SessionStateChanged, dc.RelayedEvent,
    tk.TokenHeld, tk.TokenUnavailable, dc.SessionStatus, dc.Refusal, dc.ConnectOutcome)
"""What :meth:`MeetingCore.step` takes from anyone (it checks itself which
session or token actor may say what)."""
INTERNAL_KINDS: tuple[type[Message], ...] = (PracticeTokenRetry,)
"""What it takes from the meeting's own address only (its timer)."""


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


def wanted(facts: Facts, session_states: Mapping[str, str], practice_token_held: bool, token_auth: bool,
           practice_started: bool = False) -> dict[str, SessionWant]:
    """The wanted state of both sessions. The default session follows the
    facts alone. The practice session is wanted when the facts want it and
    either it was already started (``practice_started``: it then stays
    through the default session's reconnects) or it may start now: the
    default session is online and, with token auth, the practice token is
    held."""
    subs = (TRANSCRIPTION,) if facts.captions_on else ()
    default = SessionWant(facts.datachannel_url, subs) if facts.admitted and facts.datachannel_url else SessionWant()
    practice = SessionWant()
    if practice_possible(facts, default) and (
            practice_started or (session_states.get(tk.DEFAULT_SESSION) == dc.ONLINE
                                 and (practice_token_held or not token_auth))):
        practice = SessionWant(facts.practice_datachannel_url, subs)
    return {tk.DEFAULT_SESSION: default, tk.PRACTICE_SESSION: practice}


def practice_possible(facts: Facts, default: SessionWant) -> bool:
    """The facts want the practice session (whether or not it may start yet)."""
    return bool(facts.wants_practice and facts.practice_datachannel_url and default.url)


def token_view(facts: Facts) -> tuple[Any, ...]:
    """What the token actor works from: a change of this, and only of this,
    starts a new generation."""
    gone = facts.phase in ("left", "ended")
    return (facts.joined and not gone, gone, facts.locus_url, facts.self_id, facts.wants_practice)


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
    #: Last reported incarnation of each session: a change means it restarted.
    session_incarnations: Mapping[str, int] = field(default_factory=dict)
    #: What each session was last told to be.
    commanded: Mapping[str, SessionWant] = field(default_factory=dict)
    #: The practice session was told to connect under the current facts.
    practice_started: bool = False
    practice_token: str = "none"  # none | ensuring | held
    #: Practice-token answers in a row that said unavailable (0 once held).
    practice_token_failures: int = 0
    #: The generation join tokens were last handed on under (0: never).
    seeded_generation: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def start(cls, meeting_id: str, address: str, claim_epoch: int, checkpoint: Any, *,
              token_auth: bool = True) -> tuple[MeetingCore, list[Effect]]:
        """A fresh core, or one restored from ``checkpoint``: it claims and
        watches both sessions and asks where they stand, then re-asserts the
        complete wanted state of each (including "disconnected")."""
        core = cls(meeting_id=meeting_id, address=address, claim_epoch=claim_epoch, token_auth=token_auth)
        if isinstance(checkpoint, dict):
            core = core._restored(checkpoint)
        # Always written first, a fresh start's too: a later incarnation then
        # restores a generation (and strides above it) even when every write
        # after this one was lost; without any checkpoint it would start at
        # 1 again and reuse generations this incarnation already sent.
        effects: list[Effect] = [SaveCheckpoint(core.checkpoint())]
        for session in SESSIONS:
            to = dc.session_address(meeting_id, session)
            # Claim, watch, then ask where it stands: a session that is
            # already online (this meeting restarted) reports no change.
            effects += core._reassert_effects(session)
            effects.append(Send(to, dc.GetStatus()))
        core = core._asserted()
        # The token actor's wanted state too: it may have taken a configure
        # or a forget this meeting's checkpoint does not know of (a lost
        # write); the restored generation is above either.
        if core.facts.phase in ("left", "ended"):
            effects.append(Send(tk.token_address(meeting_id), tk.TokenForget(generation=core.generation)))
        elif core.facts.joined:
            effects.append(core._configure_tokens())
        core, more = core._reconcile()
        return core, effects + more

    def _restored(self, data: dict[str, Any]) -> MeetingCore:
        facts_data = data.get("facts", {})
        known = {f for f in Facts.__dataclass_fields__}
        facts = Facts(**{k: v for k, v in facts_data.items() if k in known})
        # A checkpoint from before ``practice_started`` was kept: assume a
        # wanted practice session was started (never close a healthy one).
        started = bool(data.get("practice_started", facts.wants_practice))
        return evolve(self, facts=facts, generation=int(data.get("generation", 1)) + GENERATION_STRIDE,
                       subscribers=tuple(data.get("subscribers", ())), announcement=data.get("announcement"),
                       practice_started=started)

    def checkpoint(self) -> dict[str, Any]:
        """msgpack primitives, never a token."""
        return {"facts": {k: getattr(self.facts, k) for k in Facts.__dataclass_fields__},
                "generation": self.generation, "subscribers": list(self.subscribers),
                "announcement": self.announcement, "practice_started": self.practice_started}

    # -- the step -------------------------------------------------------------

    def step(self, message: Message, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        """Apply one message; returns the new core and the effects. When the
        checkpoint changed, the new one comes first (write-ahead)."""
        core, effects = self._step(message, sender)
        effects = [e for e in effects if type(e) is not SaveCheckpoint]
        saved = core.checkpoint()
        if saved != self.checkpoint():
            effects.insert(0, SaveCheckpoint(saved))
        return core, effects

    def _step(self, message: Message, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        match message:
            case mt.Joined():
                return self._joined(message)
            case mt.LocusSnapshot():
                facts = Facts(joined=message.joined, in_lobby=message.in_lobby, locus_url=message.locus_url,
                              self_id=message.self_id, datachannel_url=message.datachannel_url,
                              practice_datachannel_url=message.practice_datachannel_url,
                              panelist=message.panelist, practice_session_on=message.practice_session_on,
                              captions_on=message.captions_on)
                return self._with_facts(facts)
            case mt.Left() | mt.MeetingEnded():
                ended = isinstance(message, mt.MeetingEnded)
                return self._with_facts(evolve(self.facts, left=True, ended=self.facts.ended or ended))
            case mt.Lobby():
                return self._with_facts(evolve(self.facts, in_lobby=True))
            case mt.Admitted():
                return self._with_facts(evolve(self.facts, in_lobby=False))
            case mt.LocusUrlReplaced(locus_url=url):
                # The sessions keep their sockets: ownership is not by URL.
                return self._with_facts(evolve(self.facts, locus_url=url))
            case mt.DatachannelUrlChanged(url=url):
                return self._with_facts(evolve(self.facts, datachannel_url=url))
            case mt.PracticeDatachannelUrlChanged(url=url):
                return self._with_facts(evolve(self.facts, practice_datachannel_url=url))
            case mt.RolesChanged(panelist=panelist):
                return self._with_facts(evolve(self.facts, panelist=panelist))
            case mt.PracticeSessionChanged(on=on):
                return self._with_facts(evolve(self.facts, practice_session_on=on))
            case mt.CaptionsChanged(on=on):
                return self._with_facts(evolve(self.facts, captions_on=on))
            case mt.Subscribe(address=address):
                if address in self.subscribers:
                    return self, []
                core = evolve(self, subscribers=(*self.subscribers, address))
                return core, [Send(address, core._meeting_state())]
            case mt.Unsubscribe(address=address):
                return evolve(self, subscribers=tuple(s for s in self.subscribers if s != address)), []
            case mt.Announce(frame=frame):
                core = evolve(self, announcement=dict(frame))
                return core, [core._announce(s) for s in SESSIONS if core.session_states.get(s) == dc.ONLINE]
            case dc.SessionStateChanged():
                return self._session_changed(message, sender)
            case dc.RelayedEvent():
                if sender != dc.session_address(self.meeting_id, message.session_id):
                    return self._refuse_input(message, sender, "not-my-session")
                return self, self._to_subscribers(mt.RelayedEvent(meeting=self.meeting_id, session=message.session_id,
                                                                  event_type=message.event_type, data=message.data))
            case tk.TokenHeld() | tk.TokenUnavailable():
                return self._token_answer(message, sender)
            case PracticeTokenRetry():
                return self._practice_token_retry(message, sender)
            case dc.SessionStatus():
                if sender != dc.session_address(self.meeting_id, message.session_id) \
                        or message.session_id not in SESSIONS:
                    return self._refuse_input(message, sender, "not-my-session")
                core = evolve(self, session_states={**self.session_states, message.session_id: message.state})
                core, effects = core._seen_incarnation(message.session_id, message.incarnation, restored=False)
                core, more = core._reconcile()
                return core, effects + more
            case dc.Refusal():
                core = self._count(f"seen:{message.KIND}")
                if (message.error_type == "NotOwner" and message.reason in ("no-owner", "unclaimed-epoch")
                        and message.session_id in SESSIONS and message.meeting_id == self.meeting_id
                        and sender == dc.session_address(self.meeting_id, message.session_id)
                        and message.command != dc.ClaimSession.KIND):
                    # Our own session lost our claim (restored without it):
                    # claim again and re-assert, never fight another owner.
                    core = core._count("re-claimed")
                    return core._asserted(message.session_id), core._reassert_effects(message.session_id)
                return core, []
            case dc.ConnectOutcome():
                return self._count(f"seen:{message.KIND}"), []
        raise TypeError(f"the meeting core does not take {message.KIND!r} (its shell passes only PUBLIC_KINDS "
                        "and INTERNAL_KINDS)")

    # -- facts ----------------------------------------------------------------

    def _joined(self, message: mt.Joined) -> tuple[MeetingCore, list[Effect]]:
        facts = Facts(joined=True, in_lobby=message.in_lobby, locus_url=message.locus_url, self_id=message.self_id,
                      datachannel_url=message.datachannel_url, practice_datachannel_url=message.practice_datachannel_url,
                      panelist=message.panelist, practice_session_on=message.practice_session_on,
                      captions_on=message.captions_on)
        core, effects = self._with_facts(facts)
        has_tokens = bool(message.datachannel_token or message.practice_datachannel_token)
        if has_tokens and core.seeded_generation != core.generation and not core.facts.left:
            # Handed on at once, never kept here (the token actor stores them).
            seed = tk.TokenSeed(generation=core.generation, default_token=message.datachannel_token or None,
                                practice_token=message.practice_datachannel_token or None)
            # After a configure of this generation (if any), before the connects.
            at = next((i + 1 for i, e in enumerate(effects)
                       if isinstance(e, Send) and isinstance(e.message, tk.TokenConfigure)), 0)
            effects.insert(at, Send(tk.token_address(self.meeting_id), seed))
            core = evolve(core, seeded_generation=core.generation)
        return core, effects

    def _with_facts(self, facts: Facts) -> tuple[MeetingCore, list[Effect]]:
        """Take the new facts; an equal fact changes nothing at all. Every
        input's facts come through here, so the URL rule holds whatever
        reported them (snapshot, delta, join)."""
        before = self.facts
        core, facts = self._keep_known_urls(facts)
        if facts == before:
            return core._count("unchanged-fact"), []
        return core._take_facts(facts)

    def _keep_known_urls(self, facts: Facts) -> tuple[MeetingCore, Facts]:
        """S17: an empty data-channel URL never replaces a known one, so it
        never disconnects; only a new non-empty URL moves a session."""
        core = self
        for name, counter in (("datachannel_url", "datachannel-url-cleared"),
                              ("practice_datachannel_url", "practice-url-cleared")):
            known = getattr(self.facts, name)
            if known and not getattr(facts, name):
                facts = evolve(facts, **{name: known})
                core = core._count(counter)
        return core, facts

    def _take_facts(self, facts: Facts) -> tuple[MeetingCore, list[Effect]]:
        before = self.facts
        new_generation = token_view(facts) != token_view(before)
        core = evolve(self, facts=facts, generation=self.generation + (1 if new_generation else 0))
        effects: list[Effect] = []
        if new_generation:
            if facts.phase in ("left", "ended"):
                if before.phase not in ("left", "ended"):
                    effects.append(Send(tk.token_address(self.meeting_id), tk.TokenForget(generation=core.generation)))
                core = evolve(core, practice_token="none")
            elif facts.joined:
                effects.append(core._configure_tokens())
            if not facts.wants_practice or core.practice_token == "ensuring":
                # An ensure in flight belongs to the old generation: its answer
                # will be dropped, so ask again under the new one.
                core = evolve(core, practice_token="none")
        if before.phase != facts.phase or before.panelist != facts.panelist:
            effects += core._to_subscribers(core._meeting_state())
        core, more = core._reconcile()
        return core, [*effects, *more]

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
        core = evolve(self, session_states=states)
        effects = core._to_subscribers(mt.SessionState(meeting=self.meeting_id, session=message.session_id,
                                                       state=message.state, reason=message.reason))
        if message.state == dc.ONLINE and core.announcement is not None:
            # A new socket (first online, reconnect or switchover) gets the
            # announcement again: it is state of the meeting, not of a socket.
            effects.append(core._announce(message.session_id))
        core, more = core._seen_incarnation(message.session_id, message.incarnation,
                                            restored=message.reason == dc.RESTORED)
        effects += more
        core, more = core._reconcile()
        return core, effects + more

    def _seen_incarnation(self, session: str, incarnation: int, *, restored: bool) -> tuple[MeetingCore, list[Effect]]:
        """A session that restarted (its incarnation changed, or it says it
        was restored) gets the complete wanted state again."""
        if incarnation <= 0:
            return self, []
        known = self.session_incarnations.get(session)
        core = evolve(self, session_incarnations={**self.session_incarnations, session: incarnation})
        if not restored and (known is None or known == incarnation):
            return core, []
        core = core._count("session-restarted")
        return core._asserted(session), core._reassert_effects(session)

    def _wanted(self) -> dict[str, SessionWant]:
        return wanted(self.facts, self.session_states, self.practice_token == "held", self.token_auth,
                      self.practice_started)

    def _reassert_effects(self, session: str) -> list[Effect]:
        """The complete wanted state of ``session``: claimed (with this
        incarnation's epoch: a session restored from an older checkpoint
        may not know it), watched, and connected or not, with exactly the
        wanted subchannels. Each of the three is a no-op for a session that
        already is so."""
        want = self._wanted()[session]
        reason = "" if want.url else f"meeting {self.facts.phase}"
        to = dc.session_address(self.meeting_id, session)
        return [Send(to, dc.ClaimSession(epoch=self.claim_epoch)),
                Send(to, dc.Watch(epoch=self.claim_epoch, watcher=self.address)),
                Send(to, dc.Assert(epoch=self.claim_epoch, datachannel_url=want.url, token_auth=self.token_auth,
                                   subchannels=list(want.subchannels), reason=reason))]

    def _asserted(self, *sessions: str) -> MeetingCore:
        """Record that ``sessions`` (all when none given) were told their wanted state."""
        want = self._wanted()
        commanded = dict(self.commanded)
        for session in sessions or SESSIONS:
            commanded[session] = want[session]
        return evolve(self, commanded=commanded)

    def _reconcile(self) -> tuple[MeetingCore, list[Effect]]:
        core: MeetingCore = self
        default = wanted(self.facts, {}, False, self.token_auth)[tk.DEFAULT_SESSION]
        if not practice_possible(self.facts, default) and core.practice_started:
            core = evolve(core, practice_started=False)
        effects: list[Effect] = []
        if (practice_possible(core.facts, default) and core.token_auth and not core.practice_started
                and core.practice_token == "none" and core.session_states.get(tk.DEFAULT_SESSION) == dc.ONLINE):
            core = evolve(core, practice_token="ensuring")
            effects.append(Send(tk.token_address(self.meeting_id),
                                tk.TokenEnsure(session_type=tk.PRACTICE_SESSION, request_id=f"g{core.generation}")))
        want = core._wanted()
        commanded = dict(core.commanded)
        for session, target in want.items():
            before = commanded.get(session, SessionWant())
            if target == before:
                continue
            to = dc.session_address(self.meeting_id, session)
            epoch = self.claim_epoch
            if target.url and target.url != before.url:
                if session == tk.PRACTICE_SESSION and not core.practice_started:
                    # S27's moment, as an event: what the meeting knew of the
                    # default session when it started the practice session.
                    effects.append(Emit("practice-session-started",
                                        detail={"default_session": core.session_states.get(tk.DEFAULT_SESSION, "")}))
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
        started = core.practice_started or bool(want[tk.PRACTICE_SESSION].url)
        return evolve(core, commanded=commanded, practice_started=started), effects

    def _token_answer(self, message: tk.TokenHeld | tk.TokenUnavailable, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        if sender != tk.token_address(self.meeting_id):
            return self._refuse_input(message, sender, "not-my-token-actor")
        if message.request_id != f"g{self.generation}" or self.practice_token != "ensuring":
            return self._count("stale-token-answer"), []  # started under an older generation
        if isinstance(message, tk.TokenUnavailable):
            failures = self.practice_token_failures + 1
            delay = min(PRACTICE_TOKEN_RETRY_CAP_S, PRACTICE_TOKEN_RETRY_FIRST_S * 2 ** (failures - 1))
            core = evolve(self, practice_token="none", practice_token_failures=failures)
            return core, [Emit("practice-token-unavailable", reason=message.reason,
                               detail={"failures": failures, "retry_in_s": delay}),
                          StartTimer(_PRACTICE_TOKEN_TIMER, delay, PracticeTokenRetry(generation=self.generation))]
        core, effects = evolve(self, practice_token="held", practice_token_failures=0)._reconcile()
        return core, [CancelTimer(_PRACTICE_TOKEN_TIMER), *effects]

    def _practice_token_retry(self, message: PracticeTokenRetry, sender: str | None) -> tuple[MeetingCore, list[Effect]]:
        # Only the meeting's own timer gets here: the shell takes this kind from
        # the meeting's address alone (MeetingActor.internal_kinds).
        if message.generation != self.generation or self.practice_token != "none":
            return self._count("stale-token-retry"), []  # a newer generation asked already
        return self._reconcile()

    # -- outputs ----------------------------------------------------------------

    def _meeting_state(self) -> mt.MeetingState:
        return mt.MeetingState(meeting=self.meeting_id, phase=self.facts.phase, panelist=self.facts.panelist)

    def _to_subscribers(self, message: Message) -> list[Effect]:
        return [Send(s, message) for s in self.subscribers]

    def _announce(self, session: str) -> Send:
        return Send(dc.session_address(self.meeting_id, session),
                    dc.SendFrame(epoch=self.claim_epoch, frame=dict(self.announcement or {})))

    def _count(self, name: str) -> MeetingCore:
        return evolve(self, counters={**self.counters, name: self.counters.get(name, 0) + 1})

    def _refuse_input(self, message: Message, sender: str | None, reason: str) -> tuple[MeetingCore, list[Effect]]:
        return self._count("refused-input"), [Emit("bad-input", reason=reason,
                                                    detail={"kind": message.KIND, "sender": sender or ""})]


def step(state: MeetingCore, message: Message, now: float, sender: str | None = None
         ) -> tuple[MeetingCore, list[Effect]]:
    """The core contract (:mod:`actors.runtime.effects`): :meth:`MeetingCore.step`.
    The meeting reads no time (its waits are timers); ``now`` is taken for
    the common shape."""
    return state.step(message, sender)
