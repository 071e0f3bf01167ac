"""A scripted :class:`~actors.token.http.TokenEndpoint` for shell tests.

Each fetch takes the next scripted answer (a token, or a
:class:`~actors.token.http.TokenFetchError` to raise) at the moment it is
called, and records the URL and headers. While ``hold()`` is on, fetches
wait (on the node's I/O loop) until ``release()``: how a test keeps a fetch
in flight on purpose.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Mapping

from actors.token.http import TokenEndpointUnreachable, TokenFetchError

DEADLINE = 10.0


class ScriptedEndpoint:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self._script: deque[str | TokenFetchError] = deque()
        self._cond = threading.Condition()
        self._holding = False
        self._gates: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def answer(self, *results: str | TokenFetchError) -> None:
        with self._cond:
            self._script.extend(results)

    def hold(self) -> None:
        with self._cond:
            self._holding = True

    def release(self) -> None:
        """Let every held fetch finish (and later ones run at once)."""
        with self._cond:
            self._holding = False
            gates, self._gates = self._gates, []
        for loop, gate in gates:
            loop.call_soon_threadsafe(gate.set)

    def wait_calls(self, n: int, timeout: float = DEADLINE) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= n, timeout):
                raise AssertionError(f"expected {n} fetches, saw {len(self.calls)}")

    async def fetch(self, url: str, headers: Mapping[str, str]) -> str:
        gate = None
        with self._cond:
            self.calls.append((url, dict(headers)))
            result: str | TokenFetchError = (
                self._script.popleft() if self._script else TokenEndpointUnreachable("nothing scripted"))
            if self._holding:
                gate = asyncio.Event()
                self._gates.append((asyncio.get_running_loop(), gate))
            self._cond.notify_all()
        if gate is not None:
            await gate.wait()
        if isinstance(result, TokenFetchError):
            raise result
        return result
