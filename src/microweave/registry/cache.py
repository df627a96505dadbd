"""A watch-backed cache in front of a registry, so a call does not read the registry each time.

Entries are filled on first lookup and kept current by one watcher over the whole registry,
subscribed before that first lookup reads, so no change falls in between. What the cache
promises, and how:

- **One read per service at a time** (single-flight): concurrent lookups of a service that is
  not cached share one registry read, run as a task of its own so a caller that gives up
  (cancelled, timed out) does not fail the others.
- **Stale beats failing**: when the registry cannot be read, a cached entry keeps being served;
  calls to nodes that are very likely still up go on (go-micro does the same).
- **No busy loop while the registry is away**: after a failed read nothing reads the registry
  again before a backoff (`Outage`, exponential with jitter, capped at `retry_cap`) has passed;
  lookups meanwhile get the cached entry, or the last error when there is none. The outage is
  logged once when it starts and once when it ends, for lookups and for the watch alike.
- **A deleted node is not served for long**: while the watch is healthy an entry is trusted for
  `ttl`; after a RESYNC or a watch failure the affected entries are refetched at once in the
  background, and for as long as there is no working watch they are trusted for
  `resync_interval` only and refetched on a timer before that runs out, not on next use. So a
  node deleted while the watch was down leaves the cache within `resync_interval` of the
  deletion (or of the read that still saw it), even if the registry stays reachable and the
  watch keeps failing: keep `resync_interval` under the nodes' registration TTL.
- **No lookup waits on a timer**: entries are refreshed in the background before they expire,
  so the per-call fast path (`fresh`) keeps answering from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..errors import MicroError, RegistryError
from ..metrics import registry_stats
from . import Action, Event, Registry, Service, Watcher
from .outage import Outage

__all__ = ["RegistryCache", "unavailable"]

log = logging.getLogger("microweave.registry")

#: seconds a re-established watcher must live without failing to count as recovered
STABLE = 5.0
#: registry reads the background refresh runs at once (1,000 cached services do not mean 1,000)
REFRESH_CONCURRENCY = 8
#: events kept for one service while its read is in flight, replayed over the read's result
PENDING_EVENTS = 1_000


class _Entry:
    __slots__ = ("expires", "services")

    def __init__(self, services: list[Service], expires: float) -> None:
        self.services = services
        self.expires = expires  # time.monotonic() until which lookups need not ask the registry


class RegistryCache:
    def __init__(
        self,
        registry: Registry,
        *,
        ttl: float = 60.0,
        resync_interval: float = 5.0,
        retry_cap: float = 2.0,
    ) -> None:
        """`ttl`: how long an entry is trusted while the watch is healthy; `resync_interval`:
        while it is not; `retry_cap`: the longest wait between two reads of a registry that is
        away (which is also how late the cache may notice that it is back)."""
        self.registry = registry
        self.ttl = ttl
        self.resync_interval = min(resync_interval, ttl)
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[list[Service]]] = {}
        self._pending: dict[str, list[Event] | None] = {}  # events seen while reading (None: RESYNC)
        what = f"{registry!r} (lookups; cached nodes served meanwhile)"
        self._lookups = Outage(what, logger=log, cap=retry_cap)
        self._retry_at = 0.0  # no read before this time.monotonic(): the registry is away
        self._last_error: MicroError | None = None
        self._watch_outage = Outage(f"{registry!r} watch", logger=log)
        self._watching = False  # a watcher is subscribed: its events keep entries current
        self._watcher: Watcher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._due: set[str] = set()  # to refetch now (RESYNC, a watch lost or re-established)
        self._wake = asyncio.Event()
        self._closed = False
        self._stats = registry_stats(registry.scheme)  # lookups, cache hits, errors

    def __repr__(self) -> str:
        return f"<RegistryCache of {self.registry!r}>"

    # -- lookups -----------------------------------------------------------------------------

    def fresh(self, name: str) -> list[Service] | None:
        """The cached nodes when they need no read, without a coroutine (the per-call fast path).
        While the registry is away this includes stale entries: they serve until it is back."""
        entry = self._entries.get(name)
        if entry is not None and time.monotonic() < entry.expires:
            self._stats.hits += 1
            return entry.services
        return None

    async def get_service(self, name: str) -> list[Service]:
        entry = self._entries.get(name)
        now = time.monotonic()
        if entry is not None and now < entry.expires:
            self._stats.hits += 1
            return entry.services
        task = self._inflight.get(name)
        if task is None:
            if now < self._retry_at:  # the registry is away: no read before the backoff is over
                if entry is not None:
                    self._stats.hits += 1
                    return entry.services
                raise self._unreachable(name)
            task = self._start_fetch(name)
        return await asyncio.shield(task)  # one caller cancelled does not cancel the read

    def invalidate(self, name: str) -> None:
        self._entries.pop(name, None)

    def _unreachable(self, name: str) -> MicroError:
        last = self._last_error
        detail = f": {last.detail}" if last is not None else ""
        return RegistryError(
            f"cannot look up {name}: {self.registry!r} is unreachable{detail}; retrying with backoff"
        )

    def _start_fetch(self, name: str) -> asyncio.Task[list[Service]]:
        task = asyncio.get_running_loop().create_task(self._fetch(name))
        self._inflight[name] = task
        task.add_done_callback(lambda t: self._fetched(name, t))
        return task

    def _fetched(self, name: str, task: asyncio.Task[list[Service]]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up

    async def _fetch(self, name: str) -> list[Service]:
        await self._ensure_watching()
        self._pending[name] = []
        self._stats.lookups += 1
        try:
            services = await self.registry.get_service(name)
        except Exception as exc:
            self._stats.error("lookup")
            return self._failed(name, exc)
        finally:
            pending = self._pending.pop(name, [])
        self._lookups.recovered()
        self._retry_at = 0.0
        trust = self.ttl if self._watching else self.resync_interval
        entry = _Entry(services, time.monotonic() + trust)
        for event in pending or ():  # changes during the read: replayed in order, the last wins
            _apply_to(entry, event)
        if entry.services:
            self._entries[name] = entry
        else:
            self._entries.pop(name, None)
        if pending is None:  # the watcher lost events meanwhile: this read may predate them
            self._distrust(name)
        self._ensure_refreshing()
        return entry.services

    def _failed(self, name: str, exc: Exception) -> list[Service]:
        if isinstance(exc, MicroError):
            error = exc
        else:  # a driver's own error (OSError, grpc...) becomes ours, naming the registry
            error = RegistryError(f"cannot look up {name} in {self.registry!r}: {exc}")
        stale = self._entries.get(name)
        if stale is None and not unavailable(exc):
            raise error  # the registry answered (a bad name, say): not an outage of every lookup
        self._last_error = error
        self._retry_at = time.monotonic() + self._lookups.failed(exc)
        if stale is None:
            raise error
        # served as it is until the next attempt, and while that attempt is in flight
        stale.expires = self._retry_at + self.resync_interval / 2
        self._ensure_refreshing()
        return stale.services

    # -- keeping entries current -------------------------------------------------------------

    def _distrust(self, name: str | None = None) -> None:
        """Events were lost (RESYNC, watch failure) or may have been (re-subscribed): refetch
        now, and serve meanwhile no longer than `resync_interval`."""
        until = time.monotonic() + self.resync_interval
        for key, entry in self._entries.items():
            if name is None or key == name:
                entry.expires = min(entry.expires, until)
                self._due.add(key)
        for key in self._pending:
            if name is None or key == name:
                self._pending[key] = None  # that read may predate what was lost: read again
        self._wake.set()

    def _ensure_refreshing(self) -> None:
        if not self._closed and (self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        """Refetch entries due now and entries about to expire, so lookups never wait on a
        read; while the registry is away, once per backoff with at most a few reads."""
        limit = asyncio.Semaphore(REFRESH_CONCURRENCY)
        while self._entries or self._due:
            now = time.monotonic()
            margin = self.resync_interval / 2
            if now >= self._retry_at:
                due = self._due | {k for k, e in self._entries.items() if e.expires - now < margin}
                self._due.clear()
                await asyncio.gather(*(self._refetch(name, limit) for name in due))
                now = time.monotonic()
            wake = min((e.expires - margin for e in self._entries.values()), default=now + margin)
            wake = max(wake, self._retry_at, now + 0.02)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake - now):
                    await self._wake.wait()

    async def _refetch(self, name: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            if time.monotonic() < self._retry_at:  # an earlier read of this round failed
                self._due.add(name)
                return
            task = self._inflight.get(name) or self._start_fetch(name)
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

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
        loop = asyncio.get_running_loop()
        first = True
        try:
            while True:
                failure: BaseException
                try:
                    watcher = self._watcher = await self.registry.watch()
                except Exception as exc:
                    self._stats.error("watch")
                    failure = exc
                else:
                    self._watching = True
                    if not first:  # changes while we were not subscribed are unknown
                        self._distrust()
                    first = False
                    if not subscribed.done():
                        subscribed.set_result(None)
                    failure = RegistryError(f"the watch on {self.registry!r} ended")
                    stable = loop.call_later(STABLE, self._watch_outage.recovered)
                    try:
                        async with watcher:
                            async for event in watcher:
                                self._watch_outage.recovered()  # an event proves it works
                                self._apply(event)
                    except Exception as exc:
                        self._stats.error("watch")
                        failure = exc
                    finally:
                        stable.cancel()
                        self._watcher = None
                        self._watching = False
                    self._distrust()  # we may have missed events
                if not subscribed.done():  # lookups go ahead unwatched; their TTL still applies
                    subscribed.set_result(None)
                first = False
                await asyncio.sleep(self._watch_outage.failed(failure))
        finally:
            self._watching = False
            if not subscribed.done():
                subscribed.set_result(None)

    def _apply(self, event: Event) -> None:
        name = event.service.name
        if event.action is Action.RESYNC:  # events were lost: refetch what the watcher covers
            self._distrust(name or None)
            return
        pending = self._pending.get(name)
        if pending is not None:  # a read is in flight: its result may predate this change
            if len(pending) < PENDING_EVENTS:
                pending.append(event)
            else:
                self._pending[name] = None
        entry = self._entries.get(name)
        if entry is None:
            return  # nobody asked for this service yet
        _apply_to(entry, event)
        if not entry.services:
            del self._entries[name]

    async def aclose(self) -> None:
        self._closed = True
        tasks = [self._watch_task, self._refresh_task, *self._inflight.values()]
        self._watch_task = self._refresh_task = None
        watcher, self._watcher = self._watcher, None
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if watcher is not None:  # the task may have been cancelled before it ever ran
            await watcher.aclose()


def _apply_to(entry: _Entry, event: Event) -> None:
    """One CREATE, UPDATE or DELETE on an entry: nodes are replaced by id, per version."""
    changed = {n.id for n in event.service.nodes}
    services = []
    for service in entry.services:
        nodes = [n for n in service.nodes if n.id not in changed]
        if event.action is not Action.DELETE and service.version == event.service.version:
            nodes.extend(event.service.nodes)
        if nodes:
            services.append(service.with_nodes(nodes))
    version = event.service.version
    if event.action is not Action.DELETE and not any(s.version == version for s in entry.services):
        services.append(event.service)
    entry.services = services


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the registry could not be reached (a 503 `RegistryError`, or a
    driver's own error such as a refused connection or a timeout), which waiting may fix; not
    a mistake in what was asked (a `ConfigurationError`, bad credentials)."""
    if isinstance(exc, RegistryError):
        return exc.code == 503
    return not isinstance(exc, MicroError)
