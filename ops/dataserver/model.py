"""The reference data-channel service's behaviour, without I/O.

:class:`DataService` holds everything the service knows (bindings, sockets,
subscriptions, request records, faults, counters) and decides every answer.
Its methods take what arrived (a register request, a text frame, a control
command) and the time ``now``, and return what to answer plus
:class:`Action` values (send this frame, close that socket, drop it, call
back later) that the I/O layer (``ops.dataserver.server``) carries out.
Nothing here touches a socket or a clock, so every wire rule is testable by
calling these methods.

Wire rules (docs/protocol.md §1.11, server side):

- a socket path is ``/v<N>/socket/<binding>``; a binding is made by one
  register call and is valid only on the path it was issued for;
- the first client frame must be ``authorization`` with
  ``data.token = "Bearer <non-empty>"`` (else close 1008 / 4401); the
  service then sends the buffer-state frame and the socket is **online**;
- every server frame carries ``id`` and ``sequenceNumber`` (1, 2, 3 ... per
  socket); acks (``{"messageId", "type": "ack"}``) are counted;
- ``ping`` is answered by ``pong`` with the same id (a fresh one if the
  ping had none), numbered like any other server frame: the published
  Webex client checks the sequence on every frame, pongs included;
- ``subchannelSubscriptionRequest`` updates the socket's subscriptions and
  those of its session (meeting + session type);
- after ``shutdown`` is sent to a socket, the next socket of the same
  meeting, session and device to come online replaces it: the old one is
  closed with 4001 (make-before-break); past the grace it is closed anyway.

Secrets: token values (the user token in ``authorization``, the
``Data-Channel-Auth-Token`` header, the ``Authorization`` header, issued
JWTs) are judged and forgotten; no record keeps them.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from bus.errors import HuddleError
from ops.dataserver.tokens import TokenAuthority, TokenStatus

__all__ = [
    "Action",
    "BadControlRequest",
    "CallLater",
    "StartClose",
    "DataService",
    "DropSocket",
    "Faults",
    "HttpAnswer",
    "WriteFrame",
    "SocketFilter",
    "SocketRecord",
    "normalize_session",
]

SESSION_ALIASES: Mapping[str, str] = {
    "default": DEFAULT_SESSION,
    "practice": PRACTICE_SESSION,
    DEFAULT_SESSION: DEFAULT_SESSION,
    PRACTICE_SESSION: PRACTICE_SESSION,
}

BUFFER_STATE = "mercury.buffer_state"

#: Close codes a server may put in a close frame (RFC 6455 7.4): 1005,
#: 1006 and 1015 are never sent; 3000-4999 are for applications.
SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

CLOSED_HISTORY = 20_000
"""Closed socket records kept for ``/control/state`` (oldest forgotten first)."""

UNACKED_TRACKED = 256
"""Per socket, at most this many unacknowledged frame ids are remembered
(oldest forgotten first), so a client that never acks costs bounded memory."""

REQUEST_HISTORY = 10_000
"""Register and token request records kept (oldest forgotten first)."""

DEFAULT_SHUTDOWN_GRACE_S = 10.0
"""After ``shutdown``, how long an old socket waits for its replacement."""


class BadControlRequest(HuddleError):
    """A control or register request the service cannot act on (HTTP 400)."""


def normalize_session(value: object) -> str:
    """``llm-default-session`` / ``llm-practice-session`` from either the
    session id or its short name (``default`` / ``practice``)."""
    if isinstance(value, str) and value in SESSION_ALIASES:
        return SESSION_ALIASES[value]
    raise BadControlRequest(f"unknown session {value!r} (expected one of {sorted(SESSION_ALIASES)})")


# -- actions ------------------------------------------------------------------


class Action:
    """Marker base: plain-data instruction for the I/O layer."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class WriteFrame(Action):
    """Write ``frame`` (already numbered) as one JSON text frame."""

    socket: str
    frame: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StartClose(Action):
    """Start the closing handshake with ``code`` and ``reason``."""

    socket: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DropSocket(Action):
    """Abort the TCP connection without a close frame (the peer sees 1006)."""

    socket: str


@dataclass(frozen=True, slots=True)
class CallLater(Action):
    """Call :meth:`DataService.replacement_deadline` with ``socket`` after
    ``delay`` seconds and carry out what it returns."""

    socket: str
    delay: float


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What an HTTP endpoint answers, after waiting ``delay`` seconds."""

    status: int
    body: Mapping[str, Any]
    delay: float = 0.0


# -- records ------------------------------------------------------------------


@dataclass(slots=True)
class Binding:
    """Made by one register call; a socket opens on ``path``."""

    id: str
    meeting: str
    session: str
    device_url: str
    path: str
    sockets: int = 0
    subscriptions: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SocketRecord:
    """One WebSocket as the service sees it. Kept small: the service holds
    thousands of these."""

    id: str
    path: str
    binding: str | None
    meeting: str | None
    session: str | None
    device_url: str | None
    query: dict[str, str]
    opened_at: float
    open: bool = True
    authorized: bool = False
    online: bool = False
    refused: int | None = None
    acks: int = 0
    pings: int = 0
    frames_sent: int = 0
    next_sequence: int = 1
    sequence_skip: int = 0
    shutdown_sent: bool = False
    replaced_by: str | None = None
    tracking_id: str | None = None
    subscription_requests: int = 0
    subscriptions: list[str] = field(default_factory=list)
    #: when the last subscription request on this socket was handled
    subscribed_at: float | None = None
    unacked: dict[str | int, None] = field(default_factory=dict)
    close: dict[str, Any] | None = None

    def number(self, frame: Mapping[str, Any], new_id: Callable[[], str]) -> dict[str, Any]:
        """``frame`` with an ``id`` (kept if it has one: a non-empty string
        or an integer) and this socket's next ``sequenceNumber`` (after any
        pending skip)."""
        numbered = dict(frame)
        frame_id = numbered.get("id")
        if not _is_frame_id(frame_id):
            frame_id = new_id()
            numbered["id"] = frame_id
        sequence = self.next_sequence + self.sequence_skip
        numbered["sequenceNumber"] = sequence
        self.next_sequence = sequence + 1
        self.sequence_skip = 0
        self.frames_sent += 1
        self.unacked[frame_id] = None
        if len(self.unacked) > UNACKED_TRACKED:
            del self.unacked[next(iter(self.unacked))]
        return numbered

    def live_json(self) -> dict[str, Any]:
        """What a live view of an open socket needs (``detail=open``):
        who it is for and whether it is online and subscribed."""
        return {
            "id": self.id,
            "meeting": self.meeting,
            "session": self.session,
            "device_url": self.device_url,
            "open": self.open,
            "online": self.online,
            "subscriptions": list(self.subscriptions),
            "opened_at": self.opened_at,
            "subscribed_at": self.subscribed_at,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "binding": self.binding,
            "meeting": self.meeting,
            "session": self.session,
            "device_url": self.device_url,
            "open": self.open,
            "authorized": self.authorized,
            "online": self.online,
            "refused": self.refused,
            "tracking_id": self.tracking_id,
            "subscriptions": list(self.subscriptions),
            "subscription_requests": self.subscription_requests,
            "acks": self.acks,
            "unacked": len(self.unacked),
            "pings": self.pings,
            "frames_sent": self.frames_sent,
            "last_sequence": self.next_sequence - 1,
            "shutdown_sent": self.shutdown_sent,
            "replaced_by": self.replaced_by,
            "query": dict(self.query),
            "opened_at": self.opened_at,
            "subscribed_at": self.subscribed_at,
            "close": dict(self.close) if self.close is not None else None,
        }


@dataclass(frozen=True, slots=True)
class SocketFilter:
    """Which sockets a control command acts on; an unset key matches all."""

    meeting: str | None = None
    session: str | None = None
    socket: str | None = None
    binding: str | None = None

    KEYS = ("meeting", "session", "socket", "binding")

    @classmethod
    def parse(cls, fields: Mapping[str, Any], *, extra: Iterable[str] = ()) -> SocketFilter:
        """The filter keys of ``fields``; a key that is neither a filter key
        nor in ``extra`` is refused."""
        unknown = set(fields) - set(cls.KEYS) - set(extra)
        if unknown:
            raise BadControlRequest(f"unknown keys {sorted(unknown)} (filter keys: {list(cls.KEYS)})")
        values: dict[str, str | None] = {}
        for key in cls.KEYS:
            value = fields.get(key)
            if value is not None and not isinstance(value, str):
                raise BadControlRequest(f"filter {key} must be a string")
            values[key] = value
        if values["session"] is not None:
            values["session"] = normalize_session(values["session"])
        return cls(**values)

    def matches(self, record: SocketRecord) -> bool:
        return (
            (self.meeting is None or record.meeting == self.meeting)
            and (self.session is None or record.session == self.session)
            and (self.socket is None or record.id == self.socket)
            and (self.binding is None or record.binding == self.binding)
        )

    def matches_binding(self, binding: Binding | None) -> bool:
        if self.socket is not None:
            return False
        if binding is None:
            return self.meeting is None and self.session is None and self.binding is None
        return (
            (self.meeting is None or binding.meeting == self.meeting)
            and (self.session is None or binding.session == self.session)
            and (self.binding is None or binding.id == self.binding)
        )

    def as_json(self) -> dict[str, str]:
        return {k: v for k in self.KEYS if (v := getattr(self, k)) is not None}


# -- faults -------------------------------------------------------------------


@dataclass(slots=True)
class RefuseRule:
    code: int
    remaining: int
    where: SocketFilter


@dataclass(slots=True)
class FailNext:
    status: int
    remaining: int


@dataclass(slots=True)
class Faults:
    """Standing faults: they shape later requests until changed or used up."""

    require_token: bool = False
    token_ttl_s: float = 3600.0
    withhold_buffer_state: bool = False
    withhold_pong: bool = False
    withhold_close_frame: bool = False
    pong_mismatch: bool = False
    register_delay_s: float = 0.0
    register_fail: FailNext | None = None
    register_omit_websocket_url: int = 0
    token_fail: FailNext | None = None
    token_delay_s: float = 0.0
    rotate_urls: bool = False
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    refusals: list[RefuseRule] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "require_token": self.require_token,
            "token_ttl_s": self.token_ttl_s,
            "withhold": {
                "buffer_state": self.withhold_buffer_state,
                "pong": self.withhold_pong,
                "close_frame": self.withhold_close_frame,
            },
            "pong_mismatch": self.pong_mismatch,
            "register_delay_s": self.register_delay_s,
            "register_fail_next": _fail_json(self.register_fail),
            "register_omit_websocket_url": self.register_omit_websocket_url,
            "token_fail_next": _fail_json(self.token_fail),
            "token_delay_s": self.token_delay_s,
            "rotate_urls": self.rotate_urls,
            "shutdown_grace_s": self.shutdown_grace_s,
            "refuse_next": [{"code": r.code, "count": r.remaining, **r.where.as_json()} for r in self.refusals],
        }


def _fail_json(fail: FailNext | None) -> dict[str, int] | None:
    return None if fail is None or fail.remaining <= 0 else {"status": fail.status, "count": fail.remaining}


# -- the service --------------------------------------------------------------


def _new_id() -> str:
    return str(uuid.uuid4())


class DataService:
    """Everything the reference service knows, and every decision it makes.

    ``ws_base`` is the ``ws://host:port`` that register answers point at.
    ``require_token`` and ``token_ttl_s`` are the start-up values that
    :meth:`reset` returns to. Not thread-safe: one asyncio loop owns it.
    """

    def __init__(
        self,
        *,
        ws_base: str,
        http_base: str = "",
        authority: TokenAuthority | None = None,
        require_token: bool = False,
        token_ttl_s: float = 3600.0,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.ws_base = ws_base.rstrip("/")
        self.http_base = http_base.rstrip("/")
        self.authority = authority or TokenAuthority()
        self._initial = (require_token, token_ttl_s)
        self._new_id = new_id
        # Ids keep counting across resets: a late event about a socket from
        # before a reset must never land on a new one.
        self._socket_seq = 0
        self._binding_seq = 0
        self._clear()

    def _clear(self) -> None:
        require_token, token_ttl_s = self._initial
        self.faults = Faults(require_token=require_token, token_ttl_s=token_ttl_s)
        self.bindings: dict[str, Binding] = {}
        self.sockets: dict[str, SocketRecord] = {}
        self._closed_order: deque[str] = deque()
        self.registers: Counter[str] = Counter()
        self.register_requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_HISTORY)
        self.token_requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_HISTORY)
        self.subscriptions: dict[str, list[str]] = {}
        self.counters: Counter[str] = Counter()
        self._awaiting_replacement: set[str] = set()
        """Open sockets sent ``shutdown`` and not replaced yet."""
        self.open_count = 0
        self.online_count = 0

    # -- HTTP: register ----------------------------------------------------

    def register_path(self, meeting: str, session: str) -> str:
        """The register URL path of a meeting's session (its datachannelUrl)."""
        suffix = "/practice" if session == PRACTICE_SESSION else ""
        return f"/datachannel/{meeting}{suffix}"

    def register(self, meeting: str, session: str, body: Any, token: str | None, now: float) -> HttpAnswer:
        """Answer ``POST <datachannelUrl>`` (``body`` is the parsed JSON, or
        None if it was not JSON; ``token`` the ``Data-Channel-Auth-Token``
        header). On success a fresh binding exists for the answer's
        ``webSocketUrl``."""
        key = f"{meeting}/{session}"
        self.registers[key] += 1
        self.counters["registers"] += 1
        token_status = self.authority.check(token, audience=session, now=now)
        holder = self.authority.holder(token)
        record: dict[str, Any] = {
            "meeting": meeting,
            "session": session,
            "deviceUrl": None,
            "token": token_status.value,
            # whom the token was issued to (ids, not secrets): a token of
            # another meeting or a former participant shows here
            "token_meeting": holder[0] if holder else None,
            "token_self": holder[1] if holder else None,
            "status": 0,
            "binding": None,
            "at": now,
        }
        self.register_requests.append(record)
        delay = self.faults.register_delay_s

        def answer(status: int, payload: Mapping[str, Any]) -> HttpAnswer:
            record["status"] = status
            if status != 200:
                self.counters["register_failures"] += 1
            return HttpAnswer(status, payload, delay)

        device_url = body.get("deviceUrl") if isinstance(body, dict) else None
        if not isinstance(device_url, str) or not device_url:
            return answer(400, {"error": 'body must be a JSON object with a non-empty "deviceUrl"'})
        record["deviceUrl"] = device_url
        fail = self.faults.register_fail
        if fail is not None and fail.remaining > 0:
            fail.remaining -= 1
            return answer(fail.status, {"error": f"injected failure ({fail.status})"})
        if self.faults.require_token and token_status is not TokenStatus.VALID:
            return answer(401, {"error": f"data-channel token {token_status.value}"})
        self._binding_seq += 1
        binding_id = f"b{self._binding_seq}-{self._new_id()[:8]}"
        version = "v2" if self.faults.rotate_urls else "v1"
        path = f"/{version}/socket/{binding_id}"
        self.bindings[binding_id] = Binding(binding_id, meeting, session, device_url, path)
        record["binding"] = binding_id
        payload: dict[str, Any] = {"binding": binding_id}
        if self.faults.register_omit_websocket_url > 0:
            self.faults.register_omit_websocket_url -= 1
        else:
            payload["webSocketUrl"] = self.ws_base + path
        return answer(200, payload)

    # -- HTTP: locus and tokens -------------------------------------------

    def locus(self, meeting: str) -> HttpAnswer:
        """A minimal locus of ``meeting``: where its sessions register."""
        return HttpAnswer(200, {
            "url": f"{self.http_base}/locus/{meeting}",
            "datachannelUrl": self.http_base + self.register_path(meeting, DEFAULT_SESSION),
            "practiceSessionDatachannelUrl": self.http_base + self.register_path(meeting, PRACTICE_SESSION),
        })

    def token(self, meeting: str, self_id: str, session: str, headers: Mapping[str, str], now: float) -> HttpAnswer:
        """Answer ``GET {locus}/participant/{self}/[practiceSession/]datachannel/token``.

        Needs ``Authorization: Bearer <non-empty>``. The request's headers
        are recorded with every secret-bearing one (``Authorization``,
        ``Cookie``, anything with ``token`` in its name) replaced by
        ``{"present": true}``. Every answer waits ``token_delay_s`` (a
        fault) before it is sent."""
        self.counters["token_requests"] += 1
        recorded: dict[str, Any] = {}
        for name, value in headers.items():
            lowered = name.lower()
            secret = lowered in ("authorization", "cookie", "proxy-authorization") or "token" in lowered
            recorded[name] = {"present": True} if secret else value
        authorization = _header(headers, "authorization")
        record: dict[str, Any] = {
            "meeting": meeting,
            "self": self_id,
            "session": session,
            "authorization": {"present": authorization is not None},
            "headers": recorded,
            "status": 0,
            "at": now,
        }
        self.token_requests.append(record)
        delay = self.faults.token_delay_s

        def answer(status: int, payload: Mapping[str, Any]) -> HttpAnswer:
            record["status"] = status
            if status != 200:
                self.counters["token_failures"] += 1
            return HttpAnswer(status, payload, delay)

        if not _is_bearer(authorization):
            return answer(401, {"error": "Authorization: Bearer <token> required"})
        fail = self.faults.token_fail
        if fail is not None and fail.remaining > 0:
            fail.remaining -= 1
            return answer(fail.status, {"error": f"injected failure ({fail.status})"})
        token = self.authority.issue(subject=self_id, audience=session, meeting=meeting, now=now,
                                     ttl_s=self.faults.token_ttl_s)
        self.counters["tokens_issued"] += 1
        return answer(200, {"datachannelToken": token})

    def mint(self, fields: Mapping[str, Any], now: float) -> dict[str, Any]:
        """A token for tests (``/control/mint_token``): ``{"self", "session",
        "meeting", "ttl_s"}``, all optional; a negative ``ttl_s`` mints an
        expired one. Not recorded."""
        session = normalize_session(fields.get("session", DEFAULT_SESSION))
        ttl = fields.get("ttl_s", self.faults.token_ttl_s)
        if not isinstance(ttl, int | float) or isinstance(ttl, bool):
            raise BadControlRequest("ttl_s must be a number")
        token = self.authority.issue(subject=str(fields.get("self", "self")), audience=session,
                                     meeting=str(fields.get("meeting", "")), now=now, ttl_s=float(ttl))
        return {"datachannelToken": token}

    # -- WebSocket --------------------------------------------------------

    def open_socket(self, target: str, now: float) -> tuple[SocketRecord, list[Action]]:
        """A socket was accepted on ``target`` (path and query). Returns its
        record and, if it is refused (unknown binding, or a ``refuse_next``
        fault), the close to carry out at once."""
        path, _, query_string = target.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        self._socket_seq += 1
        binding = self._binding_for(path)
        record = SocketRecord(
            id=f"s{self._socket_seq}",
            path=path,
            binding=binding.id if binding else None,
            meeting=binding.meeting if binding else None,
            session=binding.session if binding else None,
            device_url=binding.device_url if binding else None,
            query=query,
            opened_at=now,
        )
        self.sockets[record.id] = record
        self.open_count += 1
        self.counters["sockets_opened"] += 1
        if binding is None:
            return record, self._refuse(record, 4400, "unknown binding")
        binding.sockets += 1
        for refusal in self.faults.refusals:
            if refusal.remaining > 0 and refusal.where.matches_binding(binding):
                refusal.remaining -= 1
                self.faults.refusals = [r for r in self.faults.refusals if r.remaining > 0]
                return record, self._refuse(record, refusal.code, "refused (injected)")
        return record, []

    def _binding_for(self, path: str) -> Binding | None:
        parts = path.split("/")
        # "", "v1", "socket", "<binding>"
        if len(parts) != 4 or parts[0] or parts[2] != "socket":
            return None
        binding = self.bindings.get(parts[3])
        if binding is None or binding.path != path:
            return None
        return binding

    def _refuse(self, record: SocketRecord, code: int, reason: str) -> list[Action]:
        record.refused = code
        self.counters["sockets_refused"] += 1
        return [StartClose(record.id, code, reason)]

    def receive(self, socket_id: str, text: str | bytes, now: float) -> list[Action]:
        """One text frame from the client of ``socket_id``."""
        record = self.sockets.get(socket_id)
        if record is None or not record.open or record.refused is not None:
            return []
        try:
            frame = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            frame = None
        if not isinstance(frame, dict):
            self.counters["bad_frames"] += 1
            return []
        kind = frame.get("type")
        if not record.authorized:
            return self._authorize(record, frame)
        if kind == "ack":
            return self._ack(record, frame)
        if kind == "ping":
            return self._ping(record, frame)
        if kind == "subchannelSubscriptionRequest":
            return self._subscribe(record, frame, now)
        if kind == "authorization":
            self.counters["repeated_authorizations"] += 1
            return []
        self.counters["unknown_frames"] += 1
        return []

    def _authorize(self, record: SocketRecord, frame: Mapping[str, Any]) -> list[Action]:
        if frame.get("type") != "authorization":
            self.counters["unauthorized_frames"] += 1
            return [StartClose(record.id, 1008, "authorization expected first")]
        data = frame.get("data")
        if not isinstance(data, dict) or not _is_bearer(data.get("token")):
            self.counters["bad_authorizations"] += 1
            return [StartClose(record.id, 4401, "invalid authorization")]
        record.authorized = True
        tracking_id = frame.get("trackingId")
        record.tracking_id = tracking_id if isinstance(tracking_id, str) else None
        self.counters["authorizations"] += 1
        if self.faults.withhold_buffer_state:
            self.counters["buffer_states_withheld"] += 1
            return []
        return self._go_online(record)

    def _go_online(self, record: SocketRecord) -> list[Action]:
        """Send the buffer-state frame; the socket is online. Sockets it
        replaces (shut down, same meeting, session and device) close 4001."""
        frame = record.number({"data": {"eventType": BUFFER_STATE}}, self._new_id)
        record.online = True
        self.online_count += 1
        self.counters["frames_sent"] += 1
        actions: list[Action] = [WriteFrame(record.id, frame)]
        for old_id in list(self._awaiting_replacement):
            old = self.sockets.get(old_id)
            if old is None or not old.open:
                self._awaiting_replacement.discard(old_id)
            elif (old is not record and old.meeting == record.meeting and old.session == record.session
                    and old.device_url == record.device_url):
                old.replaced_by = record.id
                self._awaiting_replacement.discard(old_id)
                self.counters["switchovers"] += 1
                actions.append(StartClose(old.id, 4001, "replaced"))
        return actions

    def _ack(self, record: SocketRecord, frame: Mapping[str, Any]) -> list[Action]:
        message_id = frame.get("messageId")
        record.acks += 1
        self.counters["acks"] += 1
        if _is_frame_id(message_id) and message_id in record.unacked:
            del record.unacked[message_id]
        else:
            self.counters["acks_unknown"] += 1
        return []

    def _ping(self, record: SocketRecord, frame: Mapping[str, Any]) -> list[Action]:
        record.pings += 1
        self.counters["pings"] += 1
        if self.faults.withhold_pong:
            self.counters["pongs_withheld"] += 1
            return []
        ping_id = frame.get("id")
        if self.faults.pong_mismatch:
            ping_id = f"mismatch-{self._new_id()}"
        self.counters["pongs"] += 1
        self.counters["frames_sent"] += 1
        # Numbered like every other server frame: a client that checks the
        # sequence (as the published Webex socket does on every frame it
        # receives) would otherwise count each pong as a lost message.
        return [WriteFrame(record.id, record.number({"id": ping_id, "type": "pong"}, self._new_id))]

    def _subscribe(self, record: SocketRecord, frame: Mapping[str, Any], now: float) -> list[Action]:
        data = frame.get("data")
        subscribe = data.get("subscribe", []) if isinstance(data, dict) else None
        unsubscribe = data.get("unsubscribe", []) if isinstance(data, dict) else None
        if not _is_str_list(subscribe) or not _is_str_list(unsubscribe):
            self.counters["bad_frames"] += 1
            return []
        self.counters["subscription_requests"] += 1
        record.subscription_requests += 1
        record.subscribed_at = now
        session_key = f"{record.meeting}/{record.session}"
        binding = self.bindings.get(record.binding or "")
        for target in (record.subscriptions, self.subscriptions.setdefault(session_key, []),
                       binding.subscriptions if binding else []):
            _apply_subscription(target, subscribe, unsubscribe)
        return []

    def socket_closed(self, socket_id: str, code: int | None, reason: str, by: str) -> None:
        """The socket's TCP connection is gone; ``by`` says who ended it
        (``client``, ``server``, ``drop``, ``lost``)."""
        record = self.sockets.get(socket_id)
        if record is None or not record.open:
            return
        record.open = False
        self.open_count -= 1
        if record.online:
            record.online = False
            self.online_count -= 1
        record.close = {"code": code, "reason": reason, "by": by}
        record.unacked.clear()
        self.counters["sockets_closed"] += 1
        self._closed_order.append(socket_id)
        while len(self._closed_order) > CLOSED_HISTORY:
            self.sockets.pop(self._closed_order.popleft(), None)

    def replacement_deadline(self, socket_id: str) -> list[Action]:
        """The grace after ``shutdown`` ended: a socket still not replaced
        is closed with 4001 anyway."""
        record = self.sockets.get(socket_id)
        if record is None or not record.open or record.replaced_by is not None:
            return []
        self._awaiting_replacement.discard(socket_id)
        self.counters["shutdown_grace_expired"] += 1
        return [StartClose(record.id, 4001, "shutdown grace expired")]

    def release_buffer_states(self) -> list[Action]:
        """Authorized sockets still waiting for their buffer-state frame
        get it now (after ``withhold.buffer_state`` is turned off)."""
        actions: list[Action] = []
        for record in list(self.sockets.values()):
            if record.open and record.authorized and not record.online:
                actions += self._go_online(record)
        return actions

    # -- control ------------------------------------------------------------

    def apply_faults(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[Action]]:
        """``POST /control/faults``. Standing faults change; ``drop`` and
        ``close`` act at once. Returns ``{"faults": ..., "affected": ...}``.
        The whole body is checked before anything changes."""
        if not isinstance(body, dict):
            raise BadControlRequest("body must be a JSON object")
        known = {"drop", "close", "refuse_next", "withhold", "register_delay_s", "register_fail_next",
                 "register_omit_websocket_url", "token_fail_next", "token_delay_s", "rotate_urls",
                 "require_token", "token_ttl_s", "pong_mismatch", "shutdown_grace_s"}
        unknown = set(body) - known
        if unknown:
            raise BadControlRequest(f"unknown faults {sorted(unknown)} (known: {sorted(known)})")
        changes: list[Callable[[], None]] = []
        actions: list[Action] = []
        affected: dict[str, int] = {}
        faults = self.faults

        if "drop" in body:
            where = SocketFilter.parse(_object(body["drop"], "drop"))
            targets = [r for r in self._open(where)]
            affected["drop"] = len(targets)
            actions += [DropSocket(r.id) for r in targets]
        if "close" in body:
            spec = _object(body["close"], "close")
            where = SocketFilter.parse(spec, extra=("code", "reason"))
            code = _close_code(spec.get("code", 1000))
            reason = spec.get("reason", "")
            if not isinstance(reason, str) or len(reason.encode()) > 123:
                raise BadControlRequest("close reason must be a string of at most 123 bytes")
            targets = [r for r in self._open(where)]
            affected["close"] = len(targets)
            actions += [StartClose(r.id, code, reason) for r in targets]
        if "refuse_next" in body:
            spec = _object(body["refuse_next"], "refuse_next")
            where = SocketFilter.parse(spec, extra=("code", "count"))
            refusal = RefuseRule(_close_code(spec.get("code", 4401)), _count(spec.get("count", 1), "count"), where)
            changes.append(lambda: faults.refusals.append(refusal))
        if "withhold" in body:
            spec = _object(body["withhold"], "withhold")
            unknown = set(spec) - {"buffer_state", "pong", "close_frame"}
            if unknown:
                raise BadControlRequest(f"unknown withhold keys {sorted(unknown)}")
            for key, value in spec.items():
                _flag(value, f"withhold.{key}")
                changes.append(lambda key=key, value=value: setattr(faults, f"withhold_{key}", value))
        for key in ("rotate_urls", "require_token", "pong_mismatch"):
            if key in body:
                value = _flag(body[key], key)
                changes.append(lambda key=key, value=value: setattr(faults, key, value))
        for key, attr in (("register_delay_s", "register_delay_s"), ("token_delay_s", "token_delay_s"),
                          ("token_ttl_s", "token_ttl_s"), ("shutdown_grace_s", "shutdown_grace_s")):
            if key in body:
                value = _number(body[key], key, minimum=0.0 if key != "token_ttl_s" else None)
                changes.append(lambda attr=attr, value=value: setattr(faults, attr, value))
        if "register_omit_websocket_url" in body:
            count = _count(body["register_omit_websocket_url"], "register_omit_websocket_url")
            changes.append(lambda: setattr(faults, "register_omit_websocket_url", count))
        for key, attr in (("register_fail_next", "register_fail"), ("token_fail_next", "token_fail")):
            if key in body:
                spec = _object(body[key], key)
                status = spec.get("status", 500)
                if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
                    raise BadControlRequest(f"{key}.status must be an HTTP error status (400-599)")
                fail = FailNext(status, _count(spec.get("count", 1), f"{key}.count"))
                changes.append(lambda attr=attr, fail=fail: setattr(faults, attr, fail))

        was_withholding = faults.withhold_buffer_state
        for change in changes:
            change()
        self.counters["faults_applied"] += 1
        if was_withholding and not faults.withhold_buffer_state:
            actions += self.release_buffer_states()
        return {"faults": faults.as_json(), "affected": affected}, actions

    def push(self, body: Mapping[str, Any]) -> tuple[int, list[Action]]:
        """``POST /control/send``: number ``frame`` per socket and send it
        to every matching online socket. ``sequence_skip: k`` makes the
        next frame of each matching socket skip ``k`` numbers (this one, if
        ``frame`` is given). Returns how many sockets it reached."""
        if not isinstance(body, dict):
            raise BadControlRequest("body must be a JSON object")
        where = SocketFilter.parse(body, extra=("frame", "sequence_skip"))
        frame = body.get("frame")
        if frame is not None and not isinstance(frame, dict):
            raise BadControlRequest("frame must be a JSON object")
        skip = _count(body.get("sequence_skip", 0), "sequence_skip")
        if frame is None and not skip:
            raise BadControlRequest('give "frame" and/or "sequence_skip"')
        actions: list[Action] = []
        reached = 0
        for record in self._open(where):
            if not record.online:
                continue
            record.sequence_skip += skip
            reached += 1
            if frame is not None:
                actions.append(WriteFrame(record.id, record.number(frame, self._new_id)))
                self.counters["frames_sent"] += 1
                self.counters["events_pushed"] += 1
        return reached, actions

    def shutdown(self, body: Mapping[str, Any]) -> tuple[int, list[Action]]:
        """``POST /control/shutdown``: send ``type: shutdown`` to every
        matching online socket; each is closed with 4001 once its
        replacement is online, or after the grace."""
        if not isinstance(body, dict):
            raise BadControlRequest("body must be a JSON object")
        where = SocketFilter.parse(body)
        actions: list[Action] = []
        reached = 0
        for record in self._open(where):
            if not record.online or record.shutdown_sent:
                continue
            record.shutdown_sent = True
            self._awaiting_replacement.add(record.id)
            reached += 1
            self.counters["shutdowns_sent"] += 1
            self.counters["frames_sent"] += 1
            actions.append(WriteFrame(record.id, record.number({"type": "shutdown"}, self._new_id)))
            actions.append(CallLater(record.id, self.faults.shutdown_grace_s))
        return reached, actions

    def reset(self) -> list[Action]:
        """``POST /control/reset``: every open socket is closed (1001) and
        all state and faults are forgotten (start-up options kept)."""
        actions: list[Action] = [StartClose(r.id, 1001, "reset") for r in self.sockets.values() if r.open]
        resets = self.counters["resets"] + 1
        self._clear()
        self.counters["resets"] = resets
        return actions

    def _open(self, where: SocketFilter) -> list[SocketRecord]:
        return [r for r in self.sockets.values() if r.open and r.refused is None and where.matches(r)]

    def snapshot(self, *, detail: bool | Literal["open"] = True) -> dict[str, Any]:
        """``GET /control/state``. Without ``detail`` only the summary
        (registers, counts, counters, faults): cheap with thousands of
        sockets. ``detail="open"``: the summary and the open sockets, each
        as :meth:`SocketRecord.live_json` (for a view polled while
        thousands of sockets come and go: a fifth of the full state's
        bytes)."""
        state: dict[str, Any] = {
            "registers": dict(self.registers),
            "open": self.open_count,
            "online": self.online_count,
            "subscriptions": {k: list(v) for k, v in self.subscriptions.items()},
            "counters": dict(self.counters),
            "faults": self.faults.as_json(),
        }
        if detail == "open":
            state["sockets"] = [r.live_json() for r in self.sockets.values() if r.open]
        elif detail:
            state["register_requests"] = [dict(r) for r in self.register_requests]
            state["token_requests"] = [dict(r) for r in self.token_requests]
            state["sockets"] = [r.as_json() for r in self.sockets.values()]
        return state


# -- helpers ------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _is_bearer(value: object) -> bool:
    return isinstance(value, str) and value.startswith("Bearer ") and bool(value[7:].strip())


def _is_frame_id(value: object) -> bool:
    """A frame id a client may give (and expect back): a non-empty string
    or an integer."""
    return (isinstance(value, str) and bool(value)) or (isinstance(value, int) and not isinstance(value, bool))


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _apply_subscription(target: list[str], subscribe: list[str], unsubscribe: list[str]) -> None:
    for name in subscribe:
        if name not in target:
            target.append(name)
    for name in unsubscribe:
        if name in target:
            target.remove(name)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadControlRequest(f"{what} must be a JSON object")
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadControlRequest(f"{what} must be true or false")
    return value


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadControlRequest(f"{what} must be a non-negative integer")
    return value


def _number(value: object, what: str, *, minimum: float | None) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadControlRequest(f"{what} must be a number")
    if minimum is not None and value < minimum:
        raise BadControlRequest(f"{what} must be at least {minimum:g}")
    return float(value)


def _close_code(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not (
            value in SENDABLE_CLOSE_CODES or 3000 <= value <= 4999):
        raise BadControlRequest(f"close code {value!r} cannot be sent in a close frame (use drop for 1006)")
    return value
