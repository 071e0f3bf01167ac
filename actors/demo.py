"""``huddle demo``: the runtime end to end on one machine.

Starts an embedded redis-server and two worker node processes, then, from
this process (a third node):

1. asks Echo actors on both workers across the bus and times the answers;
2. runs a supervised actor here, crashes it by message, and watches the
   runtime report the crash and the supervisor restart it at the same
   address with its checkpoint;
3. sends malformed bytes to a remote actor: a dead letter on ``sys:events``,
   and the actor keeps answering.

Prints what happened and a summary; exits 0 only if every check held.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.node import ActorContext, HuddleActor, Node
from actors.supervisor import Backoff, ChildSpec, Supervisor
from bus.address import SYS_EVENTS
from bus.embedded import EmbeddedRedis
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError
from bus.messages import Event, Message, Ping, Pong, message_kind
from bus.redis_transport import RedisTransport


@message_kind("demo.count")
@dataclass(frozen=True, slots=True)
class Count(Message):
    crash: bool = False


class Counter(HuddleActor):
    """Counts, checkpoints the count, crashes when asked to."""

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx)
        self.count = int((ctx.checkpoint or {}).get("count", 0))

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, Count):
            if message.crash:
                raise RuntimeError("crash requested by the demo")
            self.count += 1
            self.checkpoint({"count": self.count})
            return {"count": self.count, "incarnation": self.ctx.incarnation}
        return super().on_message(message, envelope)


class _EventTap:
    def __init__(self, url: str) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._codec = Codec()
        self.transport = RedisTransport(url, name="demo-events")
        self.transport.set_receiver(self._on)
        self.transport.subscribe(SYS_EVENTS)
        self.transport.start()

    def _on(self, channel: str, data: bytes) -> None:
        try:
            ev = self._codec.decode(data).message
        except DecodeError:
            return
        if isinstance(ev, Event):
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def wait(self, event: str, address: str, timeout: float = 10.0, reason: str | None = None) -> Event | None:
        def find() -> Event | None:
            for ev in self.events:
                if ev.event == event and ev.address == address and (reason is None or ev.reason == reason):
                    return ev
            return None

        with self._cond:
            self._cond.wait_for(lambda: find() is not None, timeout)
            return find()


def run(workers: int = 2, asks: int = 200) -> int:
    import logging

    # The crash below is on purpose; its traceback would only be noise here.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
    checks: list[tuple[str, bool]] = []

    def check(label: str, ok: bool) -> None:
        checks.append((label, ok))
        print(f"  {'ok ' if ok else 'FAIL'} {label}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="huddle-demo-"))
    redis = EmbeddedRedis().start()
    print(f"embedded redis-server pid {redis.pid} at {redis.url}")
    procs: list[subprocess.Popen[bytes]] = []
    node: Node | None = None
    tap: _EventTap | None = None
    try:
        tap = _EventTap(redis.url)
        tap.transport.wait_subscribed(10)
        for i in range(workers):
            ready = tmp / f"worker-{i}.ready"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "actors.cli", "node", "--redis-url", redis.url, "--node-id", f"worker-{i}",
                 "--echo", f"echo:w{i}", "--ready-file", str(ready)],
                stdout=subprocess.DEVNULL,
            ))
        deadline = time.monotonic() + 30
        while not all((tmp / f"worker-{i}.ready").exists() for i in range(workers)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                print("workers did not come up", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"{workers} worker node processes up")

        transport = RedisTransport(redis.url, name="demo-conductor")
        node = Node(transport, node_id="conductor").start()
        transport.wait_subscribed(10)

        print("1. asks across processes")
        for i in range(workers):
            lat = []
            ok = True
            for n in range(asks):
                t0 = time.perf_counter()
                pong = node.ask(f"echo:w{i}", Ping(n=n)).get(timeout=10)
                lat.append(time.perf_counter() - t0)
                ok = ok and isinstance(pong, Pong) and pong.n == n
            lat.sort()
            check(f"{asks} asks to echo:w{i} on worker-{i} answered in order "
                  f"(p50 {lat[len(lat) // 2] * 1e6:.0f} us, p99 {lat[int(len(lat) * 0.99)] * 1e6:.0f} us)", ok)

        print("2. supervision: crash by message, restart at the same address")
        node.spawn("sup:demo", Supervisor, [ChildSpec("counter:c1", Counter)], backoff=Backoff(base=0.05))
        tap.wait("started", "counter:c1")
        first = [node.ask("counter:c1", Count()).get(timeout=5) for _ in range(3)][-1]
        node.tell("counter:c1", Count(crash=True))
        crashed = tap.wait("crashed", "counter:c1")
        restarted = tap.wait("restarted", "counter:c1")
        after = node.ask("counter:c1", Count()).get(timeout=5)
        check("the runtime reported the crash on sys:events", crashed is not None and crashed.reason == "RuntimeError")
        check("the supervisor restarted counter:c1", restarted is not None)
        check(f"new incarnation kept its checkpoint (count {first['count']} -> {after['count']}, "
              f"incarnation {first['incarnation']} -> {after['incarnation']})",
              after["count"] == first["count"] + 1 and after["incarnation"] == first["incarnation"] + 1)

        print("3. bad input: malformed bytes to a remote actor")
        transport.publish("echo:w0", b"\xc1 not an envelope")
        dead = tap.wait("dead-letter", "echo:w0", reason="not-msgpack")
        check("dead letter published by worker-0 with its reason", dead is not None and dead.node == "worker-0")
        pong = node.ask("echo:w0", Ping(n=42)).get(timeout=5)
        check("echo:w0 still answers", isinstance(pong, Pong) and pong.n == 42)
    finally:
        if node is not None:
            node.shutdown()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if tap is not None:
            tap.transport.close()
        redis.stop()
    failed = [label for label, ok in checks if not ok]
    print(f"\nsummary: {len(checks) - len(failed)} of {len(checks)} checks passed"
          + ("" if not failed else f"; failed: {failed}"))
    return 0 if checks and not failed else 1
