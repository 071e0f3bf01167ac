"""The LiveKit adapter sink, offline (no server): a real ``rtc.AudioSource``
fed by an audio output. Skipped only where the optional ``livekit`` extra
is not installed (CI does not install it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

rtc = pytest.importorskip("livekit.rtc")

from actors.sessions.audio.actor import AudioOutput
from actors.sessions.audio.livekit_sink import LiveKitAudioSource, livekit_sink
from actors.sessions.audio.machine import OutputConfig
from actors.sessions.audio.sinks import SinkContext
from actors.runtime.clock import SystemClock
from actors.sessions.contracts.audio import (
    ClearBuffer,
    PlaybackFinished,
    PlaybackStarted,
    output_address,
)
from actors.runtime.node import Node
from bus.transport import InProcessHub, InProcessTransport

from tests.actors.conftest import DEADLINE, Recorder
from .conftest import speaker

OUTPUT = output_address("job-lk", "agent")
SPEAKER = "tts:job-lk"


@pytest.fixture
def node() -> Iterator[Node]:
    node = Node(InProcessTransport(InProcessHub()), node_id="audio-lk", clock=SystemClock()).start()
    try:
        yield node
    finally:
        node.shutdown()


def start(node: Node, config: OutputConfig, segments: list[tuple[str, int]], heard: Recorder
          ) -> tuple[list[LiveKitAudioSource], list[object]]:
    made: list[LiveKitAudioSource] = []
    sources: list[object] = []

    def factory(ctx: SinkContext) -> LiveKitAudioSource:
        made.append(livekit_sink(on_source=sources.append)(ctx))  # type: ignore[arg-type]
        return made[-1]

    node.spawn(OUTPUT, AudioOutput, report_to=SPEAKER, sink=factory, config=config)
    cls, args, kwargs = speaker(OUTPUT, config, segments, heard.add)
    node.spawn(SPEAKER, cls, *args, **kwargs)
    return made, sources


def test_frames_play_through_a_real_audio_source(node: Node) -> None:
    config = OutputConfig(sample_rate=48_000, channels=1, frame_ms=20)
    heard = Recorder()
    made, sources = start(node, config, [("A", 25)], heard)
    assert heard.wait_for(lambda items: any(isinstance(m, PlaybackFinished) for m in items), DEADLINE)
    (finished,) = [m for m in heard.snapshot() if isinstance(m, PlaybackFinished)]
    assert finished == PlaybackFinished(segment="A", position=pytest.approx(0.5), interrupted=False)
    (source,) = sources
    assert isinstance(source, rtc.AudioSource)
    assert (source.sample_rate, source.num_channels) == (48_000, 1)
    assert made[0].captured == 25


def test_an_interruption_clears_the_source_queue(node: Node) -> None:
    config = OutputConfig(sample_rate=16_000, channels=2, frame_ms=10)
    heard = Recorder()
    made, _ = start(node, config, [("A", 300)], heard)
    assert heard.wait_for(lambda items: any(isinstance(m, PlaybackStarted) for m in items), DEADLINE)
    node.tell(OUTPUT, ClearBuffer(segment="A"))
    assert heard.wait_for(lambda items: any(isinstance(m, PlaybackFinished) for m in items), DEADLINE)
    (finished,) = [m for m in heard.snapshot() if isinstance(m, PlaybackFinished)]
    assert finished.interrupted and finished.position < 3.0
    assert node.wait_idle(DEADLINE)
    assert made[0].captured < 300
