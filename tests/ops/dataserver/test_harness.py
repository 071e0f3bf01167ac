"""``huddle dataserver`` as a real process, through the harness and the
fixtures: start-up contract, restart on the same ports, stop, reset."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ops.dataserver.harness import REPO_ROOT, DataServerError, DataServerProcess
from ops.dataserver.tokens import TokenAuthority

DEADLINE = 10.0
USER_TOKEN = "Bearer user-token-value"


async def open_online(server: DataServerProcess, meeting: str = "m1") -> ClientConnection:
    status, body = server.request("POST", f"/datachannel/{meeting}", {"deviceUrl": "dev:1"})
    assert status == 200, body
    ws = await connect(body["webSocketUrl"] + "?outboundWireFormat=text", open_timeout=DEADLINE)
    await ws.send(json.dumps({"id": "a", "type": "authorization", "data": {"token": USER_TOKEN}}))
    async with asyncio.timeout(DEADLINE):
        frame = json.loads(await ws.recv())
    assert frame["data"]["eventType"] == "mercury.buffer_state"
    return ws


async def close_seen(ws: ClientConnection) -> int | None:
    """The close code the client received (None: no close frame, 1006)."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(DEADLINE):
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


def test_cli_prints_one_json_line_and_writes_the_ready_file(tmp_path: Any) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "dataserver", "--ready-file", str(ready)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) == {"http", "ws", "pid"} and info["pid"] == proc.pid
        assert info["http"].startswith("http://127.0.0.1:") and info["ws"].startswith("ws://127.0.0.1:")
        assert json.loads(ready.read_text()) == info
        with open(f"/proc/{proc.pid}/limits") as limits:
            (row,) = [r for r in limits if r.startswith("Max open files")]
        soft, hard = row.split()[3:5]
        assert soft == hard
    finally:
        proc.terminate()  # SIGTERM, by this process's own handle
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err


def test_start_state_fault_send_and_stop(dataserver: DataServerProcess) -> None:
    async def scenario() -> None:
        ws = await open_online(dataserver)
        state = dataserver.wait_for(lambda s: s["online"] == 1, DEADLINE)
        assert state["sockets"][0]["authorized"] is True
        brief = dataserver.state(detail="open")["sockets"]
        assert [(s["id"], s["online"]) for s in brief] == [(state["sockets"][0]["id"], True)]
        assert "authorized" not in brief[0]
        assert dataserver.send({"data": {"eventType": "relay.event"}}, meeting="m1") == 1
        async with asyncio.timeout(DEADLINE):
            assert json.loads(await ws.recv())["sequenceNumber"] == 2
        assert dataserver.fault(drop={"meeting": "m1"})["affected"] == {"drop": 1}
        assert await close_seen(ws) is None
        assert dataserver.shutdown(meeting="m1") == 0

    asyncio.run(scenario())
    with pytest.raises(TimeoutError, match="last state"):
        dataserver.wait_for(lambda s: s["online"] == 5, timeout=0.05, detail=False)
    with pytest.raises(DataServerError, match="400"):
        dataserver.fault(nonsense=True)
    assert dataserver.stop() == 0
    assert not dataserver.alive()


def test_restart_keeps_the_ports_drops_every_socket_and_forgets_all_state(dataserver: DataServerProcess) -> None:
    http_url, ws_url, old_pid = dataserver.http_url, dataserver.ws_url, dataserver.pid

    async def before() -> tuple[ClientConnection, str]:
        ws = await open_online(dataserver)
        return ws, dataserver.state()["sockets"][0]["path"]

    async def scenario() -> None:
        ws, path = await before()
        dataserver.restart()
        assert (dataserver.http_url, dataserver.ws_url) == (http_url, ws_url)
        assert dataserver.pid != old_pid
        assert await close_seen(ws) is None  # the process died: no close frame
        assert dataserver.state()["registers"] == {}
        stale = await connect(ws_url + path)
        assert await close_seen(stale) == 4400  # bindings did not survive
        fresh = await open_online(dataserver)
        await fresh.close()

    asyncio.run(scenario())


def test_start_options_token_secret_and_require_token() -> None:
    secret = "a-test-secret-that-is-long-enough-for-hs256"
    with DataServerProcess.start(require_token=True, token_secret=secret, token_ttl=30) as server:
        assert server.request("POST", "/datachannel/m1", {"deviceUrl": "d"})[0] == 401
        token = TokenAuthority(secret).issue(subject="me", audience="llm-default-session", meeting="m1",
                                             now=time.time(), ttl_s=60)
        status, body = server.request("POST", "/datachannel/m1", {"deviceUrl": "d"},
                                      headers={"Data-Channel-Auth-Token": token})
        assert status == 200 and "webSocketUrl" in body
        assert server.state()["faults"]["token_ttl_s"] == 30
        assert server.mint_token(ttl_s=-5) != token
    assert not server.alive()


@pytest.mark.parametrize("turn", ["first", "second"])
def test_dataserver_session_starts_each_test_reset(dataserver_session: DataServerProcess, turn: str) -> None:
    state = dataserver_session.state()
    assert state["registers"] == {} and state["faults"]["withhold"]["pong"] is False
    # Leave a mess for whichever test uses the shared service next.
    dataserver_session.request("POST", "/datachannel/m1", {"deviceUrl": "d"})
    dataserver_session.fault(withhold={"pong": True})
