"""A watcher over `micro.nats.watch`, with the TTL expiry that NATS itself cannot give.

Nothing stores nodes on NATS, so nothing deletes a node that died without deregistering. Each
watcher therefore keeps, per node it knows, the last record heard and when it is due: the
announce's TTL after it was heard (each heartbeat re-announces and re-arms it). A node that
stays silent past its TTL is reported as DELETE, like an etcd lease running out.

A watcher knows a node from its announces, and also from lookups made through the same registry
(`seed`): a cache that read a node by query and then lost it to a crash still hears DELETE.
Announces decide nothing by their action except delete: CREATE is a node this watcher did not
know, UPDATE a known node whose record changed; a heartbeat that changes nothing is no event.
While the connection is down nothing can be heard, so nothing expires; after it comes back
every node's clock restarts and the consumer gets RESYNC.

Announces come from the network, up to 1 MiB each: a consumer that falls behind gets RESYNC
past `buffer` unread events or MAX_BACKLOG bytes of them, whichever comes first. An event
weighs the announce it was made from (its size on the wire; a node read by a lookup is
measured by encoding it again); every event of a many-node announce carries the whole weight,
since they share its endpoints and metadata. A
node's weight is kept with its clock, so the DELETE of its expiry weighs what it held too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from .. import Action, Event, Service, Watcher, resync
from ..events import MAX_BACKLOG, EventBuffer
from .wire import Announce

__all__ = ["MAX_BACKLOG", "MAX_TRACKED", "MAX_TRACKED_BYTES", "NatsWatcher"]

#: nodes one watcher keeps clocks for, and the bytes of their records; past either, new nodes
#: are reported but not timed (a peer announcing 1 MiB records cannot make us hold 100 GB)
MAX_TRACKED = 100_000
MAX_TRACKED_BYTES = 256 << 20


class _Tracked:
    __slots__ = ("deadline", "record", "size", "ttl")

    def __init__(self, record: Service, ttl: float, now: float, size: int) -> None:
        self.record = record
        self.ttl = ttl
        self.deadline = now + ttl if ttl > 0 else None
        self.size = size  # what the DELETE of this node weighs in the backlog


def _weigh(service: Service) -> int:
    """The bytes of a record as it came: what each event made from it weighs."""
    return len(msgspec.json.encode(service))


class NatsWatcher(Watcher):
    def __init__(
        self,
        service: str | None,
        *,
        buffer: int,
        default_ttl: float,
        on_close: Callable[[NatsWatcher], Awaitable[None]],
    ) -> None:
        self.service = service
        self._default_ttl = default_ttl
        self._on_close = on_close
        self.events = EventBuffer(service, buffer, max_bytes=MAX_BACKLOG)  # past either: RESYNC
        self.nodes: dict[tuple[str, str], _Tracked] = {}
        self.tracked_bytes = 0  # the sizes of the records in `nodes`
        self.closed = False

    def _room(self, size: int) -> bool:
        return len(self.nodes) < MAX_TRACKED and self.tracked_bytes + size <= MAX_TRACKED_BYTES

    def _track(self, key: tuple[str, str], tracked: _Tracked) -> None:
        known = self.nodes.get(key)
        self.tracked_bytes += tracked.size - (known.size if known is not None else 0)
        self.nodes[key] = tracked

    def _untrack(self, key: tuple[str, str]) -> _Tracked | None:
        known = self.nodes.pop(key, None)
        if known is not None:
            self.tracked_bytes -= known.size
        return known

    # -- fed by the registry ---------------------------------------------------------------------

    def announce(self, announce: Announce, now: float, size: int | None = None) -> None:
        """`size`: the announce's bytes on the wire (None: measured from the record)."""
        service = announce.service
        if self.closed or (self.service is not None and service.name != self.service):
            return
        ttl = self._default_ttl if announce.ttl is None else announce.ttl
        size = size or 0  # 0: measured once, when first needed
        for node in service.nodes:
            one = service.with_nodes([node])
            key = (service.name, node.id)
            if announce.action == "delete":
                known = self._untrack(key)
                if known is not None:
                    self.events.offer(Event(Action.DELETE, known.record), known.size)
                else:
                    size = size or _weigh(service)
                    self.events.offer(Event(Action.DELETE, one), size)
                continue
            known = self.nodes.get(key)
            if known is not None and known.record == one:  # a heartbeat: re-arm the clock only
                self.nodes[key] = _Tracked(one, ttl, now, known.size)
                continue
            size = size or _weigh(service)
            if known is not None or self._room(size):
                self._track(key, _Tracked(one, ttl, now, size))
            self.events.offer(Event(Action.CREATE if known is None else Action.UPDATE, one), size)

    def seed(self, service: Service, ttl: float | None, now: float) -> None:
        """A node read by a lookup: start its clock (no event: lookups are not changes)."""
        if self.closed or (self.service is not None and service.name != self.service):
            return
        size = 0
        for node in service.nodes:
            key = (service.name, node.id)
            one = service.with_nodes([node])
            known = self.nodes.get(key)
            if known is None:
                size = size or _weigh(service)
                if self._room(size):
                    self._track(key, _Tracked(one, self._default_ttl if ttl is None else ttl, now, size))
            elif known is not None and known.record == one:
                known.deadline = now + known.ttl if known.ttl > 0 else None

    def expire(self, now: float) -> None:
        expired = [key for key, t in self.nodes.items() if t.deadline is not None and t.deadline <= now]
        for key in expired:
            tracked = self._untrack(key)
            if tracked is not None:
                self.events.offer(Event(Action.DELETE, tracked.record), tracked.size)

    def reconnected(self, now: float) -> None:
        """Announces were missed while the connection was down: restart clocks, tell the consumer."""
        for tracked in self.nodes.values():
            tracked.deadline = now + tracked.ttl if tracked.ttl > 0 else None
        self.events.offer(resync(self.service))

    # -- read by the consumer ----------------------------------------------------------------------

    async def __anext__(self) -> Event:
        return await self.events.next()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.nodes.clear()
            self.tracked_bytes = 0
            self.events.close()
            await self._on_close(self)
