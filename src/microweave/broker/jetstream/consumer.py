"""One subscription's JetStream pull consumer: ask for what the handlers can take, settle.

We send the pull requests ourselves (nats-py's `fetch` waits for a whole batch, or its
timeout, before returning any of it): a request for at most `sub.free - outstanding` messages,
expiring after `PULL_EXPIRES` seconds, whenever at least half the handler slots are free (or
none is asked for). Messages arrive on an inbox of our own and go straight to
`sub.dispatch`. The server ends a request with a status (408 once it expired) or by filling
it; a request that ends without a word (a lost connection, a consumer that is gone) is given
up after its expiry, and the consumer is checked, and re-created if the server lost it.

While a handler runs, its message is kept alive with in-progress acks every `ack_wait / 3`
seconds, so a long handler does not get its message redelivered; a process that dies stops
them, and after `ack_wait` the server redelivers what it held to another member of the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from ...errors import BrokerError
from ...registry.outage import Backoff, _describe
from .. import DEAD_LETTER_REASON, DEAD_LETTER_SUFFIX, Event, Subscription, backoff, dead_letter_topic
from .._nats_link import unwrap
from ..envelope import encode

if TYPE_CHECKING:
    from . import JetStreamBroker

__all__ = ["Puller"]

log = logging.getLogger("microweave.broker")

#: seconds a pull request waits on the server for messages before it expires
PULL_EXPIRES = 5.0
#: seconds past its expiry after which a request the server never ended is taken as lost
LOST_AFTER = 1.5
#: seconds between two looks at the handler slots when nothing woke the puller
TICK = 0.5
#: seconds an ephemeral (broadcast) consumer outlives its last pull request on the server
EPHEMERAL_IDLE = 300.0
_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"


class Puller:
    """The consumer behind one Subscription (`durable`: a queue group's, shared by its members;
    else an ephemeral one of this subscriber's own). It delivers only new messages, except on a
    dead-letter topic: there it starts from the oldest dead letter the stream still holds."""

    def __init__(
        self, broker: JetStreamBroker, sub: Subscription, *, stream: str, name: str, durable: bool
    ) -> None:
        self.broker = broker
        self.sub = sub
        self.stream = stream
        self.name = name
        self.durable = durable
        #: delivered and not settled yet: kept alive with in-progress acks, settled by `_settle`
        self.held: dict[Event, Msg] = {}
        #: pull requests the server has not ended: [expires at, messages still to come]
        self.requests: deque[list[float]] = deque()
        self.refill = max(1, sub.max_in_flight // 2)
        self.wake = asyncio.Event()
        self.verify = False
        #: the last stream sequence this consumer delivered (to us or, as created, to anyone)
        self.position = 0
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self._inbox = ""
        self._nsub: NatsSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pulling: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        return int(sum(r[1] for r in self.requests))

    def config(self, start: int = 0) -> ConsumerConfig:
        """Only what is published from now on, or from stream sequence `start` (a consumer
        created again resumes where the one that was lost stopped). A dead-letter topic's
        consumer starts from its oldest message: dead letters are written while nobody may be
        listening, to be read later."""
        broker = self.broker
        if start:
            policy = DeliverPolicy.BY_START_SEQUENCE
        elif self.sub.topic.endswith(DEAD_LETTER_SUFFIX):
            policy = DeliverPolicy.ALL
        else:
            policy = DeliverPolicy.NEW
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name if self.durable else None,
            filter_subject=self.sub.topic,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=policy,
            opt_start_seq=start or None,
            ack_wait=broker.ack_wait,
            # above ours, so that our max_deliveries decides (dead-letter), not the server
            max_deliver=2 * broker.max_deliveries + 1,
            inactive_threshold=None if self.durable else EPHEMERAL_IDLE,
        )

    async def start(self) -> None:
        """Listen on our inbox and start asking (the consumer exists: `create()`)."""
        nc = self.broker.link.client()
        self._inbox = nc.new_inbox()
        self._nsub = await nc.subscribe(
            self._inbox,
            cb=self._on_message,
            # we ask for no more than max_in_flight at once: this bound is only ever reached
            # by deliveries for requests we gave up on
            pending_msgs_limit=4 * self.sub.max_in_flight + 64,
            pending_bytes_limit=64 * 1024 * 1024,
        )
        loop = asyncio.get_running_loop()
        self._pulling = loop.create_task(self._pull())
        self._tasks = [self._pulling, loop.create_task(self._keep_alive())]
        self.broker.link.on_reconnect.append(self._reconnected)

    async def create(self, start: int = 0) -> None:
        """Create the consumer on the server (a group's existing one is used as it is)."""
        js = self.broker.js()
        try:
            info = await js.add_consumer(self.stream, self.config(start))
        except APIError as exc:
            if not self.durable:
                raise
            try:  # the group's consumer exists with other settings (an older ack_wait): use it
                info = await js.consumer_info(self.stream, self.name)
            except NotFoundError:
                raise exc from None
            log.warning(
                "JetStream consumer %s on %s exists with other settings (%s); using it as it is",
                self.name, self.stream, exc.description,
            )  # fmt: skip
        if info.delivered is not None:
            self.position = max(self.position, info.delivered.stream_seq)

    # -- receiving ---------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        if not msg.reply:  # a status from the server about our requests
            self._status(msg)
            return
        sequence = msg.metadata.sequence.stream
        if sequence > self.position:
            self.position = sequence
        requests = self.requests
        if requests:
            first = requests[0]
            first[1] -= 1
            if first[1] <= 0:
                requests.popleft()
        headers, body = unwrap(msg)
        event = Event(
            msg.subject,
            body,
            headers,
            attempt=msg.metadata.num_delivered,
            queue=self.sub.queue,
            settle=self._settle,
        )
        if not self.sub.active:  # unsubscribing: hand it back at once
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        self.held[event] = msg
        if event.attempt > self.broker.max_deliveries:
            # delivered that often without ever being settled (its consumers died on it):
            # dead-lettered without running it again, as on RabbitMQ and Redis
            log.error(
                "event %s of %s was delivered %d times and never settled: dead-lettered",
                event.id, event.topic, event.attempt,
            )  # fmt: skip
            self.held.pop(event, None)
            await self._dead_letter(event, msg)
            return
        try:
            await self.sub.dispatch(event)
        except asyncio.CancelledError:
            if self.held.pop(event, None) is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise

    def _status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(_STATUS, "")
        if status == "100":  # idle heartbeat or flow control
            return
        if status == "409" and "deleted" in headers.get("Description", "").lower():
            self.verify = True
        if self.requests:  # 404/408/409: the oldest request is over
            self.requests.popleft()
        self.wake.set()

    async def _settle(self, event: Event, ack: bool, requeue: bool, delay: float) -> None:
        msg = self.held.pop(event, None)
        if msg is None:
            return
        # after the handler's task is done (its slot free), look again for messages to ask for
        asyncio.get_running_loop().call_soon(self.wake.set)
        if ack:
            await msg.ack()
        elif requeue:
            await msg.nak(delay=delay)
        else:
            await self._dead_letter(event, msg)

    async def _dead_letter(self, event: Event, msg: Msg) -> None:
        """A copy on the dead-letter topic (same body and headers, plus why), then the original
        is terminated. Its Nats-Msg-Id is derived from the original's, so a second try after a
        crash is deduplicated, and differs from it, so it is not taken for the original."""
        broker = self.broker
        last = event.attempt >= broker.max_deliveries
        reason = f"failed {event.attempt} deliveries" if last else f"rejected on delivery {event.attempt}"
        headers = {**event.headers, DEAD_LETTER_REASON: reason}
        message_id = f"{event.id or self.stream}.dead-letter.{msg.metadata.sequence.stream}"
        try:
            await broker.send(dead_letter_topic(event.topic), encode(headers, event.body), message_id)
        except BrokerError as exc:
            log.error(
                "could not dead-letter event %s of %s (%s): it will be redelivered",
                event.id, event.topic, exc.detail,
            )  # fmt: skip
            await msg.nak(delay=backoff(event.attempt))
            return
        await msg.term()

    # -- asking for messages ------------------------------------------------------------------

    async def _pull(self) -> None:
        retry = Backoff(first=0.1, cap=2.0)
        sub, link = self.sub, self.broker.link
        while sub.active:
            self.wake.clear()
            try:
                if link.up:
                    if self.verify:
                        await self._check_consumer()
                    self._forget_lost()
                    outstanding = self.outstanding
                    want = sub.free - outstanding
                    if want > 0 and (outstanding == 0 or want >= self.refill):
                        await self._ask(want)
                retry.reset()
            except (OSError, TimeoutError, nats.errors.Error, BrokerError) as exc:
                pause = retry.next()
                log.debug(
                    "pulling %s from %s: %s; again in %.1f s", sub.topic, self.stream, _describe(exc), pause
                )
                await asyncio.sleep(pause)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await self.wake.wait()

    async def _ask(self, batch: int) -> None:
        request = {"batch": batch, "expires": int(PULL_EXPIRES * 1e9)}
        await self.broker.link.client().publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        self.requests.append([time.monotonic() + PULL_EXPIRES, batch])

    def _forget_lost(self) -> None:
        now = time.monotonic()
        while self.requests and self.requests[0][0] + LOST_AFTER < now:
            # the server said nothing about it: our connection dropped, or the consumer is gone
            self.requests.popleft()
            self.verify = True

    async def _check_consumer(self) -> None:
        js = self.broker.js()
        try:
            await js.consumer_info(self.stream, self.name)
        except NotFoundError:
            log.warning(
                "JetStream consumer %s of %s on %s was gone; creating it again",
                self.name, self.sub.topic, self.broker.url.public,
            )  # fmt: skip
            await self._create_again(js)
        self.verify = False

    async def _create_again(self, js: JetStreamContext) -> None:
        """After the last message we saw: nothing published meanwhile is skipped (what
        comes twice is at least once). From the first message, if the stream is new too."""
        self.broker.streams.forget(self.sub.topic)
        stream = await self.broker.stream_for(self.sub.topic)  # the stream may be gone too
        last = (await js.stream_info(stream)).state.last_seq
        if stream != self.stream or self.position > last:  # a stream made anew: all of it
            self.stream, self.position = stream, 0
            self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.name}"
        await self.create(start=self.position + 1)

    def _reconnected(self) -> None:
        # requests die with the connection; a restarted server may have lost the consumer
        self.requests.clear()
        self.verify = True
        self.wake.set()

    async def _keep_alive(self) -> None:
        """In-progress acks for the messages handlers still hold, every ack_wait / 3 seconds."""
        every = max(0.05, self.broker.ack_wait / 3)
        while True:
            await asyncio.sleep(every)
            if not self.held or not self.broker.link.up:
                continue
            for msg in list(self.held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    # -- stopping -----------------------------------------------------------------------------

    async def stop_pulling(self) -> None:
        """No more requests; messages not handed to a handler yet go back to the server."""
        if self._pulling is not None:
            self._pulling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pulling
        if self._nsub is not None:
            with contextlib.suppress(Exception):
                await self._nsub.unsubscribe()
        with contextlib.suppress(ValueError):
            self.broker.link.on_reconnect.remove(self._reconnected)

    async def close(self) -> None:
        """Once the handlers are done: stop the in-progress acks; an ephemeral consumer is
        deleted (a group's durable one stays for the other members and for the next start)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.durable and self.broker.link.up:
            with contextlib.suppress(Exception):
                await self.broker.js().delete_consumer(self.stream, self.name)
