"""A registry that breaks on demand, for tests of what sits above a registry (the cache, the
registration): the real backend underneath, with lookups, registration or the watch made to
fail while the test says so, and the calls that reach it counted."""

from __future__ import annotations

import asyncio

from microweave.registry import Event, Registry, Service, Watcher

__all__ = ["Breakable", "BreakableWatcher"]


class Breakable(Registry):
    """The real backend, with parts that fail on demand (lookups, registration, the watch: the
    registry or its watch unreachable), counting the calls that reach it."""

    def __init__(self, inner: Registry) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.broken: Exception | None = None  # get_service fails
        self.refused: dict[str, Exception] = {}  # get_service of these names fails
        self.register_broken: Exception | None = None
        self.watch_broken: Exception | None = None  # watch() fails (see break_watch)
        self.answer_delay = 0.0  # seconds between reading the backend and answering
        self.reads = self.registers = self.watches = 0
        self._watchers: set[BreakableWatcher] = set()

    def __repr__(self) -> str:
        return f"<Breakable {self.inner!r}>"

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        self.registers += 1
        if self.register_broken is not None:
            raise self.register_broken
        await self.inner.register(service, ttl=ttl)

    async def deregister(self, service: Service) -> None:
        await self.inner.deregister(service)

    async def get_service(self, name: str) -> list[Service]:
        self.reads += 1
        if self.broken is not None:
            raise self.broken
        if name in self.refused:
            raise self.refused[name]
        services = await self.inner.get_service(name)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)  # the answer is on its way; changes go on
        return services

    async def list_services(self) -> list[Service]:
        return await self.inner.list_services()

    async def watch(self, service: str | None = None) -> Watcher:
        self.watches += 1
        if self.watch_broken is not None:
            raise self.watch_broken
        watcher = BreakableWatcher(self, await self.inner.watch(service))
        self._watchers.add(watcher)
        return watcher

    async def break_watch(self, exc: Exception) -> None:
        """Live watchers fail with `exc`, and new ones cannot be made, until `watch_broken` is
        cleared; lookups keep working (the registry reachable, its watch not)."""
        self.watch_broken = exc
        for watcher in list(self._watchers):
            watcher.failure = exc
            await watcher.inner.aclose()


class BreakableWatcher(Watcher):
    def __init__(self, owner: Breakable, inner: Watcher) -> None:
        self.owner = owner
        self.inner = inner
        self.failure: Exception | None = None

    async def __anext__(self) -> Event:
        try:
            return await anext(self.inner)
        except StopAsyncIteration:
            if self.failure is not None:
                raise self.failure from None
            raise

    async def aclose(self) -> None:
        self.owner._watchers.discard(self)
        await self.inner.aclose()
