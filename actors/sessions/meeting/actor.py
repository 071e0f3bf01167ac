"""The meeting actor's shell, and the per-meeting supervision tree.

The shell feeds :class:`~actors.sessions.meeting.machine.MeetingCore` its messages
with the sender from the envelope (the core checks who may tell it what)
and performs the common effects; the meeting has no I/O of its own. Of one
step's effects the checkpoint is performed first (write-ahead): the facts
are saved before the commands they imply are sent.

Tree per meeting (README.md, "Meetings: meeting:<id> and its tree"), one supervisor, ``one_for_one``::

    meeting-tree:<id>
    ├── token:<id>
    ├── datachannel:<id>/llm-default-session
    ├── datachannel:<id>/llm-practice-session
    ├── audio:<id>/<output>                      (agent meetings)
    └── meeting:<id>

The practice session's actor always exists (idle until wanted): an idle
actor costs a couple of KiB, and a fixed tree keeps restarts simple. The
meeting starts last, so its claims reach live sessions. A crashed child is
restarted at its address; the others keep their sockets and tokens. A
restarted session waits (up to :data:`AWAIT_OWNER` seconds) for the
meeting's re-assertion of its wanted state instead of acting on its
checkpoint alone; the meeting re-asserts as soon as it sees the session's
new incarnation, and for both sessions whenever it starts itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.runtime.actor import ActorContext
from actors.sessions.audio.actor import AudioOutput
from actors.sessions.audio.sinks import WebSocketMedia, paced
from actors.sessions.context import JobContext, Secret
from actors.sessions.contracts.audio import output_address
from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION, token_address
from actors.sessions.datachannel.actor import DataChannelSession
from actors.sessions.datachannel.connector import DataChannelConnector
from actors.runtime.effects import Effect
from actors.runtime.shell import MachineActor
from actors.sessions.meeting.machine import INTERNAL_KINDS, PUBLIC_KINDS, MeetingCore
from actors.sessions.meeting.machine import step as meeting_step
from actors.runtime.node import Node
from actors.runtime.pooled import PooledFuture
from actors.runtime.supervisor import ChildSpec, Supervisor
from actors.sessions.token.actor import TokenActor
from actors.sessions.token.http import TokenEndpoint
from bus.address import channel_for, parse_address
from bus.envelope import Envelope
from bus.errors import HuddleError, TransportError
from bus.messages import Message

__all__ = ["AWAIT_OWNER", "TREE_KIND", "AgentAudio", "MeetingActor", "MeetingServices", "begin_meeting",
           "meeting_address", "meeting_tree", "start_meeting", "tree_address"]


def claim_epoch(lease_epoch: int, incarnation: int) -> int:
    """The epoch a meeting incarnation claims its sessions with: higher
    after a restart on this node (the incarnation grows) and after a move
    to another node (the cluster's lease epochs are microsecond clock
    readings that only grow, so the next lease is ahead of any number of
    restarts under the last). A sum, not a bit shift: lease epochs already
    take about 51 of the 64 bits a msgpack integer has."""
    return lease_epoch + incarnation


def meeting_address(meeting_id: str) -> str:
    return f"meeting:{meeting_id}"


#: The address kind of a meeting's supervisor (the tree's root).
TREE_KIND = "meeting-tree"
#: A meeting tree's restart intensity: restarts allowed within the period (s).
TREE_INTENSITY = 5
TREE_PERIOD = 10.0
#: How long a restarted session of a meeting tree waits for the meeting's
#: re-assertion before it acts on its checkpoint alone (the meeting answers
#: in milliseconds; this only covers a lost message).
AWAIT_OWNER = 5.0


def tree_address(meeting_id: str) -> str:
    return f"{TREE_KIND}:{meeting_id}"


class MeetingActor(MachineActor):
    """``MeetingActor(ctx, meeting_id, *, token_auth=True)`` at ``meeting:<id>``."""

    public_kinds = frozenset(PUBLIC_KINDS)
    internal_kinds = frozenset(INTERNAL_KINDS)

    def __init__(self, ctx: ActorContext, meeting_id: str, *, token_auth: bool = True) -> None:
        super().__init__(ctx)
        if ctx.address != meeting_address(meeting_id):
            raise ValueError(f"meeting {meeting_id} lives at {meeting_address(meeting_id)}, not {ctx.address}")
        self.core, self._first = MeetingCore.start(meeting_id, ctx.address, claim_epoch(ctx.epoch, ctx.incarnation),
                                                   ctx.checkpoint,
                                                   token_auth=token_auth)

    def on_start(self) -> None:
        first, self._first = self._first, []
        self.perform_all(first)

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        self.core, effects = meeting_step(self.core, message, now, envelope.sender)
        return effects


@dataclass(frozen=True)
class MeetingServices:
    """What a node's meetings share: the connector and the token endpoint
    (each one per node), and the device URL this client registers with."""

    connector: DataChannelConnector
    token_endpoint: TokenEndpoint
    device_url: str

    def close(self, node: Node, timeout: float = 5.0) -> None:
        """Release the shared HTTP pools (after the meetings stopped)."""
        self.connector.close()
        close = getattr(self.token_endpoint, "close", None)
        if close is not None:
            closing = node.io.submit(close())
            if not node.io.on_loop_thread():
                closing.result(timeout)  # type: ignore[call-arg]


@dataclass(frozen=True)
class AgentAudio:
    """An agent meeting's voice: the output ``audio:<meeting>/<output>``
    plays into the WebSocket media endpoint ``media_url`` and reports
    playback to ``report_to``."""

    output: str
    report_to: str
    media_url: str = field(repr=False)

    def __post_init__(self) -> None:
        parse_address(self.report_to)  # raises InvalidAddress: nobody to tell what played
        if not self.media_url.startswith(("ws://", "wss://")):
            raise ValueError("an agent's media_url must be a ws:// or wss:// URL")

    def child(self, meeting_id: str) -> ChildSpec:
        url = self.media_url
        return ChildSpec(output_address(meeting_id, self.output), AudioOutput, (),
                         {"report_to": self.report_to, "sink": paced(lambda _ctx: WebSocketMedia(url))})


def meeting_tree(meeting_id: str, services: MeetingServices, access_token: Secret, *,
                 token_auth: bool = True, job: JobContext | None = None,
                 session_options: dict[str, Any] | None = None, audio: AgentAudio | None = None) -> list[ChildSpec]:
    """The children of one meeting's supervisor, in start order. The user's
    access token stays in these in-memory start arguments: never in a
    message, an event or a checkpoint. ``audio``: an agent meeting's output."""
    # The meeting founds its sessions: a stranger never claims one first.
    options = {"await_owner": AWAIT_OWNER, "founder": meeting_address(meeting_id), **(session_options or {})}
    sessions = [
        ChildSpec(f"datachannel:{meeting_id}/{session}", DataChannelSession,
                  (meeting_id, session, services.device_url, access_token.reveal(), services.connector), options)
        for session in (DEFAULT_SESSION, PRACTICE_SESSION)
    ]
    return [
        ChildSpec(token_address(meeting_id), TokenActor, (services.token_endpoint, access_token), {"job": job}),
        *sessions,
        *([audio.child(meeting_id)] if audio is not None else []),
        ChildSpec(meeting_address(meeting_id), MeetingActor, (meeting_id,), {"token_auth": token_auth}),
    ]


def begin_meeting(node: Node, meeting_id: str, services: MeetingServices, access_token: Secret, *,
                  intensity: int = TREE_INTENSITY, period: float = TREE_PERIOD, timeout: float = 10.0,
                  **tree_options: Any) -> PooledFuture[str]:
    """Start one meeting's supervision tree on ``node``. The future is set
    to the meeting's address (where locus events go) once every child is up
    and the node's transport confirms it listens on each child's channel,
    so the first locus event, sent from any node, finds the meeting there;
    it fails with :class:`~bus.errors.TransportError` if that takes longer
    than ``timeout`` seconds of the node's clock. Nothing blocks: a caller
    on the node's loop (or a host answering many starts) goes on meanwhile."""
    children: Sequence[ChildSpec] = meeting_tree(meeting_id, services, access_token, **tree_options)
    tree = tree_address(meeting_id)
    channels = [channel_for(address, node.namespace) for address in (tree, *(c.address for c in children))]
    started: PooledFuture[str] = PooledFuture()

    def fail(error: HuddleError) -> None:
        if not started.done():
            started.set_exception(exc_info=(type(error), error, None))

    def listening(confirmed: bool) -> None:
        expiry.cancel()
        if not confirmed:
            fail(TransportError(f"meeting {meeting_id}: the transport closed before its channels were subscribed"))
        elif not started.done():
            started.set(meeting_address(meeting_id))

    def children_up(answer: PooledFuture[Any]) -> None:
        try:
            answer.get(timeout=0)
        except Exception as exc:  # noqa: BLE001 - the supervisor did not start: the caller is told
            expiry.cancel()
            fail(TransportError(f"meeting {meeting_id}: its tree did not start ({type(exc).__name__}: {exc})"))
            return
        node.transport.when_subscribed(channels, listening)

    expiry = node.clock.call_later(timeout, fail, TransportError(
        f"meeting {meeting_id}: its channels were not subscribed within {timeout:g}s"))
    node.spawn(tree, Supervisor, children, intensity=intensity, period=period)
    supervisor = node.lookup(tree)
    if not isinstance(supervisor, Supervisor):  # already gone again
        expiry.cancel()
        fail(TransportError(f"meeting {meeting_id}: its tree stopped as it started"))
        return started
    supervisor.started.add_done_callback(children_up)
    return started


def start_meeting(node: Node, meeting_id: str, services: MeetingServices, access_token: Secret, *,
                  timeout: float = 10.0, **options: Any) -> str:
    """:func:`begin_meeting`, waiting for it: the meeting's address once its
    tree is up and subscribed (from a thread that may block)."""
    return begin_meeting(node, meeting_id, services, access_token, timeout=timeout,
                         **options).get(timeout=timeout + 1.0)
