"""A signed fleet, and fencing that a forged epoch cannot poison, over
real ``huddle node`` processes on a real redis-server.

* A cluster node on a given Redis refuses to start without a cluster key
  (unless told ``--insecure-no-signing``), saying why and how.
* With a key, the whole cluster works signed: placement (``ensure``
  resolves), asks, failover after ``kill -9``, hand-off to a joining node,
  drain; a keyless publisher's envelope is refused.
* Without signing, one envelope that claims an unissued epoch for a live
  actor's address is an ``unissued-epoch`` dead letter: the owner's replies
  are still accepted, and the next lease epoch is not dragged above it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from actors.runtime.builtin import CounterAdd
from bus.address import channel_for, node_address
from bus.cluster.keys import ClusterKeys
from bus.cluster.placement import owner_of
from bus.envelope import Codec, Envelope
from bus.messages import Ping
from bus.signing import write_new_cluster_key
from tests.waiting import wait_until

from .conftest import DEADLINE, REPO_ROOT, NodeProcesses, huddle_cmd, unique
from .test_cluster import ClusterRun, _run

pytestmark = pytest.mark.integration

FORGED_EPOCH = 2**53 - 1  # far above anything a lease store issues (microseconds since 1970 ~ 2^51)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_new_cluster_key(tmp_path / "cluster.key")


@pytest.fixture
def signed(node_procs: NodeProcesses, redis_url: str, key_file: Path) -> Iterator[ClusterRun]:
    yield from _run(node_procs, redis_url, key_file=key_file)


@pytest.fixture
def unsigned(node_procs: NodeProcesses, redis_url: str) -> Iterator[ClusterRun]:
    yield from _run(node_procs, redis_url)


def test_a_cluster_node_without_a_key_refuses_to_start_and_says_how(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HUDDLE_CLUSTER_KEY"}
    done = subprocess.run(huddle_cmd("node", "--redis-url", redis_url, "--cluster", "--run-for", "1"),
                          capture_output=True, text=True, timeout=DEADLINE, cwd=REPO_ROOT, env=env)
    assert done.returncode == 2
    assert "no cluster key" in done.stderr
    assert "--cluster-key-file" in done.stderr and "--insecure-no-signing" in done.stderr


def test_a_cluster_node_on_its_own_embedded_redis_makes_a_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HUDDLE_CLUSTER_KEY", "REDIS_URL")}
    ready = tmp_path / "ready"
    done = subprocess.run(huddle_cmd("node", "--cluster", "--run-for", "0.5", "--ready-file", str(ready)),
                          capture_output=True, text=True, timeout=DEADLINE * 2, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert ready.exists()
    line = next(x for x in done.stdout.splitlines() if x.startswith("cluster key (made for this bus) in "))
    key_path = Path(line.split(" in ", 1)[1].split(":", 1)[0])
    try:
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert key_path.read_text().strip() not in done.stdout + done.stderr  # the key itself is never printed
    finally:
        key_path.unlink()
        key_path.parent.rmdir()


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k"
    made = subprocess.run(huddle_cmd("keygen", str(path)), capture_output=True, text=True, timeout=DEADLINE,
                          cwd=REPO_ROOT)
    assert made.returncode == 0, made.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    key = path.read_text()
    assert len(key.strip()) == 64 and key.strip() not in made.stdout
    again = subprocess.run(huddle_cmd("keygen", str(path)), capture_output=True, text=True, timeout=DEADLINE,
                           cwd=REPO_ROOT)
    assert again.returncode == 1 and path.read_text() == key


def test_a_signed_fleet_places_answers_fails_over_and_hands_off(signed: ClusterRun, redis_url: str) -> None:
    a = signed.node(wait=False)
    b = signed.node(wait=False)
    for node in (a, b):
        signed.procs.wait_ready(node)
    owners = signed.counters(8)  # ensure() resolves: the signed claim announcements are read
    assert set(owners.values()) <= {a.node_id, b.node_id}
    for i, address in enumerate(owners):
        assert signed.add(address, i + 1, tag="before") == i + 1
    for i, address in enumerate(owners):
        signed.wait_stored(address, i + 1)

    victim = a if a.node_id in owners.values() else b
    survivor = b if victim is a else a
    moved = [address for address, owner in owners.items() if owner == victim.node_id]
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(DEADLINE)
    for address in moved:
        signed.started_elsewhere(address, victim.node_id)
    for i, address in enumerate(owners):
        got = signed.value(address)
        assert got["count"] == i + 1 and got["tags"] == ["before"] and got["node"] == survivor.node_id

    joining = signed.node()
    hosts = {survivor.node_id: 1.0, joining.node_id: 1.0}
    handed = [address for address in owners if owner_of(address, hosts) == joining.node_id]
    for address in handed:
        signed.events.wait_for(event="started", node=joining.node_id, address=address)
    for i, address in enumerate(owners):
        got = signed.value(address)
        assert got["count"] == i + 1
        assert got["node"] == (joining.node_id if address in handed else survivor.node_id)

    drain = subprocess.run(huddle_cmd("node", "--redis-url", redis_url, "--namespace", signed.namespace,
                                      "--drain", joining.node_id, "--run-for", str(DEADLINE),
                                      "--cluster-key-file", str(signed.key_file)),
                           capture_output=True, text=True, timeout=DEADLINE + 10, cwd=REPO_ROOT)
    assert drain.returncode == 0, drain.stderr
    assert joining.proc.wait(DEADLINE) == 0
    for address in owners:
        assert signed.value(address)["node"] == survivor.node_id
    # Nothing the fleet said was refused as unsigned or forged, and no
    # claim announcement was lost to a bad signature.
    assert signed.events.undecodable == 0
    assert not signed.events.matching(event="dead-letter", reason="bad-signature")
    assert not signed.events.matching(event="dead-letter", reason="unsigned")


def test_a_signed_fleet_refuses_a_keyless_envelope(signed: ClusterRun) -> None:
    a = signed.node()
    (address, owner), = signed.counters(1).items()
    assert owner == a.node_id
    raw = redis.Redis.from_url(signed.redis_url)
    try:
        forged = Codec().encode(Envelope(to=address, message=CounterAdd(n=100, tag="forged"), sender="app:x"))
        raw.publish(channel_for(address, signed.namespace), forged)
    finally:
        raw.close()
    signed.events.wait_for(event="dead-letter", node=a.node_id, reason="unsigned")
    assert signed.add(address, 1, tag="real") == 1  # the forged addition was never applied


def test_an_unissued_epoch_cuts_nobody_off_and_moves_no_lease_epoch(unsigned: ClusterRun) -> None:
    a = unsigned.node()
    (address, owner), = unsigned.counters(1).items()
    assert owner == a.node_id
    assert unsigned.add(address, 1, tag="t1") == 1
    raw = redis.Redis.from_url(unsigned.redis_url)
    keys = ClusterKeys(unsigned.namespace)
    try:
        # From the counter's own address, with an epoch never issued: to the
        # client's node channel (where the counter's replies come) ...
        forged = Codec().encode(Envelope(to=unsigned.client.address, message=Ping(n=1), sender=address,
                                         epoch=FORGED_EPOCH))
        raw.publish(channel_for(unsigned.client.address, unsigned.namespace), forged)
        wait_until(lambda: unsigned.local_event(event="dead-letter", reason="unissued-epoch"),
                   "the client refused the forged epoch")
        # ... and to the worker, for an address it will claim next.
        fresh = f"counter:{unique('f')}"
        forged = Codec().encode(Envelope(to=node_address(a.node_id), message=Ping(n=2), sender=fresh,
                                         epoch=FORGED_EPOCH))
        raw.publish(channel_for(node_address(a.node_id), unsigned.namespace), forged)
        unsigned.events.wait_for(event="dead-letter", node=a.node_id, reason="unissued-epoch")
        # The owner's replies are still accepted (they carry the real epoch).
        assert unsigned.add(address, 1, tag="t2") == 2
        assert unsigned.client.newest_epoch(address) < FORGED_EPOCH
        # The worker claims the fresh address under an epoch drawn as usual.
        assert unsigned.cluster.ensure(fresh).get(timeout=DEADLINE) == a.node_id
        started = unsigned.events.wait_for(event="started", node=a.node_id, address=fresh)
        assert 0 < started.detail["epoch"] < FORGED_EPOCH
        assert int(raw.get(keys.issued(fresh)).split()[0]) < FORGED_EPOCH
    finally:
        raw.close()
    assert not unsigned.events.matching(event="dead-letter", reason="stale-epoch")
