"""The rules behind S39-S42 as properties over random interleavings of
push (one frame or a chunk of several) / flush / pause / resume / clear /
time passing (and a producer that sometimes gets its sequence wrong):

(a) whatever pause left behind is gone when a segment ends, interrupted or not;
(b) audio that was discarded is never counted as played;
(c) the sink receives each frame of a segment at most twice, and only in the
    S39 replay pattern;
(d) an interruption already handled never drops frames of the next segment;
and the memory bound: accepted-but-unplayed audio never exceeds the queue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.audio.machine import OutputConfig, SinkClear, SinkWrite
from actors.sessions.contracts.audio import (
    FrameFeed,
    FrameRefused,
    OutputWritable,
    PlaybackFinished,
)

from .harness import EPS, PRODUCER, Harness, pcm_for

ops = st.lists(
    st.one_of(
        # (push, right seq unless >= 8, the wrong seq, frames in the message)
        st.tuples(st.just("push"), st.integers(0, 9), st.integers(0, 12), st.integers(1, 4)),
        st.tuples(st.just("new-segment"), st.integers(0, 9)),
        st.tuples(st.just("flush"), st.integers(0, 3)),
        st.just(("pause",)),
        st.just(("resume",)),
        st.tuples(st.just("clear"), st.integers(0, 3)),
        st.tuples(st.just("time"), st.integers(0, 80)),
    ),
    max_size=60,
)

configs = st.sampled_from([
    OutputConfig(),
    OutputConfig(queue_ms=200, watermark_ms=100),
    OutputConfig(frame_ms=10, queue_ms=60, watermark_ms=30, sample_rate=16_000),
    OutputConfig(queue_ms=60, watermark_ms=60, max_live_segments=3, channels=2, sample_rate=8_000),
])


@dataclass
class Run:
    h: Harness
    segments: list[str] = field(default_factory=list)
    accepted: dict[str, set[int]] = field(default_factory=dict)
    #: segment -> the step that finished it, and whether a clear did.
    finished_by: dict[str, tuple[int, bool]] = field(default_factory=dict)
    stale_clear_steps: list[int] = field(default_factory=list)

    def do(self, op: tuple) -> None:
        h = self.h
        kind = op[0]
        before_pushed = h.state.counters["pushed"]
        target: str | None = None
        if kind in ("push", "new-segment"):
            if kind == "new-segment" or not self.segments:
                self.segments.append(f"s{len(self.segments)}")
            sid = self.segments[-1]
            live = h.state.live.get(sid)
            expected = live.next_seq if live is not None else 0
            seq = expected if op[1] < 8 or kind == "new-segment" else op[2]  # mostly right, sometimes not
            chunk = op[3] if kind == "push" else 1
            h.push_chunk(sid, seq, chunk)
            taken = h.state.counters["pushed"] - before_pushed
            assert taken <= chunk
            # A chunk is taken from its first frame on, as far as it fits.
            if taken:
                self.accepted.setdefault(sid, set()).update(range(seq, seq + taken))
        elif kind == "flush":
            if self.segments:
                h.flush(self.segments[max(0, len(self.segments) - 1 - op[1])])
        elif kind == "pause":
            h.pause()
        elif kind == "resume":
            h.resume()
        elif kind == "clear":
            if op[1] == 0 or not self.segments:
                head = h.state.head
                target = head.id if head is not None else None
                h.clear()
            else:
                target = self.segments[max(0, len(self.segments) - op[1])]
                live_before = target in h.state.live
                h.clear(target)
                if not live_before:
                    target = None
            if target is None:
                self.stale_clear_steps.append(h.steps)
        elif kind == "time":
            h.advance(op[1] / 1000)
        self.check_step(target)

    def check_step(self, cleared: str | None) -> None:
        h, state = self.h, self.h.state
        assert state.buffered <= state.config.capacity_frames
        assert len(state.live) <= state.config.max_live_segments
        for to, m in h.sent:
            if isinstance(m, PlaybackFinished) and m.segment not in self.finished_by:
                self.finished_by[m.segment] = (h.steps, m.segment == cleared)
                # (b): the position is what the sink really played, no more
                assert abs(m.position - h.played_seconds(m.segment, h.now)) < EPS, m
                distinct = len(set(h.written_seqs(m.segment)))
                assert m.position <= distinct * state.config.frame_seconds + EPS
        # (a): nothing of a finished segment is kept, queued, or written later
        ended = set(self.finished_by)
        assert not [f for f in state.waiting if f.segment in ended]
        assert not [f for f in state.queue if f.segment in ended]
        for w in h.writes:
            if w.frame.segment in ended:
                assert w.step <= self.finished_by[w.frame.segment][0]

    def drain(self) -> None:
        h = self.h
        h.resume()
        for sid in list(h.state.live):
            h.flush(sid)
        h.advance(10.0)
        self.check_step(None)
        assert not h.state.live and h.state.buffered == 0


def check_replay_pattern(h: Harness, run: Run) -> None:
    """(c) per segment: first writes in order 0, 1, 2...; a second write of
    a frame only in a resume step, as one ascending run of frames that a
    clear of the sink had cut; never a third."""
    counts = Counter((w.frame.segment, w.frame.seq) for w in h.writes)
    assert max(counts.values(), default=0) <= 2
    cut: set[tuple[str, int]] = set()
    high: dict[str, int] = {}
    last_replay: dict[str, tuple[int, int]] = {}
    log_steps = iter(h.writes)
    for op, value in h.sink_log:
        if op == "clear":
            cut |= {(w.frame.segment, w.frame.seq) for w in h.writes if w.cut_at == value}
            continue
        w = next(log_steps)
        sid, seq = value.segment, value.seq  # type: ignore[union-attr]
        if seq == high.get(sid, -1) + 1:
            high[sid] = seq
            continue
        assert (sid, seq) in cut, f"{sid}#{seq} written again without having been cut"
        assert h.step_kinds[w.step] == "audio.resume", f"replay of {sid}#{seq} outside a resume"
        prev = last_replay.get(sid)
        if prev is not None and prev[0] == w.step:
            assert seq == prev[1] + 1, "a replay is one ascending run"
        last_replay[sid] = (w.step, seq)


@settings(max_examples=300, deadline=None)
@given(config=configs, script=ops)
def test_rules_hold_over_random_interleavings(config: OutputConfig, script: list[tuple]) -> None:
    run = Run(Harness(config=config))
    h = run.h
    for op in script:
        run.do(op)
    run.drain()
    check_replay_pattern(h, run)
    # (d): a segment ends interrupted only by a clear of that very segment;
    # every other segment had each accepted frame written and played out.
    for sid in run.segments:
        finished = h.finished(sid)
        if sid not in run.accepted and not finished:
            continue  # never existed (all its frames were refused)
        assert len(finished) == 1, sid
        _, by_clear = run.finished_by[sid]
        if finished[0].interrupted:
            assert by_clear, f"{sid} interrupted by a clear meant for another segment"
        else:
            assert set(h.written_seqs(sid)) >= run.accepted.get(sid, set()), f"frames of {sid} dropped"
    # A stale clear touched nothing: it finished no segment, cleared no sink.
    stale = set(run.stale_clear_steps)
    assert not stale & {step for step, _ in run.finished_by.values()}
    assert not stale & set(h.clear_steps)


def test_a_stale_clear_has_no_effect_but_an_event() -> None:
    h = Harness()
    h.push("A", 0)
    h.clear("A")
    h.push("B", 0)
    effects = h.clear("A")
    assert not [e for e in effects if isinstance(e, SinkClear | SinkWrite)]
    assert [e.event for e in effects if hasattr(e, "event")] == ["audio-clear-ignored"]


@settings(max_examples=150, deadline=None)
@given(config=configs, frames=st.integers(1, 60), delays=st.lists(st.integers(0, 400), min_size=1, max_size=50),
       pause_at=st.one_of(st.none(), st.integers(0, 30)))
def test_a_producer_that_keeps_to_its_window_is_never_refused_and_never_stalls(
        config: OutputConfig, frames: int, delays: list[int], pause_at: int | None) -> None:
    """The flow-control protocol end to end: a FrameFeed that reacts to the
    output after random delays (its replies lag, the queue may drain dry)
    gets every frame played, once, with no refusal."""
    h = Harness(config=config)
    feed = FrameFeed(config.sample_rate, config.channels, credit=config.capacity_frames)
    feed.add("A", (pcm_for(config, "A", i) for i in range(frames)), flush=True)
    seen = 0
    for rounds in range(10_000):
        for message in feed.take():
            h.send(message)
        if rounds == pause_at:
            h.pause()
            h.advance(0.05)
            h.resume()
        h.advance((1 + delays[rounds % len(delays)]) / 1000)
        replies = [m for to, m in h.sent[seen:] if to == PRODUCER]
        seen = len(h.sent)
        for reply in replies:
            if isinstance(reply, OutputWritable):
                feed.on_writable(reply)
            elif isinstance(reply, FrameRefused):
                feed.on_refused(reply)
        if h.finished("A"):
            break
    assert h.finished("A") and not h.finished("A")[0].interrupted
    assert h.refusals() == []
    assert sorted(set(h.written_seqs("A"))) == list(range(frames))


crash_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 4)),
        st.just(("new-segment",)),
        st.just(("flush",)),
        st.just(("pause",)),
        st.just(("resume",)),
        st.just(("clear",)),
        st.tuples(st.just("time"), st.integers(0, 80)),
        # The output dies between two steps (False), or inside the next
        # push once that step's checkpoint is written, before anything
        # else it wanted is done (True).
        st.tuples(st.just("crash"), st.booleans()),
        # It is stopped, and started again at its address (a hand-off).
        st.just(("stop",)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(config=configs, script=crash_ops)
def test_every_started_segment_is_finished_once_across_crashes(config: OutputConfig, script: list[tuple]) -> None:
    """A reporter told a segment started is told it finished exactly once,
    by the output (also when it is stopped) or, after a crash, by the next
    incarnation at its address; no segment is finished twice; a position
    never counts more than the sink played."""
    h = Harness(config=config)
    segments = ["s0"]
    for op in script:
        kind = op[0]
        if kind == "new-segment":
            segments.append(f"s{len(segments)}")
        elif kind in ("push", "crash"):
            if kind == "crash" and not op[1]:
                h.crash()
                continue
            sid = segments[-1]
            live = h.state.live.get(sid)
            h.push_chunk(sid, live.next_seq if live is not None else 0, op[1] if kind == "push" else 1,
                         crash_after_checkpoint=kind == "crash")
        elif kind == "flush":
            h.flush(segments[-1])
        elif kind == "pause":
            h.pause()
        elif kind == "resume":
            h.resume()
        elif kind == "clear":
            h.clear()
        elif kind == "time":
            h.advance(op[1] / 1000)
        elif kind == "stop":
            h.stop_and_start()
    h.resume()
    for sid in list(h.state.live):
        h.flush(sid)
    h.advance(10.0)
    assert not h.state.live
    for sid in segments:
        started, finished = h.started(sid), h.finished(sid)
        assert len(started) <= 1 and len(finished) <= 1, sid
        assert len(finished) == len(started) or (finished and finished[0].position == 0.0), sid
        if finished:
            assert finished[0].position <= h.played_seconds(sid, h.now) + EPS, sid
