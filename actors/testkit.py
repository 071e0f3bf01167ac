"""The test kit: drive one actor through its mailbox, deterministically.

A :class:`TestKit` is a node on an in-process bus with a manual clock:

* ``spawn`` / ``supervise`` start the actor(s) under test;
* ``inject(address, data)`` puts **encoded envelope bytes** into an actor's
  mailbox through the node's one receive path (strict decode, dead
  letters, bounded mailbox), exactly as bytes off Redis would arrive;
  ``inject_message`` encodes a message first;
* ``probe(address)`` stands in for another actor and records what it gets;
  ``sent`` records everything the node put on the wire for other nodes;
* ``advance(seconds)`` moves the manual clock (timers are messages) and
  waits until every actor is idle;
* ``expect_message`` / ``expect_no_message`` / ``expect_event`` wait on
  explicit conditions with deadlines, never on sleeps. "No message" is
  judged once the whole runtime is idle, not after some delay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from actors.clock import ManualClock
from actors.node import ActorContext, HuddleActor, Node
from actors.runtime import PooledFuture
from actors.supervisor import ChildSpec, Supervisor
from bus.envelope import Codec, Envelope
from bus.messages import Event, Message
from bus.transport import InProcessHub, InProcessTransport

__all__ = ["Probe", "TestKit", "Timeout"]

A = TypeVar("A", bound=HuddleActor)
Matcher = str | type[Message] | None


class Timeout(AssertionError):
    """An expectation was not met before its deadline."""


def _matches(message: Message, want: Matcher) -> bool:
    if want is None:
        return True
    if isinstance(want, str):
        return message.KIND == want
    return isinstance(message, want)


class _Recorder:
    """A list that others can wait on."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()
        self._consumed: set[int] = set()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The first item not yet consumed that matches (consuming it)."""
        def find() -> Any:
            for i in range(len(self.items)):
                if i not in self._consumed and predicate(self.items[i]):
                    return i
            return None

        with self._cond:
            found = self._cond.wait_for(lambda: find() is not None, timeout)
            if not found:
                raise Timeout(f"no {what} within {timeout:g}s; seen: {self._describe()}")
            i = find()
            self._consumed.add(i)
            return self.items[i]

    def unconsumed(self) -> list[Any]:
        with self._cond:
            return [x for i, x in enumerate(self.items) if i not in self._consumed]

    def _describe(self) -> str:
        return ", ".join(_short(x) for x in self.items[-10:]) or "nothing"


def _short(item: Any) -> str:
    if isinstance(item, Event):
        return f"{item.event}({item.address}{', ' + item.reason if item.reason else ''})"
    if isinstance(item, Envelope):
        return f"{item.kind}->{item.to}"
    if isinstance(item, tuple) and item and isinstance(item[0], Message):
        return item[0].KIND
    return repr(item)


class _ProbeActor(HuddleActor):
    def __init__(self, ctx: ActorContext, recorder: _Recorder, reply: Callable[[Message, Envelope], Any] | None) -> None:
        super().__init__(ctx)
        self._recorder = recorder
        self._reply = reply

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        self._recorder.add((message, envelope))
        return self._reply(message, envelope) if self._reply is not None else None


class Probe:
    """A stand-in actor at an address; records every message it receives."""

    def __init__(self, kit: TestKit, address: str, reply: Callable[[Message, Envelope], Any] | None) -> None:
        self.kit = kit
        self.address = address
        self._recorder = _Recorder()
        kit.node.spawn(address, _ProbeActor, self._recorder, reply)

    @property
    def received(self) -> list[tuple[Message, Envelope]]:
        return list(self._recorder.items)

    def expect_message(self, want: Matcher = None, *, timeout: float = 5.0) -> tuple[Message, Envelope]:
        """The next message (of kind/type ``want``) this probe receives."""
        return self._recorder.wait_for(lambda item: _matches(item[0], want), timeout, f"message {want!r} at {self.address}")

    def expect_no_message(self, want: Matcher = None, *, timeout: float = 5.0) -> None:
        """Once the runtime is idle, no further (matching) message has come."""
        self.kit.settle(timeout)
        extra = [m for m, _ in self._recorder.unconsumed() if _matches(m, want)]
        if extra:
            raise AssertionError(f"{self.address} got unexpected {[m.KIND for m in extra]}")


class _CapturingTransport(InProcessTransport):
    def __init__(self, hub: InProcessHub, recorder: _Recorder, decode: Callable[[bytes], Envelope]) -> None:
        super().__init__(hub, name="testkit")
        self._capture = recorder
        self._decode = decode

    def publish(self, channel: str, data: bytes) -> None:
        if not channel.startswith("sys:"):
            self._capture.add(self._decode(data))
        super().publish(channel, data)


class TestKit:
    """A node, an in-process bus and a manual clock, for one test."""

    __test__ = False  # not a pytest class

    def __init__(self, *, clock: ManualClock | None = None, node_id: str = "testkit") -> None:
        self.clock = clock or ManualClock()
        self.hub = InProcessHub()
        self._sent = _Recorder()
        self._events = _Recorder()
        self.codec = Codec()
        transport = _CapturingTransport(self.hub, self._sent, self.codec.decode)
        self.node = Node(transport, node_id=node_id, codec=self.codec, clock=self.clock)
        self.node.add_event_listener(self._events.add)
        self.node.start()

    def __enter__(self) -> TestKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.node.shutdown()

    # -- starting actors ----------------------------------------------------

    def spawn(self, address: str, actor_class: type[A], *args: Any, **kwargs: Any) -> A:
        """Start the actor under test and wait until it is idle (its
        ``on_start`` has run, a supervisor's children are up); returns the
        actor object itself so a test can read its state once idle."""
        self.node.spawn(address, actor_class, *args, **kwargs)
        self.settle()
        actor = self.node.lookup(address)
        assert actor is not None
        return actor  # type: ignore[return-value]

    def supervise(self, address: str, children: Sequence[ChildSpec], **options: Any) -> Supervisor:
        return self.spawn(address, Supervisor, children, **options)

    def probe(self, address: str, reply: Callable[[Message, Envelope], Any] | None = None) -> Probe:
        return Probe(self, address, reply)

    # -- feeding mailboxes ----------------------------------------------------

    def envelope(self, to: str, message: Message, **header: Any) -> bytes:
        """Encoded envelope bytes, as another node would send them."""
        return self.codec.encode(Envelope(to=to, message=message, **header))

    def inject(self, address: str, data: bytes) -> None:
        """Put raw bytes into the mailbox of ``address`` through the node's
        receive path (decode, checks, dead letters), as if read off the bus."""
        self.node.receive_bytes(data, channel=address)

    def inject_message(self, to: str, message: Message, **header: Any) -> None:
        self.inject(to, self.envelope(to, message, **header))

    def ask(self, to: str, message: Message, *, timeout: float = 5.0) -> PooledFuture[Any]:
        return self.node.ask(to, message, timeout=timeout)

    # -- time and quiescence ------------------------------------------------------

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until no actor has work queued or running."""
        if not self.node.wait_idle(timeout):
            raise Timeout(f"actors still busy after {timeout:g}s")

    def advance(self, seconds: float) -> None:
        """Settle, move the manual clock (timers fire, in order), settle."""
        self.settle()
        self.clock.advance(seconds)
        self.settle()

    # -- what came out -----------------------------------------------------

    @property
    def sent(self) -> list[Envelope]:
        """Every envelope the node published for other nodes (not sys:)."""
        return list(self._sent.items)

    def expect_sent(self, to: str | None = None, want: Matcher = None, *, timeout: float = 5.0) -> Envelope:
        return self._sent.wait_for(
            lambda env: (to is None or env.to == to) and _matches(env.message, want), timeout, f"send of {want!r} to {to}"
        )

    @property
    def events(self) -> list[Event]:
        return list(self._events.items)

    def expect_event(self, event: str, address: str | None = None, *, reason: str | None = None, timeout: float = 5.0) -> Event:
        """The next event named ``event`` (for ``address``) not yet expected."""
        return self._events.wait_for(
            lambda ev: ev.event == event and (address is None or ev.address == address)
            and (reason is None or ev.reason == reason),
            timeout,
            f"event {event!r} for {address}",
        )

    def events_named(self, event: str, address: str | None = None) -> list[Event]:
        return [e for e in self._events.items if e.event == event and (address is None or e.address == address)]
