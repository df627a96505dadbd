"""`rabbitmq://` (and `amqp://`): events on RabbitMQ through aio-pika, at least once.

    rabbitmq://user:password@host:5672/vhost?exchange=micro&max_deliveries=5

Wire (go-micro v5's, so go-micro services and microweave exchange events): every event goes
through the topic exchange `micro` (declared as go-micro does: not durable, not auto-delete;
`?exchange=` names another), routing key = topic, body = the raw bytes (no JSON envelope on
RabbitMQ), AMQP headers = the event's headers (`Micro-Topic`, `Micro-Id`, `Content-Type`, the
trace context and the caller's own, case kept), plus the `content_type` and `message_id`
properties and persistent delivery.

Guarantees (each backed by a test in tests/integration/test_broker_rabbitmq.py, plus the
conformance suite tests/conformance/test_broker.py):

- Delivery: **at least once for queue groups**. `publish` returns once RabbitMQ confirmed the
  message (publisher confirms); a group's durable quorum queue keeps it until a member acks
  it, which happens when its handler returned (or `event.ack()`). Duplicates are possible (a
  publish resent after its confirm was lost with the connection, an event whose ack was lost):
  they carry the same `Micro-Id`. (test_broker_restart_mid_stream_loses_no_confirmed_publish)
- Broadcast (no queue): each subscriber has an exclusive, auto-delete queue of its own, so
  **at most once across a subscriber's connection**: events published while it is
  disconnected, and those it held unacknowledged when the connection dropped, are lost to it.
  (test_broadcast_queue_is_gone_with_its_subscriber)
- Ordering: RabbitMQ keeps one publisher's order within a queue; a subscriber sees it with
  `max_in_flight=1` until a redelivery (a requeued event comes back later).
  (conformance: test_one_publisher_order_is_kept_for_one_subscriber)
- Durability: group queues are quorum queues (on disk, replicated in a cluster) holding
  persistent messages: a broker restart keeps every confirmed event.
  Also after a restart, before the group's consumers are back: see Decisions.
  (test_broker_restart_mid_stream_loses_no_confirmed_publish)
- Consumer crash: what it held unacknowledged is redelivered to another member of the group,
  with `attempt` counted by RabbitMQ (`x-delivery-count` + 1).
  (test_sigkilled_consumer_unacked_events_are_redelivered_to_another_member)
- Broker restart: aio-pika's robust connection reconnects every `reconnect_interval` s and
  restores the exchange, queues, bindings and every consumer; publishes during the outage wait
  and retry for `retry_time` s in all, then raise `BrokerError` naming the URL without
  credentials. (test_broker_restart_mid_stream_loses_no_confirmed_publish,
  test_broker_down_during_publish_raises_after_bounded_retries_and_publishing_resumes)
- Broker down at start: `connect()` retries for `retry_time` s, then `BrokerError` naming the
  URL and what to check; a refused login or virtual host fails at once.
  (test_broker_down_at_start_is_a_clear_error_after_bounded_retries,
  test_credentials_in_the_url_work_and_never_show)
- Failures: a failed handler's event is held `delay` s (keeping its slot), then rejected back
  into the queue; after `max_deliveries` deliveries (at once for a payload that does not
  decode) a copy goes to `dead_letter_topic(topic)` on the same exchange, with the same headers
  and `Micro-Dead-Letter-Reason`, confirmed, and then the original is acked. An event delivered
  more than `max_deliveries` times without ever being settled (its consumers crash on it) is
  dead-lettered without running it again. Under all that, each group queue has RabbitMQ's own
  `x-delivery-limit` (`delivery_limit`, 50) with the dead-letter key as its dead-letter
  route. (test_poison_event_is_dead_lettered_after_max_deliveries_while_consuming_goes_on,
  test_a_delayed_nack_holds_its_slot_then_comes_back,
  test_an_event_its_consumers_keep_dying_on_is_dead_lettered_without_running_again,
  test_rabbitmq_own_delivery_limit_dead_letters_to_the_same_place)

Decisions:

- Our queues are bound to `microweave:<exchange>`, a durable topic exchange bound to `micro`
  with `#`, not to `micro` itself: `micro` is not durable (go-micro's), so a broker restart
  drops every binding to it, and events published before each group's consumer bound again
  would be lost. (exchanges.py says more; test_broker_restart_mid_stream_loses_no_confirmed_publish
  brings the consumer back last to show it.)
- Queue names: a group's queue is `microweave:<group>:<topic>` (names.group_queue_name says
  why: shared by members, one per topic, never go-micro's `<group>`, which is non-durable and
  auto-delete, so one name for both would fail with PRECONDITION_FAILED).
- Where dead letters wait: every group also declares `microweave:<group>:<topic>.dead-letter`,
  bound to the dead-letter key: the queue that group would use for the dead-letter topic. So
  a dead-lettered event is kept even before anyone subscribes to the dead-letter topic, and
  `subscribe(dead_letter_topic(topic), queue=<group>)` reads them all, older ones included;
  other groups get those dead-lettered after they subscribed.
  (test_poison_event_is_dead_lettered_after_max_deliveries_while_consuming_goes_on)
- Unroutable events (no queue bound to the topic): published as `mandatory`, so RabbitMQ
  returns them instead of dropping them silently. By default (`?unroutable=warn`) a warning
  says so, once a minute per topic, and `publish` returns (publishing before anyone subscribed
  is ordinary, and go-micro does it); `?unroutable=error` raises `BrokerError` instead.
  (test_unroutable_publish_warns_by_default_and_raises_when_asked; the returned message is
  matched to the right publish even when two share a Micro-Id:
  test_same_message_id_in_flight_return_is_blamed_on_the_right_publish)
- Prefetch (basic.qos) is the subscription's `max_in_flight`.
- Credentials are only in the URL given to aio-pika; errors, our logs and repr show the URL
  without user and password (aio-pika's and aiormq's own lines mask the password).
  (test_credentials_in_the_url_work_and_never_show)
- Memory: a subscription holds at most `max_in_flight` events (the prefetch), each at most
  RabbitMQ's `max_message_size` (128 MiB by default on 3.10: set it lower on the server to
  bound a subscriber tighter); at most 256 headers of 16 KiB each are read from one event.

Options (URL query or keyword arguments): exchange, retry_time, connect_timeout,
confirm_timeout, reconnect_interval, unroutable, delivery_limit, max_requeue_delay, heartbeat,
max_deliveries (see options.Options).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from ...errors import BrokerError, ConfigurationError, MicroError
from .. import DEFAULT_MAX_DELIVERIES, MESSAGE_ID, Broker, Subscription, broker_error, header
from .connect import close_quietly, open_connection
from .consumer import Consumer
from .options import Options, from_backend_url, split_url
from .publisher import Publisher

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustConnection

    from ..._backends import BackendURL

__all__ = ["RabbitMQBroker"]

log = logging.getLogger("microweave.broker.rabbitmq")

#: seconds between two warnings about unroutable events of one topic
WARN_EVERY: Final = 60.0
#: topics whose last warning time is remembered
WARNED_TOPICS: Final = 1024


class RabbitMQBroker(Broker):
    scheme = "rabbitmq"
    guarantee = "at-least-once"
    redelivers = True

    def __init__(
        self,
        url: str = "rabbitmq://",
        *,
        exchange: str | None = None,
        retry_time: float | None = None,
        connect_timeout: float | None = None,
        confirm_timeout: float | None = None,
        reconnect_interval: float | None = None,
        unroutable: str | None = None,
        delivery_limit: int | None = None,
        max_requeue_delay: float | None = None,
        heartbeat: int | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        name: str = "",
    ) -> None:
        super().__init__(max_deliveries=max_deliveries, name=name)
        self._url, self.public = split_url(url)
        given: dict[str, Any] = {
            "exchange": exchange,
            "retry_time": retry_time,
            "connect_timeout": connect_timeout,
            "confirm_timeout": confirm_timeout,
            "reconnect_interval": reconnect_interval,
            "unroutable": unroutable,
            "delivery_limit": delivery_limit,
            "max_requeue_delay": max_requeue_delay,
            "heartbeat": heartbeat,
        }
        try:
            self.options = Options(**{k: v for k, v in given.items() if v is not None})
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.public}: {exc.detail}") from None
        if max_deliveries >= self.options.delivery_limit:
            raise ConfigurationError(
                f"{self.public}: max_deliveries ({max_deliveries}) must be below delivery_limit "
                f"({self.options.delivery_limit}), RabbitMQ's own limit under it"
            )
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        #: events RabbitMQ returned because no queue was bound to their topic
        self.unroutable = 0
        self._warned: dict[str, float] = {}

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> RabbitMQBroker:
        text, options = from_backend_url(url, kwargs)
        return cls(text, **options)

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerError(f"broker {self.public}: not connected", id="microweave.broker")
        return self._connection

    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise BrokerError(f"broker {self.public}: not connected", id="microweave.broker")
        return self._publisher

    async def _connect(self) -> None:
        connection = await open_connection(self._url, self.public, self.options, name=self.name)
        publisher = Publisher(connection, public=self.public, options=self.options)
        try:
            await publisher.open()
        except BaseException as exc:
            await close_quietly(connection)
            if isinstance(exc, MicroError | asyncio.CancelledError) or not isinstance(exc, Exception):
                raise
            raise broker_error(self.public, "open a channel", exc) from None
        self._connection, self._publisher = connection, publisher

    async def _close(self) -> None:
        publisher, self._publisher = self._publisher, None
        connection, self._connection = self._connection, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await publisher.close()
        if connection is not None:
            await close_quietly(connection)

    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        if not await self.publisher().publish(topic, body, headers):
            self._unroutable(topic, headers)

    def _unroutable(self, topic: str, headers: dict[str, str]) -> None:
        self.unroutable += 1
        exchange = self.options.exchange
        event_id = header(headers, MESSAGE_ID)
        if self.options.unroutable == "error":
            raise broker_error(
                self.public,
                f"publish to {topic}",
                BrokerError(
                    f"no subscriber queue is bound to {topic!r} on exchange {exchange!r}, so RabbitMQ "
                    f"dropped event {event_id}: subscribe (with a queue group) first, or set ?unroutable=warn"
                ),
            )
        now = time.monotonic()
        last = self._warned.get(topic)
        if last is None or now - last >= WARN_EVERY:
            if len(self._warned) >= WARNED_TOPICS:
                self._warned.clear()
            self._warned[topic] = now
            log.warning(
                "broker %s: event %s on %s reached no queue (none is bound to it on exchange %r), so "
                "RabbitMQ dropped it; said once a minute per topic (%d unroutable so far; "
                "?unroutable=error makes publish raise)",
                self.public, event_id, topic, exchange, self.unroutable,
            )  # fmt: skip

    async def _subscribe(self, sub: Subscription) -> None:
        consumer = Consumer(self, sub)
        limit = self.options.retry_time + self.options.connect_timeout
        try:
            async with asyncio.timeout(limit):  # aio-pika would wait for a lost connection for ever
                await self.connection.ready()  # down: wait for the robust connection to be back
                await consumer.start()
        except (MicroError, asyncio.CancelledError):
            raise
        except TimeoutError:
            why = f"the connection to RabbitMQ is down and did not come back within {limit:g} s"
            raise broker_error(self.public, f"subscribe to {sub.topic}", BrokerError(why)) from None
        except Exception as exc:
            raise broker_error(self.public, f"subscribe to {sub.topic}", exc) from None
        sub.state = consumer

    async def _unsubscribe(self, sub: Subscription) -> None:
        if isinstance(sub.state, Consumer):
            await sub.state.cancel()

    async def _after_unsubscribe(self, sub: Subscription) -> None:
        if isinstance(sub.state, Consumer):
            await sub.state.close()

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self.public!r}, exchange={self.options.exchange!r})"
