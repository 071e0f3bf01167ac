"""Pooled pykka actors: many actors, a few threads.

pykka's ``ThreadingActor`` gives every actor its own OS thread. Here an
actor is a plain object with a mailbox; a shared :class:`Dispatcher` runs
*slices* of actors on a small pool of threads. The contract pykka states
still holds:

* ``on_start`` runs before the first message, ``on_stop`` / ``on_failure``
  as pykka documents them;
* one message at a time per actor, in the order they were put;
* ``ActorRef.tell/ask/stop``, proxies, futures and ``ActorRegistry`` work
  unchanged (pykka's own test suite runs against this runtime).

How a slice works: the dispatcher calls :meth:`PooledActor._run_slice`,
which runs the actor's receive loop for one slice. That loop is huddle's
own (``PooledActor._actor_loop_running``), and handles each message as
pykka's does (the same answers, failure handling and log records), but it
returns when the mailbox is empty or the slice has used its budget
(fairness between actors). The mailbox's ``get()`` never blocks either:
past the same limits it raises :class:`_SliceEnd`, which pykka's teardown
(it drains the mailbox with ``get()``) does not catch. The slice then ends
and the actor is either re-queued (messages left) or parked (none left).
What is overridden: pykka's documented hooks ``_create_actor_inbox``,
``_create_future`` and ``_start_actor_loop``; the receive loop (above);
``__init__`` (the same fields, a lighter stop flag, and a mailbox made per
actor, since it schedules that actor); and ``_handle_failure`` (the crash
is remembered for the exit report).

Two dispatchers: :class:`ThreadPoolDispatcher` runs slices on a pool of
threads (the default, and where every actor that may block runs);
:class:`LoopDispatcher` runs them as callbacks on an asyncio loop (a node's
I/O loop, for its actors that never block), so what a socket delivers is
handled on the thread that read it.

Blocking: a handler on the pool may still block on a future
(``ask(...).get()``). A pool thread that blocks on a :class:`PooledFuture`
tells the dispatcher, which starts a compensating thread so the pool never
starves (the idea of "managed blocking" in fork/join pools). The extra
thread retires when it is no longer needed. On a loop thread the same wait
raises :class:`BlockingOnLoop` at once: it would stop the loop, and with it
the reply it waits for.

Exits are reported by the runtime: when an actor stops, the slice that saw
it stop calls ``actor._exit_hook(actor, error)`` (``error`` is ``None`` for a
normal stop). Supervision hangs off that hook, so a crash report never
depends on code in the crashed actor.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pykka import ActorDeadError, ActorRef, ActorRegistry, Future, ThreadingFuture, Timeout
from pykka._threading import ThreadingFutureResult
from pykka import Actor as _PykkaActor
from pykka.messages import _ActorStop

from bus.errors import HuddleError, MailboxFull
from bus.loop import LoopThread, current_loop_thread

if TYPE_CHECKING:
    from pykka._envelope import Envelope

__all__ = [
    "DEFERRED",
    "BlockingOnLoop",
    "Dispatcher",
    "LoopDispatcher",
    "Mailbox",
    "PooledActor",
    "PooledFuture",
    "all_done",
    "StopFlag",
    "ThreadPoolDispatcher",
    "default_dispatcher",
    "set_default_dispatcher",
]

log = logging.getLogger("huddle.runtime")
get_ident = threading.get_ident
_pykka_log = logging.getLogger("pykka")  # pykka's receive loop logs here

T = TypeVar("T")

#: Messages one actor may handle before yielding its pool thread to others.
SLICE_BUDGET = 128

#: Seconds of slices a :class:`LoopDispatcher` runs before it hands the loop
#: back for a turn (writes go out, sockets are read, timers fire), even if
#: more actors were ready when the round began.
ROUND_BUDGET_S = 0.002


# --------------------------------------------------------------------------
# Dispatcher seam


class Runnable(Protocol):
    def _run_slice(self) -> None: ...


class Dispatcher(Protocol):
    """Runs actor slices. Implementations must never run two slices of one
    actor at once (the mailbox guarantees it by scheduling an actor only
    when it is not already scheduled)."""

    def submit(self, actor: Runnable) -> None: ...

    @contextmanager
    def blocking(self) -> Iterator[None]: ...

    def is_worker_thread(self) -> bool: ...


class ThreadPoolDispatcher:
    """A pool of daemon threads sharing one run queue of ready actors.

    ``size`` threads always run; ``blocking()`` adds a compensating thread
    for each pool thread that waits on a future, so nested asks cannot
    starve the pool.
    """

    def __init__(self, size: int | None = None, name: str = "huddle-pool") -> None:
        self.size = size if size is not None else 1
        self.name = name
        self._ready: queue.SimpleQueue[Runnable | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._blocked = 0
        self._counter = 0
        self._local = threading.local()
        # Slices submitted and not yet finished; lets tests wait until every
        # actor is idle instead of sleeping.
        self._inflight = 0
        self._idle = threading.Condition(threading.Lock())
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        # Caller holds no lock or self._lock; both fine (Thread.start does not
        # call back into us).
        self._threads += 1
        self._counter += 1
        t = threading.Thread(target=self._work, name=f"{self.name}-{self._counter}", daemon=True)
        t.start()

    def _work(self) -> None:
        self._local.worker = True
        _current.dispatcher = self
        ready = self._ready
        while True:
            actor = ready.get()
            if actor is None:
                break
            try:
                actor._run_slice()
            except BaseException:  # noqa: BLE001 - a slice must never kill the pool
                log.exception("actor slice escaped its handler: %r", actor)
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()
            if self._threads > self.size + self._blocked:
                with self._lock:
                    if self._threads > self.size + self._blocked:
                        self._threads -= 1
                        return

    def submit(self, actor: Runnable) -> None:
        with self._idle:
            self._inflight += 1
        self._ready.put(actor)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no slice is queued or running (True), or timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def is_worker_thread(self) -> bool:
        return getattr(self._local, "worker", False)

    @contextmanager
    def blocking(self) -> Iterator[None]:
        with self._lock:
            self._blocked += 1
            if self._threads < self.size + self._blocked:
                self._spawn()
        try:
            yield
        finally:
            with self._lock:
                self._blocked -= 1

    @property
    def threads(self) -> int:
        return self._threads


class BlockingOnLoop(HuddleError):
    """A blocking wait (``future.get()``, ``StopFlag.wait``) was attempted on
    a thread that runs an asyncio loop: it would stop the loop, and with it
    the reply it waits for."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} would block the node's I/O loop thread (the reply could never arrive): "
            "await the future, or ask and handle the reply as a message"
        )


class LoopDispatcher:
    """Runs actor slices on an asyncio loop (the node's I/O loop), so bytes
    read from a socket are decoded, queued and handled without a thread hop.

    Ready actors wait in a run queue; one loop callback (scheduled with
    ``loop.call_soon`` on the loop thread, ``call_soon_threadsafe`` from
    others, and only when the queue was idle) runs the slices of the actors
    that were ready when it started, each within its ``SLICE_BUDGET``, for
    at most ``ROUND_BUDGET_S``, and then hands the loop back: the rest, and
    actors made ready meanwhile (a busy actor
    re-queued after its budget included) wait for the next round, after the
    loop has read its sockets and run its other callbacks. For actors that
    never block: a blocking wait on this thread raises :class:`BlockingOnLoop`
    instead of stopping the loop.

    :meth:`run_pending` runs the waiting round at once, from a callback
    already running on the loop (the transport's, once a read's messages
    are all queued): what a read made ready is handled in the same turn of
    the loop, and what the handlers send is written in it too, instead of
    each step waiting for a turn (a system call and a pass of the loop) of
    its own. The scheduled callback then finds nothing left, or runs what
    became ready since.
    """

    def __init__(self, io: LoopThread) -> None:
        self.io = io
        self._ready: deque[Runnable] = deque()
        self._scheduled = False  # a round is scheduled or running
        self._callback_pending = False  # a loop callback for a round is queued
        self._running = False  # a round is running (loop thread only)
        self._loop_thread = -1  # the loop's thread, once it ran a round
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._idle_waiters = 0  # threads in wait_idle (under the lock): most rounds have none to wake

    def submit(self, actor: Runnable) -> None:
        if self._scheduled and get_ident() == self._loop_thread:
            # On the loop's own thread with a round scheduled or running:
            # only this thread ends a round (clearing ``_scheduled``, under
            # the lock, after looking at the queue), so the flag cannot
            # change under us and the round, or the next, takes the actor.
            # Most submits are these (each message of a read for an idle
            # actor): no lock.
            self._ready.append(actor)
            return
        with self._lock:
            self._ready.append(actor)
            if self._scheduled:
                return
            self._scheduled = True
            self._callback_pending = True
        try:
            self.io.call_soon(self._run_scheduled)
        except HuddleError:  # the loop is closed: the node is gone, and its slices with it
            with self._lock:
                self._ready.clear()
                self._scheduled = False
                self._callback_pending = False
                self._idle.notify_all()
            log.debug("slice of %r dropped: the loop is closed", actor)

    def run_pending(self) -> None:
        """Loop thread, from a callback (never from a slice): run the round
        that waits, now."""
        if self._ready and not self._running:
            self._run_ready()

    def _run_scheduled(self) -> None:
        with self._lock:
            self._callback_pending = False
        if not self._running:
            self._run_ready()

    def _run_ready(self) -> None:
        self._loop_thread = get_ident()
        ready = self._ready
        count = len(ready)
        # The budget is read on the loop's own clock: monotonic time on a
        # node's loop, virtual time in a simulated world (where a round then
        # never ends early, and a run stays the same run).
        clock = asyncio.get_running_loop().time
        ends = clock() + ROUND_BUDGET_S
        self._running = True
        try:
            for _ in range(count):
                actor = ready.popleft()
                try:
                    actor._run_slice()
                except BaseException:  # noqa: BLE001 - a slice must never stop the loop
                    log.exception("actor slice escaped its handler: %r", actor)
                if clock() >= ends:
                    break  # the rest after the loop has written and read its sockets
        finally:
            self._running = False
        with self._lock:
            if ready:
                if not self._callback_pending:
                    # The next round, after the loop's other work.
                    self._callback_pending = True
                    asyncio.get_running_loop().call_soon(self._run_scheduled)
            else:
                self._scheduled = False
                if self._idle_waiters:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no slice is queued or running (True), or timeout."""
        with self._idle:
            self._idle_waiters += 1
            try:
                return self._idle.wait_for(lambda: not self._scheduled, timeout)
            finally:
                self._idle_waiters -= 1

    def is_worker_thread(self) -> bool:
        return bool(self.io.on_loop_thread())

    @contextmanager
    def blocking(self) -> Iterator[None]:
        raise BlockingOnLoop("a blocking wait")
        yield  # pragma: no cover


_default_dispatcher: Dispatcher | None = None
_default_lock = threading.Lock()


def default_dispatcher() -> Dispatcher:
    """The process-wide dispatcher, created on first use."""
    global _default_dispatcher
    if _default_dispatcher is None:
        with _default_lock:
            if _default_dispatcher is None:
                _default_dispatcher = ThreadPoolDispatcher()
    return _default_dispatcher


def set_default_dispatcher(dispatcher: Dispatcher) -> None:
    global _default_dispatcher
    with _default_lock:
        _default_dispatcher = dispatcher


# The dispatcher whose worker this thread is (if any). An actor class may
# name its own dispatcher, so "the default one" is not enough to know which
# pool a blocked thread belongs to.
_current = threading.local()


def blocking_section(what: str) -> AbstractContextManager[None]:
    if current_loop_thread() is not None:
        raise BlockingOnLoop(what)
    d = getattr(_current, "dispatcher", None) or _default_dispatcher
    if d is not None and d.is_worker_thread():
        return d.blocking()
    return nullcontext()


# --------------------------------------------------------------------------
# Futures

_allocate_lock = threading.Lock


class PooledFuture(ThreadingFuture[T]):
    """A pykka future that pool threads may block on, and asyncio may await.

    * ``get()`` on a pool thread marks the thread as blocked so the pool
      grows instead of deadlocking.
    * ``await future`` never blocks the event loop: it parks on an
      ``asyncio.Future`` completed from whichever thread sets the value.
    * ``add_done_callback(fn)`` runs ``fn(future)`` once a value or an
      exception is set (at once if already set).
    """

    def __init__(self) -> None:
        # Not ThreadingFuture.__init__: its Condition (a Python object over
        # an RLock, with a new lock per wait) is most of what a future
        # costs, and an ask makes one. A re-entrant lock and a list of
        # parked waiter locks do the same job; get/set/set_exception/
        # set_get_hook below are ThreadingFuture's, on them.
        Future.__init__(self)
        self._result: ThreadingFutureResult | None = None
        self._lock = threading.RLock()
        self._waiters: list[threading.Lock] | None = None
        self._callbacks: list[Callable[[PooledFuture[T]], None]] | None = None

    def done(self) -> bool:
        return self._result is not None

    def get(self, *, timeout: float | None = None) -> Any:
        if self._get_hook is not None:
            with self._lock:  # as pykka: the hook runs once, under the lock
                return Future.get(self, timeout=timeout)
        result = self._result
        if result is None:
            if timeout is not None and timeout <= 0:
                raise Timeout(f"{timeout} seconds")
            with blocking_section("future.get()"):
                result = self._wait(timeout)
        if result.exc_info is not None:
            (exc_type, exc_value, exc_traceback) = result.exc_info
            assert exc_type is not None
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not exc_traceback:
                raise exc_value.with_traceback(exc_traceback)
            raise exc_value
        return result.value

    def _wait(self, timeout: float | None) -> ThreadingFutureResult:
        with self._lock:
            result = self._result
            if result is not None:
                return result
            waiter = _allocate_lock()
            waiter.acquire()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
        # Released by set()/set_exception(); a hook set meanwhile does not
        # release it (pykka's waiter would wait on for the value, too).
        waiter.acquire(True, -1 if timeout is None else timeout)
        result = self._result
        if result is None:
            with self._lock:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)
                result = self._result
            if result is None:
                raise Timeout(f"{timeout} seconds")
        return result

    def set(self, value: Any | None = None) -> None:
        self._complete(ThreadingFutureResult(value=value))

    def set_exception(self, exc_info: Any = None) -> None:
        assert exc_info is None or len(exc_info) == 3
        if exc_info is None:
            exc_info = sys.exc_info()
        self._complete(ThreadingFutureResult(exc_info=exc_info))

    def _complete(self, result: ThreadingFutureResult) -> None:
        with self._lock:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            self._result = result
            waiters, self._waiters = self._waiters, None
            callbacks, self._callbacks = self._callbacks, None
        for waiter in waiters or ():
            waiter.release()
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:  # noqa: BLE001
                log.exception("future callback failed")

    def set_get_hook(self, func: Any) -> None:
        with self._lock:
            if self._result is not None:
                raise queue.Full
            Future.set_get_hook(self, func)

    def add_done_callback(self, fn: Callable[[PooledFuture[T]], None]) -> None:
        with self._lock:
            if self._result is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def then(self, fn: Callable[[Any], Any]) -> PooledFuture[Any]:
        """A future set to ``fn(value)`` once this one is set (or to this
        one's exception, or to what ``fn`` raised), without anyone
        blocking: ``fn`` runs on the thread that sets this future."""
        out: PooledFuture[Any] = PooledFuture()

        def done(f: PooledFuture[T]) -> None:
            try:
                value = fn(f.get(timeout=0))
            except BaseException:  # noqa: BLE001 - the exception is the outcome
                out.set_exception()
            else:
                out.set(value)

        self.add_done_callback(done)
        return out

    def __await__(self) -> Generator[Any, None, T]:
        if self._get_hook is not None:
            # A derived future (map/filter/join): its value only exists by
            # calling get(); do that off the loop.
            loop = asyncio.get_running_loop()
            return (yield from loop.run_in_executor(None, self.get).__await__())
        if self._result is None:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            loop_thread = get_ident()

            def wake(_f: PooledFuture[T]) -> None:
                if get_ident() == loop_thread:
                    # Set on the awaiting loop's own thread (a reply read by
                    # the node's loop, for a coroutine on that loop): no
                    # hand-over, no wake-up of the loop's selector.
                    _set_if_pending(waiter)
                else:
                    loop.call_soon_threadsafe(_set_if_pending, waiter)

            self.add_done_callback(wake)
            yield from waiter.__await__()
        return self.get(timeout=0)

    __iter__ = __await__  # type: ignore[assignment]


def all_done(futures: list[PooledFuture[Any]]) -> PooledFuture[None]:
    """A future set (to None) once every one of ``futures`` is done, set or
    failed; at once if there are none."""
    out: PooledFuture[None] = PooledFuture()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_f: PooledFuture[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            out.set(None)

    if not futures:
        out.set(None)
    for future in futures:
        future.add_done_callback(one_done)
    return out


def _set_if_pending(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# --------------------------------------------------------------------------
# Stop flag: a threading.Event that costs 56 bytes until someone waits on it


_flag_lock = threading.Lock()


class StopFlag:
    """The ``actor_stopped`` event, without a Condition per actor.

    ``is_set``/``set`` are what the runtime uses; ``wait`` (used by some
    callers) allocates a real Event only while someone waits.
    """

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[threading.Event] | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        with _flag_lock:
            self._is_set = True
            waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            w.set()

    def clear(self) -> None:
        with _flag_lock:
            self._is_set = False

    def wait(self, timeout: float | None = None) -> bool:
        with _flag_lock:
            if self._is_set:
                return True
            ev = threading.Event()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(ev)
        try:
            section = blocking_section("StopFlag.wait()")
        except BlockingOnLoop:
            with _flag_lock:
                if self._waiters is not None and ev in self._waiters:
                    self._waiters.remove(ev)
            raise
        with section:
            got = ev.wait(timeout)
        if not got:
            with _flag_lock:
                if self._waiters is not None and ev in self._waiters:
                    self._waiters.remove(ev)
        return got or self._is_set


# --------------------------------------------------------------------------
# Mailbox


class _Deferred:
    """What a handler run "returns" for a message it put back in its
    mailbox (:meth:`Mailbox.defer`): nobody is answered now."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED = _Deferred()


class _SliceEnd(Exception):  # noqa: N818 - a control signal, not an error
    """Raised by ``Mailbox.get`` to end the current slice."""




class Mailbox:
    """A bounded FIFO that schedules its actor on the dispatcher.

    ``put`` never blocks: past ``capacity`` it raises :class:`MailboxFull`.
    After the actor stopped (``close``), a put answers an ask with
    ``ActorDeadError`` and passes a tell to the actor's dead-letter hook.
    """

    __slots__ = ("_actor", "_budget", "_capacity", "_closed", "_dispatcher", "_held", "_lock", "_loop", "_q",
                 "_scheduled", "_suspended", "_suspended_parked")

    def __init__(self, actor: PooledActor, dispatcher: Dispatcher, capacity: int | None) -> None:
        self._actor = actor
        self._dispatcher = dispatcher
        # Slices run on one loop thread: that thread may put without the lock.
        self._loop = dispatcher if isinstance(dispatcher, LoopDispatcher) else None
        self._capacity = capacity
        self._q: deque[Envelope[Any]] | None = None
        self._scheduled = False
        self._held = False
        self._closed = False
        self._budget = 0
        self._lock = threading.Lock()
        self._suspended = False  # a handler put its message back: run nothing until resume()
        self._suspended_parked = False  # ... and the slice that did it has ended

    def __len__(self) -> int:
        q = self._q
        return len(q) if q is not None else 0

    @property
    def capacity(self) -> int | None:
        return self._capacity

    def put(self, envelope: Envelope[Any], /) -> None:
        if (self._suspended or self._actor._handler_task is not None) and type(envelope.message) is _ActorStop:
            if self._actor._handler_task is not None:
                self._actor._cancel_handler()  # an async handler under way gives way to the stop
            if self._suspended:
                with self._lock:
                    q = self._q
                    assert q is not None  # a suspended mailbox holds its deferred message
                    q.append(envelope)
                self.resume()  # a stop is never kept waiting (see defer)
                return
        # Fast path without the lock: deque.append is atomic, and the actor
        # is already scheduled. The slice that parks the actor clears
        # ``_scheduled`` *before* it looks at the queue again (``release``),
        # so a message appended while ``_scheduled`` read True is always seen.
        q = self._q
        if q is not None and self._scheduled and not self._closed:
            if self._capacity is not None and len(q) >= self._capacity:
                raise MailboxFull(self._actor._address_or_urn(), f"mailbox holds {len(q)} messages")
            q.append(envelope)
            if self._closed:
                # The actor stopped between our check and the append; its
                # drain may already be over, so refuse what is left here.
                self.drain_refused()
                return
            if self._scheduled:
                return
            self._schedule_if_parked()
            return
        loop = self._loop
        if q is not None and loop is not None and get_ident() == loop._loop_thread and not self._closed:
            # An idle actor, on the thread that runs its slices (each message
            # of a read for an actor that had none waiting): no lock. That
            # thread alone closes the mailbox and parks the actor, so neither
            # can happen under us; a put from another thread at the same
            # moment may also see the actor idle and submit it too, which on
            # a loop dispatcher only runs one more (sequential) slice.
            if self._capacity is not None and len(q) >= self._capacity:
                raise MailboxFull(self._actor._address_or_urn(), f"mailbox holds {len(q)} messages")
            q.append(envelope)
            if not self._scheduled:
                self._scheduled = True
                loop.submit(self._actor)
            return
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                q = self._q
                if q is None:
                    q = self._q = deque()
                elif self._capacity is not None and len(q) >= self._capacity:
                    raise MailboxFull(self._actor._address_or_urn(), f"mailbox holds {len(q)} messages")
                q.append(envelope)
                if self._scheduled:
                    return
                self._scheduled = True
        if closed:
            self._refuse(envelope)
            return
        self._dispatcher.submit(self._actor)

    # -- a handler that must wait (see :meth:`defer`) ----------------------

    def defer(self, envelope: Envelope[Any]) -> bool:
        """From the actor's own slice: put ``envelope`` (the message being
        handled) back at the head of the queue and run nothing more until
        :meth:`resume`. The handler then returns :data:`DEFERRED` (nobody
        is answered). False, and nothing done, if a stop is queued: an actor
        on its way out does not wait."""
        with self._lock:
            q = self._q
            if self._closed or (q and any(type(e.message) is _ActorStop for e in q)):
                return False
            if q is None:
                q = self._q = deque()
            q.appendleft(envelope)
            self._suspended = True
            self._budget = 0
        return True

    def resume(self) -> None:
        """The wait is over (any thread): the deferred message is handled
        next, then the rest in order."""
        with self._lock:
            if not self._suspended:
                return
            self._suspended = False
            if not self._suspended_parked:
                return  # the slice that deferred has not ended: its release() goes on as usual
            self._suspended_parked = False
        self._dispatcher.submit(self._actor)  # still marked scheduled since the deferral

    def _schedule_if_parked(self) -> None:
        with self._lock:
            if self._scheduled or self._closed or not self._q:
                return
            self._scheduled = True
        self._dispatcher.submit(self._actor)

    def _refuse(self, envelope: Envelope[Any]) -> None:
        if envelope.reply_to is not None:
            from pykka import messages

            if isinstance(envelope.message, messages._ActorStop):  # noqa: SLF001
                envelope.reply_to.set(None)
            else:
                envelope.reply_to.set_exception(
                    exc_info=(ActorDeadError, ActorDeadError(f"{self._actor} stopped before handling the message"), None)
                )
        else:
            self._actor._on_dead_letter(envelope.message)

    def drain_refused(self) -> None:
        """Refuse every queued message (after ``close``): asks get
        ``ActorDeadError``, tells go to the dead-letter hook."""
        q = self._q
        while q:
            try:
                envelope = q.popleft()
            except IndexError:  # another thread drained the last one
                break
            try:
                self._refuse(envelope)
            except Exception:  # keep draining: the exit must still be reported
                log.exception("refusing a message to stopped %s failed", self._actor)

    def get(self) -> Envelope[Any]:
        q = self._q
        if not q or self._budget <= 0:
            # A fresh instance each time: a shared one would keep growing
            # its __traceback__ (and the frames in it) with every raise.
            raise _SliceEnd
        self._budget -= 1
        return q.popleft()

    def empty(self) -> bool:
        q = self._q
        return not q

    # -- scheduling, called by the actor's slice -------------------------

    def hold(self) -> None:
        """Accept messages but run nothing until :meth:`kick` (lets the node
        finish registering an actor before its first slice)."""
        with self._lock:
            self._scheduled = True
            self._held = True

    def kick(self) -> None:
        """Schedule the actor once (used to run ``on_start``)."""
        with self._lock:
            if self._held:
                self._held = False
            elif self._scheduled or self._closed:
                return
            self._scheduled = True
        self._dispatcher.submit(self._actor)

    def release(self) -> None:
        """End of a slice: park the actor, or re-queue it if messages wait."""
        if self._suspended:
            with self._lock:
                if self._suspended:
                    # Stays marked scheduled (a put only queues); resume() submits it.
                    self._suspended_parked = True
                    return
        if self._q and not self._closed:
            self._dispatcher.submit(self._actor)  # still scheduled: keep going
            return
        # One store, no lock needed: a put either read ``_scheduled`` before
        # it, as True, after appending (then we see its message just below),
        # or after it, as False (then it schedules the actor itself, under
        # the lock, and _schedule_if_parked below finds it scheduled).
        self._scheduled = False
        if self._q:
            self._schedule_if_parked()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._budget = 1 << 62  # teardown drains everything


# --------------------------------------------------------------------------
# The actor


def _fast_uuid4_urn() -> str:
    # uuid4() reads os.urandom (a syscall per actor); a URN only needs to be
    # unique, and random is re-seeded in forked children by CPython.
    return uuid.UUID(int=random.getrandbits(128), version=4).urn


ExitHook = Callable[["PooledActor", "BaseException | None"], None]


class PooledActor(_PykkaActor):
    """A pykka actor that runs on the shared dispatcher instead of a thread.

    Class settings:
        ``mailbox_capacity``: bound of the mailbox (``None``: unbounded).
        ``dispatcher``: a :class:`Dispatcher`, or ``None`` for the default.
    """

    mailbox_capacity: ClassVar[int | None] = None
    dispatcher: ClassVar[Dispatcher | None] = None

    # Per-instance, but declared here so idle actors carry no dict entry.
    _exit_hook: ExitHook | None = None
    _exit_after: PooledFuture[Any] | None = None
    _crash: BaseException | None = None
    _started: bool = False
    _exited: bool = False
    #: The task of an async handler under way: the actor takes no other
    #: message until it is done (mailbox order holds across its awaits).
    _handler_task: asyncio.Task[None] | None = None

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        # Same fields as pykka's Actor.__init__, with a light stop flag and a
        # cheaper URN; ActorRef reads them exactly as it does for pykka.
        self.actor_urn = _fast_uuid4_urn()
        self.actor_inbox = self._create_actor_inbox_for(self)
        self.actor_stopped = StopFlag()  # type: ignore[assignment]
        self._actor_ref = ActorRef(self)

    # pykka's hook is a staticmethod without access to the actor; ours needs
    # the actor to schedule it, so __init__ calls this one instead.
    @classmethod
    def _create_actor_inbox_for(cls, actor: PooledActor) -> Mailbox:
        return Mailbox(actor, cls.dispatcher or default_dispatcher(), cls.mailbox_capacity)

    @staticmethod
    def _create_actor_inbox() -> Any:  # pragma: no cover - see __init__
        msg = "PooledActor mailboxes are created per actor in __init__"
        raise NotImplementedError(msg)

    @staticmethod
    def _create_future() -> Future[Any]:
        return PooledFuture()

    def _start_actor_loop(self) -> None:
        self.actor_inbox.kick()  # type: ignore[attr-defined]

    #: Message types handed straight to ``on_receive``: pykka's
    #: ``_handle_receive`` first tests every message against its own kinds
    #: (stop, proxy calls), which these never are.
    _direct_types: ClassVar[tuple[type, ...]] = ()

    # -- the slice ---------------------------------------------------------

    def _actor_loop_running(self) -> None:
        """pykka's receive loop (``Actor._actor_loop_running``), for one
        slice: each message is handled, answered and its failure reported
        exactly as pykka does, but the loop ends when the mailbox is empty
        or the slice's budget is spent, by returning (an exception raised
        from ``get()`` to end a slice costs about a microsecond, on every
        slice)."""
        mailbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        stopped = self.actor_stopped
        direct = self._direct_types
        while not stopped.is_set():
            q = mailbox._q
            if not q or mailbox._budget <= 0:
                return
            mailbox._budget -= 1
            envelope = q.popleft()
            try:
                message = envelope.message
                if type(message) in direct:
                    response = self.on_receive(message)
                else:
                    response = self._handle_receive(message)
                if type(response) is CoroutineType:
                    self._await_handler(response, envelope)
                    return  # the rest waits for it: see _finish_handler
                if response is DEFERRED:
                    return  # put back by Mailbox.defer: handled (and answered) after resume()
                if envelope.reply_to is not None:
                    envelope.reply_to.set(response)
            except Exception:
                self._handler_failed(envelope)
            except BaseException:  # noqa: BLE001
                exception_value = sys.exc_info()[1]
                _pykka_log.debug(f"{exception_value!r} in {self}. Stopping all actors.")
                self._stop()
                ActorRegistry.stop_all()

    def _handler_failed(self, envelope: Envelope[Any]) -> None:
        """The handler of ``envelope`` raised (call inside the ``except``):
        an ask gets the error, as pykka answers it; a tell's failure is the
        actor's crash (``on_failure``, then it stops)."""
        if envelope.reply_to is not None:
            _pykka_log.info(f"Exception returned from {self} to caller:", exc_info=sys.exc_info())
            envelope.reply_to.set_exception()
            return
        self._handle_failure(*sys.exc_info())
        try:
            self.on_failure(*sys.exc_info())
        except Exception:  # noqa: BLE001
            self._handle_failure(*sys.exc_info())

    def _run_slice(self) -> None:
        mailbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        if not self._started:
            self._started = True
            self._actor_loop_setup()
        if not self.actor_stopped.is_set():
            mailbox._budget = SLICE_BUDGET
            try:
                self._actor_loop_running()
            except _SliceEnd:
                pass
            if self._handler_task is not None:
                return  # still scheduled: its task releases the mailbox when done
        if self.actor_stopped.is_set():
            self._finish()
            return
        mailbox.release()

    # -- async handlers ------------------------------------------------------

    def _await_handler(self, coroutine: Coroutine[Any, Any, Any], envelope: Envelope[Any]) -> None:
        """A handler returned a coroutine (``async def``): run it as a task
        on the loop that runs this slice. Only an actor on a loop dispatcher
        may: on a pool thread there is no loop to await on."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coroutine.close()
            raise TypeError(f"{self}: an async handler needs an actor on a node's loop "
                            "(this one runs on a thread pool: make the handler plain, or the actor not blocking)"
                            ) from None
        self._handler_task = loop.create_task(self._finish_handler(coroutine, envelope))

    async def _finish_handler(self, coroutine: Coroutine[Any, Any, Any], envelope: Envelope[Any]) -> None:
        """Await the handler, then answer or fail exactly as the slice does
        for a plain one; then let the actor take its next message (or
        finish, if the handler's failure stopped it)."""
        try:
            try:
                response = await coroutine
            except asyncio.CancelledError:
                # Stopped meanwhile (see Mailbox.put): an ask is refused as
                # a message queued behind a stop would be.
                if envelope.reply_to is not None:
                    envelope.reply_to.set_exception(exc_info=(
                        ActorDeadError, ActorDeadError(f"{self} stopped while handling the message"), None))
            except Exception:
                self._handler_failed(envelope)
            else:
                if envelope.reply_to is not None:
                    envelope.reply_to.set(response)
        finally:
            self._handler_task = None
            if self.actor_stopped.is_set():
                self._finish()
            else:
                self.actor_inbox.release()  # type: ignore[attr-defined]

    def _cancel_handler(self) -> None:
        """A stop arrived while an async handler is under way: cancel it
        (from any thread), so the stop is taken next."""
        task = self._handler_task
        if task is None:
            return
        loop = task.get_loop()
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)

    def _finish(self) -> None:
        if self._exited:
            return
        self._exited = True
        mailbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        mailbox.close()
        # pykka's teardown answers queued asks but drops queued tells
        # silently; refuse them all instead (tells become dead letters).
        mailbox.drain_refused()
        self._actor_loop_teardown()
        after = self._exit_after
        if after is not None and not after.done():
            after.add_done_callback(lambda _f: self._report_exit())
            return
        self._report_exit()

    def exit_after(self, future: PooledFuture[Any]) -> None:
        """Report this actor's exit (to the exit hook: its supervisor, the
        node's waiters and events) only once ``future`` is done. For an
        actor whose stop waits for something without blocking (a
        supervisor waits for its children's exits); call it from
        ``on_stop`` or before a handler raises."""
        self._exit_after = future

    def _report_exit(self) -> None:
        hook = self._exit_hook
        if hook is not None:
            try:
                hook(self, self._crash)
            except Exception:  # noqa: BLE001
                log.exception("exit hook failed for %s", self)

    def _handle_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        if self._crash is None:
            self._crash = exception_value if exception_value is not None else RuntimeError("unknown failure")
        super()._handle_failure(exception_type, exception_value, traceback)

    # -- hooks for subclasses ------------------------------------------------

    def _on_dead_letter(self, message: Any) -> None:
        """A tell arrived after this actor stopped. Huddle actors publish it."""
        log.debug("message to stopped %s dropped: %s", self, type(message).__name__)

    def _address_or_urn(self) -> str:
        return self.actor_urn


# --------------------------------------------------------------------------
# Registry sized for many actors


class _IndexedRefs:
    """A drop-in for the list behind ``pykka.ActorRegistry``.

    pykka keeps refs in a list: ``unregister`` is O(n), so stopping 100,000
    actors is O(n^2). This container keeps insertion order (a dict) and
    supports exactly the list operations ActorRegistry uses, each in O(1)
    (``[:]`` and iteration are O(n), as they must be).
    """

    __slots__ = ("_refs",)

    def __init__(self, refs: Any = ()) -> None:
        self._refs: dict[ActorRef[Any], None] = dict.fromkeys(refs)

    def append(self, ref: ActorRef[Any]) -> None:
        self._refs[ref] = None

    def remove(self, ref: ActorRef[Any]) -> None:
        del self._refs[ref]

    def __contains__(self, ref: object) -> bool:
        return ref in self._refs

    def __iter__(self) -> Iterator[ActorRef[Any]]:
        return iter(list(self._refs))

    def __reversed__(self) -> Iterator[ActorRef[Any]]:
        return reversed(list(self._refs))

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: Any) -> Any:
        return list(self._refs)[index]


def install_indexed_registry() -> None:
    """Swap pykka's registry list for the O(1) table (idempotent)."""
    with ActorRegistry._actor_refs_lock:  # noqa: SLF001
        current = ActorRegistry._actor_refs  # noqa: SLF001
        if not isinstance(current, _IndexedRefs):
            ActorRegistry._actor_refs = _IndexedRefs(current)  # type: ignore[assignment]  # noqa: SLF001


install_indexed_registry()
