"""A node's meetings: the meeting host, and how a placed meeting starts.

:class:`NodeMeetings` is what every meeting on one node shares: one
data-channel connector and one token endpoint
(:class:`~actors.sessions.meeting.actor.MeetingServices`), the device URL the node's
data channels register with, and the access tokens its meetings
authorize with. Its :meth:`NodeMeetings.tree` is the factory of
``meeting-tree:<id>`` addresses, so a node in a cluster can start a
meeting's whole tree by itself: when the cluster places it there, and when
it re-activates it after the node that held it died (from the
checkpoints of the tree's actors, in Redis).

:class:`MeetingHost`, one per node at ``meetings:<node-id>``, starts and
stops meeting trees by message (``meeting.start`` / ``meeting.stop``):

* alone (no cluster), the tree starts on this node and the answer comes
  once every child is up and subscribed on the bus;
* in a cluster, the tree is **placed**: the cluster stores its start
  arguments (msgpack primitives, never a secret) and the node that ranks
  first for it starts it. The answer comes once it is placed; locus
  events sent before the meeting actor is up wait in its backlog.

Access tokens in a cluster: the user's token given in ``meeting.start``
is kept in the memory of the host that got it, and used if the tree
starts on that node. A tree that starts anywhere else (placed on another
node, or re-activated after a failover) authorizes with the access token
of the node that starts it (``huddle node --meetings-token-file``): tokens
are never written to Redis, a checkpoint or a start argument. A node with
neither refuses to start the tree (``activation-failed``, and the cluster
tries again later).

The host owns the :class:`NodeMeetings` lifecycle: when it stops, the
trees still on this node stop and the shared HTTP pools close.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from actors.runtime.actor import ActorContext, HuddleActor
from actors.sessions.context import Secret
from actors.sessions.contracts import meeting as mt
from actors.sessions.datachannel.connector import WebSocketConnector
from actors.sessions.meeting.actor import (
    TREE_INTENSITY,
    TREE_KIND,
    TREE_PERIOD,
    AgentAudio,
    MeetingServices,
    begin_meeting,
    meeting_address,
    meeting_tree,
    tree_address,
)
from actors.runtime.node import Node
from actors.runtime.pooled import PooledFuture, all_done
from actors.runtime.supervisor import Supervisor
from actors.sessions.token.http import HttpTokenEndpoint
from bus.envelope import Envelope
from bus.errors import HuddleError
from bus.messages import Message

__all__ = ["TREE_KIND", "MeetingHost", "MissingAccessToken", "NodeMeetings", "host_address", "read_access_token",
           "tree_start_args"]

PLACE_TIMEOUT_S = 30.0
"""How long a host waits for the cluster to place a meeting's tree."""


class MissingAccessToken(HuddleError):
    """A meeting cannot start on this node: no access token for it."""


def host_address(node_id: str) -> str:
    return f"meetings:{node_id}"


def read_access_token(path: str | Path) -> Secret:
    """The access token in the first non-empty line of ``path``; raises
    :class:`MissingAccessToken` (never showing the file's content) if
    there is none or the file cannot be read."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise MissingAccessToken(f"cannot read the access token file {path}: {exc.strerror}") from None
    token = next((line.strip() for line in lines if line.strip()), "")
    if not token:
        raise MissingAccessToken(f"the access token file {path} is empty")
    return Secret(token)


def tree_start_args(message: mt.StartMeeting) -> dict[str, Any]:
    """What a placed meeting's tree starts from (stored by the cluster, so
    no secret: the access token is not in it)."""
    # Named so the cluster's secret-name guard does not mistake the flag for a token.
    args: dict[str, Any] = {"meeting_id": message.meeting_id, "channel_auth": message.token_auth}
    if message.audio_output:
        args.update(audio_output=message.audio_output, audio_report_to=message.audio_report_to,
                    media_url=message.media_url)
    return args


class NodeMeetings:
    """What the meetings of one node share, and the factory of their trees.

    ``access_token``: the node's own token, for trees that start here
    without a user's token of their own (see the module notes).
    ``tree_options``: :func:`~actors.sessions.meeting.actor.meeting_tree` options
    for every tree here (e.g. ``session_options``)."""

    def __init__(self, node: Node, device_url: str, *, access_token: Secret | None = None,
                 **tree_options: Any) -> None:
        self.node = node
        self.services = MeetingServices(connector=WebSocketConnector(node.io), token_endpoint=HttpTokenEndpoint(),
                                        device_url=device_url)
        self.tree_options = tree_options
        self._node_token = access_token
        self._tokens: dict[str, Secret] = {}
        self._lock = threading.Lock()
        self._closed = False

    def remember(self, meeting_id: str, access_token: Secret) -> None:
        """The user's token for ``meeting_id``, if its tree starts here (memory only)."""
        if access_token:
            with self._lock:
                self._tokens[meeting_id] = access_token

    def token_for(self, meeting_id: str) -> Secret:
        with self._lock:
            token = self._tokens.get(meeting_id) or self._node_token
        if not token:
            raise MissingAccessToken(f"no access token to start meeting {meeting_id} on this node")
        return token

    def tree(self, ctx: ActorContext, *, meeting_id: str, channel_auth: bool = True, audio_output: str = "",
             audio_report_to: str = "", media_url: str = "") -> Supervisor:
        """The factory of ``meeting-tree:<meeting_id>``: the meeting's
        supervisor, whose children start (each from its last checkpoint)
        once it runs. ``channel_auth``: the data channels use tokens
        (``meeting.start``'s ``token_auth``)."""
        if self._closed:
            raise HuddleError(f"the meetings of node {self.node.node_id} are closed")
        if ctx.address != tree_address(meeting_id):
            raise ValueError(f"the tree of {meeting_id} lives at {tree_address(meeting_id)}, not {ctx.address}")
        audio = AgentAudio(audio_output, audio_report_to, media_url) if audio_output else None
        children = meeting_tree(meeting_id, self.services, self.token_for(meeting_id), token_auth=channel_auth,
                                audio=audio, **self.tree_options)
        return Supervisor(ctx, children, intensity=TREE_INTENSITY, period=TREE_PERIOD)

    def close(self) -> None:
        """Release the shared HTTP pools (after the meetings stopped)."""
        if not self._closed:
            self._closed = True
            self.services.close(self.node)


class MeetingHost(HuddleActor):
    """``MeetingHost(ctx, device_url, **tree_options)``, or
    ``MeetingHost(ctx, meetings=NodeMeetings(...))`` to share the node's
    meetings with the cluster's factory."""

    # Never blocks: a placement, a tree's stop and a stop asked of another
    # host are answers to come (futures), so the host runs on the node's loop.

    def __init__(self, ctx: ActorContext, device_url: str = "", *, meetings: NodeMeetings | None = None,
                 **tree_options: Any) -> None:
        super().__init__(ctx)
        self.meetings = meetings or NodeMeetings(ctx.node, device_url, **tree_options)

    @property
    def services(self) -> MeetingServices:
        return self.meetings.services

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, mt.StartMeeting):
            return self._start_meeting(message)
        if isinstance(message, mt.StopMeeting):
            return self._stop_meeting(message)
        return super().on_message(message, envelope)

    def _start_meeting(self, message: mt.StartMeeting) -> str | PooledFuture[str]:
        ensure = getattr(self.node.ownership, "ensure", None)
        if ensure is None:
            # Answered once the tree's children are up and subscribed, so the
            # caller's next locus event finds the meeting; the host goes on
            # with the next start meanwhile.
            audio = None
            if message.audio_output:
                audio = AgentAudio(output=message.audio_output, report_to=message.audio_report_to,
                                   media_url=message.media_url)
            return begin_meeting(self.node, message.meeting_id, self.services, Secret(message.access_token),
                                 token_auth=message.token_auth, audio=audio, **self.meetings.tree_options)
        args = tree_start_args(message)
        if message.audio_output:
            AgentAudio(message.audio_output, message.audio_report_to, message.media_url)  # refuse bad ones here
        self.meetings.remember(message.meeting_id, Secret(message.access_token))
        placed = ensure(tree_address(message.meeting_id), **args)
        answer = placed.then(lambda _holder: meeting_address(message.meeting_id))
        self.node.clock.call_later(PLACE_TIMEOUT_S, _give_up, answer, message.meeting_id)
        return answer

    def _stop_meeting(self, message: mt.StopMeeting) -> bool | PooledFuture[bool]:
        address = tree_address(message.meeting_id)
        stopped = self.node.request_stop(address, release=True)
        if stopped is not None:
            return stopped.then(lambda _none: True)
        owner = getattr(self.node.ownership, "owner", lambda _a: None)(address)
        if owner is None or owner == self.node.node_id:
            return False
        return self.ask(host_address(owner), message, timeout=PLACE_TIMEOUT_S)

    def on_stop(self) -> None:
        trees = [a for a in self.node.addresses() if a.startswith(f"{TREE_KIND}:")]
        stopped = all_done([w for a in trees if (w := self.node.request_stop(a, release=True)) is not None])
        closed: PooledFuture[None] = PooledFuture()

        def close(_f: PooledFuture[None]) -> None:
            try:
                self.meetings.close()
            finally:
                closed.set(None)

        stopped.add_done_callback(close)
        self.exit_after(closed)  # the host's exit is reported once its trees are gone


def _give_up(answer: PooledFuture[str], meeting_id: str) -> None:
    """The cluster did not place ``meeting_id``'s tree in time."""
    if answer.done():
        return
    error = HuddleError(f"meeting {meeting_id} was not placed within {PLACE_TIMEOUT_S:g}s")
    try:
        answer.set_exception(exc_info=(HuddleError, error, None))
    except Exception:  # noqa: BLE001 - placed meanwhile, on another thread: that answer stands
        pass
