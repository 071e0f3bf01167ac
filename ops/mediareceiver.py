"""A reference media endpoint for ``WebSocketMedia`` sinks: it records.

It accepts any number of WebSocket connections, each one output's stream
(the wire is described in :mod:`actors.sessions.audio.sinks`), and records for each
the ``start`` message, every frame ``(segment, seq, pcm, arrival time)`` and
the control messages (``clear``, ``stop``). Malformed messages are counted
per stream, never fatal.

Run it::

    python -m ops.mediareceiver --port 8765 --out recordings/

Each stream is written, when it ends, to ``<out>/<n>-<output>.wav``.
Tests use :class:`ReceiverHarness`: the server on its own thread and event
loop, over real sockets, with waits on explicit conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from actors.sessions.audio.sinks import unpack_media_frame

__all__ = ["MediaReceiver", "ReceivedStream", "ReceiverHarness", "main"]

log = logging.getLogger("huddle.mediareceiver")


@dataclass
class ReceivedStream:
    """What one connection delivered, in order."""

    number: int
    start: dict[str, Any] | None = None
    frames: list[tuple[str, int, bytes, float]] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    malformed: int = 0
    ended: bool = False

    @property
    def output(self) -> str:
        return str((self.start or {}).get("output", ""))

    def pcm(self) -> bytes:
        return b"".join(f[2] for f in self.frames)

    def write_wav(self, path: Path) -> None:
        start = self.start or {}
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(int(start.get("channels", 1)))
            wav.setsampwidth(2)
            wav.setframerate(int(start.get("sample_rate", 48_000)))
            wav.writeframes(self.pcm())


class MediaReceiver:
    """The server's behaviour; ``on_change`` is called after every update
    (on the server's loop)."""

    def __init__(self, on_change: Callable[[], None] | None = None, out_dir: Path | None = None) -> None:
        self.streams: list[ReceivedStream] = []
        self._on_change = on_change
        self._out_dir = out_dir

    async def handle(self, ws: ServerConnection) -> None:
        stream = ReceivedStream(number=len(self.streams) + 1)
        self.streams.append(stream)
        try:
            async for message in ws:
                self._take(stream, message)
                self._changed()
        except ConnectionClosed:
            pass
        finally:
            stream.ended = True
            if self._out_dir is not None and stream.start is not None:
                name = stream.output.replace(":", "_").replace("/", "_") or "stream"
                stream.write_wav(self._out_dir / f"{stream.number}-{name}.wav")
            self._changed()

    def _take(self, stream: ReceivedStream, message: str | bytes) -> None:
        if isinstance(message, bytes):
            try:
                segment, seq, pcm = unpack_media_frame(message)
            except (ValueError, UnicodeDecodeError):
                stream.malformed += 1
                return
            stream.frames.append((segment, seq, pcm, time.monotonic()))
            return
        try:
            control = json.loads(message)
            kind = control["type"]
        except (ValueError, KeyError, TypeError):
            stream.malformed += 1
            return
        if kind == "start" and stream.start is None:
            stream.start = control
        else:
            stream.controls.append(str(kind))

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


class ReceiverHarness:
    """A :class:`MediaReceiver` on 127.0.0.1 (a free port), on its own thread.

    ``with ReceiverHarness() as rx: ... rx.url ... rx.wait_for(lambda s: ...)``.
    The server and its thread end on exit, pass or fail.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.receiver = MediaReceiver(on_change=self._notify)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="media-receiver", daemon=True)
        self._server: Server | None = None
        self.port = 0

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _start(self) -> Server:
        return await serve(self.receiver.handle, "127.0.0.1", 0, max_size=2**20)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None

            async def stop() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media"

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def streams(self) -> list[ReceivedStream]:
        return list(self.receiver.streams)

    def wait_for(self, predicate: Callable[[list[ReceivedStream]], bool], timeout: float = 10.0) -> list[ReceivedStream]:
        """The streams once ``predicate(streams)`` holds; ``AssertionError``
        after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.streams()), timeout):
                seen = [(s.output, len(s.frames), s.controls, s.ended) for s in self.streams()]
                raise AssertionError(f"media receiver: condition not met within {timeout:g}s; streams: {seen}")
        return self.streams()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.mediareceiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, help="write each finished stream to a WAV file here")
    args = parser.parse_args(argv)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    receiver = MediaReceiver(out_dir=args.out)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serve(receiver.handle, args.host, args.port, max_size=2**20) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"media receiver on ws://{args.host}:{port}/ (Ctrl-C to stop)", flush=True)
            await stop.wait()
        for s in receiver.streams:
            print(f"stream {s.number} {s.output}: {len(s.frames)} frames, controls {s.controls}")

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
