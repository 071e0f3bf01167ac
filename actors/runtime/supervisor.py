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

A supervisor never blocks, so it runs on the node's loop like its
children. It stops children one at a time, newest first, each given its
``shutdown_timeout`` (on the node's clock) before the next is asked; a
restart of a child that is still stopping waits for its exit; and its own
exit (and an escalation) is reported only once the children it stopped
are gone (:meth:`~actors.runtime.pooled.PooledActor.exit_after`).
"""

from __future__ import annotations

import enum
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.runtime.actor import ActorContext, HuddleActor
from actors.runtime.clock import TimerHandle
from actors.runtime.messages import ChildExit, RestartChild
from actors.runtime.pooled import PooledFuture
from bus.envelope import Envelope
from bus.errors import HuddleError
from bus.messages import Message

__all__ = ["Backoff", "ChildSpec", "Restart", "Strategy", "Supervisor", "SupervisorEscalated", "restart_rng"]


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


def restart_rng(seed: int | None) -> random.Random:
    """The generator of a supervisor's restart jitter. Unseeded, it is
    seeded from the process's generator (not the operating system's), so a
    program that seeds that one (a simulated world) is the same run every
    time."""
    return random.Random(random.getrandbits(64) if seed is None else seed)


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
        #: restarts that are due, in start order; each waits while its
        #: address is still stopping (in ``_terminating``)
        self._due: deque[str] = deque()

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
        self._wind_up(list(self._specs))

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
        if exit_.parent_epoch != self.epoch:
            # A child of another incarnation of this supervisor (one that ran
            # under another lease, here or elsewhere): its exit followed the
            # address here, maybe through the backlog while this incarnation
            # was starting the same child, whose start is still to come.
            self.node.emit("stale-dropped", address, reason="child-exit-of-another",
                           detail={"supervisor": self.address, "incarnation": exit_.incarnation,
                                   "parent_epoch": exit_.parent_epoch})
            return
        if self.node.lookup(address) is not None:
            # The child at that address runs here: this exit is another's,
            # an earlier incarnation of this tree on a node that lost it
            # (its children's exits follow the tree's address to its next
            # owner). Restarting a live child would crash this supervisor
            # (the address is in use) and take the whole tree down.
            self.node.emit("stale-dropped", address, reason="child-exit-of-another",
                           detail={"supervisor": self.address, "incarnation": exit_.incarnation})
            return
        spec = self._spec(address)
        self._running.discard(address)
        if address in self._terminating:
            self._terminating.discard(address)  # we stopped it; a restart is already planned
            self._start_due()
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
            self._rng = restart_rng(self._seed)
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
        self._due.append(msg.address)
        self._start_due()

    def _start_due(self) -> None:
        """Start the restarts that are due, in order; one whose address is
        still stopping waits for its exit (and the later ones with it)."""
        while self._due and self._due[0] not in self._terminating:
            address = self._due.popleft()
            spec = self._spec(address)
            if spec is None:
                self.node.release(address)
                continue
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

    def _stop_children(self, specs: list[ChildSpec], *, final: bool = False) -> PooledFuture[None]:
        """Stop children newest first, one at a time, without blocking;
        their exits are ours, not crashes. ``final``: they will not be
        restarted (the supervisor is going). The future is set once the
        last one is gone (or given up on past its ``shutdown_timeout``)."""
        mine = []
        for spec in reversed(specs):
            actor = self.node.lookup(spec.address)
            if actor is None or actor.ctx.parent != self.address:
                continue
            if not final:
                self._terminating.add(spec.address)
            self._running.discard(spec.address)
            mine.append(spec)
        return _StopInOrder(self, mine, final).done

    def _wind_up(self, specs: list[ChildSpec], then: Callable[[], None] | None = None) -> None:
        """Stop ``specs`` for good; once they are gone, give up every
        child's address, run ``then``, and let this supervisor's exit be
        reported."""
        self._awaiting.clear()
        self._due.clear()
        stopped = self._stop_children(specs, final=True)
        finished: PooledFuture[None] = PooledFuture()

        def wound_up(_f: PooledFuture[None]) -> None:
            try:
                for spec in self._specs:
                    self.node.release(spec.address)
                if then is not None:
                    then()
            finally:
                finished.set(None)

        stopped.add_done_callback(wound_up)
        self.exit_after(finished)

    def _escalate(self, address: str, reason: str) -> None:
        detail = {"child": address, "intensity": self.intensity, "period": self.period,
                  "to": self.ctx.parent or "node"}
        self._wind_up([s for s in self._specs if s.address in self._running or s.address in self._terminating],
                      then=lambda: self.node.emit("escalated", self.address, reason=reason, detail=detail))
        raise SupervisorEscalated(
            f"{self.address}: more than {self.intensity} restart(s) in {self.period:g}s (last: {address})"
        )


class _StopInOrder:
    """Stops a supervisor's children one at a time, in the order given:
    the next is asked once the one before has exited, or once its
    ``shutdown_timeout`` ran out on the node's clock (a ``stop-timeout``
    event; the child is left to the node). Exits arrive on whichever thread
    the child ran on; nothing here touches the supervisor's own state."""

    def __init__(self, supervisor: Supervisor, specs: list[ChildSpec], final: bool) -> None:
        self._supervisor = supervisor
        self._specs = deque(specs)
        self._final = final
        self.done: PooledFuture[None] = PooledFuture()
        self._next()

    def _next(self) -> None:
        node = self._supervisor.node
        while self._specs:
            spec = self._specs.popleft()
            try:
                waiter = node.request_stop(spec.address, release=self._final)
            except Exception:  # noqa: BLE001 - a child that cannot be asked is left to the node
                waiter = None
            if waiter is None:
                continue
            step = _Step()
            timer = node.clock.call_later(spec.shutdown_timeout, self._timed_out, spec, step)
            waiter.add_done_callback(lambda _f, s=step, t=timer: self._exited(s, t))
            return
        self.done.set(None)

    def _exited(self, step: _Step, timer: TimerHandle) -> None:
        timer.cancel()
        if step.take():
            self._next()

    def _timed_out(self, spec: ChildSpec, step: _Step) -> None:
        if step.take():
            self._supervisor.node.emit("stop-timeout", spec.address,
                                       detail={"supervisor": self._supervisor.address})
            self._next()


class _Step:
    """One child's stop: ended once, by its exit or by its timeout."""

    __slots__ = ("_lock", "_over")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._over = False

    def take(self) -> bool:
        with self._lock:
            if self._over:
                return False
            self._over = True
            return True
