"""The reference service over real sockets, in this process: an aiohttp
client and a raw ``websockets`` client against :class:`DataServer`.

Each test runs one asyncio loop that holds both the service and the
clients. Waits are on frames, closes and state with deadlines that are only
reached when something is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors.sessions.contracts.token import DEFAULT_SESSION, PRACTICE_SESSION
from ops.dataserver.server import DataServer

DEADLINE = 10.0
QUERY = "outboundWireFormat=text&bufferStates=true&aliasHttpStatus=true&clientTimestamp=1"
USER_TOKEN = "Bearer user-token-value-xyz"


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body on a fresh loop."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), DEADLINE * 3))

    return wrapper


class Client:
    """The service plus an HTTP session to it."""

    def __init__(self, server: DataServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    async def request(self, method: str, path: str, body: Any = None, *, data: str | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.request(method, self.server.http_url + path, json=body, data=data,
                                     headers=headers) as resp:
            return resp.status, await resp.json()

    async def control(self, path: str, body: Any = None) -> Any:
        status, payload = await self.request("POST" if body is not None else "GET", f"/control/{path}", body)
        assert status == 200, payload
        return payload

    async def register(self, meeting: str = "m1", *, practice: bool = False, device: str = "dev:1",
                       token: str | None = None) -> dict[str, Any]:
        headers = {"Data-Channel-Auth-Token": token} if token else None
        status, body = await self.request("POST", f"/datachannel/{meeting}" + ("/practice" if practice else ""),
                                          {"deviceUrl": device}, headers=headers)
        assert status == 200, body
        return body

    async def open(self, meeting: str = "m1", *, practice: bool = False, device: str = "dev:1",
                   authorize: bool = True, **options: Any) -> ClientConnection:
        """Register, open the socket; with ``authorize``, also send the
        authorization frame and wait for (and ack) the buffer-state frame."""
        url = (await self.register(meeting, practice=practice, device=device))["webSocketUrl"]
        ws = await connect(f"{url}?{QUERY}", open_timeout=DEADLINE, **options)
        if authorize:
            await ws.send(json.dumps({"id": "auth", "type": "authorization", "data": {"token": USER_TOKEN}}))
            frame = await recv(ws)
            assert frame["data"]["eventType"] == "mercury.buffer_state"
            await ws.send(json.dumps({"messageId": frame["id"], "type": "ack"}))
        return ws

    async def wait_state(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            while not predicate(state := self.server.service.snapshot()):
                await asyncio.sleep(0.005)  # poll interval under the deadline
        return state


@contextlib.asynccontextmanager
async def service(**options: Any) -> AsyncIterator[Client]:
    server = DataServer(**options)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Client(server, http)
    finally:
        await server.stop()


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(DEADLINE):
        return json.loads(await ws.recv())


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Wait until the server closed ``ws``: (code, reason) of the close
    frame received, or (None, None) if none came (1006 for the client)."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(DEADLINE):
            while True:
                await ws.recv()
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


def only_socket(state: dict[str, Any], **fields: Any) -> dict[str, Any]:
    (socket,) = [s for s in state["sockets"] if all(s[k] == v for k, v in fields.items())]
    return socket


# -- HTTP ---------------------------------------------------------------------


@run
async def test_register_locus_and_malformed_body_over_http() -> None:
    async with service() as client:
        body = await client.register("m1")
        assert body["webSocketUrl"] == f"{client.server.ws_url}/v1/socket/{body['binding']}"
        practice = await client.register("m1", practice=True)
        assert practice["binding"] != body["binding"]
        status, error = await client.request("POST", "/datachannel/m1", data="{not json")
        assert status == 400 and "deviceUrl" in error["error"]
        status, locus = await client.request("GET", "/locus/m1")
        assert status == 200 and locus["practiceSessionDatachannelUrl"] == f"{client.server.http_url}/datachannel/m1/practice"
        state = await client.control("state")
        assert state["registers"] == {f"m1/{DEFAULT_SESSION}": 2, f"m1/{PRACTICE_SESSION}": 1}


@run
async def test_token_endpoints_need_a_bearer_and_record_headers_without_secrets() -> None:
    async with service(token_ttl_s=120) as client:
        path = "/locus/m1/participant/self-1/datachannel/token"
        status, _ = await client.request("GET", path)
        assert status == 401
        headers = {"Authorization": USER_TOKEN, "X-Huddle-Session": "llm-practice-session"}
        status, body = await client.request("GET", "/locus/m1/participant/self-1/practiceSession/datachannel/token",
                                            headers=headers)
        assert status == 200
        token = body["datachannelToken"]
        state = await client.control("state")
        record = state["token_requests"][-1]
        assert (record["session"], record["self"], record["status"]) == (PRACTICE_SESSION, "self-1", 200)
        assert record["headers"]["X-Huddle-Session"] == "llm-practice-session"
        assert record["headers"]["Authorization"] == {"present": True}
        text = json.dumps(state)
        assert token not in text and "user-token-value-xyz" not in text


@run
async def test_token_delay_holds_the_token_answer_back() -> None:
    async with service() as client:
        path = "/locus/m1/participant/self-1/datachannel/token"
        headers = {"Authorization": USER_TOKEN}
        await client.control("faults", {"token_delay_s": 30})
        held = asyncio.ensure_future(client.request("GET", path, headers=headers))
        try:
            await client.wait_state(lambda s: len(s["token_requests"]) == 1)
            # Asked later, without the delay, answered first: the first one is held.
            await client.control("faults", {"token_delay_s": 0})
            status, body = await client.request("GET", path, headers=headers)
            assert status == 200 and body["datachannelToken"]
            assert not held.done()
        finally:
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
        # A short delay: the answer comes, once it is over.
        await client.control("faults", {"token_delay_s": 0.05})
        status, body = await client.request("GET", path, headers=headers)
        assert status == 200 and body["datachannelToken"]
        state = await client.control("state")
        assert [r["status"] for r in state["token_requests"]] == [200, 200, 200]
        assert state["faults"]["token_delay_s"] == 0.05


@run
async def test_stop_gives_up_answers_held_back_by_a_delay() -> None:
    server = DataServer()
    await server.start()
    async with aiohttp.ClientSession() as http:
        client = Client(server, http)
        await client.control("faults", {"token_delay_s": 60, "register_delay_s": 60})
        held = [asyncio.ensure_future(client.request("GET", "/locus/m1/participant/me/datachannel/token",
                                                     headers={"Authorization": USER_TOKEN})),
                asyncio.ensure_future(client.request("POST", "/datachannel/m1", {"deviceUrl": "d"}))]
        await client.wait_state(lambda s: len(s["token_requests"]) == 1 and len(s["register_requests"]) == 1)
        await asyncio.wait_for(server.stop(), DEADLINE)  # not the 60 s of the delays
        results = await asyncio.gather(*held, return_exceptions=True)
    assert all(isinstance(r, aiohttp.ClientError) for r in results), results


@run
async def test_required_token_is_checked_on_register() -> None:
    async with service(require_token=True) as client:
        status, body = await client.request("POST", "/datachannel/m1", {"deviceUrl": "d"})
        assert (status, body["error"]) == (401, "data-channel token absent")
        _, issued = await client.request("GET", "/locus/m1/participant/me/datachannel/token",
                                         headers={"Authorization": USER_TOKEN})
        assert "webSocketUrl" in await client.register(token=issued["datachannelToken"])
        expired = (await client.control("mint_token", {"self": "me", "ttl_s": -10}))["datachannelToken"]
        status, _ = await client.request("POST", "/datachannel/m1", {"deviceUrl": "d"},
                                         headers={"Data-Channel-Auth-Token": expired})
        assert status == 401


@run
async def test_a_bad_control_request_is_a_400_with_a_reason() -> None:
    async with service() as client:
        status, body = await client.request("POST", "/control/faults", {"withhold": {"pong": "yes"}})
        assert status == 400 and "withhold.pong" in body["error"]
        status, body = await client.request("POST", "/control/send", data="[")
        assert status == 400 and "not JSON" in body["error"]


# -- the socket protocol ------------------------------------------------------


@run
async def test_socket_authorization_buffer_state_acks_pings_subscriptions_and_events() -> None:
    async with service() as client:
        ws = await client.open("m1")
        await ws.send(json.dumps({"id": "ping-1", "type": "ping"}))
        assert await recv(ws) == {"id": "ping-1", "type": "pong", "sequenceNumber": 2}
        await ws.send(json.dumps({"id": "1", "type": "subchannelSubscriptionRequest",
                                  "data": {"datachannelUri": "x", "subscribe": ["transcription"], "unsubscribe": []},
                                  "trackingId": "t_1"}))
        assert await client.control("send", {"frame": {"data": {"eventType": "relay.event"}}, "meeting": "m1"}) == {
            "sent": 1}
        event = await recv(ws)
        assert (event["data"]["eventType"], event["sequenceNumber"]) == ("relay.event", 3)
        await client.control("send", {"sequence_skip": 1, "frame": {"data": {"eventType": "relay.event"}}})
        assert (await recv(ws))["sequenceNumber"] == 5
        state = await client.wait_state(lambda s: s["sockets"][0]["subscriptions"] == ["transcription"])
        socket = only_socket(state)
        assert socket["query"]["outboundWireFormat"] == "text" and socket["query"]["clientTimestamp"] == "1"
        assert (socket["authorized"], socket["online"], socket["acks"], socket["pings"]) == (True, True, 1, 1)
        assert state["subscriptions"] == {f"m1/{DEFAULT_SESSION}": ["transcription"]}
        await ws.close()
        state = await client.wait_state(lambda s: not s["sockets"][0]["open"])
        assert only_socket(state)["close"] == {"code": 1000, "reason": "", "by": "client"}


@run
async def test_unknown_binding_and_injected_refusals_close_right_after_open() -> None:
    async with service() as client:
        ws = await connect(f"{client.server.ws_url}/v1/socket/no-such-binding?{QUERY}")
        assert await closed(ws) == (4400, "unknown binding")
        await client.control("faults", {"refuse_next": {"code": 4401, "count": 1, "meeting": "m1"}})
        ws = await client.open("m1", authorize=False)
        assert (await closed(ws))[0] == 4401
        ws = await client.open("m1")  # the refusal is used up
        await ws.close()
        state = await client.control("state")
        assert [s["refused"] for s in state["sockets"]] == [4400, 4401, None]


@run
async def test_authorization_must_come_first() -> None:
    async with service() as client:
        ws = await client.open(authorize=False)
        await ws.send(json.dumps({"id": "p", "type": "ping"}))
        assert await closed(ws) == (1008, "authorization expected first")


@run
async def test_drop_gives_the_client_1006_and_close_sends_the_given_code() -> None:
    async with service() as client:
        dropped = await client.open("m1")
        permanent = await client.open("m2")
        result = await client.control("faults", {"drop": {"meeting": "m1"},
                                                 "close": {"code": 3050, "reason": "done (permanent)",
                                                           "meeting": "m2"}})
        assert result["affected"] == {"drop": 1, "close": 1}
        assert await closed(dropped) == (None, None)
        assert await closed(permanent) == (3050, "done (permanent)")
        state = await client.wait_state(lambda s: s["open"] == 0)
        assert only_socket(state, meeting="m1")["close"]["by"] == "drop"
        assert only_socket(state, meeting="m2")["close"] == {"code": 3050, "reason": "done (permanent)", "by": "server"}


@run
async def test_withheld_pong_and_buffer_state() -> None:
    async with service() as client:
        await client.control("faults", {"withhold": {"buffer_state": True, "pong": True}})
        ws = await client.open(authorize=False)
        await ws.send(json.dumps({"id": "auth", "type": "authorization", "data": {"token": USER_TOKEN}}))
        await ws.send(json.dumps({"id": "ping-1", "type": "ping"}))
        await client.wait_state(lambda s: s["sockets"][0]["pings"] == 1)
        assert only_socket(await client.control("state"))["online"] is False
        await client.control("faults", {"withhold": {"buffer_state": False, "pong": False}})
        # The first frame after the ping is the released buffer state: no pong came.
        assert (await recv(ws))["data"]["eventType"] == "mercury.buffer_state"
        await ws.send(json.dumps({"id": "ping-2", "type": "ping"}))
        assert await recv(ws) == {"id": "ping-2", "type": "pong", "sequenceNumber": 2}
        await client.control("faults", {"pong_mismatch": True})
        await ws.send(json.dumps({"id": "ping-3", "type": "ping"}))
        assert (await recv(ws))["id"] != "ping-3"


@run
async def test_withheld_close_frame_leaves_the_client_to_force_its_close() -> None:
    async with service() as client:
        await client.control("faults", {"withhold": {"close_frame": True}})
        ws = await client.open(close_timeout=0.2)
        await ws.close(1000, "done (permanent)")
        assert ws.close_code == 1006  # no close frame came back: the client aborted
        state = await client.wait_state(lambda s: s["open"] == 0)
        assert only_socket(state)["close"] == {"code": 1000, "reason": "done (permanent)", "by": "client"}


@run
async def test_shutdown_is_make_before_break() -> None:
    async with service() as client:
        old = await client.open("m1", practice=True)
        bystander = await client.open("m1", practice=True, device="dev:2")
        assert await client.control("shutdown", {"meeting": "m1", "session": "practice",
                                                  "socket": "s1"}) == {"sent": 1}
        shutdown = await recv(old)
        assert (shutdown["type"], shutdown["sequenceNumber"]) == ("shutdown", 2)
        state = await client.control("state")
        assert only_socket(state, id="s1")["open"] is True  # not before the new one is online
        new = await client.open("m1", practice=True)
        assert await closed(old) == (4001, "replaced")
        state = await client.wait_state(lambda s: only_socket(s, id="s1")["open"] is False)
        assert only_socket(state, id="s1")["replaced_by"] == "s3"
        assert only_socket(state, id="s2")["open"] and only_socket(state, id="s3")["online"]
        await new.close()
        await bystander.close()


@run
async def test_shutdown_without_a_replacement_closes_after_the_grace() -> None:
    async with service() as client:
        ws = await client.open("m1")
        await client.control("faults", {"shutdown_grace_s": 0.05})
        await client.control("shutdown", {})
        assert (await recv(ws))["type"] == "shutdown"
        assert await closed(ws) == (4001, "shutdown grace expired")


@run
async def test_reset_closes_sockets_1001_and_forgets_state() -> None:
    async with service() as client:
        ws = await client.open("m1")
        await client.control("faults", {"withhold": {"pong": True}})
        assert await client.control("reset", {}) == {"reset": True}
        assert await closed(ws) == (1001, "reset")
        state = await client.control("state")
        assert state["sockets"] == [] and state["registers"] == {} and state["faults"]["withhold"]["pong"] is False
        old_url = f"{client.server.ws_url}/v1/socket/b1"
        assert (await closed(await connect(old_url)))[0] == 4400


@run
async def test_stop_closes_open_sockets_with_1001() -> None:
    server = DataServer()
    await server.start()
    async with aiohttp.ClientSession() as http:
        client = Client(server, http)
        ws = await client.open()
        await server.stop()
    assert (await closed(ws))[0] == 1001
