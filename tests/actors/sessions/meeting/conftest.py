"""Fixtures for meeting tests over real Redis and the reference service."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actors.sessions.contracts.token import DEFAULT_SESSION
from actors.sessions.datachannel.connector import WebSocketConnector
from actors.sessions.meeting.actor import MeetingServices
from actors.runtime.node import Node
from actors.sessions.token.http import HttpTokenEndpoint
from bus.embedded import EmbeddedRedis
from bus.redis_transport import RedisTransport


@pytest.fixture
def node(redis_server: EmbeddedRedis) -> Iterator[Node]:
    transport = RedisTransport(redis_server.url, name="meeting-test")
    node = Node(transport, node_id="meeting-test").start()
    assert transport.wait_subscribed(10)
    node.meeting_services = MeetingServices(  # type: ignore[attr-defined]
        connector=WebSocketConnector(node.io), token_endpoint=HttpTokenEndpoint(),
        device_url="https://devices.example/d-1")
    try:
        yield node
    finally:
        for address in [a for a in node.addresses() if a.startswith("meeting-tree:")]:
            node.stop_actor(address, release=True)
        node.meeting_services.close(node)  # type: ignore[attr-defined]
        node.shutdown()



M = "web-1"


def sockets(state: dict[str, Any], meeting: str = M, session: str = DEFAULT_SESSION, *,
            online: bool = True) -> list[dict[str, Any]]:
    return [s for s in state["sockets"] if s["meeting"] == meeting and s["session"] == session
            and s["open"] and (s["online"] or not online)]


