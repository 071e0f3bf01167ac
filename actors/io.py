"""One asyncio loop per node, for the I/O that actors ask for.

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

After :meth:`close`, every task still running is cancelled and the loop's
thread ends; a late ``submit`` raises :class:`IoClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bus.errors import HuddleError

__all__ = ["IoClosed", "IoLoop", "Outcome"]

log = logging.getLogger("huddle.io")

T = TypeVar("T")


class IoClosed(HuddleError):
    """The node's I/O loop is closed (the node is shutting down)."""


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What a finished I/O request produced: a value or an exception."""

    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class IoLoop:
    """An asyncio event loop on its own daemon thread."""

    def __init__(self, name: str = "huddle-io") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started on first use)."""
        return self.start()._loop  # type: ignore[return-value]

    def start(self) -> IoLoop:
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

    def submit(self, coro: Coroutine[Any, Any, T], *, tracked: bool = True) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; thread-safe. ``tracked`` work counts
        towards :meth:`wait_idle` until it finishes."""
        try:
            loop = self.loop
        except IoClosed:
            coro.close()
            raise
        with self._lock:
            if self._closed:
                coro.close()
                raise IoClosed(f"{self._name} is closed")
            if tracked:
                self._inflight += 1
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:  # loop stopped between the check and here
            coro.close()
            if tracked:
                self._done(None)
            raise IoClosed(f"{self._name} is closed") from exc
        if tracked:
            future.add_done_callback(self._done)
        return future

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread (thread-safe)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def _done(self, _future: object) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no tracked request is in flight (within ``timeout``)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything still running and stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s did not stop within %.1fs", self._name, timeout)
