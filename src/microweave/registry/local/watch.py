"""Watching the local registry: poll the tracker, turn the difference into events.

The watcher starts from the snapshot taken when it subscribed (so it yields no initial
snapshot, and misses nothing after subscribing) and compares each poll's snapshot with the
previous one. Polls are cheap when nothing changed: the tracker hands back the very same
per-service mapping, which is skipped without comparing its records.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from .. import Action, Event, Watcher, resync
from .tracker import Live, Snapshot

__all__ = ["PollingWatcher"]


class PollingWatcher(Watcher):
    def __init__(
        self,
        poll: Callable[[], Awaitable[Snapshot]],
        service: str | None,
        baseline: Snapshot,
        *,
        interval: float,
        buffer: int,
    ) -> None:
        self._poll = poll
        self._service = service
        self._seen = baseline
        self._interval = interval
        self._buffer = buffer
        self._pending: deque[Event] = deque()
        self._closed = asyncio.Event()

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed.is_set():
                raise StopAsyncIteration
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):  # not wait_for: it can swallow a cancel
                    await self._closed.wait()
            if self._closed.is_set():
                raise StopAsyncIteration
            now = await self._poll()  # a failure is raised; the next poll diffs from `_seen`
            if self._closed.is_set():
                raise StopAsyncIteration
            self._pending.extend(self._diff(now))
        return self._pending.popleft()

    def _diff(self, now: Snapshot) -> list[Event]:
        events: list[Event] = []
        for name in self._seen.keys() | now.keys():
            before, after = self._seen.get(name, {}), now.get(name, {})
            if before is not after:
                events.extend(_changes(before, after))
        self._seen = now
        if len(events) > self._buffer:
            return [resync(self._service)]  # more than a consumer should be handed at once
        return events

    async def aclose(self) -> None:
        self._closed.set()


def _changes(before: Live, after: Live) -> list[Event]:
    events: list[Event] = []
    for key, (sig, service) in after.items():
        old = before.get(key)
        if old is None:
            events.append(Event(Action.CREATE, service))
        elif old[0] != sig and old[1] != service:  # a rewrite that changed nothing is a heartbeat
            events.append(Event(Action.UPDATE, service))
    events.extend(Event(Action.DELETE, service) for key, (_, service) in before.items() if key not in after)
    return events
