"""In-process registry: for tests and for several services in one process.

`memory://` is one registry shared by the whole process; `memory://NAME` a separate named one.
TTLs are honoured so it behaves like the real backends in the conformance suite. Each watcher
holds at most `watch_buffer` unread events (`memory://NAME?watch_buffer=N`): a consumer that
falls further behind gets RESYNC instead of making the registry hold its backlog forever.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Any, ClassVar

from .._backends import BackendURL
from ..errors import ConfigurationError
from . import Action, Event, Registry, Service, Watcher, merge_nodes
from .events import EventBuffer

__all__ = ["MemoryRegistry"]

_EXPIRY_CHECK = 0.25  # seconds a waiting watcher sleeps between expiry sweeps
WATCH_BUFFER = 10_000  # unread events one watcher may hold before it is told to resync


class _Record:
    __slots__ = ("expires", "service")

    def __init__(self, service: Service, expires: float | None) -> None:
        self.service = service
        self.expires = expires


class _QueueWatcher(Watcher):
    def __init__(self, owner: MemoryRegistry, service: str | None, buffer: int) -> None:
        self._owner = owner
        self.service = service
        self.events = EventBuffer(service, buffer)

    def offer(self, event: Event) -> None:
        self.events.offer(event)

    async def __anext__(self) -> Event:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
                # races with an arriving event, and the task watching never stops
                async with asyncio.timeout(_EXPIRY_CHECK):
                    return await self.events.next()
            except TimeoutError:  # nobody touched the registry: expire nodes on time anyway
                self._owner._expire()

    async def aclose(self) -> None:
        self._owner._watchers.discard(self)
        self.events.close()


class MemoryRegistry(Registry):
    scheme = "memory"
    _shared: ClassVar[dict[str, MemoryRegistry]] = {}

    def __init__(self, *, watch_buffer: int = WATCH_BUFFER) -> None:
        if watch_buffer < 1:
            raise ConfigurationError(f"watch_buffer must be at least 1, not {watch_buffer}")
        # service name -> node id -> record (one node each, like etcd keys)
        self._records: dict[str, dict[str, _Record]] = {}
        self._watchers: set[_QueueWatcher] = set()
        # (expires, service, node id), soonest first; an entry whose record was replaced or
        # removed meanwhile is skipped when it comes due, so a lookup never scans every record
        self._expiries: list[tuple[float, str, str]] = []
        self.watch_buffer = watch_buffer

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> MemoryRegistry:
        if "watch_buffer" in url.query and "watch_buffer" not in kwargs:
            try:
                kwargs["watch_buffer"] = int(url.query["watch_buffer"])
            except ValueError:
                raise ConfigurationError(
                    f"watch_buffer={url.query['watch_buffer']!r} in the registry URL is not a whole number"
                ) from None
        name = ",".join(url.hosts) + url.path
        if name not in cls._shared:
            cls._shared[name] = cls(**kwargs)
        return cls._shared[name]

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        self._expire()
        expires = time.monotonic() + ttl if ttl else None
        nodes = self._records.setdefault(service.name, {})
        for node in service.nodes:
            previous = nodes.get(node.id)
            one = service.with_nodes([node])
            nodes[node.id] = _Record(one, expires)
            if expires is not None:
                heapq.heappush(self._expiries, (expires, service.name, node.id))
            if previous is None:
                self._notify(Event(Action.CREATE, one))
            elif previous.service != one:
                self._notify(Event(Action.UPDATE, one))

    async def deregister(self, service: Service) -> None:
        nodes = self._records.get(service.name, {})
        for node in service.nodes:
            record = nodes.pop(node.id, None)
            if record is not None:
                self._notify(Event(Action.DELETE, record.service))
        if not nodes:
            self._records.pop(service.name, None)

    async def get_service(self, name: str) -> list[Service]:
        self._expire()
        return merge_nodes([r.service for r in self._records.get(name, {}).values()])

    async def list_services(self) -> list[Service]:
        self._expire()
        out: list[Service] = []
        for records in self._records.values():
            out.extend(merge_nodes([r.service for r in records.values()]))
        return out

    async def watch(self, service: str | None = None) -> Watcher:
        self._expire()  # expiries due before the subscription are not its events
        watcher = _QueueWatcher(self, service, self.watch_buffer)
        self._watchers.add(watcher)  # subscribed: every later change reaches its queue
        return watcher

    def _notify(self, event: Event) -> None:
        for watcher in list(self._watchers):
            if watcher.service in (None, event.service.name):
                watcher.offer(event)

    def _expire(self) -> None:
        now = time.monotonic()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, name, node_id = heapq.heappop(expiries)
            nodes = self._records.get(name)
            record = nodes.get(node_id) if nodes else None
            if nodes is None or record is None or record.expires is None or record.expires > now:
                continue  # re-registered (a later entry is queued) or already removed
            del nodes[node_id]
            self._notify(Event(Action.DELETE, record.service))
            if not nodes:
                del self._records[name]
