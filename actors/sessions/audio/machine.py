"""The playout core of an audio output: no I/O, no clock of its own.

How an output plays
-------------------
The sink is a real-time device with a queue in front of it (a LiveKit
``AudioSource``, a paced file writer, a media socket). The core writes
frames into it, each with the time its slot starts (``play_at``), and keeps
a model of what the sink holds: the **queue**, frames written and not yet
played. A frame counts as played once its slot has ended by the clock the
shell passes in (``now``), so

    position played = pushed - still queued,

per segment. Frames accepted but not in the sink are **waiting**: frames a
pause kept, and frames of a later segment (only one segment is in the sink
at a time, so an interruption of one never touches the next). Queue plus
waiting never exceeds the queue length (500 ms by default): that is the memory bound,
and what does not fit is refused (flow control, see the contract).

The rules (docs/protocol.md §4) and where they live:

* ``pause``: the unplayed frames of the queue become the head of waiting
  and the sink is cleared. ``resume`` writes them first, then continues;
  ``playback_started`` was sent at the segment's first write, never again.
* A frame is written to the sink at most twice: once, and once more after a
  pause (the S39 pattern). A frame that was already replayed and is still
  unplayed at a second pause is discarded, not kept for a third write.
* ``clear_buffer`` discards the segment's queued and waiting frames; it
  finishes interrupted with the position actually played.
* A segment finishes when it is closed (flushed, or a newer segment began)
  and none of its frames is queued or waiting; ``_finish`` removes whatever
  of it is left anywhere, so nothing kept can leak into the next utterance.
* Discarded frames never count as played: only frames whose slot ended
  while they were in the queue do.
* Segment ids decide which segment a clear means: a clear that names a
  finished segment is stale and does nothing; frames of a finished segment
  are refused; no flag outlives the segment it was set for.
* Every started segment is finished once, by this incarnation or the next
  at its address: a checkpoint names the segment in the sink and the
  newest finished ids, written when a segment starts (before
  ``playback_started`` leaves) and when one finishes; a stop finishes the
  playing segment (:func:`stop`); after a crash :func:`restart` finishes a
  predecessor's started segment interrupted and refuses what comes late
  for the finished ones.

``step(state, message, now, sender)`` mutates ``state`` in place (playout
queues are not worth copying 50 times a second) and returns it with the
effects: the common ones of :mod:`actors.runtime.effects` plus :class:`SinkWrite`
and :class:`SinkClear`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple

from actors.sessions.contracts.audio import (
    BAD_FORMAT,
    BAD_SEGMENT,
    FRAME_DURATIONS_MS,
    OUT_OF_SEQUENCE,
    QUEUE_FULL,
    SEGMENT_CLOSED,
    SEGMENT_FINISHED,
    TOO_MANY_SEGMENTS,
    AudioFrame,
    ClearBuffer,
    FlushSegment,
    FrameRefused,
    OutputStatus,
    OutputStatusRequest,
    OutputWritable,
    PausePlayback,
    PlaybackFinished,
    PlaybackStarted,
    ResumePlayback,
    frame_bytes,
)
from actors.runtime.effects import Answer, CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer
from bus.messages import Message, message_kind

__all__ = [
    "PLAYOUT_TIMER",
    "OutputConfig",
    "PlayoutState",
    "PlayoutTick",
    "SinkClear",
    "SinkFailed",
    "SinkFrame",
    "SinkWrite",
    "initial_state",
    "restart",
    "step",
    "stop",
]

#: Key of the one timer the core uses (playout end, room for a producer).
PLAYOUT_TIMER = "playout"
#: Slack when comparing clock readings with slot ends: a timer set for a
#: slot's end may read a hair earlier after float arithmetic.
_EPSILON = 1e-6
#: Longest segment id taken (ids are remembered after the segment ends).
MAX_SEGMENT_ID = 128
#: The newest finished segment ids a checkpoint carries, so the next
#: incarnation still refuses their late frames and flushes (it remembers no
#: more than these across a restart).
CHECKPOINT_FINISHED = 32


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """An output's fixed format and limits. Raises ``ValueError`` when the
    values make no sense together."""

    sample_rate: int = 48_000
    channels: int = 1
    frame_ms: int = 20
    #: The playout queue: audio accepted and not yet played, at most. Half
    #: a second: a producer told of room has 250 ms (the watermark) to
    #: answer before the output runs dry, which a node busy re-activating
    #: meetings needs, and an output costs three messages (a timer, a
    #: grant, a chunk) per 250 ms of audio instead of per 100 ms (at 200 ms).
    #: Not a second, as a LiveKit ``AudioSource`` queues: twice the frames
    #: alive per output made the interpreter's young collections long
    #: enough (over 10 ms with 200 outputs) to make frames late. An
    #: interruption is not slower for a longer queue: a clear drops it.
    queue_ms: int = 500
    #: A producer waiting for room is told so once this much is free.
    watermark_ms: int = 250
    #: Segments started or waiting at once (each holds a little state).
    max_live_segments: int = 8
    #: Finished segment ids remembered, to refuse their late frames.
    remembered_segments: int = 1024

    def __post_init__(self) -> None:
        if self.frame_ms not in FRAME_DURATIONS_MS:
            raise ValueError(f"frame_ms must be one of {FRAME_DURATIONS_MS}, not {self.frame_ms}")
        if not 8_000 <= self.sample_rate <= 192_000 or self.sample_rate * self.frame_ms % 1000:
            raise ValueError(f"sample rate {self.sample_rate} does not make whole {self.frame_ms} ms frames")
        if not 1 <= self.channels <= 8:
            raise ValueError(f"channels must be 1..8, not {self.channels}")
        if self.queue_ms < self.frame_ms or self.queue_ms % self.frame_ms:
            raise ValueError(f"queue_ms ({self.queue_ms}) must be a multiple of frame_ms ({self.frame_ms})")
        if not self.frame_ms <= self.watermark_ms <= self.queue_ms:
            raise ValueError(f"watermark_ms must lie between {self.frame_ms} and {self.queue_ms}")
        if self.max_live_segments < 1 or self.remembered_segments < 1:
            raise ValueError("max_live_segments and remembered_segments must be at least 1")

    @property
    def frame_bytes(self) -> int:
        return frame_bytes(self.sample_rate, self.channels, self.frame_ms)

    @property
    def frame_seconds(self) -> float:
        return self.frame_ms / 1000

    @property
    def capacity_frames(self) -> int:
        return self.queue_ms // self.frame_ms

    @property
    def watermark_frames(self) -> int:
        return -(-self.watermark_ms // self.frame_ms)


# -- effects the audio shell performs ---------------------------------------------


class SinkFrame(NamedTuple):
    """A frame for the sink: play ``pcm`` in the slot starting at
    ``play_at`` (node-clock seconds) for ``duration`` seconds. (A named
    tuple: immutable, and made for every frame written, at a fraction of a
    frozen dataclass's cost.)"""

    segment: str
    seq: int
    pcm: bytes
    play_at: float
    duration: float


@dataclass(frozen=True, slots=True)
class SinkWrite(Effect):
    """Append ``frames`` (slots in order, back to back) to the sink's queue."""

    frames: tuple[SinkFrame, ...]


@dataclass(frozen=True, slots=True)
class SinkClear(Effect):
    """Drop every frame the sink has not started to play."""


# -- messages only the output sends itself --------------------------------------------


@message_kind("audio.playout_tick")
@dataclass(frozen=True, slots=True)
class PlayoutTick(Message):
    """The playout timer fired. Carries no generation: a tick only makes
    the core look at the clock, so a stale one is harmless."""


@message_kind("audio.sink_failed")
@dataclass(frozen=True, slots=True)
class SinkFailed(Message):
    """The sink broke (``reason``: the error type and text, no secrets).
    ``incarnation``: of the output whose sink it was; the shell drops a
    report from an earlier incarnation's sink."""

    reason: str
    incarnation: int = 0


# -- state ----------------------------------------------------------------------


@dataclass(slots=True)
class _Frame:
    segment: str
    seq: int
    pcm: bytes
    writes: int = 0  # times written to the sink
    #: When its slot ends, once in the sink's queue (set at each write).
    #: One object per frame, not a frame and a queue entry: hundreds of
    #: outputs keep thousands of frames alive, and each object is one more
    #: for the interpreter's collections to look at.
    ends_at: float = 0.0


@dataclass(slots=True)
class _Segment:
    id: str
    next_seq: int = 0
    closed: bool = False
    started: bool = False
    played_frames: int = 0


@dataclass(slots=True)
class _Waiter:
    """The producer to tell when room opens (``OutputWritable``): the sender
    of the last frame taken or refused. It may send frames of ``segment``
    up to ``told_limit`` (exclusive; ``None``: told nothing it can rely on,
    after a refusal or a new segment)."""

    producer: str
    segment: str
    next_seq: int
    told_limit: int | None = None


@dataclass(slots=True)
class PlayoutState:
    config: OutputConfig
    report_to: str
    paused: bool = False
    #: Segments started or waiting, oldest first; the first is in the sink.
    live: OrderedDict[str, _Segment] = field(default_factory=OrderedDict)
    #: In the sink, not yet played (frames of the first live segment only).
    queue: deque[_Frame] = field(default_factory=deque)
    #: Accepted, not in the sink: kept by a pause first, then later segments.
    waiting: deque[_Frame] = field(default_factory=deque)
    finished: OrderedDict[str, None] = field(default_factory=OrderedDict)
    waiter: _Waiter | None = None
    timer_at: float | None = None
    counters: Counter[str] = field(default_factory=Counter)
    #: (segment, reason) pairs already published as a refusal event.
    reported: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    #: The segment a predecessor at this address started and did not finish
    #: (from its checkpoint), until :func:`restart` finishes it.
    predecessor: str | None = None

    @property
    def buffered(self) -> int:
        return len(self.queue) + len(self.waiting)

    @property
    def head(self) -> _Segment | None:
        return next(iter(self.live.values()), None)


def initial_state(config: OutputConfig, report_to: str, checkpoint: object = None) -> PlayoutState:
    """A new incarnation's state; ``checkpoint``: its predecessor's last
    (``ctx.checkpoint``), if any."""
    state = PlayoutState(config=config, report_to=report_to)
    if isinstance(checkpoint, dict):
        started = checkpoint.get("started")
        if isinstance(started, str) and started:
            state.predecessor = started
        finished = checkpoint.get("finished")
        for sid in finished if isinstance(finished, list) else ():
            if isinstance(sid, str):
                _remember_finished(state, sid)
    return state


def restart(state: PlayoutState) -> list[Effect]:
    """At the start of an incarnation: finish the segment the predecessor
    started and did not finish (a crash, a broken sink whose report was
    lost, an owner change), interrupted. Its position is 0 s: what the
    predecessor played died with its queue, and a position never counts
    audio not known to have played. Its late frames are refused as
    finished."""
    sid, state.predecessor = state.predecessor, None
    if sid is None:
        return []
    _remember_finished(state, sid)
    state.counters["finished-interrupted"] += 1
    return [SaveCheckpoint(_checkpoint(state)),
            Send(state.report_to, PlaybackFinished(segment=sid, position=0.0, interrupted=True)),
            Emit("playback-finished", reason="output-restarted",
                 detail={"segment": sid, "position": 0.0, "interrupted": True})]


def stop(state: PlayoutState, now: float) -> list[Effect]:
    """The output is stopped (not crashed): the playing segment finishes
    interrupted at what really played, so its reporter hears it now and
    the next incarnation at this address (a hand-off, a restart) finds
    nothing to finish. Segments not started are left to their producers."""
    effects: list[Effect] = []
    _advance(state, now)
    head = state.head
    if head is not None and head.started:
        _finish(state, head, interrupted=True, effects=effects)
    return effects


def _checkpoint(state: PlayoutState) -> dict[str, object]:
    """What the next incarnation must know: the started, unfinished segment
    (only the head is ever started: one segment is in the sink at a time)
    and the newest finished ids."""
    head = state.head
    return {"started": head.id if head is not None and head.started else None,
            "finished": list(state.finished)[-CHECKPOINT_FINISHED:]}


def _remember_finished(state: PlayoutState, sid: str) -> None:
    state.finished[sid] = None
    while len(state.finished) > state.config.remembered_segments:
        state.finished.popitem(last=False)


# -- the step -----------------------------------------------------------------


def step(state: PlayoutState, message: Message, now: float, sender: str | None = None
         ) -> tuple[PlayoutState, list[Effect]]:
    """Handle one message at time ``now``; returns the state and effects."""
    effects: list[Effect] = []
    _advance(state, now)
    _settle(state, now, effects)
    match message:
        case AudioFrame():
            _on_frame(state, message, now, sender, effects)
        case FlushSegment(segment=segment):
            _on_flush(state, segment, sender, effects)
        case PausePlayback():
            _on_pause(state, effects)
        case ResumePlayback():
            _on_resume(state)
        case ClearBuffer(segment=segment):
            _on_clear(state, segment, effects)
        case PlayoutTick():
            state.timer_at = None  # it fired
        case SinkFailed(reason=reason):
            _on_sink_failed(state, reason, effects)
        case OutputStatusRequest():
            effects.append(Answer(_status(state)))
        case _:
            raise TypeError(f"the playout core does not handle {message.KIND!r}")
    _settle(state, now, effects)
    _tell_waiter(state, effects)
    _arm_timer(state, now, effects)
    return state, effects


def _advance(state: PlayoutState, now: float) -> None:
    """Frames whose slot has ended by ``now`` are played."""
    queue = state.queue
    played = 0
    until = now + _EPSILON
    live = state.live
    while queue and queue[0].ends_at <= until:
        frame = queue.popleft()
        segment = live.get(frame.segment)
        if segment is not None:
            segment.played_frames += 1
        played += 1
    if played:
        state.counters["played"] += played


def _settle(state: PlayoutState, now: float, effects: list[Effect]) -> None:
    """Write the head segment's waiting frames (unless paused) and finish
    every head segment that is done, so the next one starts."""
    while (head := state.head) is not None:
        if not state.paused:
            _write_waiting(state, head, now, effects)
        if head.closed and not state.queue and not (state.waiting and state.waiting[0].segment == head.id):
            _finish(state, head, interrupted=False, effects=effects)
            continue
        return


def _write_waiting(state: PlayoutState, head: _Segment, now: float, effects: list[Effect]) -> None:
    waiting, queue = state.waiting, state.queue
    if not waiting or waiting[0].segment != head.id:
        return
    duration = state.config.frame_seconds
    start = queue[-1].ends_at if queue else now
    written: list[SinkFrame] = []
    replayed = 0
    sid = head.id
    while waiting and waiting[0].segment == sid:
        frame = waiting.popleft()
        frame.writes += 1
        if frame.writes > 1:
            replayed += 1
        written.append(SinkFrame(sid, frame.seq, frame.pcm, start, duration))
        start += duration
        frame.ends_at = start
        queue.append(frame)
    state.counters["written"] += len(written)
    if replayed:
        state.counters["replayed"] += replayed
    if not head.started:
        # Told before the write: if the write kills the output, the reporter
        # has heard "started" for the segment the next incarnation finishes.
        head.started = True
        effects.append(SaveCheckpoint(_checkpoint(state)))
        effects.append(Send(state.report_to, PlaybackStarted(segment=head.id)))
        effects.append(Emit("playback-started", detail={"segment": head.id}))
    effects.append(SinkWrite(tuple(written)))


def _finish(state: PlayoutState, segment: _Segment, *, interrupted: bool, effects: list[Effect]) -> None:
    """End ``segment``: whatever of it is still queued or waiting is dropped
    (never played later), its id is remembered, its reporter told."""
    sid = segment.id
    if state.queue and state.queue[0].segment == sid:
        state.counters["discarded"] += len(state.queue)
        state.queue.clear()
        effects.append(SinkClear())
    left = [f for f in state.waiting if f.segment != sid]
    state.counters["discarded"] += len(state.waiting) - len(left)
    state.waiting = deque(left)
    del state.live[sid]
    _remember_finished(state, sid)
    effects.append(SaveCheckpoint(_checkpoint(state)))
    position = round(segment.played_frames * state.config.frame_seconds, 6)
    state.counters["finished-interrupted" if interrupted else "finished"] += 1
    effects.append(Send(state.report_to, PlaybackFinished(segment=sid, position=position, interrupted=interrupted)))
    effects.append(Emit("playback-finished", reason="interrupted" if interrupted else "",
                        detail={"segment": sid, "position": position, "interrupted": interrupted}))


# -- handlers -----------------------------------------------------------------


def _on_frame(state: PlayoutState, frame: AudioFrame, now: float, sender: str | None,
              effects: list[Effect]) -> None:
    """A chunk of one or more whole frames, ``frame.seq`` the first. The
    checks hold for the chunk as a whole; then as many of its frames as fit
    are taken, in order, and the rest is refused (queue full) from the first
    frame not taken, so the producer resends exactly those."""
    config = state.config
    sid = frame.segment
    segment = state.live.get(sid)
    expected = segment.next_seq if segment is not None else 0
    if not sid or len(sid) > MAX_SEGMENT_ID:
        _refuse(state, frame, BAD_SEGMENT, 0, sender, effects)
        return
    size = config.frame_bytes
    count, rest = divmod(len(frame.pcm), size)
    if frame.sample_rate != config.sample_rate or frame.channels != config.channels or rest or not count:
        _refuse(state, frame, BAD_FORMAT, expected, sender, effects,
                detail={"sample_rate": frame.sample_rate, "channels": frame.channels, "bytes": len(frame.pcm)})
        return
    if segment is None and sid in state.finished:
        # The producer drops the segment and goes on with its next one: told
        # of room like any refused producer, or one whose credit ran out in
        # the segment (frames sent to an incarnation that is gone) would
        # wait for a grant that never comes.
        _refuse(state, frame, SEGMENT_FINISHED, 0, sender, effects, waits=True)
        return
    if segment is not None and segment.closed:
        _refuse(state, frame, SEGMENT_CLOSED, expected, sender, effects)
        return
    if frame.seq != expected:
        _refuse(state, frame, OUT_OF_SEQUENCE, expected, sender, effects, waits=True)
        return
    if segment is None and len(state.live) >= config.max_live_segments:
        _refuse(state, frame, TOO_MANY_SEGMENTS, 0, sender, effects)
        return
    taken = min(count, config.capacity_frames - state.buffered)
    if taken > 0:
        if segment is None:
            segment = _open_segment(state, sid)
        pcm, seq, waiting = frame.pcm, frame.seq, state.waiting
        if count == 1:
            waiting.append(_Frame(sid, seq, pcm))
        else:
            for i in range(taken):
                waiting.append(_Frame(sid, seq + i, pcm[i * size:(i + 1) * size]))
        segment.next_seq += taken
        state.counters["pushed"] += taken
        if sender is not None:
            # The producer will want to hear when its window may grow, so it
            # never has to be refused to find out.
            waiter = state.waiter
            if waiter is not None and waiter.producer == sender and waiter.segment == sid:
                waiter.next_seq = segment.next_seq
            else:
                state.waiter = _Waiter(sender, sid, segment.next_seq)
    if taken < count:
        retry = None if state.paused or not state.queue else max(0.0, state.queue[0].ends_at - now)
        _refuse(state, frame, QUEUE_FULL, expected + taken, sender, effects, retry_after=retry, waits=True,
                seq=frame.seq + taken)


def _open_segment(state: PlayoutState, sid: str) -> _Segment:
    """A new segment closes the one still open: segments play in order."""
    for live in state.live.values():
        live.closed = True
    segment = _Segment(sid)
    state.live[sid] = segment
    return segment


def _on_flush(state: PlayoutState, sid: str, sender: str | None, effects: list[Effect]) -> None:
    segment = state.live.get(sid)
    if segment is not None:
        segment.closed = True
    elif sid in state.finished:
        state.counters["flush-stale"] += 1
    elif not sid or len(sid) > MAX_SEGMENT_ID:
        _refuse(state, FlushSegment(segment=sid), BAD_SEGMENT, 0, sender, effects)
    elif len(state.live) >= state.config.max_live_segments:
        _refuse(state, FlushSegment(segment=sid), TOO_MANY_SEGMENTS, 0, sender, effects)
    else:  # a segment with no audio at all: it finishes in its turn, at 0
        _open_segment(state, sid).closed = True


def _on_pause(state: PlayoutState, effects: list[Effect]) -> None:
    if state.paused:
        state.counters["pause-ignored"] += 1
        return
    state.paused = True
    if not state.queue:
        return
    kept = [frame for frame in state.queue if frame.writes < 2]
    dropped = len(state.queue) - len(kept)
    state.queue.clear()
    effects.append(SinkClear())
    state.waiting.extendleft(reversed(kept))
    if dropped:
        state.counters["discarded"] += dropped
        state.counters["replay-dropped"] += dropped
        effects.append(Emit("audio-replay-dropped", detail={"frames": dropped}))


def _on_resume(state: PlayoutState) -> None:
    if not state.paused:
        state.counters["resume-ignored"] += 1
    state.paused = False  # _settle writes what pause kept, first


def _on_clear(state: PlayoutState, sid: str | None, effects: list[Effect]) -> None:
    segment = state.head if sid is None else state.live.get(sid)
    if segment is None:
        # Nothing playing, or that segment already finished: an interruption
        # handled once does nothing more, and sets no flag for the next one.
        state.counters["clear-stale"] += 1
        effects.append(Emit("audio-clear-ignored", reason="stale" if sid else "idle",
                            detail={"segment": sid} if sid else {}))
        return
    _finish(state, segment, interrupted=True, effects=effects)


def _on_sink_failed(state: PlayoutState, reason: str, effects: list[Effect]) -> None:
    effects.append(Emit("audio-sink-failed", reason=reason[:200]))
    for segment in list(state.live.values()):
        _finish(state, segment, interrupted=True, effects=effects)


def _refuse(state: PlayoutState, frame: AudioFrame | FlushSegment, reason: str, next_seq: int,
            sender: str | None, effects: list[Effect], *, retry_after: float | None = None,
            waits: bool = False, detail: dict[str, int] | None = None, seq: int | None = None) -> None:
    """A typed refusal to the sender, a count, and an event (once per
    segment and reason, so a flood cannot flood ``sys:events``). ``seq``:
    the first frame refused, when not the message's first."""
    if seq is None:
        seq = frame.seq if isinstance(frame, AudioFrame) else -1
    state.counters[f"refused:{reason}"] += 1
    if sender is not None:
        effects.append(Send(sender, FrameRefused(segment=frame.segment, seq=seq, reason=reason, next_seq=next_seq,
                                                 retry_after=retry_after)))
        if waits:  # the producer stops and waits to be told: tell it anew
            state.waiter = _Waiter(sender, frame.segment, next_seq)
    key = (frame.segment[:MAX_SEGMENT_ID], reason)
    if key not in state.reported:
        state.reported[key] = None
        if len(state.reported) > 256:
            state.reported.popitem(last=False)
        effects.append(Emit("audio-refused", reason=reason,
                            detail={"segment": key[0], "seq": seq, "sender": sender or "", **(detail or {})}))


def _tell_waiter(state: PlayoutState, effects: list[Effect]) -> None:
    """Grant the producer room once it is at least the watermark and its
    window would grow by at least the watermark. The grant is a window
    (``next_seq + room``), so telling it again never lets a producer
    overshoot the queue with frames already in flight."""
    waiter = state.waiter
    if waiter is None:
        return
    room = state.config.capacity_frames - state.buffered
    if room < _room_wanted(state, waiter):
        return
    waiter.told_limit = waiter.next_seq + room
    effects.append(Send(waiter.producer, OutputWritable(segment=waiter.segment, next_seq=waiter.next_seq,
                                                        room_frames=room)))


def _room_wanted(state: PlayoutState, waiter: _Waiter) -> int:
    """Room at which the waiter is told (next)."""
    watermark = state.config.watermark_frames
    if waiter.told_limit is None:
        return watermark
    return max(watermark, waiter.told_limit + watermark - waiter.next_seq)


def _arm_timer(state: PlayoutState, now: float, effects: list[Effect]) -> None:
    """One timer: when the head segment's last frame ends (it is closed),
    or when enough has played for a waiting producer."""
    wake: float | None = None
    queue = state.queue
    head = state.head
    if queue and head is not None and head.closed:
        wake = queue[-1].ends_at
    if state.waiter is not None and queue and not state.paused:
        need = _room_wanted(state, state.waiter) - (state.config.capacity_frames - state.buffered)
        if 0 < need <= len(queue):
            at = queue[need - 1].ends_at
            wake = at if wake is None else min(wake, at)
    if wake == state.timer_at:
        return
    state.timer_at = wake
    if wake is None:
        effects.append(CancelTimer(PLAYOUT_TIMER))
    else:
        effects.append(StartTimer(PLAYOUT_TIMER, max(0.0, wake - now), PlayoutTick()))


def _status(state: PlayoutState) -> OutputStatus:
    head = state.head
    return OutputStatus(paused=state.paused, playing=head.id if head is not None else None,
                        live_segments=list(state.live), queued_frames=len(state.queue),
                        waiting_frames=len(state.waiting), counters=dict(state.counters))
