"""The token actor's shell: one per meeting, at ``token:<meeting-id>``.

It feeds :func:`actors.sessions.token.machine.step` its messages with the node's
**wall** time (JWT ``exp`` is unix time) and performs the effects. Its own
effect, :class:`~actors.sessions.token.machine.FetchToken`, becomes a request on the
node's I/O loop through the :class:`~actors.sessions.token.http.TokenEndpoint` seam;
the outcome comes back as a :class:`~actors.sessions.token.machine.TokenFetched`
message tagged with the generation, incarnation and fetch id that started
it, so the core can drop it if it is stale. Nothing here waits.

Start arguments (explicit context, docs/protocol.md §5):

* ``endpoint``: the token endpoint (the real one: ``HttpTokenEndpoint``);
* ``credentials``: the user's bearer token for the locus service (a
  :class:`~actors.sessions.context.Secret`), sent as ``Authorization``;
* ``job``: the agent job's :class:`~actors.sessions.context.JobContext`, if the
  meeting belongs to one; its attribution headers (S46) go on every fetch,
  with the configured self id as the participant id.

A restarted token actor gets its configuration back from its checkpoint
(never a token: the next request fetches one).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

from actors.runtime.actor import ActorContext
from actors.sessions.context import JobContext, Secret, attribution_headers
from actors.sessions.contracts.token import (
    TokenConfigure,
    TokenEnsure,
    TokenForget,
    TokenRequest,
    TokenSeed,
)
from actors.runtime.io import Outcome
from actors.runtime.effects import Effect
from actors.runtime.shell import MachineActor
from actors.sessions.token import machine
from actors.sessions.service_errors import ServiceError
from actors.sessions.token.http import TokenEndpoint
from actors.sessions.service_errors import Failure
from actors.sessions.token.machine import (
    FetchToken,
    RefreshDue,
    RetryDue,
    TokenFetched,
)
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["TokenActor", "fetch_outcome", "request_headers"]

log = logging.getLogger("huddle.token")

#: What anyone may send the token actor.
_PUBLIC = (TokenRequest, TokenEnsure, TokenConfigure, TokenSeed, TokenForget)
#: What only the actor itself sends (its I/O outcomes and timers).
_OWN = (TokenFetched, RefreshDue, RetryDue)


def request_headers(credentials: Secret, job: JobContext | None, self_id: str) -> dict[str, str]:
    """The headers of a token fetch: the user's bearer token, and the job's
    attribution headers when there is a job (connected as ``self_id``)."""
    headers = {"Authorization": f"Bearer {credentials.reveal()}"}
    if job is not None:
        headers.update(attribution_headers(job.connected(self_id)))
    return headers


def fetch_outcome(fetch: FetchToken, outcome: Outcome[str]) -> TokenFetched:
    """The message a finished fetch becomes (built on the I/O loop)."""
    tag = {"session_type": fetch.session_type, "generation": fetch.generation,
           "incarnation": fetch.incarnation, "fetch_id": fetch.fetch_id}
    if outcome.ok:
        return TokenFetched(**tag, token=str(outcome.value))
    error = outcome.error
    if isinstance(error, ServiceError):
        return TokenFetched(**tag, failure=error.cause, status=error.status)
    # Not a failure the endpoint names: a bug in it. Say what type, never what text.
    log.warning("token fetch for %s failed with %s", fetch.session_type, type(error).__name__)
    return TokenFetched(**tag, failure=Failure.UNREACHABLE)


class TokenActor(MachineActor):
    """Holds one meeting's data-channel tokens (see :mod:`actors.sessions.token.machine`)."""

    public_kinds = frozenset(_PUBLIC)
    #: Fetch outcomes and timers: only this actor sends them (nobody plants a token or a refresh).
    internal_kinds = frozenset(_OWN)

    def __init__(self, ctx: ActorContext, endpoint: TokenEndpoint, credentials: Secret,
                 job: JobContext | None = None) -> None:
        super().__init__(ctx)
        self.endpoint = endpoint
        self.job = job
        self._credentials = credentials
        self.state = machine.TokenState.restore(ctx.checkpoint, incarnation=ctx.incarnation)

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        self.state, effects = machine.step(self.state, message, self.node.clock.wall(), envelope.sender)
        return effects

    def perform(self, effect: Effect) -> None:
        if type(effect) is FetchToken:
            headers = request_headers(self._credentials, self.job, effect.self_id)
            self.run_io(self.endpoint.fetch(effect.url, headers), functools.partial(fetch_outcome, effect))
            return
        super().perform(effect)

    def __repr__(self) -> str:
        return f"TokenActor({self.address}, generation={self.state.generation})"

    def describe(self) -> dict[str, Any]:
        """What is held, without secrets (for tests and monitors)."""
        return {
            "generation": self.state.generation,
            "configured": self.state.config is not None,
            "held": {t: s.held.expires_at for t, s in self.state.slots.items() if s.held is not None},
            "fetching": {t: s.fetching for t, s in self.state.slots.items() if s.fetching},
        }
