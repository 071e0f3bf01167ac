"""audio: 200 concurrent audio outputs on one node, 20 ms frames, paced sinks.

figures (huddle): 200 ``AudioOutput`` actors, each fed one long segment by a
``FrameFeeder`` actor that follows the output's flow control, each output's
``PacedSink`` writing raw PCM to /dev/null on the node's asyncio loop.
  jitter_p50_ms / jitter_p99_ms  how late frames were delivered after their
                                 slot started (all frames of all outputs);
  cpu_pct                        process CPU seconds per second of audio
                                 played (100 = a core), from before the
                                 first actor is spawned to the last frame;
  short_queue_cpu_pct            the same with a 200 ms playout queue (told
                                 of room at 100 ms) instead of the default
                                 500 ms: three messages per 100 ms of each
                                 output instead of per 250 ms;
  underrun_ms_per_output         silence inside segments (the producer or
                                 the output fell behind the queue), per output;
  timer_paced_*                  the same run with the other place pacing could
                                 run: each frame a timer on the node's clock
                                 (a timer handle per frame in the clock's heap),
                                 instead of the sink's own ``call_at`` on the
                                 node's asyncio loop.
baseline: the same 200 streams paced by a plain asyncio loop (one task per
stream, ``asyncio.sleep`` to each slot, the same /dev/null writes), no actors;
its CPU seconds over the same seconds of audio.

Each measurement runs in its own process. Frames: 16 kHz mono s16le (640 bytes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

from common import parse_args, ratio, report, tune_node_gc

OUTPUTS = 200
FRAME_MS = 20
SAMPLE_RATE = 16_000
FRAME = b"\x01\x00" * (SAMPLE_RATE * FRAME_MS // 1000)


def _percentiles(lateness: list[float]) -> dict[str, float]:
    ordered = sorted(lateness)
    if not ordered:
        return {"jitter_p50_ms": float("nan"), "jitter_p99_ms": float("nan")}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return {"jitter_p50_ms": pick(0.50), "jitter_p99_ms": pick(0.99), "jitter_max_ms": ordered[-1] * 1000}


class _CpuWindow:
    """CPU seconds spent since it was made, per second of audio played (the
    same denominator for every run: a lead-in or a drain spent idle must not
    thin a figure out)."""

    def __init__(self, audio_seconds: float) -> None:
        self.audio_seconds = audio_seconds
        self.c0 = time.process_time()

    def cpu_pct(self) -> float:
        return 100 * (time.process_time() - self.c0) / self.audio_seconds


class TimerPacedSink:
    """The alternative under test: pacing by the node clock's timers. Each
    frame is a ``call_later`` at its slot; the clock fires it on the node's loop."""

    def __init__(self, ctx, stream, on_release) -> None:  # type: ignore[no-untyped-def]
        from collections import deque

        self.ctx = ctx
        self.stream = stream
        self.on_release = on_release
        self.handles: deque = deque()

    def open(self) -> None:
        return None

    def write(self, frames) -> None:  # type: ignore[no-untyped-def]
        clock = self.ctx.clock
        for frame in frames:
            self.handles.append(clock.call_later(frame.play_at - clock.now(), self._deliver, frame))

    def _deliver(self, frame) -> None:  # type: ignore[no-untyped-def]
        late = self.ctx.clock.now() - frame.play_at
        self.stream.write(frame.pcm)
        self.on_release(frame, late)
        if self.handles:
            self.handles.popleft()

    def clear(self) -> None:
        while self.handles:
            self.handles.popleft().cancel()

    close = clear


def run_huddle(seconds: float, pacing: str, queue_ms: int | None = None) -> dict[str, float]:
    from actors.sessions.audio.actor import AudioOutput
    from actors.sessions.audio.feeder import FrameFeeder
    from actors.sessions.audio.machine import OutputConfig
    from actors.sessions.audio.sinks import RawPcm, paced
    from actors.sessions.contracts.audio import PlaybackFinished, output_address
    from actors.runtime.node import Node
    from bus.transport import InProcessHub, InProcessTransport

    config = OutputConfig(sample_rate=SAMPLE_RATE, channels=1, frame_ms=FRAME_MS)
    if queue_ms is not None:
        config = dataclasses.replace(config, queue_ms=queue_ms, watermark_ms=queue_ms // 2)
    frames = int(seconds * 1000 / FRAME_MS)
    lateness: list[float] = []
    underrun = [0.0]
    last_end: dict[str, float] = {}
    lock = threading.Lock()
    devnull = open(os.devnull, "wb")  # noqa: SIM115 - closed at the end

    def on_release(frame, late: float, key: str) -> None:  # type: ignore[no-untyped-def]
        lateness.append(late)
        prev = last_end.get(key)
        if prev is not None and frame.play_at > prev + 1e-6:
            underrun[0] += frame.play_at - prev
        last_end[key] = frame.play_at + frame.duration

    done = threading.Event()
    finished = [0]

    def record(message) -> None:  # type: ignore[no-untyped-def]
        if isinstance(message, PlaybackFinished):
            with lock:
                finished[0] += 1
                if finished[0] == OUTPUTS:
                    done.set()

    # The node's own clock: its timers fire on the node's loop, with the actors.
    tune_node_gc()  # this process hosts a huddle node (HUDDLE_BENCH_GC)
    node = Node(InProcessTransport(InProcessHub()), node_id="bench-audio").start()
    window = _CpuWindow(seconds)
    for i in range(OUTPUTS):
        address = output_address("bench", f"out{i}")

        def observe(f, late, key=address) -> None:  # type: ignore[no-untyped-def]
            on_release(f, late, key)

        if pacing == "loop":
            sink = paced(lambda ctx: RawPcm(stream=devnull), on_release=observe)
        else:
            sink = lambda ctx, observe=observe: TimerPacedSink(ctx, devnull, observe)
        node.spawn(address, AudioOutput, report_to=f"tts:bench{i}", sink=sink, config=config)
        node.spawn(f"tts:bench{i}", FrameFeeder, address, sample_rate=SAMPLE_RATE, channels=1,
                   credit=config.capacity_frames, segments=[("speech", [FRAME] * frames)], record=record)
    if not done.wait(seconds * 3 + 60):
        raise SystemExit(f"only {finished[0]} of {OUTPUTS} outputs finished")
    cpu = window.cpu_pct()
    node.shutdown()
    devnull.close()
    return {**_percentiles(lateness), "cpu_pct": cpu, "frames": len(lateness),
            "underrun_ms_per_output": underrun[0] * 1000 / OUTPUTS}


def run_asyncio(seconds: float) -> dict[str, float]:
    """The baseline: one asyncio task per stream, no actors."""
    frames = int(seconds * 1000 / FRAME_MS)
    lateness: list[float] = []
    devnull = open(os.devnull, "wb")  # noqa: SIM115

    async def stream(t0: float) -> None:
        # Streams start spread over one frame, as outputs started one by one do.
        loop = asyncio.get_running_loop()
        for n in range(frames):
            slot = t0 + n * FRAME_MS / 1000
            delay = slot - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(loop.time() - slot)
            devnull.write(FRAME)

    async def main() -> None:
        t0 = asyncio.get_running_loop().time() + 0.5
        spread = FRAME_MS / 1000 / OUTPUTS
        await asyncio.gather(*(stream(t0 + i * spread) for i in range(OUTPUTS)))

    window = _CpuWindow(seconds)
    asyncio.run(main())
    return {**_percentiles(lateness), "cpu_pct": window.cpu_pct(), "frames": len(lateness)}


def _child(kind: str, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(seconds)], capture_output=True, text=True,
                         check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args("audio", __doc__ or "")
    seconds = 2.0 if args.quick else 10.0
    load_before = os.getloadavg()[0]
    huddle = _child("loop", seconds)
    timers = _child("timers", seconds)
    short = _child("short", seconds)
    baseline = _child("asyncio", seconds)
    report(
        args,
        figures={"jitter_p50_ms": huddle["jitter_p50_ms"], "jitter_p99_ms": huddle["jitter_p99_ms"],
                 "jitter_max_ms": huddle["jitter_max_ms"], "cpu_pct": huddle["cpu_pct"],
                 "underrun_ms_per_output": huddle["underrun_ms_per_output"], "frames": huddle["frames"],
                 "outputs": OUTPUTS, "seconds": seconds,
                 "timer_paced_jitter_p50_ms": timers["jitter_p50_ms"],
                 "timer_paced_jitter_p99_ms": timers["jitter_p99_ms"], "timer_paced_cpu_pct": timers["cpu_pct"],
                 "timer_paced_underrun_ms_per_output": timers["underrun_ms_per_output"],
                 "short_queue_cpu_pct": short["cpu_pct"], "short_queue_jitter_p99_ms": short["jitter_p99_ms"],
                 "short_queue_cpu_ratio": ratio(short["cpu_pct"], baseline["cpu_pct"]),
                 "cpu_ratio": ratio(huddle["cpu_pct"], baseline["cpu_pct"]),
                 "jitter_p99_ratio": ratio(huddle["jitter_p99_ms"], baseline["jitter_p99_ms"])},
        baseline={"jitter_p50_ms": baseline["jitter_p50_ms"], "jitter_p99_ms": baseline["jitter_p99_ms"],
                  "jitter_max_ms": baseline["jitter_max_ms"], "cpu_pct": baseline["cpu_pct"],
                  "frames": baseline["frames"]},
        goal={"cpu_ratio": 2.0, "jitter_p99_ratio": 2.0, "jitter_p99_ms": 5.0},
        # Jitter depends on what else the machine runs: say how busy it was.
        notes={"frame_ms": FRAME_MS, "sample_rate": SAMPLE_RATE, "load_avg_1m_before": load_before,
               "load_avg_1m_after": os.getloadavg()[0]},
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        kind, seconds = sys.argv[2], float(sys.argv[3])
        if kind == "asyncio":
            result = run_asyncio(seconds)
        elif kind == "short":
            result = run_huddle(seconds, "loop", queue_ms=200)
        else:
            result = run_huddle(seconds, kind)
        print(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)
    main()
