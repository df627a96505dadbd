"""One suite, every registry backend: each must behave the same to the code above it.

A backend joins by adding a factory to `BACKENDS` (an engine's, with `@registry_backend` in
tests/engines/<engine>.py): an async context manager that takes the
pytest request (to reach server fixtures, temporary directories) and options for the backend
(`watch_buffer`: the most unread events a watcher holds before it sends RESYNC), and yields a
fresh Registry. The registry cache is run against every backend too, since it relies on each
one's watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from engines import REGISTRY_BACKENDS
from helpers import async_wait_until

from microweave.errors import RegistryError
from microweave.registry import Action, Endpoint, Event, Node, Registry, Service, Value, Watcher
from microweave.registry import from_url as registry_from_url
from microweave.registry.cache import RegistryCache

BackendFactory = Callable[..., contextlib.AbstractAsyncContextManager[Registry]]


@contextlib.asynccontextmanager
async def memory_backend(request: pytest.FixtureRequest, **options: Any) -> AsyncIterator[Registry]:
    async with registry_from_url(f"memory://conformance-{uuid.uuid4().hex}", **options) as registry:
        yield registry


@contextlib.asynccontextmanager
async def local_backend(request: pytest.FixtureRequest, **options: Any) -> AsyncIterator[Registry]:
    tmp = request.getfixturevalue("tmp_path")
    async with registry_from_url(f"local://{tmp / 'registry'}", **options) as registry:
        yield registry


BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "local": local_backend,
    **REGISTRY_BACKENDS,  # the engines' (tests/engines/*.py): etcd, Consul, NATS, mDNS
}

WAIT = 10.0  # generous bound for anything a backend does asynchronously (watch, expiry)


@pytest.fixture(params=sorted(BACKENDS))
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    async with BACKENDS[request.param](request) as registry:
        assert registry.scheme == request.param
        yield registry


SMALL_BUFFER = 4


@pytest.fixture(params=sorted(BACKENDS))
async def small_buffer(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    """A backend whose watchers hold at most SMALL_BUFFER unread events."""
    async with BACKENDS[request.param](request, watch_buffer=SMALL_BUFFER) as registry:
        yield registry


def record(
    name: str = "greeter",
    node: str = "n1",
    *,
    version: str = "1.0.0",
    address: str = "127.0.0.1:1",
    metadata: dict[str, str] | None = None,
) -> Service:
    return Service(
        name=name,
        version=version,
        metadata={"owner": "tests"},
        endpoints=[
            Endpoint(
                name="Greeter.SayHello",
                request=Value("HelloRequest", "HelloRequest", [Value("name", "str")]),
                response=Value("HelloReply", "HelloReply", [Value("message", "str")]),
                metadata={"stream": "unary"},
            )
        ],
        nodes=[Node(id=node, address=address, metadata=metadata or {"protocol": "grpc"})],
    )


def node_ids(services: list[Service]) -> set[str]:
    return {n.id for s in services for n in s.nodes}


async def next_event(watcher: Watcher, timeout: float = WAIT) -> Event:
    return await asyncio.wait_for(anext(watcher), timeout)


# -- register, look up, deregister ----------------------------------------------------------


async def test_register_get_list_deregister(registry: Registry) -> None:
    assert await registry.get_service("greeter") == []
    await registry.register(record())
    [service] = await registry.get_service("greeter")
    assert service == record()
    assert "greeter" in {s.name for s in await registry.list_services()}

    await registry.deregister(record())
    assert await registry.get_service("greeter") == []
    assert "greeter" not in {s.name for s in await registry.list_services()}


async def test_unknown_service_is_empty(registry: Registry) -> None:
    await registry.register(record())
    assert await registry.get_service("nobody") == []


async def test_nodes_of_one_version_are_merged(registry: Registry) -> None:
    await registry.register(record(node="n1", address="127.0.0.1:1"))
    await registry.register(record(node="n2", address="127.0.0.1:2"))
    [service] = await registry.get_service("greeter")
    assert service.version == "1.0.0"
    assert sorted((n.id, n.address) for n in service.nodes) == [("n1", "127.0.0.1:1"), ("n2", "127.0.0.1:2")]


async def test_versions_are_separate_services(registry: Registry) -> None:
    await registry.register(record(node="a", version="1.0.0"))
    await registry.register(record(node="b", version="2.0.0"))
    await registry.register(record(node="c", version="2.0.0"))
    services = await registry.get_service("greeter")
    by_version = {s.version: {n.id for n in s.nodes} for s in services}
    assert by_version == {"1.0.0": {"a"}, "2.0.0": {"b", "c"}}


async def test_deregister_removes_only_that_node(registry: Registry) -> None:
    await registry.register(record(node="n1"))
    await registry.register(record(node="n2"))
    await registry.deregister(record(node="n1"))
    assert node_ids(await registry.get_service("greeter")) == {"n2"}
    await registry.deregister(record(node="n1"))  # twice is harmless
    assert node_ids(await registry.get_service("greeter")) == {"n2"}


async def test_reregister_updates_the_node(registry: Registry) -> None:
    await registry.register(record(metadata={"protocol": "grpc", "color": "blue"}))
    await registry.register(record(metadata={"protocol": "grpc", "color": "green"}))
    [service] = await registry.get_service("greeter")
    assert [n.metadata["color"] for n in service.nodes] == ["green"]


async def test_services_are_kept_apart(registry: Registry) -> None:
    await registry.register(record("greeter", "g1"))
    await registry.register(record("billing", "b1"))
    assert node_ids(await registry.get_service("greeter")) == {"g1"}
    assert node_ids(await registry.get_service("billing")) == {"b1"}
    assert {s.name for s in await registry.list_services()} >= {"greeter", "billing"}


# -- TTL and heartbeat ------------------------------------------------------------------------


async def test_ttl_expiry(registry: Registry) -> None:
    await registry.register(record(node="mortal"), ttl=1)
    await registry.register(record(node="immortal"))
    assert node_ids(await registry.get_service("greeter")) == {"mortal", "immortal"}

    async def expired() -> bool:
        return node_ids(await registry.get_service("greeter")) == {"immortal"}

    await async_wait_until(expired, timeout=WAIT, what="the node to expire")


async def test_heartbeat_keeps_a_node_alive(registry: Registry) -> None:
    ttl = 1.0
    await registry.register(record(), ttl=ttl)
    until = time.monotonic() + 2.5 * ttl
    while time.monotonic() < until:
        await asyncio.sleep(ttl / 4)
        await registry.register(record(), ttl=ttl)  # the heartbeat
        assert node_ids(await registry.get_service("greeter")) == {"n1"}


# -- watch -------------------------------------------------------------------------------------


async def test_watch_sees_create_update_delete(registry: Registry) -> None:
    async with await registry.watch("greeter") as watcher:
        await registry.register(record(metadata={"v": "1"}))
        event = await next_event(watcher)
        assert (event.action, event.service.name, node_ids([event.service])) == (
            Action.CREATE,
            "greeter",
            {"n1"},
        )

        await registry.register(record(metadata={"v": "2"}))
        event = await next_event(watcher)
        assert event.action is Action.UPDATE
        assert event.service.nodes[0].metadata == {"v": "2"}

        await registry.deregister(record())
        event = await next_event(watcher)
        assert (event.action, node_ids([event.service])) == (Action.DELETE, {"n1"})


async def test_watch_sees_ttl_expiry_as_delete(registry: Registry) -> None:
    async with await registry.watch("greeter") as watcher:
        await registry.register(record(), ttl=1)
        assert (await next_event(watcher)).action is Action.CREATE
        event = await next_event(watcher)
        assert (event.action, node_ids([event.service])) == (Action.DELETE, {"n1"})


async def test_watch_one_service_ignores_others(registry: Registry) -> None:
    async with await registry.watch("greeter") as watcher:
        await registry.register(record("billing", "b1"))
        await registry.register(record("greeter", "g1"))
        event = await next_event(watcher)
        assert (event.service.name, node_ids([event.service])) == ("greeter", {"g1"})


async def test_watch_all_services(registry: Registry) -> None:
    async with await registry.watch() as watcher:
        await registry.register(record("billing", "b1"))
        await registry.register(record("greeter", "g1"))
        seen = {(await next_event(watcher)).service.name for _ in range(2)}
        assert seen == {"billing", "greeter"}


async def test_watch_is_subscribed_when_it_returns(registry: Registry) -> None:
    # no pause between subscribing and changing: the change must not fall in a gap
    watcher = await registry.watch("greeter")
    async with watcher:
        await registry.register(record(node="right-after"))
        event = await next_event(watcher)
        assert (event.action, node_ids([event.service])) == (Action.CREATE, {"right-after"})


async def test_watch_delivers_no_initial_snapshot(registry: Registry) -> None:
    await registry.register(record(node="before"))
    async with await registry.watch("greeter") as watcher:
        await registry.register(record(node="after"))
        event = await next_event(watcher)
        # the node registered before subscribing is not replayed: only changes are events
        assert (event.action, node_ids([event.service])) == (Action.CREATE, {"after"})


async def test_delete_carries_name_version_and_the_removed_node(registry: Registry) -> None:
    await registry.register(record(node="gone", version="2.0.0", address="127.0.0.1:7"))
    await registry.register(record(node="stays", version="2.0.0"))
    async with await registry.watch("greeter") as watcher:
        await registry.deregister(record(node="gone", version="2.0.0"))
        event = await next_event(watcher)
        assert event.action is Action.DELETE
        assert (event.service.name, event.service.version) == ("greeter", "2.0.0")
        assert node_ids([event.service]) == {"gone"}


async def test_expiry_delete_carries_name_version_and_node(registry: Registry) -> None:
    await registry.register(record(node="stays", version="3.0.0"))
    async with await registry.watch("greeter") as watcher:
        await registry.register(record(node="mortal", version="3.0.0"), ttl=1)
        assert (await next_event(watcher)).action is Action.CREATE
        event = await next_event(watcher)
        assert event.action is Action.DELETE
        assert (event.service.name, event.service.version, node_ids([event.service])) == (
            "greeter",
            "3.0.0",
            {"mortal"},
        )


async def test_a_watcher_that_falls_behind_is_told_to_resync(small_buffer: Registry) -> None:
    registry = small_buffer
    burst = 5 * SMALL_BUFFER
    async with await registry.watch("greeter") as watcher:
        for i in range(burst):  # nobody reads the watcher meanwhile
            await registry.register(record(node=f"n{i}"))
        events = [await next_event(watcher)]
        while events[-1].action is not Action.RESYNC:
            assert len(events) <= burst, f"no RESYNC after {len(events)} events"
            events.append(await next_event(watcher))
        assert len(events) - 1 <= SMALL_BUFFER  # never more than the buffer before the RESYNC
        assert (events[-1].service.name, events[-1].service.nodes) == ("greeter", [])

        # what a consumer does on RESYNC: re-read; then watching goes on
        assert len(node_ids(await registry.get_service("greeter"))) == burst
        await registry.register(record(node="late"))
        seen: set[str] = set()
        while "late" not in seen:  # events of the burst after the RESYNC may come first
            event = await next_event(watcher)
            assert event.action in (Action.CREATE, Action.RESYNC)
            seen |= node_ids([event.service])


async def test_closed_watcher_stops(registry: Registry) -> None:
    watcher = await registry.watch("greeter")
    await watcher.aclose()
    with pytest.raises(StopAsyncIteration):
        await next_event(watcher)


async def test_close_ends_a_waiting_watcher(registry: Registry) -> None:
    watcher = await registry.watch("greeter")
    waiting = asyncio.ensure_future(anext(watcher))
    await asyncio.sleep(0.05)
    await watcher.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)


# -- go-micro's record shape -------------------------------------------------------------------

GO_MICRO_RECORD = {
    "name": "greeter",
    "version": "latest",
    "metadata": {"owner": "go"},
    "endpoints": [
        {
            "name": "Greeter.Hello",
            "request": {
                "name": "Request",
                "type": "Request",
                "values": [{"name": "name", "type": "string", "values": None}],
            },
            "response": {"name": "Response", "type": "Response", "values": None},
            "metadata": {},
        }
    ],
    "nodes": [
        {"id": "greeter-1", "address": "10.0.0.1:8080", "metadata": {"protocol": "grpc", "broker": "http"}}
    ],
}


async def test_records_keep_go_micro_json_shape(registry: Registry) -> None:
    await registry.register(record())
    [service] = await registry.get_service("greeter")
    data = json.loads(service.to_json())
    assert set(data) == {"name", "version", "metadata", "endpoints", "nodes"}
    assert data["name"] == "greeter" and data["version"] == "1.0.0"
    assert data["metadata"] == {"owner": "tests"}
    [node] = data["nodes"]
    assert node == {"id": "n1", "address": "127.0.0.1:1", "metadata": {"protocol": "grpc"}}
    [endpoint] = data["endpoints"]
    assert set(endpoint) == {"name", "request", "response", "metadata"}
    assert set(endpoint["request"]) == {"name", "type", "values"}
    assert endpoint["request"]["values"] == [{"name": "name", "type": "str", "values": None}]


async def test_a_go_micro_record_round_trips(registry: Registry) -> None:
    service = Service.from_json(json.dumps(GO_MICRO_RECORD))
    await registry.register(service)
    [back] = await registry.get_service("greeter")
    assert json.loads(back.to_json()) == GO_MICRO_RECORD


# -- the registry cache, over each backend -----------------------------------------------------


class Breakable(Registry):
    """The real backend, with lookups that fail on demand (the registry being unreachable)."""

    def __init__(self, inner: Registry) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.broken: Exception | None = None

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        await self.inner.register(service, ttl=ttl)

    async def deregister(self, service: Service) -> None:
        await self.inner.deregister(service)

    async def get_service(self, name: str) -> list[Service]:
        if self.broken is not None:
            raise self.broken
        return await self.inner.get_service(name)

    async def list_services(self) -> list[Service]:
        return await self.inner.list_services()

    async def watch(self, service: str | None = None) -> Watcher:
        return await self.inner.watch(service)


@pytest.fixture
async def cache(registry: Registry) -> AsyncIterator[RegistryCache]:
    cache = RegistryCache(registry, ttl=60)  # long: changes must arrive through the watch
    try:
        yield cache
    finally:
        await cache.aclose()


async def wait_for_nodes(cache: RegistryCache, expected: set[str]) -> None:
    async def matches() -> bool:
        return node_ids(await cache.get_service("greeter")) == expected

    await async_wait_until(matches, timeout=WAIT, what=f"the cache to hold {sorted(expected)}")


async def test_cache_picks_up_new_nodes(registry: Registry, cache: RegistryCache) -> None:
    await registry.register(record(node="n1"))
    assert node_ids(await cache.get_service("greeter")) == {"n1"}
    await registry.register(record(node="n2"))
    await wait_for_nodes(cache, {"n1", "n2"})
    await registry.register(record(node="n3", version="2.0.0"))
    await wait_for_nodes(cache, {"n1", "n2", "n3"})


async def test_cache_drops_deleted_nodes(registry: Registry, cache: RegistryCache) -> None:
    await registry.register(record(node="n1"))
    await registry.register(record(node="n2"))
    assert node_ids(await cache.get_service("greeter")) == {"n1", "n2"}
    await registry.deregister(record(node="n1"))
    await wait_for_nodes(cache, {"n2"})
    await registry.deregister(record(node="n2"))
    await wait_for_nodes(cache, set())


async def test_cache_drops_expired_nodes(registry: Registry, cache: RegistryCache) -> None:
    await registry.register(record(node="n1"), ttl=1)
    await registry.register(record(node="n2"))
    assert node_ids(await cache.get_service("greeter")) == {"n1", "n2"}
    await wait_for_nodes(cache, {"n2"})


async def test_cache_sees_updates(registry: Registry, cache: RegistryCache) -> None:
    await registry.register(record(metadata={"color": "blue"}))
    await cache.get_service("greeter")
    await registry.register(record(metadata={"color": "green"}))

    async def green() -> bool:
        [service] = await cache.get_service("greeter")
        return [n.metadata for n in service.nodes] == [{"color": "green"}]

    await async_wait_until(green, timeout=WAIT, what="the update to reach the cache")


async def test_cache_serves_stale_nodes_when_the_registry_fails(registry: Registry) -> None:
    breakable = Breakable(registry)
    cache = RegistryCache(breakable, ttl=0.05)  # short, so every lookup goes to the registry
    try:
        await registry.register(record(node="n1"))
        assert node_ids(await cache.get_service("greeter")) == {"n1"}
        breakable.broken = RegistryError("registry down")
        await asyncio.sleep(0.1)
        assert node_ids(await cache.get_service("greeter")) == {"n1"}  # stale beats failing

        # with nothing cached there is nothing to serve: the error reaches the caller
        await registry.register(record("billing", "b1"))
        with pytest.raises(RegistryError):
            await cache.get_service("billing")
        breakable.broken = OSError("connection refused")  # a driver's own error becomes ours
        with pytest.raises(RegistryError, match="connection refused"):
            await cache.get_service("billing")

        breakable.broken = None
        assert node_ids(await cache.get_service("billing")) == {"b1"}
    finally:
        await cache.aclose()


async def test_cache_shares_one_lookup(registry: Registry) -> None:
    calls = 0

    class Counting(Breakable):
        async def get_service(self, name: str) -> list[Service]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return await super().get_service(name)

    await registry.register(record())
    cache = RegistryCache(Counting(registry), ttl=60)
    try:
        results = await asyncio.gather(*(cache.get_service("greeter") for _ in range(10)))
        assert all(node_ids(r) == {"n1"} for r in results)
        assert calls == 1
    finally:
        await cache.aclose()


async def test_cache_refetches_after_resync(small_buffer: Registry) -> None:
    cache = RegistryCache(small_buffer, ttl=60)  # long: only the watch can bring the burst in
    try:
        await small_buffer.register(record(node="n0"))
        assert node_ids(await cache.get_service("greeter")) == {"n0"}
        burst = 5 * SMALL_BUFFER
        for i in range(1, burst + 1):  # more than the watcher holds: it sends RESYNC
            await small_buffer.register(record(node=f"n{i}"))
        await wait_for_nodes(cache, {f"n{i}" for i in range(burst + 1)})
    finally:
        await cache.aclose()


def test_every_backend_is_in_the_suite() -> None:
    from microweave._backends import REGISTRIES

    # a built-in registry backend that is not in BACKENDS escapes the conformance suite
    assert set(REGISTRIES) <= set(BACKENDS)
