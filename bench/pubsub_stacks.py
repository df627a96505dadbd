"""The stacks `pubsub.py` measures: microweave's brokers and the libraries a team would use instead.

Each stack has a publisher half (`publish(seq, ts)`: one message, returning when the stack
says it was accepted: buffered on core NATS, confirmed on JetStream, RabbitMQ and Redis) and a
subscriber half that calls `record(seq, ts)` for each message it consumes, after decoding it
the stack's way. The message is ~64 bytes of JSON, `{"seq":N,"ts":T,"pad":"..."}`, T the
publish time (CLOCK_MONOTONIC, shared by the processes of one host).

- `microweave-*`: `load_broker(url)`, `await broker.publish(topic, body)`;
  `broker.subscribe(topic, handler, queue=group)`, the handler does `event.decode(Tick)` (msgspec).
  `microweave-nats` gets `?pending_msgs=524288`: nats-py's default, the bound raw-nats has.
- `raw-nats`: nats-py `nc.publish`; `nc.subscribe(topic, queue=group, cb=...)`, msgspec decode.
- `faststream-nats`: `NatsBroker.publish(Tick(...), topic)`; a subscriber typed with the pydantic
  `Tick` in queue group `group` (faststream's usual way).
- `raw-aio-pika`: a persistent message to the topic exchange `micro` on a channel with publisher
  confirms; a durable quorum queue `group` bound by `topic` (microweave's queue-group shape),
  prefetch 64, `await message.ack()`.
- `faststream-rabbit`: `RabbitBroker.publish(Tick(...), exchange, routing_key=topic,
  persist=True)` (confirms are on by default); a subscriber typed with `Tick` on the same
  exchange and quorum queue shape.
- `raw-redis`: redis-py `XADD topic * d body`; `XREADGROUP` 64 at a time, one `XACK` per batch.
- `microweave-direct`: `direct://` (no engine): the publisher's `Client` finds the subscriber's
  own node in a `local://` registry and calls it; each publish returns once the handler ran.

Subscribers may have at most 64 messages in hand: microweave's default `max_in_flight`, the
prefetch of the RabbitMQ stacks and the XREADGROUP batch. Driver modules are imported inside
the stacks, so `--list` works without them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec

__all__ = ["BODY_SIZE", "STACKS", "PubSubStack", "Publisher", "Record", "Subscriber", "Tick", "encode"]

BODY_SIZE = 64
#: messages a subscriber may hold at once (microweave's DEFAULT_MAX_IN_FLIGHT)
IN_FLIGHT = 64
#: the topic exchange microweave's RabbitMQ backend (and go-micro's) publishes to, declared as
#: they declare it (topic, not durable): a different declaration of the same name is refused
RABBIT_EXCHANGE = "micro"
#: microweave's queue groups are durable quorum queues: the raw stacks get the same kind
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
#: nats-py's per-subscription bound on waiting messages (DEFAULT_SUB_PENDING_MSGS_LIMIT)
NATS_PY_PENDING_MSGS = 512 * 1024
INSTALL_EXTRA = "pip install -e '.[bench]' (faststream[nats,rabbit], nats-py, aio-pika, redis)"

Record = Callable[[int, int], None]


class Tick(msgspec.Struct):
    seq: int
    ts: int
    pad: str


_decode_tick = msgspec.json.Decoder(Tick).decode


def encode(seq: int, ts: int) -> bytes:
    """`{"seq":N,"ts":T,"pad":"xx..."}`, padded to BODY_SIZE bytes."""
    head = b'{"seq":%d,"ts":%d,"pad":"' % (seq, ts)
    return head + b"x" * max(0, BODY_SIZE - len(head) - 2) + b'"}'


def _pad(seq: int, ts: int) -> str:
    return "x" * max(0, BODY_SIZE - len(b'{"seq":%d,"ts":%d,"pad":""}' % (seq, ts)))


class Publisher(abc.ABC):
    @abc.abstractmethod
    async def publish(self, seq: int, ts: int) -> None: ...

    async def flush(self) -> None:  # noqa: B027 - only buffering stacks need it
        """Wait until what was published reached the engine (buffering stacks)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class Subscriber(abc.ABC):
    @abc.abstractmethod
    async def aclose(self) -> None: ...


class PubSubStack(abc.ABC):
    name = ""
    #: the engine it needs: nats, jetstream, rabbitmq or redis (see pubsub_engines.py)
    engine = ""
    description = ""
    #: Python modules it imports
    modules: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this stack cannot run here (what to install), or None."""
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                return f"install the bench extra: {INSTALL_EXTRA}; module {module!r} is missing"
        return None

    @abc.abstractmethod
    async def publisher(self, url: str, topic: str) -> Publisher: ...

    @abc.abstractmethod
    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber: ...


# -- microweave -----------------------------------------------------------------------------


class _MicroweavePublisher(Publisher):
    def __init__(self, broker: Any, topic: str) -> None:
        self.broker, self.topic = broker, topic

    async def publish(self, seq: int, ts: int) -> None:
        await self.broker.publish(self.topic, encode(seq, ts))

    async def aclose(self) -> None:
        await self.broker.aclose()


class _MicroweaveSubscriber(Subscriber):
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def aclose(self) -> None:
        await self.broker.aclose(grace=2.0)


class Microweave(PubSubStack):
    modules = ("microweave",)

    def __init__(self, name: str, engine: str, scheme: str, module: str) -> None:
        self.name, self.engine, self.scheme, self.module = name, engine, scheme, module
        self.description = f"microweave load_broker('{scheme}://...'): broker.publish / broker.subscribe"

    def unavailable(self) -> str | None:
        missing = super().unavailable()
        if missing:
            return missing
        if importlib.util.find_spec(self.module) is None:
            path = "src/" + self.module.replace(".", "/") + ".py"
            return f"microweave's {self.scheme}:// backend ({path}) does not exist yet"
        return None

    def _url(self, url: str) -> str:
        if self.engine == "jetstream":
            return url.replace("nats://", f"{self.scheme}://", 1)
        if self.scheme == "nats":
            # the same bound on waiting messages as raw-nats has (nats-py's default): with its
            # own (65,536) a flooding publisher overruns a subscriber slowed by a busy machine,
            # and NATS drops the rest (at most once, by design), which is another workload
            return f"{url}?pending_msgs={NATS_PY_PENDING_MSGS}"
        return url

    async def publisher(self, url: str, topic: str) -> Publisher:
        from microweave._backends import load_broker

        broker = load_broker(self._url(url))
        await broker.connect()
        return _MicroweavePublisher(broker, topic)

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        from microweave._backends import load_broker

        broker = load_broker(self._url(url))
        await broker.connect()

        async def handle(event: Any) -> None:
            tick = event.decode(Tick)
            record(tick.seq, tick.ts)

        await broker.subscribe(topic, handle, queue=group, max_in_flight=IN_FLIGHT)
        return _MicroweaveSubscriber(broker)


class MicroweaveDirect(Microweave):
    """`direct://`: no engine; the subscriber's broker serves a small node of its own, registered
    in a `local://` registry (a temp dir) where the publisher's client finds it. Each publish is a
    call that returns once the handler ran."""

    def __init__(self) -> None:
        super().__init__("microweave-direct", "registry", "direct", "microweave.broker.direct")
        self.description = (
            "microweave direct:// (no server): publish calls the subscriber's node found in a "
            "local:// registry, returning once the handler ran"
        )

    @staticmethod
    async def _broker(registry: str) -> tuple[Any, Any]:
        from microweave import Client

        client = Client(registry=registry, broker="direct://")
        broker = client.broker  # bound to the client: its registry, its transports
        await broker.connect()
        return client, broker

    async def publisher(self, url: str, topic: str) -> Publisher:
        client, broker = await self._broker(url)
        return _DirectPublisher(client, broker, topic)

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        client, broker = await self._broker(url)

        async def handle(event: Any) -> None:
            tick = event.decode(Tick)
            record(tick.seq, tick.ts)

        await broker.subscribe(topic, handle, queue=group, max_in_flight=IN_FLIGHT)
        return _DirectSubscriber(client)


class _DirectPublisher(_MicroweavePublisher):
    def __init__(self, client: Any, broker: Any, topic: str) -> None:
        super().__init__(broker, topic)
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the broker it built


class _DirectSubscriber(Subscriber):
    def __init__(self, client: Any) -> None:
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()


# -- raw nats-py ------------------------------------------------------------------------------


class _NatsPublisher(Publisher):
    def __init__(self, nc: Any, topic: str) -> None:
        self.nc, self.topic = nc, topic

    async def publish(self, seq: int, ts: int) -> None:
        await self.nc.publish(self.topic, encode(seq, ts))

    async def flush(self) -> None:
        await self.nc.flush(timeout=30)

    async def aclose(self) -> None:
        await self.nc.close()


class _NatsSubscriber(Subscriber):
    def __init__(self, nc: Any) -> None:
        self.nc = nc

    async def aclose(self) -> None:
        await self.nc.close()


class RawNats(PubSubStack):
    name = "raw-nats"
    engine = "nats"
    description = "nats-py: nc.publish / nc.subscribe(queue=...), core NATS"
    modules = ("nats",)

    async def publisher(self, url: str, topic: str) -> Publisher:
        import nats

        return _NatsPublisher(await nats.connect(url, name="bench-raw-nats-pub"), topic)

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        import nats

        nc = await nats.connect(url, name="bench-raw-nats-sub")

        async def on_message(msg: Any) -> None:
            tick = _decode_tick(msg.data)
            record(tick.seq, tick.ts)

        await nc.subscribe(topic, queue=group, cb=on_message)
        await nc.flush()
        return _NatsSubscriber(nc)


# -- faststream ------------------------------------------------------------------------------


def _quiet_logger() -> logging.Logger:
    # faststream logs every message at INFO; microweave logs nothing per message
    logger = logging.getLogger("bench.faststream")
    logger.setLevel(logging.WARNING)
    return logger


@cache
def _tick_model() -> type[Any]:
    from pydantic import BaseModel

    class TickModel(BaseModel):
        seq: int
        ts: int
        pad: str

    return TickModel


class _FaststreamPublisher(Publisher):
    def __init__(self, broker: Any, publish: Callable[[Any], Any]) -> None:
        self.broker, self._publish, self.model = broker, publish, _tick_model()

    async def publish(self, seq: int, ts: int) -> None:
        await self._publish(self.model(seq=seq, ts=ts, pad=_pad(seq, ts)))

    async def flush(self) -> None:
        connection = getattr(self.broker, "_connection", None)
        if connection is not None and hasattr(connection, "flush"):
            await connection.flush(timeout=30)

    async def aclose(self) -> None:
        await self.broker.stop()


class _FaststreamSubscriber(Subscriber):
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def aclose(self) -> None:
        await self.broker.stop()


def _typed_handler(record: Record) -> Callable[[Any], Any]:
    async def handle(tick: Any) -> None:
        record(tick.seq, tick.ts)

    # faststream reads the annotation to decode the body into the pydantic model
    handle.__annotations__ = {"tick": _tick_model(), "return": None}
    return handle


class FaststreamNats(PubSubStack):
    name = "faststream-nats"
    engine = "nats"
    description = "faststream NatsBroker: broker.publish(model) / typed subscriber (pydantic), core NATS"
    modules = ("nats", "faststream", "pydantic")

    async def publisher(self, url: str, topic: str) -> Publisher:
        from faststream.nats import NatsBroker

        broker = NatsBroker(url, logger=_quiet_logger())
        await broker.connect()
        return _FaststreamPublisher(broker, lambda model: broker.publish(model, topic))

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        from faststream.nats import NatsBroker

        broker = NatsBroker(url, logger=_quiet_logger())
        broker.subscriber(topic, queue=group)(_typed_handler(record))
        await broker.start()
        return _FaststreamSubscriber(broker)


def _rabbit_exchange() -> Any:
    from faststream.rabbit import ExchangeType, RabbitExchange

    return RabbitExchange(RABBIT_EXCHANGE, type=ExchangeType.TOPIC, durable=False)


class FaststreamRabbit(PubSubStack):
    name = "faststream-rabbit"
    engine = "rabbitmq"
    description = (
        "faststream RabbitBroker: publish(model, persist=True) with confirms / typed subscriber, "
        "quorum queue, prefetch 64"
    )
    modules = ("aio_pika", "faststream", "pydantic")

    async def publisher(self, url: str, topic: str) -> Publisher:
        from faststream.rabbit import RabbitBroker

        broker = RabbitBroker(url, logger=_quiet_logger())
        await broker.connect()
        exchange = _rabbit_exchange()
        await broker.declare_exchange(exchange)

        def publish(model: Any) -> Any:
            return broker.publish(model, exchange=exchange, routing_key=topic, persist=True)

        return _FaststreamPublisher(broker, publish)

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

        broker = RabbitBroker(url, logger=_quiet_logger())
        queue = RabbitQueue(group, queue_type=QueueType.QUORUM, durable=True, routing_key=topic)
        broker.subscriber(queue, _rabbit_exchange(), channel=Channel(prefetch_count=IN_FLIGHT))(
            _typed_handler(record)
        )
        await broker.start()
        return _FaststreamSubscriber(broker)


# -- raw aio-pika ----------------------------------------------------------------------------


class _PikaPublisher(Publisher):
    def __init__(self, connection: Any, exchange: Any, topic: str) -> None:
        import aio_pika

        self.connection, self.exchange, self.topic = connection, exchange, topic
        self.message = aio_pika.Message
        self.persistent = aio_pika.DeliveryMode.PERSISTENT

    async def publish(self, seq: int, ts: int) -> None:
        # returns once the broker confirmed it (the channel has publisher confirms on)
        await self.exchange.publish(
            self.message(encode(seq, ts), delivery_mode=self.persistent), routing_key=self.topic
        )

    async def aclose(self) -> None:
        await self.connection.close()


class _PikaSubscriber(Subscriber):
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def aclose(self) -> None:
        await self.connection.close()


class RawAioPika(PubSubStack):
    name = "raw-aio-pika"
    engine = "rabbitmq"
    description = (
        "aio-pika: confirmed persistent publish to a topic exchange / quorum queue, prefetch 64, ack"
    )
    modules = ("aio_pika",)

    @staticmethod
    async def _exchange(channel: Any) -> Any:
        import aio_pika

        return await channel.declare_exchange(RABBIT_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=False)

    async def publisher(self, url: str, topic: str) -> Publisher:
        import aio_pika

        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        return _PikaPublisher(connection, await self._exchange(channel), topic)

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        import aio_pika

        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=IN_FLIGHT)
        exchange = await self._exchange(channel)
        queue = await channel.declare_queue(group, durable=True, arguments=QUORUM)
        await queue.bind(exchange, routing_key=topic)

        async def on_message(message: Any) -> None:
            tick = _decode_tick(message.body)
            record(tick.seq, tick.ts)
            await message.ack()

        await queue.consume(on_message)
        return _PikaSubscriber(connection)


# -- raw redis-py ----------------------------------------------------------------------------


class _RedisPublisher(Publisher):
    def __init__(self, client: Any, topic: str) -> None:
        self.client, self.topic = client, topic

    async def publish(self, seq: int, ts: int) -> None:
        await self.client.xadd(self.topic, {b"d": encode(seq, ts)})

    async def aclose(self) -> None:
        await self.client.aclose()


class _RedisSubscriber(Subscriber):
    def __init__(self, client: Any, task: asyncio.Task[None], topic: str) -> None:
        self.client, self.task, self.topic = client, task, topic

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(Exception):
            await self.client.delete(self.topic)  # give the engine its memory back
        await self.client.aclose()


class RawRedis(PubSubStack):
    name = "raw-redis"
    engine = "redis"
    description = "redis-py: XADD / XREADGROUP (64 at a time) with one XACK per batch, Redis Streams"
    modules = ("redis",)

    async def publisher(self, url: str, topic: str) -> Publisher:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        await client.ping()
        return _RedisPublisher(client, topic)

    async def subscriber(self, url: str, topic: str, group: str, record: Record) -> Subscriber:
        import redis.asyncio

        client: Any = redis.asyncio.Redis.from_url(url)
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists already
            await client.xgroup_create(topic, group, id="$", mkstream=True)

        async def consume() -> None:
            streams = {topic: ">"}
            while True:
                batches = await client.xreadgroup(group, "bench", streams, count=IN_FLIGHT, block=1000)
                for _, entries in batches:
                    for _, fields in entries:
                        tick = _decode_tick(fields[b"d"])
                        record(tick.seq, tick.ts)
                    if entries:
                        await client.xack(topic, group, *(entry_id for entry_id, _ in entries))

        return _RedisSubscriber(client, asyncio.get_running_loop().create_task(consume()), topic)


STACKS: dict[str, PubSubStack] = {
    stack.name: stack
    for stack in (
        Microweave("microweave-nats", "nats", "nats", "microweave.broker.nats"),
        RawNats(),
        FaststreamNats(),
        Microweave("microweave-jetstream", "jetstream", "nats+jetstream", "microweave.broker.jetstream"),
        Microweave("microweave-rabbitmq", "rabbitmq", "rabbitmq", "microweave.broker.rabbitmq"),
        RawAioPika(),
        FaststreamRabbit(),
        Microweave("microweave-redis", "redis", "redis", "microweave.broker.redis"),
        RawRedis(),
        MicroweaveDirect(),
    )
}
