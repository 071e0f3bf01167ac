"""Supervisors with OTP semantics.

A :class:`Supervisor` is an actor that starts its children from
:class:`ChildSpec` s, in order, and restarts them when they exit:

==============  ==========================================================
strategy        on a child's exit that calls for a restart, restart ...
==============  ==========================================================
one_for_one     that child only
one_for_all     every child (the others are stopped first, newest first)
rest_for_one    that child and the children started after it
==============  ==========================================================

Restart types decide whether an exit calls for a restart: ``permanent``
always, ``transient`` only after a crash, ``temporary`` never (the child is
forgotten).

Intensity: more than ``intensity`` restarts within ``period`` seconds
(default 1 in 5 s, as in OTP) means restarting does not help. The
supervisor then stops all its children, publishes ``escalated``, and
crashes itself, so *its* supervisor decides (escalation).

Restarts wait an exponential backoff with jitter (``Backoff``), counted per
child over the intensity period, and are themselves delayed messages, so a
test drives them with the manual clock.

The supervisor never learns of a crash from the crashed child: the node
sends it a ``sys.child-exit`` when the runtime sees the child stop. While a
child is down its address stays reserved on the node, so messages sent to
it wait for the next incarnation (which also gets the last checkpoint).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.actor import ActorContext, HuddleActor
from actors.messages import ChildExit, RestartChild
from actors.runtime import PooledFuture
from bus.envelope import Envelope
from bus.errors import HuddleError
from bus.messages import Message

__all__ = ["Backoff", "ChildSpec", "Restart", "Strategy", "Supervisor", "SupervisorEscalated"]


class Restart(enum.StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class SupervisorEscalated(HuddleError):
    """Restart intensity exceeded: the supervisor gives up and crashes."""


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child: ``actor_class(ctx, *args, **kwargs)`` at
    ``address``."""

    address: str
    actor_class: type[HuddleActor]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th restart of a child within the intensity period:
    ``min(cap, base * 2**n)``, scaled by a random factor in [0.5, 1] when
    ``jitter`` is on, so children of many supervisors do not return in step."""

    base: float = 0.05
    cap: float = 5.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.cap, self.base * (2 ** min(attempt, 30)))
        return d * rng.uniform(0.5, 1.0) if self.jitter else d


class Supervisor(HuddleActor):
    """Starts, watches and restarts children (see the module docstring)."""

    #: A supervisor stops its children one by one, newest first, waiting
    #: for each exit (``Node.stop_actor``), so that its own exit (and an
    #: escalation) is reported only once they are gone: it blocks, so it
    #: runs on the thread pool. (Its children run on the node's loop.)
    blocking = True

    def __init__(
        self,
        ctx: ActorContext,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        intensity: int = 1,
        period: float = 5.0,
        backoff: Backoff = Backoff(),
        seed: int | None = None,
    ) -> None:
        super().__init__(ctx)
        self.strategy = Strategy(strategy)
        self.intensity = intensity
        self.period = period
        self.backoff = backoff
        self._seed = seed
        self._rng: random.Random | None = None  # made at the first restart: seeding one costs ~20 µs
        #: Set once ``on_start`` has started every child: what a caller that
        #: must not block waits on (``add_done_callback``) before it relies
        #: on the children being there.
        self.started: PooledFuture[None] = PooledFuture()
        self._specs: list[ChildSpec] = list(children)
        if len({s.address for s in self._specs}) != len(self._specs):
            raise ValueError("child addresses must be unique")
        self._running: set[str] = set()
        self._terminating: set[str] = set()
        self._restarts: deque[float] = deque()
        self._child_restarts: dict[str, deque[float]] = {}
        self._awaiting: dict[str, int] = {}  # address -> generation of its pending restart
        self._generation = 0

    # -- lifecycle ----------------------------------------------------------

    def on_start(self) -> None:
        try:
            for spec in self._specs:
                self._start_child(spec)
        except BaseException:
            self.started.set_exception()
            raise
        self.started.set(None)

    def on_stop(self) -> None:
        self._stop_children(list(self._specs), final=True)
        for spec in self._specs:
            self.node.release(spec.address)

    # -- messages -----------------------------------------------------------

    def on_message(self, message: Message, envelope: Envelope) -> Any:
        if isinstance(message, ChildExit):
            return self._on_child_exit(message)
        if isinstance(message, RestartChild):
            return self._on_restart_due(message)
        return super().on_message(message, envelope)

    def which_children(self) -> list[dict[str, Any]]:
        """Like OTP's ``which_children``: address, class, running."""
        return [
            {"address": s.address, "class": s.actor_class.__name__, "running": s.address in self._running}
            for s in self._specs
        ]

    def _on_child_exit(self, exit_: ChildExit) -> None:
        address = exit_.address
        spec = self._spec(address)
        self._running.discard(address)
        if address in self._terminating:
            self._terminating.discard(address)  # we stopped it; a restart is already planned
            return
        if spec is None:
            self.node.release(address)
            return
        if not self._calls_for_restart(spec, exit_.crashed):
            self.node.release(address)
            if spec.restart is Restart.TEMPORARY:
                self._specs.remove(spec)
            return
        now = self.node.clock.now()
        while self._restarts and now - self._restarts[0] > self.period:
            self._restarts.popleft()
        self._restarts.append(now)
        if len(self._restarts) > self.intensity:
            self._escalate(address, exit_.reason)
            return
        group = self._restart_group(spec)
        others = [s for s in group if s is not spec and s.address in self._running]
        self._stop_children(others)
        history = self._child_restarts.setdefault(address, deque())
        while history and now - history[0] > self.period:
            history.popleft()
        if self._rng is None:
            self._rng = random.Random(self._seed)
        delay = self.backoff.delay(len(history), self._rng)
        history.append(now)
        self._generation += 1
        for s in group:
            self._awaiting[s.address] = self._generation
            self.send_later(delay, RestartChild(address=s.address, generation=self._generation))

    def _on_restart_due(self, msg: RestartChild) -> None:
        if self._awaiting.get(msg.address) != msg.generation:
            return
        del self._awaiting[msg.address]
        spec = self._spec(msg.address)
        if spec is None:
            self.node.release(msg.address)
            return
        self._start_child(spec)
        self.node.emit("restarted", spec.address, detail={"supervisor": self.address})

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _calls_for_restart(spec: ChildSpec, crashed: bool) -> bool:
        if spec.restart is Restart.PERMANENT:
            return True
        if spec.restart is Restart.TRANSIENT:
            return crashed
        return False

    def _spec(self, address: str) -> ChildSpec | None:
        for s in self._specs:
            if s.address == address:
                return s
        return None

    def _restart_group(self, spec: ChildSpec) -> list[ChildSpec]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [spec]
        if self.strategy is Strategy.ONE_FOR_ALL:
            return list(self._specs)
        i = self._specs.index(spec)
        return self._specs[i:]

    def _start_child(self, spec: ChildSpec) -> None:
        self.node.spawn(spec.address, spec.actor_class, *spec.args, parent=self.address, **dict(spec.kwargs))
        self._running.add(spec.address)

    def _stop_children(self, specs: list[ChildSpec], *, final: bool = False) -> None:
        """Stop children newest first; their exits are ours, not crashes.
        ``final``: they will not be restarted (the supervisor is going)."""
        for spec in reversed(specs):
            actor = self.node.lookup(spec.address)
            if actor is None or actor.ctx.parent != self.address:
                continue
            if not final:
                self._terminating.add(spec.address)
            try:
                self.node.stop_actor(spec.address, timeout=spec.shutdown_timeout, release=final)
            except Exception:  # noqa: BLE001 - a child that will not stop is left to the node
                self.node.emit("stop-timeout", spec.address, detail={"supervisor": self.address})
            self._running.discard(spec.address)

    def _escalate(self, address: str, reason: str) -> None:
        self._awaiting.clear()
        self._stop_children([s for s in self._specs if s.address in self._running], final=True)
        for spec in self._specs:
            self.node.release(spec.address)
        self.node.emit(
            "escalated",
            self.address,
            reason=reason,
            detail={"child": address, "intensity": self.intensity, "period": self.period,
                    "to": self.ctx.parent or "node"},
        )
        raise SupervisorEscalated(
            f"{self.address}: more than {self.intensity} restart(s) in {self.period:g}s (last: {address})"
        )
