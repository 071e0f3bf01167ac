"""A voice agent, sketched: it starts a meeting with a voice (an audio
output in the meeting's tree), greets once its data channel is online,
answers every caption it hears with a reply spoken through that output,
and gives way when someone speaks over it.

    python -m examples.voice_agent --local --replies 2

Speech here is a tone standing in for a TTS stream. Each utterance is a
segment fed to the output by a ``FrameFeeder`` on the client's own node
(it keeps within the output's flow control); the output tells the client
what it played, so the meeting's follow yields ``PlaybackStarted`` and
``PlaybackFinished``. Someone speaking over the agent is a real
interruption: ``ClearBuffer`` drops the rest of the segment playing.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from actors.client import Client, connect
from actors.client.meetings import ENDED_PHASES, Meeting, Voice, start_meeting
from actors.sessions.audio.feeder import FrameFeeder
from actors.sessions.audio.machine import OutputConfig
from actors.sessions.contracts import meeting as mt
from actors.sessions.contracts.audio import ClearBuffer, PlaybackFinished, PlaybackStarted
from actors.sessions.contracts.datachannel import ONLINE
from actors.sessions.contracts.token import DEFAULT_SESSION
from examples import local

#: The format of a meeting's audio output (an output's defaults).
FORMAT = OutputConfig()


def tone(seconds: float, period: int) -> list[bytes]:
    """``seconds`` of a quiet square wave as s16le frames of :data:`FORMAT`."""
    samples = FORMAT.sample_rate * FORMAT.frame_ms // 1000 * FORMAT.channels
    wave = b"".join((1500 if (i // (period // 2)) % 2 else -1500).to_bytes(2, "little", signed=True)
                    for i in range(samples))
    return [wave] * round(seconds * 1000 / FORMAT.frame_ms)


def speak(client: Client, meeting: Meeting, segment: str, frames: list[bytes]) -> None:
    """Feed ``frames`` to the meeting's output as ``segment`` (one producer per utterance)."""
    assert meeting.voice is not None
    client.node.spawn(f"agent:{meeting.meeting_id}/{segment}", FrameFeeder, meeting.voice,
                      sample_rate=FORMAT.sample_rate, channels=FORMAT.channels, credit=FORMAT.capacity_frames,
                      segments=[(segment, frames)])


async def voice_agent(services: local.Services, meeting_id: str, max_replies: int) -> int:
    async with connect(services.redis_url) as client:
        meeting = await start_meeting(client, meeting_id, host=services.host, access_token=services.access_token,
                                      voice=Voice("voice", services.media_url))
        print(f"started {meeting.address} on {services.host}, speaking through {meeting.voice}")
        try:
            async with meeting.follow() as updates:
                await meeting.tell(mt.Joined(locus_url=services.locus_url(meeting_id), self_id="voice-agent",
                                             datachannel_url=services.datachannel_url(meeting_id), captions_on=True))
                services.transcribe(meeting_id)
                utterances, finished, playing = 0, 0, ""
                async for update in updates:
                    if isinstance(update, mt.SessionState) and update.session == DEFAULT_SESSION \
                            and update.state == ONLINE and utterances == 0:
                        utterances += 1
                        speak(client, meeting, "greeting", tone(0.8, period=96))
                    elif isinstance(update, mt.RelayedEvent) and (text := local.caption_text(update)):
                        print(f"heard: {text}")
                        if playing:  # spoken over: give way at once
                            await client.tell(meeting.voice or "", ClearBuffer(segment=playing))
                        utterances += 1
                        speak(client, meeting, f"reply-{utterances}", tone(0.5 + 0.02 * len(text), period=72))
                    elif isinstance(update, PlaybackStarted):
                        playing = update.segment
                        print(f"speaking {update.segment}")
                    elif isinstance(update, PlaybackFinished):
                        playing = "" if playing == update.segment else playing
                        cut = ", interrupted" if update.interrupted else ""
                        print(f"played {update.segment}: {update.position:.2f} s{cut}")
                        await asyncio.to_thread(client.node.stop_actor, f"agent:{meeting_id}/{update.segment}",
                                                release=True)
                        finished += 1
                        if finished == max_replies:
                            break
                    elif isinstance(update, mt.MeetingState) and update.phase in ENDED_PHASES:
                        break
        finally:
            print(f"stopped {meeting.address}: {await meeting.stop()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.voice_agent", description=__doc__.split("\n\n")[0])
    local.add_arguments(parser)
    parser.add_argument("--meeting", default=f"agent-{uuid.uuid4().hex[:6]}", help="the meeting id")
    parser.add_argument("--replies", type=int, default=0, metavar="N",
                        help="stop once N utterances finished playing, the greeting included (default: until "
                             "the meeting ends or Ctrl-C)")
    args = parser.parse_args(argv)
    return local.run(lambda services: voice_agent(services, args.meeting, args.replies), args, voice=True)


if __name__ == "__main__":
    raise SystemExit(main())
