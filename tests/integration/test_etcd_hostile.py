"""A hostile (or broken) writer in etcd: whatever it puts under the registry prefix, lookups
and watches keep serving the honest records, and nothing raises, stops or grows.

go-micro writes one Service JSON holding exactly one node under `<prefix>/<service>/<node-id>`
('/' in names as '-'); a record that does not say the same as its key (another service's
name, another node's id, many nodes) or that cannot be decoded safely (Value trees nested
deeper than any extractor writes) is skipped like a value that is not JSON.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from engines.etcd import EtcdServer

from microweave.registry import Action, Endpoint, Node, Service, Value, Watcher
from microweave.registry import from_url as registry_from_url
from microweave.registry.etcd import EtcdRegistry
from microweave.registry.etcd._conn import rpc

WAIT = 15.0


def record(node: str, *, name: str = "greeter") -> Service:
    return Service(name=name, version="1.0.0", nodes=[Node(id=node, address="127.0.0.1:1")])


async def put(registry: EtcdRegistry, key: str, value: bytes) -> None:
    """A raw write under the registry's prefix, as any etcd client could make it."""
    full = f"{registry.options.prefix}/{key}".encode()
    await registry._conn.call("put", registry._conn_kv().Put, rpc.PutRequest(key=full, value=value))


async def delete(registry: EtcdRegistry, key: str) -> None:
    full = f"{registry.options.prefix}/{key}".encode()
    await registry._conn.call("delete", registry._conn_kv().DeleteRange, rpc.DeleteRangeRequest(key=full))


def nested(depth: int) -> bytes:
    """A Service JSON whose one endpoint's request Value nests `depth` levels deep."""
    value = '{"name":"x","type":"y"}'
    for _ in range(depth):
        value = '{"name":"a","type":"t","values":[' + value + "]}"
    return (
        '{"name":"greeter","endpoints":[{"name":"E","request":' + value + "}],"
        '"nodes":[{"id":"deep","address":"127.0.0.1:2"}]}'
    ).encode()


async def next_event(watcher: Watcher) -> tuple[Action, str, list[str]]:
    event = await asyncio.wait_for(anext(watcher), WAIT)
    return event.action, event.service.name, [n.id for n in event.service.nodes]


@pytest.fixture
async def registry(etcd_server: EtcdServer) -> EtcdRegistry:
    found = registry_from_url(etcd_server.url(f"/hostile-{time.monotonic_ns()}"))
    assert isinstance(found, EtcdRegistry)
    return found


async def ids(registry: EtcdRegistry, name: str = "greeter") -> set[str]:
    return {n.id for s in await registry.get_service(name) for n in s.nodes}


async def test_deeply_nested_values_are_skipped_and_the_watch_lives_on(registry: EtcdRegistry) -> None:
    async with registry:
        await registry.register(record("good"))
        one, every = await registry.watch("greeter"), await registry.watch()
        async with one, every:
            await put(registry, "greeter/deep", nested(3000))  # past msgspec's recursion limit
            await put(registry, "greeter/deep2", nested(200))  # decodes, but no extractor nests so
            await registry.register(record("after"))
            for watcher in (one, every):  # the watch tasks survived the records
                assert await next_event(watcher) == (Action.CREATE, "greeter", ["after"])
        assert await ids(registry) == {"good", "after"}
        assert [s.name for s in await registry.list_services()] == ["greeter"]


async def test_a_shallow_value_tree_is_kept(registry: EtcdRegistry) -> None:
    """The bound leaves room for every tree an extractor writes (go-micro's and ours: 3 deep)."""
    inner = Value("c", "C", [Value("d", "string")])
    tree = Value("req", "Req", [Value("a", "A", [Value("b", "B", [inner])])])
    service = Service("greeter", "1", {}, [Endpoint("Greeter.Hello", tree, None)], [])
    async with registry:
        await registry.register(service.with_nodes([Node("n1", "127.0.0.1:1")]))
        [found] = await registry.get_service("greeter")
        assert found.endpoints[0].request == tree


async def test_records_that_contradict_their_key_are_skipped(registry: EtcdRegistry) -> None:
    async with registry:
        await registry.register(record("good"))
        one, every = await registry.watch("greeter"), await registry.watch()
        async with one, every:
            # under greeter's prefix, a record of another service
            await put(registry, "greeter/x", record("x", name="billing").to_json())
            # a node claiming another node's id
            await put(
                registry, "greeter/fake", record("good").with_nodes([Node("good", "6.6.6.6:1")]).to_json()
            )
            # one key holding 10,000 nodes
            many = [Node(f"m{i}", "127.0.0.1:3") for i in range(10_000)]
            await put(registry, "greeter/m0", record("m0").with_nodes(many).to_json())
            # no nodes at all
            await put(registry, "greeter/none", record("none").with_nodes([]).to_json())
            # a key nested deeper than <service>/<node>
            await put(registry, "greeter/a/b", record("b").to_json())
            await delete(registry, "greeter/fake")  # nobody's node: no DELETE of "good"
            await registry.register(record("after"))
            for watcher in (one, every):
                assert await next_event(watcher) == (Action.CREATE, "greeter", ["after"])
        assert await ids(registry) == {"good", "after"}
        [good] = [n for s in await registry.get_service("greeter") for n in s.nodes if n.id == "good"]
        assert good.address == "127.0.0.1:1"
        assert await registry.get_service("billing") == []
        assert [s.name for s in await registry.list_services()] == ["greeter"]


async def test_names_with_slashes_still_match_their_keys(registry: EtcdRegistry) -> None:
    """go-micro writes '/' in a name or node id as '-' in the key: such records are honest."""
    async with registry:
        async with await registry.watch() as watcher:
            await registry.register(record("a/b", name="go.micro/srv"))
            assert await next_event(watcher) == (Action.CREATE, "go.micro/srv", ["a/b"])
        assert await ids(registry, "go.micro/srv") == {"a/b"}


async def test_a_prefix_holding_more_than_a_response_may_carry_says_so(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response limit (64 MiB; 64 KiB here) bounds what a lookup can make us hold: past it
    the error says what is wrong, not 'see etcd's log'."""
    from microweave.errors import RegistryError
    from microweave.registry.etcd import _conn

    monkeypatch.setattr(_conn, "MAX_MESSAGE", 64 * 1024)
    found = registry_from_url(etcd_server.url(f"/hostile-{time.monotonic_ns()}"))
    assert isinstance(found, EtcdRegistry)
    async with found as registry:
        for i in range(4):
            await put(registry, f"junk/{i}", b"x" * 30_000)
        assert await registry.get_service("greeter") == []  # another prefix: fine
        with pytest.raises(RegistryError) as caught:
            await registry.list_services()
        text = str(caught.value)
        assert repr(registry)[len("<EtcdRegistry ") : -1] in text
        assert "larger than" in text and "64 KiB" in text, text


async def test_a_watcher_s_backlog_is_bounded_in_bytes_too(
    registry: EtcdRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`watch_buffer` counts events, and a record may be up to 1 MiB: 10,000 of those unread
    would be 10 GB. Past MAX_BACKLOG bytes (64 MiB; 100 KB here) the watcher says RESYNC."""
    from microweave.registry.etcd import _watch

    monkeypatch.setattr(_watch, "MAX_BACKLOG", 100_000)
    big = {"blob": "x" * 30_000}
    async with registry, await registry.watch("greeter") as watcher:
        for i in range(5):  # 150 KB of records nobody reads yet
            node = Node(f"n{i}", "127.0.0.1:1", big)
            await registry.register(record(f"n{i}").with_nodes([node]))
        await registry.register(record("small"))
        first = await next_event(watcher)
        assert first == (Action.RESYNC, "greeter", [])
        assert await next_event(watcher) in [
            (Action.CREATE, "greeter", ["n4"]),
            (Action.CREATE, "greeter", ["small"]),
        ]
