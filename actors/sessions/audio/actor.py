"""The audio output actor: ``audio:<meeting-or-job>/<output>``.

A thin shell around the playout core (:mod:`actors.sessions.audio.machine`): it
feeds the core every audio message with the node's clock reading, performs
the core's effects (sends, events, the playout timer, and the sink's
``write``/``clear``), and owns the sink. Contract: see
:mod:`actors.sessions.contracts.audio`.

Start arguments: ``report_to`` (the address told ``playback_started`` /
``playback_finished``), ``sink`` (a :data:`~actors.sessions.audio.sinks.SinkFactory`)
and ``config`` (:class:`~actors.sessions.audio.machine.OutputConfig`).

Failure: a sink that breaks makes the output finish every live segment as
interrupted (its reporter hears it), publish ``audio-sink-failed`` and then
crash with :class:`AudioSinkFailed`, so its supervisor restarts it with a new
sink. Playout state is not checkpointed: audio that was queued when an
output crashed is not played by the next incarnation. Only the segment in
the sink is (its id, when it starts and when it finishes): after any other
crash the next incarnation finishes it interrupted, and a stop (final, or
before a hand-off) finishes it with the position played, so its reporter
hears ``playback_finished`` once for every ``playback_started``.

The mailbox is bounded (:attr:`AudioOutput.mailbox_capacity`); past it the
node refuses with a ``mailbox-full`` dead letter, counted and published.

Real time on a shared interpreter: the sink's pacer runs on the node's I/O
loop thread, which must win the GIL from busy actor-pool threads at each
frame's slot. CPython hands the GIL over every "switch interval" (5 ms by
default), so a node that hosts an output lowers it to
:data:`REALTIME_SWITCH_INTERVAL` (process-wide, once, never raised): on the
benchmark this took delivery lateness p99 from about 20 ms to about 6 ms
on a lightly loaded 2-core machine.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from actors.runtime.actor import ActorContext
from actors.sessions.audio import machine
from actors.sessions.audio.machine import (
    OutputConfig,
    PlayoutTick,
    SinkClear,
    SinkFailed,
    SinkWrite,
)
from actors.sessions.audio.sinks import AudioSink, SinkContext, SinkFactory, failure_reason
from actors.sessions.contracts.audio import (
    AudioFrame,
    ClearBuffer,
    FlushSegment,
    OutputStatusRequest,
    PausePlayback,
    ResumePlayback,
)
from actors.runtime.effects import Effect, Emit
from actors.runtime.shell import MachineActor
from actors.runtime.tracing import in_trace
from bus.envelope import Envelope
from bus.errors import HuddleError
from bus.messages import Message

__all__ = ["REALTIME_SWITCH_INTERVAL", "AudioOutput", "AudioSinkFailed", "tune_interpreter_for_real_time"]

log = logging.getLogger("huddle.audio")

#: Seconds between forced GIL hand-overs on a node hosting audio outputs.
REALTIME_SWITCH_INTERVAL = 0.001


def tune_interpreter_for_real_time() -> None:
    """Lower the interpreter's switch interval to
    :data:`REALTIME_SWITCH_INTERVAL` if it is higher (see the module notes)."""
    if sys.getswitchinterval() > REALTIME_SWITCH_INTERVAL:
        sys.setswitchinterval(REALTIME_SWITCH_INTERVAL)


class AudioSinkFailed(HuddleError):
    """The output's sink broke; the output stops (its supervisor restarts it)."""


class AudioOutput(MachineActor):
    """One audio output: a playout queue in front of one sink."""

    #: About 5 s of 20 ms frames: a producer that ignores flow control hits
    #: this bound, not the node's memory.
    mailbox_capacity = 256

    public_kinds = frozenset({AudioFrame, FlushSegment, PausePlayback, ResumePlayback, ClearBuffer,
                              OutputStatusRequest})
    #: The playout timer, and this incarnation's sink reporting that it broke.
    internal_kinds = frozenset({PlayoutTick, SinkFailed})

    def __init__(self, ctx: ActorContext, *, report_to: str, sink: SinkFactory,
                 config: OutputConfig | None = None) -> None:
        super().__init__(ctx)
        self.config = config or OutputConfig()
        self.state = machine.initial_state(self.config, report_to, ctx.checkpoint)
        self.sink: AudioSink = sink(SinkContext(address=ctx.address, config=self.config, io=ctx.node.io,
                                                clock=ctx.node.clock, on_failure=self._sink_failed))

    def on_start(self) -> None:
        tune_interpreter_for_real_time()
        self.sink.open()
        self.perform_all(machine.restart(self.state))

    def step(self, message: Message, envelope: Envelope, now: float) -> Iterable[Effect]:
        if type(message) is SinkFailed and message.incarnation != self.ctx.incarnation:
            # An earlier incarnation's sink: it is gone, its report is stale.
            return [Emit("bad-input", reason="stale-sink-report", detail={"incarnation": message.incarnation})]
        self.state, effects = machine.step(self.state, message, now, envelope.sender)
        return effects

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        answer = super().on_message(message, envelope)
        if type(message) is SinkFailed and envelope.sender == self.address \
                and message.incarnation == self.ctx.incarnation:
            raise AudioSinkFailed(f"{self.address}: sink failed ({message.reason})")
        return answer

    def perform(self, effect: Effect) -> None:
        match effect:
            case SinkWrite(frames=frames):
                self.sink.write(frames)
            case SinkClear():
                self.sink.clear()
            case _:
                super().perform(effect)

    def _sink_failed(self, error: BaseException) -> None:
        """From the sink (any thread): becomes a message in our own mailbox,
        in no trace (the sink's task was started in the trace of its open)."""
        report = SinkFailed(reason=failure_reason(error), incarnation=self.ctx.incarnation)
        with in_trace(None):
            self.node.tell(self.address, report, sender=self.address, epoch=self.epoch)

    def on_stop(self) -> None:
        try:
            self.perform_all(machine.stop(self.state, self.node.clock.now()))
        except HuddleError as exc:  # the node is going away with it: the next incarnation finishes it
            log.debug("%s: the playing segment's finish was not sent at stop: %r", self.address, exc)
        finally:
            self.sink.close()
            super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self.sink.close()
        super().on_failure(*exc_info)
