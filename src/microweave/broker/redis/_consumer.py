"""One subscription's consumer in its group: reads, claims, redelivers, acknowledges.

Three tasks per subscription. The reader fetches new entries (XREADGROUP, at most as many as the
subscription has room for) and, every `claim_idle / 2`, claims entries other consumers left
pending longer than `claim_idle` (XAUTOCLAIM). The keeper redelivers nacked entries when their
delay is up (XCLAIM to itself, which counts a delivery) and, every `claim_idle / 3`, touches the
entries this consumer holds (XCLAIM JUSTID: idle time reset, no delivery counted) so a slow
handler or a long nack delay is never mistaken for a crashed consumer. The acker (_acker.py)
XACKs what handlers acknowledged.

`held` is every entry this consumer has taken and not yet settled (running, waiting for its
redelivery, or for its XACK); the reader fetches only while fewer than `max_in_flight` run or
wait for a redelivery, and at most `max_in_flight` more wait for their XACK, so memory and the
consumer's pending list stay bounded whatever the handlers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from redis import exceptions as redis_errors

from ..._tasks import cancel_all
from .. import DEAD_LETTER_REASON, DEAD_LETTER_SUFFIX, Event, Subscription, dead_letter_topic
from . import BROADCAST_GROUP
from ._acker import Acker
from ._entries import CHUNK, chunks, decode_entry, text
from ._groups import sweep

if TYPE_CHECKING:
    from . import Client, RedisBroker

__all__ = ["Consumer"]

log = logging.getLogger("microweave.broker.redis")

#: the longest a read blocks, in seconds (the reader also claims between reads)
MAX_BLOCK: Final = 1.0
_TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


@dataclass(slots=True)
class Held:
    attempt: int
    #: loop time its redelivery is due, while it waits for one after a nack
    due: float | None = None


class Consumer:
    def __init__(self, broker: RedisBroker, sub: Subscription, *, key: str, group: str, name: str) -> None:
        self.broker = broker
        self.sub = sub
        self.key = key
        self.group = group
        self.name = name
        self.broadcast = group.startswith(BROADCAST_GROUP)
        self.held: dict[bytes, Held] = {}
        self._due: list[tuple[float, bytes]] = []  # (due, id) heap; stale pairs are skipped
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        self._claim_every = max(0.05, broker.claim_idle / 2)
        self._touch_every = max(0.05, broker.claim_idle / 3)
        self._block_ms = max(1, int(min(MAX_BLOCK, self._claim_every) * 1000))
        self._claim_idle_ms = max(1, int(broker.claim_idle * 1000))
        self._cursor: bytes | str = "0-0"
        self._acker = Acker(broker, key=key, group=group, topic=sub.topic, done=self._release)
        # blocking reads get a connection of their own: they would hold a shared one for seconds
        self._reader: Client = broker.new_client(
            max_connections=1, read_timeout=broker.timeout + self._block_ms / 1000
        )
        self._reading: asyncio.Task[None] | None = None
        # redis-py (8.1) sometimes swallows a cancellation that lands as a reply arrives, so
        # the loops also stop on this flag
        self._stopping = False
        self._keeping_on = True
        self._keeping: asyncio.Task[None] | None = None

    @property
    def topic(self) -> str:
        return self.sub.topic

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.broker.call(f"subscribe to {self.topic}", self._create_group)
            with contextlib.suppress(Exception):  # housekeeping: never a reason not to subscribe
                await sweep(self.broker.client, self.key, self.group)
        except BaseException:
            await self._reader.aclose(close_connection_pool=True)
            raise
        loop = asyncio.get_running_loop()
        self._reading = loop.create_task(self._read_forever(), name=f"redis-read-{self.key}")
        self._keeping = loop.create_task(self._keep_forever(), name=f"redis-keep-{self.key}")
        self._acker.start()

    async def _create_group(self) -> None:
        """The group starts at the stream's end ("$"): a new group gets the events published
        from now on, as a new queue would on the other brokers. On a dead-letter topic it starts
        at the oldest entry ("0"): dead letters are written while nobody may be listening, to
        be read later."""
        start = "0" if self.topic.endswith(DEAD_LETTER_SUFFIX) else "$"
        try:
            await self.broker.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def stop_reading(self) -> None:
        """No new entries (unsubscribing); running handlers keep theirs, still touched."""
        self._stopping = True
        if self._reading is not None:
            await cancel_all([self._reading])
            self._reading = None

    async def release(self) -> None:
        """The handlers are done: a broadcast group goes; a queue group's member hands what it
        still holds to the others at once (idle as if `claim_idle` had passed), and leaves the
        group if it holds nothing."""
        await self.stop_reading()
        self._keeping_on = False
        if self._keeping is not None:
            await cancel_all([self._keeping])
            self._keeping = None
        await self._acker.close()  # the acks of the handlers that just finished go out first
        client = self.broker.client
        try:
            if self.broadcast:
                await client.xgroup_destroy(self.key, self.group)
                return
            pending = await client.xpending_range(
                self.key, self.group, min="-", max="+", count=CHUNK, consumername=self.name
            )
            ids = [p["message_id"] for p in pending]
            for chunk in chunks(ids):
                await client.xclaim(
                    self.key, self.group, self.name, 0, chunk, idle=self._claim_idle_ms, justid=True
                )
            if not ids:
                await client.xgroup_delconsumer(self.key, self.group, self.name)
        finally:
            self.held.clear()
            await self._reader.aclose(close_connection_pool=True)

    # -- reading -----------------------------------------------------------------------

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        next_claim = 0.0  # at once: what a crashed predecessor left is claimable already
        while not self._stopping:
            room = self._room_left()
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                if loop.time() >= next_claim:
                    next_claim = loop.time() + self._claim_every
                    room -= await self._claim_idle_entries(room)
                    if room <= 0:
                        continue
                reply = await self._reader.xreadgroup(
                    self.group, self.name, {self.key: ">"}, count=room, block=self._block_ms
                )
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    failures = await self._failed(failures, exc)
                    continue
                log.warning("group %s of %s is gone (server data lost?): created again", self.group, self.key)
                with contextlib.suppress(Exception):
                    await self._create_group()
                continue
            except Exception as exc:  # down, restarting, or a reply we did not expect: retry
                failures = await self._failed(failures, exc)
                continue
            if failures:
                log.warning("redis broker %s: reading %s again", self.broker.url, self.key)
                failures = 0
            if self._stopping:
                return  # what it just read is pending with us: release() hands it over
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self.held[entry_id] = Held(attempt=1)
                    await self._deliver(entry_id, fields, 1)

    async def _failed(self, failures: int, exc: BaseException) -> int:
        if failures == 0:  # said once per outage, not once per retry
            log.warning(
                "redis broker %s: reading %s failed (%s); retrying until the server is back",
                self.broker.url, self.key, self.broker.scrub(str(exc) or type(exc).__name__),
            )  # fmt: skip
        await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
        return failures + 1

    async def _claim_idle_entries(self, room: int) -> int:
        """Take over up to `room` entries another consumer (a crashed one) left pending for
        `claim_idle` seconds; XAUTOCLAIM counts a delivery for each."""
        reply = await self.broker.client.xautoclaim(
            self.key, self.group, self.name, self._claim_idle_ms, self._cursor, count=room
        )
        self._cursor = reply[0]  # the scan goes on from here next time ("0-0": from the start)
        fresh = [(i, f) for i, f in reply[1] if i is not None and i not in self.held]
        if not fresh:
            return 0
        counts = await self._delivery_counts([i for i, _ in fresh])
        log.info("claimed %d entries of %s left idle by another consumer", len(fresh), self.key)
        for entry_id, fields in fresh:
            attempt = counts.get(entry_id, 2)
            self.held[entry_id] = Held(attempt=attempt)
            await self._deliver(entry_id, fields, attempt)
        return len(fresh)

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        pipe = self.broker.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.key, self.group, min=entry_id, max=entry_id, count=1)
        counts: dict[bytes, int] = {}
        for pending in await pipe.execute():
            for p in pending:
                counts[p["message_id"]] = int(p["times_delivered"])
        return counts

    async def _deliver(self, entry_id: bytes, fields: dict[bytes, bytes] | None, attempt: int) -> None:
        headers, body = decode_entry(fields)
        if headers is None:
            await self._dead_letter_quietly(entry_id, {}, body, "malformed stream entry (no headers or body)")
            return
        settle = functools.partial(self._settle, entry_id)
        event = Event(self.topic, body, headers, attempt=attempt, queue=self.sub.queue, settle=settle)
        max_deliveries = self.broker.max_deliveries
        if attempt > max_deliveries:  # its consumers died holding it, again and again
            reason = f"delivered {attempt} times, never settled (max_deliveries={max_deliveries})"
            log.error("event %s on %s %s: dead-lettered", event.id, self.topic, reason)
            await self._dead_letter_quietly(entry_id, headers, body, reason)
            return
        await self.sub.dispatch(event)

    # -- settling ----------------------------------------------------------------------

    async def _settle(self, entry_id: bytes, event: Event, ack: bool, requeue: bool, delay: float) -> None:
        if not ack and requeue:
            held = self.held.get(entry_id)
            if held is not None:  # stays pending with us; the keeper claims it when due
                held.due = asyncio.get_running_loop().time() + delay
                heapq.heappush(self._due, (held.due, entry_id))
                self._wake.set()
            return
        if ack:  # like basic.ack on AMQP: sent, not waited for (the acker batches them)
            if entry_id in self.held:
                self._acker.add(entry_id)
                self._room.set()
            return
        n = event.attempt
        last = n >= self.broker.max_deliveries
        reason = f"failed {n} deliveries" if last else f"rejected on delivery {n}"
        try:
            await self._dead_letter(entry_id, event.headers, event.body, reason)
        finally:
            self._release(entry_id)

    def _room_left(self) -> int:
        """How many more entries to take: `max_in_flight` minus those in handlers or waiting for
        a redelivery. Entries acknowledged but not XACKed yet count as done, up to
        `max_in_flight` of them, so reading goes on while an XACK is on the wire and `held`
        stays under twice `max_in_flight`."""
        limit = self.sub.max_in_flight
        return limit - len(self.held) + min(self._acker.pending, limit)

    def _release(self, entry_id: bytes) -> None:
        if self.held.pop(entry_id, None) is not None:
            self._room.set()

    async def _dead_letter(self, entry_id: bytes, headers: dict[str, str], body: bytes, reason: str) -> None:
        """The event, same body and headers plus the reason, on the dead-letter topic's stream,
        and the original acknowledged: both or neither (MULTI/EXEC)."""
        broker = self.broker
        command = broker.xadd(dead_letter_topic(self.topic), {**headers, DEAD_LETTER_REASON: reason}, body)

        async def move() -> None:
            pipe = broker.client.pipeline(transaction=True)
            pipe.execute_command(*command)
            pipe.xack(self.key, self.group, entry_id)
            await pipe.execute()

        await broker.call(f"dead-letter an event of {self.topic}", move)

    async def _dead_letter_quietly(
        self, entry_id: bytes, headers: dict[str, str], body: bytes, reason: str
    ) -> None:
        try:
            await self._dead_letter(entry_id, headers, body, reason)
        except Exception as exc:  # left pending: claimed and tried again later
            log.warning("could not dead-letter entry %s of %s: %s", text(entry_id), self.key, exc)
        finally:
            self._release(entry_id)

    # -- keeping -----------------------------------------------------------------------

    async def _keep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_touch = loop.time() + self._touch_every
        while self._keeping_on:
            now = loop.time()
            try:
                if self.sub.active:
                    due = self._pop_due(now)
                    if due:
                        await self._redeliver(due)
                if now >= next_touch:
                    next_touch = now + self._touch_every
                    await self._touch()
            except Exception as exc:  # the reader reports outages; this one goes on
                log.debug("redis broker %s: keeping %s: %s", self.broker.url, self.key, exc)
            wake_at = min(next_touch, self._due[0][0]) if self._due else next_touch
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - loop.time()))

    def _pop_due(self, now: float) -> list[bytes]:
        due: list[bytes] = []
        while self._due and self._due[0][0] <= now and len(due) < CHUNK:
            when, entry_id = heapq.heappop(self._due)
            held = self.held.get(entry_id)
            if held is not None and held.due == when:
                due.append(entry_id)
        return due

    async def _redeliver(self, ids: list[bytes]) -> None:
        """Claim the due entries back from ourselves (a delivery counted) and dispatch them."""
        pipe = self.broker.client.pipeline(transaction=False)
        pipe.xclaim(self.key, self.group, self.name, 0, ids)
        for entry_id in ids:
            pipe.xpending_range(self.key, self.group, min=entry_id, max=entry_id, count=1)
        try:
            claimed, *pending = await pipe.execute()
        except _TRANSIENT:  # Redis is away: try again shortly (the reader says it is down)
            retry_at = asyncio.get_running_loop().time() + 1.0
            for entry_id in ids:
                held = self.held.get(entry_id)
                if held is not None:
                    held.due = retry_at
                    heapq.heappush(self._due, (retry_at, entry_id))
            return
        counts = {p["message_id"]: int(p["times_delivered"]) for ps in pending for p in ps}
        back = {entry_id: fields for entry_id, fields in claimed if entry_id is not None}
        for entry_id in ids:
            held = self.held.get(entry_id)
            if held is None:
                continue
            if entry_id not in back:  # settled by another consumer, or trimmed away
                self._release(entry_id)
                continue
            held.due = None
            held.attempt = counts.get(entry_id, held.attempt + 1)
            await self._deliver(entry_id, back[entry_id], held.attempt)

    async def _touch(self) -> None:
        """Reset the idle time of everything held, so no other consumer claims it."""
        ids = list(self.held)
        with contextlib.suppress(*_TRANSIENT):
            for chunk in chunks(ids):
                await self.broker.client.xclaim(self.key, self.group, self.name, 0, chunk, justid=True)
