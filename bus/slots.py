"""A Redis Cluster's hash slots: which of the 16,384 a channel or key is in.

``redis.crc.key_slot`` (CRC16 of the name, or of its ``{hash tag}``),
cached per name: a node's channels come back on every send.
"""

from __future__ import annotations

from redis.crc import key_slot

__all__ = ["SLOTS", "channel_slot", "group_by_slot"]

SLOTS = 16384
_CACHE_LIMIT = 200_000
_slot_cache: dict[str, int] = {}


def channel_slot(channel: str) -> int:
    """The hash slot of a channel (or key) name."""
    slot = _slot_cache.get(channel)
    if slot is None:
        if len(_slot_cache) >= _CACHE_LIMIT:
            _slot_cache.clear()
        slot = _slot_cache[channel] = key_slot(channel.encode())
    return slot


def group_by_slot(channels: list[str]) -> list[list[str]]:
    """``channels`` in groups of one slot each (a shard command names one
    slot only: ``SSUBSCRIBE a b`` with a and b in two slots is CROSSSLOT)."""
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(channel_slot(channel), []).append(channel)
    return list(groups.values())
