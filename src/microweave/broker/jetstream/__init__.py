"""`nats+jetstream://host:port[,host:port]?option=...`: NATS JetStream, at least once.

Options: `ack_wait`, `max_deliveries`, `publish_timeout`, `connect_timeout` (seconds, counts),
`max_msgs`, `max_bytes`, `max_age`, `duplicate_window` (each stream's bounds); credentials as
`user:password@host` or `token@host`.

- Guarantee: **at least once.** `publish` returns once the server stored the message (its
  PubAck); each queue group gets each event until a member acknowledges it, and a failed
  handler's event comes back after a backoff with `attempt` = the server's delivery count, until
  `max_deliveries` (default 5); then it goes to `dead_letter_topic(topic)` with its `Micro-Id`,
  headers and a `Micro-Dead-Letter-Reason` (tests/conformance/test_broker.py -k jetstream;
  test_broker_jetstream.py: test_poison_is_dead_lettered_after_max_deliveries_and_consuming_goes_on).
- Dedup: `Micro-Id` is sent as `Nats-Msg-Id`: publishing the same id again within
  `duplicate_window` (default 120 s) is stored once, so a publisher may retry a publish that
  failed (test_broker_jetstream.py: test_a_server_restart_loses_no_confirmed_publish).
- Wire: go-micro's envelope `{"Header": {...}, "Body": "<base64>"}` on subject = topic, as on
  core NATS, so go-micro's NATS subscribers on the same server get our events.
- Streams: the stream that already captures the topic, else one per topic (capturing the topic
  and its dead-letter topic), on file storage, bounded by `max_msgs` (default 1,000,000),
  `max_bytes` (256 MiB) and `max_age` (7 days); past those the oldest messages go, consumed or
  not (see streams.py).
- Consumers: a queue group is a durable pull consumer named after the queue and topic, shared by
  its members (it outlives them: a group that subscribes again resumes where it left off); a
  subscriber without a queue gets an ephemeral consumer of its own, deleted when it
  unsubscribes. Both deliver only messages published after the consumer was created, except
  on a dead-letter topic: there a new consumer starts from the oldest dead letter the stream
  still holds, so dead letters written while nobody listened can be read later
  (test_broker_jetstream.py: test_dead_letters_written_before_anyone_subscribed_are_read_later).
  Each subscriber asks for at most its free handler slots (`max_in_flight`); see consumer.py.
- Ordering: one publisher's order per subscriber while nothing is redelivered, with
  `max_in_flight=1` (conformance: test_one_publisher_order_is_kept_for_one_subscriber); a
  redelivered event comes after later ones.
- Consumer crash: what it held is redelivered to another member of its group after `ack_wait`
  (default 30 s; running handlers keep their messages with in-progress acks)
  (test_broker_jetstream.py: test_a_killed_consumer_s_messages_go_to_another_member).
- Broker restart: nats-py reconnects, pulling resumes by itself, and no confirmed publish is
  lost (the store is on disk); a publish made while the server is away is retried with
  backoff for `publish_timeout` seconds (default 5), then raises `BrokerError` naming the
  URL: nothing is dropped silently (test_broker_jetstream.py:
  test_a_server_restart_loses_no_confirmed_publish,
  test_publish_while_the_server_is_down_raises_and_works_again_after). A consumer the server
  lost is created again from the last message seen
  (test_a_consumer_the_server_lost_is_created_again).
- Broker down at start: `BrokerError` naming the URL (without credentials) after bounded retries
  within `connect_timeout` seconds (default 5); a server without JetStream is refused likewise
  (test_broker_jetstream.py: test_server_down_at_start_is_a_clear_error). What the server
  refuses for good (a payload past its max_payload) fails at once, without retries.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from ...errors import BrokerError, ConfigurationError
from ...registry.outage import Backoff
from .. import MESSAGE_ID, Broker, Subscription, broker_error, header
from .._nats_link import NatsLink, NatsURL, parse_nats_url
from ..envelope import encode
from .consumer import Puller
from .streams import Streams, consumer_name

if TYPE_CHECKING:
    from ..._backends import BackendURL

__all__ = ["JetStreamBroker"]

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 5.0
ACK_WAIT = 30.0
MAX_MSGS = 1_000_000
MAX_BYTES = 256 * 1024 * 1024
MAX_AGE = 7 * 24 * 3600.0
DUPLICATE_WINDOW = 120.0
#: seconds one JetStream API request (and one publish attempt) may take
API_TIMEOUT = 2.0
MSG_ID = "Nats-Msg-Id"

#: what nats-py refuses before sending: the same message would be refused again
_REFUSED = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError, nats.errors.BadHeaderError)

_OPTIONS: dict[str, type] = {
    "connect_timeout": float,
    "publish_timeout": float,
    "ack_wait": float,
    "max_msgs": int,
    "max_bytes": int,
    "max_age": float,
    "duplicate_window": float,
    "max_deliveries": int,
}


class JetStreamBroker(Broker):
    scheme = "nats+jetstream"
    guarantee = "at-least-once"
    redelivers = True

    def __init__(
        self,
        url: NatsURL | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        publish_timeout: float = PUBLISH_TIMEOUT,
        ack_wait: float = ACK_WAIT,
        max_msgs: int = MAX_MSGS,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE,
        duplicate_window: float = DUPLICATE_WINDOW,
        **kwargs: Any,
    ) -> None:
        """`url`: from `JetStreamBroker.from_url` (default nats+jetstream://127.0.0.1:4222)."""
        super().__init__(**kwargs)
        self.url = url or NatsURL("nats+jetstream", [])
        if (
            min(connect_timeout, publish_timeout, ack_wait, max_age, duplicate_window) <= 0
            or min(max_msgs, max_bytes) < 1
        ):
            raise ConfigurationError(
                f"{self.url.public}: connect_timeout, publish_timeout, ack_wait, max_age, "
                "duplicate_window, max_msgs and max_bytes must be positive"
            )
        if duplicate_window > max_age:
            raise ConfigurationError(
                f"{self.url.public}: duplicate_window ({duplicate_window} s) "
                f"cannot exceed max_age ({max_age} s)"
            )
        self.publish_timeout = publish_timeout
        self.ack_wait = ack_wait
        self.streams = Streams(
            max_msgs=max_msgs, max_bytes=max_bytes, max_age=max_age, duplicate_window=duplicate_window
        )
        self.link = NatsLink(
            self.url, connect_timeout=connect_timeout, name=self.name or "microweave", hint=" with -js"
        )
        self._js: JetStreamContext | None = None

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> JetStreamBroker:
        parsed = parse_nats_url(url, types=_OPTIONS, given=kwargs)
        return cls(parsed, **parsed.options)

    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerError(f"broker {self.url.public} is not connected", id="microweave.broker")
        return self._js

    # -- connection -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        nc = await self.link.open(check=_has_jetstream)
        self._js = nc.jetstream(timeout=API_TIMEOUT)

    async def _close(self) -> None:
        self._js = None
        await self.link.close()

    # -- publishing ---------------------------------------------------------------------------------

    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        await self.send(topic, encode(headers, body), header(headers, MESSAGE_ID) or uuid.uuid4().hex)

    async def send(self, topic: str, payload: bytes, message_id: str) -> None:
        """Store `payload` on `topic` with `Nats-Msg-Id: message_id`; returns once the server
        acknowledged it (a duplicate's acknowledgement too). Retried with backoff for
        `publish_timeout` seconds, then `BrokerError`."""
        headers = {MSG_ID: message_id}

        async def attempt(js: JetStreamContext, left: float) -> None:
            await self.stream_for(topic, retry=False)
            try:
                await js.publish(topic, payload, timeout=max(0.2, min(API_TIMEOUT, left)), headers=headers)
            except NoStreamResponseError:
                self.streams.forget(topic)  # deleted, or not there yet after a restart
                raise

        await self._retrying(f"publish to {topic}", attempt)

    async def stream_for(self, topic: str, *, retry: bool = True) -> str:
        """The name of the stream that captures `topic` (found, else created)."""

        async def attempt(js: JetStreamContext, left: float) -> str:
            return await self.streams.stream_for(js, topic)

        if retry:
            return await self._retrying(f"find the stream of {topic}", attempt)
        return await attempt(self.js(), self.publish_timeout)

    async def _retrying(self, action: str, attempt: Callable[[JetStreamContext, float], Awaitable[T]]) -> T:
        """`attempt(js, seconds left)` until it succeeds, the server says no for good, or
        `publish_timeout` seconds have passed (then `BrokerError` naming the URL)."""
        started = time.monotonic()
        deadline = started + self.publish_timeout
        retry = Backoff(first=0.05, cap=0.5)
        tries = 0
        while True:
            tries += 1
            try:
                if not self.link.up:
                    raise ConnectionError("not connected: NATS is away (reconnecting)")
                return await attempt(self.js(), deadline - time.monotonic())
            except ServiceUnavailableError as exc:  # JetStream not ready yet (a restart)
                why: BaseException = exc
            except (APIError, *_REFUSED) as exc:  # asking again cannot help
                raise broker_error(self.url.public, action, exc) from None
            except (OSError, TimeoutError, nats.errors.Error, BrokerError) as exc:
                why = exc
            left = deadline - time.monotonic()
            if left <= 0:
                took = time.monotonic() - started
                raise broker_error(
                    self.url.public, f"{action} ({tries} tries in {took:.1f} s)", why
                ) from None
            await asyncio.sleep(min(retry.next(), left))

    # -- subscribing --------------------------------------------------------------------------------

    async def _subscribe(self, sub: Subscription) -> None:
        stream = await self.stream_for(sub.topic)
        if sub.queue is not None:
            puller = Puller(
                self, sub, stream=stream, name=consumer_name(stream, sub.queue, sub.topic), durable=True
            )
        else:
            puller = Puller(self, sub, stream=stream, name=f"mw_{uuid.uuid4().hex}", durable=False)

        async def create(js: JetStreamContext, left: float) -> None:
            await puller.create()

        await self._retrying(f"subscribe to {sub.topic}", create)
        try:
            await puller.start()
        except Exception as exc:
            raise broker_error(self.url.public, f"subscribe to {sub.topic}", exc) from None
        sub.state = puller

    async def _unsubscribe(self, sub: Subscription) -> None:
        if isinstance(sub.state, Puller):
            await sub.state.stop_pulling()

    async def _after_unsubscribe(self, sub: Subscription) -> None:
        if isinstance(sub.state, Puller):
            await sub.state.close()

    def __repr__(self) -> str:
        return f"JetStreamBroker({self.url.public!r})"


async def _has_jetstream(nc: Client) -> None:
    try:
        await nc.jetstream(timeout=API_TIMEOUT).account_info()
    except (nats.errors.NoRespondersError, ServiceUnavailableError, NoStreamResponseError):
        raise BrokerError(
            "the server answers without JetStream; start nats-server with -js", id="microweave.broker"
        ) from None
