"""The unread events of one watcher, bounded: past the bound, one RESYNC replaces the backlog.

Every backend's watcher needs the same thing: a consumer that falls behind must not make the
registry hold its backlog forever (memory, etcd, NATS and mDNS watchers each carry a copy of
this logic; Consul's uses this class, and the others can switch to it).
"""

from __future__ import annotations

import asyncio

from . import Event, resync

__all__ = ["EventBuffer"]


class EventBuffer:
    """At most `limit` unread events for a watcher of `service` (None: every service)."""

    def __init__(self, service: str | None, limit: int) -> None:
        self.service = service
        self.limit = limit
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.closed = False

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self.limit:
            # the consumer fell behind: drop its backlog and tell it to re-read; the registry
            # holds the change, so the re-read sees it
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(resync(self.service))
            return
        self._queue.put_nowait(event)

    async def next(self) -> Event:
        """The next event; StopAsyncIteration once closed (a waiting consumer is woken)."""
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Drop what is unread and end iteration."""
        if self.closed:
            return
        self.closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
