"""Registry test kit: a registry that breaks on demand, and the helpers the engine-backed
registry tests (etcd, Consul) share.

`Breakable` is for tests of what sits above a registry (the cache, the registration): the real
backend underneath, with lookups, registration or the watch made to fail while the test says
so, and the calls that reach it counted. The helpers below it start real greeter processes on a
registry URL, wait for their nodes and keep a load of calls on them through an outage."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from pathlib import Path

from helpers import SERVICES, ServiceProcess, async_wait_until

from microweave import Client
from microweave.errors import RegistryError
from microweave.registry import Action, Event, Registry, Service, Watcher

__all__ = [
    "WAIT",
    "Breakable",
    "BreakableWatcher",
    "CallLoad",
    "all_there",
    "ids",
    "next_event",
    "sigkill_seen_by_a_watcher",
    "start_greeter",
    "wait_nodes",
]


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


# -- helpers for the engine-backed registry tests (etcd, Consul): real greeter processes ------

WAIT = 15.0


async def ids(registry: Registry, name: str = "greeter") -> set[str]:
    """The ids of the nodes of `name` the registry returns."""
    return {n.id for s in await registry.get_service(name) for n in s.nodes}


async def all_there(registry: Registry, nodes: set[str]) -> bool:
    """Exactly these greeter nodes, or False while the registry cannot answer (an outage)."""
    with contextlib.suppress(RegistryError):
        return await ids(registry) == nodes
    return False


async def next_event(watcher: Watcher, timeout: float = WAIT) -> Event:
    return await asyncio.wait_for(anext(watcher), timeout)


def start_greeter(tmp_path: Path, url: str, ttl: float, n: int) -> ServiceProcess:
    """Greeter process `n` registered on the registry `url` (MICRO_REGISTRY) with `ttl`."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return ServiceProcess(
        SERVICES / "greeter.py",
        ["--ttl", str(ttl)],
        name="greeter",
        registry=tmp_path / "unused-local-registry",
        log_path=logs / f"greeter-{n}.log",
        env={"MICRO_REGISTRY": url},
    )


async def wait_nodes(registry: Registry, count: int, procs: list[ServiceProcess]) -> set[str]:
    """The ids once `count` greeters are registered; fails at once if one of them exits."""

    async def registered() -> set[str]:
        for proc in procs:
            assert proc.alive(), f"greeter exited early:\n{proc.output()}"
        found = await ids(registry)
        return found if len(found) == count else set()

    return await async_wait_until(registered, timeout=30, what=f"{count} greeters in {registry!r}")


class CallLoad:
    """`workers` callers calling the greeter in a loop until the block ends, so a test can see
    what an outage does to calls: `served` per node, `failures` (reprs), `total()`. Entering
    waits until every node in `nodes` served a few calls."""

    def __init__(self, client: Client, nodes: set[str], *, workers: int = 6) -> None:
        self.client = client
        self.nodes = nodes
        self.served: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._count = workers
        self._stop = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    def total(self) -> int:
        return sum(self.served.values())

    async def _caller(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                # JSON both ways: the types are services/greeter.py's to define
                reply = await self.client.call("greeter", "Greeter.SayHello", {"name": f"{i}-{n}"})
                self.served[reply["node"]] += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            n += 1
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> CallLoad:
        self._workers = [asyncio.create_task(self._caller(i)) for i in range(self._count)]
        try:
            await async_wait_until(
                lambda: asyncio.sleep(0, all(self.served[n] >= 20 for n in self.nodes)),
                timeout=30,
                what="load",
            )
        except BaseException:
            await self._end()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._end()

    async def _end(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._workers)


async def sigkill_seen_by_a_watcher(
    registry: Registry, proc: ServiceProcess, ttl: float
) -> tuple[str, float]:
    """SIGKILL the greeter `proc` once a few heartbeats went by, and wait for a watcher's DELETE:
    the node's id and the seconds from the kill to that DELETE. Checks that the DELETE names the
    node as it was registered and that lookups no longer return it."""
    [node] = await wait_nodes(registry, 1, [proc])
    async with await registry.watch("greeter") as watcher:
        await asyncio.sleep(ttl)  # a few heartbeats go by
        proc.signal(signal.SIGKILL)
        killed = time.monotonic()
        event = await next_event(watcher)
        gone_after = time.monotonic() - killed
        assert event.action is Action.DELETE
        assert [n.id for n in event.service.nodes] == [node]
        assert event.service.nodes[0].address.startswith("127.0.0.1:")  # the node as it was
        assert await ids(registry) == set()
    return node, gone_after
