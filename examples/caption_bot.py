"""A caption bot: start a meeting on the fleet, print its captions as they
arrive, stop it on the way out.

    python -m examples.caption_bot --local --max-captions 3

The bot is an asyncio program with a client of its own: it asks a worker's
meeting host to start the meeting, follows the meeting's updates at its
address, tells the meeting it joined with captions on (so its data channel
subscribes to ``transcription``), and prints every caption the data
channel relays.
"""

from __future__ import annotations

import argparse
import uuid

from actors.client import connect
from actors.client.meetings import ENDED_PHASES, start_meeting
from actors.sessions.contracts import meeting as mt
from examples import local


async def caption_bot(services: local.Services, meeting_id: str, max_captions: int) -> int:
    async with connect(services.redis_url) as client:
        meeting = await start_meeting(client, meeting_id, host=services.host, access_token=services.access_token)
        print(f"started {meeting.address} on {services.host}")
        try:
            async with meeting.follow() as updates:  # subscribed before the first fact
                await meeting.tell(mt.Joined(locus_url=services.locus_url(meeting_id), self_id="caption-bot",
                                             datachannel_url=services.datachannel_url(meeting_id), captions_on=True))
                services.transcribe(meeting_id)
                captions = 0
                async for update in updates:
                    if isinstance(update, mt.MeetingState):
                        print(f"meeting {update.phase}")
                        if update.phase in ENDED_PHASES:
                            break
                    elif isinstance(update, mt.SessionState):
                        print(f"{update.session} {update.state}")
                    elif isinstance(update, mt.RelayedEvent) and (text := local.caption_text(update)):
                        captions += 1
                        print(f"caption {captions} [{update.session}]: {text}")
                        if captions == max_captions:
                            break
        finally:
            print(f"stopped {meeting.address}: {await meeting.stop()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.caption_bot", description=__doc__.split("\n\n")[0])
    local.add_arguments(parser)
    parser.add_argument("--meeting", default=f"captions-{uuid.uuid4().hex[:6]}", help="the meeting id")
    parser.add_argument("--max-captions", type=int, default=0, metavar="N",
                        help="stop after N captions (default: until the meeting ends or Ctrl-C)")
    args = parser.parse_args(argv)
    return local.run(lambda services: caption_bot(services, args.meeting, args.max_captions), args)


if __name__ == "__main__":
    raise SystemExit(main())
