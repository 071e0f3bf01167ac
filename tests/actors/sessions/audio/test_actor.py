"""The audio output's shell through the test kit: envelopes into its
mailbox, the manual clock, a recording sink, what it sends and publishes."""

from __future__ import annotations

import threading

import pytest

from actors.sessions.audio.actor import AudioOutput
from actors.sessions.audio.machine import OutputConfig, SinkFailed
from actors.sessions.contracts.audio import (
    BAD_FORMAT,
    QUEUE_FULL,
    SEGMENT_FINISHED,
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
    output_address,
)
from actors.runtime.supervisor import ChildSpec
from actors.runtime.testkit import TestKit

from .conftest import Sinks, speaker
from .harness import SHORT_QUEUE, pcm_for

OUTPUT = output_address("job-1", "agent")
REPORT_TO = "agent:job-1"
PRODUCER = "tts:job-1"
CONFIG = SHORT_QUEUE


def frame(segment: str, seq: int, config: OutputConfig = CONFIG) -> AudioFrame:
    return AudioFrame(segment=segment, seq=seq, pcm=pcm_for(config, segment, seq), sample_rate=config.sample_rate,
                      channels=config.channels)


@pytest.fixture
def kit():
    with TestKit() as kit:
        yield kit


def start(kit: TestKit, sinks: Sinks, **kwargs) -> AudioOutput:
    kwargs.setdefault("config", CONFIG)
    return kit.spawn(OUTPUT, AudioOutput, report_to=REPORT_TO, sink=sinks, **kwargs)


def test_s39_through_the_mailbox(kit: TestKit) -> None:
    reporter = kit.probe(REPORT_TO)
    sinks = Sinks()
    start(kit, sinks)
    for seq in range(10):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    kit.advance(0.1)
    kit.inject_message(OUTPUT, PausePlayback())
    kit.inject_message(OUTPUT, ResumePlayback())
    kit.inject_message(OUTPUT, frame("A", 10), sender=PRODUCER)
    kit.settle()
    assert sinks.last.ops() == [("A", s) for s in range(10)] + ["clear"] + [("A", s) for s in range(5, 11)]
    assert reporter.expect_message(PlaybackStarted)[0] == PlaybackStarted(segment="A")
    reporter.expect_no_message(PlaybackStarted)


def test_the_playout_timer_finishes_a_flushed_segment_and_reports_it(kit: TestKit) -> None:
    reporter = kit.probe(REPORT_TO)
    start(kit, Sinks())
    for seq in range(3):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    kit.inject_message(OUTPUT, FlushSegment(segment="A"))
    kit.advance(0.05)
    reporter.expect_no_message(PlaybackFinished)
    kit.advance(0.01)  # the last frame's slot ends at 60 ms
    message, envelope = reporter.expect_message(PlaybackFinished)
    assert message == PlaybackFinished(segment="A", position=pytest.approx(0.06), interrupted=False)
    assert envelope.sender == OUTPUT
    event = kit.expect_event("playback-finished", OUTPUT)
    assert event.detail == {"segment": "A", "position": pytest.approx(0.06), "interrupted": False}
    kit.expect_event("playback-started", OUTPUT)


def test_s40_through_the_mailbox(kit: TestKit) -> None:
    reporter = kit.probe(REPORT_TO)
    sinks = Sinks()
    start(kit, sinks)
    for seq in range(10):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    kit.advance(0.1)
    kit.inject_message(OUTPUT, PausePlayback())
    kit.inject_message(OUTPUT, ClearBuffer())
    kit.inject_message(OUTPUT, ResumePlayback())
    kit.inject_message(OUTPUT, frame("B", 0), sender=PRODUCER)
    kit.settle()
    assert sinks.last.ops() == [("A", s) for s in range(10)] + ["clear", ("B", 0)]
    finished = reporter.expect_message(PlaybackFinished)[0]
    assert finished == PlaybackFinished(segment="A", position=pytest.approx(0.1), interrupted=True)
    kit.expect_event("playback-finished", OUTPUT, reason="interrupted")


def test_flow_control_reaches_the_producer(kit: TestKit) -> None:
    producer = kit.probe(PRODUCER)
    start(kit, Sinks())
    for seq in range(12):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    refused = producer.expect_message(FrameRefused)[0]
    assert (refused.reason, refused.seq, refused.next_seq) == (QUEUE_FULL, 10, 10)
    kit.expect_event("audio-refused", OUTPUT, reason=QUEUE_FULL)
    assert producer.expect_message(OutputWritable)[0] == OutputWritable(segment="A", next_seq=1, room_frames=9)
    kit.advance(0.1)
    writable = producer.expect_message(OutputWritable)[0]
    assert writable == OutputWritable(segment="A", next_seq=10, room_frames=5)


def test_bad_frames_are_refused_counted_published_and_the_output_keeps_playing(kit: TestKit) -> None:
    producer = kit.probe(PRODUCER)
    sinks = Sinks()
    out = start(kit, sinks)
    kit.inject_message(OUTPUT, AudioFrame(segment="A", seq=0, pcm=b"\x00" * 7, sample_rate=48_000, channels=1),
                       sender=PRODUCER)
    assert producer.expect_message(FrameRefused)[0].reason == BAD_FORMAT
    kit.expect_event("audio-refused", OUTPUT, reason=BAD_FORMAT)
    kit.inject(OUTPUT, b"\x93not an envelope")  # bad bytes: a dead letter from the node
    kit.expect_event("dead-letter")
    kit.inject_message(OUTPUT, frame("A", 0), sender=PRODUCER)
    kit.settle()
    assert sinks.last.ops() == [("A", 0)]
    status = kit.ask(OUTPUT, OutputStatusRequest()).get(timeout=5)
    assert isinstance(status, OutputStatus)
    assert status.counters["refused:bad-format"] == 1 and status.counters["pushed"] == 1
    assert out.actor_ref.is_alive()


def test_a_full_mailbox_is_refused_counted_and_published(kit: TestKit) -> None:
    gate, entered = threading.Event(), threading.Event()
    start(kit, Sinks(gate=gate, entered=entered))
    kit.inject_message(OUTPUT, frame("A", 0), sender=PRODUCER)  # its write holds the handler
    assert entered.wait(10)
    capacity = AudioOutput.mailbox_capacity
    for seq in range(1, capacity + 4):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    event = kit.expect_event("dead-letter", OUTPUT, reason="mailbox-full")
    assert event.detail["kind"] == "audio.frame"
    assert kit.node.counters["dead-letter:mailbox-full"] == 3
    gate.set()
    kit.settle()


def test_a_failed_sink_reports_live_segments_interrupted_and_the_supervisor_restarts_the_output(
        kit: TestKit) -> None:
    reporter = kit.probe(REPORT_TO)
    sinks = Sinks()
    spec = ChildSpec(OUTPUT, AudioOutput, kwargs={"report_to": REPORT_TO, "sink": sinks})
    kit.supervise("meeting:job-1-sup", [spec])
    for seq in range(5):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    kit.advance(0.04)
    sinks.last.fail(ConnectionResetError(104, "Connection reset by peer"))
    finished = reporter.expect_message(PlaybackFinished)[0]
    assert finished == PlaybackFinished(segment="A", position=pytest.approx(0.04), interrupted=True)
    event = kit.expect_event("audio-sink-failed", OUTPUT)
    assert event.reason == "ConnectionResetError: Connection reset by peer"
    kit.expect_event("crashed", OUTPUT, reason="AudioSinkFailed")
    kit.advance(1.0)  # restart backoff
    kit.expect_event("restarted", OUTPUT)
    assert len(sinks.made) == 2 and ("close", None) in sinks.made[0].log
    kit.inject_message(OUTPUT, frame("B", 0), sender=PRODUCER)
    kit.settle()
    assert sinks.last.ops() == [("B", 0)]


def test_an_output_that_crashes_mid_segment_has_its_next_incarnation_finish_that_segment_for_the_reporter(
        kit: TestKit) -> None:
    reporter = kit.probe(REPORT_TO)
    producer = kit.probe(PRODUCER)
    sinks = Sinks()
    kit.supervise("meeting:job-1-sup", [ChildSpec(OUTPUT, AudioOutput, kwargs={
        "report_to": REPORT_TO, "sink": sinks, "config": CONFIG})])
    for seq in range(5):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    kit.advance(0.04)
    assert reporter.expect_message(PlaybackStarted)[0] == PlaybackStarted(segment="A")
    sinks.last.raise_on_write = RuntimeError("a bug in the write path")
    kit.inject_message(OUTPUT, frame("A", 5), sender=PRODUCER)
    kit.expect_event("crashed", OUTPUT, reason="RuntimeError")
    kit.advance(1.0)  # restart backoff
    kit.expect_event("restarted", OUTPUT)
    # The crash took A's queue with it; the next incarnation keeps the
    # predecessor's promise: A finished, interrupted, at no more than played.
    finished = reporter.expect_message(PlaybackFinished)[0]
    assert finished == PlaybackFinished(segment="A", position=0.0, interrupted=True)
    kit.expect_event("playback-finished", OUTPUT, reason="output-restarted")
    kit.inject_message(OUTPUT, frame("A", 6), sender=PRODUCER)
    kit.settle()
    assert [m.reason for m, _ in producer.received if isinstance(m, FrameRefused)] == ["segment-finished"]
    for seq in range(3):
        kit.inject_message(OUTPUT, frame("B", seq), sender=PRODUCER)
    kit.inject_message(OUTPUT, FlushSegment(segment="B"), sender=PRODUCER)
    kit.advance(0.1)
    assert sinks.last.ops() == [("B", 0), ("B", 1), ("B", 2)]
    assert [m.segment for m, _ in reporter.received if isinstance(m, PlaybackFinished)] == ["A", "B"]
    # A crash in a segment's very first write (past the tree's restart
    # period): the reporter hears it started, and the next incarnation
    # finishes it; A and B are not finished again.
    kit.advance(5.0)
    sinks.last.raise_on_write = RuntimeError("again")
    kit.inject_message(OUTPUT, frame("C", 0), sender=PRODUCER)
    kit.expect_event("crashed", OUTPUT, reason="RuntimeError")
    kit.advance(1.0)
    kit.expect_event("restarted", OUTPUT)
    kit.settle()
    assert [m.segment for m, _ in reporter.received if isinstance(m, PlaybackStarted)] == ["A", "B", "C"]
    assert [m.segment for m, _ in reporter.received if isinstance(m, PlaybackFinished)] == ["A", "B", "C"]


def test_an_output_stopped_mid_segment_finishes_it_for_the_reporter_and_its_successor_finishes_nothing(
        kit: TestKit) -> None:
    reporter = kit.probe(REPORT_TO)
    sinks = Sinks()
    start(kit, sinks)
    for seq in range(5):
        kit.inject_message(OUTPUT, frame("A", seq), sender=PRODUCER)
    kit.advance(0.06)
    assert kit.node.stop_actor(OUTPUT, release=True)
    finished = reporter.expect_message(PlaybackFinished)[0]
    assert finished == PlaybackFinished(segment="A", position=pytest.approx(0.06), interrupted=True)
    assert sinks.last.ops()[-1] == "clear" and sinks.last.log[-1] == ("close", None)
    start(kit, sinks)  # the next output at this address
    kit.settle()
    assert [m.segment for m, _ in reporter.received if isinstance(m, PlaybackFinished)] == ["A"]
    assert not kit.events_named("playback-finished", OUTPUT)[1:]


def test_a_producer_mid_segment_when_its_output_restarts_gives_the_segment_up_and_goes_on(kit: TestKit) -> None:
    heard: list[object] = []
    sinks = Sinks()
    kit.supervise("meeting:job-1-sup", [ChildSpec(OUTPUT, AudioOutput, kwargs={
        "report_to": PRODUCER, "sink": sinks, "config": CONFIG})])
    cls, args, kwargs = speaker(OUTPUT, CONFIG, [("A", 40), ("B", 3)], heard.append)
    kit.spawn(PRODUCER, cls, *args, **kwargs)
    kit.settle()
    kit.advance(0.1)  # half the queue played: the producer is told, and sends A's next frames
    kit.settle()
    assert sinks.last.ops()[-1] == ("A", 14)
    sinks.last.fail(ConnectionResetError(104, "Connection reset by peer"))
    kit.expect_event("crashed", OUTPUT, reason="AudioSinkFailed")
    kit.advance(1.0)  # restart backoff
    kit.expect_event("restarted", OUTPUT)
    kit.advance(0.1)
    kit.settle()
    # The broken sink's incarnation finished A (interrupted) before it
    # crashed, and its checkpoint says so: the new one refuses A's next
    # frames as finished, once; the producer drops A instead of sending its
    # frames again and again, and B plays whole on the new sink.
    assert sinks.last.ops() == [("B", 0), ("B", 1), ("B", 2)]
    refused = [m for m in heard if isinstance(m, FrameRefused)]
    assert len(refused) == 1 and refused[0].reason == SEGMENT_FINISHED
    finished_a = [m for m in heard if isinstance(m, PlaybackFinished) and m.segment == "A"]
    assert len(finished_a) == 1 and finished_a[0].interrupted
    kit.advance(0.1)
    kit.settle()
    assert PlaybackFinished(segment="B", position=pytest.approx(0.06), interrupted=False) in heard


def test_a_sink_failure_report_from_anyone_but_its_own_sink_is_refused(kit: TestKit) -> None:
    out = start(kit, Sinks())
    kit.inject_message(OUTPUT, SinkFailed(reason="forged", incarnation=1), sender="mallory:1")
    kit.expect_event("bad-input", OUTPUT, reason="not-from-self")
    kit.inject_message(OUTPUT, SinkFailed(reason="old sink", incarnation=0), sender=OUTPUT)
    kit.expect_event("bad-input", OUTPUT, reason="stale-sink-report")
    assert out.actor_ref.is_alive()
    assert not kit.events_named("crashed", OUTPUT)
