"""``huddle tap ADDRESS``: the messages to one address, live, one line each.

A tap must not change what it watches, so it never subscribes to the
address's own channel (a subscriber there would count as a receiver of every
publish, and hide an address that nobody hosts). Instead:

1. the tap subscribes to ``sys:tap:<address>`` and announces itself with a
   :class:`TapRequest` on ``sys:taps``, a system channel every node with a
   :class:`TapService` listens to; the request holds a time to live, and the
   tap renews it at a third of that until it ends (then it cancels it with a
   ``ttl`` of 0). A tap that dies simply stops renewing and expires;
2. each node's :class:`TapService` records the request in its
   :class:`TapTable` and answers :class:`TapArmed` on the tap channel;
3. the node that hosts the address mirrors every envelope it puts into that
   actor's mailbox as a :class:`TapRecord`, and every dead letter for it
   (an undecodable envelope shows as its decode reason, never its bytes).

Secrets never leave the node: fields a message class names in
``SECRET_FIELDS`` are replaced by ``"<redacted>"`` *before* the record is
encoded, and bodies are cut to a bounded size (long strings and byte strings
shortened, byte strings shown as their length and first bytes).

While no tap is live on a node, its delivery hook is unset and a delivered
message costs one attribute read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bus.address import channel_for, is_valid_address
from bus.envelope import Codec, Envelope
from bus.errors import DecodeError, HuddleError
from bus.messages import Event, Message, message_kind
from ops import signals

if TYPE_CHECKING:
    from actors.runtime.node import Node

__all__ = [
    "REDACTED",
    "SYS_TAPS",
    "TapArmed",
    "TapClient",
    "TapRecord",
    "TapRequest",
    "TapService",
    "TapTable",
    "redacted_body",
    "register",
    "tap_channel",
]

log = logging.getLogger("huddle.tap")

SYS_TAPS = "sys:taps"
"""Where taps announce themselves; every node with a TapService listens."""
DEFAULT_TTL = 10.0
MAX_TTL = 300.0
MAX_TAPS = 1_000
"""Live taps a node keeps at most; more requests are refused (a tap is cheap
but not free: each tapped delivery is encoded and published once more)."""
REDACTED = "<redacted>"
MAX_TEXT = 200
MAX_BYTES_SHOWN = 16
MAX_ITEMS = 20
MAX_DEPTH = 4


def tap_channel(address: str) -> str:
    """The system channel a tap of ``address`` listens to."""
    return f"sys:tap:{address}"


# -- messages -----------------------------------------------------------------------


@message_kind("sys.tap")
@dataclass(frozen=True, slots=True)
class TapRequest(Message):
    """Mirror what ``address`` receives for ``ttl`` seconds (renewable;
    ``ttl`` 0 ends the tap)."""

    address: str
    tap_id: str
    ttl: float = DEFAULT_TTL


@message_kind("sys.tap-armed")
@dataclass(frozen=True, slots=True)
class TapArmed(Message):
    """``node`` will mirror ``address`` for tap ``tap_id`` (once per new tap)."""

    address: str
    tap_id: str
    node: str


@message_kind("sys.tap-record")
@dataclass(frozen=True, slots=True)
class TapRecord(Message):
    """One envelope delivered to ``address`` on ``node`` (``outcome``
    ``"delivered"``, with its ``traceparent`` if it is in a trace), or one
    dead letter for it (``"dead-letter"``, with ``reason``). ``body`` is redacted and bounded; ``redacted`` names the
    fields whose values were withheld. A dead letter that did not decode
    has no body, sender or ids, only its reason."""

    address: str
    node: str
    outcome: str
    ts: float
    kind: str = ""
    reason: str = ""
    sender: str | None = None
    epoch: int = 0
    msg_id: str = ""
    reply_to: str | None = None
    correlation_id: str | None = None
    body: dict[str, Any] | None = None
    redacted: list[str] = field(default_factory=list)
    traceparent: str | None = None


# -- redaction ------------------------------------------------------------------------


def _bounded(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else f"{value[:MAX_TEXT]}...(+{len(value) - MAX_TEXT} chars)"
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        more = "..." if len(raw) > MAX_BYTES_SHOWN else ""
        return f"<{len(raw)} bytes{': ' + raw[:MAX_BYTES_SHOWN].hex() + more if raw else ''}>"
    if depth >= MAX_DEPTH and isinstance(value, list | dict):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, list):
        items = [_bounded(v, depth + 1) for v in value[:MAX_ITEMS]]
        return items + ([f"...(+{len(value) - MAX_ITEMS} items)"] if len(value) > MAX_ITEMS else [])
    if isinstance(value, dict):
        shown = {str(k): _bounded(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
        if len(value) > MAX_ITEMS:
            shown["..."] = f"+{len(value) - MAX_ITEMS} keys"
        return shown
    return value


def redacted_body(message: Message) -> tuple[dict[str, Any], list[str]]:
    """``message``'s fields, bounded for display, with every field its class
    names in ``SECRET_FIELDS`` replaced by :data:`REDACTED`; and the names
    of the fields replaced."""
    secret = set(getattr(type(message), "SECRET_FIELDS", ()))
    body: dict[str, Any] = {}
    withheld: list[str] = []
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        if f.name in secret:
            body[f.name] = REDACTED
            withheld.append(f.name)
        else:
            body[f.name] = _bounded(getattr(message, f.name))
    return body, withheld


# -- the core: which taps are live ------------------------------------------------------


class TapTable:
    """Live taps by address, each with its expiry (monotonic seconds).

    Pure: the caller passes the time. After ``renew(a, t, ttl, now)`` with
    ``ttl > 0``, tap ``t`` of ``a`` is live until ``now + min(ttl,
    MAX_TTL)``; ``ttl <= 0`` ends it; ``expire(now)`` drops every tap whose
    time has come. ``tapped()`` is the set of addresses with a live tap.
    """

    def __init__(self, max_taps: int = MAX_TAPS) -> None:
        self.max_taps = max_taps
        self._taps: dict[str, dict[str, float]] = {}
        self._count = 0

    def renew(self, address: str, tap_id: str, ttl: float, now: float) -> str:
        """``"armed"`` (a new tap), ``"renewed"``, ``"ended"`` (``ttl`` <= 0;
        also for a tap not known) or ``"refused"`` (:attr:`max_taps` live)."""
        taps = self._taps.get(address)
        if ttl <= 0:
            if taps is not None and taps.pop(tap_id, None) is not None:
                self._count -= 1
                if not taps:
                    del self._taps[address]
            return "ended"
        until = now + min(ttl, MAX_TTL)
        if taps is not None and tap_id in taps:
            taps[tap_id] = until
            return "renewed"
        if self._count >= self.max_taps:
            return "refused"
        self._taps.setdefault(address, {})[tap_id] = until
        self._count += 1
        return "armed"

    def expire(self, now: float) -> list[str]:
        """Drop expired taps; returns the addresses no longer tapped."""
        gone = []
        for address, taps in list(self._taps.items()):
            for tap_id, until in list(taps.items()):
                if until <= now:
                    del taps[tap_id]
                    self._count -= 1
            if not taps:
                del self._taps[address]
                gone.append(address)
        return gone

    def tapped(self) -> frozenset[str]:
        return frozenset(self._taps)

    def next_expiry(self) -> float | None:
        return min((u for taps in self._taps.values() for u in taps.values()), default=None)

    def __len__(self) -> int:
        return self._count


# -- the node side ------------------------------------------------------------------------


class TapService:
    """Answers taps on one node (see the module docstring). ``start()`` once,
    after the node started."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.table = TapTable()
        self.mirrored = 0
        self._lock = threading.Lock()
        self._tapped: frozenset[str] = frozenset()
        self._next_expiry: float | None = None

    def start(self) -> TapService:
        self.node.handle_system_channel(SYS_TAPS, self._on_request)
        self.node.add_event_listener(self._on_event)
        return self

    def _on_request(self, env: Envelope) -> None:
        message = env.message
        if not isinstance(message, TapRequest):
            self.node.dead_letter("unhandled-kind", SYS_TAPS, env.kind, sender=env.sender)
            return
        if not is_valid_address(message.address) or message.address.startswith("sys:"):
            self.node.dead_letter("bad-tap", SYS_TAPS, env.kind, sender=env.sender,
                                  detail="a tap needs the address of an actor")
            return
        now = self.node.clock.now()
        with self._lock:
            outcome = self.table.renew(message.address, message.tap_id, message.ttl, now)
            self.table.expire(now)
            self._refresh_locked()
        if outcome == "armed":
            self._publish(message.address, TapArmed(address=message.address, tap_id=message.tap_id,
                                                    node=self.node.node_id))
        elif outcome == "refused":
            self.node.dead_letter("too-many-taps", SYS_TAPS, env.kind, sender=env.sender)

    def _refresh_locked(self) -> None:
        self._tapped = self.table.tapped()
        self._next_expiry = self.table.next_expiry()
        self.node.delivery_hook = self._on_delivered if self._tapped else None

    def _live(self, address: str) -> bool:
        if address not in self._tapped:
            return False
        expiry = self._next_expiry
        if expiry is not None and self.node.clock.now() >= expiry:
            with self._lock:
                self.table.expire(self.node.clock.now())
                self._refresh_locked()
            return address in self._tapped
        return True

    def _on_delivered(self, env: Envelope) -> None:
        if not self._live(env.to):
            return
        body, withheld = redacted_body(env.message)
        self._publish(env.to, TapRecord(
            address=env.to, node=self.node.node_id, outcome="delivered", ts=self.node.clock.wall(), kind=env.kind,
            sender=env.sender, epoch=env.epoch, msg_id=env.msg_id, reply_to=env.reply_to,
            correlation_id=env.correlation_id, body=body, redacted=withheld, traceparent=env.traceparent,
        ))

    def _on_event(self, event: Event) -> None:
        if event.event != "dead-letter" or not self._live(event.address):
            return
        sender = event.detail.get("sender")
        self._publish(event.address, TapRecord(
            address=event.address, node=self.node.node_id, outcome="dead-letter", ts=event.ts,
            kind=str(event.detail.get("kind", "")), reason=event.reason,
            sender=sender if isinstance(sender, str) else None,
        ))

    def _publish(self, address: str, message: Message) -> None:
        channel = tap_channel(address)
        try:
            data = self.node.codec.encode(Envelope(to=channel, message=message, sender=self.node.address))
            self.node.transport.publish(channel_for(channel, self.node.namespace), data)
        except HuddleError as exc:  # never let a tap break a delivery
            log.warning("tap of %s: %s not published: %s", address, message.KIND, exc)
            return
        self.mirrored += isinstance(message, TapRecord)


# -- the tap side ---------------------------------------------------------------------------


class TapClient:
    """Taps ``address`` on the bus at ``url``: ``on_record(record)`` for each
    :class:`TapRecord`, ``on_armed(node)`` for each node that armed the tap.
    Callbacks run on the transport's I/O thread."""

    def __init__(self, url: str, address: str, *, on_record: Callable[[TapRecord], None],
                 on_armed: Callable[[str], None] = lambda node: None, on_refused: Callable[[str], None] = lambda r: None,
                 namespace: str = "", codec: Codec | None = None, ttl: float = DEFAULT_TTL) -> None:
        from bus.sharded import transport_for

        if not is_valid_address(address):
            raise HuddleError(f"not an address: {address!r} (expected kind:id[/sub])")
        self.address = address
        self.tap_id = uuid.uuid4().hex[:12]
        self.ttl = ttl
        self._codec = codec or Codec()
        self._on_record = on_record
        self._on_armed = on_armed
        self._on_refused = on_refused
        self._requests = channel_for(SYS_TAPS, namespace)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.transport = transport_for(url, name=f"huddle-tap-{self.tap_id}")
        self.transport.set_receiver(self._receive)
        self.transport.subscribe(channel_for(tap_channel(address), namespace))

    def start(self, timeout: float) -> bool:
        """Subscribe, then announce the tap; False if not subscribed in time."""
        self.transport.start()
        if not self.transport.wait_subscribed(timeout):
            return False
        self._announce(self.ttl)
        self._renewer = threading.Thread(target=self._renew, name="huddle-tap-renew", daemon=True)
        self._renewer.start()
        return True

    def close(self) -> None:
        """End the tap on every node (ttl 0), then disconnect."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5.0)
            try:
                self._announce(0.0)
                self.transport.flush(2.0)
            except HuddleError:
                pass
        self.transport.close(flush_timeout=0)

    def _announce(self, ttl: float) -> None:
        request = TapRequest(address=self.address, tap_id=self.tap_id, ttl=ttl)
        self.transport.publish(self._requests, self._codec.encode(Envelope(to=SYS_TAPS, message=request)))

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._announce(self.ttl)
            except HuddleError as exc:
                log.warning("tap renewal not sent: %s", exc)

    def _receive(self, channel: str, data: bytes) -> None:
        try:
            message = self._codec.decode(data).message
        except DecodeError as exc:
            self._on_refused(exc.reason)
            return
        if isinstance(message, TapRecord) and message.address == self.address:
            self._on_record(message)
        elif isinstance(message, TapArmed) and message.tap_id == self.tap_id:
            self._on_armed(message.node)


def format_record(record: TapRecord) -> str:
    """One line for a person: time, address, kind, sender, epoch, msg id,
    the trace id (if the message is in a trace), body."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.ts)) + f".{int(record.ts * 1000) % 1000:03d}"
    sender = record.sender or "-"
    if record.outcome != "delivered":
        kind = f" {record.kind}" if record.kind else ""
        return f"{stamp} {record.address} DEAD LETTER ({record.reason}){kind} from {sender} on {record.node}"
    body = json.dumps(record.body, ensure_ascii=False, separators=(", ", ": "))
    ask = f" ask {record.correlation_id}" if record.correlation_id and record.reply_to else ""
    trace = f" trace {record.traceparent[3:35]}" if record.traceparent else ""
    return (f"{stamp} {record.address} <- {record.kind} from {sender} epoch {record.epoch} "
            f"id {record.msg_id}{ask}{trace} {body}")


def record_json(record: TapRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


# -- the command ------------------------------------------------------------------------------


def cmd_tap(args: argparse.Namespace) -> int:
    from ops.options import bus_of
    from bus.endpoint import mask_url

    bus = bus_of(args, "tap")
    if bus is None:
        return 2
    url, codec = bus
    done = signals.stop_event()  # also set by SIGTERM / SIGINT
    seen = [0]
    out_lock = threading.Lock()

    def on_record(record: TapRecord) -> None:
        line = json.dumps(record_json(record), ensure_ascii=False) if args.json else format_record(record)
        with out_lock:
            if done.is_set():
                return
            print(line, flush=True)
            seen[0] += 1
            if args.count is not None and seen[0] >= args.count:
                done.set()

    def on_armed(node: str) -> None:
        print(f"# tapping {args.address}: armed on node {node}", file=sys.stderr, flush=True)

    def on_refused(reason: str) -> None:
        print(f"# a message on the tap channel did not decode: {reason}", file=sys.stderr, flush=True)

    client = TapClient(url, args.address, on_record=on_record, on_armed=on_armed, on_refused=on_refused,
                       namespace=args.namespace, codec=codec, ttl=args.ttl)
    try:
        print(f"# tap {client.tap_id} on {args.address} via {mask_url(url)}", file=sys.stderr, flush=True)
        if not client.start(10.0):
            print(f"could not subscribe on {mask_url(url)}", file=sys.stderr)
            return 2
        signals.wait(done, args.for_seconds)
        return 0
    finally:
        client.close()


def register(subparsers: Any) -> None:
    """Add ``huddle tap`` to the command line."""
    from ops.options import add_cluster_key_option

    tap = subparsers.add_parser(
        "tap",
        help="show the messages to one address, live",
        description="Show every message delivered to ADDRESS, one line each (kind, sender, epoch, message id,\n"
        "body), and every dead letter for it (with its reason; undecodable bytes are never shown).\n"
        "The tap asks the nodes on sys:taps to mirror deliveries to sys:tap:ADDRESS while it runs;\n"
        "it never listens on the address's own channel. Secret fields are redacted by the node.\n"
        "Notices (which nodes armed the tap) go to stderr.",
        epilog="examples:  huddle tap echo:1\n"
        "           huddle tap meeting:m-42 --json --count 10 --for 60",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tap.add_argument("address", metavar="ADDRESS", help="the address to watch, kind:id[/sub]")
    tap.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    tap.add_argument("--count", type=int, default=None, metavar="N", help="exit after N records")
    tap.add_argument("--for", dest="for_seconds", type=float, default=None, metavar="SECONDS",
                     help="exit after SECONDS (default: until Ctrl-C)")
    tap.add_argument("--ttl", type=float, default=DEFAULT_TTL, metavar="SECONDS",
                     help=f"how long nodes keep the tap without a renewal (default {DEFAULT_TTL:g}; renewed "
                     "every third of it)")
    tap.add_argument("--redis-url", help="bus to use (default: $REDIS_URL)")
    tap.add_argument("--namespace", default="", help="channel prefix of the cluster")
    add_cluster_key_option(tap)
    tap.set_defaults(func=cmd_tap)

