"""A watch-backed cache in front of a registry, so a call does not read the registry each time.

Entries are filled on first lookup, kept current by one watcher over the whole registry (which
is subscribed before that first lookup reads, so no change falls in between), and refetched
after `ttl` in case an event was missed. When the watcher reports RESYNC, or fails and is
replaced, entries are marked stale and refetched on next use. If the registry is down, a stale entry is
served rather than failing calls to nodes that are very likely still up (go-micro does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from ..errors import MicroError, RegistryError
from . import Action, Event, Registry, Service, Watcher

__all__ = ["RegistryCache"]

log = logging.getLogger("microweave.registry")


class _Entry:
    __slots__ = ("fetched", "services")

    def __init__(self, services: list[Service], fetched: float) -> None:
        self.services = services
        self.fetched = fetched


class RegistryCache:
    def __init__(self, registry: Registry, *, ttl: float = 60.0) -> None:
        self.registry = registry
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[list[Service]]] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._watcher: Watcher | None = None

    def fresh(self, name: str) -> list[Service] | None:
        """The cached nodes when they are fresh, without a coroutine (the per-call fast path)."""
        entry = self._entries.get(name)
        if entry is not None and time.monotonic() - entry.fetched < self.ttl:
            return entry.services
        return None

    async def get_service(self, name: str) -> list[Service]:
        entry = self._entries.get(name)
        if entry is not None and time.monotonic() - entry.fetched < self.ttl:
            return entry.services
        pending = self._inflight.get(name)
        if pending is not None:  # one registry read per service at a time
            return await asyncio.shield(pending)
        future: asyncio.Future[list[Service]] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            services = await self._fetch(name, entry)
            future.set_result(services)
            return services
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[name]

    async def _fetch(self, name: str, stale: _Entry | None) -> list[Service]:
        await self._ensure_watching()
        try:
            services = await self.registry.get_service(name)
        except Exception as exc:
            if stale is not None:
                log.warning("registry unreachable, serving cached nodes of %s: %s", name, exc)
                return stale.services
            if isinstance(exc, MicroError):
                raise
            raise RegistryError(f"cannot look up {name} in {self.registry!r}: {exc}") from None
        if services:
            self._entries[name] = _Entry(services, time.monotonic())
        else:
            self._entries.pop(name, None)
        return services

    def invalidate(self, name: str) -> None:
        self._entries.pop(name, None)

    def _mark_stale(self, name: str | None = None) -> None:
        """Refetch on next use; until then (and if the registry fails) the entry still serves."""
        for key, entry in self._entries.items():
            if name is None or key == name:
                entry.fetched = -math.inf

    async def _ensure_watching(self) -> None:
        """Be subscribed before the lookup that follows: a change landing between that lookup
        and a later subscription would stay unseen until the entry's TTL."""
        if self._watch_task is None or self._watch_task.done():
            loop = asyncio.get_running_loop()
            self._subscribed = loop.create_future()
            self._watch_task = loop.create_task(self._watch(self._subscribed))
        if self._subscribed is not None and not self._subscribed.done():
            await asyncio.shield(self._subscribed)

    async def _watch(self, subscribed: asyncio.Future[None]) -> None:
        backoff = 0.1
        first = True
        try:
            while True:
                try:
                    watcher = self._watcher = await self.registry.watch()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("registry watch failed, retrying: %s", exc)
                else:
                    if not first:  # changes while we were not subscribed are unknown
                        self._mark_stale()
                    if not subscribed.done():
                        subscribed.set_result(None)
                    try:
                        async with watcher:
                            backoff = 0.1
                            async for event in watcher:
                                self._apply(event)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.debug("registry watch failed, retrying: %s", exc)
                    self._mark_stale()  # we may have missed events
                    self._watcher = None
                if not subscribed.done():  # lookups go ahead unwatched; their TTL still applies
                    subscribed.set_result(None)
                first = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            if not subscribed.done():
                subscribed.set_result(None)

    def _apply(self, event: Event) -> None:
        if event.action is Action.RESYNC:  # events were lost: refetch what the watcher covers
            self._mark_stale(event.service.name or None)
            return
        entry = self._entries.get(event.service.name)
        if entry is None:
            return  # nobody asked for this service yet
        changed = {n.id for n in event.service.nodes}
        services = []
        for service in entry.services:
            nodes = [n for n in service.nodes if n.id not in changed]
            if event.action is not Action.DELETE and service.version == event.service.version:
                nodes.extend(event.service.nodes)
            if nodes:
                services.append(service.with_nodes(nodes))
        if event.action is not Action.DELETE and not any(
            s.version == event.service.version for s in entry.services
        ):
            services.append(event.service)
        if services:
            entry.services = services
        else:
            del self._entries[event.service.name]

    async def aclose(self) -> None:
        task, self._watch_task = self._watch_task, None
        watcher, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if watcher is not None:  # the task may have been cancelled before it ever ran
            await watcher.aclose()
