"""Events: what happens in a node, for whoever watches.

An actor started, stopped or crashed; a message could not be delivered; the
bus connection dropped. Monitors on other nodes (``huddle monitor``, taps,
metrics) and code in this process (the test kit, listeners) must both see
it, and reporting it must never fail what caused it.

Every event is an :class:`~bus.messages.Event` published on
``sys:events`` (fire and forget: nobody listening is fine) and handed to
this node's listeners on the emitting thread (a listener that raises is
logged; a closed transport is a warning). Every dead letter (an
unknown address, a full mailbox, an expired deadline, a stale epoch...)
is counted in the node's counters, by reason, and published as a
``dead-letter`` event; an ask that is refused is also answered with an
error (see :mod:`actors.runtime.sending`). Events never carry secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bus.address import SYS_EVENTS
from bus.envelope import Envelope
from bus.errors import EncodeError, TransportError
from bus.messages import Event

__all__ = ["Events"]

log = logging.getLogger("huddle.node")


class Events:
    """The node's events and dead letters (a part of
    :class:`~actors.runtime.node.Node`, whose ``__init__`` sets up the state used
    here)."""

    def add_event_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every event this node emits (on the
        emitting thread). Returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: str, address: str = "", *, reason: str = "", detail: dict[str, Any] | None = None) -> None:
        """Publish an event on ``sys:events`` (never put secrets in it)."""
        ev = Event(event=event, node=self.node_id, address=address, reason=reason, detail=detail or {},
                   ts=self.clock.wall())
        self.counters[f"event:{event}"] += 1
        for listener in list(self._listeners):
            try:
                listener(ev)
            except Exception:
                log.exception("event listener failed")
        try:
            data = self.codec.encode(Envelope(to=SYS_EVENTS, message=ev, sender=self.address))
        except EncodeError:
            log.exception("event %s could not be encoded", event)
            return
        try:
            self.transport.publish(self._events_channel, data)
        except TransportError:
            log.warning("event %s for %s not published: transport closed", event, address)

    def dead_letter(self, reason: str, address: str, kind: str, *, sender: str | None = None, detail: str = "") -> None:
        self.counters["dead-letter"] += 1
        self.counters[f"dead-letter:{reason}"] += 1
        log.debug("dead letter %s to %s (%s)", reason, address, kind)
        info: dict[str, Any] = {"kind": kind}
        if sender:
            info["sender"] = sender
        if detail:
            info["detail"] = detail[:200]
        self.emit("dead-letter", address, reason=reason, detail=info)

    def _on_bus_state(self, state: str) -> None:
        """Connection changes are events: while disconnected, messages on
        the bus may not reach this node (pub/sub keeps nothing)."""
        if self._closing:
            return  # our own shutdown closing the connection
        self.counters[f"bus:{state}"] += 1
        if state == "disconnected":
            log.warning("node %s lost its bus connection; reconnecting", self.node_id)
        self.emit(f"bus-{state}", self.address)
