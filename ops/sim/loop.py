"""An asyncio event loop on virtual time, for whole-world simulation.

:class:`SimLoop` is a real asyncio loop (tasks, futures, ``call_at``,
streams, ``asyncio.timeout`` all behave as on any loop) whose clock is a
number the loop owns. It never waits: when nothing is ready, time jumps to
the next timer. Nothing it runs touches the operating system's sockets or
clock: connections go through a :class:`~ops.sim.network.SimNetwork`
(``create_connection`` and ``create_server`` are answered there).

Given the same program and the same seeds, a run is the same run: the
ready queue is first in, first out, timers due at the same instant run in
the order they were set (a sequence number breaks ties, which asyncio's own
heap does not promise), and virtual time only moves when the loop would
otherwise wait.

A loop with nothing ready and no timer is *stalled*: whatever it waits for
can never happen. :meth:`SimLoop.run_until_complete` then raises
:class:`Stalled` instead of hanging.

Hosts can be frozen (a process stopped: ``SIGSTOP``, a long pause): every
callback of a frozen host (:data:`~ops.sim.network.current_host` of the
context it was scheduled in: its tasks' steps, its timers, what arrives on
its connections) is parked when its turn comes, and runs, in order, once
the host thaws. A host frozen for good is a killed process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ops.sim.network import WORLD_HOST, current_host

if TYPE_CHECKING:
    from ops.sim.network import SimNetwork

__all__ = ["SimLoop", "Stalled"]


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: the awaited result can never come."""


class _VirtualSelector:
    """What ``BaseEventLoop._run_once`` calls to wait for I/O: here a wait
    is a jump of the loop's clock (there is no I/O to wait for)."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            self._loop._stalled = True
        elif timeout > 0:
            self._loop._advance_to(self._loop._now + timeout)
        return []

    def close(self) -> None:
        return None


class _OrderedTimer(asyncio.TimerHandle):
    """A timer that sorts by (when, the order it was set in)."""

    __slots__ = ("_seq",)

    def __init__(self, when: float, seq: int, callback: Callable[..., Any], args: tuple[Any, ...],
                 loop: asyncio.AbstractEventLoop, context: Any = None) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq = seq

    def __lt__(self, other: Any) -> bool:
        if isinstance(other, _OrderedTimer) and self._when == other._when:
            return self._seq < other._seq
        return self._when < other.when()

    def __le__(self, other: Any) -> bool:
        return self == other or self < other

    def __gt__(self, other: Any) -> bool:
        return not self <= other

    def __ge__(self, other: Any) -> bool:
        return not self < other

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


class SimLoop(asyncio.BaseEventLoop):
    """An asyncio loop whose time is virtual (seconds, starting at ``start``)."""

    def __init__(self, network: SimNetwork | None = None, *, start: float = 0.0) -> None:
        super().__init__()
        self._now = float(start)
        self._selector = _VirtualSelector(self)
        self._stalled = False
        self._timer_seq = itertools.count()
        self.network = network
        self._sock_targets: dict[int, tuple[str, int]] = {}
        self._frozen: set[str] = set()
        self._parked: dict[str, list[tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context]]] = {}

    # -- frozen hosts ------------------------------------------------------------

    def freeze(self, host: str) -> None:
        """From now on nothing of ``host`` runs (parked until :meth:`thaw`)."""
        self._frozen.add(host)

    def thaw(self, host: str) -> None:
        """``host`` runs again: what was parked goes first, in order."""
        self._frozen.discard(host)
        for callback, args, context in self._parked.pop(host, []):
            self.call_soon(callback, *args, context=context)

    def thaw_all(self) -> None:
        for host in sorted(self._frozen):
            self.thaw(host)

    def frozen(self, host: str) -> bool:
        return host in self._frozen

    def parked(self, host: str) -> int:
        return len(self._parked.get(host, ()))

    def _gate(self, host: str, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if host in self._frozen:
            self._parked.setdefault(host, []).append((callback, args, contextvars.copy_context()))
            return
        callback(*args)

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> asyncio.Handle:
        context = context if context is not None else contextvars.copy_context()
        return super().call_soon(self._gate, context.get(current_host, WORLD_HOST), callback, args,
                                 context=context)

    # -- time ------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def _advance_to(self, when: float) -> None:
        if when > self._now:
            self._now = when

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        context = context if context is not None else contextvars.copy_context()
        timer = _OrderedTimer(when, next(self._timer_seq), self._gate,
                              (context.get(current_host, WORLD_HOST), callback, args), self, context)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    # -- running ---------------------------------------------------------------

    def run_until_complete(self, future: Any) -> Any:
        """As asyncio's, but raises :class:`Stalled` if the loop runs out of
        work before ``future`` is done (the future is left pending)."""
        future = asyncio.ensure_future(future, loop=self)
        with self._running():
            while not future.done():
                self._stalled = False
                self._run_once()  # type: ignore[attr-defined]
                if self._stalled and not future.done():
                    raise Stalled(f"nothing left to run at t={self._now:.6f}s and {future!r} is not done")
        return future.result()

    def run_for(self, seconds: float) -> None:
        """Run everything due in the next ``seconds`` of virtual time,
        then what became ready at that instant (an idle loop just moves
        its clock)."""
        reached = False

        def mark() -> None:
            nonlocal reached
            reached = True

        self.call_at(self._now + seconds, mark)
        with self._running():
            while not reached:
                self._run_once()  # type: ignore[attr-defined]
            while self._ready:  # type: ignore[attr-defined]
                self._run_once()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """What ``run_forever`` sets up around its turns: this loop is the
        running loop of this thread while it runs."""
        if self.is_running():
            raise RuntimeError("this simulated loop is already running")
        previous = asyncio.events._get_running_loop()
        self._thread_id = threading.get_ident()  # type: ignore[attr-defined]
        asyncio.events._set_running_loop(self)
        try:
            yield
        finally:
            self._thread_id = None  # type: ignore[attr-defined]
            asyncio.events._set_running_loop(previous)

    # -- what BaseEventLoop leaves to a subclass -----------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        return None

    def _write_to_self(self) -> None:
        return None  # one thread: nothing sleeps in select to be woken

    # -- connections: answered by the simulated network ----------------------------

    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None = None,
                                port: int | None = None, *, sock: Any = None,
                                **_options: Any) -> tuple[asyncio.Transport, Any]:
        if self.network is None:
            raise ConnectionRefusedError("this simulated loop has no network")
        if sock is not None:  # "connected" by sock_connect (aiohttp's happy eyeballs): the address it was given
            host, port = self._sock_targets.pop(sock.fileno())
            sock.close()  # an operating-system socket that never connected anywhere
        return await self.network.connect(self, protocol_factory, host or "", int(port or 0))

    async def sock_connect(self, sock: Any, address: Any) -> None:
        """Remember where ``sock`` is to connect; ``create_connection(sock=...)``
        then opens a simulated connection there."""
        self._sock_targets[sock.fileno()] = (str(address[0]), int(address[1]))

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: Any = None,
                            port: int | None = None, **_options: Any) -> Any:
        if self.network is None:
            raise OSError("this simulated loop has no network")
        return self.network.listen(self, protocol_factory, str(host or ""), int(port or 0))

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0,
                          flags: int = 0) -> list[Any]:
        import socket

        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, port))]
