"""Messages of an audio output, ``audio:<meeting-or-job>/<output>`` (agent speech).

An audio output plays PCM frames (signed 16-bit little-endian, interleaved)
of one format fixed at its start (sample rate, channels, 10 or 20 ms frames)
into one sink, through a playout queue of 500 ms (configurable).

Into the output (tells):

=======================  ==================================================
:class:`AudioFrame`      one or more frames of a segment (one utterance /
                         reply), ``seq`` counting frames from 0 within the
                         segment
:class:`FlushSegment`    no more frames for that segment: it finishes once
                         its audio has played out
:class:`PausePlayback`   a possible false interruption: stop the sound now,
                         keep what was queued but not yet played
:class:`ResumePlayback`  play what pause kept, then continue
:class:`ClearBuffer`     a real interruption: discard the segment's audio
                         (kept and queued); it finishes interrupted
=======================  ==================================================

Out of the output, to the ``report_to`` address given at its start and
published on ``sys:events`` (``playback-started`` / ``playback-finished``):
:class:`PlaybackStarted` once per segment, when its first frame enters the
sink, and :class:`PlaybackFinished` once per segment with the position
actually played and whether it was interrupted. Once also across a stop
(the playing segment finishes, interrupted) and a crash (the next
incarnation at the address finishes a segment its predecessor started,
interrupted, at position 0; docs/protocol.md §4.7).

Flow control (to the sender of the frames): a frame that does not fit is
refused with :class:`FrameRefused` (``reason`` is one of
:data:`REFUSAL_REASONS`; ``next_seq`` is the frame the output expects next
for that segment, so the producer resends from there). Of a chunk, the
frames that fit are taken and the rest is refused from the first frame not
taken. An output tells a producer :class:`OutputWritable` when room opens
again (at least the output's watermark), if the producer was refused for a
full queue, out of sequence or a finished segment, or its last accepted
frame left less room than the watermark. A producer that sends at most ``room_frames`` frames
per :class:`OutputWritable` is never refused for a full queue; one that
ignores it only gets refusals, and the output's memory stays bounded (the
queue, and the node's bounded mailbox, whose overflow is a counted dead
letter with an event). :class:`FrameFeed` is that producer side, without
I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from bus.address import parse_address
from bus.messages import Message, message_kind

__all__ = [
    "FRAME_DURATIONS_MS",
    "MAX_CHUNK_BYTES",
    "REFUSAL_REASONS",
    "AudioFrame",
    "ClearBuffer",
    "FlushSegment",
    "FrameFeed",
    "FrameRefused",
    "OutputStatus",
    "OutputStatusRequest",
    "OutputWritable",
    "PausePlayback",
    "PlaybackFinished",
    "PlaybackStarted",
    "ResumePlayback",
    "frame_bytes",
    "output_address",
]

#: Frame lengths an output can be configured for.
FRAME_DURATIONS_MS = (10, 20)
#: Bytes per sample (s16le).
SAMPLE_BYTES = 2
#: PCM bytes a :class:`FrameFeed` puts in one chunk at most: a quarter of
#: an envelope's limit (1 MiB), so a window of the default queue at the
#: largest format an output takes (192 kHz, 8 channels: 1.5 MB) goes as several
#: chunks instead of one message the codec refuses.
MAX_CHUNK_BYTES = 256 * 1024

#: Why a frame or command was refused (the ``reason`` of :class:`FrameRefused`).
QUEUE_FULL = "queue-full"
OUT_OF_SEQUENCE = "out-of-sequence"
BAD_FORMAT = "bad-format"
BAD_SEGMENT = "bad-segment"
SEGMENT_CLOSED = "segment-closed"
SEGMENT_FINISHED = "segment-finished"
TOO_MANY_SEGMENTS = "too-many-segments"
REFUSAL_REASONS = (QUEUE_FULL, OUT_OF_SEQUENCE, BAD_FORMAT, BAD_SEGMENT, SEGMENT_CLOSED, SEGMENT_FINISHED,
                   TOO_MANY_SEGMENTS)


def output_address(owner: str, output: str) -> str:
    """``audio:<meeting-or-job>/<output>``; raises ``InvalidAddress``."""
    address = f"audio:{owner}/{output}"
    parse_address(address)
    return address


def frame_bytes(sample_rate: int, channels: int, frame_ms: int) -> int:
    """Length in bytes of one s16le frame of that format."""
    return sample_rate * frame_ms // 1000 * channels * SAMPLE_BYTES


# -- into the output ------------------------------------------------------------


@message_kind("audio.frame")
@dataclass(frozen=True, slots=True)
class AudioFrame(Message):
    """Frames of ``segment``: ``pcm`` holds one or more whole frames back to
    back (a chunk, as a TTS stream produces them), ``seq`` is the number of
    the first of them: 0 for a segment's first frame, growing by one per
    frame. ``sample_rate`` and ``channels`` must be the output's. One
    message per chunk instead of per frame is what keeps an output cheap:
    its step, its sink write and the message itself are paid once per
    chunk."""

    segment: str
    seq: int
    pcm: bytes
    sample_rate: int
    channels: int


@message_kind("audio.flush")
@dataclass(frozen=True, slots=True)
class FlushSegment(Message):
    """``segment`` is complete. A segment is also closed by the first frame
    of a newer segment."""

    segment: str


@message_kind("audio.pause")
@dataclass(frozen=True, slots=True)
class PausePlayback(Message):
    """Stop the sound; keep the frames queued but not yet played."""


@message_kind("audio.resume")
@dataclass(frozen=True, slots=True)
class ResumePlayback(Message):
    """Play what pause kept first, then continue (no new
    ``playback_started``)."""


@message_kind("audio.clear_buffer")
@dataclass(frozen=True, slots=True)
class ClearBuffer(Message):
    """A real interruption of ``segment`` (``None``: the segment playing
    now). Its kept and queued frames are discarded and it finishes
    interrupted. Naming a segment that already finished changes nothing: an
    interruption handled once never touches the next reply."""

    segment: str | None = None


@message_kind("audio.status")
@dataclass(frozen=True, slots=True)
class OutputStatusRequest(Message):
    """Ask: the output answers with :class:`OutputStatus`."""


# -- out of the output -----------------------------------------------------------


@message_kind("audio.playback_started")
@dataclass(frozen=True, slots=True)
class PlaybackStarted(Message):
    segment: str


@message_kind("audio.playback_finished")
@dataclass(frozen=True, slots=True)
class PlaybackFinished(Message):
    """``position``: seconds of the segment's audio actually played
    (discarded audio never counts)."""

    segment: str
    position: float
    interrupted: bool


@message_kind("audio.frame_refused")
@dataclass(frozen=True, slots=True)
class FrameRefused(Message):
    """A frame (or flush) was not taken. ``next_seq``: the frame of
    ``segment`` the output expects next (resend from there). ``retry_after``:
    seconds until room is expected, for ``queue-full`` while playing (else
    ``None``: wait for :class:`OutputWritable`)."""

    segment: str
    seq: int
    reason: str
    next_seq: int
    retry_after: float | None = None


@message_kind("audio.writable")
@dataclass(frozen=True, slots=True)
class OutputWritable(Message):
    """Room for ``room_frames`` frames; continue ``segment`` at ``next_seq``."""

    segment: str
    next_seq: int
    room_frames: int


@message_kind("audio.status_reply")
@dataclass(frozen=True, slots=True)
class OutputStatus(Message):
    """A snapshot. ``queued_frames``: in the sink, not yet played;
    ``waiting_frames``: accepted, not in the sink (kept by a pause, or a
    later segment); ``counters``: frames pushed, written, replayed, played,
    discarded, refused:<reason>..."""

    paused: bool
    playing: str | None
    live_segments: list[str]
    queued_frames: int
    waiting_frames: int
    counters: dict[str, int]


# -- the producer's side -----------------------------------------------------------


class FrameFeed:
    """Producer-side flow control towards one output, without I/O.

    ``add`` frames (and ``flush``) of segments in order; ``take`` returns the
    messages that may be sent now; feed it the output's :class:`FrameRefused`
    and :class:`OutputWritable`. Frames the output may still ask for again
    (from ``next_seq`` on) are kept; older ones are forgotten.
    ``credit`` is how many frames may be sent before the output first
    speaks (its queue length, in frames).
    """

    def __init__(self, sample_rate: int, channels: int, credit: int) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.credit = credit
        # (segment, seq, pcm) or (segment, -1, b"") for a flush; ``_sent``
        # counts how many of ``_items`` went out since the last rewind.
        self._items: deque[tuple[str, int, bytes]] = deque()
        self._sent = 0
        self._seq: dict[str, int] = {}
        #: Segments given up because the output asked for frames this feed
        #: had already forgotten (see :meth:`on_refused`), oldest first; the
        #: producer reads (and may clear) it.
        self.lost: list[str] = []

    def add(self, segment: str, pcms: Iterable[bytes], *, flush: bool = False) -> None:
        seq = self._seq.get(segment, 0)
        for pcm in pcms:
            self._items.append((segment, seq, pcm))
            seq += 1
        self._seq[segment] = seq
        if flush:
            self._items.append((segment, -1, b""))

    def take(self) -> list[Message]:
        """What may be sent now: consecutive frames of a segment, as far as
        the credit goes, as one chunk (:class:`AudioFrame` with their PCM
        back to back; several if over :data:`MAX_CHUNK_BYTES`), and
        flushes."""
        out: list[Message] = []
        items = self._items
        chunk: list[bytes] = []
        first = (-1, "")
        size = 0
        while self._sent < len(items):
            segment, seq, pcm = items[self._sent]
            if chunk and (seq < 0 or segment != first[1] or self.credit <= 0 or size + len(pcm) > MAX_CHUNK_BYTES):
                out.append(self._chunk(first, chunk))
                chunk = []
                size = 0
            if seq < 0:
                out.append(FlushSegment(segment=segment))
            elif self.credit <= 0:
                break
            else:
                self.credit -= 1
                if not chunk:
                    first = (seq, segment)
                chunk.append(pcm)
                size += len(pcm)
            self._sent += 1
        if chunk:
            out.append(self._chunk(first, chunk))
        self._forget_flushes_sent()
        return out

    def _chunk(self, first: tuple[int, str], pcms: list[bytes]) -> AudioFrame:
        seq, segment = first
        return AudioFrame(segment=segment, seq=seq, pcm=pcms[0] if len(pcms) == 1 else b"".join(pcms),
                          sample_rate=self.sample_rate, channels=self.channels)

    def on_refused(self, refused: FrameRefused) -> None:
        """Queue full or out of sequence: stop, and send again from the
        refusal's ``next_seq`` once told of room (or give the segment up,
        :attr:`lost`, if those frames are forgotten: see :meth:`_rewind`).
        Any other reason: the output will not take the segment; it is dropped."""
        if refused.reason in (QUEUE_FULL, OUT_OF_SEQUENCE):
            self.credit = 0
            self._rewind(refused.segment, refused.next_seq)
        else:  # the output will not take this segment: drop it
            self._drop_segment(refused.segment)

    def on_writable(self, writable: OutputWritable) -> None:
        """A window: frames of ``segment`` from ``next_seq`` on may fill
        ``room_frames``; frames already sent past ``next_seq`` are in flight
        and count against it (so a repeated grant never overshoots)."""
        self._forget_taken(writable.segment, writable.next_seq)
        in_flight = sum(1 for i in range(self._sent) if self._items[i][1] >= 0)
        self.credit = max(0, writable.room_frames - in_flight)

    @property
    def pending(self) -> int:
        """Frames and flushes not yet sent (or to be sent again)."""
        return len(self._items) - self._sent

    def _rewind(self, segment: str, next_seq: int) -> None:
        """Send again from ``next_seq`` of ``segment``. If this feed no longer
        holds that frame (it forgot it once the output said it was taken),
        the output lost what it had taken: it is a new incarnation (a crash,
        a sink that broke), which expects the segment from its start. That
        cannot be sent again: the segment is given up (:attr:`lost`), not
        resent from the frames still held, which the output would refuse
        again, and again, at once."""
        if not self._forget_taken(segment, next_seq):
            return
        head = self._items[0]  # the segment's oldest item still held
        if head[1] > next_seq or (head[1] < 0 and next_seq < self._seq[segment]):
            self.lost.append(segment)
            self._drop_segment(segment)
            return
        self._sent = 0

    def _forget_taken(self, segment: str, next_seq: int) -> bool:
        """Everything of ``segment`` before ``next_seq`` (and of every earlier
        segment) was taken: forget it. A segment this feed no longer holds
        tells nothing about the rest: False then."""
        items = self._items
        if not any(item[0] == segment for item in items):
            return False
        while items and not (items[0][0] == segment and (items[0][1] < 0 or items[0][1] >= next_seq)):
            items.popleft()
            self._sent = max(0, self._sent - 1)
        return True

    def _drop_segment(self, segment: str) -> None:
        items = list(self._items)
        self._sent = sum(1 for item in items[:self._sent] if item[0] != segment)
        self._items = deque(item for item in items if item[0] != segment)

    def _forget_flushes_sent(self) -> None:
        # A flush at the head that went out needs no resend.
        while self._sent and self._items and self._items[0][1] < 0:
            self._items.popleft()
            self._sent -= 1
