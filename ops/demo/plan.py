"""Who is in the demo's webinar, and where each participant's client runs.

Every participant's client is one meeting actor tree (``meeting:<id>``
with its token actor and two data-channel sessions), so participant ids are
meeting ids: ``<webinar>-a0007``. Each has its own data-channel URL on the
reference service, so the service's records say whose socket is whose.
Which worker runs which meeting is the cluster's choice (placement), not
the plan's.

Pure data: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION

__all__ = ["SessionKey", "WebinarPlan"]

#: ``(meeting id, session id)``: one data-channel session of one participant.
SessionKey = tuple[str, str]


@dataclass(frozen=True)
class WebinarPlan:
    """``attendees`` participant clients on ``workers`` (the cluster places
    each meeting); every ``panelist_every``-th attendee (from the first) is
    promoted to panelist. One more meeting is the voice agent's, and one
    address is the incoming call that reaches for a session it does not own.
    """

    attendees: int
    workers: tuple[str, ...] = ("demo-w0", "demo-w1")
    webinar: str = "webinar"
    panelist_every: int = 10

    def __post_init__(self) -> None:
        if self.attendees < 2:
            raise ValueError("a webinar needs at least 2 attendees (one panelist, one attendee)")
        if len(self.workers) < 2:
            raise ValueError("the demo needs 2 worker nodes (one is killed mid-run)")
        if self.panelist_every < 2:
            raise ValueError("panelist_every must be 2 or more")

    @cached_property
    def attendee_ids(self) -> tuple[str, ...]:
        return tuple(f"{self.webinar}-a{i:04d}" for i in range(self.attendees))

    @cached_property
    def panelists(self) -> frozenset[str]:
        return frozenset(self.attendee_ids[::self.panelist_every])

    @property
    def agent_meeting(self) -> str:
        """The voice agent's meeting (admitted, captions off, it speaks)."""
        return f"{self.webinar}-agent"

    @property
    def incoming_call(self) -> str:
        """The meeting id of the incoming call (never joined)."""
        return f"{self.webinar}-call"

    @property
    def meetings(self) -> tuple[str, ...]:
        """Every meeting tree the demo starts: the attendees, then the agent's."""
        return (*self.attendee_ids, self.agent_meeting)

    @property
    def fault_target(self) -> str:
        """The attendee whose data channel ``--fault`` breaks (not the
        first, a panelist; not the second, whose channel the incoming call
        reaches for)."""
        return self.attendee_ids[min(2, self.attendees - 1)]

    @property
    def victim(self) -> str:
        """The worker killed mid-run."""
        return self.workers[-1]

    def default_sessions(self) -> frozenset[SessionKey]:
        """Every participant's default session (the agent's too)."""
        return frozenset((m, DEFAULT_SESSION) for m in self.meetings)

    def practice_sessions(self) -> frozenset[SessionKey]:
        return frozenset((m, PRACTICE_SESSION) for m in self.attendee_ids if m in self.panelists)

    def webinar_sessions(self) -> frozenset[SessionKey]:
        """Every session that is online and subscribed to transcription
        once the webinar runs: each participant's default session and each
        panelist's practice session."""
        return self.default_sessions() | self.practice_sessions()
