"""Dedupe: the msg ids delivered and handled at a node, sans I/O.

A message may reach a node twice (a sender's retry, a forward racing a
direct publish, a paused node waking and forwarding what it held), and an
address's next owner may be sent a copy of what its last owner already
handled. :class:`SeenIds` answers "is this the first delivery here?" and
keeps, per leased address, which msg ids its actor handled, so they can
travel with its checkpoints to the next owner. Plain data and methods: no
I/O, no clock, no threads (the cluster shell uses it on the node's loop).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from bus.cluster.leases import SEEN_PER_ADDRESS, HandledIds

__all__ = ["SEEN_PER_ADDRESS", "SeenIds"]


class _AddressIds:
    """The msg ids one leased address's actor was given (``queued``), is
    handling (``current``) and has handled (the last ``keep``, oldest first;
    ``known`` is their set), and what of them went to Redis: the handled
    ids no write carried yet (``unsent``, oldest first), the newest id a
    write carried (``tail``: Redis's list ends there, as far as this node
    knows), and whether the next write must send the whole window
    (``resync``: Redis's list is not known to end at ``tail``)."""

    __slots__ = ("current", "current_written", "handled", "known", "queued", "resync", "tail", "unsent")

    def __init__(self) -> None:
        self.queued: collections.deque[str] = collections.deque()
        self.current: str | None = None
        self.current_written = False
        self.handled: collections.deque[str] = collections.deque()
        self.known: set[str] = set()
        self.unsent: list[str] = []
        self.tail: str | None = None
        self.resync = False


class SeenIds:
    """Msg ids delivered here, to drop a second copy of an envelope (the
    node's loop only, like the rest of the shell).

    Node-wide: the last ``capacity`` ids delivered to any address, for a
    copy that comes back to this node. Per leased address: the ids its
    actor handled (the last ``keep``). Those go to Redis with its
    checkpoints (the ids of messages no checkpoint carried are written by
    themselves: :meth:`actors.cluster.shell.Cluster._persist_seen`, and when the lease is
    released) and come back, before anything is delivered, with the
    address's next activation on this node or another (:meth:`restore`): a
    copy that reaches the next owner, or this node after a restart, is
    dropped too.

    Which ids count as handled. The node puts an actor's messages in its
    mailbox in the order they passed :meth:`first`, and asks
    :meth:`actors.cluster.shell.Cluster.may_deliver` once before it hands the actor each of them
    (:meth:`handling`); an id forwarded instead (the lease moved) is
    forgotten (:meth:`forget`). A checkpoint saved by a handler carries the
    id of the message being handled (its state includes that message); an
    id still queued is never written, so a message that nobody handled is
    handled by whoever gets it first. Known gaps: two threads putting
    messages for one address at the same instant may put them in the other
    order than they passed :meth:`first`; a message refused for a full
    mailbox after it passed makes each later one count one message late (a
    copy of an actor's last message may then be handled again after an
    owner change; never one message early).
    """

    def __init__(self, capacity: int, keep: int = SEEN_PER_ADDRESS) -> None:
        self._ids: dict[str, None] = {}
        self._order: collections.deque[str] = collections.deque()
        self._capacity = capacity
        self._keep = keep
        self._addresses: dict[str, _AddressIds] = {}
        #: addresses that may have ids not in Redis (a superset: what
        #: :meth:`unwritten` looks at, instead of every address held)
        self._dirty: set[str] = set()

    def first(self, msg_id: str, address: str | None = None, track: bool = False) -> bool:
        """True the first time ``msg_id`` is delivered here and it is not
        among the ids handled at ``address``; with ``track``, it is on its
        way to the actor at ``address``."""
        if msg_id in self._ids:
            return False
        entry = self._addresses.get(address) if address is not None else None
        if entry is not None and msg_id in entry.known:
            return False
        self._ids[msg_id] = None
        self._order.append(msg_id)
        if len(self._order) > self._capacity:
            self._ids.pop(self._order.popleft(), None)
        if track and address is not None:
            if entry is None:
                entry = self._addresses[address] = _AddressIds()
            entry.queued.append(msg_id)
        return True

    def handling(self, address: str) -> None:
        """The actor at ``address`` is about to handle its next message: the
        one before is handled."""
        entry = self._addresses.get(address)
        if entry is None:
            return
        self._complete(entry)
        entry.current = entry.queued.popleft() if entry.queued else None
        entry.current_written = False
        self._dirty.add(address)

    def put_back(self, address: str) -> None:
        """The message :meth:`handling` announced was not handled: it is the
        next one again (its actor deferred it)."""
        entry = self._addresses.get(address)
        if entry is None or entry.current is None:
            return
        entry.queued.appendleft(entry.current)
        entry.current = None

    def _complete(self, entry: _AddressIds) -> None:
        msg_id = entry.current
        if msg_id is None:
            return
        entry.current = None
        if self._add_handled(entry, (msg_id,), at_end=True) and not entry.current_written:
            entry.unsent.append(msg_id)

    def _add_handled(self, entry: _AddressIds, ids: Iterable[str], *, at_end: bool) -> list[str]:
        new = [i for i in dict.fromkeys(ids) if i not in entry.known]
        entry.known.update(new)
        if at_end:
            entry.handled.extend(new)
        else:
            entry.handled.extendleft(reversed(new))
        while len(entry.handled) > self._keep:
            entry.known.discard(entry.handled.popleft())
        return new

    def forget(self, msg_id: str, address: str | None = None) -> None:
        """It was not handled here after all (forwarded): a copy that comes
        back is a first delivery."""
        self._ids.pop(msg_id, None)
        entry = self._addresses.get(address) if address is not None else None
        if entry is None:
            return
        if entry.current == msg_id:
            entry.current = None
            return
        try:
            entry.queued.remove(msg_id)
        except ValueError:
            pass

    def handled(self, address: str, *, whole: bool = False) -> HandledIds | None:
        """The ids to write for ``address`` now, with the message being (or
        last) handled: from a handler saving a checkpoint, or once the actor
        stopped. They count as written from here. ``whole``: the whole
        window, to replace what Redis holds (otherwise only the ids no
        write carried yet, unless Redis's list is not known). None: not
        tracked, or nothing to write."""
        entry = self._addresses.get(address)
        if entry is None:
            return None
        return self._take(entry, with_current=True, whole=whole)

    def _take(self, entry: _AddressIds, *, with_current: bool, whole: bool = False) -> HandledIds | None:
        if with_current and entry.current is not None and not entry.current_written:
            entry.unsent.append(entry.current)
            entry.current_written = True
        if whole or entry.resync:
            window = list(entry.handled)
            if entry.current is not None and entry.current_written:
                window.append(entry.current)
            out = HandledIds(tuple(window[-self._keep:]), replace=True)
        elif entry.unsent:
            out = HandledIds(tuple(entry.unsent[-self._keep:]), entry.tail)
        else:
            return None
        entry.unsent = []
        entry.resync = False
        if out.ids:
            entry.tail = out.ids[-1]
        return out

    def unwritten(self) -> list[tuple[str, str | None]]:
        """For each address whose ids are not all in Redis: ``(address, the
        id being or last handled if no write carried it)``; :meth:`take`
        gives the write. Looks only at the addresses that handled something
        since their last write."""
        out = []
        for address in list(self._dirty):
            e = self._addresses.get(address)
            if e is None or not (e.unsent or e.resync or (e.current is not None and not e.current_written)):
                self._dirty.discard(address)  # all in Redis (or gone): until its next message
                continue
            out.append((address, None if e.current_written else e.current))
        return out

    def take(self, address: str, *, with_current: bool) -> HandledIds | None:
        """The write of ``address``'s handled ids that no write carried yet
        (with the one being handled, if ``with_current``: its actor is
        parked); they count as written from here. None: nothing to write."""
        entry = self._addresses.get(address)
        return None if entry is None else self._take(entry, with_current=with_current)

    def resend(self, address: str) -> None:
        """Redis's list of ``address``'s ids did not end where this node
        believed (an append was refused): the next write sends the whole
        window."""
        entry = self._addresses.get(address)
        if entry is None:
            return
        entry.resync = True
        self._dirty.add(address)

    def restore(self, address: str, ids: Iterable[str]) -> None:
        """The ids ``address``'s actor handled under its previous owner (older
        than anything handled here since), as Redis's list holds them:
        copies of them are dropped, and this node's writes append to them."""
        entry = self._addresses.get(address)
        if entry is None:
            entry = self._addresses[address] = _AddressIds()
        ids = list(ids)
        self._add_handled(entry, ids, at_end=False)
        if ids and entry.tail is None:
            entry.tail = ids[-1]

    def drop(self, address: str) -> None:
        """``address`` is no longer held here (its ids went with it)."""
        self._addresses.pop(address, None)
        self._dirty.discard(address)
