"""Broker: services publish events; every subscriber gets each one, or one per queue group.

    broker = microweave.broker.from_url("nats://127.0.0.1:4222")   # or direct://, redis://, ...
    await broker.connect()
    await broker.subscribe("user.created", handle, queue="mailer")   # handle(event: Event)
    await broker.publish("user.created", UserCreated(id=7))

A backend implements four methods (`_connect`, `_close`, `_publish`, `_subscribe`); this module
does what must be the same everywhere: encoding a message, the `Micro-Id`, `Micro-Topic` and
`Content-Type` headers, the bounded number of handlers running per subscription
(`max_in_flight`), and what `ack="auto"` means:

- the handler returned: the event is acknowledged;
- the handler raised: the event is nacked for redelivery after a backoff, until it has been
  delivered `max_deliveries` times; then it goes to the dead-letter place (backends that have
  one) and is logged with its id;
- the payload does not decode (`BadRequest`): redelivering cannot help, so it is dead-lettered
  at once.

With `ack="manual"` the handler calls `event.ack()` or `event.nack(...)` itself (an event left
unsettled is nacked when the handler returns, so nothing is held forever).

Delivery guarantees differ by backend (`Broker.guarantee`); the docs' table says which, each
row backed by a named test. At-most-once backends (memory, direct, core NATS) accept ack/nack and
do nothing with them.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeVar

from ..codec import JSON, type_codec
from ..errors import BadRequest, BrokerError, ConfigurationError, MicroError

if TYPE_CHECKING:
    from .._backends import BackendURL
    from ..client import Client
    from ..middleware.tracing import ProducerTracing
    from ..server.pipeline import Pipeline
    from .subscriber import Subscriber

__all__ = [
    "CONTENT_TYPE",
    "DEAD_LETTER_REASON",
    "DEAD_LETTER_SUFFIX",
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_MAX_IN_FLIGHT",
    "MESSAGE_ID",
    "TOPIC",
    "AckMode",
    "Broker",
    "Event",
    "EventHandler",
    "Subscription",
    "backoff",
    "broker_error",
    "dead_letter_topic",
    "from_url",
    "header",
    "new_message_id",
]

log = logging.getLogger("microweave.broker")
T = TypeVar("T")

# go-micro's header names (matched case-insensitively when read)
TOPIC: Final = "Micro-Topic"
MESSAGE_ID: Final = "Micro-Id"
CONTENT_TYPE: Final = "Content-Type"

#: handlers of one subscription running at once, unless the subscriber says otherwise
DEFAULT_MAX_IN_FLIGHT: Final = 64
#: deliveries of one event before a failing one is dead-lettered (at-least-once backends)
DEFAULT_MAX_DELIVERIES: Final = 5
#: dead-lettered events of topic T are published on T + this, on the same broker
DEAD_LETTER_SUFFIX: Final = ".dead-letter"
#: the header a dead-lettered event carries: why it was given up on
DEAD_LETTER_REASON: Final = "Micro-Dead-Letter-Reason"
#: seconds cancelled handlers get to end before unsubscribe stops waiting for them
CANCEL_WAIT: Final = 2.0
#: the largest number a subscriber may ask for: each slot may hold a message in memory
MAX_IN_FLIGHT_LIMIT: Final = 10_000

AckMode = Literal["auto", "manual"]
EventHandler = Callable[["Event"], Awaitable[None]]


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case (go-micro writes `Micro-Id`, others `micro-id`)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def dead_letter_topic(topic: str) -> str:
    """Where an at-least-once backend puts the events of `topic` it gave up on (after
    `max_deliveries` failures, or at once for a payload that does not decode). Subscribe to it
    like any topic; each event keeps its `Micro-Id` and headers, plus `Micro-Dead-Letter-Reason`."""
    return topic + DEAD_LETTER_SUFFIX


def from_url(url: str | None = None, **kwargs: Any) -> Broker:
    """A broker from a URL such as `nats://host:4222` (None: MICRO_BROKER, else `direct://`)."""
    from .._backends import load_broker

    return load_broker(url, **kwargs)


def new_message_id() -> str:
    """128 random bits in hex, as a uuid4's hex (a quarter of its cost, on every publish)."""
    return os.urandom(16).hex()


def backoff(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> float:
    """Seconds before redelivering an event that failed on its `attempt`-th delivery."""
    return float(min(cap, base * 2.0 ** max(0, attempt - 1)))


Settle = Callable[["Event", bool, bool, float], Awaitable[None]]
"""A backend's settle function: (event, ack, requeue, delay)."""


async def _no_settle(event: Event, ack: bool, requeue: bool, delay: float) -> None:
    """At-most-once backends: nothing to tell the broker."""


class Event:
    """One delivered message: its topic, raw body, headers, and how to settle it."""

    __slots__ = ("_settle", "attempt", "body", "headers", "id", "queue", "settled", "topic")

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        attempt: int = 1,
        queue: str | None = None,
        settle: Settle = _no_settle,
    ) -> None:
        self.topic = topic
        self.body = body
        # a backend hands over a dict of its own (decoded per message): not copied again
        self.headers: dict[str, str] = headers if type(headers) is dict else dict(headers)
        #: `Micro-Id` as published; "" when the publisher sent none
        self.id = headers.get(MESSAGE_ID) or header(headers, MESSAGE_ID) or ""
        #: 1 on the first delivery, counted by the broker where it can (JetStream, RabbitMQ
        #: quorum queues, Redis pending entries); at-most-once backends always say 1
        self.attempt = attempt
        self.queue = queue
        #: "" until acked or nacked, then "ack" or "nack"
        self.settled = ""
        self._settle = settle

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    @property
    def content_type(self) -> str:
        """The body's media type without parameters (`application/json; charset=utf-8` is JSON)."""
        value = self.headers.get(CONTENT_TYPE)
        if value == JSON:
            return JSON
        if value is None:
            value = self.header(CONTENT_TYPE)
        return value.partition(";")[0].strip().lower() if value else JSON

    def decode(self, tp: type[T]) -> T:
        """The body as `tp` (msgspec Struct, pydantic model, dataclass, protobuf); `BadRequest`
        when it does not decode."""
        decoded: T = type_codec(tp).decode(self.body, self.content_type)
        return decoded

    async def ack(self) -> None:
        """Done with it: the broker forgets it (a second settle is ignored)."""
        if not self.settled:
            self.settled = "ack"
            await self._settle(self, True, False, 0.0)

    async def nack(self, *, requeue: bool = True, delay: float | None = None) -> None:
        """Not done: redeliver it after `delay` seconds (None: the backoff for this attempt),
        or with `requeue=False` send it to the dead-letter place where the backend has one."""
        if not self.settled:
            self.settled = "nack"
            wait = backoff(self.attempt) if delay is None else max(0.0, delay)
            await self._settle(self, False, requeue, wait)

    def __repr__(self) -> str:
        return f"Event(topic={self.topic!r}, id={self.id!r}, attempt={self.attempt}, {len(self.body)} bytes)"


class Subscription:
    """One subscriber: its topic, queue group, ack mode, and the handlers it has running.

    A backend hands each delivered event to `dispatch`, which waits while `max_in_flight`
    handlers run (a pull backend fetches only as many as `free` says), then runs the handler
    in a task of its own.
    """

    def __init__(
        self,
        broker: Broker,
        topic: str,
        handler: EventHandler,
        *,
        queue: str | None,
        ack: AckMode,
        max_in_flight: int,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.handler = handler
        self.queue = queue
        self.ack = ack
        self.max_in_flight = max_in_flight
        #: dispatched events no worker has taken yet (at most `max_in_flight` with those running)
        self._queue: collections.deque[Event] = collections.deque()
        #: worker tasks, each with the event it runs (None: idle); at most `max_in_flight`
        self._workers: dict[asyncio.Task[None], Event | None] = {}
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        #: events dispatched and not finished (queued or running)
        self._busy = 0
        #: dispatchers waiting for a free slot, woken one per finished handler
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._drained: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.active = True
        #: a backend's own state (its consumer, channel, ...)
        self.state: Any = None

    @property
    def free(self) -> int:
        """How many more events may be dispatched without waiting."""
        return self.max_in_flight - self._busy

    @property
    def running(self) -> list[Event]:
        """The events whose handlers are running now."""
        return [event for event in self._workers.values() if event is not None]

    # Handlers run on long-lived worker tasks (at most max_in_flight, started as needed): waking
    # an idle worker costs about half of creating a task per event, on the hot path of every
    # backend (measured: ~1 us of ~2 per event).

    def dispatch_nowait(self, event: Event) -> bool:
        """Hand the event to a worker at once if a slot is free (True); else the caller awaits
        `dispatch`. Push backends call this first: no coroutine per event while not full."""
        if self._busy >= self.max_in_flight or self._waiting:
            return False
        self._start(event)
        return True

    async def dispatch(self, event: Event) -> None:
        """Hand the event to a worker, waiting while `max_in_flight` handlers are busy."""
        while self._busy >= self.max_in_flight:
            await self._slot()
        self._start(event)

    def _start(self, event: Event) -> None:
        self._busy += 1
        self._queue.append(event)
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if len(self._workers) < self._busy:
            task = (self._loop or self._bind_loop()).create_task(self._work())
            self._workers[task] = None

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        workers, queue = self._workers, self._queue
        loop = self._loop or self._bind_loop()
        try:
            while True:
                while queue:
                    event = queue.popleft()
                    workers[me] = event
                    try:
                        await self._run(event)
                    except Exception:  # _run settles and logs; this is a bug of ours: the
                        log.exception("event %s on %s", event.id, self.topic)  # worker goes on
                    finally:
                        workers[me] = None
                        self._finished()
                if not self.active:
                    return
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
        finally:
            workers.pop(me, None)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    async def _slot(self) -> None:
        waiter = (self._loop or self._bind_loop()).create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def _finished(self) -> None:
        self._busy -= 1
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if not self._busy and self._drained is not None:
            self._drained.set()

    async def _run(self, event: Event) -> None:
        try:
            await self.handler(event)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # nobody cancelled it: the handler let its own CancelledError out, a failure
                await self._failed(event, exc)
                return
            # stopped after the grace: left unsettled, an at-least-once broker redelivers it
            with contextlib.suppress(Exception):
                await event.nack(requeue=True, delay=0.0)
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from a handler too: the
            await self._failed(event, exc)  # subscriber goes on, as a call's boundary does
        else:
            if not event.settled:
                if event._settle is _no_settle:
                    event.settled = "ack"  # nothing to tell anyone: no coroutine to await
                elif self.ack == "manual":
                    log.warning(
                        "subscriber of %s left event %s unsettled in manual ack mode: nacked",
                        self.topic, event.id,
                    )  # fmt: skip
                    await self._settle_quietly(event, ack=False)
                else:
                    await self._settle_quietly(event, ack=True)

    async def _failed(self, event: Event, exc: BaseException) -> None:
        broker = self.broker
        poison = isinstance(exc, BadRequest)
        last = event.attempt >= broker.max_deliveries
        requeue = broker.redelivers and not poison and not last
        why = exc.detail if isinstance(exc, MicroError) else f"{type(exc).__name__}"
        if not isinstance(exc, MicroError):
            # a raw handler's own exception (a Service's subscribers come through the pipeline,
            # whose boundary already logged the traceback under a correlation id)
            log.error("subscriber of %s raised on event %s", self.topic, event.id, exc_info=exc)
        if requeue:
            log.warning(
                "event %s on %s failed on delivery %d (%s); redelivering",
                event.id, self.topic, event.attempt, why,
            )  # fmt: skip
        elif broker.redelivers:
            log.error(
                "event %s on %s %s (%s): dead-lettered",
                event.id, self.topic,
                "does not decode" if poison else f"failed {event.attempt} deliveries", why,
            )  # fmt: skip
        else:
            log.error(
                "event %s on %s failed (%s); %s delivers at most once: dropped",
                event.id, self.topic, why, broker.scheme,
            )  # fmt: skip
        if not event.settled:
            with contextlib.suppress(Exception):
                await event.nack(requeue=requeue)

    async def _settle_quietly(self, event: Event, *, ack: bool) -> None:
        try:
            await (event.ack() if ack else event.nack())
        except Exception as exc:  # the broker went away: it redelivers what was not acked
            log.warning("could not settle event %s on %s: %s", event.id, self.topic, exc)

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for dispatched events to be handled; True when none is left."""
        if self._busy:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        return not self._busy

    async def unsubscribe(self, *, grace: float = 10.0) -> None:
        """Stop taking events, let running handlers finish for `grace` seconds, cancel the rest
        (an at-least-once broker redelivers what they held)."""
        if not self.active:
            return
        self.active = False
        with contextlib.suppress(Exception):
            await self.broker._unsubscribe(self)
        self._release_idle()
        if not await self.drain(grace):
            running = self.running
            log.warning(
                "%d handler(s) of %s still running after the grace of %gs are cancelled: events %s "
                "(%s)",
                len(running), self.topic, grace, ", ".join(e.id for e in running),
                "the broker redelivers them" if self.broker.redelivers else "they are lost: at most once",
            )  # fmt: skip
            for task in list(self._workers):
                task.cancel()
            # bounded too: a handler that swallows its cancellation must not hold the stop
            if not await self.drain(CANCEL_WAIT):
                log.error(
                    "%d handler(s) of %s ignored their cancellation; leaving them behind",
                    len(self.running), self.topic,
                )  # fmt: skip
        while self._queue:  # taken but never started (their worker was cancelled): handed back
            event = self._queue.popleft()
            self._finished()
            with contextlib.suppress(Exception):
                await event.nack(requeue=True, delay=0.0)
        self._release_idle()
        self.broker.subscriptions.discard(self)
        with contextlib.suppress(Exception):
            await self.broker._after_unsubscribe(self)

    def _release_idle(self) -> None:
        """Idle workers see `active` is False and end."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r}, queue={self.queue!r}, ack={self.ack!r})"


class Broker(abc.ABC):
    """Publishes events and runs subscriptions. Use as `async with broker:` or connect()/aclose()."""

    scheme: ClassVar[str] = ""
    #: "at-most-once" or "at-least-once": what a subscriber can count on
    guarantee: ClassVar[Literal["at-most-once", "at-least-once"]] = "at-most-once"
    #: whether a nacked event comes back (False: ack and nack do nothing)
    redelivers: ClassVar[bool] = False
    #: a PRODUCER span per publish, when this process traces (decided at connect)
    _producer: ProducerTracing | None = None

    def __init__(self, *, max_deliveries: int = DEFAULT_MAX_DELIVERIES, name: str = "") -> None:
        if max_deliveries < 1:
            raise ConfigurationError(f"max_deliveries must be at least 1, not {max_deliveries}")
        self.max_deliveries = max_deliveries
        #: the service that publishes through this broker (`Micro-From-Service`), if any
        self.name = name
        self.subscriptions: set[Subscription] = set()
        self.connected = False
        self.closed = False
        self._connect_lock: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> Broker:
        raise ConfigurationError(f"{cls.__name__} cannot be built from a URL")

    def bind(self, client: Client) -> None:  # noqa: B027 - optional hook
        """Called with the client that publishes through this broker (and, for a service, the
        client its node uses): `direct://` finds subscribers and calls them through it."""

    def service_handler(self, subscriber: Subscriber, pipeline: Pipeline) -> EventHandler:
        """How a Service's `subscriber` takes this broker's events: each one through the
        service's pipeline (`direct://` overrides it: its events already came through as calls)."""
        deliver, transport = pipeline.deliver, self.scheme

        async def handle(event: Event) -> None:
            await deliver(subscriber, event, transport=transport)

        return handle

    # -- what a backend writes ---------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Reach the engine; raise `BrokerError` naming the URL (without credentials)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release the connection (subscriptions have been unsubscribed already)."""

    @abc.abstractmethod
    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        """Hand one message to the engine; return once it is accepted (confirmed, where the
        engine confirms), or raise `BrokerError`."""

    @abc.abstractmethod
    async def _subscribe(self, sub: Subscription) -> None:
        """Start delivering `sub.topic` (to one member of `sub.queue`, or to every broadcast
        subscriber) into `sub.dispatch`, bounded by `sub.max_in_flight`."""

    async def _unsubscribe(self, sub: Subscription) -> None:  # noqa: B027 - optional hook
        """Stop delivering new events to `sub` (running handlers finish after this)."""

    async def _after_unsubscribe(self, sub: Subscription) -> None:  # noqa: B027 - optional hook
        """Release what `sub` holds once its handlers are done (its consumer, its channel)."""

    # -- the API ----------------------------------------------------------------------------

    async def connect(self) -> None:
        if self.connected:
            return
        if self.closed:
            raise BrokerError(
                f"{self!r} is closed; build a new broker to connect again", id="microweave.broker"
            )
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if not self.connected:
                await self._connect()
                self.connected = True
                from ..middleware.otel_setup import producer_tracing

                self._producer = producer_tracing(self.name)

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> str:
        """Publish `message` (bytes as they are; a msgspec Struct, pydantic model, dataclass or
        protobuf message encoded) on `topic`; returns its `Micro-Id`. On at-least-once backends
        it returns once the engine confirmed the message; otherwise it raises `BrokerError`."""
        _check_topic(topic)
        if headers:
            out = _with_our_headers(dict(headers), topic, content_type)
            message_id = header(out, MESSAGE_ID) or ""
        else:  # the common case: no lookups in a dict we build ourselves
            message_id = new_message_id()
            out = {CONTENT_TYPE: content_type or JSON, MESSAGE_ID: message_id, TOPIC: topic}
        if isinstance(message, bytes | bytearray | memoryview):
            body = bytes(message)
        else:
            body = type_codec(type(message)).encode(message, out[CONTENT_TYPE])
        if not self.connected:
            await self.connect()
        if self._producer is None:
            await self._publish(topic, body, out)
        else:
            send = lambda: self._publish(topic, body, out)  # noqa: E731 - inside the span
            await self._producer.publish(self.scheme, topic, message_id, out, send)
        return message_id

    async def subscribe(
        self,
        topic: str,
        handler: EventHandler,
        *,
        queue: str | None = None,
        ack: AckMode = "auto",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> Subscription:
        """Run `handler(event)` for each event on `topic`: every subscriber without a `queue`
        gets each event; of the subscribers sharing a `queue`, one does."""
        _check_topic(topic)
        if ack not in ("auto", "manual"):
            raise ConfigurationError(f"ack must be 'auto' or 'manual', not {ack!r}")
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:
            raise ConfigurationError(
                f"max_in_flight must be between 1 and {MAX_IN_FLIGHT_LIMIT}, not {max_in_flight}"
            )
        if queue is not None and not _valid_name(queue):
            raise ConfigurationError(f"queue {queue!r} must be non-empty, without spaces, '*' or '>'")
        if not self.connected:
            await self.connect()
        sub = Subscription(self, topic, handler, queue=queue, ack=ack, max_in_flight=max_in_flight)
        await self._subscribe(sub)
        self.subscriptions.add(sub)
        return sub

    async def aclose(self, *, grace: float = 10.0) -> None:
        """Unsubscribe everything (handlers get `grace` seconds), then disconnect; a closed
        broker refuses to publish or subscribe (it would reconnect behind its owner's back)."""
        self.closed = True
        await asyncio.gather(*(s.unsubscribe(grace=grace) for s in list(self.subscriptions)))
        if self.connected:
            self.connected = False
            await self._close()

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 255 and not any(c in name for c in " \t\r\n*>")


_valid_topics: set[str] = set()  # checked once each (bounded: publishers may invent topics)


def _check_topic(topic: str) -> None:
    if topic in _valid_topics:
        return
    if not isinstance(topic, str) or not _valid_name(topic):
        raise ConfigurationError(
            f"topic {topic!r} must be a non-empty name of at most 255 characters, without spaces, '*' or '>'"
        )
    if len(_valid_topics) < 4096:
        _valid_topics.add(topic)


def _with_our_headers(out: dict[str, str], topic: str, content_type: str | None) -> dict[str, str]:
    """The caller's headers plus ours where missing. `Content-Type` is kept under that exact
    key, whatever case the caller wrote it in: go-micro's subscribers read no other spelling."""
    given = header(out, CONTENT_TYPE)
    if given is None or CONTENT_TYPE not in out:
        for key in [k for k in out if k.lower() == "content-type"]:
            del out[key]
        out[CONTENT_TYPE] = given or content_type or JSON
    if header(out, MESSAGE_ID) is None:
        out[MESSAGE_ID] = new_message_id()
    if header(out, TOPIC) is None:
        out[TOPIC] = topic
    return out


def broker_error(url: str, action: str, exc: BaseException) -> BrokerError:
    """`BrokerError` for a failed `action`, naming the URL (credentials already removed)."""
    why = exc.detail if isinstance(exc, MicroError) else (str(exc) or type(exc).__name__)
    return BrokerError(f"broker {url}: {action} failed: {why}", id="microweave.broker")
