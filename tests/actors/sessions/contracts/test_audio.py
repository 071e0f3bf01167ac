"""The audio contract's producer side (FrameFeed) and helpers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sessions.audio.machine import OutputConfig
from actors.sessions.contracts.audio import (
    MAX_CHUNK_BYTES,
    OUT_OF_SEQUENCE,
    QUEUE_FULL,
    SEGMENT_FINISHED,
    AudioFrame,
    FrameFeed,
    FrameRefused,
    OutputWritable,
    frame_bytes,
    output_address,
)
from actors.sessions.contracts import audio
from bus.address import InvalidAddress
from bus.envelope import Codec, Envelope

from tests.kinds import round_trips, secrets_declared_and_hidden


def sent(messages: list) -> list[tuple[str, int | str]]:
    """Each frame sent, in order (the frames here are one byte long, so a
    chunk of n bytes is n frames), and each flush."""
    out: list[tuple[str, int | str]] = []
    for m in messages:
        if isinstance(m, AudioFrame):
            out += [(m.segment, m.seq + i) for i in range(len(m.pcm))]
        else:
            out.append((m.segment, "flush"))
    return out


def shapes(messages: list) -> list[tuple[str, int, int] | tuple[str, str]]:
    """(segment, first seq, frames) per chunk; (segment, "flush") per flush."""
    return [(m.segment, m.seq, len(m.pcm)) if isinstance(m, AudioFrame) else (m.segment, "flush") for m in messages]


def feed_of(*segments: tuple[str, int], credit: int = 3) -> FrameFeed:
    feed = FrameFeed(48_000, 1, credit=credit)
    for sid, n in segments:
        feed.add(sid, (bytes([i]) for i in range(n)), flush=True)
    return feed


def test_take_sends_no_more_than_the_credit() -> None:
    feed = feed_of(("A", 5))
    assert sent(feed.take()) == [("A", 0), ("A", 1), ("A", 2)]
    assert feed.take() == []
    assert feed.pending == 3  # two frames and the flush


def test_consecutive_frames_go_as_one_chunk_cut_at_a_segment_a_flush_or_the_credit() -> None:
    feed = feed_of(("A", 3), ("B", 4), credit=6)
    chunks = feed.take()
    assert shapes(chunks) == [("A", 0, 3), ("A", "flush"), ("B", 0, 3)]
    assert chunks[0].pcm == bytes([0, 1, 2])  # the frames back to back, in order
    feed.on_writable(OutputWritable(segment="B", next_seq=3, room_frames=5))
    assert shapes(feed.take()) == [("B", 3, 1), ("B", "flush")]


def test_a_window_at_the_largest_format_goes_as_chunks_the_codec_takes() -> None:
    config = OutputConfig(sample_rate=192_000, channels=8)  # 61,440 bytes a frame, a 500 ms queue
    feed = FrameFeed(config.sample_rate, config.channels, credit=config.capacity_frames)
    feed.add("A", [bytes([i]) * config.frame_bytes for i in range(config.capacity_frames)])
    chunks = feed.take()
    assert len(chunks) > 1 and all(len(c.pcm) <= MAX_CHUNK_BYTES for c in chunks)
    assert [c.seq for c in chunks] == list(itertools.accumulate([0] + [len(c.pcm) // config.frame_bytes
                                                                       for c in chunks[:-1]]))
    assert b"".join(c.pcm for c in chunks) == b"".join(bytes([i]) * config.frame_bytes
                                                       for i in range(config.capacity_frames))
    codec = Codec()
    for chunk in chunks:  # each one an envelope within the limit
        assert codec.decode(codec.encode(Envelope(to="audio:j/o", message=chunk))).message == chunk


def test_writable_grants_room_and_rewinds_to_what_the_output_expects() -> None:
    feed = feed_of(("A", 5), ("B", 1))
    feed.take()
    feed.on_writable(OutputWritable(segment="A", next_seq=3, room_frames=5))
    assert sent(feed.take()) == [("A", 3), ("A", 4), ("A", "flush"), ("B", 0), ("B", "flush")]
    assert feed.pending == 0


def test_a_refusal_stops_the_feed_and_rewinds_it() -> None:
    feed = feed_of(("A", 5), credit=5)
    feed.take()
    feed.on_refused(FrameRefused(segment="A", seq=2, reason=QUEUE_FULL, next_seq=2, retry_after=0.02))
    feed.on_refused(FrameRefused(segment="A", seq=3, reason=OUT_OF_SEQUENCE, next_seq=2))
    assert feed.take() == []
    feed.on_writable(OutputWritable(segment="A", next_seq=2, room_frames=2))
    assert sent(feed.take()) == [("A", 2), ("A", 3)]


def test_a_segment_the_output_will_not_take_is_dropped() -> None:
    feed = feed_of(("A", 2), ("B", 1), credit=2)
    assert sent(feed.take()) == [("A", 0), ("A", 1), ("A", "flush")]
    feed.on_refused(FrameRefused(segment="A", seq=1, reason=SEGMENT_FINISHED, next_seq=0))
    feed.on_writable(OutputWritable(segment="B", next_seq=0, room_frames=10))
    assert sent(feed.take()) == [("B", 0), ("B", "flush")]


def test_a_repeated_grant_counts_the_frames_in_flight() -> None:
    feed = feed_of(("A", 20), credit=4)
    feed.take()  # 0-3 in flight
    feed.on_writable(OutputWritable(segment="A", next_seq=1, room_frames=5))  # 1-3 still in flight
    assert sent(feed.take()) == [("A", 4), ("A", 5)]
    feed.on_writable(OutputWritable(segment="A", next_seq=1, room_frames=5))  # the same grant again
    assert feed.take() == []


def test_a_writable_for_a_segment_no_longer_held_changes_only_the_credit() -> None:
    feed = feed_of(("B", 2), credit=0)
    feed.on_writable(OutputWritable(segment="A", next_seq=9, room_frames=1))
    assert sent(feed.take()) == [("B", 0)]


def test_addresses_and_frame_sizes() -> None:
    assert output_address("m-42", "agent") == "audio:m-42/agent"
    with pytest.raises(InvalidAddress):
        output_address("m 42", "agent")
    assert frame_bytes(48_000, 1, 20) == 1920
    assert frame_bytes(16_000, 2, 10) == 640


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_kind_goes_through_the_codec_unchanged(data: st.DataObject) -> None:
    round_trips(data, audio)


def test_no_audio_message_holds_a_secret() -> None:
    assert secrets_declared_and_hidden(audio) == []


def _exchange(feed: FrameFeed, state, now: float) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    """Run the feed against a playout core until the feed has nothing to
    send; returns the state and how many messages the feed sent."""
    from actors.runtime.effects import Send
    from actors.sessions.audio import machine

    sent_count = 0
    for _ in range(100):
        messages = feed.take()
        if not messages:
            return state, sent_count
        sent_count += len(messages)
        for message in messages:
            state, effects = machine.step(state, message, now, "tts:p")
            for effect in effects:
                if isinstance(effect, Send) and effect.to == "tts:p":
                    if isinstance(effect.message, FrameRefused):
                        feed.on_refused(effect.message)
                    elif isinstance(effect.message, OutputWritable):
                        feed.on_writable(effect.message)
    raise AssertionError("the feed and the output never stopped talking")


def test_after_the_output_restarts_mid_segment_the_feed_gives_that_segment_up_once_and_goes_on() -> None:
    from actors.runtime.effects import Send
    from actors.sessions.audio import machine

    config = OutputConfig(sample_rate=16_000, queue_ms=200, watermark_ms=100)
    pcm = b"\x01\x00" * (config.frame_bytes // 2)
    feed = FrameFeed(config.sample_rate, config.channels, credit=config.capacity_frames)
    feed.add("A", [pcm] * 30, flush=True)
    feed.add("B", [pcm] * 3, flush=True)
    first = machine.initial_state(config, "agent:r")
    first, _ = _exchange(feed, first, now=0.0)
    assert first.live["A"].next_seq == 10  # took its queue's worth
    feed.on_writable(OutputWritable(segment="A", next_seq=10, room_frames=5))  # as it tells 100 ms on
    in_flight = feed.take()
    assert [m.seq for m in in_flight] == [10]

    # It reaches a new incarnation (after a crash, a broken sink), which
    # knows nothing of A: it refuses, expecting A from its first frame.
    second = machine.initial_state(config, "agent:r")
    for message in in_flight:
        second, effects = machine.step(second, message, 1.0, "tts:p")
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, FrameRefused):
                feed.on_refused(effect.message)
            elif isinstance(effect, Send) and isinstance(effect.message, OutputWritable):
                feed.on_writable(effect.message)
    second, messages = _exchange(feed, second, now=1.0)  # (before: A again and again, at once, for good)
    assert messages == 2  # B and its flush: A is not sent again
    assert feed.lost == ["A"]  # given up: its frames from 0 were forgotten as taken
    assert list(second.live) == ["B"] and second.live["B"].next_seq == 3
