"""The transport conformance suite, plus what is particular to InProcessTransport.

``TestTransportConformance`` runs against every implementation through the
parametrized ``make_transport`` fixture (``[inprocess]`` and ``[redis]``);
the in-process transport is the reference, so the suite lives here.
Redis-only behaviour (reconnects, URLs, ACL, batching) is in
``test_redis_transport.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from bus.errors import TransportError
from bus.transport import InProcessHub, InProcessTransport, Transport, TransportStats

from .conftest import DEADLINE, Collector

MakeTransport = Callable[..., Transport]


def _connected_pair(make: MakeTransport, collector: Collector, *channels: str) -> tuple[Transport, Transport]:
    """A publisher and a subscriber (receiving into ``collector``) on ``channels``."""
    sender = make("sender")
    receiver = make("receiver")
    receiver.set_receiver(collector)
    receiver.subscribe(*channels)
    assert receiver.wait_subscribed(DEADLINE)
    return sender, receiver


class TestTransportConformance:
    def test_is_a_transport(self, make_transport: MakeTransport) -> None:
        transport = make_transport()
        assert isinstance(transport, Transport)
        assert isinstance(transport.stats, TransportStats)

    def test_publish_reaches_a_subscriber_of_another_transport(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        channel = channel_prefix + "meeting:m-1"
        sender, receiver = _connected_pair(make_transport, got, channel)

        sender.publish(channel, b"hello")

        assert got.wait_message(channel, b"hello")
        assert sender.flush(DEADLINE)
        assert sender.stats.published == 1
        assert receiver.stats.received == 1

    def test_exact_channel_match_only(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        wanted, other = channel_prefix + "a", channel_prefix + "a*"
        sender, _ = _connected_pair(make_transport, got, wanted)

        sender.publish(other, b"not for you")
        sender.publish(wanted, b"for you")

        assert got.wait_message(wanted, b"for you")
        assert got.on(other) == []

    def test_order_per_channel_is_kept_for_10000_messages(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        channels = [channel_prefix + f"c{i}" for i in range(3)]
        sender, _ = _connected_pair(make_transport, got, *channels)
        count = 10_000

        for i in range(count):
            sender.publish(channels[i % 3], b"%d" % i)

        assert sender.flush(DEADLINE)
        assert got.wait_count(count)
        for k, channel in enumerate(channels):
            assert got.on(channel) == [b"%d" % i for i in range(k, count, 3)]

    def test_every_subscriber_gets_a_copy(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        channel = channel_prefix + "fanout"
        sender = make_transport("sender")
        collectors = [collector() for _ in range(3)]
        for i, got in enumerate(collectors):
            node = make_transport(f"node-{i}")
            node.set_receiver(got)
            node.subscribe(channel)
            assert node.wait_subscribed(DEADLINE)

        sender.publish(channel, b"all")

        for got in collectors:
            assert got.wait_message(channel, b"all")

    def test_a_transport_hears_its_own_channel(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        node = make_transport()
        node.set_receiver(got)
        node.subscribe(channel_prefix + "self")
        assert node.wait_subscribed(DEADLINE)

        node.publish(channel_prefix + "self", b"loop")

        assert got.wait_message(channel_prefix + "self", b"loop")

    def test_subscribe_is_idempotent(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        channel = channel_prefix + "twice"
        sender, receiver = _connected_pair(make_transport, got, channel)
        receiver.subscribe(channel, channel)
        assert receiver.wait_subscribed(DEADLINE)

        sender.publish(channel, b"once")
        sender.publish(channel_prefix + "marker", b"-")
        receiver.subscribe(channel_prefix + "marker")
        assert receiver.wait_subscribed(DEADLINE)
        sender.publish(channel_prefix + "marker", b"end")

        assert got.wait_message(channel_prefix + "marker", b"end")
        assert got.on(channel) == [b"once"]

    def test_unsubscribe_stops_delivery(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        gone, kept = channel_prefix + "gone", channel_prefix + "kept"
        sender, receiver = _connected_pair(make_transport, got, gone, kept)
        sender.publish(gone, b"before")
        assert got.wait_message(gone, b"before")

        receiver.unsubscribe(gone)
        assert receiver.wait_subscribed(DEADLINE)
        sender.publish(gone, b"after")
        # Same sender, same receiver: once the marker is in, "after" would be too.
        sender.publish(kept, b"marker")

        assert got.wait_message(kept, b"marker")
        assert got.on(gone) == [b"before"]

    def test_unsubscribe_of_unknown_channel_is_harmless(self, make_transport: MakeTransport) -> None:
        node = make_transport()
        node.unsubscribe("never-subscribed")
        assert node.wait_subscribed(DEADLINE)

    def test_receiver_exception_does_not_stop_delivery(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        channel = channel_prefix + "boom"

        def receiver(channel: str, data: bytes) -> None:
            got(channel, data)
            if data == b"bad":
                raise ValueError("receiver bug")

        sender, node = _connected_pair(make_transport, got, channel)
        node.set_receiver(receiver)

        sender.publish(channel, b"bad")
        sender.publish(channel, b"good")

        assert got.wait_message(channel, b"good")
        assert node.stats.receiver_errors == 1
        assert node.stats.received == 2

    def test_publishes_and_subscriptions_before_start_apply_at_start(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        channel = channel_prefix + "early"
        receiver = make_transport("receiver", start=False)
        receiver.set_receiver(got)
        receiver.subscribe(channel)
        receiver.start()
        assert receiver.wait_subscribed(DEADLINE)
        sender = make_transport("sender", start=False)
        sender.publish(channel, b"queued")

        sender.start()

        assert sender.flush(DEADLINE)
        assert got.wait_message(channel, b"queued")

    def test_when_subscribed_calls_back_once_the_channels_are_live(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        channels = [channel_prefix + f"w{i}" for i in range(3)]
        receiver = make_transport("receiver", start=False)
        receiver.set_receiver(got)
        receiver.subscribe(*channels)
        answers: list[bool] = []
        called = threading.Event()

        def callback(confirmed: bool) -> None:
            answers.append(confirmed)
            called.set()

        receiver.when_subscribed(channels, callback)
        assert answers == []  # not started: nothing is live yet
        receiver.start()
        assert called.wait(DEADLINE)
        assert answers == [True]
        sender = make_transport("sender")
        for channel in channels:  # live: every publish now reaches the receiver
            sender.publish(channel, b"x")
        assert got.wait_count(3)

        again: list[bool] = []
        receiver.when_subscribed(channels[:1], again.append)
        assert again == [True]  # already confirmed: at once, on the caller's thread

    def test_when_subscribed_answers_false_when_closed_first(
        self, make_transport: MakeTransport, channel_prefix: str
    ) -> None:
        node = make_transport("node", start=False)
        node.subscribe(channel_prefix + "never")
        answers: list[bool] = []
        node.when_subscribed([channel_prefix + "never"], answers.append)
        node.close()
        assert answers == [False]
        node.when_subscribed([channel_prefix + "never"], answers.append)
        assert answers == [False, False]

    def test_start_is_idempotent(self, make_transport: MakeTransport) -> None:
        node = make_transport()
        node.start()
        assert node.wait_subscribed(DEADLINE)

    def test_publish_after_close_raises_and_close_is_idempotent(self, make_transport: MakeTransport) -> None:
        node = make_transport()
        node.close()
        node.close()
        with pytest.raises(TransportError):
            node.publish("anything", b"x")
        assert not node.wait_subscribed(DEADLINE)  # answers at once: closed

    def test_publish_is_thread_safe(
        self, make_transport: MakeTransport, collector: type[Collector], channel_prefix: str
    ) -> None:
        got = collector()
        threads_count, per_thread = 4, 500
        channels = [channel_prefix + f"t{i}" for i in range(threads_count)]
        sender, _ = _connected_pair(make_transport, got, *channels)
        go = threading.Event()

        def work(channel: str) -> None:
            go.wait(DEADLINE)
            for i in range(per_thread):
                sender.publish(channel, b"%d" % i)

        threads = [threading.Thread(target=work, args=(c,)) for c in channels]
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join(DEADLINE)

        assert sender.flush(DEADLINE)
        assert got.wait_count(threads_count * per_thread)
        for channel in channels:  # each thread's own order holds
            assert got.on(channel) == [b"%d" % i for i in range(per_thread)]

    def test_state_callback_reports_connected(
        self, make_transport: MakeTransport, state_recorder: type, channel_prefix: str
    ) -> None:
        states = state_recorder()
        node = make_transport(start=False)
        node.on_state(states)
        node.start()
        assert states.wait_for("connected")


class TestInProcessTransport:
    def test_delivery_is_synchronous_on_the_publishers_thread(self) -> None:
        hub = InProcessHub()
        sender, receiver = InProcessTransport(hub, name="s"), InProcessTransport(hub, name="r")
        got = Collector()
        receiver.set_receiver(got)
        receiver.subscribe("c")
        sender.start()
        receiver.start()

        sender.publish("c", b"now")

        assert got.items == [("c", b"now")]  # no wait: delivered before publish returned
        assert got.threads == {threading.current_thread().name}

    def test_closed_transport_leaves_the_hub(self) -> None:
        hub = InProcessHub()
        node = InProcessTransport(hub)
        node.subscribe("c")
        node.start()
        assert hub.subscribers("c") == 1

        node.close()

        assert hub.subscribers("c") == 0
        assert hub.publish("c", b"x") == 0

    def test_unstarted_transport_receives_nothing(self) -> None:
        hub = InProcessHub()
        sender, idle = InProcessTransport(hub), InProcessTransport(hub)
        got = Collector()
        idle.set_receiver(got)
        idle.subscribe("c")
        sender.start()

        sender.publish("c", b"x")

        assert got.items == []
        assert not idle.wait_subscribed(0)

    def test_publishes_pending_at_close_are_dropped_and_reported(self) -> None:
        node = InProcessTransport(InProcessHub())
        drops: list[tuple[str, str]] = []
        node.on_drop(lambda channel, reason: drops.append((channel, reason)))
        node.publish("c", b"never started")

        node.close()

        assert drops == [("c", "closed")]
        assert node.stats.dropped == 1

    def test_transports_on_different_hubs_do_not_meet(self) -> None:
        a = InProcessTransport(InProcessHub())
        b = InProcessTransport(InProcessHub())
        got = Collector()
        b.set_receiver(got)
        b.subscribe("c")
        a.start()
        b.start()

        a.publish("c", b"x")

        assert got.items == []
