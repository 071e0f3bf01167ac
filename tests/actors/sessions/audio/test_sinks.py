"""Real sinks with real time: a WAV file written and read back, raw PCM,
and the WebSocket media sink against the reference receiver over real
sockets; the WAV run also crosses a real Redis between two nodes.

Nothing here asserts on timing: waits are on explicit conditions with
deadlines, and checks are on content and order.
"""

from __future__ import annotations

import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.sessions.audio.actor import AudioOutput
from actors.sessions.audio.machine import OutputConfig
from actors.sessions.audio.sinks import (
    RawPcm,
    WavFile,
    WebSocketMedia,
    paced,
    pack_media_frame,
    unpack_media_frame,
)
from actors.runtime.clock import SystemClock
from actors.sessions.contracts.audio import ClearBuffer, PlaybackFinished, output_address
from actors.runtime.node import Node
from bus.embedded import EmbeddedRedis
from bus.messages import Event, Message
from bus.redis_transport import RedisTransport
from bus.transport import InProcessHub, InProcessTransport
from ops.mediareceiver import ReceiverHarness

from tests.actors.conftest import DEADLINE, Recorder
from .conftest import speaker
from .harness import pcm_for

OUTPUT = output_address("job-7", "agent")
SPEAKER = "tts:job-7"


def spawn_speaker(node: Node, output: str, config: OutputConfig, segments: list[tuple[str, int]],
                  heard: Recorder) -> None:
    cls, args, kwargs = speaker(output, config, segments, heard.add)
    node.spawn(SPEAKER, cls, *args, **kwargs)


def finished(segment: str) -> Callable[[list[Message]], bool]:
    return lambda items: any(isinstance(m, PlaybackFinished) and m.segment == segment for m in items)


def expected_pcm(config: OutputConfig, segments: list[tuple[str, int]]) -> bytes:
    return b"".join(pcm_for(config, sid, i) for sid, n in segments for i in range(n))


@pytest.fixture
def local_node() -> Iterator[Node]:
    node = Node(InProcessTransport(InProcessHub()), node_id="audio-local", clock=SystemClock()).start()
    try:
        yield node
    finally:
        node.shutdown()


def redis_node(server: EmbeddedRedis, node_id: str) -> Node:
    transport = RedisTransport(server.url, name=node_id)
    node = Node(transport, node_id=node_id, namespace="audio-test:").start()
    assert transport.wait_subscribed(DEADLINE)
    return node


def test_wav_file_over_redis_holds_exactly_the_frames_played(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    config = OutputConfig(sample_rate=16_000, channels=2, frame_ms=10, queue_ms=100, watermark_ms=50)
    segments = [("A", 40), ("B", 15)]
    lateness: list[float] = []
    out_node = redis_node(redis_server, "audio-out")
    tts_node = redis_node(redis_server, "audio-tts")
    heard = Recorder()
    try:
        sink = paced(lambda ctx: WavFile(tmp_path / "speech.wav"), on_release=lambda f, late: lateness.append(late))
        out_node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, sink=sink, config=config)
        assert out_node.transport.wait_subscribed(DEADLINE)
        spawn_speaker(tts_node, OUTPUT, config, segments, heard)
        assert heard.wait_for(finished("B")), heard.snapshot()
        out_node.stop_actor(OUTPUT)  # closes the sink: the WAV header gets its lengths
        assert out_node.io.wait_idle(DEADLINE)
    finally:
        tts_node.shutdown()
        out_node.shutdown()
    reports = [m for m in heard.snapshot() if isinstance(m, PlaybackFinished)]
    assert [(m.segment, m.interrupted) for m in reports] == [("A", False), ("B", False)]
    assert [m.position for m in reports] == pytest.approx([0.4, 0.15])
    with wave.open(str(tmp_path / "speech.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16_000)
        assert wav.getnframes() == 55 * 160
        assert wav.readframes(wav.getnframes()) == expected_pcm(config, segments)
    assert len(lateness) == 55 and min(lateness) >= 0  # a paced sink never plays a frame early


def test_raw_pcm_stream(local_node: Node, tmp_path: Path) -> None:
    config = OutputConfig(sample_rate=8_000, frame_ms=20)
    heard = Recorder()
    local_node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, config=config,
                     sink=paced(lambda ctx: RawPcm(tmp_path / "speech.pcm")))
    spawn_speaker(local_node, OUTPUT, config, [("A", 12)], heard)
    assert heard.wait_for(finished("A"))
    local_node.stop_actor(OUTPUT)
    assert local_node.io.wait_idle(DEADLINE)
    assert (tmp_path / "speech.pcm").read_bytes() == expected_pcm(config, [("A", 12)])


def test_websocket_media_sink_against_the_reference_receiver(local_node: Node) -> None:
    config = OutputConfig()
    heard = Recorder()
    with ReceiverHarness() as rx:
        local_node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, config=config,
                         sink=paced(lambda ctx: WebSocketMedia(rx.url)))
        spawn_speaker(local_node, OUTPUT, config, [("A", 20), ("B", 5)], heard)
        assert heard.wait_for(finished("B"))
        (stream,) = rx.wait_for(lambda s: len(s) == 1 and len(s[0].frames) == 25)
        assert stream.start == {"type": "start", "output": OUTPUT, "encoding": "pcm_s16le", "sample_rate": 48_000,
                                "channels": 1, "frame_ms": 20}
        assert [(sid, seq) for sid, seq, _, _ in stream.frames] == [("A", i) for i in range(20)] + \
            [("B", i) for i in range(5)]
        assert stream.pcm() == expected_pcm(config, [("A", 20), ("B", 5)])
        assert stream.malformed == 0
        local_node.stop_actor(OUTPUT)
        (stream,) = rx.wait_for(lambda s: s[0].ended)
        assert stream.controls == ["stop"]


def test_an_interruption_reaches_the_media_endpoint_as_a_clear(local_node: Node) -> None:
    config = OutputConfig()
    heard = Recorder()
    with ReceiverHarness() as rx:
        local_node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, config=config,
                         sink=paced(lambda ctx: WebSocketMedia(rx.url)))
        spawn_speaker(local_node, OUTPUT, config, [("A", 200)], heard)
        rx.wait_for(lambda s: len(s) == 1 and len(s[0].frames) >= 3)
        local_node.tell(OUTPUT, ClearBuffer(segment="A"))
        assert heard.wait_for(finished("A"))
        (report,) = [m for m in heard.snapshot() if isinstance(m, PlaybackFinished)]
        assert report.interrupted
        (stream,) = rx.wait_for(lambda s: "clear" in s[0].controls)
        got = [seq for _, seq, _, _ in stream.frames]
        assert got == list(range(len(got))) and len(got) < 200  # a prefix, in order, then nothing
        # What was played is no more than what reached the endpoint.
        assert report.position <= len(got) * config.frame_seconds + 1e-9


def test_the_remote_closing_the_media_socket_crashes_the_output_and_reports_the_segment(local_node: Node) -> None:
    config = OutputConfig()
    heard = Recorder()
    events = Recorder()
    local_node.add_event_listener(events.add)
    with ReceiverHarness() as rx:
        local_node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, config=config,
                         sink=paced(lambda ctx: WebSocketMedia(rx.url)))
        spawn_speaker(local_node, OUTPUT, config, [("A", 500)], heard)
        rx.wait_for(lambda s: len(s) == 1 and len(s[0].frames) >= 2)
    # The receiver is gone: its server closed the socket.
    assert heard.wait_for(finished("A"))
    assert [m.interrupted for m in heard.snapshot() if isinstance(m, PlaybackFinished)] == [True]

    def crashed(items: list[Event]) -> bool:
        return any(e.event == "crashed" and e.address == OUTPUT and e.reason == "AudioSinkFailed" for e in items)

    assert events.wait_for(crashed)
    # Once, whichever noticed first: the sender or the watcher of the socket.
    (failed,) = [e for e in events.snapshot() if e.event == "audio-sink-failed"]
    assert failed.reason == "ConnectionClosedOK"  # the receiver's server went away (1001)


def test_a_media_socket_that_cannot_connect_fails_the_sink(local_node: Node) -> None:
    events = Recorder()
    local_node.add_event_listener(events.add)
    local_node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, sink=paced(lambda ctx: WebSocketMedia(
        "ws://127.0.0.1:9/media?token=s3cret", open_timeout=5)))
    assert events.wait_for(lambda items: any(e.event == "crashed" and e.address == OUTPUT for e in items))
    (failed,) = [e for e in events.snapshot() if e.event == "audio-sink-failed"]
    assert failed.reason.startswith("ConnectionRefusedError") and "s3cret" not in repr(failed)


def test_media_frames_round_trip_and_malformed_ones_are_refused() -> None:
    assert unpack_media_frame(pack_media_frame("reply-1", 42, b"\x01\x02")) == ("reply-1", 42, b"\x01\x02")
    for bad in (b"", b"\x02\x00\x01\x00\x00\x00\x00x", b"\x01\x00\x09\x00\x00\x00\x00ab"):
        with pytest.raises(ValueError):
            unpack_media_frame(bad)
    assert "s3cret" not in repr(WebSocketMedia("ws://h:1/p?token=s3cret"))
