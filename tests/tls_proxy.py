"""A TLS-terminating TCP proxy for tests, in front of a real redis-server.

The bundled redis-server speaks no TLS, so tests put this in front of it: it
accepts TLS with a throwaway certificate (issued by a trustme CA), then
relays bytes both ways to the plain server. Every handshake is recorded
(the TLS version that was agreed) and so is every failed one (the reason),
so a test can wait on "a client completed / refused a handshake" instead of
sleeping. It runs its own asyncio loop on a daemon thread; :meth:`close`
ends it and every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable

__all__ = ["TlsProxy"]


class TlsProxy:
    """Listens on ``127.0.0.1:<port>`` with TLS, relays to ``target``."""

    def __init__(self, target_host: str, target_port: int, server_context: ssl.SSLContext) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.handshakes: list[str] = []
        self.failures: list[str] = []
        self._context = server_context
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                await writer.start_tls(self._context)
            except (ssl.SSLError, OSError, ConnectionError) as exc:
                self._record(self.failures, f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}")
                writer.close()
                return
            tls = writer.get_extra_info("ssl_object")
            self._record(self.handshakes, tls.version() if tls is not None else "?")
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _record(self, where: list[str], what: str) -> None:
        with self._cond:
            where.append(what)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` (about :attr:`handshakes` / :attr:`failures`) holds."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
