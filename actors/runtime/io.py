"""One asyncio loop per node, on one thread: the I/O that actors ask for,
the Redis transport's connections and the system clock's timers.

Handlers never block. A session actor that needs a socket opened, an HTTP
request made or a frame written hands a coroutine to the node's
:class:`IoLoop` (``HuddleActor.run_io``) and gets the outcome back later as
an ordinary message in its own mailbox, so its state is only ever touched by
its own handler, one message at a time.

Two kinds of work run on the loop:

* **requests** (``submit``): finite coroutines whose outcome an actor waits
  for (register, token fetch, connect). They are counted, so a test can wait
  until none is in flight (:meth:`IoLoop.wait_idle`) instead of sleeping;
* **background tasks** (``submit(..., tracked=False)``): long-lived
  coroutines such as a socket's reader, which never finish on their own and
  so are not counted.

The node hands the loop to its transport (``transport.start(io.loop)``) and
to its :class:`~actors.runtime.clock.SystemClock`, so bytes read from Redis are
decoded and put into mailboxes on this thread, and a timer's message is
sent from it. After :meth:`close`, every task still running is cancelled and
the loop's thread ends; a late ``submit`` raises :class:`IoClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from actors.runtime.pooled import blocking_section
from bus.loop import IoClosed, LoopThread

__all__ = ["IoClosed", "IoLoop", "LoopConfined", "Outcome", "confined"]

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What a finished I/O request produced: a value or an exception."""

    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a task's exception as seen, as a handed-over request's future
    would (whoever cares reads it from the returned future)."""
    if not task.cancelled():
        task.exception()


class IoLoop(LoopThread):
    """The node's asyncio loop, on its own daemon thread (started on first
    use): the actors' I/O, the Redis transport's connections and the system
    clock's timers all run on it."""

    def __init__(self, name: str = "huddle-io", *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(name, loop=loop)
        self._idle = threading.Condition(threading.Lock())
        self._inflight = 0

    def submit(self, coro: Coroutine[Any, Any, T], *,
               tracked: bool = True) -> concurrent.futures.Future[T] | asyncio.Future[T]:
        """Run ``coro`` on the loop; thread-safe. ``tracked`` work counts
        towards :meth:`wait_idle` until it finishes.

        Called on the loop's own thread (an actor's slice, a socket's
        reader), the coroutine becomes a task at once and that task is
        returned: no thread hop, no wake-up of the loop's selector. From
        another thread it is handed over and a
        :class:`concurrent.futures.Future` is returned (the only kind a
        caller may block on)."""
        try:
            loop = self.loop
        except IoClosed:
            coro.close()
            raise
        with self._idle:
            if self.closed:
                coro.close()
                raise IoClosed(f"{self.name} is closed")
            if tracked:
                self._inflight += 1
        future: concurrent.futures.Future[T] | asyncio.Future[T]
        try:
            if self.on_loop_thread():
                future = loop.create_task(coro)
                future.add_done_callback(_retrieve)
            else:
                future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:  # loop stopped between the check and here
            coro.close()
            if tracked:
                self._done(None)
            raise IoClosed(f"{self.name} is closed") from exc
        if tracked:
            future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no tracked request is in flight (within ``timeout``)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run on the loop, and its answer (or exception):
        directly on the loop's own thread; from another thread the call is
        handed to the loop and this thread waits for it (a pool thread
        counts as blocked, so the pool grows meanwhile). Once the loop is
        closed nothing else runs there, and ``fn`` runs on the caller's
        thread."""
        if self.on_loop_thread():
            return fn(*args)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                done.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        try:
            self.call_soon(run)
        except IoClosed:
            return fn(*args)
        with blocking_section("a call handed to the node's loop"):
            while True:
                try:
                    return done.result(timeout=0.5)
                except concurrent.futures.TimeoutError:
                    if self.closed and done.cancel():
                        return fn(*args)  # the loop stopped before it ran


class LoopConfined(Protocol):
    """An object whose state only its node's loop touches (see :func:`confined`)."""

    @property
    def io(self) -> IoLoop: ...


S = TypeVar("S", bound=LoopConfined)


def confined(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Run ``method`` on its object's loop (``self.io``): an entry point of
    an object whose state only that loop touches, so it needs no lock.
    Called on the loop, it runs at once; from another thread (a blocking
    actor on the pool, a test or a CLI on its main thread) it is handed to
    the loop and the caller waits for its answer (:meth:`IoLoop.call`)."""

    @functools.wraps(method)
    def on_loop(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        io = self.io
        if io.on_loop_thread():
            return method(self, *args, **kwargs)
        return io.call(functools.partial(method, self, *args, **kwargs))

    return on_loop
