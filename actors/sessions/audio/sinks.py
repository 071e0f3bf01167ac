"""Where an audio output's frames go: the sink seam and the real sinks.

An :class:`AudioSink` is owned by one output. The output's handler calls it
(``write``, ``clear``), so it must never block: the sinks here hand the work
to the node's asyncio loop (``node.io``) and return at once. A sink that
breaks calls ``on_failure`` (from any thread); the output then reports its
live segments as interrupted and crashes, so its supervisor restarts it with
a fresh sink.

Pacing. A :class:`PacedSink` is a real-time device in front of a
:class:`FrameDestination`: it holds the frames it was given and delivers
each one when its slot starts (``SinkFrame.play_at``, on the node's clock),
called back by the loop's :class:`Pacer` (one timer per 0.5 ms slot for
all the sinks on the loop, not one per frame); ``clear`` drops every frame
not delivered yet. An output on the node's loop writes to its sink
directly; from another thread the write is posted to the loop
(:class:`LoopPost`). Pacing runs on the loop, not on node timers. ``huddle
bench audio`` runs the same 200-output pipeline both ways
(the alternative delivers each frame from a node-clock timer on the
clock's thread): the loop had the lower median lateness in every run, while
p99 and underruns went either way on a busy shared 2-core machine. The
loop is kept because the socket destinations must send from it anyway (a
timer-thread delivery would hop to the loop once more), and the clock's
one thread stays free for the node's ask deadlines and actor timers. The
playout core stays clock-free: it only stamps each frame with its slot.

Destinations: :class:`WavFile` (a WAV file), :class:`RawPcm` (a raw s16le
stream: a file or any binary writer that does not block), and
:class:`WebSocketMedia` (frames over a WebSocket to a media endpoint; see
``ops/mediareceiver.py`` for the reference receiver). The wire of the media
socket: a text message ``{"type": "start", "output", "encoding":
"pcm_s16le", "sample_rate", "channels", "frame_ms"}`` first, then one binary
message per frame, :func:`pack_media_frame` (``>BHI`` = version 1, segment
length, seq; the segment id in UTF-8; the PCM), a text ``{"type": "clear"}``
when the output drops what it had queued, and ``{"type": "stop"}`` last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import wave
from collections import deque
from collections.abc import Callable, Sequence
from math import ceil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol
from urllib.parse import urlsplit

from actors.sessions.audio.machine import OutputConfig, SinkFrame
from actors.runtime.clock import Clock, SystemClock
from actors.runtime.io import IoClosed, IoLoop

__all__ = [
    "AudioSink",
    "FrameDestination",
    "LoopPost",
    "PacedSink",
    "Pacer",
    "RawPcm",
    "SinkContext",
    "SinkFactory",
    "WavFile",
    "WebSocketMedia",
    "failure_reason",
    "paced",
    "pack_media_frame",
    "unpack_media_frame",
]

log = logging.getLogger("huddle.audio.sinks")

#: Lateness of a delivered frame, in seconds after its slot started.
ReleaseObserver = Callable[[SinkFrame, float], None]


@dataclass(frozen=True)
class SinkContext:
    """What a sink gets from the output that owns it."""

    address: str
    config: OutputConfig
    io: IoLoop
    clock: Clock
    #: Call (from any thread) when the sink can no longer play.
    on_failure: Callable[[BaseException], None]


class AudioSink(Protocol):
    """One output's real-time device. Every method returns at once."""

    def open(self) -> None:
        """Start (connect, create the file); frames may be written before
        it is done."""

    def write(self, frames: Sequence[SinkFrame]) -> None:
        """Queue ``frames``, each to be played in its slot."""

    def clear(self) -> None:
        """Drop every queued frame that has not started to play."""

    def close(self) -> None:
        """Stop; queued frames are dropped, what was played is kept."""


SinkFactory = Callable[[SinkContext], AudioSink]


class FrameDestination(Protocol):
    """What a paced frame is delivered to. Runs on the I/O loop's thread."""

    async def open(self, ctx: SinkContext) -> None: ...

    def deliver(self, frame: SinkFrame) -> None:
        """Take one frame now; must not block the loop."""

    def cleared(self) -> None:
        """The output dropped what it had queued (an interruption)."""

    async def close(self) -> None: ...


def failure_reason(error: BaseException) -> str:
    """A sink failure as it may be published: the error type and, for an
    OS error, its text; never a URL or a payload (they may hold secrets)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return type(error).__name__


class LoopPost:
    """Work for one I/O loop from other threads, without a wakeup per item.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call: a
    system call that drops and retakes the GIL, which under load costs the
    calling actor thread up to a switch interval each time. Hundreds of
    sinks on a node posting 50 times a second each would spend much of
    their time there. So they share one queue per loop: the first post
    after a quiet spell wakes the loop; while posts keep coming the loop
    drains the queue every :attr:`POLL` seconds by itself, and goes quiet
    again after a drain that found nothing. Work waits at most ``POLL``
    (frames are written ahead of their slots; only a segment's first frame
    or a replay can be that much late).
    """

    POLL: ClassVar[float] = 0.001
    _by_loop: ClassVar[dict[int, LoopPost]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, io: IoLoop) -> None:
        self._io = io
        self._work: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._active = False

    @classmethod
    def of(cls, io: IoLoop) -> LoopPost:
        with cls._lock:
            post = cls._by_loop.get(id(io))
            if post is None or post._io is not io:
                post = cls._by_loop[id(io)] = cls(io)
            return post

    def run(self, fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args)`` now if called on the loop with nothing posted ahead
        of it (an output on the node's loop dispatcher: no hop at all), else
        :meth:`post` it, so work keeps its order."""
        if not self._work and self._io.on_loop_thread():
            fn(*args)
        else:
            self.post(fn, *args)

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        self._work.append((fn, args))
        if not self._active:
            self._active = True
            try:
                self._io.call_soon(self._drain)
            except BaseException:
                self._active = False
                raise

    def _drain(self) -> None:
        work = self._work
        if not work:
            self._active = False
            # A post that saw ``_active`` still set did not wake us: look again.
            if not work:
                return
            self._active = True
        while work:
            fn, args = work.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("sink work failed on the I/O loop")
        asyncio.get_running_loop().call_later(self.POLL, self._drain)


class Pacer:
    """The frame clock of one I/O loop, shared by every paced sink on it.

    A sink asks to be called back at a loop time; the pacer rounds that up
    to its :attr:`GRANULARITY` and keeps one loop timer per slot of that
    grid, however many sinks are due in it. Hundreds of outputs whose frame
    slots are spread over 20 ms then cost the loop 2,000 wakeups a second
    instead of one timer (and one wakeup) per frame of each output, for at
    most :attr:`GRANULARITY` of added lateness (below what a loop busy with
    sockets adds anyway). A callback is not cancelled: the sink checks, when
    called, whether the call is for the slot it armed last.
    """

    GRANULARITY: ClassVar[float] = 0.0005
    _by_loop: ClassVar[dict[int, Pacer]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, list[PacedSink]] = {}

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Pacer:
        with cls._lock:
            pacer = cls._by_loop.get(id(loop))
            if pacer is None or pacer._loop is not loop:
                pacer = cls._by_loop[id(loop)] = cls(loop)
            return pacer

    def arm(self, when: float, sink: PacedSink) -> int:
        """Call ``sink._on_slot(slot)`` on the loop at the first grid slot
        at or after ``when`` (loop time); returns that slot. Only on the
        loop's thread. Nothing is allocated per call but the slot's list."""
        slot = ceil(when / self.GRANULARITY)
        due = self._due.get(slot)
        if due is None:
            self._due[slot] = [sink]
            self._loop.call_at(slot * self.GRANULARITY, self._fire, slot)
        else:
            due.append(sink)
        return slot

    def _fire(self, slot: int) -> None:
        for sink in self._due.pop(slot, ()):
            try:
                sink._on_slot(slot)
            except Exception:
                log.exception("a paced release failed on the I/O loop")


def _same_time_base(clock: Clock, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``clock.now()`` and ``loop.time()`` read the same monotonic
    seconds (a node's system clock on a standard asyncio loop): then a
    frame's slot converts to loop time with no clock reading."""
    return type(clock) is SystemClock and getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time


class PacedSink:
    """Delivers frames to a destination in real time, on the node's loop.

    Every piece of state is touched only on the loop's thread; the public
    methods only schedule work there.
    """

    def __init__(self, destination: FrameDestination, ctx: SinkContext,
                 on_release: ReleaseObserver | None = None) -> None:
        self.destination = destination
        self._ctx = ctx
        # The destination reports its own failures (a socket the remote
        # closed) through here, on the loop, so the output hears once.
        self._destination_ctx = replace(ctx, on_failure=self._fail)
        self._post = LoopPost.of(ctx.io)
        self._loop = ctx.io.loop
        self._pacer = Pacer.of(self._loop)
        self._on_release = on_release
        self._pending: deque[SinkFrame] = deque()
        #: The pacer's slot this sink waits for (None: none); a call for
        #: another slot (armed before a clear) is ignored.
        self._slot: int | None = None
        #: Loop time minus node-clock time, when the node clock is the
        #: loop's own monotonic time (None: read both at each frame).
        self._offset: float | None = 0.0 if _same_time_base(ctx.clock, self._loop) else None
        self._opened = False
        self._failed = False
        self._closed = False
        self.delivered = 0

    # -- called by the output (any thread) -----------------------------------

    def open(self) -> None:
        self._ctx.io.submit(self._open(), tracked=False)

    def write(self, frames: Sequence[SinkFrame]) -> None:
        self._post.run(self._enqueue, frames)

    def clear(self) -> None:
        self._post.run(self._clear)

    def close(self) -> None:
        """Ends on the loop; tracked, so a node waiting for idle I/O (its
        shutdown, a test's settle) waits for the destination to close."""
        try:
            self._ctx.io.submit(self._close())
        except IoClosed:  # the node shut its loop down: nothing left to close on
            log.debug("%s: sink closed after its loop", self._ctx.address)

    # -- on the loop -------------------------------------------------------

    async def _open(self) -> None:
        try:
            await self.destination.open(self._destination_ctx)
        except Exception as exc:  # noqa: BLE001 - any failure is the output's to report
            self._fail(exc)
            return
        self._opened = True
        if self._closed:
            await self.destination.close()
            return
        self._schedule()

    def _enqueue(self, frames: Sequence[SinkFrame]) -> None:
        if self._closed or self._failed:
            return
        self._pending.extend(frames)
        self._schedule()

    def _schedule(self) -> None:
        if self._slot is not None or not self._opened or not self._pending or self._failed:
            return
        play_at = self._pending[0].play_at
        offset = self._offset
        when = play_at + offset if offset is not None else self._loop.time() + (play_at - self._ctx.clock.now())
        self._slot = self._pacer.arm(when, self)

    def _on_slot(self, slot: int) -> None:
        if slot != self._slot:
            return  # cleared or closed since: a later slot is the current one
        self._slot = None
        now = self._ctx.clock.now()
        pending = self._pending
        deliver, observe = self.destination.deliver, self._on_release
        try:
            while pending and pending[0].play_at <= now:
                frame = pending.popleft()
                deliver(frame)
                self.delivered += 1
                if observe is not None:
                    observe(frame, now - frame.play_at)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        self._schedule()

    def _clear(self) -> None:
        self._pending.clear()
        self._slot = None
        if self._opened and not self._failed and not self._closed:
            try:
                self.destination.cleared()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._slot = None
        if self._opened:
            try:
                await self.destination.close()
            except Exception:  # closing: nobody is left to tell
                log.debug("%s: destination close failed", self._ctx.address, exc_info=True)

    def _fail(self, error: BaseException) -> None:
        if self._failed or self._closed:
            return
        self._failed = True
        self._pending.clear()
        log.warning("%s: sink failed: %s", self._ctx.address, failure_reason(error))
        self._ctx.on_failure(error)


def paced(make_destination: Callable[[SinkContext], FrameDestination],
          on_release: ReleaseObserver | None = None) -> SinkFactory:
    """A sink factory: a :class:`PacedSink` in front of a new destination."""
    return lambda ctx: PacedSink(make_destination(ctx), ctx, on_release)


# -- destinations --------------------------------------------------------------


class WavFile:
    """A WAV file of the output's format, written as frames play."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._wav: wave.Wave_write | None = None

    async def open(self, ctx: SinkContext) -> None:
        wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed in close()
        wav.setnchannels(ctx.config.channels)
        wav.setsampwidth(2)
        wav.setframerate(ctx.config.sample_rate)
        self._wav = wav

    def deliver(self, frame: SinkFrame) -> None:
        assert self._wav is not None
        self._wav.writeframesraw(frame.pcm)

    def cleared(self) -> None:
        return None

    async def close(self) -> None:
        if self._wav is not None:
            self._wav.close()  # fixes up the header's lengths
            self._wav = None


class RawPcm:
    """Raw s16le into a file (``path``) or a binary writer that does not
    block (``stream``; it is flushed, not closed, at the end)."""

    def __init__(self, path: str | Path | None = None, stream: BinaryIO | None = None) -> None:
        if (path is None) == (stream is None):
            raise ValueError("give exactly one of path and stream")
        self.path = Path(path) if path is not None else None
        self._stream = stream

    async def open(self, ctx: SinkContext) -> None:
        if self.path is not None:
            self._stream = self.path.open("wb")

    def deliver(self, frame: SinkFrame) -> None:
        assert self._stream is not None
        self._stream.write(frame.pcm)

    def cleared(self) -> None:
        return None

    async def close(self) -> None:
        if self._stream is None:
            return
        self._stream.flush()
        if self.path is not None:
            self._stream.close()
        self._stream = None


_MEDIA_HEADER = struct.Struct(">BHI")
MEDIA_FRAME_VERSION = 1


def pack_media_frame(segment: str, seq: int, pcm: bytes) -> bytes:
    sid = segment.encode()
    return _MEDIA_HEADER.pack(MEDIA_FRAME_VERSION, len(sid), seq) + sid + pcm


def unpack_media_frame(data: bytes) -> tuple[str, int, bytes]:
    """``(segment, seq, pcm)``; raises ``ValueError`` for a malformed frame."""
    if len(data) < _MEDIA_HEADER.size:
        raise ValueError("media frame shorter than its header")
    version, sid_len, seq = _MEDIA_HEADER.unpack_from(data)
    if version != MEDIA_FRAME_VERSION:
        raise ValueError(f"media frame version {version} is not {MEDIA_FRAME_VERSION}")
    start = _MEDIA_HEADER.size
    if len(data) < start + sid_len:
        raise ValueError("media frame shorter than its segment id")
    return data[start:start + sid_len].decode(), seq, data[start + sid_len:]


class WebSocketMedia:
    """Frames over a WebSocket to a media endpoint, in order, one binary
    message each (sent by one task, so a slow socket never blocks the
    pacer). The remote closing the socket is a sink failure."""

    def __init__(self, url: str, *, open_timeout: float = 10.0) -> None:
        self._url = url
        self._open_timeout = open_timeout
        self._outbox: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self._ws: Any = None
        self._sender: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._on_failure: Callable[[BaseException], None] | None = None

    def __repr__(self) -> str:
        parts = urlsplit(self._url)  # no query: it may carry a token
        return f"WebSocketMedia({parts.scheme}://{parts.hostname}:{parts.port}{parts.path})"

    async def open(self, ctx: SinkContext) -> None:
        from websockets.asyncio.client import connect

        self._on_failure = ctx.on_failure
        self._ws = await connect(self._url, open_timeout=self._open_timeout, max_size=2**20)
        cfg = ctx.config
        await self._ws.send(json.dumps({"type": "start", "output": ctx.address, "encoding": "pcm_s16le",
                                        "sample_rate": cfg.sample_rate, "channels": cfg.channels,
                                        "frame_ms": cfg.frame_ms}))
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_all())
        self._watcher = loop.create_task(self._watch())

    def deliver(self, frame: SinkFrame) -> None:
        self._outbox.put_nowait(pack_media_frame(frame.segment, frame.seq, frame.pcm))

    def cleared(self) -> None:
        self._outbox.put_nowait(json.dumps({"type": "clear"}))

    async def _send_all(self) -> None:
        ws = self._ws
        try:
            while (item := await self._outbox.get()) is not None:
                await ws.send(item)
            await ws.send(json.dumps({"type": "stop"}))
        except Exception as exc:  # noqa: BLE001 - the remote broke the socket
            if not self._closing and self._on_failure is not None:
                self._on_failure(exc)

    async def _watch(self) -> None:
        """The remote closing the socket while nothing is sent is a failure
        too (the next utterance would have nowhere to go)."""
        await self._ws.wait_closed()
        if not self._closing and self._on_failure is not None:
            self._on_failure(self._ws.protocol.close_exc)

    async def close(self) -> None:
        self._closing = True
        if self._sender is not None:
            self._outbox.put_nowait(None)
            try:
                await asyncio.wait_for(self._sender, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                self._sender.cancel()
        if self._ws is not None:
            await self._ws.close()
