"""The playout core, driven directly: scenarios S39, S40, S41 and S42
(docs/scenarios.md) and the rules of docs/protocol.md §4."""

from __future__ import annotations

import pytest

from actors.sessions.audio.machine import CHECKPOINT_FINISHED, MAX_SEGMENT_ID, OutputConfig, SinkClear, SinkWrite
from actors.sessions.contracts.audio import (
    BAD_FORMAT,
    BAD_SEGMENT,
    OUT_OF_SEQUENCE,
    QUEUE_FULL,
    SEGMENT_CLOSED,
    SEGMENT_FINISHED,
    TOO_MANY_SEGMENTS,
    AudioFrame,
    OutputStatus,
    OutputStatusRequest,
    PlaybackFinished,
)
from actors.runtime.effects import Answer

from .harness import PRODUCER, Harness, pcm_for

FRAME = 0.02


def ten_frames_then_100ms_played(h: Harness, segment: str = "A") -> None:
    for seq in range(10):
        h.push(segment, seq)
    h.advance(0.1)  # frames 0-4 have played; 5-9 (100 ms) are still queued


# -- chunks: several frames in one message -------------------------------------


def test_a_chunk_is_taken_as_its_frames_in_one_sink_write_with_slots_back_to_back() -> None:
    h = Harness()
    effects = h.push_chunk("A", 0, 4)
    writes = [e for e in effects if isinstance(e, SinkWrite)]
    assert len(writes) == 1 and [f.seq for f in writes[0].frames] == [0, 1, 2, 3]
    assert [f.pcm for f in writes[0].frames] == [pcm_for(h.config, "A", seq) for seq in range(4)]
    starts = [f.play_at for f in writes[0].frames]
    assert [t - starts[0] for t in starts] == pytest.approx([i * FRAME for i in range(4)])
    assert h.state.counters["pushed"] == 4
    h.push("A", 4)  # the next frame continues the sequence
    assert h.written_seqs("A") == [0, 1, 2, 3, 4]
    assert h.refusals() == []


def test_of_a_chunk_longer_than_the_room_the_frames_that_fit_are_taken_and_the_rest_refused() -> None:
    h = Harness()  # a 10-frame queue
    h.push_chunk("A", 0, 7)
    h.push_chunk("A", 7, 6)  # 3 fit: 7, 8, 9; 10-12 refused
    assert h.written_seqs("A") == list(range(10))
    [refused] = h.refusals()
    assert (refused.reason, refused.seq, refused.next_seq) == (QUEUE_FULL, 10, 10)
    assert h.state.counters["pushed"] == 10 and h.state.counters[f"refused:{QUEUE_FULL}"] == 1
    # The producer is told when room opens, from the first frame not taken.
    h.advance(0.1)
    [writable] = h.writables()
    assert writable.next_seq == 10 and writable.room_frames >= 5
    h.push_chunk("A", 10, 3)
    assert h.written_seqs("A") == list(range(13))


@pytest.mark.parametrize("frames", [0.0, 0.5, 1.5], ids=["empty", "half a frame", "a frame and a half"])
def test_a_chunk_of_no_whole_frames_is_refused_for_its_format_and_nothing_is_taken(frames: float) -> None:
    h = Harness()
    pcm = (pcm_for(h.config, "A", 0) * 2)[: int(h.config.frame_bytes * frames)]
    h.send(AudioFrame(segment="A", seq=0, pcm=pcm, sample_rate=h.config.sample_rate, channels=h.config.channels))
    assert [r.reason for r in h.refusals()] == [BAD_FORMAT]
    assert h.written() == [] and h.state.counters["pushed"] == 0


# -- S39, S40, S42 -------------------------------------------------------------


def test_s39_pause_keeps_the_unplayed_frames_and_resume_replays_them_first() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.pause()
    h.resume()
    h.push("A", 10)
    assert h.sink_ops() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "clear", 5, 6, 7, 8, 9, 10]
    # The replayed frames start at once, back to back, then frame 10.
    replay = [op[1] for op in h.sink_log[11:]]
    assert replay[0].play_at == pytest.approx(h.now)
    assert [f.play_at - replay[0].play_at for f in replay] == pytest.approx([i * FRAME for i in range(6)])


def test_s40_a_real_interruption_before_resume_plays_every_frame_once() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.pause()
    h.clear()
    h.resume()
    # After a handled interruption the next frame is the next reply's.
    h.push("B", 0)
    assert h.written() == [("A", s) for s in range(10)] + [("B", 0)]
    assert h.finished("A") == [PlaybackFinished(segment="A", position=pytest.approx(0.1), interrupted=True)]
    # Its position is what the sink really played, not what was pushed.
    assert h.finished("A")[0].position == pytest.approx(h.played_seconds("A", h.now))


def test_s40_pause_with_nothing_queued_replays_nothing() -> None:
    h = Harness()
    for seq in range(3):
        h.push("A", seq)
    h.advance(0.1)  # all three have played
    h.pause()
    h.resume()
    h.push("A", 3)
    assert h.sink_ops() == [0, 1, 2, 3]


def test_s42_pause_and_resume_mid_segment_sends_playback_started_once() -> None:
    h = Harness()
    for seq in range(5):
        h.push("A", seq)
    h.advance(0.05)  # mid segment: 2 played, one half played, 2 queued
    h.pause()
    h.advance(0.3)
    h.resume()
    h.push("A", 5)
    h.flush("A")
    h.advance(1.0)
    assert len(h.started("A")) == 1
    assert [e.event for e in h.events].count("playback-started") == 1
    assert h.finished("A") == [PlaybackFinished(segment="A", position=pytest.approx(0.12), interrupted=False)]


def test_s42_flapping_pause_and_resume_still_starts_once() -> None:
    h = Harness()
    h.push("A", 0)
    h.push("A", 1)
    h.advance(0.01)
    for _ in range(3):
        h.pause()
        h.resume()
    h.push("A", 2)
    h.flush("A")
    h.advance(1.0)
    assert len(h.started("A")) == 1
    # Frames replayed once and paused again are not written a third time.
    assert h.sink_ops() == [0, 1, "clear", 0, 1, "clear", 2]
    assert h.finished("A")[0].position == pytest.approx(h.played_seconds("A", h.now)) == pytest.approx(0.02)


# -- the rules ------------------------------------------------------------------


def test_position_played_is_pushed_minus_still_queued() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.advance(0.03)  # one more frame ended, the next is half played
    h.clear()
    assert h.finished("A")[0].position == pytest.approx(0.12)


def test_segment_end_drops_what_was_kept_so_it_never_leaks_into_the_next_utterance() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.flush("A")
    h.pause()  # 5-9 kept
    h.clear("A")  # the segment ends while its frames are kept
    h.resume()
    h.push("B", 0)
    h.flush("B")
    h.advance(1.0)
    assert h.written("A") == [("A", s) for s in range(10)]  # nothing of A after the clear
    assert h.finished("B") == [PlaybackFinished(segment="B", position=pytest.approx(0.02), interrupted=False)]
    assert h.state.waiting == type(h.state.waiting)() and not h.state.queue


def test_a_flushed_segment_waits_for_resume_before_it_finishes() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.flush("A")
    h.pause()
    h.advance(5.0)
    assert h.finished("A") == []
    h.resume()
    h.advance(0.1)
    assert h.finished("A") == [PlaybackFinished(segment="A", position=pytest.approx(0.2), interrupted=False)]


def test_a_handled_interruption_never_drops_the_next_replys_frames() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.clear("A")
    h.push("B", 0)
    h.clear("A")  # the same interruption, delivered twice (or late)
    h.clear("A")
    h.push("B", 1)
    h.flush("B")
    h.advance(1.0)
    assert h.written("B") == [("B", 0), ("B", 1)]
    assert h.finished("B") == [PlaybackFinished(segment="B", position=pytest.approx(0.04), interrupted=False)]
    assert h.state.counters["clear-stale"] == 2


def test_a_clear_with_nothing_playing_sets_no_flag_for_the_next_reply() -> None:
    h = Harness()
    h.clear()
    h.push("A", 0)
    h.flush("A")
    h.advance(1.0)
    assert h.finished("A") == [PlaybackFinished(segment="A", position=pytest.approx(0.02), interrupted=False)]


def test_a_clear_names_one_segment_and_leaves_the_next_one_alone() -> None:
    h = Harness()
    for seq in range(4):
        h.push("A", seq)
    for seq in range(3):
        h.push("B", seq)  # closes A; waits behind it
    h.advance(0.03)
    h.clear()  # the one playing: A
    h.flush("B")
    h.advance(1.0)
    assert h.finished("A")[0].interrupted is True
    assert h.written("B") == [("B", 0), ("B", 1), ("B", 2)]
    assert h.finished("B")[0].interrupted is False
    assert h.started("B") and h.reports(PlaybackFinished)[0].segment == "A"


def test_late_frames_of_an_interrupted_segment_are_refused() -> None:
    h = Harness()
    h.push("A", 0)
    h.clear()
    h.push("A", 1)
    assert [r.reason for r in h.refusals()] == [SEGMENT_FINISHED]
    assert h.written() == [("A", 0)]


def test_discarded_audio_is_never_counted_as_played() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.pause()
    h.advance(1.0)  # time passes while paused: nothing plays
    h.clear()
    assert h.finished("A")[0].position == pytest.approx(0.1)
    assert h.state.counters["discarded"] == 5


def test_a_frame_is_replayed_at_most_once() -> None:
    h = Harness()
    ten_frames_then_100ms_played(h)
    h.pause()
    h.resume()  # 5-9 written again
    h.push("A", 10)
    h.advance(0.03)  # 5 played, 6 half played
    h.pause()  # 6-9 were replayed already: discarded; 10 kept
    h.resume()
    assert h.sink_ops() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "clear", 5, 6, 7, 8, 9, 10, "clear", 10]
    assert h.state.counters["replay-dropped"] == 4
    assert any(e.event == "audio-replay-dropped" for e in h.events)


def test_an_empty_flushed_segment_finishes_at_zero_in_its_turn() -> None:
    h = Harness()
    h.push("A", 0)
    h.flush("E")
    assert h.finished("E") == []  # A plays first
    h.advance(0.02)
    assert h.finished("A") and h.finished("E") == [PlaybackFinished(segment="E", position=0.0, interrupted=False)]
    assert h.started("E") == []


# -- back-pressure ------------------------------------------------------------------


def test_a_producer_faster_than_real_time_is_refused_and_told_when_to_go_on() -> None:
    h = Harness()
    for seq in range(30):  # a burst: 600 ms into a 200 ms queue
        h.push("A", seq)
    assert h.state.buffered == 10
    refused = h.refusals()
    assert refused[0].reason == QUEUE_FULL and refused[0].next_seq == 10
    assert refused[0].retry_after == pytest.approx(0.02)
    assert {r.reason for r in refused[1:]} == {OUT_OF_SEQUENCE} and {r.next_seq for r in refused} == {10}
    # Told its window once, at its first frame (it had sent the rest already).
    assert [(w.next_seq, w.room_frames) for w in h.writables()] == [(1, 9)]
    h.advance(0.08)
    assert len(h.writables()) == 1
    h.advance(0.02)  # the watermark: 100 ms free
    writable = h.writables()[-1]
    assert (writable.segment, writable.next_seq, writable.room_frames) == ("A", 10, 5)
    # One refusal event per segment and reason, however long the flood.
    assert [e.reason for e in h.events if e.event == "audio-refused"] == [QUEUE_FULL, OUT_OF_SEQUENCE]


def test_a_producer_that_follows_writable_is_never_refused() -> None:
    h = Harness()
    seq = 0
    credit = h.config.capacity_frames
    for _ in range(40):
        for _ in range(credit):
            h.push("A", seq)
            seq += 1
        credit = 0
        h.advance(0.02)
        for w in h.writables()[-1:]:
            credit, seq = w.room_frames, w.next_seq
        h.sent = [(to, m) for to, m in h.sent if to != PRODUCER]
    assert h.state.counters["refused:queue-full"] == 0
    assert seq > 30 and h.state.buffered <= h.config.capacity_frames


def test_memory_stays_bounded_while_paused() -> None:
    h = Harness()
    h.push("A", 0)
    h.pause()
    for seq in range(1, 100):
        h.push("A", seq)
    assert h.state.buffered == h.config.capacity_frames
    assert h.refusals()[0].retry_after is None  # paused: wait to be told


def test_bad_input_is_refused_with_a_reason_counted_and_published() -> None:
    h = Harness()
    cfg = h.config
    h.send(AudioFrame(segment="A", seq=0, pcm=b"\0" * 10, sample_rate=cfg.sample_rate, channels=cfg.channels))
    h.send(AudioFrame(segment="A", seq=0, pcm=b"\0" * cfg.frame_bytes, sample_rate=16_000, channels=cfg.channels))
    h.push("", 0)
    h.push("x" * (MAX_SEGMENT_ID + 1), 0)
    h.push("A", 3)
    h.push("A", 0)
    h.flush("A")
    h.push("A", 1)
    assert [r.reason for r in h.refusals()] == [BAD_FORMAT, BAD_FORMAT, BAD_SEGMENT, BAD_SEGMENT, OUT_OF_SEQUENCE,
                                               SEGMENT_CLOSED]
    assert h.state.counters["refused:bad-format"] == 2
    assert {e.reason for e in h.events if e.event == "audio-refused"} >= {BAD_FORMAT, BAD_SEGMENT, SEGMENT_CLOSED}
    assert h.written() == [("A", 0)]


def test_live_segments_are_bounded() -> None:
    h = Harness(config=OutputConfig(max_live_segments=2))
    h.push("A", 0)
    h.pause()
    h.flush("B")
    h.flush("C")
    h.push("D", 0)
    assert [r.reason for r in h.refusals()] == [TOO_MANY_SEGMENTS, TOO_MANY_SEGMENTS]


def test_finished_segment_ids_are_remembered_within_a_bound() -> None:
    h = Harness(config=OutputConfig(remembered_segments=3))
    for i in range(10):
        h.push(f"s{i}", 0)
        h.clear()
    assert list(h.state.finished) == ["s7", "s8", "s9"]


def test_frame_lengths_follow_the_format() -> None:
    assert OutputConfig(sample_rate=48_000, channels=2, frame_ms=10).frame_bytes == 1920
    assert OutputConfig(sample_rate=16_000, channels=1, frame_ms=20).frame_bytes == 640
    assert OutputConfig(frame_ms=10).capacity_frames == 50  # the default queue: 500 ms
    assert OutputConfig(frame_ms=10).watermark_frames == 25
    for bad in ({"frame_ms": 30}, {"sample_rate": 44_100, "frame_ms": 10, "queue_ms": 100} | {"sample_rate": 11_025},
                {"channels": 0}, {"queue_ms": 50}, {"watermark_ms": 1200}, {"queue_ms": 200, "watermark_ms": 300}):
        with pytest.raises(ValueError):
            OutputConfig(**bad)


def test_status_answers_with_a_snapshot() -> None:
    h = Harness()
    h.push("A", 0)
    effects = h.send(OutputStatusRequest())
    (answer,) = [e for e in effects if isinstance(e, Answer)]
    status = answer.value
    assert isinstance(status, OutputStatus)
    assert (status.playing, status.queued_frames, status.paused) == ("A", 1, False)
    assert status.counters["pushed"] == 1


def test_only_the_first_write_and_a_clear_reach_the_sink() -> None:
    h = Harness()
    effects = h.push("A", 0)
    assert [type(e) for e in effects if isinstance(e, SinkWrite | SinkClear)] == [SinkWrite]
    assert h.pause() and isinstance(h.last_effects[0], SinkClear)
    assert not [e for e in h.pause() if isinstance(e, SinkClear)]  # paused twice: nothing more


def test_a_restart_remembers_the_newest_finished_segments_within_the_checkpoints_bound() -> None:
    h = Harness()
    for i in range(CHECKPOINT_FINISHED + 8):
        h.push(f"s{i}", 0)
        h.flush(f"s{i}")
        h.advance(0.1)
    assert len(h.finished("s0")) == 1
    assert h.crash() == []  # nothing was playing: nothing to finish
    newest, forgotten = f"s{CHECKPOINT_FINISHED + 7}", "s7"
    h.push(newest, 0)
    assert [(r.segment, r.reason) for r in h.refusals()] == [(newest, SEGMENT_FINISHED)]
    h.push(forgotten, 0)  # older than the bound: a new segment to this incarnation
    assert h.state.head is not None and h.state.head.id == forgotten


def test_a_stopped_output_finishes_the_playing_segment_at_what_played_and_leaves_its_successor_nothing() -> None:
    h = Harness()
    for seq in range(5):
        h.push("A", seq)
    h.push("B", 0)  # waiting behind A: never started
    h.advance(0.04)
    effects = h.stop_and_start()
    [finished] = h.finished("A")
    assert finished.interrupted and finished.position == pytest.approx(0.04)
    assert [e.reason for e in effects if hasattr(e, "reason")] == ["interrupted"]  # none "output-restarted"
    assert h.finished("B") == [] and h.checkpoint == {"started": None, "finished": ["A"]}
    h.push("A", 5)
    assert [(r.segment, r.reason) for r in h.refusals()] == [("A", SEGMENT_FINISHED)]
