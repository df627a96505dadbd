"""`nats://` (core NATS, at most once) on a real nats-server: what the conformance suite cannot
show with one process and well-behaved peers.

A queue group spans processes; a server that is not there is a clear error that names the URL
and never its password; a typed `@service.subscriber` gets go-micro-enveloped events; a plain NATS
publisher's payload arrives as raw bytes; a hostile envelope or a flood does not break the
subscriber (and the drops of a flood are said).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from broker_kit import Inbox, deliveries, open_broker, settle_time, start_consumer, unique_topic
from engines import free_port
from engines.nats import NatsServer, nats_server
from helpers import wait_until

from microweave import Service
from microweave._backends import load_broker
from microweave.broker import Broker, Event
from microweave.broker.envelope import MAX_HEADERS
from microweave.errors import BrokerError
from microweave.testing import capture_logs

WAIT = 20.0


class OrderPlaced(msgspec.Struct):
    order: str
    amount: int


@pytest.fixture
async def broker(nats_engine: NatsServer) -> AsyncIterator[Broker]:
    async with open_broker(nats_engine.url) as broker:
        yield broker


async def test_a_queue_group_spans_two_processes(
    nats_engine: NatsServer, broker: Broker, tmp_path: Path
) -> None:
    topic = unique_topic()
    other = start_consumer(tmp_path, nats_engine.url, topic, "workers", "ack")
    try:
        here = Inbox()
        await broker.subscribe(topic, here, queue="workers")
        sent = [await broker.publish(topic, OrderPlaced(order=f"o-{n}", amount=n)) for n in range(60)]

        def all_arrived() -> bool:
            return len(here.events) + len(deliveries(other)) >= len(sent)

        await asyncio.to_thread(wait_until, all_arrived, timeout=WAIT, what="every event")
        await settle_time(broker)
        there = [str(d["id"]) for d in deliveries(other)]
    finally:
        other.stop()
    assert sorted(here.ids + there) == sorted(sent), "each event to one member of the group, none lost"
    assert here.ids and there, "both members got some (60 events, NATS picks a member at random)"


async def test_server_down_at_start_is_a_clear_error() -> None:
    port = free_port()  # nobody listens there
    broker = load_broker(f"nats://ada:s3cret@127.0.0.1:{port}?connect_timeout=1")
    assert "s3cret" not in repr(broker)
    with (
        capture_logs(logging.DEBUG, logger="microweave.broker") as logs,
        pytest.raises(BrokerError) as caught,
    ):
        await broker.connect()
    message = str(caught.value)
    assert f"nats://127.0.0.1:{port}" in message and "is nats-server running there" in message
    assert "attempt" in message, "bounded retries, said"
    assert "s3cret" not in message and "ada" not in message
    assert not any("s3cret" in entry["message"] for entry in logs)
    with pytest.raises(BrokerError) as again:  # a publish tries to connect again, as boundedly
        await broker.publish("t.x", b"{}")
    assert "s3cret" not in str(again.value) and f"127.0.0.1:{port}" in str(again.value)


async def test_credentials_in_the_url_work_and_never_show(tmp_path: Path) -> None:
    with nats_server(tmp_path, extra=["--user", "ada", "--pass", "s3cret"]) as server:
        async with open_broker(f"nats://ada:s3cret@{server.address}") as broker:
            inbox = Inbox()
            await broker.subscribe("t.auth", inbox)
            await broker.publish("t.auth", b"{}")
            await inbox.wait(1)
            assert "s3cret" not in repr(broker)
        wrong = load_broker(f"nats://ada:wrong-pw@{server.address}?connect_timeout=1")
        with pytest.raises(BrokerError) as caught:
            await wrong.connect()
    assert "wrong-pw" not in str(caught.value) and server.address in str(caught.value)
    assert "credentials" in str(caught.value)


async def test_a_typed_service_subscriber_gets_each_event_once_per_group(nats_engine: NatsServer) -> None:
    topic = unique_topic("orders")
    got: list[OrderPlaced] = []
    arrived = asyncio.Event()
    service = Service("shop", registry=f"memory://{uuid.uuid4().hex}", broker=nats_engine.url)

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
    assert sorted(got, key=lambda o: o.order) == [
        OrderPlaced(order=f"o-{n}", amount=10 * n) for n in range(3)
    ]


async def test_a_plain_nats_payload_arrives_as_raw_bytes(nats_engine: NatsServer, broker: Broker) -> None:
    topic = unique_topic()
    inbox = Inbox()
    await broker.subscribe(topic, inbox, max_in_flight=1)
    plain = await nats.connect(nats_engine.url)
    try:
        await plain.publish(topic, b"not an envelope")
        await plain.publish(topic, b'{"n": 1}', headers={"Micro-Id": "from-plain", "X-Tenant": "acme"})
        await plain.publish(topic, b'{"Header": {"a": 1}, "Body": "aGk="}')  # a header that is no string
        await plain.flush()
    finally:
        await plain.close()
    first, second, third = await inbox.wait(3)
    assert (first.body, first.headers, first.id) == (b"not an envelope", {}, "")
    assert second.body == b'{"n": 1}' and second.id == "from-plain" and second.header("x-tenant") == "acme"
    assert third.body == b'{"Header": {"a": 1}, "Body": "aGk="}'


async def test_a_hostile_envelope_does_not_break_the_subscriber(
    nats_engine: NatsServer, broker: Broker
) -> None:
    """Too many headers (the server's 1 MiB limit allows ~60,000): the payload is handed over as
    raw bytes, not as 60,000 headers; a Body that is no base64 likewise; the next event flows."""
    topic = unique_topic()
    inbox = Inbox()
    await broker.subscribe(topic, inbox, max_in_flight=1)
    many = {f"h{n}": "v" for n in range(60_000)}
    flood = msgspec.json.encode({"Header": many, "Body": "aGk="})
    assert len(many) > MAX_HEADERS and len(flood) < 1024 * 1024
    plain = await nats.connect(nats_engine.url)
    try:
        await plain.publish(topic, flood)
        await plain.publish(topic, b'{"Header": {}, "Body": "%%% not base64"}')
        await plain.flush()
    finally:
        await plain.close()
    good = await broker.publish(topic, OrderPlaced(order="after", amount=1))
    events = await inbox.wait(3)
    # which is which by content: this test is about surviving them, not their order
    [hostile] = [e for e in events if e.body == flood]
    [bad_body] = [e for e in events if e.body.startswith(b'{"Header": {}')]
    [after] = [e for e in events if e.id == good]
    assert hostile.headers == {}
    assert bad_body.headers == {} and bad_body.body.startswith(b'{"Header"')
    assert after.id == good and after.decode(OrderPlaced) == OrderPlaced(order="after", amount=1)


async def test_a_subscriber_that_cannot_keep_up_loses_events_and_says_so(nats_engine: NatsServer) -> None:
    """At most once: past its bounded pending queue, a slow subscriber's events are dropped by
    nats-py; we log how many, and it goes on with what it kept."""
    topic = unique_topic()
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    inbox = Inbox(slow)
    async with open_broker(f"{nats_engine.url}?pending_msgs=20") as broker:
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            await broker.subscribe(topic, inbox, max_in_flight=1)
            for n in range(200):
                await broker.publish(topic, OrderPlaced(order=f"o-{n}", amount=n))
            await inbox.wait(1)
            await settle_time(broker)
            release.set()
            await settle_time(broker)
        dropped = [e["message"] for e in logs if "dropped" in e["message"]]
        assert dropped and topic in dropped[0], logs
        assert 1 < len(inbox.events) < 200, "it kept its pending queue's worth, not more"
        assert len(inbox.events) <= 1 + 20 + 1


async def test_after_a_server_restart_the_subscriber_gets_new_events(
    nats_engine: NatsServer, broker: Broker
) -> None:
    """nats-py reconnects and replays the subscription; what was published while the server
    was away may be lost (at most once), what is published after arrives."""
    topic = unique_topic()
    inbox = Inbox()
    await broker.subscribe(topic, inbox, queue="q")
    await broker.publish(topic, b'{"n": 0}')
    await inbox.wait(1)
    await asyncio.to_thread(nats_engine.stop)
    await asyncio.to_thread(nats_engine.start)
    async with asyncio.timeout(WAIT):
        while len(inbox.events) < 2:
            await broker.publish(topic, b'{"n": 1}')
            await asyncio.sleep(0.2)
    assert inbox.bodies[1] == b'{"n": 1}'
