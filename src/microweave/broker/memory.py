"""`memory://`: a broker inside one process, for tests and single-process apps.

Brokers built from the same `memory://NAME` URL share one bus (default name: the empty one), so
a publisher and a subscriber built separately in one process meet. At most once: an event is
handed to each broadcast subscriber and to one member of each queue group (round robin); a
failed handler's event is logged and dropped. A publisher waits while a subscriber has
`max_in_flight` handlers running (backpressure, not loss).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from . import Broker, Event, Subscription

if TYPE_CHECKING:
    from .._backends import BackendURL

__all__ = ["MemoryBroker"]


class _Bus:
    def __init__(self) -> None:
        self.subscriptions: dict[str, list[Subscription]] = {}
        self.turns = itertools.count()


_buses: dict[str, _Bus] = {}


class MemoryBroker(Broker):
    scheme = "memory"

    def __init__(self, bus: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bus_name = bus
        self._bus = _buses.setdefault(bus, _Bus())

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> MemoryBroker:
        return cls("".join(url.hosts) + url.path.strip("/"), **kwargs)

    async def _connect(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        groups: dict[str | None, list[Subscription]] = {}
        for sub in self._bus.subscriptions.get(topic, ()):
            groups.setdefault(sub.queue, []).append(sub)
        targets = groups.pop(None, [])
        turn = next(self._bus.turns)
        targets += [members[turn % len(members)] for members in groups.values()]
        for sub in targets:
            await sub.dispatch(Event(topic, body, dict(headers), queue=sub.queue))  # a dict each

    async def _subscribe(self, sub: Subscription) -> None:
        self._bus.subscriptions.setdefault(sub.topic, []).append(sub)

    async def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._bus.subscriptions.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._bus.subscriptions.pop(sub.topic, None)

    def __repr__(self) -> str:
        return f"MemoryBroker({self.bus_name!r})"
