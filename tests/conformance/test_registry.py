"""One suite, every registry backend: each must behave the same to the code above it.

A backend joins by adding a factory to `BACKENDS` (an engine's, with `@registry_backend` in
tests/engines/<engine>.py): an async context manager that takes the
pytest request (to reach server fixtures, temporary directories) and options for the backend
(`watch_buffer`: the most unread events a watcher holds before it sends RESYNC), and yields a
fresh Registry. A factory with a `share` parameter yields, for `share=<a registry it yielded>`,
a second, independent instance (its own connections, its own keep-alives) over that one's
data: the crash test abandons it and watches the first see its nodes expire. For a factory
without `share`, the second instance is built from the URL in the registry's repr
(`<EtcdRegistry etcd://...>`).
The registry cache is run against every backend too, since it relies on each one's watch.

Times are kept short (TTLs of 1-2 s, bulk work in `asyncio.gather`): the suite runs on six
backends, some slow. The only durations asserted are the bounds the backends promise (gone
within TTL + CRASH_MARGIN), measured from the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from engines import REGISTRY_BACKENDS
from helpers import async_wait_until
from registry_kit import Breakable

from microweave.errors import ConfigurationError, RegistryError
from microweave.registry import Action, Endpoint, Event, Node, Registry, Service, Value, Watcher
from microweave.registry import from_url as registry_from_url
from microweave.registry.cache import RegistryCache
from microweave.testing import capture_logs

BackendFactory = Callable[..., contextlib.AbstractAsyncContextManager[Registry]]


@contextlib.asynccontextmanager
async def memory_backend(
    request: pytest.FixtureRequest, *, share: Registry | None = None, **options: Any
) -> AsyncIterator[Registry]:
    if share is not None:  # one registry per name in the process: the same instance
        yield share
        return
    async with registry_from_url(f"memory://conformance-{uuid.uuid4().hex}", **options) as registry:
        yield registry


@contextlib.asynccontextmanager
async def local_backend(
    request: pytest.FixtureRequest, *, share: Registry | None = None, **options: Any
) -> AsyncIterator[Registry]:
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


# -- a crashed owner, versions, metadata, endpoints ---------------------------------------------

CRASH_TTL = 2.0
#: how long after its TTL a crashed owner's node may still be listed (the issue's bound)
CRASH_MARGIN = 1.0


@contextlib.asynccontextmanager
async def peer(request: pytest.FixtureRequest, registry: Registry) -> AsyncIterator[Registry]:
    """A second instance over the same data as `registry` (see the module docstring)."""
    factory = BACKENDS[registry.scheme]
    if "share" in inspect.signature(factory).parameters:
        async with factory(request, share=registry) as other:
            yield other
        return
    url = repr(registry).removeprefix("<").removesuffix(">").split(" ", 1)[1]
    async with registry_from_url(url) as other:
        yield other


async def test_a_crashed_owner_s_node_expires(request: pytest.FixtureRequest, registry: Registry) -> None:
    await registry.register(record(node="survivor"))
    async with peer(request, registry) as owner:
        await owner.register(record(node="crashed"), ttl=CRASH_TTL)

        async def both() -> bool:
            return node_ids(await registry.get_service("greeter")) == {"survivor", "crashed"}

        await async_wait_until(both, timeout=WAIT, what="the second instance's node to be listed")
        # the owner goes away without deregistering (a crash, as far as the registry knows)
    abandoned = time.monotonic()

    async def expired() -> bool:
        return node_ids(await registry.get_service("greeter")) == {"survivor"}

    await async_wait_until(expired, timeout=CRASH_TTL + WAIT, what="the crashed owner's node to expire")
    gone_after = time.monotonic() - abandoned
    assert gone_after <= CRASH_TTL + CRASH_MARGIN, f"gone only {gone_after:.2f} s after its owner stopped"


def versioned(version: str, node: str, color: str) -> Service:
    return Service(
        name="greeter",
        version=version,
        metadata={"color": color},
        endpoints=[Endpoint(name=f"Greeter.Say{color.title()}", metadata={"stream": "unary"})],
        nodes=[Node(id=node, address=f"127.0.0.1:{len(node)}", metadata={"v": version})],
    )


async def test_each_version_keeps_its_own_record(registry: Registry) -> None:
    await asyncio.gather(
        registry.register(versioned("1.0.0", "old", "blue")),
        registry.register(versioned("2.0.0-rc.1+build.7", "new", "green")),
        registry.register(versioned("latest", "any", "red")),
    )
    services = {s.version: s for s in await registry.get_service("greeter")}
    assert sorted(services) == ["1.0.0", "2.0.0-rc.1+build.7", "latest"]
    assert services["1.0.0"] == versioned("1.0.0", "old", "blue")
    assert services["2.0.0-rc.1+build.7"] == versioned("2.0.0-rc.1+build.7", "new", "green")
    assert services["latest"] == versioned("latest", "any", "red")

    await registry.deregister(versioned("1.0.0", "old", "blue"))
    assert sorted(s.version for s in await registry.get_service("greeter")) == [
        "2.0.0-rc.1+build.7",
        "latest",
    ]


ODD_METADATA = {
    "plain": "value",
    "empty": "",
    "spaces and = , ; signs": "a=b, c=d; e",
    "unicode": "grüße, 你好, 🙂",
    "quotes": "\"double\" and 'single'",
    "json": '{"nested": [1, 2, {"x": null}]}',
    "newline": "one\ntwo",
    "long": "x" * 2000,
    **{f"key-{i:02d}": str(i) for i in range(40)},
}


async def test_metadata_round_trips(registry: Registry) -> None:
    service = Service(
        name="greeter",
        version="1.0.0",
        metadata=dict(ODD_METADATA),
        nodes=[Node(id="n1", address="127.0.0.1:1", metadata={**ODD_METADATA, "protocol": "grpc"})],
    )
    await registry.register(service)
    [back] = await registry.get_service("greeter")
    assert back.metadata == service.metadata
    assert back.nodes[0].metadata == service.nodes[0].metadata


def tree(depth: int, prefix: str = "field") -> list[Value] | None:
    """A request or response type as go-micro describes it: fields holding fields."""
    if depth == 0:
        return None
    return [
        Value(
            f"{prefix}_{i}",
            "string" if depth == 1 else f"Message{depth}{i}",
            tree(depth - 1, f"{prefix}_{i}"),
        )
        for i in range(2)
    ]


ENDPOINTS = [
    Endpoint(
        name="Greeter.Deep",
        request=Value("DeepRequest", "DeepRequest", tree(4)),
        response=Value("DeepResponse", "DeepResponse", [Value("items", "[]Item", tree(2, "item"))]),
        metadata={"stream": "unary", "idempotent": "true", "path": "/helloworld.Greeter/Deep"},
    ),
    Endpoint(name="Greeter.NoTypes", metadata={}),
    Endpoint(name="Greeter.Stream", request=Value("Empty", "Empty", []), metadata={"stream": "bidi"}),
]


async def test_endpoints_round_trip(registry: Registry) -> None:
    service = Service(
        name="greeter",
        version="1.0.0",
        endpoints=list(ENDPOINTS),
        nodes=[Node(id="n1", address="127.0.0.1:1")],
    )
    await registry.register(service)
    [back] = await registry.get_service("greeter")
    assert back.endpoints == ENDPOINTS
    # the go-micro JSON of the whole record, not only the decoded structs
    assert json.loads(back.to_json())["endpoints"] == json.loads(service.to_json())["endpoints"]


# -- watch: order and resync ---------------------------------------------------------------------


async def test_watch_events_keep_the_order_of_changes(registry: Registry) -> None:
    """Changes made back to back: each node's events come in the order of its changes, and
    applying them leaves the state the registry holds. (Polling backends may coalesce changes
    between two polls: a node's states are then a subsequence of the states it went through.)"""
    a1, a2 = record(node="a", metadata={"v": "1"}), record(node="a", metadata={"v": "2"})
    b, c1, c2 = record(node="b"), record(node="c", metadata={"v": "1"}), record(node="c", metadata={"v": "2"})
    async with await registry.watch("greeter") as watcher:
        for change, service in [
            (registry.register, a1),
            (registry.register, b),
            (registry.register, a2),
            (registry.register, c1),
            (registry.deregister, b),
            (registry.deregister, c1),
            (registry.register, c2),
        ]:
            await change(service)

        # each node's states in the order it went through them (None: not registered)
        made: dict[str, list[Node | None]] = {
            "a": [a1.nodes[0], a2.nodes[0]],
            "b": [b.nodes[0], None],
            "c": [c1.nodes[0], None, c2.nodes[0]],
        }
        final = {"a": a2.nodes[0], "c": c2.nodes[0]}
        mirror: dict[str, Node] = {}
        seen: dict[str, list[Node | None]] = {"a": [], "b": [], "c": []}
        while mirror != final:
            event = await next_event(watcher)
            assert event.action is not Action.RESYNC, "seven changes overflowed no buffer"
            for node in event.service.nodes:
                if event.action is Action.DELETE:
                    mirror.pop(node.id, None)
                    seen[node.id].append(None)
                else:
                    mirror[node.id] = node
                    seen[node.id].append(node)
    for node_id, states in seen.items():
        steps = iter(made[node_id])
        in_order = all(any(state == step for step in steps) for state in states)
        assert in_order, f"node {node_id}: events {states} are not in the order of {made[node_id]}"


async def test_a_watcher_of_every_service_that_falls_behind_resyncs(small_buffer: Registry) -> None:
    registry = small_buffer
    names = {f"svc-{i}" for i in range(5 * SMALL_BUFFER)}
    async with await registry.watch() as watcher, await registry.watch() as pacer:
        await asyncio.gather(*(registry.register(record(name, f"n-{name}")) for name in names))
        # nobody reads `watcher` until a second watcher saw every service come (or fell behind
        # as well): `watcher` has had its events by then. Read at once, a watcher of consul on a
        # loaded machine kept pace with the last registrations and never fell behind.
        seen: set[str] = set()
        while not names <= seen:
            event = await next_event(pacer)
            if event.action is Action.RESYNC:
                break
            seen.add(event.service.name)
        events = [await next_event(watcher)]
        while events[-1].action is not Action.RESYNC:
            assert len(events) <= 5 * SMALL_BUFFER, "no RESYNC"
            events.append(await next_event(watcher))
        assert (events[-1].service.name, events[-1].service.nodes) == ("", [])  # every service
        assert {s.name for s in await registry.list_services()} >= names


# -- many services -------------------------------------------------------------------------------

MANY = 500


async def test_500_services(registry: Registry) -> None:
    names = [f"bulk-{i:03d}" for i in range(MANY)]
    await asyncio.gather(
        *(
            registry.register(record(name, f"{name}-node", address=f"10.0.{i // 250}.{i % 250}:1"))
            for i, name in enumerate(names)
        )
    )

    listed = {s.name for s in await registry.list_services()}
    assert listed >= set(names), f"{len(set(names) - listed)} of {MANY} services not listed"
    found = await asyncio.gather(*(registry.get_service(name) for name in names))
    for name, services in zip(names, found, strict=True):
        assert node_ids(services) == {f"{name}-node"}, name
        assert services[0].endpoints == record().endpoints

    await asyncio.gather(*(registry.deregister(record(name, f"{name}-node")) for name in names[::2]))
    left = {s.name for s in await registry.list_services() if s.nodes or s.name}
    found = await asyncio.gather(*(registry.get_service(name) for name in names))
    assert [name for name, services in zip(names, found, strict=True) if services] == names[1::2]
    assert left >= set(names[1::2])


# -- the registry cache, over each backend -----------------------------------------------------


@pytest.fixture
async def cache(registry: Registry) -> AsyncIterator[RegistryCache]:
    cache = RegistryCache(registry, ttl=60)  # long: changes must arrive through the watch
    try:
        yield cache
    finally:
        await cache.aclose()


@pytest.fixture
async def breakable(registry: Registry) -> Breakable:
    return Breakable(registry)


@contextlib.asynccontextmanager
async def cache_over(registry: Registry, **options: Any) -> AsyncIterator[RegistryCache]:
    cache = RegistryCache(registry, **options)
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


async def test_cache_serves_stale_nodes_when_the_registry_fails(
    registry: Registry, breakable: Breakable
) -> None:
    async with cache_over(breakable, ttl=0.05, retry_cap=0.2) as cache:  # short: lookups read
        await registry.register(record(node="n1"))
        assert node_ids(await cache.get_service("greeter")) == {"n1"}
        breakable.broken = RegistryError("registry down")
        await asyncio.sleep(0.1)
        assert node_ids(await cache.get_service("greeter")) == {"n1"}  # stale beats failing
        assert breakable.reads >= 2  # it did ask, and was refused

        # with nothing cached there is nothing to serve: the error reaches the caller
        await registry.register(record("billing", "b1"))
        with pytest.raises(RegistryError, match="registry down"):
            await cache.get_service("billing")

        breakable.broken = None  # back: served again once the backoff is over

        async def billing() -> bool:
            with contextlib.suppress(RegistryError):
                return node_ids(await cache.get_service("billing")) == {"b1"}
            return False

        await async_wait_until(billing, timeout=WAIT, what="billing once the registry is back")


async def test_a_driver_error_becomes_a_registry_error_naming_the_registry(breakable: Breakable) -> None:
    breakable.broken = OSError("connection refused")
    async with cache_over(breakable) as cache:
        with pytest.raises(RegistryError, match="connection refused") as raised:
            await cache.get_service("billing")
        assert repr(breakable) in raised.value.detail
        assert repr(breakable) in repr(cache)


async def test_a_lookup_refused_for_its_name_is_no_outage(registry: Registry, breakable: Breakable) -> None:
    await registry.register(record())
    breakable.refused["bad name"] = ConfigurationError("'bad name' cannot be a service name")
    async with cache_over(breakable) as cache:
        with pytest.raises(ConfigurationError):
            await cache.get_service("bad name")
        # the registry answered: other lookups go ahead, without waiting out a backoff
        assert node_ids(await cache.get_service("greeter")) == {"n1"}


async def test_cache_shares_one_lookup_among_200_callers(registry: Registry, breakable: Breakable) -> None:
    await registry.register(record())
    breakable.answer_delay = 0.2
    async with cache_over(breakable, ttl=60) as cache:
        callers = [asyncio.ensure_future(cache.get_service("greeter")) for _ in range(200)]
        await asyncio.sleep(0.05)
        callers[0].cancel()  # the caller that started the read gives up: the others do not
        results = await asyncio.gather(*callers[1:])
        assert all(node_ids(r) == {"n1"} for r in results)
        assert breakable.reads == 1
        with pytest.raises(asyncio.CancelledError):
            await callers[0]


async def test_cache_backs_off_while_the_registry_is_away(registry: Registry, breakable: Breakable) -> None:
    """Calls keep being served from the cache, the registry is asked a few times a second at
    most (not once per call), and the outage is logged once each way, without a traceback."""
    await registry.register(record())
    async with cache_over(breakable, ttl=0.2, resync_interval=0.2, retry_cap=0.4) as cache:
        assert node_ids(await cache.get_service("greeter")) == {"n1"}
        with capture_logs(logging.DEBUG, logger="microweave.registry") as logs:
            breakable.broken = RegistryError("registry down")
            reads_before, calls = breakable.reads, 0
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                services = cache.fresh("greeter") or await cache.get_service("greeter")
                assert node_ids(services) == {"n1"}
                calls += 1
                await asyncio.sleep(0.002)
            attempts = breakable.reads - reads_before
            # backoff 0.1 s doubling to 0.4 s, jittered down to half: at most ~12 in 2 s
            assert 2 <= attempts <= 15, f"{attempts} reads for {calls} calls"
            assert calls >= 10 * attempts

            breakable.broken = None
            reads = breakable.reads

            async def read_again() -> bool:
                return breakable.reads > reads

            await async_wait_until(read_again, timeout=WAIT, what="a read once the registry is back")
            await asyncio.sleep(0.1)
    warnings = [e for e in logs if e["level"] == "WARNING"]
    assert [("unreachable" in e["message"], "again" in e["message"]) for e in warnings] == [
        (True, False),
        (False, True),
    ], warnings
    assert all("exception" not in e for e in logs)


async def test_cache_drops_a_node_deleted_while_the_watch_is_down(
    registry: Registry, breakable: Breakable
) -> None:
    """The registry stays reachable but its watch keeps failing: a node deleted meanwhile leaves
    the cache within `resync_interval` (keep it under the nodes' TTL), by a refetch on a timer,
    while every lookup is answered from memory (the fast path never comes back empty)."""
    resync = 1.0
    await registry.register(record(node="n1"))
    await registry.register(record(node="n2"))
    async with cache_over(breakable, ttl=60, resync_interval=resync) as cache:
        assert node_ids(await cache.get_service("greeter")) == {"n1", "n2"}
        with capture_logs(logging.DEBUG, logger="microweave.registry") as logs:
            await breakable.break_watch(RegistryError("watch stream lost"))
            await asyncio.sleep(0.2)  # the cache notices, and keeps failing to watch again
            await registry.deregister(record(node="n2"))
            deleted = time.monotonic()
            while True:
                services = cache.fresh("greeter")
                assert services is not None, "a lookup would have waited on a registry read"
                if node_ids(services) == {"n1"}:
                    break
                assert time.monotonic() - deleted <= resync + 1.0, "the deleted node is still served"
                await asyncio.sleep(0.02)
            watches = breakable.watches
        assert watches <= 8, f"{watches} watch attempts in about a second: no backoff"
    warnings = [e["message"] for e in logs if e["level"] == "WARNING"]
    assert len(warnings) == 1 and "watch" in warnings[0] and "unreachable" in warnings[0], warnings
    assert all("exception" not in e for e in logs)


async def test_cache_keeps_changes_made_while_a_read_was_answering(
    registry: Registry, breakable: Breakable
) -> None:
    """A read answers with what the registry held when it read; a change landing while that
    answer travels must not be overwritten by it (or a deleted node is served until the TTL)."""
    await registry.register(record(node="n1"))
    await registry.register(record(node="n2"))
    async with cache_over(breakable, ttl=60) as cache:
        await cache.get_service("other")  # the watch is up
        breakable.answer_delay = 1.0
        reading = asyncio.ensure_future(cache.get_service("greeter"))
        await asyncio.sleep(0.1)
        await registry.deregister(record(node="n2"))  # its event arrives during the answer
        assert node_ids(await reading) <= {"n1", "n2"}
        breakable.answer_delay = 0.0

        async def dropped() -> bool:
            return node_ids(cache.fresh("greeter") or []) == {"n1"}

        await async_wait_until(dropped, timeout=WAIT, what="the node deleted during the read to go")


async def test_cache_refetches_after_resync(small_buffer: Registry) -> None:
    async with cache_over(small_buffer, ttl=60) as cache:  # long: only the watch brings the burst
        await small_buffer.register(record(node="n0"))
        assert node_ids(await cache.get_service("greeter")) == {"n0"}
        burst = 5 * SMALL_BUFFER
        for i in range(1, burst + 1):  # more than the watcher holds: it sends RESYNC
            await small_buffer.register(record(node=f"n{i}"))
        await wait_for_nodes(cache, {f"n{i}" for i in range(burst + 1)})


def test_every_backend_is_in_the_suite() -> None:
    from microweave._backends import REGISTRIES

    # a built-in registry backend that is not in BACKENDS escapes the conformance suite
    assert set(REGISTRIES) <= set(BACKENDS)
