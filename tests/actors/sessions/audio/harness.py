"""Drives the playout core as its shell would: a clock, one timer, a sink
that keeps what it was given, and everything sent recorded.

The sink here is a model of a real one, used to judge the core from the
outside: a write of a frame is *played* once its slot has ended before any
clear; a clear cuts every write whose slot had not ended (the core's rule
for what pause keeps and what clear discards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.sessions.audio.machine import (
    OutputConfig,
    PlayoutState,
    PlayoutTick,
    SinkClear,
    SinkFrame,
    SinkWrite,
    initial_state,
    restart,
    step,
    stop,
)
from actors.sessions.contracts.audio import (
    AudioFrame,
    ClearBuffer,
    FlushSegment,
    FrameRefused,
    OutputWritable,
    PausePlayback,
    PlaybackFinished,
    PlaybackStarted,
    ResumePlayback,
)
from actors.runtime.effects import Answer, CancelTimer, Effect, Emit, SaveCheckpoint, Send, StartTimer
from bus.messages import Message

#: A short playout queue (200 ms, told of room at 100 ms): flow control
#: shows within a few frames. The default queue is 500 ms.
SHORT_QUEUE = OutputConfig(queue_ms=200, watermark_ms=100)
REPORT_TO = "agent:job-1"
PRODUCER = "tts:job-1"
EPS = 1e-6


def pcm_for(config: OutputConfig, segment: str, seq: int) -> bytes:
    """A frame whose bytes say which frame it is (so a mix-up shows)."""
    tag = f"{segment}#{seq};".encode()
    n = config.frame_bytes
    return (tag * (n // len(tag) + 1))[:n]


@dataclass
class Write:
    frame: SinkFrame
    step: int
    cut_at: float | None = None

    @property
    def ends_at(self) -> float:
        return self.frame.play_at + self.frame.duration


@dataclass
class Harness:
    config: OutputConfig = SHORT_QUEUE
    now: float = 100.0
    state: PlayoutState = None  # type: ignore[assignment]
    timer_at: float | None = None
    #: Every sink operation in order: ("write", SinkFrame) or ("clear", now).
    sink_log: list[tuple[str, object]] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    #: (to, message) of every Send.
    sent: list[tuple[str, Message]] = field(default_factory=list)
    events: list[Emit] = field(default_factory=list)
    steps: int = 0
    #: The step of each sink clear.
    clear_steps: list[int] = field(default_factory=list)
    #: The kind of message each step handled.
    step_kinds: dict[int, str] = field(default_factory=dict)
    last_effects: list[Effect] = field(default_factory=list)
    #: What the next incarnation gets (the shell writes a step's last
    #: checkpoint before its other effects).
    checkpoint: object = None
    incarnations: int = 1

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = initial_state(self.config, REPORT_TO)

    # -- driving ------------------------------------------------------------

    def send(self, message: Message, sender: str | None = PRODUCER, *, crash_after_checkpoint: bool = False
             ) -> list[Effect]:
        """One step. ``crash_after_checkpoint``: the output dies once the
        step's checkpoint is written, before any other effect (then
        :meth:`crash`)."""
        self.state, effects = step(self.state, message, self.now, sender)
        self.steps += 1
        self.step_kinds[self.steps] = message.KIND
        self.last_effects = effects
        self._perform_all(effects, crash_after_checkpoint)
        if crash_after_checkpoint:
            self.crash()
        return effects

    def stop_and_start(self) -> list[Effect]:
        """The output is stopped (a hand-off, a restart of its tree) and the
        next incarnation starts from the last checkpoint."""
        effects = stop(self.state, self.now)
        self._perform_all(effects)
        return effects + self.crash()

    def crash(self) -> list[Effect]:
        """The output dies (its sink goes with it: what it had not played is
        cut) and its supervisor starts the next incarnation from the last
        checkpoint."""
        self._perform(SinkClear())
        self.timer_at = None
        self.incarnations += 1
        self.state = initial_state(self.config, REPORT_TO, self.checkpoint)
        effects = restart(self.state)
        self._perform_all(effects)
        return effects

    def _perform_all(self, effects: list[Effect], checkpoint_only: bool = False) -> None:
        saves = [e for e in effects if isinstance(e, SaveCheckpoint)]
        if saves:
            self.checkpoint = saves[-1].state
        if not checkpoint_only:
            for effect in effects:
                if not isinstance(effect, SaveCheckpoint):
                    self._perform(effect)

    def push(self, segment: str, seq: int, sender: str | None = PRODUCER) -> list[Effect]:
        return self.send(AudioFrame(segment=segment, seq=seq, pcm=pcm_for(self.config, segment, seq),
                                    sample_rate=self.config.sample_rate, channels=self.config.channels), sender)

    def push_chunk(self, segment: str, first: int, count: int, sender: str | None = PRODUCER, *,
                   crash_after_checkpoint: bool = False) -> list[Effect]:
        """Frames ``first`` .. ``first + count - 1`` as one message."""
        pcm = b"".join(pcm_for(self.config, segment, seq) for seq in range(first, first + count))
        return self.send(AudioFrame(segment=segment, seq=first, pcm=pcm, sample_rate=self.config.sample_rate,
                                    channels=self.config.channels), sender,
                         crash_after_checkpoint=crash_after_checkpoint)

    def flush(self, segment: str) -> list[Effect]:
        return self.send(FlushSegment(segment=segment))

    def pause(self) -> list[Effect]:
        return self.send(PausePlayback())

    def resume(self) -> list[Effect]:
        return self.send(ResumePlayback())

    def clear(self, segment: str | None = None) -> list[Effect]:
        return self.send(ClearBuffer(segment=segment))

    def advance(self, seconds: float) -> None:
        """Move the clock; the timer fires at its own time on the way."""
        target = self.now + seconds
        while self.timer_at is not None and self.timer_at <= target + EPS:
            self.now = max(self.now, self.timer_at)
            self.timer_at = None
            self.send(PlayoutTick(), sender=None)
        self.now = max(self.now, target)

    def _perform(self, effect: Effect) -> None:
        match effect:
            case SinkWrite(frames=frames):
                for frame in frames:
                    self.sink_log.append(("write", frame))
                    self.writes.append(Write(frame, self.steps))
            case SinkClear():
                self.sink_log.append(("clear", self.now))
                self.clear_steps.append(self.steps)
                for w in self.writes:
                    if w.cut_at is None and w.ends_at > self.now + EPS:
                        w.cut_at = self.now
            case Send(to=to, message=message):
                self.sent.append((to, message))
            case Emit():
                self.events.append(effect)
            case StartTimer(delay=delay, message=message):
                assert isinstance(message, PlayoutTick)
                self.timer_at = self.now + delay
            case CancelTimer():
                self.timer_at = None
            case Answer():
                pass
            case _:
                raise AssertionError(f"unexpected effect {effect!r}")

    # -- reading ------------------------------------------------------------

    def written(self, segment: str | None = None) -> list[tuple[str, int]]:
        return [(w.frame.segment, w.frame.seq) for w in self.writes if segment is None or w.frame.segment == segment]

    def written_seqs(self, segment: str) -> list[int]:
        return [w.frame.seq for w in self.writes if w.frame.segment == segment]

    def sink_ops(self) -> list[object]:
        """The sink log as ``seq`` numbers and ``"clear"`` markers."""
        return [op[1].seq if op[0] == "write" else "clear" for op in self.sink_log]  # type: ignore[union-attr]

    def reports(self, kind: type[Message]) -> list[Message]:
        return [m for to, m in self.sent if to == REPORT_TO and isinstance(m, kind)]

    def started(self, segment: str) -> list[PlaybackStarted]:
        return [m for m in self.reports(PlaybackStarted) if m.segment == segment]  # type: ignore[union-attr]

    def finished(self, segment: str) -> list[PlaybackFinished]:
        return [m for m in self.reports(PlaybackFinished) if m.segment == segment]  # type: ignore[union-attr]

    def to_producer(self, kind: type[Message]) -> list[Message]:
        return [m for to, m in self.sent if to == PRODUCER and isinstance(m, kind)]

    def refusals(self) -> list[FrameRefused]:
        return self.to_producer(FrameRefused)  # type: ignore[return-value]

    def writables(self) -> list[OutputWritable]:
        return self.to_producer(OutputWritable)  # type: ignore[return-value]

    def played_seconds(self, segment: str, by: float) -> float:
        """What the model sink fully played of ``segment`` by time ``by``."""
        played = [w for w in self.writes if w.frame.segment == segment
                  and w.ends_at <= by + EPS and (w.cut_at is None or w.ends_at <= w.cut_at + EPS)]
        return len(played) * self.config.frame_seconds
