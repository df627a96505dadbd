"""Publishing: one confirm-mode channel, persistent messages, mandatory routing, bounded retries.

The path is kept thin (one `Basic.Properties`, one `basic_publish` on aiormq's channel, which
aio-pika's `Exchange.publish` also ends in), because every event pays for it. Three things
aio-pika leaves to its caller are done here:

- A message no queue is bound to is returned by RabbitMQ (`mandatory`) instead of dropped
  silently; `publish` says whether it was routed.
- aiormq matches a returned message to its publish by `message_id`. Two publishes with the same
  id in flight on one channel (the same `Micro-Id` published twice, an event and its
  dead-letter copy) would have the return blamed on the wrong one, so a publish waits while
  another with its id is unconfirmed.
- While the connection is down the robust channel waits for it for ever; here a publish waits
  and retries for `retry_time` seconds in all, then raises `BrokerError`. A publish whose
  confirm was lost with the connection is sent again: a consumer may see it twice, with the
  same `Micro-Id`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiormq
import aiormq.exceptions
from aiormq.abc import DeliveredMessage

from ...errors import BrokerError
from .. import CONTENT_TYPE, MESSAGE_ID, backoff, broker_error, header
from .connect import explain, is_transient
from .exchanges import declare_exchanges

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

    from .options import Options

__all__ = ["Publisher"]

log = logging.getLogger("microweave.broker.rabbitmq")

PERSISTENT = 2  # AMQP delivery mode: written to disk by a durable queue


class Publisher:
    def __init__(self, connection: AbstractRobustConnection, *, public: str, options: Options) -> None:
        self._connection = connection
        self._public = public
        self._exchange = options.exchange
        self._retry_time = options.retry_time
        self._confirm_timeout = options.confirm_timeout
        self._channel: AbstractRobustChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        #: message ids being published -> an event set when that publish is done (None until
        #: a second publish of the same id waits for it)
        self._in_flight: dict[str, asyncio.Event | None] = {}

    async def open(self) -> None:
        channel = self._connection.channel(publisher_confirms=True, on_return_raises=False)
        await channel.initialize()
        self._channel = channel
        await declare_exchanges(channel, self._exchange, self._public)
        self._underlay = await channel.get_underlay_channel()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._underlay = None
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def publish(self, topic: str, body: bytes, headers: dict[str, str]) -> bool:
        """Publish and wait for the broker's confirm; False when no queue was bound to `topic`
        (RabbitMQ returned it). `BrokerError` when it could not be published."""
        message_id = header(headers, MESSAGE_ID) or ""
        properties = aiormq.spec.Basic.Properties(
            headers=headers,  # type: ignore[arg-type]  # str values are a valid field table
            content_type=header(headers, CONTENT_TYPE),
            message_id=message_id or None,
            delivery_mode=PERSISTENT,
        )
        in_flight = self._in_flight
        while message_id in in_flight:
            done = in_flight[message_id]
            if done is None:
                done = in_flight[message_id] = asyncio.Event()
            await done.wait()
        in_flight[message_id] = None
        try:
            return await self._send(topic, body, properties)
        finally:
            done = in_flight.pop(message_id, None)
            if done is not None:
                done.set()

    async def _send(self, topic: str, body: bytes, properties: aiormq.spec.Basic.Properties) -> bool:
        underlay = self._underlay
        if underlay is not None and not underlay.is_closed:
            try:
                return await self._send_on(underlay, topic, body, properties)
            except BaseException as exc:
                self._give_up_unless_transient(topic, exc)
        return await self._send_retrying(topic, body, properties)

    async def _send_on(
        self,
        underlay: aiormq.abc.AbstractChannel,
        topic: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
    ) -> bool:
        """One confirmed, mandatory publish; True when routed (False: returned unroutable)."""
        result = await underlay.basic_publish(
            body,
            exchange=self._exchange,
            routing_key=topic,
            properties=properties,
            mandatory=True,
            timeout=self._confirm_timeout,
        )
        return not isinstance(result, DeliveredMessage)

    async def _send_retrying(self, topic: str, body: bytes, properties: aiormq.spec.Basic.Properties) -> bool:
        """The slow path: wait for the channel (the connection may be coming back), send, and
        again with a backoff, for `retry_time` seconds at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_time
        attempt = 0
        last: BaseException | None = None
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            if remaining <= 0 or self._channel is None:
                why = explain(last) if last is not None else "the broker is closed"
                why += f" (not published within {self._retry_time:g} s)"
                raise broker_error(self._public, f"publish to {topic}", BrokerError(why))
            try:
                async with asyncio.timeout(remaining):
                    # ready(): reconnected, and the channel's exchanges and bindings restored
                    await self._channel.ready()
                    underlay = self._underlay = await self._channel.get_underlay_channel()
            except TimeoutError:
                last = aiormq.exceptions.ConnectionClosed(320, "lost")  # and not back yet
                continue
            if underlay.is_closed:
                last = aiormq.exceptions.ChannelInvalidStateError("the channel is being restored")
            else:
                try:
                    routed = await self._send_on(underlay, topic, body, properties)
                except BaseException as exc:
                    self._give_up_unless_transient(topic, exc)
                    last = exc
                else:
                    return routed
            await asyncio.sleep(min(backoff(attempt, base=0.05, cap=0.5), max(0.0, deadline - loop.time())))

    def _give_up_unless_transient(self, topic: str, exc: BaseException) -> None:
        """Re-raise what retrying cannot fix; return for what it may (the connection went)."""
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise exc  # our caller is cancelled
            return  # aiormq cancels the confirmations of a connection that closed
        if isinstance(exc, TimeoutError):
            raise broker_error(
                self._public,
                f"publish to {topic}",
                BrokerError(
                    f"not confirmed within {self._confirm_timeout:g} s, so it may or may not be published "
                    "(is the broker blocked by a memory or disk alarm?)"
                ),
            ) from None
        if isinstance(exc, aiormq.exceptions.DeliveryError):
            return  # a Basic.Nack: the broker could not take it now
        if isinstance(exc, Exception) and is_transient(exc):
            return
        if isinstance(exc, Exception):
            raise broker_error(self._public, f"publish to {topic}", BrokerError(explain(exc))) from None
        raise exc
