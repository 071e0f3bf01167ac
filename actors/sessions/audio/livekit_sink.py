"""A LiveKit ``rtc.AudioSource`` as an audio output's sink (extra ``livekit``).

The source is LiveKit's real-time device: it has its own playout queue
(sized to the output's queue) and consumes frames at the real rate,
whether or not a room is connected. This sink hands it each frame at once,
in order (``capture_frame`` on the node's I/O loop; the output never writes
more than its queue ahead, so a capture does not wait long), and maps
``clear`` to ``clear_queue``. The slot times the playout core stamps are
not needed here: the source paces itself.

To be heard in a room, publish the source as a track once it exists
(``on_source`` is called with it on the I/O loop)::

    def publish(source):
        track = rtc.LocalAudioTrack.create_audio_track("agent", source)
        ...  # room.local_participant.publish_track(track), on the same loop

    sink = livekit_sink(on_source=publish)

Imports ``livekit`` only when a sink is made: nodes without the extra never
need it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from actors.sessions.audio.machine import SinkFrame
from actors.sessions.audio.sinks import LoopPost, SinkContext, SinkFactory
from actors.runtime.io import IoClosed

__all__ = ["LiveKitAudioSource", "livekit_sink"]

log = logging.getLogger("huddle.audio.livekit")


class LiveKitAudioSource:
    """An :class:`~actors.sessions.audio.sinks.AudioSink` (the seam's contract) in
    front of ``rtc.AudioSource``."""

    def __init__(self, ctx: SinkContext, on_source: Callable[[Any], None] | None = None) -> None:
        from livekit import rtc  # the optional dependency: fails here, not at import

        self._rtc = rtc
        self._ctx = ctx
        self._on_source = on_source
        self._post = LoopPost.of(ctx.io)
        self._pending: deque[SinkFrame] = deque()
        self._wakeup: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self.source: Any = None
        self.captured = 0
        self._closed = False

    def open(self) -> None:
        self._post.post(self._open)

    def write(self, frames: Sequence[SinkFrame]) -> None:
        self._post.post(self._enqueue, frames)

    def clear(self) -> None:
        self._post.post(self._clear)

    def close(self) -> None:
        try:
            self._ctx.io.submit(self._close())
        except IoClosed:
            log.debug("%s: source closed after its loop", self._ctx.address)

    # -- on the loop -------------------------------------------------------

    def _open(self) -> None:
        cfg = self._ctx.config
        try:
            self.source = self._rtc.AudioSource(cfg.sample_rate, cfg.channels, queue_size_ms=cfg.queue_ms,
                                                loop=asyncio.get_running_loop())
            if self._on_source is not None:
                self._on_source(self.source)
        except Exception as exc:  # noqa: BLE001 - the output reports it
            self._ctx.on_failure(exc)
            return
        self._wakeup = asyncio.Event()
        self._pump = asyncio.get_running_loop().create_task(self._capture_all())

    def _enqueue(self, frames: Sequence[SinkFrame]) -> None:
        if self._closed:
            return
        self._pending.extend(frames)
        if self._wakeup is not None:
            self._wakeup.set()

    def _clear(self) -> None:
        self._pending.clear()
        if self.source is not None:
            self.source.clear_queue()

    async def _capture_all(self) -> None:
        assert self._wakeup is not None
        cfg = self._ctx.config
        samples = cfg.sample_rate * cfg.frame_ms // 1000
        try:
            while not self._closed:
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                frame = self._pending.popleft()
                await self.source.capture_frame(self._rtc.AudioFrame(frame.pcm, cfg.sample_rate, cfg.channels,
                                                                     samples))
                self.captured += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._ctx.on_failure(exc)

    async def _close(self) -> None:
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        if self.source is not None:
            await self.source.aclose()


def livekit_sink(on_source: Callable[[Any], None] | None = None) -> SinkFactory:
    """A sink factory: one ``rtc.AudioSource`` per output incarnation."""
    return lambda ctx: LiveKitAudioSource(ctx, on_source)

