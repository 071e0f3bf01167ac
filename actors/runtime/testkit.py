"""The test kit: drive one actor through its mailbox, deterministically.

A :class:`TestKit` is a node on an in-process bus with a manual clock:

* ``spawn`` / ``supervise`` start the actor(s) under test;
* ``inject(address, data)`` puts **encoded envelope bytes** into an actor's
  mailbox through the node's one receive path (strict decode, dead
  letters, bounded mailbox), exactly as bytes off Redis would arrive;
  ``inject_message`` encodes a message first;
* ``probe(address)`` stands in for another actor and records what it gets;
  ``sent`` records everything the node put on the wire for other nodes;
* ``expect_message`` / ``expect_no_message`` / ``expect_event`` wait on
  explicit conditions with deadlines, never on sleeps. "No message" is
  judged once the whole runtime is idle, not after some delay.

Time and quiescence:

* ``settle()`` waits until the node is quiet: no actor has work queued or
  running **and** no I/O request (``run_io``: register, token fetch,
  socket open) is in flight;
* ``settle_actors()`` (same as ``settle(io=False)``) waits only until every
  actor is idle, while I/O requests may still be pending: the wait for the
  windows race tests need, where a request is held in flight on purpose
  and its outcome arrives later. ``settle()`` would time out there;
* ``advance(seconds)`` moves the manual clock as if the time had passed
  with the actors running (trio's ``MockClock`` is the model): it jumps to
  each timer's deadline in turn, fires it and settles, then looks again,
  so **timers that handlers set during the advance fire too** when they
  fall due within the window (a retry scheduled in reaction to an earlier
  timer), each at its own deadline: ``clock.now()`` in a timer's handler
  reads that timer's deadline. ``advance(60)`` does exactly what stepping
  through the same 60 s does. ``advance(seconds, io=False)`` settles the
  actors only between timers (for advancing while a request is held).

Holding I/O in flight: the public fakes (``actors.sessions.datachannel.testing``
for the data-channel connector, ``actors.sessions.token.testing`` for the token
endpoint) answer at once unless the test holds a call at a :class:`Gate`::

    gate = fake.hold("register")
    ...                            # the session starts a register
    gate.wait_held(timeout=5)      # it is in flight now
    kit.settle_actors()
    ...                            # move the actor on meanwhile
    gate.release()                 # or gate.fail(exc): the late result arrives
    kit.settle()

:class:`Gates` is the small piece a fake uses to offer ``hold`` for its own
operations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.clock import ManualClock
from actors.runtime.node import Node
from actors.runtime.pooled import PooledFuture
from actors.runtime.supervisor import ChildSpec, Supervisor
from actors.runtime.tracing import Tracing
from bus.envelope import Codec, Envelope
from bus.messages import Event, Message
from bus.transport import InProcessHub, InProcessTransport

__all__ = ["Gate", "Gates", "Probe", "TestKit", "Timeout"]

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


# -- gates: I/O held in flight on purpose ---------------------------------------------


_AS_SCRIPTED: Any = object()


class Gate:
    """One call of a fake (a register, a socket open, a token fetch) held in
    flight until the test lets it go: the window in which a late result can
    arrive after the actor has moved on.

    A fake's ``hold(operation)`` returns a gate that catches the **next**
    call of that operation (gates made for the same operation catch calls in
    the order they were made). The caught call waits, on the node's I/O
    loop, until the test decides:

    * ``wait_held(timeout)``: wait until the call has reached the gate;
      returns what the fake recorded for it (its call record);
    * ``release()``: the call goes on with the answer it would have had
      (the fake's script or default); ``release(answer)`` answers
      ``answer`` instead (an exception instance is raised);
    * ``fail(error)``: the call raises ``error``.

    Deciding before the call arrives is allowed: the call then passes the
    gate without waiting. While a call is held, ``kit.settle()`` cannot
    succeed (a request is in flight); wait with ``kit.settle_actors()`` and
    ``kit.advance(..., io=False)``. A call still held when the node shuts
    down is cancelled with the node's I/O loop.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._cond = threading.Condition()
        self._arrived = False
        self._call: Any = None
        self._decision: tuple[Any] | None = None
        self._waker: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "open" if self._decision is not None else "holding" if self._arrived else "waiting for a call"
        return f"Gate({self.operation!r}, {state})"

    @property
    def held(self) -> bool:
        """A call is at the gate and has not been let go yet."""
        with self._cond:
            return self._arrived and self._decision is None

    @property
    def call(self) -> Any:
        """The call record of the call that reached the gate (else None)."""
        return self._call

    def wait_held(self, timeout: float = 5.0) -> Any:
        """Wait until a call has reached the gate; its call record."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._arrived, timeout):
                raise Timeout(f"no {self.operation} call reached its gate within {timeout:g}s")
            return self._call

    def release(self, answer: Any = _AS_SCRIPTED) -> None:
        """Let the call go on, with its own answer or with ``answer``."""
        self._decide(answer)

    def fail(self, error: BaseException) -> None:
        """Let the call go on by raising ``error``."""
        if not isinstance(error, BaseException):
            raise TypeError(f"fail() takes an exception, not {error!r}")
        self._decide(error)

    def _decide(self, answer: Any) -> None:
        with self._cond:
            if self._decision is not None:
                raise RuntimeError(f"{self!r} was already let go")
            self._decision = (answer,)
            waker, self._waker = self._waker, None
            self._cond.notify_all()
        if waker is not None:
            waker()

    async def passage(self, call: Any, answer: Any) -> Any:
        """The fake's side: record ``call`` as held, wait for the test's
        decision, and return the answer the call must give (``answer``, the
        one it would have given, unless the test chose another)."""
        loop = asyncio.get_running_loop()
        opened = loop.create_future()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(lambda: opened.done() or opened.set_result(None))
            except RuntimeError:
                pass  # the node's loop is closed: the call went with it

        with self._cond:
            if self._arrived:
                raise RuntimeError(f"{self!r} already caught a call")
            self._arrived = True
            self._call = call
            must_wait = self._decision is None
            if must_wait:
                self._waker = wake
            self._cond.notify_all()
        if must_wait:
            await opened
        decision = self._decision
        assert decision is not None
        return answer if decision[0] is _AS_SCRIPTED else decision[0]


class Gates:
    """The gates of one fake, by operation (for fakes' authors)."""

    def __init__(self, *operations: str) -> None:
        self.operations = frozenset(operations)
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Gate]] = {op: [] for op in operations}

    def hold(self, operation: str) -> Gate:
        if operation not in self.operations:
            raise ValueError(f"no operation {operation!r} to hold (one of {sorted(self.operations)})")
        gate = Gate(operation)
        with self._lock:
            self._waiting[operation].append(gate)
        return gate

    def take(self, operation: str) -> Gate | None:
        """The gate that catches this call of ``operation``, if any."""
        with self._lock:
            waiting = self._waiting[operation]
            return waiting.pop(0) if waiting else None

    async def answer(self, operation: str, call: Any, answer: Any) -> Any:
        """``answer`` for this call, after its gate (if one catches it) lets
        it go, or the test's replacement for it."""
        gate = self.take(operation)
        return answer if gate is None else await gate.passage(call, answer)


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

    def expect_no_message(self, want: Matcher = None, *, timeout: float = 5.0, io: bool = True) -> None:
        """Once the runtime is idle (``kit.settle(timeout, io=io)``), no
        further (matching) message has come."""
        self.kit.settle(timeout, io=io)
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
    """A node, an in-process bus and a manual clock, for one test
    (``tracing``: the node's, e.g. OpenTelemetry's with an in-memory exporter)."""

    __test__ = False  # not a pytest class

    #: ``advance`` gives up (``RuntimeError``) after this many rounds of timers
    #: in a row at one instant (handlers re-arming zero-delay timers: a loop).
    max_rounds_at_one_instant = 10_000

    def __init__(self, *, clock: ManualClock | None = None, node_id: str = "testkit",
                 tracing: Tracing | None = None) -> None:
        self.clock = clock or ManualClock()
        self.hub = InProcessHub()
        self._sent = _Recorder()
        self._events = _Recorder()
        self.codec = Codec()
        transport = _CapturingTransport(self.hub, self._sent, self.codec.decode)
        self.node = Node(transport, node_id=node_id, codec=self.codec, clock=self.clock, tracing=tracing)
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

    def settle(self, timeout: float = 5.0, *, io: bool = True) -> None:
        """Wait until the node is quiet: no actor has work queued or running
        **and** no I/O request (``run_io``) is in flight, checked until both
        hold at once (a finished request's outcome is a message, which makes
        an actor busy again).

        While a request is held in flight on purpose (a fake's gate), this
        cannot happen and raises :class:`Timeout`; wait with ``io=False``
        (:meth:`settle_actors`) instead."""
        if not io:
            self.settle_actors(timeout)
            return
        if not self.node.wait_idle(timeout):
            raise Timeout(f"actors still busy after {timeout:g}s{self._inflight_note()}")

    def settle_actors(self, timeout: float = 5.0) -> None:
        """Wait until no actor has work queued or running, whatever I/O is
        still in flight: every actor is idle, waiting for I/O outcomes or
        timers. A request that finishes later delivers its outcome as a
        message then, so this is the wait for windows where an outcome is
        held back on purpose (a request held at a fake's gate); with I/O
        that answers by itself, :meth:`settle` is the deterministic one."""
        if not self.node.wait_actors_idle(timeout):
            raise Timeout(f"actors still busy after {timeout:g}s")

    def _inflight_note(self) -> str:
        n = self.node.io.inflight
        if not n:
            return ""
        return (f" ({n} I/O request{'s' if n > 1 else ''} in flight: held at a gate? "
                "settle_actors() waits for the actors only)")

    def advance(self, seconds: float, *, io: bool = True, timeout: float = 5.0) -> int:
        """Move the manual clock ``seconds`` forward as if time had passed
        with the actors running: settle; then, for every timer that falls
        due within the window, **including timers that handlers set during
        the advance** (a retry scheduled in reaction to an earlier timer),
        jump to that timer's deadline, fire it (and any other due at the same
        instant) and settle again, before looking for the next one. Time
        ends at exactly ``now + seconds``. During a timer's handling
        ``clock.now()`` reads that timer's deadline, so ``advance(60)`` does
        exactly what sixty ``advance(1)`` calls do.

        Each settle is :meth:`settle` (``io=True``: I/O requests answer
        between timers, as a fake that answers at once does) or
        :meth:`settle_actors` (``io=False``: for advancing while a request
        is held at a gate). Returns how many timers fired. Raises
        :class:`Timeout` if a settle does not happen within ``timeout``, and
        ``RuntimeError`` if timers keep falling due at the same instant (a
        zero-delay timer loop would never let time move)."""
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by {seconds!r} seconds")
        clock = self.clock
        target = clock.now() + seconds
        self.settle(timeout, io=io)
        fired = 0
        same_instant = 0
        last: float | None = None
        while True:
            when = clock.next_deadline()
            if when is None or when > target:
                break
            when = max(when, clock.now())
            same_instant = same_instant + 1 if when == last else 0
            if same_instant > self.max_rounds_at_one_instant:
                raise RuntimeError(f"timers keep falling due at {when!r}: a zero-delay timer loop?")
            last = when
            fired += clock.advance_to(when)
            self.settle(timeout, io=io)
        fired += clock.advance_to(target)
        self.settle(timeout, io=io)
        return fired

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
