"""Explicit context: what a job's actors are given at start, and nothing ambient.

An agent job (one agent in one room) is started with a :class:`JobContext`
captured once, at start: the job id, the room, the room service's URL and
the credentials for it. Every actor that acts for the job gets that object
in its start arguments (or the values it needs in messages). A handler that
runs late, a hang-up an hour after the call began, uses the context it was
given; nothing reaches for a "current context" that may be gone by then.

State that only holds after a step, the participant id after the room is
connected, is read through a check: :attr:`JobContext.participant_id` is
``None`` until :meth:`JobContext.connected` has produced a context that
holds a valid one. Its absence is a normal value, never an exception.

Credentials are :class:`Secret` s: their repr and str are a mask, they are
not msgpack primitives (so they cannot slip into a message body or a
checkpoint by accident), and the only way to the value is
:meth:`Secret.reveal`, at the moment a request is built.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass, field

__all__ = [
    "JOB_ID_HEADER",
    "PARTICIPANT_ID_HEADER",
    "ROOM_ID_HEADER",
    "JobContext",
    "Secret",
    "attribution_headers",
    "valid_participant_id",
]

JOB_ID_HEADER = "X-Huddle-Job-Id"
ROOM_ID_HEADER = "X-Huddle-Room-Id"
PARTICIPANT_ID_HEADER = "X-Huddle-Participant-Id"


@dataclass(frozen=True, slots=True, eq=False)
class Secret:
    """A credential. ``repr``/``str`` never show it; :meth:`reveal` does.
    Two secrets are equal when their values are."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """The value itself: only to put it into a request, never to log."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(other._value.encode(), self._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


def valid_participant_id(value: object) -> str | None:
    """``value`` if it is a non-empty string, else ``None`` (the check every
    reader of a participant id goes through)."""
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class JobContext:
    """Everything a job's actors need, captured when the job starts.

    ``room_id`` names the room at the room service (the caller's room in a
    call transfer). ``participant_id`` is ``None`` until the room is
    connected; build the connected context with :meth:`connected`.
    """

    job_id: str
    room_id: str
    room_service_url: str
    room_service_credentials: Secret = field(repr=False)
    participant_id: str | None = None

    def __post_init__(self) -> None:
        if not self.job_id or not self.room_id:
            raise ValueError("a job context needs a job id and a room id")
        # Whatever was passed, only a valid id is held.
        object.__setattr__(self, "participant_id", valid_participant_id(self.participant_id))

    @property
    def is_connected(self) -> bool:
        return self.participant_id is not None

    def connected(self, participant_id: object) -> JobContext:
        """The context after connecting as ``participant_id``. An empty or
        non-string id leaves it unconnected (``participant_id`` is ``None``)."""
        return dataclasses.replace(self, participant_id=valid_participant_id(participant_id))


def attribution_headers(job: JobContext) -> dict[str, str]:
    """Headers that attribute an outgoing request to its job (S46).

    Always the job id and the room id; the participant id only once the
    context is connected with a valid one. Never raises for a context built
    before the room is connected."""
    headers = {JOB_ID_HEADER: job.job_id, ROOM_ID_HEADER: job.room_id}
    participant_id = valid_participant_id(job.participant_id)
    if participant_id is not None:
        headers[PARTICIPANT_ID_HEADER] = participant_id
    return headers
