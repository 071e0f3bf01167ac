"""Checkpoints: an actor's state that outlives its incarnation.

A restarted actor (a crash under a supervisor, an owner change in a
cluster) starts empty unless something kept its state. An actor saves a
checkpoint (:meth:`~actors.runtime.actor.HuddleActor.checkpoint`, msgpack
primitives only); the next incarnation at the same address gets it as
``ctx.checkpoint``. Where checkpoints live is a seam, a
:class:`CheckpointStore` given to the node: :class:`MemoryCheckpoints` keeps
them in the process (the default); ``actors.cluster`` keeps them in Redis.
A save carries the saver's epoch, so a former owner cannot overwrite what
a newer one saved.
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["CheckpointStore", "MemoryCheckpoints"]


class CheckpointStore(Protocol):
    """Where an actor's last checkpoint lives between incarnations."""

    def save(self, address: str, epoch: int, data: bytes) -> bool:
        """Store ``data`` (msgpack) for ``address``; False if refused."""

    def load(self, address: str) -> bytes | None: ...

    def delete(self, address: str) -> None: ...


class MemoryCheckpoints:
    """Checkpoints kept by the node itself (one process). Stored as msgpack
    bytes, so a restored state is always a fresh copy."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()

    def save(self, address: str, epoch: int, data: bytes) -> bool:
        with self._lock:
            current = self._data.get(address)
            if current is not None and epoch < current[0]:
                return False
            self._data[address] = (epoch, data)
            return True

    def load(self, address: str) -> bytes | None:
        with self._lock:
            current = self._data.get(address)
        return None if current is None else current[1]

    def delete(self, address: str) -> None:
        with self._lock:
            self._data.pop(address, None)
