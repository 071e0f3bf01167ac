"""A node's meeting host: starts and stops meeting trees on request.

One per node at ``meetings:<node-id>``. It owns the node's shared
:class:`~actors.meeting.actor.MeetingServices` (one data-channel connector
and one token endpoint for every meeting here) and closes them when it
stops.
"""

from __future__ import annotations

from typing import Any

from actors.context import Secret
from actors.contracts import meeting as mt
from actors.datachannel.connector import WebSocketConnector
from actors.meeting.actor import AgentAudio, MeetingServices, start_meeting, tree_address
from actors.node import ActorContext, HuddleActor
from actors.token.http import HttpTokenEndpoint
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["MeetingHost", "host_address"]


def host_address(node_id: str) -> str:
    return f"meetings:{node_id}"


class MeetingHost(HuddleActor):
    """``MeetingHost(ctx, device_url, **tree_options)``."""

    def __init__(self, ctx: ActorContext, device_url: str, **tree_options: Any) -> None:
        super().__init__(ctx)
        self.services = MeetingServices(connector=WebSocketConnector(ctx.node.io), token_endpoint=HttpTokenEndpoint(),
                                        device_url=device_url)
        self.tree_options = tree_options

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, mt.StartMeeting):
            # Waits (briefly, on a compensated pool thread) for the tree's
            # children, so the caller's next locus event finds the meeting.
            audio = None
            if message.audio_output:
                audio = AgentAudio(output=message.audio_output, report_to=message.audio_report_to,
                                   media_url=message.media_url)
            return start_meeting(self.node, message.meeting_id, self.services, Secret(message.access_token),
                                 token_auth=message.token_auth, audio=audio, **self.tree_options)
        if isinstance(message, mt.StopMeeting):
            return self.node.stop_actor(tree_address(message.meeting_id), release=True)
        return super().on_message(message, envelope)

    def on_stop(self) -> None:
        for address in [a for a in self.node.addresses() if a.startswith("meeting-tree:")]:
            self.node.stop_actor(address, release=True)
        self.services.close(self.node)
