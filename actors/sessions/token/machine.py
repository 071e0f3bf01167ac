"""The token actor's core: which data-channel tokens a meeting holds, and when
to fetch them. No I/O, no clock: :func:`step` takes the state, one message
and the current **wall** time (unix seconds, because a JWT's ``exp`` is) and
returns the new state and the effects for the shell.

Rules (docs/protocol.md §1.8, §3):

* Two tokens per meeting, one per session type (``llm-default-session``,
  ``llm-practice-session``). They come from the join response
  (:class:`~actors.sessions.contracts.token.TokenSeed`) or from
  ``GET {locusUrl}/participant/{selfId}[/practiceSession]/datachannel/token``
  (the :class:`FetchToken` effect; the shell performs it and feeds back
  :class:`TokenFetched`).
* A token counts as expired when ``exp*1000 < now + 30 s`` (in ms) or when
  it cannot be decoded; such a token is never stored nor handed out.
* A wanted token is refreshed **ahead** of expiry: a timer fires when it
  is about to count as expired and starts a fetch; the old token is still
  handed out until then.
* Requests for a type whose fetch is already running wait for that fetch:
  one fetch per type at a time, however many ask.
* A fetch refused with 401/403 is retried once, 2 s later; a second
  refusal, or any other failure, answers every waiting requester with
  :class:`~actors.sessions.contracts.token.TokenUnavailable`.
* Every fetch is tagged with the generation (and incarnation) that started
  it. A configure with a newer generation, or a forget, makes every running
  fetch stale: its result is dropped and stores nothing. Requesters still
  waiting get a fetch under the new generation.
* Tokens live until the meeting forgets them, the participant changes or
  (for the practice token) the practice session is no longer wanted; a
  data-channel disconnect does not touch them (S15). A token that is not
  wanted is still fetched and handed out on request, just not refreshed
  ahead of expiry.
* The state's checkpoint holds the configuration only, never a token;
  reprs of the state, held tokens and messages never show one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from actors.sessions.service_errors import Failure
from actors.sessions.contracts.token import (
    DEFAULT_SESSION,
    PRACTICE_SESSION,
    SESSION_TYPES,
    TokenConfigure,
    TokenEnsure,
    TokenForget,
    TokenGranted,
    TokenHeld,
    TokenRequest,
    TokenSeed,
    TokenUnavailable,
    UnavailableReason,
)
from actors.runtime.effects import CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer, evolve
from bus.messages import Message, message_kind

__all__ = [
    "AUTH_RETRY_DELAY_S",
    "EXPIRY_MARGIN_S",
    "MAX_WAITING",
    "MIN_REFRESH_DELAY_S",
    "FetchToken",
    "HeldToken",
    "RefreshDue",
    "RetryDue",
    "Slot",
    "TokenConfig",
    "TokenFetched",
    "TokenState",
    "Waiter",
    "counts_as_expired",
    "jwt_expiry",
    "step",
    "token_url",
]

#: A token counts as expired this long before its ``exp``.
EXPIRY_MARGIN_S = 30.0
#: A fetch refused with 401/403 is tried once more after this long.
AUTH_RETRY_DELAY_S = 2.0
#: Refresh timers never fire sooner than this (a short-lived token must not
#: turn the refresh into a busy loop).
MIN_REFRESH_DELAY_S = 1.0
#: Requests that may wait for one session type's fetch.
MAX_WAITING = 256


# -- messages the actor sends itself ---------------------------------------


@message_kind("token.fetched")
@dataclass(frozen=True, slots=True)
class TokenFetched(Message):
    """How a fetch ended: ``token`` on success (``failure`` empty), or a
    :class:`Failure` cause and the HTTP ``status`` (0 if none)."""

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("token",)

    session_type: str
    generation: int
    incarnation: int
    fetch_id: int
    token: str = field(default="", repr=False)
    failure: str = ""
    status: int = 0


@message_kind("token.refresh-due")
@dataclass(frozen=True, slots=True)
class RefreshDue(Message):
    """Timer: the held token that expires at ``expires_at`` is about to
    count as expired."""

    session_type: str
    generation: int
    expires_at: float


@message_kind("token.retry-due")
@dataclass(frozen=True, slots=True)
class RetryDue(Message):
    """Timer: retry the fetch ``fetch_id`` that was refused with 401/403."""

    session_type: str
    generation: int
    fetch_id: int


# -- effects only this actor has -------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchToken(Effect):
    """GET ``url``; the outcome comes back as a :class:`TokenFetched` tagged
    with ``generation``, ``incarnation`` and ``fetch_id``. ``self_id`` is
    the participant the request is made for (attribution)."""

    session_type: str
    url: str
    self_id: str
    generation: int
    incarnation: int
    fetch_id: int


# -- tokens --------------------------------------------------------------------


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWT, unverified; ``None`` if the
    token cannot be decoded or has no numeric ``exp``. The signature is the
    server's business: the client only needs to know when to refresh."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    if not math.isfinite(exp):
        return None
    return float(exp)


def counts_as_expired(expires_at: float | None, now: float) -> bool:
    """docs/protocol.md §3.2: ``exp*1000 < now + 30 s`` in milliseconds, or not
    decodable (``expires_at`` is ``None``)."""
    return expires_at is None or expires_at * 1000 < now * 1000 + EXPIRY_MARGIN_S * 1000


def token_url(locus_url: str, self_id: str, session_type: str) -> str:
    """Where the token of ``session_type`` is fetched."""
    base = f"{locus_url.rstrip('/')}/participant/{quote(self_id, safe='')}"
    if session_type == PRACTICE_SESSION:
        return f"{base}/practiceSession/datachannel/token"
    return f"{base}/datachannel/token"


# -- state ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldToken:
    token: str = field(repr=False)
    expires_at: float


@dataclass(frozen=True, slots=True)
class Waiter:
    """A requester waiting for a fetch: answered with the token
    (``wants_token``, a :class:`TokenRequest`) or with :class:`TokenHeld`
    (a :class:`TokenEnsure`)."""

    reply_to: str
    request_id: str
    wants_token: bool


@dataclass(frozen=True, slots=True)
class Slot:
    """One session type's token and the work in progress for it.

    ``fetching``: id of the fetch in flight (0: none). ``retry_of``: id of
    a refused fetch whose retry timer is pending (0: none). ``retried``: the
    current attempt is already the one retry after a refusal."""

    held: HeldToken | None = None
    fetching: int = 0
    retry_of: int = 0
    retried: bool = False
    waiting: tuple[Waiter, ...] = ()

    @property
    def busy(self) -> bool:
        return bool(self.fetching or self.retry_of)


@dataclass(frozen=True, slots=True)
class TokenConfig:
    locus_url: str
    self_id: str
    practice: bool = False

    def wants(self, session_type: str) -> bool:
        """Is this token kept fresh ahead of expiry?"""
        return session_type == DEFAULT_SESSION or self.practice


_EMPTY_SLOTS: Mapping[str, Slot] = {t: Slot() for t in SESSION_TYPES}


@dataclass(frozen=True, slots=True)
class TokenState:
    """The whole state of one meeting's token actor. ``generation`` is -1
    until the first configure; ``left`` after a forget. Treat as immutable
    (``slots`` is replaced, never changed in place)."""

    incarnation: int = 1
    generation: int = -1
    config: TokenConfig | None = None
    left: bool = False
    slots: Mapping[str, Slot] = field(default_factory=lambda: dict(_EMPTY_SLOTS))
    next_fetch_id: int = 1

    def slot(self, session_type: str) -> Slot:
        return self.slots[session_type]

    def with_slot(self, session_type: str, slot: Slot) -> TokenState:
        return evolve(self, slots={**self.slots, session_type: slot})

    def checkpoint(self) -> dict[str, Any]:
        """msgpack primitives, and never a token."""
        config = self.config
        return {
            "generation": self.generation,
            "left": self.left,
            "locus_url": config.locus_url if config else None,
            "self_id": config.self_id if config else None,
            "practice": config.practice if config else False,
        }

    @classmethod
    def restore(cls, checkpoint: object, incarnation: int = 1) -> TokenState:
        """The state a new incarnation starts from: the configuration of the
        checkpoint (no tokens: those are fetched again on demand). A
        checkpoint that does not have the expected shape gives a fresh state."""
        fresh = cls(incarnation=incarnation)
        if not isinstance(checkpoint, dict):
            return fresh
        generation = checkpoint.get("generation")
        locus_url, self_id = checkpoint.get("locus_url"), checkpoint.get("self_id")
        practice, left = checkpoint.get("practice"), checkpoint.get("left")
        if type(generation) is not int or type(practice) is not bool or type(left) is not bool:
            return fresh
        config = None
        if isinstance(locus_url, str) and locus_url and isinstance(self_id, str) and self_id:
            config = TokenConfig(locus_url, self_id, practice)
        return cls(incarnation=incarnation, generation=generation, config=config, left=left)


Step = tuple[TokenState, list[Effect]]


def refresh_timer(session_type: str) -> str:
    return f"refresh:{session_type}"


def retry_timer(session_type: str) -> str:
    return f"retry:{session_type}"


# -- the step function -------------------------------------------------------------


def step(state: TokenState, message: Message, now: float, sender: str | None = None) -> Step:
    """Handle one message at wall time ``now``; ``sender`` is the envelope's
    sender (where answers go). Unknown message types raise ``TypeError``
    (the shell only passes the kinds listed here)."""
    match message:
        case TokenRequest():
            return _request(state, message.session_type, message.request_id, now, sender,
                            wants_token=True, refresh=message.refresh)
        case TokenEnsure():
            return _request(state, message.session_type, message.request_id, now, sender,
                            wants_token=False, refresh=False)
        case TokenFetched():
            return _fetched(state, message, now)
        case RefreshDue():
            return _refresh_due(state, message)
        case RetryDue():
            return _retry_due(state, message)
        case TokenConfigure():
            return _configure(state, message, now)
        case TokenSeed():
            return _seed(state, message, now)
        case TokenForget():
            return _forget(state, message)
    raise TypeError(f"the token core does not handle {type(message).__name__}")


def _stale(what: str, generation: int, state: TokenState, **detail: Any) -> Effect:
    return Emit("stale-dropped", reason=what, detail={"generation": generation, "current": state.generation, **detail})


def _bad_input(reason: str, **detail: Any) -> Effect:
    return Emit("bad-input", reason=reason, detail=detail)


def _configure(state: TokenState, message: TokenConfigure, now: float) -> Step:
    if not message.locus_url or not message.self_id:
        return state, [_bad_input("configure-incomplete", generation=message.generation)]
    config = TokenConfig(message.locus_url, message.self_id, message.practice)
    if message.generation <= state.generation:
        if message.generation == state.generation and config == state.config:
            return state, []  # the same configure again: nothing changes
        return state, [_stale("configure", message.generation, state)]
    same_participant = state.config is not None and state.config.self_id == config.self_id
    effects: list[Effect] = []
    slots: dict[str, Slot] = {}
    for session_type, slot in state.slots.items():
        # Work started under the old generation is stale from now on.
        if slot.retry_of:
            effects.append(CancelTimer(retry_timer(session_type)))
        held = slot.held
        if held is not None and not (same_participant and config.wants(session_type)):
            held = None
            effects.append(CancelTimer(refresh_timer(session_type)))
        slots[session_type] = evolve(slot, held=held, fetching=0, retry_of=0, retried=False)
    state = evolve(state, generation=message.generation, config=config, left=False, slots=slots)
    effects.append(SaveCheckpoint(state.checkpoint()))
    effects.append(Emit("configured", detail={"generation": state.generation, "practice": config.practice,
                                              "same_participant": same_participant,
                                              "participant": config.self_id}))
    for session_type in SESSION_TYPES:
        slot = state.slot(session_type)
        if slot.waiting:
            state, fetch = _start_fetch(state, session_type)
            effects += fetch
        elif slot.held is not None:
            effects += _schedule_refresh(state, session_type, slot.held, now)
    return state, effects


def _seed(state: TokenState, message: TokenSeed, now: float) -> Step:
    if state.config is None or message.generation != state.generation:
        return state, [_stale("seed", message.generation, state)]
    effects: list[Effect] = []
    for session_type, token in ((DEFAULT_SESSION, message.default_token), (PRACTICE_SESSION, message.practice_token)):
        if token:
            state, stored = _store(state, session_type, token, now, source="seed")
            effects += stored
    return state, effects


def _forget(state: TokenState, message: TokenForget) -> Step:
    if message.generation < state.generation:
        return state, [_stale("forget", message.generation, state)]
    reason = message.reason or UnavailableReason.MEETING_LEFT
    effects: list[Effect] = []
    for session_type, slot in state.slots.items():
        effects += [CancelTimer(refresh_timer(session_type)), CancelTimer(retry_timer(session_type))]
        effects += _fail_waiting(session_type, slot, reason)
    state = TokenState(incarnation=state.incarnation, generation=message.generation, left=True,
                       next_fetch_id=state.next_fetch_id)
    effects.append(SaveCheckpoint(state.checkpoint()))
    effects.append(Emit("forgotten", reason=reason, detail={"generation": state.generation}))
    return state, effects


def _request(state: TokenState, session_type: str, request_id: str, now: float, sender: str | None, *,
             wants_token: bool, refresh: bool) -> Step:
    if sender is None:
        return state, [_bad_input("no-sender", session_type=session_type[:64])]

    def unavailable(reason: str) -> Effect:
        return Send(sender, TokenUnavailable(session_type=session_type, request_id=request_id, reason=reason))

    if session_type not in SESSION_TYPES:
        return state, [_bad_input(UnavailableReason.UNKNOWN_SESSION_TYPE, sender=sender),
                       unavailable(UnavailableReason.UNKNOWN_SESSION_TYPE)]
    if state.config is None:
        return state, [unavailable(UnavailableReason.MEETING_LEFT if state.left else UnavailableReason.NOT_CONFIGURED)]
    waiter = Waiter(sender, request_id, wants_token)
    slot = state.slot(session_type)
    effects: list[Effect] = []
    held = slot.held
    if held is not None and not refresh and not counts_as_expired(held.expires_at, now):
        return state, [_answer(session_type, waiter, held)]
    if held is not None:
        # Refused by the server, or past the margin: never handed out again.
        slot = evolve(slot, held=None)
        effects += [CancelTimer(refresh_timer(session_type)),
                    Emit("token-dropped", reason="refresh-requested" if refresh else "expired",
                         detail={"session_type": session_type})]
    if len(slot.waiting) >= MAX_WAITING:
        state = state.with_slot(session_type, slot)
        return state, [*effects, unavailable(UnavailableReason.TOO_MANY_WAITING)]
    slot = evolve(slot, waiting=(*slot.waiting, waiter))
    state = state.with_slot(session_type, slot)
    if not slot.busy:
        state, fetch = _start_fetch(state, session_type)
        effects += fetch
    return state, effects


def _fetched(state: TokenState, message: TokenFetched, now: float) -> Step:
    session_type = message.session_type
    if session_type not in SESSION_TYPES:
        return state, [_bad_input("unknown-session-type")]
    slot = state.slot(session_type)
    if (message.incarnation != state.incarnation or message.generation != state.generation
            or state.config is None or message.fetch_id != slot.fetching):
        return state, [_stale("fetch", message.generation, state, session_type=session_type)]
    slot = evolve(slot, fetching=0)
    if not message.failure:
        state = state.with_slot(session_type, evolve(slot, retried=False))
        return _store(state, session_type, message.token, now, source="fetch")
    if message.failure == Failure.REFUSED and not slot.retried:
        slot = evolve(slot, retry_of=message.fetch_id, retried=True)
        retry = RetryDue(session_type=session_type, generation=state.generation, fetch_id=message.fetch_id)
        return state.with_slot(session_type, slot), [
            Emit("token-fetch-refused", reason=Failure.REFUSED,
                 detail={"session_type": session_type, "status": message.status, "retry_in_s": AUTH_RETRY_DELAY_S}),
            StartTimer(retry_timer(session_type), AUTH_RETRY_DELAY_S, retry),
        ]
    if message.failure == Failure.REFUSED:
        reason = UnavailableReason.REFUSED
    else:
        reason = f"{UnavailableReason.FETCH_FAILED}:{message.failure}"
    effects: list[Effect] = [Emit("token-fetch-failed", reason=message.failure,
                                  detail={"session_type": session_type, "status": message.status})]
    effects += _fail_waiting(session_type, slot, reason)
    state = state.with_slot(session_type, evolve(slot, retried=False, waiting=()))
    return state, effects


def _refresh_due(state: TokenState, message: RefreshDue) -> Step:
    slot = state.slots.get(message.session_type)
    if (slot is None or message.generation != state.generation or state.config is None
            or slot.held is None or slot.held.expires_at != message.expires_at or slot.busy):
        return state, []  # replaced, dropped or already being refreshed
    state, effects = _start_fetch(state, message.session_type)
    return state, [Emit("token-refreshing", detail={"session_type": message.session_type}), *effects]


def _retry_due(state: TokenState, message: RetryDue) -> Step:
    slot = state.slots.get(message.session_type)
    if (slot is None or message.generation != state.generation or state.config is None
            or slot.retry_of != message.fetch_id or slot.retry_of == 0):
        return state, []
    state = state.with_slot(message.session_type, evolve(slot, retry_of=0))
    return _start_fetch(state, message.session_type)


# -- helpers ---------------------------------------------------------------------


def _start_fetch(state: TokenState, session_type: str) -> Step:
    config = state.config
    assert config is not None
    fetch_id = state.next_fetch_id
    slot = evolve(state.slot(session_type), fetching=fetch_id)
    state = evolve(state.with_slot(session_type, slot), next_fetch_id=fetch_id + 1)
    fetch = FetchToken(session_type=session_type, url=token_url(config.locus_url, config.self_id, session_type),
                       self_id=config.self_id, generation=state.generation, incarnation=state.incarnation,
                       fetch_id=fetch_id)
    return state, [fetch]


def _store(state: TokenState, session_type: str, token: str, now: float, *, source: str) -> Step:
    """Hold ``token`` if it does not count as expired, and answer everyone
    waiting for this type either way."""
    slot = state.slot(session_type)
    expires_at = jwt_expiry(token)
    if counts_as_expired(expires_at, now):
        effects: list[Effect] = [Emit("token-rejected", reason="undecodable" if expires_at is None else "expired",
                                      detail={"session_type": session_type, "source": source})]
        effects += _fail_waiting(session_type, slot, UnavailableReason.TOKEN_EXPIRED_ON_ARRIVAL)
        return state.with_slot(session_type, evolve(slot, waiting=())), effects
    assert expires_at is not None
    held = HeldToken(token, expires_at)
    if slot.held is not None and slot.held.expires_at > expires_at and not counts_as_expired(slot.held.expires_at, now):
        held = slot.held  # a seed older than what a fetch already brought
    effects = [Emit("token-stored", detail={"session_type": session_type, "source": source,
                                            "expires_in_s": round(held.expires_at - now)})]
    effects += [_answer(session_type, waiter, held) for waiter in slot.waiting]
    state = state.with_slot(session_type, evolve(slot, held=held, waiting=()))
    effects += _schedule_refresh(state, session_type, held, now)
    return state, effects


def _schedule_refresh(state: TokenState, session_type: str, held: HeldToken, now: float) -> list[Effect]:
    if state.config is None or not state.config.wants(session_type):
        return [CancelTimer(refresh_timer(session_type))]
    delay = max(MIN_REFRESH_DELAY_S, held.expires_at - EXPIRY_MARGIN_S - now)
    due = RefreshDue(session_type=session_type, generation=state.generation, expires_at=held.expires_at)
    return [StartTimer(refresh_timer(session_type), delay, due)]


def _answer(session_type: str, waiter: Waiter, held: HeldToken) -> Effect:
    reply: Message
    if waiter.wants_token:
        reply = TokenGranted(session_type=session_type, request_id=waiter.request_id, token=held.token)
    else:
        reply = TokenHeld(session_type=session_type, request_id=waiter.request_id, expires_at=held.expires_at)
    return Send(waiter.reply_to, reply)


def _fail_waiting(session_type: str, slot: Slot, reason: str) -> list[Effect]:
    return [Send(w.reply_to, TokenUnavailable(session_type=session_type, request_id=w.request_id, reason=reason))
            for w in slot.waiting]
