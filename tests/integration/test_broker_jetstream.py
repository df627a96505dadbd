"""`nats+jetstream://` (at least once) on a real `nats-server -js`: the issue's must-shows.

A consumer SIGKILLed while holding unacknowledged events: another member of its group gets every
one. The server restarted under a publisher: every publish that returned is consumed, duplicates
are counted and bounded, and one Micro-Id published twice is delivered once. A poison event is
dead-lettered after max_deliveries while the subscriber goes on. A server that is down at start,
or while publishing, is a clear error naming the URL, after bounded retries; publishing works
again once it is back. Plus a typed `@service.subscriber`, and a stream of the user's own used
as it is.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from broker_kit import Inbox, deliveries, open_broker, settle_time, start_consumer, unique_topic
from engines import free_port
from engines.nats import NatsServer, nats_server
from helpers import async_wait_until, wait_until
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServerError

from microweave import Service
from microweave._backends import load_broker
from microweave.broker import DEAD_LETTER_REASON, Broker, Event, dead_letter_topic
from microweave.errors import BrokerError
from microweave.testing import capture_logs

WAIT = 30.0


class OrderPlaced(msgspec.Struct):
    order: str
    amount: int


def js_url(server: NatsServer, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"nats+jetstream://{server.address}" + (f"?{query}" if query else "")


@pytest.fixture
async def broker(jetstream_engine: NatsServer) -> AsyncIterator[Broker]:
    async with open_broker(js_url(jetstream_engine)) as broker:
        yield broker


async def test_a_killed_consumer_s_messages_go_to_another_member(
    jetstream_engine: NatsServer, tmp_path: Path
) -> None:
    """The holder takes 10 events and never acks; while it lives, in-progress acks keep them
    (nothing comes to the other member in 3 x ack_wait); SIGKILLed, all 10 go to the other."""
    url = js_url(jetstream_engine, ack_wait=1)
    topic = unique_topic()
    holder = start_consumer(tmp_path, url, topic, "workers", "hold", 10)
    try:
        async with open_broker(url) as broker:
            sent = [await broker.publish(topic, OrderPlaced(order=f"o-{n}", amount=n)) for n in range(10)]
            await asyncio.to_thread(
                wait_until, lambda: len(deliveries(holder)) == 10, timeout=WAIT, what="the holder to take all"
            )
            other = Inbox()
            await broker.subscribe(topic, other, queue="workers")
            await asyncio.sleep(3.0)  # three ack_waits: the holder's in-progress acks keep them
            assert other.events == [], "a live holder keeps its events"
            holder.signal(signal.SIGKILL)
            holder.wait(WAIT)
            await other.wait(10)
            await settle_time(broker)
        held = [str(d["id"]) for d in deliveries(holder)]
    finally:
        holder.stop()
    assert sorted(held) == sorted(sent)
    assert sorted(other.ids) == sorted(sent), "every event the killed consumer held, once each"
    assert all(event.attempt >= 2 for event in other.events), [e.attempt for e in other.events]


async def test_a_server_restart_loses_no_confirmed_publish(jetstream_engine: NatsServer) -> None:
    """A publisher publishes 300 events with ids of its own; the server is stopped and started
    again (same store) in the middle. A publish that raised is retried with the same Micro-Id
    (what a user does); every publish that returned is consumed; duplicates are counted."""
    url = js_url(jetstream_engine, ack_wait=2, publish_timeout=2)
    topic = unique_topic()
    total = 300
    confirmed: list[str] = []
    failures = 0
    restarted = asyncio.Event()

    async def publish_all(broker: Broker) -> None:
        nonlocal failures
        for n in range(total):
            message_id = f"m-{n}"
            while True:
                try:
                    await broker.publish(
                        topic, OrderPlaced(order=message_id, amount=n), headers={"Micro-Id": message_id}
                    )
                except BrokerError:
                    failures += 1
                    await asyncio.sleep(0.2)
                    continue
                confirmed.append(message_id)
                break
            if n == 100:
                restarted.clear()
                asyncio.get_running_loop().create_task(restart())
            await asyncio.sleep(0.005)

    async def restart() -> None:
        await asyncio.to_thread(jetstream_engine.stop)
        await asyncio.sleep(0.5)  # publishes meanwhile fail and are retried
        await asyncio.to_thread(jetstream_engine.start)
        restarted.set()

    async with open_broker(url) as consumer, open_broker(url) as publisher:
        inbox = Inbox()
        await consumer.subscribe(topic, inbox, queue="audit")
        await publish_all(publisher)
        async with asyncio.timeout(WAIT):
            await restarted.wait()
        twice = await publisher.publish(
            topic, OrderPlaced(order="twice", amount=0), headers={"Micro-Id": "twice"}
        )
        await publisher.publish(topic, OrderPlaced(order="twice", amount=0), headers={"Micro-Id": twice})

        expected = set(confirmed) | {twice}
        while not expected <= set(inbox.ids):  # duplicates may come, so count ids, not events
            await inbox.wait(len(inbox.events) + 1)
        await settle_time(consumer)
        await asyncio.sleep(2.5)  # an ack_wait more: a late redelivery would show here

    counts = collections.Counter(inbox.ids)
    duplicates = sum(c - 1 for c in counts.values())
    assert len(confirmed) == total
    assert set(confirmed) <= set(counts), "no confirmed publish is lost"
    assert counts[twice] == 1, "the same Micro-Id published twice is delivered once"
    # a redelivery can only be of an event whose ack the restart swallowed: at most what the
    # subscriber had in flight around the restart
    assert duplicates <= 64, (duplicates, failures)
    print(f"restart: {total} confirmed, {failures} failed publish attempts retried, {duplicates} duplicates")


async def test_poison_is_dead_lettered_after_max_deliveries_and_consuming_goes_on(
    jetstream_engine: NatsServer,
) -> None:
    topic = unique_topic()
    async with open_broker(js_url(jetstream_engine, max_deliveries=3)) as broker:
        dead = Inbox()
        await broker.subscribe(dead_letter_topic(topic), dead, queue="dlq")

        async def handle(event: Event) -> None:
            order = event.decode(OrderPlaced)  # the undecodable one: BadRequest, dead at once
            if order.order == "always-fails":
                raise RuntimeError("this one never works")

        inbox = Inbox(handle)
        with capture_logs(logging.WARNING, logger="microweave.broker"):
            await broker.subscribe(topic, inbox, queue="billing", max_in_flight=1)
            failing = await broker.publish(topic, OrderPlaced(order="always-fails", amount=1))
            poison = await broker.publish(topic, b"\xff not json")
            fine = [await broker.publish(topic, OrderPlaced(order=f"ok-{n}", amount=n)) for n in range(20)]
            await dead.wait(2)
            await settle_time(broker)
    assert sorted(dead.ids) == sorted([failing, poison])
    by_id = {e.id: e for e in dead.events}
    assert by_id[poison].body == b"\xff not json"
    assert by_id[failing].decode(OrderPlaced).order == "always-fails"
    assert "3 deliveries" in (by_id[failing].header(DEAD_LETTER_REASON) or "")
    assert by_id[poison].header(DEAD_LETTER_REASON)
    assert [e.attempt for e in inbox.events if e.id == failing] == [1, 2, 3]
    assert [e.attempt for e in inbox.events if e.id == poison] == [1]
    assert set(fine) <= set(inbox.ids), "the subscriber went on consuming, one slot and all"


async def test_dead_letters_written_before_anyone_subscribed_are_read_later(
    jetstream_engine: NatsServer, broker: Broker
) -> None:
    """Nobody listens on the dead-letter topic when the poison event dies; a new queue group and
    a new broadcast subscriber of it, made afterwards, both get it. A new group on the ordinary
    topic does not get what was published before it existed."""
    topic = unique_topic()

    async def handle(event: Event) -> None:
        event.decode(OrderPlaced)  # the body does not decode: BadRequest, dead at once

    inbox = Inbox(handle)
    await broker.subscribe(topic, inbox, queue="billing")
    poison = await broker.publish(topic, b"\xff not json")
    plain = await nats.connect(jetstream_engine.url)
    try:
        js = plain.jetstream()
        stream = await js.find_stream_name_by_subject(topic)

        async def dead_lettered() -> bool:
            try:
                await js.get_last_msg(stream, dead_letter_topic(topic))
            except NotFoundError:
                return False
            return True

        await async_wait_until(dead_lettered, timeout=WAIT, what="the poison event to be dead-lettered")
    finally:
        await plain.close()
    in_queue, broadcast, late = Inbox(), Inbox(), Inbox()
    await broker.subscribe(dead_letter_topic(topic), in_queue, queue="inspect")
    await broker.subscribe(dead_letter_topic(topic), broadcast)
    await broker.subscribe(topic, late, queue="late")
    await in_queue.wait(1)
    await broadcast.wait(1)
    await settle_time(broker)
    assert in_queue.ids == [poison] and broadcast.ids == [poison]
    assert in_queue.events[0].header(DEAD_LETTER_REASON)
    assert late.ids == [], "an ordinary new group gets only what is published after it subscribed"


async def test_server_down_at_start_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    broker = load_broker(f"nats+jetstream://ada:s3cret@127.0.0.1:{port}?connect_timeout=1")
    with pytest.raises(BrokerError) as caught:
        await broker.connect()
    message = str(caught.value)
    assert f"nats+jetstream://127.0.0.1:{port}" in message and "-js" in message and "attempt" in message
    assert "s3cret" not in message and "ada" not in message

    with nats_server(tmp_path) as plain:  # a server without JetStream
        broker = load_broker(f"nats+jetstream://{plain.address}?connect_timeout=1")
        with pytest.raises(BrokerError, match="without JetStream"):
            await broker.connect()


async def test_publish_while_the_server_is_down_raises_and_works_again_after(
    jetstream_engine: NatsServer,
) -> None:
    url = js_url(jetstream_engine, publish_timeout=1)
    topic = unique_topic()
    async with open_broker(url) as broker:
        inbox = Inbox()
        await broker.subscribe(topic, inbox, queue="q")
        before = await broker.publish(topic, OrderPlaced(order="before", amount=1))
        await inbox.wait(1)
        await asyncio.to_thread(jetstream_engine.stop)
        with pytest.raises(BrokerError) as caught:
            await broker.publish(topic, OrderPlaced(order="while down", amount=2))
        assert f"nats+jetstream://{jetstream_engine.address}" in str(caught.value)
        assert f"publish to {topic}" in str(caught.value)
        await asyncio.to_thread(jetstream_engine.start)
        after = None
        async with asyncio.timeout(WAIT):
            while after is None:  # nats-py reconnects within its retry wait
                try:
                    after = await broker.publish(topic, OrderPlaced(order="after", amount=3))
                except BrokerError:
                    await asyncio.sleep(0.2)
        await inbox.wait(2)
    assert before in inbox.ids and after in inbox.ids


async def test_a_typed_service_subscriber_gets_each_event(jetstream_engine: NatsServer) -> None:
    topic = unique_topic("orders")
    got: list[tuple[OrderPlaced, int]] = []
    arrived = asyncio.Event()
    service = Service("shop", registry=f"memory://{uuid.uuid4().hex}", broker=js_url(jetstream_engine))

    @service.subscriber(topic, queue="billing")
    async def on_order(event: OrderPlaced) -> None:
        got.append((event, len(got)))
        if len(got) == 3:
            arrived.set()

    async with service:
        for n in range(3):
            await service.client.publish(topic, OrderPlaced(order=f"o-{n}", amount=10 * n))
        async with asyncio.timeout(WAIT):
            await arrived.wait()
    assert sorted(o.order for o, _ in got) == ["o-0", "o-1", "o-2"]


async def test_a_stream_of_the_user_s_own_is_used_as_it_is(
    jetstream_engine: NatsServer, broker: Broker
) -> None:
    """A stream capturing `shop.>` exists: a topic under it is stored there, no stream of ours
    is made; a topic with characters a stream name may not hold gets a valid one of ours."""
    plain = await nats.connect(jetstream_engine.url)
    try:
        js = plain.jetstream()
        await js.add_stream(name="SHOP", subjects=["shop.>"])
        inbox = Inbox()
        await broker.subscribe("shop.orders", inbox, queue="q")
        odd = "odd/topic:v1.€"
        odd_inbox = Inbox()
        await broker.subscribe(odd, odd_inbox)
        await broker.publish("shop.orders", OrderPlaced(order="o", amount=1))
        await broker.publish(odd, b"{}")
        await inbox.wait(1)
        await odd_inbox.wait(1)
        assert (await js.stream_info("SHOP")).state.messages == 1
        names = [info.config.name for info in await js.streams_info()]
        assert await js.find_stream_name_by_subject("shop.orders") == "SHOP"
        assert len(names) == 2 and "SHOP" in names, names
        ours = await js.find_stream_name_by_subject(odd)
        assert ours != "SHOP" and all(c.isalnum() or c in "_-" for c in ours), ours
    finally:
        await plain.close()


@pytest.mark.parametrize("queue", ["group", None])
async def test_a_consumer_the_server_lost_is_created_again(
    jetstream_engine: NatsServer, broker: Broker, queue: str | None
) -> None:
    """Deleted under a running subscriber (an operator, a server that lost it): the subscriber
    notices, creates it again, and consumes what is published next."""
    topic = unique_topic()
    inbox = Inbox()
    sub = await broker.subscribe(topic, inbox, queue=queue)
    await broker.publish(topic, b'{"n": 1}')
    await inbox.wait(1)
    plain = await nats.connect(jetstream_engine.url)
    try:
        js = plain.jetstream()
        stream = await js.find_stream_name_by_subject(topic)
        (consumer,) = await js.consumers_info(stream)
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            await delete_consumer(js, stream, consumer.name)
            later = await broker.publish(topic, b'{"n": 2}')
            await inbox.wait(2)
        assert inbox.ids[1] == later
        assert any("gone" in entry["message"] for entry in logs), logs
        assert [c.name for c in await js.consumers_info(stream)] == [consumer.name]
        await sub.unsubscribe()
        left = [c.name for c in await js.consumers_info(stream)]
        assert left == ([consumer.name] if queue else []), "a group's consumer stays; a broadcast one goes"
    finally:
        await plain.close()


async def delete_consumer(js: JetStreamContext, stream: str, name: str) -> None:
    """nats-server 2.9 sometimes answers a delete with "directory not empty" (a file it was
    still writing): ask again until the consumer is gone."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                await js.delete_consumer(stream, name)
            except NotFoundError:
                return
            except ServerError:
                await asyncio.sleep(0.1)
                continue
            return


async def test_an_event_larger_than_the_server_takes_is_refused_at_once(
    jetstream_engine: NatsServer, broker: Broker
) -> None:
    """Past the server's max_payload (1 MiB): BrokerError saying so, not retries of it."""
    with pytest.raises(BrokerError, match="payload") as caught:
        await broker.publish(unique_topic(), b"x" * (1024 * 1024))
    assert "tries" not in str(caught.value), "refused without retrying"
