"""A producer of speech for an audio output: feeds frames as fast as the
output's flow control allows (a stand-in for a TTS stream, used by the
benchmark, the tests and demos).

It speaks only the contract (:mod:`actors.sessions.contracts.audio`): frames and
flushes out, :class:`FrameRefused` / :class:`OutputWritable` in, through a
:class:`FrameFeed`. Whatever else it is told (``playback_started`` /
``playback_finished`` when it is the output's ``report_to``) is passed to
``record``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from actors.runtime.actor import ActorContext, HuddleActor
from actors.sessions.contracts.audio import (
    FrameFeed,
    FrameRefused,
    OutputWritable,
    PlaybackFinished,
    PlaybackStarted,
)
from bus.envelope import Envelope
from bus.messages import Message

__all__ = ["FrameFeeder"]


class FrameFeeder(HuddleActor):
    """Feeds ``segments`` (segment id, frames), each flushed, to ``output``.

    ``credit``: frames sent before the output first answers (its queue
    length in frames, so it is never refused for a full queue).
    """

    def __init__(self, ctx: ActorContext, output: str, *, sample_rate: int, channels: int, credit: int,
                 segments: Iterable[tuple[str, Sequence[bytes]]],
                 record: Callable[[Message], None] | None = None) -> None:
        super().__init__(ctx)
        self.output = output
        self.feed = FrameFeed(sample_rate, channels, credit=credit)
        for sid, frames in segments:
            self.feed.add(sid, frames, flush=True)
        self.record = record

    def on_start(self) -> None:
        self._send()

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, FrameRefused):
            self.feed.on_refused(message)
            for segment in self.feed.lost:  # the output restarted mid-segment: see FrameFeed._rewind
                self.node.emit("audio-segment-lost", self.address, reason="output-restarted",
                               detail={"segment": segment, "output": self.output})
            self.feed.lost.clear()
        elif isinstance(message, OutputWritable):
            self.feed.on_writable(message)
        elif not isinstance(message, PlaybackStarted | PlaybackFinished):
            return super().on_message(message, envelope)
        if self.record is not None:
            self.record(message)
        self._send()
        return None

    def _send(self) -> None:
        for message in self.feed.take():
            self.tell(self.output, message)
