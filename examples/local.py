"""What the examples run against: a fleet named by the environment, or
(``--local``) demo-style services started here and ended by their PIDs.

``--local`` starts an embedded redis-server, the reference data-channel
service (``huddle dataserver``), one worker node (``huddle node
--meetings``) and, for an example that speaks, the reference media
receiver; each is stopped by its own PID on the way out, also after an
error, Ctrl-C or SIGTERM. It also stands in for the meeting's
transcription: once a meeting's data channel holds the ``transcription``
subchannel, the reference service relays a caption every 1.5 s.

Without ``--local`` the examples use ``REDIS_URL`` (and
``HUDDLE_CLUSTER_KEY`` when the fleet signs), ``--host`` (or
``HUDDLE_MEETING_HOST``: the node id of a ``huddle node --meetings``),
``--dataserver`` (or ``HUDDLE_DATASERVER_URL``: the data-channel service's
base URL, laid out as the reference service's), ``HUDDLE_ACCESS_TOKEN``
and, to speak, ``--media-url`` (or ``HUDDLE_MEDIA_URL``); captions are
whatever that service relays.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.sessions.contracts import meeting as mt
from bus.embedded import EmbeddedRedis
from bus.errors import HuddleError
from bus.interrupts import held
from ops.dataserver.harness import DataServerError, DataServerProcess
from ops.demo.observed import caption_frame
from ops.mediareceiver import ReceiverHarness
from ops.processes import NodeProcess, NodeStartError

__all__ = ["Services", "add_arguments", "caption_text", "run"]

WORKER = "examples-worker"
LOCAL_ACCESS_TOKEN = "local-user-access-token"  # the reference service wants any bearer token
CAPTION_EVERY_S = 1.5
SUBSCRIBED_DEADLINE_S = 60.0
SCRIPT = (
    "Good morning, everyone.",
    "Let's start with last week's numbers.",
    "Sign-ups are up twelve percent.",
    "Any questions so far?",
    "Next: the launch plan.",
)


def caption_text(update: mt.RelayedEvent) -> str | None:
    """The text of a caption relayed by the reference service (its frame's
    ``data`` is ``{"eventType": "relay.event", "caption": {"id", "text"}}``);
    None for any other event."""
    data = update.data if isinstance(update.data, dict) else {}
    caption = data.get("caption")
    text = caption.get("text") if isinstance(caption, dict) else None
    return text if isinstance(text, str) else None


@dataclass
class Services:
    """Where an example's meeting lives and what it connects to."""

    redis_url: str
    host: str
    """The node id whose meeting host starts the meeting."""
    dataserver_url: str
    access_token: str = field(repr=False)
    media_url: str = field(default="", repr=False)
    _dataserver: DataServerProcess | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    def locus_url(self, meeting_id: str) -> str:
        return f"{self.dataserver_url}/locus/{meeting_id}"

    def datachannel_url(self, meeting_id: str) -> str:
        return f"{self.dataserver_url}/datachannel/{meeting_id}"

    def transcribe(self, meeting_id: str) -> None:
        """With ``--local``: the service relays a caption every 1.5 s once
        the meeting's data channel is subscribed to ``transcription``.
        Otherwise nothing: captions are what the service relays."""
        if self._dataserver is not None:
            thread = threading.Thread(target=self._captions, args=(self._dataserver, meeting_id),
                                      name=f"captions-{meeting_id}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _captions(self, ds: DataServerProcess, meeting_id: str) -> None:
        def subscribed(state: dict[str, Any]) -> bool:
            return any(s["meeting"] == meeting_id and s["online"] and "transcription" in s["subscriptions"]
                       for s in state["sockets"]) or self._stop.is_set()

        try:
            ds.wait_for(subscribed, SUBSCRIBED_DEADLINE_S)
            for n, line in enumerate(itertools.cycle(SCRIPT), 1):
                if self._stop.wait(CAPTION_EVERY_S):  # the pace of speech; set when the example ends
                    return
                ds.send(caption_frame(f"{meeting_id}-{n}", line), meeting=meeting_id)
        except (DataServerError, TimeoutError, OSError):
            return  # the service is gone: the example is ending

    def _close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--local``, or where the fleet is."""
    parser.add_argument("--local", action="store_true",
                        help="start an embedded redis-server, the reference data-channel service and a worker node "
                             "here (each ended by its PID on exit)")
    parser.add_argument("--host", default=os.environ.get("HUDDLE_MEETING_HOST", ""),
                        help="node id of a 'huddle node --meetings' (default $HUDDLE_MEETING_HOST)")
    parser.add_argument("--dataserver", default=os.environ.get("HUDDLE_DATASERVER_URL", ""),
                        help="base URL of the data-channel service (default $HUDDLE_DATASERVER_URL)")
    parser.add_argument("--media-url", default=os.environ.get("HUDDLE_MEDIA_URL", ""),
                        help="ws:// media endpoint an agent's voice plays into (default $HUDDLE_MEDIA_URL)")


def run(app: Callable[[Services], Awaitable[int]], args: argparse.Namespace, *, voice: bool = False) -> int:
    """Run ``app`` against the services ``args`` name and return its exit
    code: 130 after Ctrl-C or SIGTERM, 1 after an error, once everything
    started here was stopped."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    # SIGTERM ends the run as Ctrl-C does (asyncio cancels the application
    # first), so SIGINT must interrupt even where it was ignored when the
    # process started (a job a non-interactive shell put in the background):
    # otherwise neither stops the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        with _services(args, voice=voice) as services:
            return asyncio.run(app(services))
    except KeyboardInterrupt:
        print("interrupted: everything started here was stopped")
        return 130
    except (HuddleError, DataServerError, NodeStartError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@contextmanager
def _services(args: argparse.Namespace, *, voice: bool) -> Iterator[Services]:
    if not args.local:
        yield _from_environment(args, voice=voice)
        return
    with ExitStack() as stack:
        # Each start, the registration of its stop and its line are one
        # step: an interrupt comes before it or after it, never between.
        with held():
            redis = EmbeddedRedis().start()
            stack.callback(_stopped, "redis-server", redis.pid, redis.stop)
            print(f"local: redis-server pid {redis.pid} at {redis.url}")
        with held():
            ds = DataServerProcess.start()
            stack.callback(_stopped, "huddle dataserver", ds.pid, ds.stop)
            print(f"local: huddle dataserver pid {ds.pid} at {ds.http_url}")
        workdir = Path(tempfile.mkdtemp(prefix="huddle-example-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        with held():
            node = NodeProcess.start(WORKER, redis.url, workdir, ["--meetings"], env={"HUDDLE_LOG": "ERROR"})
            stack.callback(_stopped, f"huddle node {WORKER}", node.pid, node.stop)
            print(f"local: huddle node {WORKER} pid {node.pid} starting")
        node.wait_ready()
        print(f"local: huddle node {WORKER} ready, hosting meetings:{WORKER}")
        media_url = ""
        if voice:
            receiver = stack.enter_context(ReceiverHarness())
            stack.callback(_heard, receiver)
            media_url = receiver.url
            print(f"local: media receiver at {media_url}")
        services = Services(redis.url, WORKER, ds.http_url, LOCAL_ACCESS_TOKEN, media_url, _dataserver=ds)
        stack.callback(services._close)
        stack.callback(_hold_signals)  # last in, so first out: nothing interrupts the stops
        yield services


def _from_environment(args: argparse.Namespace, *, voice: bool) -> Services:
    missing = [name for name, value in (("REDIS_URL", os.environ.get("REDIS_URL")), ("--host", args.host),
                                        ("--dataserver", args.dataserver),
                                        ("HUDDLE_ACCESS_TOKEN", os.environ.get("HUDDLE_ACCESS_TOKEN")),
                                        *([("--media-url", args.media_url)] if voice else []))
               if not value]
    if missing:
        raise SystemExit(f"error: without --local, give {', '.join(missing)} (see examples/README.md)")
    return Services(os.environ["REDIS_URL"], args.host, args.dataserver.rstrip("/"),
                    os.environ["HUDDLE_ACCESS_TOKEN"], args.media_url)


def _stopped(name: str, pid: int | None, stop: Callable[[], Any]) -> None:
    stop()
    print(f"local: stopped {name} pid {pid}")


def _heard(receiver: ReceiverHarness) -> None:
    for stream in receiver.streams():
        start = stream.start or {}
        seconds = len(stream.pcm()) / (2 * int(start.get("sample_rate", 48_000)) * int(start.get("channels", 1)))
        print(f"local: the media receiver got {len(stream.frames)} frames ({seconds:.2f} s of audio) "
              f"from {stream.output or 'an output'}")


def _hold_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
