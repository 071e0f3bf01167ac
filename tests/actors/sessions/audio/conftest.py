"""Shared pieces for the audio output tests: a sink that records (for the
test kit, where time is a manual clock) and a producer actor that follows
the output's flow control (for real-time runs)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from actors.sessions.audio.feeder import FrameFeeder
from actors.sessions.audio.machine import OutputConfig, SinkFrame
from actors.sessions.audio.sinks import SinkContext
from bus.messages import Message

from .harness import pcm_for


class RecordingSink:
    """An :class:`~actors.sessions.audio.sinks.AudioSink` that only records (no
    pacing: under a manual clock the slot times are what matters). With a
    ``gate``, ``write`` blocks until it is set (holds the output's handler)."""

    def __init__(self, ctx: SinkContext, gate: threading.Event | None = None,
                 entered: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.log: list[tuple[str, Any]] = []
        self.gate = gate
        self.entered = entered
        #: Set: ``write`` raises it (a bug in the output's handler path, not
        #: a sink reporting that it broke).
        self.raise_on_write: BaseException | None = None

    def open(self) -> None:
        self.log.append(("open", None))

    def write(self, frames: Sequence[SinkFrame]) -> None:
        if self.gate is not None:
            if self.entered is not None:
                self.entered.set()
            assert self.gate.wait(10)
        if self.raise_on_write is not None:
            raise self.raise_on_write
        self.log.extend(("write", f) for f in frames)

    def clear(self) -> None:
        self.log.append(("clear", None))

    def close(self) -> None:
        self.log.append(("close", None))

    def fail(self, error: BaseException) -> None:
        self.ctx.on_failure(error)

    def ops(self) -> list[Any]:
        """Writes as ``(segment, seq)``, and ``"clear"``."""
        return [(v.segment, v.seq) if op == "write" else op for op, v in self.log if op in ("write", "clear")]


class Sinks:
    """A sink factory that keeps every sink it made (one per incarnation)."""

    def __init__(self, **kwargs: Any) -> None:
        self.made: list[RecordingSink] = []
        self._kwargs = kwargs

    def __call__(self, ctx: SinkContext) -> RecordingSink:
        sink = RecordingSink(ctx, **self._kwargs)
        self.made.append(sink)
        return sink

    @property
    def last(self) -> RecordingSink:
        return self.made[-1]


def speaker(output: str, config: OutputConfig, segments: list[tuple[str, int]],
            record: Callable[[Message], None]) -> tuple[type[FrameFeeder], tuple[Any, ...], dict[str, Any]]:
    """Spawn arguments of a feeder speaking ``segments`` ((id, frames)),
    with frames that say which frame they are."""
    return FrameFeeder, (output,), {
        "sample_rate": config.sample_rate, "channels": config.channels, "credit": config.capacity_frames,
        "segments": [(sid, [pcm_for(config, sid, i) for i in range(n)]) for sid, n in segments], "record": record}
