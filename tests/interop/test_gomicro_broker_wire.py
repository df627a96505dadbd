"""What go-micro v5.12.0 puts on NATS and RabbitMQ for events, and what its subscribers accept:
measured with the real go-micro peer (tests/interop/gomicro/broker) against real servers, read
and written with raw nats-py and aio-pika. The reference microweave's brokers follow. A fact
marked (source) was read in go-micro's code, not measured here.

The go-micro side is the service-level API users write: micro.NewEvent(topic, client).Publish(
ctx, &Message{...}) with the client's default content type (JSON), and
micro.RegisterSubscriber(topic, server, func(ctx, *Message) error[, server.SubscriberQueue(q)])
on the default (mucp) server, its headers read with metadata.FromContext(ctx). "Broker-level"
means the broker's own Subscribe(topic, func(broker.Event) error), below the server's codecs.

Publishing (both brokers)
- Headers, exactly: `Content-Type: application/json`, `Micro-Topic: <topic>`,
  `Micro-ID: <a new random UUID v4 per message, lower-case 8-4-4-4-12>` (capital "ID"), plus
  every key of the context metadata as given (case kept: `x-lower` stays `x-lower`). Nothing else.
- Body: encoding/json's Encoder output, so the struct's JSON and one "\n":
  `{"n":0,"from":"go-micro","text":"hello from go-micro"}\n`.

NATS
- Subject = topic. A plain PUB: no NATS headers. Payload = the JSON envelope
  `{"Header":{...},"Body":"<standard, padded base64 of the body>"}`, keys in that order, the
  Header keys sorted (a Go map).
- A subscriber is a plain SUB on the topic, or with SubscriberQueue(q) a queue SUB in group q:
  two subscribers with the same queue get each message once between them, both get some.
- The subscriber decodes the envelope with encoding/json: key names match case-insensitively
  (`header`/`body` work); Body must be padded standard base64 (unpadded or URL-safe is
  dropped); a JSON object as Body is dropped. A JSON object that is not an envelope reaches a
  broker-level handler as an empty message (no headers, empty body), a typed handler never.
- The typed handler needs `Content-Type` (that exact key: `content-type` is not found) with a
  value that is exactly a codec name, here `application/json` (`application/json;
  charset=utf-8` or `Application/JSON`: go-micro logs "unsupported Content-Type: ..." and
  drops the message). Without the header go-micro assumes `application/protobuf`, which
  cannot decode a Go struct: dropped, logged as "invalid message". Micro-Topic and Micro-ID are
  not needed. Unknown JSON fields are ignored and missing ones are zero values; a field of the
  wrong JSON type drops the message. The handler's metadata is the envelope's Header as sent,
  nothing added. The broker-level handler gets every well-formed envelope whatever its headers.
- A dropped message is only logged (NATS has no acks) (source: the broker's error handler).

RabbitMQ
- On Connect go-micro declares the exchange `micro`: type topic, durable=false,
  auto_delete=false, internal=false, no arguments. An equal declaration by another client is
  accepted. (By hand, once: with a durable `micro` already there, go-micro's declaration fails
  on its first channel, the error is ignored (source) and it publishes on its second channel
  all the same.)
- Publish: exchange `micro`, routing key = topic (mandatory and immediate off: source), the
  headers above as an AMQP table of long strings, body = the raw body bytes (no envelope). No
  property is set besides headers: no content_type, content_encoding, delivery_mode (so
  transient), priority, correlation_id, reply_to, expiration, message_id, timestamp, type,
  user_id, app_id.
- Subscriber queue: without SubscriberQueue a server-named queue (`amq.gen-...`), with it the
  queue name as given. Either way durable=false, auto_delete=true, exclusive=false, no
  arguments, bound to `micro` with routing key = topic and no binding arguments; it goes away
  when the subscriber stops. So without a queue name every subscriber gets every message; with
  the same queue name the subscribers share one queue and each message reaches one of them.
- Each subscriber's connection has three channels: 1 declared the exchange, 2 publishes, 3
  consumes; none in confirm or transaction mode, basic.qos prefetch 0 (unlimited), not global.
- Consumer: tag = a random UUID v4, no_ack (ack_required=false: auto-ack, a message is gone
  once delivered whatever the handler does), no arguments; not exclusive (two share a queue).
- Receiving: every AMQP header value becomes a string (`fmt %v`: 5 -> "5", true -> "true");
  `Micro-Topic` is set to the routing key when the message has none (one it has is kept).
  The typed handler needs the `Content-Type` header as on NATS: the AMQP content_type property
  is not read, and a message without the header (or with `content-type`) is dropped without
  even a log line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from engines.nats import NatsServer
from engines.rabbitmq import RABBITMQ_SCRIPTS, RabbitMQServer
from gomicro_broker import PROBE_HEADER, BrokerTarget, go_publish, go_subscriber
from helpers import async_wait_until
from nats.aio.client import Client as NatsClient

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TEXT = "hello from go-micro"


def go_body(n: int) -> bytes:
    """The exact body go-micro's JSON codec writes for the peer's Message{n, "go-micro", TEXT}."""
    return b'{"n":%d,"from":"go-micro","text":"%s"}\n' % (n, TEXT.encode())


def py_body(n: int) -> bytes:
    return json.dumps({"n": n, "from": "python", "text": "raw"}).encode()


def received(events: list[dict[str, Any]]) -> list[int]:
    return sorted(e["body"]["n"] for e in events if "n" in (e.get("body") or {}))


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "peers"
    path.mkdir()
    return path


def topic_name() -> str:
    return f"mw.wire.{uuid.uuid4().hex[:10]}"


# -- NATS ----------------------------------------------------------------------------------------


@pytest.fixture
async def nats_conn(nats_engine: NatsServer) -> AsyncIterator[NatsClient]:
    conn = await nats.connect(nats_engine.url)
    try:
        yield conn
    finally:
        await conn.close()


def nats_target(server: NatsServer) -> BrokerTarget:
    return BrokerTarget("nats", server.url)


async def test_nats_publish_is_a_json_envelope_on_the_topic_subject(
    nats_engine: NatsServer, nats_conn: NatsClient
) -> None:
    topic = topic_name()
    got: list[Any] = []

    async def collect(msg: Any) -> None:
        got.append(msg)

    sub = await nats_conn.subscribe(topic, cb=collect)
    await nats_conn.flush()

    published = await go_publish(
        nats_target(nats_engine), topic, count=2, headers={"X-Custom": "abc", "x-lower": "v"}
    )
    assert published == [{"published": 0, "topic": topic}, {"published": 1, "topic": topic}]
    await nats_conn.flush()
    await eventually(lambda: len(got) == 2, "the two events on the raw subscription")
    await sub.unsubscribe()

    ids = set()
    for n, msg in enumerate(got):
        assert msg.subject == topic
        assert msg.headers is None  # a plain PUB: everything is in the payload
        assert msg.data.startswith(b'{"Header":{"Content-Type":')
        envelope = json.loads(msg.data)
        assert list(envelope) == ["Header", "Body"]
        header = envelope["Header"]
        assert list(header) == sorted(header)
        assert UUID.match(header.pop("Micro-ID"))
        ids.add(msg.data)
        assert header == {
            "Content-Type": "application/json",
            "Micro-Topic": topic,
            "X-Custom": "abc",
            "x-lower": "v",
        }
        assert envelope["Body"] == base64.b64encode(go_body(n)).decode()
    assert len(ids) == 2


async def test_nats_raw_envelope_reaches_the_gomicro_subscriber(
    nats_engine: NatsServer, nats_conn: NatsClient, logs: Path
) -> None:
    topic = topic_name()
    target = nats_target(nats_engine)

    def envelope(
        n: int,
        header: dict[str, str] | None,
        *,
        keys: tuple[str, str] = ("Header", "Body"),
        body: bytes | None = None,
        b64: Callable[[bytes], bytes] = base64.b64encode,
    ) -> bytes:
        return json.dumps(
            {keys[0]: header, keys[1]: b64(py_body(n) if body is None else body).decode()}
        ).encode()

    json_ct = {"Content-Type": "application/json"}
    slashy = b'{"n":11,"from":"python","text":"???>>>"}'  # standard base64 has "/" and "+"
    assert {"+", "/"} <= set(base64.b64encode(slashy).decode())
    cases = {
        1: envelope(1, json_ct),
        2: envelope(2, {}),  # no Content-Type
        3: envelope(3, {"content-type": "application/json"}),
        4: envelope(4, {"Content-Type": "application/json; charset=utf-8"}),
        5: envelope(5, {"Content-Type": "Application/JSON"}),
        6: envelope(6, json_ct, keys=("header", "body")),
        7: envelope(7, json_ct, b64=lambda data: base64.b64encode(data).rstrip(b"=")),
        8: json.dumps({"Header": json_ct, "Body": json.loads(py_body(8))}).encode(),
        9: envelope(9, {**json_ct, "Micro-Topic": "elsewhere", "X-A": "1"}),
        10: py_body(10),  # not an envelope
        11: envelope(11, json_ct, body=slashy, b64=base64.urlsafe_b64encode),
        12: envelope(12, json_ct, body=b'{"n":12,"extra":1}'),  # unknown and missing fields
        13: envelope(13, json_ct, body=b'{"n":13,"from":5}'),  # a field of the wrong type
    }
    assert base64.b64encode(py_body(7)).endswith(b"=")  # so case 7 really lacks padding

    async with (
        go_subscriber(target, topic, logs) as typed,
        go_subscriber(target, topic, logs, handler="broker") as raw,
    ):
        for payload in cases.values():
            await nats_conn.publish(topic, payload)
        await nats_conn.publish(topic, envelope(99, json_ct))  # in order after all of them
        await nats_conn.flush()
        typed_events = await typed.wait_for(99)
        raw_events = await raw.wait_for(99)
        subz = await asyncio.to_thread(_nats_subscriptions, nats_engine)
        assert [s.get("qgroup") for s in subz if s["subject"] == topic] == [None, None]  # plain SUBs

    assert received(typed_events) == [1, 6, 9, 12, 99]
    by_n = {e["body"]["n"]: e for e in typed_events}
    assert by_n[1]["headers"] == json_ct  # the envelope's Header, nothing added
    assert by_n[1]["body"] == {"n": 1, "from": "python", "text": "raw"}
    assert by_n[9]["headers"] == {**json_ct, "Micro-Topic": "elsewhere", "X-A": "1"}
    assert by_n[12]["body"] == {"n": 12, "from": "", "text": ""}
    assert all(e["topic"] == topic for e in typed_events)
    log = typed.log()
    assert "invalid message" in log  # no Content-Type: go-micro tried application/protobuf
    assert "unsupported Content-Type: application/json; charset=utf-8" in log
    assert "unsupported Content-Type: Application/JSON" in log

    # below the server's codec choice, the broker itself takes every well-formed envelope
    assert received(raw_events) == [1, 2, 3, 4, 5, 6, 9, 12, 13, 99]
    raw_by_n = {e["body"]["n"]: e for e in raw_events if "body" in e}
    assert raw_by_n[2]["headers"] == {}
    assert raw_by_n[3]["headers"] == {"content-type": "application/json"}
    assert raw_by_n[1]["raw"] == py_body(1).decode()
    # a JSON object that is not an envelope: an empty message (unknown keys are ignored)
    assert [e for e in raw_events if "body" not in e] == [{"topic": topic, "headers": None, "raw": ""}]


async def test_nats_subscriber_queue_is_a_nats_queue_group(nats_engine: NatsServer, logs: Path) -> None:
    topic, queue = topic_name(), f"q-{uuid.uuid4().hex[:8]}"
    target = nats_target(nats_engine)
    async with (
        go_subscriber(target, topic, logs, queue=queue) as first,
        go_subscriber(target, topic, logs, queue=queue) as second,
    ):
        subz = await asyncio.to_thread(_nats_subscriptions, nats_engine)
        mine = [s for s in subz if s["subject"] == topic]
        assert sorted(str(s.get("qgroup")) for s in mine) == [queue, queue]

        await go_publish(target, topic, count=20)
        await eventually(lambda: len(first.events()) + len(second.events()) >= 20, "20 events in the group")
        ones, twos = received(first.events()), received(second.events())
    assert sorted(ones + twos) == list(range(20))  # each message once
    assert ones and twos  # shared, not all to one member
    for event in first.events() + second.events():
        assert UUID.match(event["headers"].pop("Micro-ID"))
        assert event["headers"] == {"Content-Type": "application/json", "Micro-Topic": topic}


def _nats_subscriptions(server: NatsServer) -> list[dict[str, Any]]:
    import urllib.request

    url = f"http://127.0.0.1:{server.monitor}/subsz?subs=1"
    with urllib.request.urlopen(url, timeout=5) as reply:
        subs: list[dict[str, Any]] = json.loads(reply.read()).get("subscriptions_list") or []
        return subs


# -- RabbitMQ ------------------------------------------------------------------------------------


@pytest.fixture
async def amqp(rabbitmq_shared: RabbitMQServer) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(rabbitmq_shared.url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


def rabbit_target(server: RabbitMQServer) -> BrokerTarget:
    return BrokerTarget("rabbitmq", server.url)


async def rabbitmqctl(server: RabbitMQServer, *args: str) -> list[dict[str, Any]]:
    """One `rabbitmqctl list_*` of the server, as JSON rows."""
    argv = [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", server.node, "-q", *args, "--formatter", "json"]
    done = await asyncio.to_thread(
        subprocess.run, argv, env=server.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    rows: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return rows


async def test_rabbitmq_publish_is_raw_bytes_on_the_micro_topic_exchange(
    rabbitmq_shared: RabbitMQServer, amqp: aio_pika.abc.AbstractChannel
) -> None:
    topic = topic_name()
    target = rabbit_target(rabbitmq_shared)
    assert await go_publish(target, topic, count=0) == []  # connecting declares the exchange

    exchanges = await rabbitmqctl(
        rabbitmq_shared, "list_exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments"
    )
    assert [e for e in exchanges if e["name"] == "micro"] == [
        {
            "name": "micro",
            "type": "topic",
            "durable": False,
            "auto_delete": False,
            "internal": False,
            "arguments": [],
        }
    ]
    # the declaration microweave must repeat: an equal one is accepted, any other is refused
    exchange = await amqp.declare_exchange("micro", aio_pika.ExchangeType.TOPIC, durable=False)
    queue = await amqp.declare_queue("", exclusive=True)
    await queue.bind(exchange, topic)

    await go_publish(target, topic, count=2, headers={"X-Custom": "abc"})
    underlay = await amqp.get_underlay_channel()
    ids = set()
    for n in range(2):
        delivered = await _basic_get(underlay, queue.name)
        assert delivered.exchange == "micro"
        assert delivered.routing_key == topic
        assert delivered.body == go_body(n)
        props = delivered.header.properties
        headers = dict(props.headers)
        assert all(isinstance(v, str) for v in headers.values())  # AMQP long strings
        ids.add(headers.pop("Micro-ID"))
        assert headers == {"Content-Type": "application/json", "Micro-Topic": topic, "X-Custom": "abc"}
        unset = [
            props.content_type, props.content_encoding, props.delivery_mode, props.priority,
            props.correlation_id, props.reply_to, props.expiration, props.message_id,
            props.timestamp, props.message_type, props.user_id, props.app_id,
        ]  # fmt: skip
        assert unset == [None] * len(unset)
    assert len(ids) == 2 and all(UUID.match(i) for i in ids)


async def _basic_get(channel: Any, queue: str) -> Any:
    """The next message of `queue` with its AMQP properties as sent (aio-pika's IncomingMessage
    fills in defaults, e.g. delivery_mode 1 for an unset one)."""

    async def one() -> Any:
        got = await channel.basic_get(queue, no_ack=True)
        return got if got.delivery_tag else None

    return await async_wait_until(one, timeout=10, what=f"a message in {queue}")


async def test_rabbitmq_subscriber_queues_and_raw_publish(
    rabbitmq_shared: RabbitMQServer, amqp: aio_pika.abc.AbstractChannel, logs: Path
) -> None:
    topic, queue_name = topic_name(), f"q-{uuid.uuid4().hex[:8]}"
    target = rabbit_target(rabbitmq_shared)
    json_ct: dict[str, Any] = {"Content-Type": "application/json"}
    async with (
        go_subscriber(target, topic, logs) as own_queue,
        go_subscriber(target, topic, logs, queue=queue_name) as named_queue,
    ):
        bindings = [
            b
            for b in await rabbitmqctl(
                rabbitmq_shared,
                "list_bindings",
                "source_name",
                "routing_key",
                "destination_name",
                "destination_kind",
                "arguments",
            )
            if b["source_name"] == "micro" and b["routing_key"] == topic
        ]
        names = sorted(b["destination_name"] for b in bindings)
        assert len(names) == 2 and names[1] == queue_name and names[0].startswith("amq.gen-")
        assert all(b["destination_kind"] == "queue" and b["arguments"] == [] for b in bindings)

        queues = await rabbitmqctl(
            rabbitmq_shared,
            "list_queues",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "consumers",
        )
        assert sorted((q for q in queues if q["name"] in names), key=lambda q: q["name"]) == [
            {
                "name": name,
                "durable": False,
                "auto_delete": True,
                "exclusive": False,
                "arguments": [],
                "consumers": 1,
            }
            for name in names
        ]
        consumers = await rabbitmqctl(
            rabbitmq_shared,
            "list_consumers",
            "queue_name",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "arguments",
            "channel_pid",
        )
        mine = [c for c in consumers if c["queue_name"] in names]
        assert len(mine) == 2
        channels = await rabbitmqctl(
            rabbitmq_shared,
            "list_channels",
            "pid",
            "connection",
            "number",
            "confirm",
            "transactional",
            "prefetch_count",
            "global_prefetch_count",
            "consumer_count",
        )
        for consumer in mine:
            assert UUID.match(consumer.pop("consumer_tag"))
            # the subscriber's connection: channel 1 declared the exchange, 2 publishes (the
            # probes), 3 consumes; none in confirm or transaction mode, no prefetch limit
            channel_pid = consumer.pop("channel_pid")
            connection = next(c["connection"] for c in channels if c["pid"] == channel_pid)
            assert sorted(
                (
                    c["number"],
                    c["confirm"],
                    c["transactional"],
                    c["prefetch_count"],
                    c["global_prefetch_count"],
                    c["consumer_count"],
                )
                for c in channels
                if c["connection"] == connection
            ) == [(1, False, False, 0, 0, 0), (2, False, False, 0, 0, 0), (3, False, False, 0, 0, 1)]
            assert consumer == {
                "queue_name": consumer["queue_name"],
                "ack_required": False,
                "prefetch_count": 0,
                "arguments": [],
            }

        exchange = await amqp.get_exchange("micro")
        cases: list[tuple[int, dict[str, Any], str | None]] = [
            (1, json_ct, None),
            (2, {}, None),  # no Content-Type
            (3, {}, "application/json"),  # the AMQP property only
            (4, {"content-type": "application/json"}, None),
            (5, {**json_ct, "X-Int": 5, "X-Bool": True, "Micro-Topic": "elsewhere"}, None),
        ]
        for n, headers, content_type in cases:
            await exchange.publish(
                aio_pika.Message(py_body(n), headers=headers, content_type=content_type), routing_key=topic
            )
        await exchange.publish(aio_pika.Message(py_body(99), headers=json_ct), routing_key=topic)
        every = await own_queue.wait_for(99)
        named = await named_queue.wait_for(99)

    assert received(every) == received(named) == [1, 5, 99]
    for events in (every, named):
        by_n = {e["body"]["n"]: e for e in events}
        assert by_n[1]["headers"] == {**json_ct, "Micro-Topic": topic}  # added from the routing key
        assert by_n[1]["body"] == {"n": 1, "from": "python", "text": "raw"}
        assert by_n[5]["headers"] == {**json_ct, "X-Int": "5", "X-Bool": "true", "Micro-Topic": "elsewhere"}

    assert "invalid message" not in own_queue.log()  # RabbitMQ's broker drops them silently

    # auto-delete: the queues went with their consumers
    left = await rabbitmqctl(rabbitmq_shared, "list_queues", "name")
    assert not {q["name"] for q in left} & set(names)


async def test_rabbitmq_subscriber_queue_is_shared(rabbitmq_shared: RabbitMQServer, logs: Path) -> None:
    topic, queue_name = topic_name(), f"q-{uuid.uuid4().hex[:8]}"
    target = rabbit_target(rabbitmq_shared)
    async with (
        go_subscriber(target, topic, logs, queue=queue_name) as first,
        go_subscriber(target, topic, logs, queue=queue_name) as second,
    ):
        queues = await rabbitmqctl(rabbitmq_shared, "list_queues", "name", "consumers")
        assert [q["consumers"] for q in queues if q["name"] == queue_name] == [2]
        await go_publish(target, topic, count=20)
        await eventually(lambda: len(first.events()) + len(second.events()) >= 20, "20 events in the group")
        ones, twos = received(first.events()), received(second.events())
    assert sorted(ones + twos) == list(range(20))
    assert ones and twos
    for event in first.events() + second.events():
        assert PROBE_HEADER not in event["headers"]
        assert UUID.match(event["headers"].pop("Micro-ID"))
        assert event["headers"] == {"Content-Type": "application/json", "Micro-Topic": topic}


async def eventually(condition: Callable[[], bool], what: str) -> None:
    async def holds() -> bool:
        return condition()

    await async_wait_until(holds, timeout=30, what=what)
