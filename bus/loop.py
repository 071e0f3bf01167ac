"""An asyncio event loop on its own daemon thread.

A node process runs one of these: the node's I/O loop
(:class:`actors.runtime.io.IoLoop` builds on it) carries the Redis transport's
connections, the actors' sockets and HTTP requests, and the system clock's
timers. Something used alone (a transport for ``huddle inject``, a clock in
a test) owns one of its own.

The loop is the seam: everything that runs on it reaches it through
:attr:`LoopThread.loop`, so other code never creates a loop or a thread of
its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from bus.errors import HuddleError

__all__ = ["IoClosed", "LoopThread", "current_loop_thread", "on_loop"]

log = logging.getLogger("huddle.loop")

_this_thread = threading.local()


def current_loop_thread() -> LoopThread | None:
    """The :class:`LoopThread` whose thread the caller runs on, if any
    (nothing there may block: it would stop that loop): its own thread, or
    the thread now running a loop it adopted."""
    own = getattr(_this_thread, "loop_thread", None)
    if own is not None or not _adopted:
        return own
    running = asyncio._get_running_loop()  # noqa: SLF001 - public in asyncio.events, no raise
    return _adopted.get(id(running)) if running is not None else None


#: Loops adopted by a LoopThread (see its ``loop`` argument), by id: a
#: caller running one must not block either.
_adopted: weakref.WeakValueDictionary[int, LoopThread] = weakref.WeakValueDictionary()


class IoClosed(HuddleError):
    """The I/O loop is closed (its owner is shutting down)."""


def on_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True if the caller runs on ``loop`` (in a task or a callback of it)."""
    if loop is None:
        return False
    # A running asyncio loop records its thread; asking asyncio for the
    # running loop instead costs a getpid() system call on a loop thread
    # (its check against a fork), and this is asked for every publish.
    thread_id = getattr(loop, "_thread_id", _UNKNOWN)
    if thread_id is not _UNKNOWN:
        return thread_id == threading.get_ident()
    return asyncio._get_running_loop() is loop  # noqa: SLF001 - public in asyncio.events, no raise


_UNKNOWN = object()


class LoopThread:
    """An asyncio event loop, running on a daemon thread started on first use.

    After :meth:`close`, every task still running is cancelled, the loop is
    closed and its thread ends; asking for the loop then raises
    :class:`IoClosed`.
    """

    def __init__(self, name: str = "huddle-io", *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """``loop``: run on this loop, which somebody else runs (a
        simulated world's, see ``ops.sim``), instead of a new loop on a
        thread of its own; closing then leaves that loop alone."""
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._adopted = loop is not None
        if loop is not None:
            _adopted[id(loop)] = self
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def adopted(self) -> bool:
        """Runs on a loop somebody else runs (no thread of its own)."""
        return self._adopted

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started on first use)."""
        return self.start()._loop  # type: ignore[return-value]

    def start(self) -> LoopThread:
        with self._lock:
            if self._closed:
                raise IoClosed(f"{self._name} is closed")
            if self._loop is None:
                ready = threading.Event()
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run, args=(ready,), name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
        return self

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        _this_thread.loop_thread = self
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def on_loop_thread(self) -> bool:
        """True if the caller runs on this loop's thread."""
        if self._adopted:
            return on_loop(self._loop)
        thread = self._thread
        return thread is not None and threading.current_thread() is thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread (thread-safe); at once in
        order with the loop's other callbacks when called on it."""
        loop = self._loop
        if loop is None:
            loop = self.loop  # starts it
        if self.on_loop_thread():
            loop.call_soon(fn, *args)
        else:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError as exc:  # closed between the check and here
                raise IoClosed(f"{self._name} is closed") from exc

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything still running and stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return  # never started, or an adopted loop: its owner runs and ends it
        if threading.current_thread() is thread:
            raise HuddleError(f"{self._name}: close() called on the loop's own thread")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s did not stop within %.1fs", self._name, timeout)
