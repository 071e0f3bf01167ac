"""Fencing: which epochs a node accepts from each sender address.

An actor in a cluster speaks under the **epoch** of its lease; a receiver
refuses what a former owner says. This module holds, per sender address,
the **floor**: envelopes with an older epoch are ``stale-epoch`` dead
letters. What it guarantees:

* **The floor only moves to an epoch that was issued.** An envelope or an
  announcement can *ask* for a raise; it never makes one. Whether an epoch
  was issued for an address is answered by the :class:`EpochAuthority`
  (in a cluster, the lease store: the newest epoch ever issued for the
  address, written by the same script that drew it). So one forged
  envelope with an epoch above anything issued is an ``unissued-epoch``
  dead letter and moves nothing: the real owner, who holds the newest
  issued epoch, is never cut off, and nothing downstream (a claim's epoch
  floor) sees the forgery.
* **Order per sender holds.** While the authority is asked about a sender,
  that sender's later envelopes wait behind the question (bounded), so a
  raise applies exactly between the envelopes it came between.
* **A lease announcement fences at its place in the stream.** A claim is
  announced on ``sys:nodes`` from inside the claim script, so every node
  reads it before anything Redis handled after the claim. The
  announcement itself proves nothing (anyone who can publish could send
  one); it makes the node ask the authority and hold that sender's
  envelopes until the answer, then raises the floor to the newest issued
  epoch. A former owner's envelope that Redis handled after the claim is
  then stale.

A node with no authority (outside a cluster: nobody there issues epochs)
delivers an envelope whose epoch it cannot verify but never raises a floor
for it; only trusted statements (:meth:`Fencing.confirm`) move floors
there. So a plain client (``huddle inject``) still gets a cluster actor's
replies, and still cannot be poisoned.

What it does not guarantee: an epoch at or below the newest issued one is
accepted from whoever sends it (a keyless forger can still claim an old
epoch; envelope signing, not fencing, stops that), and it says nothing
about freshness (replays).

Cost: one look-up per sender address per new epoch (an epoch at or below
one already confirmed is settled locally, without asking), plus one per
announcement in a cluster, batched by the authority.

Threads: :meth:`Fencing.check` runs on whatever thread dispatches;
:meth:`Fencing.resolve` on whatever thread the authority answers on (at
once, inside ``check``, for an authority that knows locally). Parked
envelopes are handed on by exactly one drainer at a time, in order.
"""

from __future__ import annotations

import collections
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bus.envelope import Envelope

__all__ = [
    "EpochAuthority",
    "Fencing",
    "Issued",
    "LocalEpochs",
    "Verdict",
]

#: Envelopes of one sender that may wait for the authority's answer.
PARKED_LIMIT = 10_000


class Verdict(enum.Enum):
    """What happens to an envelope, as fencing sees it."""

    DELIVER = "deliver"
    STALE = "stale-epoch"
    UNISSUED = "unissued-epoch"
    UNVERIFIED = "epoch-unverified"
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class Issued:
    """The authority's answer for an address: the newest ``epoch`` ever
    issued for it (0: none), the node it was issued to, and whether that
    lease is still ``live``. ``known`` is False when the authority could
    not answer (unreachable): nothing is raised then."""

    epoch: int = 0
    holder: str = ""
    live: bool = False
    known: bool = True


UNKNOWN = Issued(known=False)


class EpochAuthority(Protocol):
    """Who can tell which epochs were issued for an address."""

    def look_up(self, address: str) -> None:
        """Find out the newest epoch issued for ``address`` and answer,
        once, with ``fencing.resolve(address, issued)``, from any thread
        (at once is fine)."""


class LocalEpochs:
    """A strict authority that knows only the epochs confirmed to the node
    (:meth:`Fencing.confirm`): anything above them is unissued. For tests
    and embedding programs that issue epochs themselves."""

    def __init__(self, fencing: Fencing) -> None:
        self.fencing = fencing

    def look_up(self, address: str) -> None:
        self.fencing.resolve(address, Issued(epoch=self.fencing.issued(address)))


@dataclass
class _Parked:
    """A sender whose envelopes wait for the authority. Exactly one party
    moves it on at a time: the authority's answer (``in_flight``), or the
    drainer that answer started."""

    queue: collections.deque[tuple[int, Envelope]] = field(default_factory=collections.deque)
    #: a look-up is outstanding
    in_flight: bool = True
    #: arrivals up to this number were here when the look-up was sent
    asked_after: int = 0
    #: the look-up was asked for by an announcement: raise to what it finds
    announced: bool = False
    #: an announcement read after the look-up was sent (its arrival number)
    again_at: int | None = None


class Fencing:
    """Floors per sender address, raised only to issued epochs.

    ``deliver(env)`` and ``refuse(env, verdict)`` are how a parked envelope
    leaves once the authority answered; ``on_resolved(address, issued)``
    listeners hear every answer (a cluster keeps its owner table with it).
    """

    def __init__(self, authority: EpochAuthority | None = None) -> None:
        """``authority``: who says which epochs were issued; None (a node
        outside a cluster): unverifiable epochs are delivered and move
        nothing."""
        self._lock = threading.Lock()
        self._floors: dict[str, int] = {}
        #: newest epoch known to be issued per address (confirmed or looked up)
        self._issued: dict[str, int] = {}
        self._parked: dict[str, _Parked] = {}
        self._arrivals = 0
        self.deliver: Callable[[Envelope], None] = lambda env: None
        self.refuse: Callable[[Envelope, Verdict], None] = lambda env, verdict: None
        self._listeners: list[Callable[[str, Issued], None]] = []
        self.authority: EpochAuthority | None = authority

    def set_authority(self, authority: EpochAuthority | None) -> None:
        self.authority = authority

    def on_resolved(self, listener: Callable[[str, Issued], None]) -> None:
        self._listeners.append(listener)

    # -- what the node asks ------------------------------------------------------

    def floor(self, address: str) -> int:
        """Envelopes from ``address`` with an older epoch are refused."""
        return self._floors.get(address, 0)

    def issued(self, address: str) -> int:
        """The newest epoch known here to have been issued for ``address``."""
        return self._issued.get(address, 0)

    def confirm(self, address: str, epoch: int) -> None:
        """A trusted statement (the authority's own answer, reached some
        other way, e.g. a claim's result): ``address`` is held under
        ``epoch`` now. Raises the floor to it."""
        with self._lock:
            if epoch > self._issued.get(address, 0):
                self._issued[address] = epoch
            if epoch > self._floors.get(address, 0):
                self._floors[address] = epoch

    def check(self, env: Envelope) -> Verdict:
        """The verdict for ``env`` (which has an epoch and a sender) now,
        or PARKED: it leaves later through ``deliver``/``refuse``."""
        sender = env.sender
        epoch = env.epoch
        assert sender is not None and epoch
        if epoch == self._floors.get(sender) and sender not in self._parked:
            return Verdict.DELIVER  # the common case, settled without the lock
        authority = self.authority
        with self._lock:
            self._arrivals += 1
            parked = self._parked.get(sender)
            if parked is not None:
                if len(parked.queue) >= PARKED_LIMIT:
                    return Verdict.UNVERIFIED
                parked.queue.append((self._arrivals, env))
                return Verdict.PARKED
            verdict = self._judge(sender, epoch)
            if verdict is not Verdict.PARKED:
                return verdict
            if authority is None:
                return Verdict.DELIVER  # nobody can say: delivered, and the floor stays
            parked = self._parked[sender] = _Parked(asked_after=self._arrivals)
            parked.queue.append((self._arrivals, env))
        authority.look_up(sender)
        return Verdict.PARKED

    def announced(self, address: str, epoch: int = 0) -> None:
        """A lease announcement for ``address`` (with the epoch it claims,
        0: not said) was read here, in stream order: ask the authority, hold
        the address's envelopes until it answers, then raise the floor to
        the newest issued epoch."""
        authority = self.authority
        if authority is None:
            return
        with self._lock:
            if epoch and epoch <= self._floors.get(address, 0):
                return  # nothing newer than what is already enforced
            parked = self._parked.get(address)
            if parked is not None:
                if parked.again_at is None:
                    parked.again_at = self._arrivals  # the answer on its way may predate this claim
                return
            self._parked[address] = _Parked(asked_after=self._arrivals, announced=True)
        authority.look_up(address)

    # -- the authority's answer --------------------------------------------------

    def resolve(self, address: str, issued: Issued) -> None:
        """The authority's answer for ``address``."""
        with self._lock:
            if issued.known and issued.epoch > self._issued.get(address, 0):
                self._issued[address] = issued.epoch
            parked = self._parked.get(address)
            if parked is not None:
                if not parked.in_flight:
                    parked = None  # not the answer anyone waits for
                else:
                    parked.in_flight = False
                    if parked.announced and issued.known and issued.epoch > self._floors.get(address, 0):
                        self._floors[address] = issued.epoch
                    parked.announced = False
        for listener in list(self._listeners):
            listener(address, issued)
        if parked is not None:
            self._drain(address, parked, known=issued.known)

    def _drain(self, address: str, parked: _Parked, *, known: bool) -> None:
        """Hand on the parked envelopes of ``address`` in order. Stops to
        ask again at an announcement read after the look-up was sent, or at
        an envelope newer than anything known that arrived after it."""
        while True:
            with self._lock:
                queue = parked.queue
                head = queue[0] if queue else None
                if head is None or (parked.again_at is not None and head[0] > parked.again_at):
                    if parked.again_at is None:
                        del self._parked[address]
                        return
                    parked.again_at = None
                    parked.announced = True
                    ask = True
                else:
                    arrival, env = head
                    verdict = self._judge(address, env.epoch)
                    ask = verdict is Verdict.PARKED and arrival > parked.asked_after
                    if verdict is Verdict.PARKED and not ask:
                        verdict = Verdict.UNISSUED if known else Verdict.UNVERIFIED
                    if not ask:
                        queue.popleft()
                if ask:
                    parked.in_flight = True
                    parked.asked_after = self._arrivals
                    break
            if verdict is Verdict.DELIVER:
                self.deliver(env)
            else:
                self.refuse(env, verdict)
        assert self.authority is not None
        self.authority.look_up(address)

    def _judge(self, sender: str, epoch: int) -> Verdict:
        """Under the lock: DELIVER, STALE, or PARKED (the authority must say)."""
        floor = self._floors.get(sender, 0)
        if epoch < floor:
            return Verdict.STALE
        if epoch == floor:
            return Verdict.DELIVER
        if epoch <= self._issued.get(sender, 0):
            self._floors[sender] = epoch
            return Verdict.DELIVER
        return Verdict.PARKED

    def waiting(self) -> int:
        """Envelopes parked for an answer (test support and metrics)."""
        with self._lock:
            return sum(len(p.queue) for p in self._parked.values())
