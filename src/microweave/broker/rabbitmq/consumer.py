"""One subscription: its channel, its queue, its consumer, and how each delivery is settled.

- Queue group: the durable quorum queue `group_queue_name(group, topic)`, shared by every
  member, plus the group's dead-letter queue (the same kind of queue, for the topic's
  dead-letter key), so a dead-lettered event waits there even before anyone subscribed to the
  dead-letter topic. `attempt` is RabbitMQ's own count (`x-delivery-count` + 1), which also
  counts deliveries to a consumer that died holding the event.
- Broadcast: an exclusive, auto-delete queue of this subscriber's own. RabbitMQ counts nothing
  on classic queues, so a requeued event's attempt is remembered here (bounded) and found again
  by its id when it comes back.
- The channel's prefetch (basic.qos) is the subscription's `max_in_flight`: RabbitMQ never
  hands this subscriber more unacknowledged events than it may run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import aiormq.exceptions

from ...errors import BrokerError, ConfigurationError
from .. import DEAD_LETTER_REASON, MESSAGE_ID, Event, broker_error, dead_letter_topic, header
from .exchanges import declare_exchanges, durable_exchange_name
from .names import broadcast_queue_name, group_queue_arguments, group_queue_name, text_headers

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

    from .. import Subscription
    from . import RabbitMQBroker

__all__ = ["Consumer"]

log = logging.getLogger("microweave.broker.rabbitmq")

#: requeued broadcast events whose attempt count is remembered until they come back
REMEMBERED_RETURNS = 10_000
#: seconds to wait for RabbitMQ while stopping a consumer (it may be down)
STOP_TIMEOUT = 5.0


class Consumer:
    def __init__(self, broker: RabbitMQBroker, sub: Subscription) -> None:
        self.broker = broker
        self.sub = sub
        self.channel: AbstractRobustChannel | None = None
        self.queue: AbstractRobustQueue | None = None
        self.tag = ""
        self._returns: OrderedDict[str, int] = OrderedDict()

    @property
    def queue_name(self) -> str:
        return self.queue.name if self.queue is not None else ""

    async def start(self) -> None:
        sub, broker = self.sub, self.broker
        if "#" in sub.topic.split("."):
            raise ConfigurationError(f"topic {sub.topic!r}: '#' is a wildcard on RabbitMQ, not a topic name")
        channel = self.channel = broker.connection.channel(publisher_confirms=False)
        await channel.initialize()
        try:
            await channel.set_qos(prefetch_count=sub.max_in_flight)
            await declare_exchanges(channel, broker.options.exchange, broker.public)
            exchange = durable_exchange_name(broker.options.exchange)
            if sub.queue is None:
                name = broadcast_queue_name(sub.topic)
                queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
                await queue.bind(exchange, sub.topic)
            else:
                queue = await self._declare_group_queue(channel, sub.queue, sub.topic)
                await self._declare_group_queue(channel, sub.queue, dead_letter_topic(sub.topic))
            self.queue = queue
            self.tag = await queue.consume(self._on_message)
        except BaseException:
            await self.close()
            raise

    async def _declare_group_queue(
        self, channel: AbstractRobustChannel, group: str, topic: str
    ) -> AbstractRobustQueue:
        broker = self.broker
        name = group_queue_name(group, topic)
        arguments = group_queue_arguments(
            exchange=durable_exchange_name(broker.options.exchange),
            topic=topic,
            delivery_limit=broker.options.delivery_limit,
        )
        try:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise broker_error(
                broker.public,
                f"declare queue {name!r}",
                BrokerError(
                    f"it exists with other settings ({exc.args[0] if exc.args else exc}): every member of "
                    "the group must use the same exchange and delivery_limit; or delete the queue"
                ),
            ) from None
        await queue.bind(durable_exchange_name(broker.options.exchange), topic)
        return queue

    async def cancel(self) -> None:
        """No new deliveries; running handlers may still settle theirs on this channel."""
        if self.queue is not None and self.tag:
            tag, self.tag = self.tag, ""
            if self.channel is None or self.channel.is_closed:
                return  # gone with its channel (and close() keeps aio-pika from restoring it)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self.queue.cancel(tag)

    async def close(self) -> None:
        """Close the channel (RabbitMQ requeues what is still unacknowledged); never restored."""
        channel, self.channel = self.channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await channel.close()

    # -- deliveries --------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._deliver(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never hold a prefetch slot for a delivery nobody handles
            log.error("delivery on %s failed before its handler ran (%s): requeued", self.sub.topic, exc)
            with contextlib.suppress(Exception):
                await message.reject(requeue=True)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        sub, broker = self.sub, self.broker
        if not sub.active:
            return  # unsubscribing: left unacknowledged, requeued when the channel closes
        headers = text_headers(message.headers)
        if sub.queue is not None:
            count = message.headers.get("x-delivery-count") if message.headers else None
            attempt = (count if isinstance(count, int) and count >= 0 else 0) + 1
        else:
            attempt = self._broadcast_attempt(message, headers)
        settle = functools.partial(self._settle, message)
        event = Event(sub.topic, message.body, headers, attempt=attempt, queue=sub.queue, settle=settle)
        if sub.queue is not None and attempt > broker.max_deliveries:
            # delivered that often and never settled: its consumers died on it (a handler that
            # crashes its process); running it again would do the same
            log.error(
                "event %s on %s was delivered %d times without being settled: dead-lettered",
                event.id, sub.topic, attempt - 1,
            )  # fmt: skip
            event.settled = "nack"
            await self._dead_letter(message, event, f"delivered {attempt - 1} times without being settled")
            return
        await sub.dispatch(event)

    def _broadcast_attempt(self, message: AbstractIncomingMessage, headers: dict[str, str]) -> int:
        if not message.redelivered:
            return 1
        key = message.message_id or header(headers, MESSAGE_ID)
        returned = self._returns.pop(key, None) if key else None
        return returned + 1 if returned else 2

    async def _settle(
        self, message: AbstractIncomingMessage, event: Event, ack: bool, requeue: bool, delay: float
    ) -> None:
        if ack:
            await message.ack()
        elif requeue:
            if delay > 0:
                # the event keeps its slot (and stays unacknowledged) while it waits
                await asyncio.sleep(min(delay, self.broker.options.max_requeue_delay))
            if self.sub.queue is None:
                self._remember_return(message, event)
            await message.reject(requeue=True)
        else:
            max_deliveries = self.broker.max_deliveries
            reason = (
                f"failed {event.attempt} deliveries (max_deliveries={max_deliveries})"
                if event.attempt >= max_deliveries
                else f"rejected by its subscriber on delivery {event.attempt} (nack without requeue)"
            )
            await self._dead_letter(message, event, reason)

    def _remember_return(self, message: AbstractIncomingMessage, event: Event) -> None:
        key = message.message_id or event.id
        if key:
            self._returns[key] = event.attempt
            self._returns.move_to_end(key)
            while len(self._returns) > REMEMBERED_RETURNS:
                self._returns.popitem(last=False)

    async def _dead_letter(self, message: AbstractIncomingMessage, event: Event, reason: str) -> None:
        """Publish a copy on the topic's dead-letter key (confirmed), then ack the original; if
        the copy cannot be published, the original goes back to the queue instead."""
        topic = dead_letter_topic(self.sub.topic)
        headers = dict(event.headers)
        headers[DEAD_LETTER_REASON] = reason
        try:
            routed = await self.broker.publisher().publish(topic, event.body, headers)
        except BrokerError as exc:
            log.error(
                "event %s on %s: could not dead-letter it (%s); requeued",
                event.id, self.sub.topic, exc.detail,
            )  # fmt: skip
            with contextlib.suppress(Exception):
                await message.reject(requeue=True)
            return
        if not routed:
            log.error(
                "event %s on %s dead-lettered to %s, where no queue is bound: dropped (a queue-group "
                "subscriber of %s keeps its dead letters in a queue of their own)",
                event.id, self.sub.topic, topic, self.sub.topic,
            )  # fmt: skip
        await message.ack()
