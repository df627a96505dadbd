"""`rabbitmq://` on a real RabbitMQ: what the conformance suite cannot show with one process and
a broker that never goes away.

Most tests share the session's server (`rabbitmq_shared`) and keep to topics, groups and
exchanges of their own; the two that stop the broker have one each (`rabbitmq_engine`: a
RabbitMQ boot takes 7-40 s, so no more than two). Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
from broker_kit import Inbox, deliveries, open_broker, settle_time, start_consumer, unique_topic
from engines import free_port
from engines.rabbitmq import RABBITMQ_SCRIPTS, RabbitMQServer
from helpers import async_wait_until, wait_until

from microweave import Service
from microweave._backends import load_broker
from microweave.broker import DEAD_LETTER_REASON, MESSAGE_ID, Broker, Event, dead_letter_topic
from microweave.broker.rabbitmq import RabbitMQBroker
from microweave.broker.rabbitmq.names import group_queue_name
from microweave.errors import BrokerError, ConfigurationError
from microweave.testing import capture_logs

WAIT = 30.0


class OrderPlaced(msgspec.Struct):
    order: str
    amount: int


def rabbit(broker: Broker) -> RabbitMQBroker:
    assert isinstance(broker, RabbitMQBroker)
    return broker


@pytest.fixture
async def broker(rabbitmq_shared: RabbitMQServer) -> AsyncIterator[Broker]:
    async with open_broker(rabbitmq_shared.url, max_deliveries=3) as broker:
        yield broker


def rabbitmqctl(server: RabbitMQServer, *args: str) -> str:
    argv = [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", server.node, "-q", *args]
    done = subprocess.run(argv, env=server.env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def queues(server: RabbitMQServer) -> dict[str, dict[str, Any]]:
    out = rabbitmqctl(server, "list_queues", "name", "type", "durable", "--formatter", "json")
    return {row["name"]: row for row in json.loads(out or "[]")}


async def messages_in(server: RabbitMQServer, queue: str) -> int:
    """How many messages wait in `queue`, as the broker says right now (rabbitmqctl's count is
    a statistic, refreshed every few seconds)."""
    connection = await aio_pika.connect(server.url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count


# -- consumer crash ------------------------------------------------------------------------------


async def test_sigkilled_consumer_unacked_events_are_redelivered_to_another_member(
    rabbitmq_shared: RabbitMQServer, broker: Broker, tmp_path: Path
) -> None:
    """A member holding 5 unacknowledged events (its prefetch, = max_in_flight) is SIGKILLed:
    RabbitMQ hands every one of them to the other member, counted as a second delivery."""
    topic = unique_topic("crash")
    holder = start_consumer(tmp_path, rabbitmq_shared.url, topic, "workers", "hold", in_flight=5)
    try:
        sent = [await broker.publish(topic, OrderPlaced(order=f"o-{n}", amount=n)) for n in range(12)]
        await asyncio.to_thread(
            wait_until, lambda: len(deliveries(holder)) >= 5, timeout=WAIT, what="the holder's 5 events"
        )
        here = Inbox()
        await broker.subscribe(topic, here, queue="workers")
        await here.wait(7)  # what the holder's prefetch left in the queue
        await settle_time(broker)
        held = deliveries(holder)
        assert len(held) == 5, "RabbitMQ gave the holder no more than its max_in_flight"
        assert len(here.events) == 7
        holder.signal(signal.SIGKILL)
        holder.wait(WAIT)
        await here.wait(12)
        await settle_time(broker)
    finally:
        holder.stop()
    held_ids = {str(d["id"]) for d in held}
    assert sorted(here.ids) == sorted(sent), "every event consumed once here, the held ones included"
    assert {e.id: e.attempt for e in here.events if e.id in held_ids} == dict.fromkeys(held_ids, 2)
    assert all(d["attempt"] == 1 for d in held)


# -- broker restart ------------------------------------------------------------------------------


@pytest.mark.timeout(300)  # three RabbitMQ boots, each up to ~40 s on a busy machine
async def test_broker_restart_mid_stream_loses_no_confirmed_publish(rabbitmq_engine: RabbitMQServer) -> None:
    """A publisher publishes without pause while the broker stops and starts again, then is
    SIGKILLed and starts again: every publish that returned (confirmed) is consumed by the
    group, whose consumer was restored without help; a broadcast subscriber is restored too.
    Duplicates are counted and bounded by what can be in flight at each outage (the prefetch,
    plus one resent publish)."""
    topic = unique_topic("restart")
    in_flight = 8
    confirmed: list[str] = []
    failed = 0
    group, everyone = Inbox(), Inbox()
    stop_publishing = asyncio.Event()
    async with (
        # the consumer comes back last: the publisher's first events after a restart must reach
        # the group's queue before its consumer bound it again (a non-durable `micro` exchange
        # loses every binding at a restart)
        open_broker(rabbitmq_engine.url, reconnect_interval=4.0) as consumer,
        open_broker(rabbitmq_engine.url, retry_time=2.0, reconnect_interval=0.5) as publisher,
    ):
        await consumer.subscribe(topic, group, queue="restart", max_in_flight=in_flight)
        await consumer.subscribe(topic, everyone)

        async def publish_forever() -> None:
            nonlocal failed
            n = 0
            while not stop_publishing.is_set():
                try:
                    confirmed.append(await publisher.publish(topic, OrderPlaced(order=f"o-{n}", amount=n)))
                except BrokerError:
                    failed += 1
                n += 1

        publishing = asyncio.ensure_future(publish_forever())
        try:
            for outage in (rabbitmq_engine.stop, rabbitmq_engine.kill):  # SIGTERM, then SIGKILL
                await group.wait(len(group.events) + 30)  # the stream flows
                await asyncio.to_thread(outage)
                await asyncio.to_thread(rabbitmq_engine.start)
                before = len(confirmed)

                async def published_again() -> bool:
                    return len(confirmed) >= before + 50  # noqa: B023 - awaited in this round

                await async_wait_until(published_again, timeout=WAIT * 2, what="publishing to work again")
            # the broadcast subscriber is restored too (what it missed meanwhile is lost to it)
            await everyone.wait(len(everyone.events) + 1, timeout=WAIT)
        finally:
            stop_publishing.set()
            await publishing
        await group.wait(len(set(confirmed)), timeout=WAIT * 2)

        async def all_confirmed_arrived() -> bool:
            return set(confirmed) <= set(group.ids)

        await async_wait_until(all_confirmed_arrived, timeout=WAIT, what="every confirmed event")
        await settle_time(consumer)
    assert failed > 0, "some publishes met the outage (and said so)"
    assert set(confirmed) <= set(group.ids), "no confirmed publish lost"
    counts = Counter(group.ids)
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= 2 * (in_flight + 1), f"{duplicates} duplicates of {len(counts)} events"


@pytest.mark.timeout(300)
async def test_broker_down_during_publish_raises_after_bounded_retries_and_publishing_resumes(
    rabbitmq_engine: RabbitMQServer,
) -> None:
    topic = unique_topic("down")
    inbox = Inbox()
    async with open_broker(rabbitmq_engine.url, retry_time=1.5, connect_timeout=1.0) as broker:
        await broker.subscribe(topic, inbox, queue="down")
        first = await broker.publish(topic, OrderPlaced(order="before", amount=1))
        await inbox.wait(1)
        await asyncio.to_thread(rabbitmq_engine.stop)
        with (
            capture_logs(logging.DEBUG) as logs,
            pytest.raises(BrokerError) as caught,
        ):
            await broker.publish(topic, OrderPlaced(order="during", amount=2))
        message = str(caught.value)
        assert f"amqp://{rabbitmq_engine.address}/" in message and f"publish to {topic}" in message
        assert "within 1.5 s" in message and "is RabbitMQ running" in message
        assert "guest" not in message
        assert not any("guest:guest" in entry["message"] for entry in logs)
        with pytest.raises(BrokerError):  # still down: again an error, not a hang
            await broker.publish(topic, OrderPlaced(order="during", amount=3))
        with pytest.raises(BrokerError) as not_subscribed:  # likewise a subscribe
            await broker.subscribe(unique_topic("later"), Inbox(), queue="later")
        assert "did not come back" in str(not_subscribed.value)
        await asyncio.to_thread(rabbitmq_engine.start)
        after = None
        async with asyncio.timeout(WAIT * 2):
            while after is None:  # the robust connection comes back on its own
                with contextlib.suppress(BrokerError):
                    after = await broker.publish(topic, OrderPlaced(order="after", amount=4))
        await inbox.wait(2)
        await settle_time(broker)
    assert [e.id for e in inbox.events] == [first, after], "the group's consumer was restored too"


async def test_a_blocked_broker_fails_a_publish_after_confirm_timeout(
    rabbitmq_shared: RabbitMQServer,
) -> None:
    """A memory alarm makes RabbitMQ stop reading from publishers: a publish is not left
    waiting for ever, and publishing works again once the alarm is gone."""
    topic = unique_topic("blocked")
    async with open_broker(f"{rabbitmq_shared.url}?confirm_timeout=1") as broker:
        inbox = Inbox()
        await broker.subscribe(topic, inbox, queue="blocked")
        await asyncio.to_thread(rabbitmqctl, rabbitmq_shared, "set_vm_memory_high_watermark", "0")
        try:
            with pytest.raises(BrokerError) as caught:
                await broker.publish(topic, OrderPlaced(order="blocked", amount=1))
        finally:
            await asyncio.to_thread(rabbitmqctl, rabbitmq_shared, "set_vm_memory_high_watermark", "0.4")
        assert "not confirmed within 1 s" in str(caught.value) and "alarm" in str(caught.value)
        after = await broker.publish(topic, OrderPlaced(order="after", amount=2))

        async def after_arrived() -> bool:  # the timed-out one may arrive too: the error says so
            return after in inbox.ids

        await async_wait_until(after_arrived, timeout=WAIT, what="the publish after the alarm")


# -- broker down at start, credentials ------------------------------------------------------------


async def test_broker_down_at_start_is_a_clear_error_after_bounded_retries() -> None:
    port = free_port()  # nobody listens there
    broker = load_broker(f"rabbitmq://ada:s3cret-pw@127.0.0.1:{port}/prod?retry_time=1")
    assert "s3cret" not in repr(broker) and "ada" not in repr(broker)
    with capture_logs(logging.DEBUG) as logs, pytest.raises(BrokerError) as caught:
        await broker.connect()
    message = str(caught.value)
    assert f"amqp://127.0.0.1:{port}/prod" in message
    assert "connection refused: is RabbitMQ running" in message
    assert "attempts in 1 s" in message, "bounded retries, said"
    assert "s3cret" not in message and "ada" not in message
    assert not any("s3cret" in entry["message"] for entry in logs)
    with pytest.raises(BrokerError) as again:  # a publish tries to connect again, as boundedly
        await broker.publish("t.x", b"{}")
    assert "s3cret" not in str(again.value) and f"127.0.0.1:{port}" in str(again.value)
    await broker.aclose()


async def test_credentials_in_the_url_work_and_never_show(rabbitmq_shared: RabbitMQServer) -> None:
    user, password = f"mw-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    await asyncio.to_thread(rabbitmqctl, rabbitmq_shared, "add_user", user, password)
    await asyncio.to_thread(
        rabbitmqctl, rabbitmq_shared, "set_permissions", "-p", "/", user, ".*", ".*", ".*"
    )
    topic = unique_topic("auth")
    with capture_logs(logging.DEBUG) as logs:
        async with open_broker(f"amqp://{user}:{password}@{rabbitmq_shared.address}/") as broker:
            inbox = Inbox()
            await broker.subscribe(topic, inbox, queue="auth")
            await broker.publish(topic, b"{}")
            await inbox.wait(1)
            shown = repr(broker)
        wrong = load_broker(f"amqp://{user}:wrong-{password}@{rabbitmq_shared.address}/?retry_time=30")
        with pytest.raises(BrokerError) as refused:
            await wrong.connect()
        missing = load_broker(f"amqp://{user}:{password}@{rabbitmq_shared.address}/no-such-vhost")
        with pytest.raises(BrokerError) as no_vhost:
            await missing.connect()
    for text in (shown, str(refused.value), str(no_vhost.value), *(e["message"] for e in logs)):
        assert password not in text
    assert user not in shown and user not in str(refused.value)
    assert "login refused" in str(refused.value) and "attempts" not in str(refused.value), "not retried"
    assert "virtual host" in str(no_vhost.value) and "/no-such-vhost" in str(no_vhost.value)


# -- failures and dead letters -------------------------------------------------------------------


async def test_poison_event_is_dead_lettered_after_max_deliveries_while_consuming_goes_on(
    rabbitmq_shared: RabbitMQServer, broker: Broker
) -> None:
    """A handler that fails on one event every time: it is delivered max_deliveries (3) times,
    then a copy lands on the dead-letter topic with its id, body, headers and a reason, and the
    events published after it are consumed meanwhile. The dead-letter copy was kept for a
    reader that subscribed only afterwards: it waited in the group's dead-letter queue."""
    topic = unique_topic("poison")

    async def fail_on_poison(event: Event) -> None:
        if event.decode(OrderPlaced).order == "poison":
            raise RuntimeError("cannot handle this one")

    inbox = Inbox(fail_on_poison)
    with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
        await broker.subscribe(topic, inbox, queue="billing")
        poison = await broker.publish(
            topic, OrderPlaced(order="poison", amount=0), headers={"X-Tenant": "acme"}
        )
        good = [await broker.publish(topic, OrderPlaced(order=f"ok-{n}", amount=n)) for n in range(20)]
        await inbox.wait(23)
        await settle_time(broker)
    assert [e.attempt for e in inbox.events if e.id == poison] == [1, 2, 3]
    assert set(good) <= set(inbox.ids), "consuming went on"
    assert any(poison in entry["message"] and "dead-lettered" in entry["message"] for entry in logs)
    parked = group_queue_name("billing", dead_letter_topic(topic))
    listed = await asyncio.to_thread(queues, rabbitmq_shared)
    assert listed[group_queue_name("billing", topic)]["type"] == "quorum"
    assert listed[parked]["type"] == "quorum" and listed[parked]["durable"]
    assert await messages_in(rabbitmq_shared, parked) == 1, "kept before anyone read it"
    dead = Inbox()
    await broker.subscribe(dead_letter_topic(topic), dead, queue="billing")
    (copy,) = await dead.wait(1)
    assert copy.id == poison and copy.decode(OrderPlaced) == OrderPlaced(order="poison", amount=0)
    assert copy.header("x-tenant") == "acme" and copy.header(MESSAGE_ID) == poison
    assert copy.header(DEAD_LETTER_REASON) == "failed 3 deliveries (max_deliveries=3)"
    assert copy.attempt == 1, "a fresh delivery count on the dead-letter queue"


async def test_an_event_its_consumers_keep_dying_on_is_dead_lettered_without_running_again(
    rabbitmq_shared: RabbitMQServer,
) -> None:
    """Three consumers in turn take the event and go away without settling it (as a process
    that crashes on it would): RabbitMQ counts each delivery, and the fourth consumer
    dead-letters it instead of running its handler."""
    topic = unique_topic("crashy")
    url = rabbitmq_shared.url
    victim = ""
    for turn in range(3):
        taken = Inbox(lambda event: asyncio.Event().wait())  # never returns
        async with open_broker(url, max_deliveries=3) as dying:
            await dying.subscribe(topic, taken, queue="crashy")
            if turn == 0:
                victim = await dying.publish(topic, OrderPlaced(order="crash", amount=1))
            await taken.wait(1)
            connection = rabbit(dying).connection
            await connection.close()  # gone without a word: no ack, no reject
            await dying.aclose(grace=0.1)  # its handler never returns: no need to wait for it
    survivor = Inbox()
    async with open_broker(url, max_deliveries=3) as broker:
        dead = Inbox()
        await broker.subscribe(dead_letter_topic(topic), dead, queue="readers")
        with capture_logs(logging.ERROR, logger="microweave.broker") as logs:
            await broker.subscribe(topic, survivor, queue="crashy")
            (copy,) = await dead.wait(1)
        await settle_time(broker)
    assert survivor.events == [], "not run a fourth time"
    assert copy.id == victim and copy.header(DEAD_LETTER_REASON) == "delivered 3 times without being settled"
    assert any(victim in entry["message"] for entry in logs)


async def test_rabbitmq_own_delivery_limit_dead_letters_to_the_same_place(
    rabbitmq_shared: RabbitMQServer,
) -> None:
    """The safety net: a consumer that is not microweave (here raw aio-pika) returns an event
    for ever; the group queue's x-delivery-limit makes RabbitMQ dead-letter it itself, to the
    topic's dead-letter key, where the group's dead-letter queue keeps it, with a reason."""
    topic = unique_topic("net")
    url = f"{rabbitmq_shared.url}?delivery_limit=3&max_deliveries=2"
    async with open_broker(url) as broker:
        sub = await broker.subscribe(topic, Inbox(), queue="net")  # declares the queues
        await sub.unsubscribe()
        sent = await broker.publish(topic, OrderPlaced(order="bounced", amount=1))
        returns = 0
        connection = await aio_pika.connect(rabbitmq_shared.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(group_queue_name("net", topic), passive=True)
            while (message := await queue.get(fail=False)) is not None:  # the broker stops giving it
                returns += 1
                await message.reject(requeue=True)
                assert returns < 10, "x-delivery-limit did not stop the returns"
        dead = Inbox()
        await broker.subscribe(dead_letter_topic(topic), dead, queue="net")
        (copy,) = await dead.wait(1)
    assert returns == 4, "delivered once plus delivery_limit (3) returns"
    assert copy.id == sent and copy.decode(OrderPlaced) == OrderPlaced(order="bounced", amount=1)
    assert copy.header(DEAD_LETTER_REASON) == "RabbitMQ dead-lettered it (delivery_limit)"
    assert copy.attempt == 1


async def test_a_delayed_nack_holds_its_slot_then_comes_back(broker: Broker) -> None:
    topic = unique_topic("delay")
    seen: list[tuple[str, int]] = []

    async def once_later(event: Event) -> None:
        seen.append((event.decode(OrderPlaced).order, event.attempt))
        if event.attempt == 1 and event.decode(OrderPlaced).order == "a":
            await event.nack(requeue=True, delay=1.0)
        else:
            await event.ack()

    inbox = Inbox(once_later)
    await broker.subscribe(topic, inbox, queue="delay", ack="manual", max_in_flight=1)
    await broker.publish(topic, OrderPlaced(order="a", amount=1))
    await broker.publish(topic, OrderPlaced(order="b", amount=2))
    await inbox.wait(3)
    assert seen == [("a", 1), ("a", 2), ("b", 1)], "max_in_flight=1: b waited while a held the slot"


# -- unroutable events, same ids ------------------------------------------------------------------


async def test_unroutable_publish_warns_by_default_and_raises_when_asked(
    rabbitmq_shared: RabbitMQServer,
) -> None:
    topic = unique_topic("nobody")
    async with open_broker(rabbitmq_shared.url) as broker:
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            first = await broker.publish(topic, b"{}")
            await broker.publish(topic, b"{}")
        assert rabbit(broker).unroutable == 2
        warnings = [e["message"] for e in logs if topic in e["message"]]
        assert len(warnings) == 1, "said once a minute per topic, not per event"
        assert first in warnings[0] and "reached no queue" in warnings[0]
    async with open_broker(f"{rabbitmq_shared.url}?unroutable=error") as strict:
        with pytest.raises(BrokerError) as caught:
            await strict.publish(topic, b"{}")
        assert "no subscriber queue is bound" in str(caught.value) and topic in str(caught.value)
        inbox = Inbox()
        await strict.subscribe(topic, inbox, queue="late")
        await strict.publish(topic, b"{}")  # routed now: no error
        await inbox.wait(1)


async def test_same_message_id_in_flight_return_is_blamed_on_the_right_publish(
    rabbitmq_shared: RabbitMQServer,
) -> None:
    """aiormq matches a returned message to its publish by message_id; two publishes of one
    Micro-Id in flight at once must not have the return blamed on the routed one."""
    routed_topic, lost_topic = unique_topic("routed"), unique_topic("lost")
    async with open_broker(f"{rabbitmq_shared.url}?unroutable=error") as broker:
        inbox = Inbox()
        await broker.subscribe(routed_topic, inbox, queue="ids")
        for n in range(5):
            same = {MESSAGE_ID: f"same-{n}-{uuid.uuid4().hex}"}
            lost, routed = await asyncio.gather(
                broker.publish(lost_topic, b"{}", headers=same),
                broker.publish(routed_topic, b"{}", headers=same),
                return_exceptions=True,
            )
            assert isinstance(lost, BrokerError) and lost_topic in str(lost)
            assert routed == same[MESSAGE_ID]
        await inbox.wait(5)


# -- broadcast, exchange, service --------------------------------------------------------------


async def test_broadcast_queue_is_gone_with_its_subscriber(rabbitmq_shared: RabbitMQServer) -> None:
    """A broadcast subscriber's queue is exclusive to its connection: once that is closed,
    events of its topic reach no queue (at most once across a subscriber's connection)."""
    topic = unique_topic("fanout")
    async with open_broker(rabbitmq_shared.url) as publisher:
        async with open_broker(rabbitmq_shared.url) as listener:
            inbox = Inbox()
            await listener.subscribe(topic, inbox)
            await publisher.publish(topic, b"{}")
            await inbox.wait(1)
        assert rabbit(publisher).unroutable == 0
        await publisher.publish(topic, b"{}")
        assert rabbit(publisher).unroutable == 1, "nobody's queue is bound any more"


async def test_a_micro_exchange_declared_otherwise_is_a_clear_error(rabbitmq_shared: RabbitMQServer) -> None:
    exchange = f"micro-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbitmq_shared.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        broker = load_broker(f"{rabbitmq_shared.url}?exchange={exchange}")
        with pytest.raises(BrokerError) as caught:
            await broker.connect()
        await channel.exchange_delete(exchange)
    message = str(caught.value)
    assert exchange in message and "exists with other settings" in message and "?exchange=" in message


async def test_bad_options_are_refused_clearly(rabbitmq_shared: RabbitMQServer) -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'retry'"):
        load_broker(f"{rabbitmq_shared.url}?retry=3")
    with pytest.raises(ConfigurationError, match="below delivery_limit"):
        load_broker(f"{rabbitmq_shared.url}?max_deliveries=60")
    with pytest.raises(ConfigurationError, match="unroutable"):
        load_broker(f"{rabbitmq_shared.url}?unroutable=ignore")
    with pytest.raises(ConfigurationError, match="wildcard"):
        async with open_broker(rabbitmq_shared.url) as broker:
            await broker.subscribe("orders.#", Inbox())


async def test_a_typed_service_subscriber_gets_each_event_once_per_group(
    rabbitmq_shared: RabbitMQServer,
) -> None:
    topic = unique_topic("orders")
    got: list[OrderPlaced] = []
    arrived = asyncio.Event()
    service = Service("shop", registry=f"memory://{uuid.uuid4().hex}", broker=rabbitmq_shared.url)

    @service.subscriber(topic, queue="billing")
    async def on_order(event: OrderPlaced) -> None:
        got.append(event)
        if len(got) == 3:
            arrived.set()

    async with service:
        for n in range(3):
            await service.client.publish(topic, OrderPlaced(order=f"o-{n}", amount=10 * n))
        async with asyncio.timeout(WAIT):
            await arrived.wait()
        await asyncio.sleep(1.0)  # a duplicate would have arrived by now
    assert sorted(got, key=lambda o: o.order) == [
        OrderPlaced(order=f"o-{n}", amount=10 * n) for n in range(3)
    ]
