"""Where the subscribers of a topic are: registry records, read through the client's cache.

A subscriber is an endpoint with go-micro's metadata `{"subscriber": "true", "topic": T}` (plus
`"queue"`), on a node whose metadata says `"broker": "direct"` (a node on another broker, or a
go-micro node, takes no events as calls). One index (topic -> broadcast destinations and queue
groups) is built from every service's records and rebuilt only when one of them changed.

What a publish costs, and how fresh the answer is:

- **Records** come from the client's `RegistryCache`, which a watch on the registry keeps
  current: a new node of a known service, a node gone, or changed endpoints are seen as soon as
  the registry reports them (at once on memory:// and etcd, within a poll of 0.2 s on local://).
  The first publish reads each service once (at most `READS_AT_ONCE` at a time); after that a
  publish reads nothing and only compares the cached records' identity, O(services). The cache
  re-reads each entry in the background about once per its TTL (a minute by default).
- **The list of service names** (`list_services`, the one read the cache cannot watch for) is
  trusted for `refresh` seconds and then read again in the background, so a publish never waits
  for it; a service that registers its first subscriber is found within `refresh` seconds. A
  topic with no subscriber at all reads the list again before giving up, so a subscriber that
  registered just before the publish is found at once: a publish nobody listens to costs one
  read of the list (publishes at once share one read; one read at a time per publisher).
- **A registry that is away**: what the cache holds keeps being served (stale beats failing);
  reads are retried with backoff, not on every publish. With nothing known yet, `find` raises
  the registry's error (the broker says it as a `BrokerError`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Final

from ...errors import MicroError, RegistryError
from ...registry import Node, Registry, Service
from ...registry.cache import RegistryCache
from ...registry.outage import Outage
from ...server import grpc_path

__all__ = ["Destination", "Directory", "Subscribers"]

log = logging.getLogger("microweave.broker")

#: service reads one lookup runs at once (a first publish on a large registry)
READS_AT_ONCE: Final = 8
#: seconds one read of the list of services may take
LIST_TIMEOUT: Final = 10.0
#: the most service names kept (a registry holding more is not laptop scale: say so)
MAX_NAMES: Final = 10_000

_NONE: Final[list[Service]] = []  # one object: "no records", unchanged from one lookup to the next


class Destination:
    """One subscriber endpoint on one node."""

    __slots__ = ("endpoint", "node", "path", "queue", "service")

    def __init__(self, service: str, endpoint: str, path: str, node: Node, queue: str | None) -> None:
        self.service = service
        self.endpoint = endpoint
        self.path = path
        self.node = node
        self.queue = queue

    def only(self, services: list[Service]) -> list[Service]:
        """A client call filter: this node, whatever the selector would have picked."""
        node_id = self.node.id
        return [
            s.with_nodes([n for n in s.nodes if n.id == node_id])
            for s in services
            if any(n.id == node_id for n in s.nodes)
        ]

    def __repr__(self) -> str:
        return f"<{self.service} {self.endpoint} on {self.node.id}>"


@dataclass(slots=True)
class Subscribers:
    """A topic's subscribers: each broadcast one gets every event, each group one member."""

    broadcast: list[Destination] = field(default_factory=list)
    groups: dict[str, list[Destination]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.broadcast or self.groups)


_NOBODY: Final = Subscribers()


def _by_node(dest: Destination) -> tuple[str, str]:
    return dest.node.id, dest.path


def _subscribes(metadata: dict[str, str]) -> bool:
    return metadata.get("subscriber") == "true" and bool(metadata.get("topic"))


class Directory:
    def __init__(self, registry: Registry, cache: RegistryCache, *, refresh: float) -> None:
        self.registry = registry
        self.cache = cache
        self.refresh = refresh
        self._names: tuple[str, ...] | None = None
        self._listed_at = -math.inf  # loop time at which the last listing that worked began
        self._listing: asyncio.Task[bool] | None = None
        self._listing_began = 0.0
        self._retry_at = 0.0  # no listing before this loop time: the registry is away
        self._failure: Exception | None = None
        self._outage = Outage(f"{registry!r} (direct:// listing services)", logger=log)
        self._empty: set[str] = set()  # listed, but no node when read: skipped until the next list
        self._built_from: tuple[tuple[str, ...], list[list[Service]]] = ((), [])
        self._index: dict[str, Subscribers] = {}
        #: topic -> the other brokers ("nats", ...) of nodes that subscribe to it: not ours to
        #: call, but worth telling a publisher that finds nobody
        self.elsewhere: dict[str, set[str]] = {}

    async def find(self, topic: str) -> Subscribers:
        now = asyncio.get_running_loop().time()
        if self._names is None:
            await self._relist(now)
        elif now - self._listed_at > self.refresh:
            self._start_listing()  # in the background: this publish uses what is known
        found = await self._lookup(topic)
        if not found:  # a subscriber that registered a moment ago may be a service not listed yet
            await self._relist(now)
            found = await self._lookup(topic)
        return found

    # -- the list of services ---------------------------------------------------------------

    async def _relist(self, after: float) -> None:
        """Until a listing that began at `after` or later has completed; raises when none can
        be had and nothing is known."""
        while True:
            task = self._listing
            if task is None or task.done():
                if self._listed_at >= after:
                    return
                task = self._start_listing()
                if task is None:  # the registry is away: no read before the backoff is over
                    break
            began = self._listing_began
            if not await asyncio.shield(task):
                break
            if began >= after:
                return
        if self._names is None:
            raise self._unreachable()

    def _start_listing(self) -> asyncio.Task[bool] | None:
        if self._listing is not None and not self._listing.done():
            return self._listing
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return None
        self._listing_began = loop.time()
        self._listing = loop.create_task(self._list(self._listing_began))
        return self._listing

    async def _list(self, began: float) -> bool:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(LIST_TIMEOUT):
                services = await self.registry.list_services()
        except Exception as exc:  # a driver's error too: the registry is away
            self._failure = exc
            self._retry_at = loop.time() + self._outage.failed(exc)
            return False
        self._outage.recovered()
        self._retry_at = 0.0
        names = sorted({s.name for s in services})
        if len(names) > MAX_NAMES:
            log.warning(
                "%r lists %d services; direct:// looks for subscribers in the first %d only",
                self.registry, len(names), MAX_NAMES,
            )  # fmt: skip
            names = names[:MAX_NAMES]
        self._names = tuple(names)
        self._empty.clear()
        self._listed_at = began
        return True

    def _unreachable(self) -> RegistryError:
        failure = self._failure
        why = failure.detail if isinstance(failure, MicroError) else f"{type(failure).__name__}: {failure}"
        return RegistryError(f"cannot list the services of {self.registry!r}: {why}")

    # -- the records and the index ----------------------------------------------------------

    async def _lookup(self, topic: str) -> Subscribers:
        names = self._names or ()
        cache, empty = self.cache, self._empty
        records: list[list[Service] | None] = [
            _NONE if name in empty else cache.fresh(name) for name in names
        ]
        failure: Exception | None = None
        if None in records:
            failure = await self._read(names, records)
        built_names, built_records = self._built_from
        if names != built_names or any(a is not b for a, b in zip(records, built_records, strict=True)):
            self._rebuild(names, [r if r is not None else _NONE for r in records])
        found = self._index.get(topic, _NOBODY)
        if not found and failure is not None:
            raise failure  # it may be among the services that could not be read
        return found

    async def _read(self, names: tuple[str, ...], records: list[list[Service] | None]) -> Exception | None:
        """Read the services the cache holds nothing fresh for; the last failure, if any."""
        limit = asyncio.Semaphore(READS_AT_ONCE)
        failures: list[Exception] = []

        async def read(i: int) -> None:
            async with limit:
                try:
                    got = await self.cache.get_service(names[i])
                except Exception as exc:  # the cache logs an outage once; it retries with backoff
                    failures.append(exc)
                    records[i] = _NONE
                    return
            if not got:
                self._empty.add(names[i])
            records[i] = got or _NONE

        await asyncio.gather(*(read(i) for i, r in enumerate(records) if r is None))
        return failures[-1] if failures else None

    def _rebuild(self, names: tuple[str, ...], records: list[list[Service]]) -> None:
        index: dict[str, Subscribers] = {}
        elsewhere: dict[str, set[str]] = {}
        for services in records:
            for record in services:
                endpoints = [e for e in record.endpoints if _subscribes(e.metadata)]
                nodes = [n for n in record.nodes if n.metadata.get("broker") == "direct"]
                if endpoints and len(nodes) < len(record.nodes):
                    others = {n.metadata.get("broker") or "?" for n in record.nodes} - {"direct"}
                    for endpoint in endpoints:
                        elsewhere.setdefault(endpoint.metadata["topic"], set()).update(others)
                if not endpoints or not nodes:
                    continue
                for endpoint in endpoints:
                    meta = endpoint.metadata
                    queue = meta.get("queue") or None
                    path = meta.get("path") or grpc_path(record.name, endpoint.name)
                    found = index.setdefault(meta["topic"], Subscribers())
                    into = found.broadcast if queue is None else found.groups.setdefault(queue, [])
                    into.extend(Destination(record.name, endpoint.name, path, n, queue) for n in nodes)
        for found in index.values():  # one order whatever order the registry's events left them in
            for members in found.groups.values():
                members.sort(key=_by_node)
        self._index = index
        self.elsewhere = elsewhere
        self._built_from = (names, records)

    async def aclose(self) -> None:
        task, self._listing = self._listing, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
