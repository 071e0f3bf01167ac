"""What the demo observes, from the two places that can tell: the
application (what the meetings told their subscriber over the bus) and the
reference service (what it saw on the wire).

* :class:`AppLedger`: every output the meetings sent to the demo's
  application address (meeting phases, per-session states, relayed
  events), the refusals the incoming call got, the agent's playback
  reports and the ``sys:events`` of interest, each stamped with the time it
  arrived. Thread-safe; waits are on a condition with a deadline.
* :class:`ServiceView`: one ``GET /control/state`` of the reference
  service, read as sessions: which are online on an open socket, which of
  those hold the ``transcription`` subscription, and which device (so
  which worker node) registered them.
* :class:`CaptionRound`: one caption pushed by the service to every online
  session at a quiet moment, and how it was received.
* :func:`recovery_times`: per session, from a fault until it is back.

No I/O here: the driver feeds these and reads them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.sessions.contracts import datachannel as dc
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import PlaybackFinished, PlaybackStarted
from bus.messages import Event, Message
from ops.demo.plan import SessionKey

__all__ = ["AppLedger", "CaptionRound", "Heard", "RoundResult", "ServiceView", "caption_frame", "recovery_times"]

TRANSCRIPTION = "transcription"
CAPTION_EVENT = "relay.event"

#: ``sys:events`` the ledger keeps (everything else is only counted).
KEPT_EVENTS = frozenset({"refused-not-owner", "dead-letter", "crashed", "restarted", "escalated", "bad-input",
                         "command-rejected", "lease-lost", "lease-refused", "adopted", "activation-failed",
                         "checkpoint-refused", "playback-finished"})


@dataclass(frozen=True, slots=True)
class Heard:
    """One output the application received, with its arrival time and its
    place in the order of arrival."""

    seq: int
    at: float
    message: Message


class AppLedger:
    """What the demo's application address heard, in arrival order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._seq = 0
        self.phases: dict[str, str] = {}
        self.sessions: dict[SessionKey, str] = {}
        #: Per session: (seq, time, state) of every reported state.
        self.history: defaultdict[SessionKey, list[tuple[int, float, str]]] = defaultdict(list)
        #: Per meeting: (seq, time, phase) of every reported meeting state.
        self.phase_history: defaultdict[str, list[tuple[int, float, str]]] = defaultdict(list)
        #: Caption id -> (meeting, session) -> times received (by id: a
        #: round's count is read while thousands of others are stored).
        self.captions: defaultdict[str, Counter[SessionKey]] = defaultdict(Counter)
        self.other_relayed: Counter[str] = Counter()
        self.refusals: list[dc.Refusal] = []
        self.playback: list[Heard] = []
        self.events: list[Event] = []
        self.event_counts: Counter[tuple[str, str]] = Counter()

    # -- feeding (any thread) --------------------------------------------------

    def record(self, message: Message) -> None:
        """An output addressed to the application."""
        with self._cond:
            self._seq += 1
            seq, at = self._seq, self._clock()
            match message:
                case mt.MeetingState(meeting=meeting, phase=phase):
                    self.phases[meeting] = phase
                    self.phase_history[meeting].append((seq, at, phase))
                case mt.SessionState(meeting=meeting, session=session, state=state):
                    self.sessions[(meeting, session)] = state
                    self.history[(meeting, session)].append((seq, at, state))
                case mt.RelayedEvent(meeting=meeting, session=session, event_type=kind, data=data):
                    caption = data.get("caption") if isinstance(data, dict) else None
                    if kind == CAPTION_EVENT and isinstance(caption, dict) and isinstance(caption.get("id"), str):
                        self.captions[caption["id"]][(meeting, session)] += 1
                    else:
                        self.other_relayed[kind] += 1
                case dc.Refusal():
                    self.refusals.append(message)
                case PlaybackStarted() | PlaybackFinished():
                    self.playback.append(Heard(seq, at, message))
                case _:
                    self.other_relayed[message.KIND] += 1
            self._cond.notify_all()

    def record_event(self, event: Event) -> None:
        """An event from ``sys:events``."""
        with self._cond:
            self.event_counts[(event.event, event.reason)] += 1
            if event.event in KEPT_EVENTS:
                self.events.append(event)
                self._cond.notify_all()

    # -- reading -------------------------------------------------------------------

    def wait(self, predicate: Callable[[AppLedger], bool], timeout: float) -> bool:
        """Until ``predicate(self)`` holds (checked under the lock after each
        record) or ``timeout`` seconds pass; returns whether it holds."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def online(self, keys: Iterable[SessionKey]) -> set[SessionKey]:
        with self._cond:
            return {k for k in keys if self.sessions.get(k) == dc.ONLINE}

    def in_state(self, keys: Iterable[SessionKey], states: Iterable[str]) -> set[SessionKey]:
        wanted = set(states)
        with self._cond:
            return {k for k in keys if self.sessions.get(k) in wanted}

    def count_in_state(self, state: str) -> int:
        with self._cond:
            return sum(1 for s in self.sessions.values() if s == state)

    def in_phase(self, meetings: Iterable[str], phase: str) -> set[str]:
        with self._cond:
            return {m for m in meetings if self.phases.get(m) == phase}

    def online_again(self, key: SessionKey, after: float) -> float | None:
        """When ``key`` was first reported online after being reported
        anything else, all after ``after``; ``None`` if not (yet)."""
        with self._cond:
            left = False
            for _seq, at, state in self.history.get(key, ()):
                if at < after:
                    continue
                if state != dc.ONLINE:
                    left = True
                elif left:
                    return at
            return None

    def reported_after(self, key: SessionKey, after: float, state: str) -> float | None:
        """When ``key`` was first reported in ``state`` after ``after``
        (``None``: not yet)."""
        with self._cond:
            return next((at for _seq, at, s in self.history.get(key, ()) if at > after and s == state), None)

    def announced_before_online(self, meeting: str, session: str, phase: str) -> bool | None:
        """Whether the meeting's ``phase`` was announced before ``session``
        was first reported online (``None``: one of them never came)."""
        with self._cond:
            announced = next((seq for seq, _at, p in self.phase_history.get(meeting, ()) if p == phase), None)
            online = next((seq for seq, _at, s in self.history.get((meeting, session), ()) if s == dc.ONLINE), None)
        if announced is None or online is None:
            return None
        return announced < online

    def caption_counts(self, caption_id: str) -> dict[SessionKey, int]:
        with self._cond:
            return dict(self.captions.get(caption_id, {}))

    def captions_missing(self, expected: Iterable[tuple[str, Iterable[SessionKey]]]) -> int:
        """How many of the (caption id, sessions that must get it) pairs
        have not been received (yet): one pass, for a wait's predicate."""
        with self._cond:
            return sum(1 for caption_id, keys in expected for k in keys
                       if not self.captions.get(caption_id, {}).get(k))

    def events_of(self, event: str, *, reason: str | None = None, address: str | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.event == event and (reason is None or e.reason == reason)
                    and (address is None or e.address == address)]

    def event_totals(self) -> dict[str, int]:
        """Events heard so far, by name (all reasons)."""
        totals: Counter[str] = Counter()
        with self._cond:
            for (event, _reason), n in self.event_counts.items():
                totals[event] += n
        return dict(totals)

    def refusal_count(self) -> int:
        with self._cond:
            return len(self.refusals)

    def playback_of(self, segment: str) -> list[Message]:
        with self._cond:
            return [h.message for h in self.playback if getattr(h.message, "segment", None) == segment]


@dataclass(frozen=True)
class ServiceView:
    """The reference service's state, read as sessions."""

    #: Session -> ids of its open, online sockets.
    online: Mapping[SessionKey, tuple[str, ...]]
    #: Sessions with an open, online socket subscribed to transcription.
    subscribed: frozenset[SessionKey]
    #: Session -> device URL of its (newest) online socket.
    devices: Mapping[SessionKey, str]
    #: Meeting -> number of open sockets (online or not).
    open_sockets: Mapping[str, int]
    #: ``<meeting>/<session>`` -> register calls.
    registers: Mapping[str, int] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> ServiceView:
        """From ``GET /control/state`` with detail (it lists the sockets)."""
        online: defaultdict[SessionKey, list[str]] = defaultdict(list)
        subscribed: set[SessionKey] = set()
        devices: dict[SessionKey, str] = {}
        open_sockets: Counter[str] = Counter()
        for sock in state.get("sockets", ()):
            meeting, session = sock.get("meeting"), sock.get("session")
            if not sock.get("open") or meeting is None or session is None:
                continue
            open_sockets[meeting] += 1
            if not sock.get("online"):
                continue
            key = (meeting, session)
            online[key].append(sock["id"])
            devices[key] = str(sock.get("device_url") or "")
            if TRANSCRIPTION in sock.get("subscriptions", ()):
                subscribed.add(key)
        return cls(online={k: tuple(v) for k, v in online.items()}, subscribed=frozenset(subscribed),
                   devices=devices, open_sockets=dict(open_sockets), registers=dict(state.get("registers", {})),
                   counters=dict(state.get("counters", {})))

    @classmethod
    def empty(cls) -> ServiceView:
        return cls(online={}, subscribed=frozenset(), devices={}, open_sockets={})

    def settled(self, keys: Iterable[SessionKey]) -> set[SessionKey]:
        """Those of ``keys`` online on exactly one socket and subscribed."""
        return {k for k in keys if len(self.online.get(k, ())) == 1 and k in self.subscribed}

    def sockets_of(self, keys: Iterable[SessionKey]) -> dict[SessionKey, tuple[str, ...]]:
        return {k: self.online.get(k, ()) for k in keys}


@dataclass(frozen=True)
class RoundResult:
    """How one caption round was received by the application."""

    caption_id: str
    expected: int
    delivered: int
    lost: tuple[SessionKey, ...]
    duplicates: int
    strays: int

    @property
    def exact(self) -> bool:
        return not self.lost and not self.duplicates and not self.strays


@dataclass(frozen=True)
class CaptionRound:
    """One caption the service pushed to every online socket while nothing
    moved: ``expected`` are the sessions online and subscribed both just
    before and just after the push, and ``reached`` is how many sockets the
    service says it wrote to (it must equal ``len(expected)``, else the
    round is void and pushed again)."""

    caption_id: str
    expected: frozenset[SessionKey]
    reached: int

    @property
    def valid(self) -> bool:
        return self.reached == len(self.expected)

    def result(self, counts: Mapping[SessionKey, int]) -> RoundResult:
        """Lost: an expected session that never got it; duplicates: extra
        copies; strays: copies for a session that was not expected."""
        lost = tuple(sorted(k for k in self.expected if counts.get(k, 0) == 0))
        duplicates = sum(n - 1 for k, n in counts.items() if k in self.expected and n > 1)
        strays = sum(n for k, n in counts.items() if k not in self.expected)
        delivered = sum(1 for k in self.expected if counts.get(k, 0) > 0)
        return RoundResult(self.caption_id, len(self.expected), delivered, lost, duplicates, strays)


def caption_frame(caption_id: str, text: str) -> dict[str, Any]:
    """The event frame the service pushes for one caption."""
    return {"data": {"eventType": CAPTION_EVENT, "caption": {"id": caption_id, "text": text}}}


def recovery_times(fault_at: float, online_at: Mapping[SessionKey, float | None],
                   subscribed_at: Mapping[SessionKey, float | None]) -> dict[SessionKey, float | None]:
    """Per session: seconds from ``fault_at`` until it was both reported
    online again to the application and seen subscribed on the service
    (``None``: not back)."""
    times: dict[SessionKey, float | None] = {}
    for key, online in online_at.items():
        subscribed = subscribed_at.get(key)
        times[key] = None if online is None or subscribed is None else max(online, subscribed) - fault_at
    return times

