"""In-process registry: for tests and for several services in one process.

`memory://` is one registry shared by the whole process; `memory://NAME` a separate named one.
TTLs are honoured so it behaves like the real backends in the conformance suite.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from .._backends import BackendURL
from . import Action, Event, Registry, Service, Watcher, merge_nodes

__all__ = ["MemoryRegistry"]

_EXPIRY_CHECK = 0.25  # seconds a waiting watcher sleeps between expiry sweeps


class _Record:
    __slots__ = ("expires", "service")

    def __init__(self, service: Service, expires: float | None) -> None:
        self.service = service
        self.expires = expires


class _QueueWatcher(Watcher):
    def __init__(self, owner: MemoryRegistry, service: str | None) -> None:
        self._owner = owner
        self.service = service
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._closed = False

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
                # races with an arriving event, and the task watching never stops
                async with asyncio.timeout(_EXPIRY_CHECK):
                    event = await self.queue.get()
                break
            except TimeoutError:  # nobody touched the registry: expire nodes on time anyway
                self._owner._expire()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._owner._watchers.discard(self)
            self.queue.put_nowait(None)


class MemoryRegistry(Registry):
    scheme = "memory"
    _shared: ClassVar[dict[str, MemoryRegistry]] = {}

    def __init__(self) -> None:
        # service name -> node id -> record (one node each, like etcd keys)
        self._records: dict[str, dict[str, _Record]] = {}
        self._watchers: set[_QueueWatcher] = set()

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> MemoryRegistry:
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

    def watch(self, service: str | None = None) -> Watcher:
        watcher = _QueueWatcher(self, service)
        self._watchers.add(watcher)
        return watcher

    def _notify(self, event: Event) -> None:
        for watcher in list(self._watchers):
            if watcher.service in (None, event.service.name):
                watcher.queue.put_nowait(event)

    def _expire(self) -> None:
        now = time.monotonic()
        for name, nodes in list(self._records.items()):
            for node_id, record in list(nodes.items()):
                if record.expires is not None and record.expires <= now:
                    del nodes[node_id]
                    self._notify(Event(Action.DELETE, record.service))
            if not nodes:
                del self._records[name]
