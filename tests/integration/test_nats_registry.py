"""The NATS registry with real processes on a real nats-server: crashes, outages, go-micro's
message shapes, and the NATS micro services protocol ($SRV) seen by NATS's own `nats` CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from engines import free_port, run
from engines.nats import NatsServer, nats_server
from helpers import ServiceProcess, ServiceProcesses, async_wait_until

from microweave import Client
from microweave._backends import parse_url
from microweave.errors import ConfigurationError, MicroError, RegistryError
from microweave.registry import Action, Event, Node, Service, Watcher
from microweave.registry.cache import RegistryCache
from microweave.registry.nats import NatsRegistry
from microweave.registry.nats.srv import token
from microweave.testing import capture_logs

TTL = 2.0
WAIT = 15.0


@pytest.fixture
async def registry(nats_engine: NatsServer) -> AsyncIterator[NatsRegistry]:
    async with NatsRegistry([nats_engine.address]) as registry:
        yield registry


def start_greeter(processes: ServiceProcesses, server: NatsServer, ttl: float = TTL) -> ServiceProcess:
    return processes.start(
        "greeter.py", "--ttl", str(ttl), name="greeter", env={"MICRO_REGISTRY": server.url}, wait=False
    )


async def wait_node(registry: NatsRegistry, process: ServiceProcess) -> Node:
    async def found() -> Node | None:
        assert process.alive(), process.output()
        nodes = [n for s in await registry.get_service("greeter") for n in s.nodes]
        return nodes[0] if nodes else None

    node = await async_wait_until(found, timeout=30, what="the greeter to answer lookups")
    process.node = {"id": node.id, "address": node.address}
    return node


async def until(watcher: Watcher, action: Action, node_id: str) -> Event:
    while True:
        event = await asyncio.wait_for(anext(watcher), WAIT)
        if event.action is action and node_id in {n.id for n in event.service.nodes}:
            return event


async def node_ids(registry: NatsRegistry | RegistryCache) -> set[str]:
    return {n.id for s in await registry.get_service("greeter") for n in s.nodes}


# -- a node that dies --------------------------------------------------------------------------


async def test_a_killed_node_is_gone_within_ttl_plus_one_second(
    processes: ServiceProcesses, nats_engine: NatsServer, registry: NatsRegistry
) -> None:
    """SIGKILL: no deregistration, no goodbye. Lookups stop seeing it (its answers die with its
    connection), watchers report DELETE once its heartbeats stay away for the TTL, and a
    watch-fed cache drops it: all within TTL + 1 s of the kill."""
    watcher = await registry.watch("greeter")
    cache = RegistryCache(registry, ttl=60)  # long: only the watch can remove the node
    try:
        process = start_greeter(processes, nats_engine)
        node = await wait_node(registry, process)
        assert node.id in await node_ids(cache)
        await until(watcher, Action.CREATE, node.id)
        # alive for twice its TTL: its heartbeats keep it, no DELETE
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(until(watcher, Action.DELETE, node.id), 2 * TTL)

        killed = time.monotonic()
        process.signal(signal.SIGKILL)
        process.wait(10)

        async def lookup_gone() -> float:
            async def gone() -> bool:
                return node.id not in await node_ids(registry)

            await async_wait_until(gone, timeout=WAIT, what="lookups to drop the node")
            return time.monotonic() - killed

        async def watch_gone() -> float:
            await until(watcher, Action.DELETE, node.id)
            return time.monotonic() - killed

        async def cache_gone() -> float:
            async def gone() -> bool:
                return node.id not in await node_ids(cache)

            await async_wait_until(gone, timeout=WAIT, what="the cache to drop the node")
            return time.monotonic() - killed

        lookup, watch, cached = await asyncio.gather(lookup_gone(), watch_gone(), cache_gone())
        print(f"gone after SIGKILL: lookups {lookup:.2f} s, watch {watch:.2f} s, cache {cached:.2f} s")
        assert max(lookup, watch, cached) <= TTL + 1, (lookup, watch, cached)
    finally:
        await cache.aclose()
        await watcher.aclose()


async def test_a_stopped_node_deregisters(
    processes: ServiceProcesses, nats_engine: NatsServer, registry: NatsRegistry
) -> None:
    watcher = await registry.watch("greeter")
    async with watcher:
        process = start_greeter(processes, nats_engine, ttl=30)  # the TTL plays no part here
        node = await wait_node(registry, process)
        await until(watcher, Action.CREATE, node.id)
        process.signal(signal.SIGTERM)
        event = await until(watcher, Action.DELETE, node.id)
        assert event.service.name == "greeter" and event.service.version == "1.0.0"
        assert process.wait(20) == 0
        assert node.id not in await node_ids(registry)


# -- NATS away -----------------------------------------------------------------------------------


async def test_nats_down_at_start_is_a_clear_error_without_credentials() -> None:
    port = free_port()  # nobody listens there
    url = parse_url(f"nats://alice:s3cret@127.0.0.1:{port}?token=t0ken&ttl=5")
    async with NatsRegistry.from_url(url) as registry:
        assert repr(registry) == f"<NatsRegistry nats://127.0.0.1:{port}>"
        for attempt in (registry.register(Service("greeter", nodes=[Node("n1", "127.0.0.1:1")]), ttl=2),
                        registry.get_service("greeter"), registry.watch()):  # fmt: skip
            with pytest.raises(RegistryError) as raised:
                await attempt
            message = str(raised.value)
            assert f"nats://127.0.0.1:{port}" in message, message
            assert not {"alice", "s3cret", "t0ken"} & set(message.replace(":", " ").split()), message
            assert "s3cret" not in message and "t0ken" not in message


async def test_a_node_started_before_nats_registers_when_it_comes(
    processes: ServiceProcesses, tmp_path: Path
) -> None:
    """The node waits for NATS (the service's own start policy), backing off, and registers
    once nats-server is up; each side logs the outage once, without a traceback."""
    server = NatsServer(tmp_path)  # its ports are chosen, nothing listens yet
    process = start_greeter(processes, server)
    try:
        await asyncio.sleep(1.5)
        assert process.alive(), process.output()
        server.start()
        async with NatsRegistry([server.address]) as registry:
            await wait_node(registry, process)
        output = process.output()
        assert "Traceback" not in output, output
        # one line from the service's registration and one from the NATS link, when it went
        # down; one from the link when it came back
        assert output.count("unreachable, retrying") <= 2, output
        assert output.count(f"nats://127.0.0.1:{server.port} (NATS registry) reachable again") == 1, output
    finally:
        process.stop()
        server.stop()


async def test_nats_killed_mid_run_reconnects_and_reregisters(
    processes: ServiceProcesses, nats_engine: NatsServer
) -> None:
    """nats-server SIGKILLed under a running node and a client: the client's lookups fail with
    an error naming the URL, both sides retry with backoff and log the outage once each way,
    and once NATS is back the node answers again (within TTL + 2 s) with no restart."""
    process = start_greeter(processes, nats_engine)
    async with NatsRegistry([nats_engine.address]) as registry:
        node = await wait_node(registry, process)
        watcher = await registry.watch("greeter")
        with capture_logs(logging.DEBUG, logger="microweave.registry") as logs:
            nats_engine.kill()

            async def refused() -> bool:
                try:
                    await registry.get_service("greeter")
                except RegistryError as exc:
                    assert nats_engine.url in str(exc)
                    return True
                return False

            await async_wait_until(refused, timeout=WAIT, what="lookups to fail")
            await asyncio.sleep(2.0)  # a few reconnect attempts while NATS is away
            attempts = registry.link.outage.attempts
            assert 2 <= attempts <= 15, attempts  # backed off, not a busy loop
            nats_engine.start()
            back = time.monotonic()

            async def answers() -> bool:
                try:
                    return node.id in await node_ids(registry)
                except RegistryError:
                    return False

            await async_wait_until(answers, timeout=WAIT, what="the node to answer again")
            visible = time.monotonic() - back
            event = await asyncio.wait_for(anext(watcher), WAIT)
            assert event.action is Action.RESYNC
        await watcher.aclose()
    print(f"node visible again {visible:.2f} s after NATS returned")
    assert visible <= TTL + 2
    warnings = [e["message"] for e in logs if e["level"] == "WARNING"]
    assert len(warnings) == 2 and "unreachable" in warnings[0] and "again" in warnings[1], warnings
    assert all("exception" not in e for e in logs)
    # the node itself said it once each way, no traceback, and kept running
    assert process.alive()
    output = process.output()
    assert "Traceback" not in output, output
    # heartbeats during the outage were kept, not failed: only the NATS link says it was away
    assert output.count("unreachable, retrying") == 1, output
    assert output.count("(NATS registry) unreachable, retrying") == 1, output
    assert output.count("reachable again") == 1, output


# -- go-micro's messages -------------------------------------------------------------------------

# what go-micro v5's NATS registry publishes (Go's encoding/json of registry.Result): nil maps
# and slices are null, the Result's fields are capitalised, and there is no TTL
GO_ANNOUNCE = {
    "Service": {
        "name": "go.greeter",
        "version": "latest",
        "metadata": None,
        "endpoints": [
            {
                "name": "Greeter.Hello",
                "request": {
                    "name": "Request",
                    "type": "Request",
                    "values": [{"name": "name", "type": "string", "values": None}],
                },
                "response": {"name": "Response", "type": "Response", "values": None},
                "metadata": None,
            }
        ],
        "nodes": [
            {
                "id": "go.greeter-6f1c",
                "address": "127.0.0.1:50071",
                "metadata": {
                    "protocol": "grpc",
                    "server": "grpc",
                    "transport": "grpc",
                    "registry": "nats",
                    "broker": "http",
                },
            }
        ],
    },
    "Action": "create",
}  # fmt: skip


async def test_go_micro_announces_and_answers_are_read(
    nats_engine: NatsServer, registry: NatsRegistry
) -> None:
    peer = await nats.connect(nats_engine.url)
    try:

        async def answer(msg: Any) -> None:  # a go-micro node answering micro.nats.query
            query = json.loads(msg.data)
            if query["Action"] == "list" or query["Service"]["name"] == "go.greeter":
                await peer.publish(msg.reply, json.dumps(GO_ANNOUNCE["Service"]).encode())

        await peer.subscribe("micro.nats.query", cb=answer)
        await peer.flush()
        async with await registry.watch() as watcher:
            await peer.publish("micro.nats.watch", json.dumps(GO_ANNOUNCE).encode())
            event = await asyncio.wait_for(anext(watcher), WAIT)
        assert event.action is Action.CREATE
        service = event.service
        assert (service.name, service.version, service.metadata) == ("go.greeter", "latest", {})
        [endpoint] = service.endpoints
        assert endpoint.name == "Greeter.Hello" and endpoint.metadata == {}
        assert endpoint.request is not None and endpoint.request.values is not None
        assert endpoint.request.values[0].name == "name"
        [node] = service.nodes
        assert (node.id, node.address, node.metadata["protocol"]) == (
            "go.greeter-6f1c",
            "127.0.0.1:50071",
            "grpc",
        )

        [found] = await registry.get_service("go.greeter")
        assert found == service
        assert "go.greeter" in {s.name for s in await registry.list_services()}
    finally:
        await peer.close()


async def test_our_nodes_answer_go_micro_queries(nats_engine: NatsServer, registry: NatsRegistry) -> None:
    """A go-micro asker's query (its exact JSON) gets our Service JSON, shaped as go-micro's
    registry.Service decodes it; the watch announce has go-micro's Result shape."""
    record = Service(
        "greeter", version="1.0.0", nodes=[Node("greeter-1", "127.0.0.1:5", {"protocol": "grpc"})]
    )
    peer = await nats.connect(nats_engine.url)
    try:
        announces: list[dict[str, Any]] = []

        async def heard(msg: Any) -> None:
            announces.append(json.loads(msg.data))

        await peer.subscribe("micro.nats.watch", cb=heard)
        await peer.flush()
        ttl = 30.0  # long: a stalled machine must not expire the record before the query comes
        await registry.register(record, ttl=ttl)
        go_query = {
            "Service": {"name": "greeter", "version": "", "metadata": None, "endpoints": None, "nodes": None},
            "Action": "get",
        }
        inbox = peer.new_inbox()
        replies: list[dict[str, Any]] = []

        async def reply(msg: Any) -> None:
            replies.append(json.loads(msg.data))

        await peer.subscribe(inbox, cb=reply)
        await peer.publish("micro.nats.query", json.dumps(go_query).encode(), reply=inbox)
        await async_wait_until(
            lambda: asyncio.sleep(0, bool(replies and announces)),
            what=f"a reply and an announce ({go_query})",
        )
        [answer] = replies
        assert {k: answer[k] for k in ("name", "version", "metadata", "endpoints", "nodes")} == {
            "name": "greeter",
            "version": "1.0.0",
            "metadata": {},
            "endpoints": [],
            "nodes": [{"id": "greeter-1", "address": "127.0.0.1:5", "metadata": {"protocol": "grpc"}}],
        }
        assert answer["ttl"] == ttl  # ours; Go's decoder ignores a field it does not know
        [announce] = announces
        assert set(announce) == {"Service", "Action"} and announce["Action"] == "create"
        assert announce["Service"]["nodes"] == answer["nodes"]
    finally:
        await peer.close()


# -- the NATS micro services protocol ------------------------------------------------------------


async def control(url: str, subject: str, wait: float = 1.0) -> list[dict[str, Any]]:
    """Every reply to a $SRV request within `wait` seconds."""
    nc = await nats.connect(url)
    try:
        replies: list[dict[str, Any]] = []
        inbox = nc.new_inbox()

        async def collect(msg: Any) -> None:
            replies.append(json.loads(msg.data))

        await nc.subscribe(inbox, cb=collect)
        await nc.publish(subject, b"", reply=inbox)
        await asyncio.sleep(wait)
        return replies
    finally:
        await nc.close()


async def test_nodes_answer_the_micro_services_protocol(
    processes: ServiceProcesses, nats_engine: NatsServer, registry: NatsRegistry
) -> None:
    process = start_greeter(processes, nats_engine)
    node = await wait_node(registry, process)
    name, node_token = "greeter", token(node.id)
    url = nats_engine.url

    identity = {"name", "id", "version", "metadata"}
    for subject in ("$SRV.PING", f"$SRV.PING.{name}", f"$SRV.PING.{name}.{node_token}"):
        [ping] = await control(url, subject)
        assert set(ping) == identity | {"type"}, ping
        assert ping["type"] == "io.nats.micro.v1.ping_response"
        assert (ping["name"], ping["id"], ping["version"]) == ("greeter", node_token, "1.0.0")
        assert ping["metadata"]["microweave.node"] == node.id
        assert ping["metadata"]["microweave.address"] == node.address
    for subject in ("$SRV.PING.billing", f"$SRV.PING.{name}.nobody", "$SRV.PONG", f"$SRV.PING.{name}.x.y"):
        assert await control(url, subject, wait=0.3) == [], subject

    [info] = await control(url, f"$SRV.INFO.{name}")
    assert set(info) == identity | {"type", "description", "endpoints"}
    assert info["type"] == "io.nats.micro.v1.info_response"
    endpoints = {e["name"]: e for e in info["endpoints"]}
    # ADR-32 names are [A-Za-z0-9_-]+: the dot becomes _, the real name is in the metadata
    assert set(endpoints) == {"Greeter_SayHello", "Greeter_CallBack"}
    say_hello = endpoints["Greeter_SayHello"]
    assert set(say_hello) == {"name", "subject", "queue_group", "metadata"}
    assert say_hello["subject"] == "/greeter.Greeter/SayHello"
    assert say_hello["metadata"]["microweave.endpoint"] == "Greeter.SayHello"

    # real counts from the node's server pipeline: 3 calls, and 1 that fails (CallBack calls
    # a `caller` service that does not exist)
    async with Client(registry=registry) as client:
        for _ in range(3):
            await client.call("greeter", "Greeter.SayHello", {"name": "nats"})
        with pytest.raises(MicroError):
            await client.call("greeter", "Greeter.CallBack", {"name": "nats"}, timeout=10)
    [stats] = await control(url, f"$SRV.STATS.{name}.{node_token}")
    assert set(stats) == identity | {"type", "started", "endpoints"}
    counted = {e["name"]: e for e in stats["endpoints"]}
    say_hello, call_back = counted["Greeter_SayHello"], counted["Greeter_CallBack"]
    assert (say_hello["num_requests"], say_hello["num_errors"], say_hello["last_error"]) == (3, 0, "")
    assert 0 < say_hello["average_processing_time"] <= say_hello["processing_time"]
    assert say_hello["average_processing_time"] == say_hello["processing_time"] // 3
    assert (call_back["num_requests"], call_back["num_errors"]) == (1, 1)
    assert call_back["last_error"].startswith("404:"), call_back
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    started = datetime.fromisoformat(stats["started"].replace("Z", "+00:00"))
    assert started.tzinfo is not None
    for endpoint in stats["endpoints"]:
        assert set(endpoint) == {
            "name", "subject", "queue_group", "num_requests", "num_errors", "last_error",
            "processing_time", "average_processing_time",
        }  # fmt: skip
        assert all(isinstance(endpoint[k], int) for k in ("num_requests", "num_errors", "processing_time"))


async def test_the_nats_cli_lists_our_nodes(
    processes: ServiceProcesses, nats_engine: NatsServer, registry: NatsRegistry, nats_cli: str
) -> None:
    """NATS's own tooling (`nats micro ls/info/stats`) sees a microweave node."""
    process = start_greeter(processes, nats_engine)
    node = await wait_node(registry, process)
    server = ["-s", nats_engine.url]

    listed = run([nats_cli, *server, "micro", "ls", "--json"], timeout=60)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert (entry["name"], entry["id"], entry["version"]) == ("greeter", token(node.id), "1.0.0")

    info = run([nats_cli, *server, "micro", "info", "greeter", "--json"], timeout=60)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)["info"]
    assert described["id"] == token(node.id)
    assert {e["name"] for e in described["endpoints"]} == {"Greeter_SayHello", "Greeter_CallBack"}

    # the CLI validates every reply against ADR-32's JSON schemas and drops those that fail
    stats = run([nats_cli, *server, "micro", "stats", "greeter", "--json"], timeout=60)
    assert stats.returncode == 0, stats.stderr
    [counted] = json.loads(stats.stdout)
    assert counted["id"] == token(node.id) and len(counted["endpoints"]) == 2
    text = run([nats_cli, *server, "micro", "ls"], timeout=60)
    assert text.returncode == 0 and token(node.id) in text.stdout, text.stdout + text.stderr


# -- URL options and credentials -----------------------------------------------------------------


async def test_url_options() -> None:
    registry = NatsRegistry.from_url(
        parse_url("nats://127.0.0.1:1,127.0.0.1:2?ttl=3&peer_ttl=60&query_timeout=0.5&watch_buffer=7")
    )
    assert (registry.ttl, registry.peer_ttl, registry.query_timeout, registry.watch_buffer) == (3, 60, 0.5, 7)
    assert repr(registry) == "<NatsRegistry nats://127.0.0.1:1,127.0.0.1:2>"
    assert registry.link.servers == ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
    defaults = NatsRegistry.from_url(parse_url("nats://"), ttl=4)  # a keyword argument wins
    assert (defaults.ttl, defaults.peer_ttl, defaults.url) == (4, 90, "nats://127.0.0.1:4222")
    assert NatsRegistry.from_url(parse_url("nats://h:1?ttl=9"), ttl=4).ttl == 4
    for bad in ("nats://h:1?colour=red", "nats://h:1?ttl=soon", "nats://h:1?query_timeout=0"):
        with pytest.raises(ConfigurationError):
            NatsRegistry.from_url(parse_url(bad))


async def test_the_url_ttl_applies_to_registrations_without_one(nats_engine: NatsServer) -> None:
    async with NatsRegistry.from_url(parse_url(f"{nats_engine.url}?ttl=1")) as registry:
        await registry.register(Service("greeter", nodes=[Node("n1", "127.0.0.1:1")]))  # no heartbeat
        assert await node_ids(registry) == {"n1"}

        async def expired() -> bool:
            return await node_ids(registry) == set()

        await async_wait_until(expired, timeout=WAIT, what="the registration to expire")


@pytest.mark.parametrize(
    ("auth", "good", "bad"),
    [
        (["--user", "alice", "--pass", "s3cret"], "alice:s3cret@{a}", "alice:wrong@{a}"),
        (
            ["--user", "alice", "--pass", "s3cret"],
            "{a}?user=alice&password=s3cret",
            "{a}?user=alice&password=x",
        ),
        (["--auth", "t0ken"], "{a}?token=t0ken", "{a}?token=wrong"),
    ],
)
async def test_credentials(tmp_path: Path, auth: list[str], good: str, bad: str) -> None:
    with nats_server(tmp_path, extra=auth) as server:
        async with NatsRegistry.from_url(parse_url("nats://" + good.format(a=server.address))) as registry:
            await registry.register(Service("greeter", nodes=[Node("n1", "127.0.0.1:1")]), ttl=5)
            assert await node_ids(registry) == {"n1"}
        async with NatsRegistry.from_url(parse_url("nats://" + bad.format(a=server.address))) as registry:
            with pytest.raises(RegistryError) as raised:
                await registry.get_service("greeter")
            message = str(raised.value)
            assert server.url in message and "uthorization" in message, message
            assert not any(secret in message for secret in ("s3cret", "wrong", "t0ken", "alice")), message


async def test_every_server_of_the_url_is_tried(nats_engine: NatsServer) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nobody listens there
    async with NatsRegistry.from_url(parse_url(f"nats://{dead},{nats_engine.address}")) as registry:
        await registry.register(Service("greeter", nodes=[Node("n1", "127.0.0.1:1")]), ttl=5)
        assert await node_ids(registry) == {"n1"}


async def test_a_lookup_ends_early_once_replies_stop(nats_engine: NatsServer) -> None:
    """A lookup waits `query_timeout` only when nobody answers; with answers it ends at the
    first pause (compared in the same test, no absolute durations)."""
    async with NatsRegistry([nats_engine.address], query_timeout=2.0) as registry:
        await registry.register(Service("greeter", nodes=[Node("n1", "127.0.0.1:1")]), ttl=30)
        await registry.register(Service("greeter", nodes=[Node("n2", "127.0.0.1:2")]), ttl=30)
        started = time.monotonic()
        assert await node_ids(registry) == {"n1", "n2"}
        found = time.monotonic() - started
        started = time.monotonic()
        assert await registry.get_service("nobody") == []
        missing = time.monotonic() - started
        assert found < missing / 4, (found, missing)


async def test_a_process_finds_its_own_nodes_when_its_reply_misses_the_window(
    nats_engine: NatsServer,
) -> None:
    """A busy loop answers its own lookup late (500 lookups at once on a loaded machine did):
    the nodes registered through this registry count without their reply; others' still need
    theirs, inside the window (here too short for any)."""
    blink = 1e-9
    async with (
        NatsRegistry([nats_engine.address], query_timeout=blink) as own,
        NatsRegistry([nats_engine.address], query_timeout=blink) as other,
    ):
        await own.register(Service("greeter", nodes=[Node("n1", "127.0.0.1:1")]), ttl=30)
        assert await node_ids(own) == {"n1"}
        assert {s.name for s in await own.list_services()} == {"greeter"}
        assert await node_ids(other) == set()
