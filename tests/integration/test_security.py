"""Bus security with real processes and a real Redis: passwords and ACL
users in REDIS_URL, TLS (``rediss://``) through a TLS-terminating proxy,
HMAC signing with a cluster key (accepted between nodes that hold it, a
forged publish refused), and no secret on any ``sys:`` channel."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from actors.sessions.contracts.token import TokenGranted
from actors.runtime.metrics import NodeMetrics
from actors.runtime.node import Node
from actors.runtime.sending import RemoteError
from ops.tap import REDACTED
from bus.address import SYS_EVENTS
from bus.embedded import EmbeddedRedis
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError
from bus.messages import Ping, Pong
from bus.redis_transport import RedisTransport
from bus.signing import CLUSTER_KEY_ENV, HmacSigner
from tests.conftest import TlsSetup, rediss_url
from tests.tls_proxy import TlsProxy
from tests.waiting import wait_until

from .conftest import (
    DEADLINE,
    Command,
    EventLog,
    NodeProcesses,
    listening,
    unique,
)

pytestmark = pytest.mark.integration


def run_inject(commands: Callable[..., Command], url: str, *args: str, env: dict[str, str] | None = None) -> Command:
    inject = commands("inject", *args, env={"REDIS_URL": url, **(env or {})})
    inject.wait(DEADLINE + 5)
    return inject


# -- passwords and ACL users ----------------------------------------------------------


@pytest.fixture(params=["acl-user", "default-user-password"])
def password_url(request: pytest.FixtureRequest, fresh_redis: EmbeddedRedis) -> Iterator[tuple[str, str]]:
    """``(url, password)`` of a private server that requires the password."""
    password = "s3cret:pa ss@w/rd-" + unique("pw")
    with redis.Redis.from_url(fresh_redis.url) as admin:
        if request.param == "acl-user":
            admin.execute_command("ACL", "SETUSER", "huddle-node", "reset", "on", f">{password}", "~*", "&*",
                                  "+@all")
            admin.execute_command("ACL", "SETUSER", "default", "off")
            yield f"redis://huddle-node:{quote(password, safe='')}@127.0.0.1:{fresh_redis.port}/0", password
        else:
            admin.config_set("requirepass", password)
            yield f"redis://:{quote(password, safe='')}@127.0.0.1:{fresh_redis.port}/0", password


def test_node_and_inject_with_a_password_in_redis_url_never_print_it(
    password_url: tuple[str, str], tmp_path: Path, commands: Callable[..., Command]
) -> None:
    url, password = password_url
    with redis.Redis.from_url(url) as client:
        assert client.ping()
        procs = NodeProcesses(url, client, tmp_path)
        try:
            node = procs.start("echo:pw-1")
            inject = run_inject(commands, url, "echo:pw-1", "sys.ping", '{"n": 8}', "--ask")
            assert inject.proc.returncode == 0, inject.stderr
            assert json.loads(inject.stdout[-1]) == {"kind": "sys.pong", "n": 8, "payload": ""}
            output = node.output() + "\n".join(inject.stdout + inject.stderr)
            assert "***@127.0.0.1" in node.output()
            assert password not in output and quote(password, safe="") not in output
        finally:
            procs.stop_all()


def test_a_wrong_password_is_refused_without_being_printed(
    password_url: tuple[str, str], commands: Callable[..., Command]
) -> None:
    url, password = password_url
    wrong = url.replace(quote(password, safe=""), "not-the-password-9")
    node = commands("node", "--redis-url", wrong, "--run-for", "5")
    assert node.wait(DEADLINE) == 2
    text = "\n".join(node.stdout + node.stderr)
    assert "not-the-password-9" not in text and password not in text
    assert "cannot join the bus" in text and "***@127.0.0.1" in text and "Traceback" not in text


# -- TLS --------------------------------------------------------------------------------


def test_node_and_inject_over_tls(
    tls_proxy: TlsProxy, tls_setup: TlsSetup, redis_client: redis.Redis, tmp_path: Path,
    commands: Callable[..., Command],
) -> None:
    url = rediss_url(tls_proxy, tls_setup.ca_file)
    procs = NodeProcesses(url, redis_client, tmp_path)
    try:
        node = procs.start("echo:tls-1")
        assert "rediss://127.0.0.1" in node.output()
        inject = run_inject(commands, url, "echo:tls-1", "sys.ping", '{"n": 3}', "--ask")
        assert inject.proc.returncode == 0, inject.stderr
        assert json.loads(inject.stdout[-1])["n"] == 3
    finally:
        procs.stop_all()
    # node: publisher + subscriber; inject: the same. All through TLS.
    assert len(tls_proxy.handshakes) >= 4 and not tls_proxy.failures, (tls_proxy.handshakes, tls_proxy.failures)


# -- signing -------------------------------------------------------------------------------

KEY = "cluster-key-" + "k" * 24


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(KEY + "\n")
    return path


@pytest.fixture
def signed_events(redis_url: str) -> Iterator[EventLog]:
    log = EventLog(Codec(signer=HmacSigner(KEY.encode())))
    with listening(redis_url, log, SYS_EVENTS):
        yield log


@pytest.fixture
def signed_node(redis_url: str) -> Iterator[Node]:
    node_id = unique("signed")
    transport = RedisTransport(redis_url, name=node_id)
    node = Node(transport, node_id=node_id, codec=Codec(signer=HmacSigner(KEY.encode())))
    node.start()
    try:
        assert transport.wait_subscribed(DEADLINE)
        yield node
    finally:
        node.shutdown()


def test_signed_nodes_accept_each_other_and_refuse_forged_publishes(
    node_procs: NodeProcesses, signed_events: EventLog, signed_node: Node, key_file: Path, redis_url: str,
    redis_client: redis.Redis, commands: Callable[..., Command],
) -> None:
    a = node_procs.start("echo:sig-a", env={CLUSTER_KEY_ENV: KEY})
    b = node_procs.start("echo:sig-b", options=("--cluster-key-file", str(key_file)))
    assert signed_node.ask("echo:sig-a", Ping(n=1)).get(timeout=DEADLINE) == Pong(n=1)
    assert signed_node.ask("echo:sig-b", Ping(n=2)).get(timeout=DEADLINE) == Pong(n=2)
    inject = run_inject(commands, redis_url, "echo:sig-a", "sys.ping", '{"n": 3}', "--ask",
                        "--cluster-key-file", str(key_file))
    assert inject.proc.returncode == 0 and json.loads(inject.stdout[-1])["n"] == 3, inject.stderr

    # Forgeries straight through redis-py: unsigned, a made-up tag, another key.
    plain = Codec().encode(Envelope(to="echo:sig-a", message=Ping(n=4), sender="node:forger"))
    redis_client.publish("echo:sig-a", plain)
    redis_client.publish("echo:sig-a", b"\xc1" + os.urandom(32) + plain)
    other = Codec(signer=HmacSigner(b"someone-else's-key-0123456789")).encode(
        Envelope(to="echo:sig-a", message=Ping(n=5)))
    redis_client.publish("echo:sig-a", other)
    def refused(reason: str) -> int:
        return len(signed_events.matching(event="dead-letter", node=a.node_id, address="echo:sig-a", reason=reason))

    wait_until(lambda: refused("unsigned") == 1 and refused("bad-signature") == 2, "the three forgeries refused")

    # A node without the key is refused too, and the actor keeps running.
    unkeyed = run_inject(commands, redis_url, "echo:sig-a", "sys.ping", '{"n": 6}')
    assert unkeyed.proc.returncode == 0  # sent; refused on arrival
    wait_until(lambda: refused("unsigned") == 2, "the unkeyed inject refused")
    assert signed_node.ask("echo:sig-a", Ping(n=7)).get(timeout=DEADLINE) == Pong(n=7)
    assert all(KEY not in repr(e) for e in signed_events.events)
    assert a.node_id in {e.node for e in signed_events.events}  # the node's own events are signed and read
    for node in (a, b):
        assert KEY not in node.output()


def test_monitor_needs_the_cluster_key_to_read_a_signed_fleet(
    node_procs: NodeProcesses, key_file: Path, redis_url: str, commands: Callable[..., Command]
) -> None:
    node = node_procs.start("echo:sig-m", options=("--cluster-key-file", str(key_file), "--metrics-interval", "0.2"))
    keyed = commands("monitor", "--once", "--json", "--cluster-key-file", str(key_file), "--timeout", str(DEADLINE),
                     env={"REDIS_URL": redis_url})
    assert keyed.wait(DEADLINE + 5) == 0, keyed.stderr
    assert node.node_id in {n["node"] for n in json.loads(keyed.stdout[-1])["nodes"]}
    blind = commands("monitor", "--once", "--json", "--timeout", "1", "--min-nodes", "1000",
                     env={"REDIS_URL": redis_url})
    blind.wait(DEADLINE)
    snapshot = json.loads(blind.stdout[-1])
    assert node.node_id not in {n["node"] for n in snapshot["nodes"]}
    assert snapshot["undecodable"].get("not-msgpack", 0) >= 1


# -- no secret on sys: channels ---------------------------------------------------------------


class SysCapture:
    """Every message published on ``sys:*`` (raw bytes, by channel)."""

    def __init__(self, url: str) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._pubsub.psubscribe(**{"sys:*": self._on_message})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True)

    def _on_message(self, message: dict[str, object]) -> None:
        channel, data = message["channel"], message["data"]
        assert isinstance(channel, bytes) and isinstance(data, bytes)
        with self._cond:
            self.items.append((channel.decode(), data))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), DEADLINE), f"never saw {what}"

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(DEADLINE)
        self._pubsub.close()
        self._client.close()


def _decoded(data: bytes) -> object:
    try:
        return Codec().decode(data).message
    except DecodeError:
        return None


def test_no_secret_reaches_any_sys_channel(
    node_procs: NodeProcesses, local_node: Node, redis_url: str, redis_client: redis.Redis,
    commands: Callable[..., Command],
) -> None:
    secret = "tok-" + unique("very-secret") + "-" + os.urandom(8).hex()
    capture = SysCapture(redis_url)
    try:
        assert redis_client.execute_command("PUBSUB", "NUMPAT") >= 1
        node = node_procs.start("echo:sec-1", "token:sec-sink", options=("--metrics-interval", "0.2"))
        tap = commands("tap", "echo:sec-1", "--json", "--for", str(DEADLINE * 2), env={"REDIS_URL": redis_url})
        tap.wait_line(lambda line: f"armed on node {node.node_id}" in line, stream="stderr")
        monitor = commands("monitor", "--for", "3", "--json", env={"REDIS_URL": redis_url})

        grant = TokenGranted(session_type="llm-default-session", request_id="r-1", token=secret)
        local_node.tell("echo:sec-1", grant, sender=local_node.address)  # delivered (tapped), then unhandled
        local_node.tell("token:sec-sink", grant)  # delivered, unhandled, not tapped
        local_node.tell("token:sec-nobody", grant)  # nobody hosts it: a dead letter on this node
        with pytest.raises(RemoteError):  # an ask: refused with an error reply
            local_node.ask("echo:sec-1", grant).get(timeout=DEADLINE)
        redis_client.publish("echo:sec-1", b"\x93" + secret.encode())  # garbage that holds the secret
        tap.wait_line(lambda line: '"reason": "not-msgpack"' in line)
        capture.wait_for(lambda items: any(isinstance(m := _decoded(d), NodeMetrics) and m.node == node.node_id
                                           and m.dead_letters_total >= 4 for _, d in items),
                         "metrics that count the dead letters")
        assert monitor.wait(DEADLINE) == 0, monitor.stderr
    finally:
        capture.close()

    channels = {channel for channel, _ in capture.items}
    assert {"sys:events", "sys:metrics", "sys:taps", "sys:tap:echo:sec-1"} <= channels, channels
    tapped = [json.loads(line) for line in tap.stdout]
    assert any(r.get("body") and r["body"].get("token") == REDACTED for r in tapped), tapped
    leaks = [channel for channel, data in capture.items if secret.encode() in data]
    assert not leaks, f"the secret was published on {leaks}"
    for text in ("\n".join(tap.stdout + tap.stderr), "\n".join(monitor.stdout + monitor.stderr), node.output()):
        assert secret not in text
