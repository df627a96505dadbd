"""Watching Consul: blocking queries turned into CREATE/UPDATE/DELETE events.

Consul has no change feed over HTTP, only blocking queries: a read with `index=N&wait=T` that
answers when the data's index moves past N (or after T). A watcher keeps the last snapshot of
each service it covers (node id -> one-node record, live nodes only) and reports the
difference with each new snapshot, so it may coalesce changes between two reads, as the
`Watcher` contract allows for polling backends. A node whose TTL check goes critical leaves
the snapshot, so it is reported deleted although Consul keeps it for a minute or more.

- One service: one blocking query on `/v1/health/service/<name>`.
- Every service: two blocking queries whatever the number of services, on
  `/v1/catalog/services` (names and tags: registrations) and `/v1/health/state/any` (checks:
  TTLs expiring, nodes passing again). Each change names the services to re-read; a catalog
  change that names none (a node added or removed with the same tags as its siblings) re-reads
  them all. Re-reads run at most `max_queries` at a time, and changes that arrive meanwhile are
  folded into the next round, so a busy registry costs rounds, not a pile of requests.

The subscription is complete when `watch()` returns: the first snapshot and the indexes are
read before it does. If the agent becomes unreachable the loops retry with backoff (logged once
per change by the agent's `Outage`) and keep their snapshot, so nothing is reported while it is
away. The first read after a failure does not block (a restarted agent's index may be below
ours, and a blocking query would wait its full time before saying so). The agent may have come
back empty (a -dev agent, or one that lost its data) while every node is alive and about to
register again with its next heartbeat; so after an outage, or an index that went backwards,
nodes missing from the agent are kept, unreported, for `restart_grace` seconds, and reported
deleted only if they are still missing then. Callers keep calling them meanwhile, as they did
during the outage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec

from ..._tasks import cancel_all
from ...errors import MicroError
from .. import Action, Event, Service, Watcher
from ..events import EventBuffer
from ..outage import Backoff
from .agent import Agent, path
from .encoding import HealthCheck, decode_entries, decode_version

__all__ = ["CONSUL", "ConsulWatcher", "query", "read_service", "versions"]

#: the service a Consul server registers for itself: not an RPC service, left out of listings
CONSUL = "consul"

log = logging.getLogger("microweave.registry")
Snapshot = dict[str, Service]  # node id -> one-node record
T = TypeVar("T")
_checks = msgspec.json.Decoder(list[HealthCheck])
_catalog = msgspec.json.Decoder(dict[str, list[str] | None])


async def query(agent: Agent, api: str, what: str, index: int = 0, wait: float = 0) -> tuple[int, bytes]:
    """A read; with an index and a wait, a blocking query (no retries: the caller loops)."""
    params = {"stale": ""}  # any server may answer, as go-micro reads
    blocking = bool(index and wait)
    if blocking:
        params |= {"index": str(index), "wait": f"{round(wait * 1000)}ms"}
    reply = await agent.call(
        "GET", api, what=what, params=params, wait=wait if blocking else None, retries=0 if blocking else None
    )
    return reply.index, reply.body


async def read_service(agent: Agent, name: str, index: int = 0, wait: float = 0) -> tuple[int, Snapshot]:
    new_index, body = await query(agent, path("/v1/health/service", name), f"look up {name}", index, wait)
    return new_index, decode_entries(name, body)


def diff(name: str, old: Snapshot, new: Snapshot) -> list[Event]:
    """The events that turn `old` into `new` (both the live nodes of `name`)."""
    events = [Event(Action.DELETE, record) for node, record in old.items() if node not in new]
    for node, record in new.items():
        before = old.get(node)
        if before is None:
            events.append(Event(Action.CREATE, record))
        elif before != record:
            events.append(Event(Action.UPDATE, record))
    return events


class ConsulWatcher(Watcher):
    def __init__(
        self,
        agent: Agent,
        service: str | None,
        *,
        buffer: int,
        wait: float,
        max_queries: int,
        restart_grace: float,
        on_close: Callable[[ConsulWatcher], None],
    ) -> None:
        self.agent = agent
        self._grace = restart_grace
        self.service = service
        self._wait = wait
        self._queries = asyncio.Semaphore(max_queries)
        self._on_close = on_close
        self._events = EventBuffer(service, buffer)
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshots: dict[str, Snapshot] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._names: dict[str, frozenset[str]] = {}  # watch all: the catalog's names and tags
        self._checks: dict[tuple[str, str], HealthCheck] = {}  # watch all: every check
        # after an agent restart: nodes missing since then, kept (not reported) until _hold_until
        self._held: dict[str, set[str]] = {}
        self._hold_until = 0.0
        self._release: asyncio.TimerHandle | None = None
        self._refused = False  # the agent refuses our reads (logged once until it accepts)

    # -- the consumer's side ---------------------------------------------------------------

    def _offer(self, event: Event) -> None:
        self._events.offer(event)

    async def __anext__(self) -> Event:
        return await self._events.next()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        if self._release is not None:
            self._release.cancel()
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        self._events.close()

    # -- subscribing -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the first snapshot and indexes, then follow: subscribed when this returns."""
        try:
            if self.service is not None:
                index, self._snapshots[self.service] = await read_service(self.agent, self.service)
                read = functools.partial(read_service, self.agent, self.service, wait=self._wait)
                self._spawn(self._follow(read, index, self._service_changed))
                return
            catalog_index, self._names = await self._read_catalog(0)
            checks_index, self._checks = await self._read_checks(0)
            await self._refresh(set(self._names))
            self._spawn(self._follow(self._read_catalog, catalog_index, self._catalog_changed))
            self._spawn(self._follow(self._read_checks, checks_index, self._checks_changed))
            self._spawn(self._refresher())
        except BaseException:
            await self.aclose()
            raise

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    # -- following a blocking query -----------------------------------------------------------

    async def _follow(
        self,
        read: Callable[[int], Awaitable[tuple[int, T]]],
        index: int,
        changed: Callable[[T, bool], None],
    ) -> None:
        """Read with `index` until the agent answers, and hand over each answer (and whether
        the index moved: a blocking query also answers when its wait is over)."""
        backoff = Backoff(0.1, 5.0)
        blocking = True
        while True:
            try:
                new_index, data = await read(index if blocking else 0)
            except Exception as exc:  # an unreachable agent is logged by its Outage
                if isinstance(exc, MicroError) and exc.code != 503:
                    self._refusal(exc)
                # the next read answers at once: a restarted agent's index is below ours, and a
                # blocking query would wait its full time before telling us so
                blocking = False
                await asyncio.sleep(backoff.next())
                continue
            if self._refused:
                self._refused = False
                log.warning("%s: watch accepted again", self.agent.url)
            backoff.reset()
            # back after an outage, or the index went backwards: the agent may have restarted
            # and lost its nodes (a -dev agent, lost data), which are registering again
            if not blocking or new_index < index:
                self._restarted()
            blocking = True
            moved, index = new_index != index, max(new_index, 1)  # index 0 would not block
            changed(data, moved)

    def _refusal(self, exc: MicroError) -> None:
        """The agent answers but refuses (a token revoked mid-run): said once, retried."""
        if not self._refused:
            self._refused = True
            log.warning("watch refused, retrying with backoff: %s", exc.detail)

    def _restarted(self) -> None:
        """Nodes missing from now on may be re-registering: report them deleted only if they
        are still missing `restart_grace` seconds later."""
        if self._grace <= 0:
            return
        loop = asyncio.get_running_loop()
        self._hold_until = loop.time() + self._grace
        if self._release is not None:
            self._release.cancel()
        self._release = loop.call_at(self._hold_until, self._release_held)

    def _release_held(self) -> None:
        self._release = None
        for name, nodes in self._held.items():
            snapshot = self._snapshots.get(name, {})
            for node in nodes:
                record = snapshot.pop(node, None)
                if record is not None:
                    self._offer(Event(Action.DELETE, record))
            if not snapshot:
                self._snapshots.pop(name, None)
        self._held.clear()

    def _apply(self, name: str, snapshot: Snapshot, *, report: bool = True) -> None:
        old = self._snapshots.get(name, {})
        if report:
            if asyncio.get_running_loop().time() < self._hold_until:
                kept = {node: record for node, record in old.items() if node not in snapshot}
                snapshot = {**snapshot, **kept}
                self._held[name] = set(kept)
            else:
                self._held.pop(name, None)
            for event in diff(name, old, snapshot):
                self._offer(event)
        if snapshot:
            self._snapshots[name] = snapshot
        else:
            self._snapshots.pop(name, None)

    # -- every service ---------------------------------------------------------------------

    async def _read_catalog(self, index: int) -> tuple[int, dict[str, frozenset[str]]]:
        new_index, body = await query(self.agent, "/v1/catalog/services", "list services", index, self._wait)
        catalog = _catalog.decode(body)
        return new_index, {name: frozenset(tags or ()) for name, tags in catalog.items() if name != CONSUL}

    async def _read_checks(self, index: int) -> tuple[int, dict[tuple[str, str], HealthCheck]]:
        new_index, body = await query(self.agent, "/v1/health/state/any", "read checks", index, self._wait)
        return new_index, {(c.node, c.check_id): c for c in _checks.decode(body)}

    def _service_changed(self, snapshot: Snapshot, moved: bool) -> None:
        assert self.service is not None
        self._apply(self.service, snapshot)

    def _catalog_changed(self, names: dict[str, frozenset[str]], moved: bool) -> None:
        if not moved:
            return
        changed = {n for n in names.keys() | self._names.keys() if names.get(n) != self._names.get(n)}
        self._names = names
        # a node added or removed with the same tags as its siblings changes no tag set, and
        # the index alone does not say which service moved: read them all (rare: registrations)
        self._mark(changed or set(names) | set(self._snapshots))

    def _checks_changed(self, checks: dict[tuple[str, str], HealthCheck], moved: bool) -> None:
        changed: set[str] = set()
        for key in checks.keys() | self._checks.keys():
            before, after = self._checks.get(key), checks.get(key)
            if before is None or after is None or before.modify_index != after.modify_index:
                check = after or before
                assert check is not None
                if not check.service_name:  # a Consul node's own check: every service on it
                    changed |= set(self._snapshots)
                else:
                    changed.add(check.service_name)
        self._checks = checks
        self._mark(changed)

    def _mark(self, names: set[str]) -> None:
        if names:
            self._dirty |= names
            self._wake.set()

    async def _refresher(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            names, self._dirty = self._dirty, set()
            failed = await self._refresh(names)
            if failed:  # try those again after a pause; the others are current
                self._dirty |= failed
                await asyncio.sleep(backoff.next())
                self._wake.set()
            else:
                backoff.reset()

    async def _refresh(self, names: set[str]) -> set[str]:
        """Re-read `names`, at most `max_queries` at a time, and report what changed; the
        names that could not be read. At start (nothing followed yet) a failure raises."""
        starting = not self._tasks

        async def one(name: str) -> str | None:
            async with self._queries:
                try:
                    _, snapshot = await read_service(self.agent, name)
                except Exception:
                    if starting:
                        raise
                    return name
            self._apply(name, snapshot, report=not starting)  # the first snapshot: no events
            return None

        # every read finishes before this returns, even when one fails: no task outlives it
        results = await asyncio.gather(*(one(name) for name in sorted(names)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return {name for name in results if isinstance(name, str)}


def versions(name: str, tags: list[str] | None) -> list[Service]:
    """A `list_services` entry per version found in the service's tags (Consul merges the
    tags of all its instances)."""
    found = {decode_version([tag]) for tag in tags or () if tag.startswith(("v-", "v="))}
    found.discard(None)
    records = [Service(name=name, version=v) for v in sorted(v for v in found if v is not None)]
    return records or [Service(name=name)]
