"""The unread events of one watcher, bounded: past the bound, one RESYNC replaces the backlog.

Every backend's watcher needs the same thing: a consumer that falls behind must not make the
registry hold its backlog forever. Two bounds, because a count alone is not enough: events
read from the network may be large (an etcd record or a NATS message up to 1 MiB, an mDNS TXT
inflating to 256 KiB), and 10,000 of those unread would be gigabytes. So a watcher holds at
most `limit` unread events AND at most `max_bytes` of what they weigh, where the caller says
what an event weighs (the length of the record it decoded; 0 for what costs nothing, such as a
DELETE that names a node). Past either bound the backlog is dropped and the consumer gets one
RESYNC: the registry holds the changes, so re-reading it loses nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque

from . import Event, resync

__all__ = ["MAX_BACKLOG", "EventBuffer"]

#: the most bytes of records one watcher holds unread, by default
MAX_BACKLOG = 64 << 20


class EventBuffer:
    """At most `limit` unread events, of at most `max_bytes` together, for a watcher of
    `service` (None: every service)."""

    def __init__(self, service: str | None, limit: int, *, max_bytes: int = MAX_BACKLOG) -> None:
        self.service = service
        self.limit = limit
        self.max_bytes = max_bytes
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._sizes: deque[int] = deque()  # what each queued event weighs, in queue order
        #: bytes of the unread events
        self.backlog = 0
        self.closed = False

    def __len__(self) -> int:
        """Unread events."""
        return self._queue.qsize()

    def offer(self, event: Event, size: int = 0) -> None:
        """Queue `event`, which weighs `size` bytes; RESYNC instead when a bound is reached."""
        if self.closed:
            return
        if self._queue.qsize() >= self.limit or self.backlog + size > self.max_bytes:
            # the consumer fell behind: drop its backlog and tell it to re-read; the registry
            # holds the change, so the re-read sees it
            self._drop()
            event, size = resync(self.service), 0
        self._queue.put_nowait(event)
        self._sizes.append(size)
        self.backlog += size

    async def next(self) -> Event:
        """The next event; StopAsyncIteration once closed (a waiting consumer is woken)."""
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        if self._sizes:
            self.backlog -= self._sizes.popleft()
        return event

    def close(self) -> None:
        """Drop what is unread and end iteration."""
        if self.closed:
            return
        self.closed = True
        self._drop()
        self._queue.put_nowait(None)

    def _drop(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._sizes.clear()
        self.backlog = 0
