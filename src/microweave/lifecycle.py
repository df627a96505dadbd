"""A service's parts that start and stop: started in order, stopped in reverse.

    listeners (gRPC, tcp, in-process) -> registration (register, heartbeat)

so a node is registered only once it can answer, and on the way down it leaves the registry
first, keeps serving while callers' caches catch up, then drains. Later parts (broker
subscriptions, config watchers, the admin HTTP endpoint) join the same list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from .registry import Registry
from .registry import Service as ServiceRecord
from .server.pipeline import Pipeline
from .transport import ServerTransport, local

__all__ = ["ABORT_FLUSH", "Component", "Listeners", "Registration"]

log = logging.getLogger("microweave.service")

#: seconds after the grace for the answers to cancelled calls to reach their callers
ABORT_FLUSH = 2.0


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Listeners:
    """The transports serving one pipeline, and the in-process fast path to it."""

    def __init__(
        self,
        pipeline: Pipeline,
        listeners: list[tuple[ServerTransport, str]],
        *,
        node_id: str,
        grace: float,
        advertise: Callable[[str], str],
    ) -> None:
        self.pipeline = pipeline
        self.listeners = listeners
        self.node_id = node_id
        self.grace = grace
        self._advertise = advertise
        self.addresses: dict[str, str] = {}
        self._started: list[ServerTransport] = []

    async def start(self) -> None:
        try:
            for transport, address in self.listeners:
                host, _, port = address.rpartition(":")
                bound = await transport.start(self.pipeline, host=host or "0.0.0.0", port=int(port))
                self._started.append(transport)
                self.addresses[transport.name] = self._advertise(bound)
        except BaseException:
            await self.stop()
            raise
        local.serve(self.node_id, self.pipeline)

    async def stop(self) -> None:
        """Refuse new calls, let in-flight ones run for `grace` seconds, then cancel the rest:
        each of their callers is told the call was cancelled and may have run, and the log
        says which calls they were."""
        local.unserve(self.node_id)
        abort = asyncio.get_running_loop().call_later(self.grace, self._abort)
        try:
            # in-process calls have no transport to wait for them: the pipeline does
            await asyncio.gather(
                *(t.stop(self.grace + ABORT_FLUSH) for t in self._started),
                self.pipeline.drain(self.grace + ABORT_FLUSH),
            )
        finally:
            abort.cancel()
            self._started = []
            self.pipeline.threads.shutdown()

    def _abort(self) -> None:
        count = self.pipeline.abort(f"node {self.node_id} stopped after its grace of {self.grace:g}s")
        if count:
            log.warning("grace of %gs is over: cancelling %d calls still running", self.grace, count)


class Registration:
    """The node's registry entry: registered on start, re-registered well within the TTL,
    removed on stop, then `drain_delay` seconds more of serving while callers' caches drop it."""

    def __init__(
        self,
        registry: Registry,
        record: Callable[[], ServiceRecord],
        *,
        ttl: float,
        drain_delay: float,
    ) -> None:
        self.registry = registry
        self._make_record = record
        self.ttl = ttl
        self.drain_delay = drain_delay
        self._record: ServiceRecord | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._record = self._make_record()
        await self.registry.register(self._record, ttl=self.ttl)
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        interval = max(self.ttl / 3, 0.05)  # one missed beat does not drop the node
        while True:
            await asyncio.sleep(interval)
            if self._record is None:
                return
            try:
                await self.registry.register(self._record, ttl=self.ttl)
            except Exception as exc:  # the registry may come back before the TTL runs out
                log.warning("heartbeat to %r failed: %s", self.registry, exc)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._record is None:
            return
        try:
            await self.registry.deregister(self._record)
        except Exception as exc:  # still drain and stop: the TTL removes the node anyway
            log.warning("could not deregister from %r: %s", self.registry, exc)
        self._record = None
        if self.drain_delay > 0:
            await asyncio.sleep(self.drain_delay)  # callers' caches drop this node meanwhile
