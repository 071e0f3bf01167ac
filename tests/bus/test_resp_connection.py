"""The RESP connections' parsing, without a server: what a read brings is
handed to the reader in pieces (bus.resp_connection.FEED) and every reply
must come out whole and in order, wherever the pieces cut it."""

from __future__ import annotations

import asyncio
import random

import pytest

from bus.resp_connection import FEED, SubscriberConnection
from bus.transport import TransportStats


class Owner:
    def __init__(self) -> None:
        self.stats = TransportStats()
        self.got: list[tuple[str, bytes]] = []
        self.batches: list[int] = []
        self._channel_names = {b"a:1": "a:1", b"b:2": "b:2"}
        self._receiver = lambda channel, data: self.got.append((channel, data))

    def _receiver_failed(self, channel: str) -> None:
        raise AssertionError(channel)

    def _received_batch(self) -> None:
        self.batches.append(len(self.got))

    def _subscription_reply(self, reply: object) -> None:
        pass


def _message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(data), data)


@pytest.mark.parametrize("seed", range(5))
def test_every_message_of_a_read_comes_out_whole_and_in_order(seed: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    try:
        owner = Owner()
        conn = SubscriberConnection(loop, owner)  # type: ignore[arg-type]
        conn.handshaking = False
        sent: list[tuple[str, bytes]] = []
        wire = b""
        for i in range(400):
            channel = rng.choice([b"a:1", b"b:2"])
            size = rng.choice([0, 1, 100, FEED - 20, FEED, FEED + 7, 3 * FEED])
            data = bytes([i % 256]) * size
            sent.append((channel.decode(), data))
            wire += _message(channel, data)
        reads = 0
        pos = 0
        while pos < len(wire):  # reads of random sizes, cut anywhere
            n = min(len(wire) - pos, rng.randint(1, 5 * FEED))
            buffer = conn.get_buffer(-1)
            buffer[:n] = wire[pos : pos + n]
            conn.buffer_updated(n)
            pos += n
            reads += 1
        assert owner.got == sent
        assert owner.stats.received == len(sent)
        # One batch end per read that completed a message, after all of it.
        assert owner.batches == sorted(set(owner.batches)) and owner.batches[-1] == len(sent)
        assert len(owner.batches) <= reads
        conn.data_received(_message(b"a:1", b"z" * (2 * FEED + 1)))  # the bytes path, too
        assert owner.got[-1] == ("a:1", b"z" * (2 * FEED + 1))
    finally:
        loop.close()
