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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .errors import MicroError, RegistryError
from .metrics import RegistrationHealth, registration_health, registry_stats
from .registry import Registry
from .registry import Service as ServiceRecord
from .registry.cache import unavailable
from .registry.outage import Outage
from .server.pipeline import Pipeline
from .transport import ServerTransport, local

if TYPE_CHECKING:
    from .broker import Broker, Subscription
    from .broker.subscriber import Subscriber

__all__ = ["ABORT_FLUSH", "Component", "Listeners", "Registration", "Subscriptions"]

log = logging.getLogger("microweave.service")

#: seconds after the grace for the answers to cancelled calls to reach their callers
ABORT_FLUSH = 2.0


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Grace:
    """A drain's time for in-flight work, shared by the parts that stop in turn (event handlers,
    then calls): it starts when the first asks how much is left, so the node's drain takes
    `seconds` in all, not `seconds` per part (which a Deployment's termination grace period,
    computed from MICRO_GRACE, would cut short with SIGKILL)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends: float | None = None

    def left(self) -> float:
        """Seconds left of the grace; the first call starts it."""
        now = time.monotonic()
        if self._ends is None:
            self._ends = now + self.seconds
        return max(0.0, self._ends - now)


def _grace(grace: float | Grace) -> Grace:
    return grace if isinstance(grace, Grace) else Grace(grace)


class Listeners:
    """The transports serving one pipeline, and the in-process fast path to it."""

    def __init__(
        self,
        pipeline: Pipeline,
        listeners: list[tuple[ServerTransport, str]],
        *,
        node_id: str,
        grace: float | Grace,
        advertise: Callable[[str], str],
    ) -> None:
        self.pipeline = pipeline
        self.listeners = listeners
        self.node_id = node_id
        self.grace = _grace(grace)
        self._advertise = advertise
        self.addresses: dict[str, str] = {}
        self._started: list[ServerTransport] = []
        from .logs import bind_node

        bind_node(pipeline, node_id)  # the log records of its calls say which node wrote them

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
        grace = self.grace.left()
        abort = asyncio.get_running_loop().call_later(grace, self._abort)
        try:
            # in-process calls have no transport to wait for them: the pipeline does
            await asyncio.gather(
                *(t.stop(grace + ABORT_FLUSH) for t in self._started),
                self.pipeline.drain(grace + ABORT_FLUSH),
            )
        finally:
            abort.cancel()
            self._started = []
            self.pipeline.threads.shutdown()

    def _abort(self) -> None:
        seconds = self.grace.seconds
        count = self.pipeline.abort(f"node {self.node_id} stopped after its grace of {seconds:g}s")
        if count:
            log.warning("grace of %gs is over: cancelling %d calls still running", seconds, count)


class Subscriptions:
    """The service's broker subscribers: subscribed once the node listens (a `direct://` event
    arrives over its transports), before it registers; on the way down, unsubscribed after it
    left the registry, with running handlers given the grace (what they did not settle, an
    at-least-once broker redelivers to another member of the group).

    On `direct://` the events come as calls over the node's own listeners: each subscription is
    handed a `ServedByNode` handler, so the broker starts no node of its own and the registry
    record the node registers anyway is where publishers find it."""

    def __init__(
        self,
        broker: Callable[[], Broker],
        pipeline: Pipeline,
        subscribers: list[Subscriber],
        *,
        grace: float | Grace,
    ) -> None:
        self._broker = broker  # built only when there is something to subscribe
        self.pipeline = pipeline
        self.subscribers = subscribers
        self.grace = _grace(grace)
        self.subscriptions: list[Subscription] = []

    async def start(self) -> None:
        if not self.subscribers:
            return
        broker = self._broker()
        try:
            for subscriber in self.subscribers:
                self.subscriptions.append(
                    await broker.subscribe(
                        subscriber.topic,
                        broker.service_handler(subscriber, self.pipeline),
                        queue=subscriber.queue,
                        ack=subscriber.ack,
                        max_in_flight=subscriber.max_in_flight,
                    )
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        subscriptions, self.subscriptions = self.subscriptions, []
        grace = self.grace.left() if subscriptions else 0.0  # none: the calls get it all
        await asyncio.gather(*(s.unsubscribe(grace=grace) for s in subscriptions))


class Registration:
    """The node's registry entry: registered on start, re-registered well within the TTL,
    removed on stop, then `drain_delay` seconds more of serving while callers' caches drop it.

    A network registry that is down **at start** is retried for up to `start_timeout` seconds
    (with backoff, one log line naming the registry): services and their registry often start
    together (compose files, pods), and a few seconds of waiting beats a crash loop. After
    that, or at once for an error that waiting does not fix (a `ConfigurationError`, a
    `RegistryError` whose code is not 503 such as bad credentials, any error of `memory://` or
    `local://`), start fails with a `RegistryError` naming the registry, which `Service.run()`
    turns into exit code 2.

    A registry that goes away **while running**: the heartbeat (`register()` every ttl/3,
    which also re-creates what an engine restart lost) fails, is logged once, and is retried
    with backoff capped at `min(ttl/3, 2 s)`, so the node is back within about 2 s of the
    registry's return (well within TTL + 2 s); its return is logged once too.
    """

    #: seconds start() keeps trying a registry that is unreachable, before giving up
    START_TIMEOUT = 30.0
    #: the longest wait between two attempts while the registry is away
    RETRY_CAP = 2.0

    def __init__(
        self,
        registry: Registry,
        record: Callable[[], ServiceRecord],
        *,
        ttl: float,
        drain_delay: float,
        start_timeout: float | None = None,
    ) -> None:
        self.registry = registry
        self._make_record = record
        self.ttl = ttl
        self.drain_delay = drain_delay
        self.start_timeout = self.START_TIMEOUT if start_timeout is None else start_timeout
        self.interval = max(ttl / 3, 0.05)  # one missed beat does not drop the node
        self._record: ServiceRecord | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._outage = Outage(
            f"{registry!r} registration", logger=log, cap=min(self.interval, self.RETRY_CAP)
        )
        #: register() calls made (start and heartbeat), successful or not
        self.attempts = 0
        self._stats = registry_stats(registry.scheme)  # its register/deregister errors
        self._up = RegistrationHealth("")  # replaced on start, once the record names the service
        self._health_watchers: list[Callable[[bool], None]] = []

    @property
    def healthy(self) -> bool:
        """False from the first failed register() until one succeeds again: the registry is
        unreachable or refuses this node (its readiness reads this)."""
        return not self._outage.down

    @property
    def failing_since(self) -> float | None:
        """When (time.monotonic()) register() began failing; None while healthy."""
        return self._outage.down_since

    def watch_health(self, watcher: Callable[[bool], None]) -> None:
        """Call `watcher(healthy)` each time `healthy` changes."""
        self._health_watchers.append(watcher)

    def _failed(self, exc: BaseException) -> float:
        was = self.healthy
        delay = self._outage.failed(exc)
        if was:
            self._tell(False)
        return delay

    def _recovered(self) -> None:
        was = self.healthy
        self._outage.recovered()
        if not was:
            self._tell(True)

    def _tell(self, healthy: bool) -> None:
        for watcher in self._health_watchers:
            watcher(healthy)

    def __repr__(self) -> str:
        name = self._record.name if self._record is not None else "?"
        return f"<Registration {name} in {self.registry!r}>"

    async def start(self) -> None:
        self._record = self._make_record()
        self._up = registration_health(self._record.name)  # micro_registration_up
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while True:
            try:
                await self._register()
                break
            except Exception as exc:
                if not unavailable(exc) or self.registry.scheme in _AT_HAND:
                    self._record = None
                    raise
                delay = self._failed(exc)
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    self._record = None
                    detail = exc.detail if isinstance(exc, MicroError) else f"{type(exc).__name__}: {exc}"
                    raise RegistryError(
                        f"cannot register in {self.registry!r} (tried for {self.start_timeout:g} s): "
                        f"{detail}; is the registry running at that address?"
                    ) from None
                await asyncio.sleep(min(delay, left))
        self._recovered()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _register(self) -> None:
        assert self._record is not None
        self.attempts += 1
        # a heartbeat that hangs is as good as failed: the next one must not wait behind it
        try:
            async with asyncio.timeout(max(self.interval, 1.0)):
                await self.registry.register(self._record, ttl=self.ttl)
        except Exception:
            self._stats.error("register")
            self._up.up = False
            raise
        self._up.up = True

    async def _beat(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            if self._record is None:
                return
            try:
                await self._register()
            except Exception as exc:  # the registry may come back: retry sooner than the beat
                delay = min(self._failed(exc), self.interval)
            else:
                self._recovered()
                delay = self.interval

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._record is None:
            return
        self._up.registered = False
        try:
            await self.registry.deregister(self._record)
        except Exception as exc:  # still drain and stop: the TTL removes the node anyway
            self._stats.error("deregister")
            log.warning("could not deregister from %r: %s", self.registry, exc)
        self._record = None
        if self.drain_delay > 0:
            await asyncio.sleep(self.drain_delay)  # callers' caches drop this node meanwhile


#: registries in this process or on this host's disk: nothing to wait for at start
_AT_HAND = frozenset({"memory", "local"})
