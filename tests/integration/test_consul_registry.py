"""The Consul registry against real `consul agent -dev` processes and real service processes:
an agent outage under load, a SIGKILLed node, ACL tokens, an agent that is not there, and the
records as go-micro writes and reads them.

A -dev agent keeps nothing across a restart, so an outage here is the hard case: the agent
comes back empty and every node must register again by itself (its heartbeat's check pass
fails with 404, and it re-registers).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engines.consul import MANAGEMENT_TOKEN, ConsulAgent
from helpers import async_wait_until
from registry_kit import (
    WAIT,
    CallLoad,
    all_there,
    ids,
    next_event,
    sigkill_seen_by_a_watcher,
    start_greeter,
    wait_nodes,
)

from microweave import Client
from microweave.errors import RegistryError
from microweave.registry import Action, Endpoint, Node, Service, Value
from microweave.registry import from_url as registry_from_url
from microweave.registry.consul import ConsulRegistry
from microweave.testing import capture_logs

StartAgent = Callable[..., ConsulAgent]


def record(node: str = "n1", *, name: str = "greeter", color: str = "blue") -> Service:
    return Service(
        name=name,
        version="1.0.0",
        endpoints=[Endpoint(name="Greeter.SayHello", request=Value("HelloRequest", "HelloRequest"))],
        nodes=[Node(id=node, address="127.0.0.1:1", metadata={"c": color})],
    )


def consul(url: str, **options: Any) -> ConsulRegistry:
    registry = registry_from_url(url, **options)
    assert isinstance(registry, ConsulRegistry)
    return registry


# -- an agent outage under load, a crash ------------------------------------------------------


async def test_agent_down_10s_under_load(consul_agents: StartAgent, tmp_path: Path) -> None:
    ttl = 3.0
    agent = consul_agents()
    procs = [start_greeter(tmp_path, agent.url, ttl, n) for n in range(2)]
    try:
        async with consul(agent.url) as lookup:
            nodes = await wait_nodes(lookup, 2, procs)
        async with Client(registry=agent.url, timeout=10) as client, CallLoad(client, nodes) as load:
            await asyncio.to_thread(agent.stop)
            before = load.total()
            await asyncio.sleep(10)
            during = load.total() - before
            await asyncio.to_thread(agent.start)  # same ports, no state: every node is gone
            back = time.monotonic()

            async with consul(agent.url) as fresh:  # what a newcomer sees
                await async_wait_until(
                    lambda: all_there(fresh, nodes),
                    timeout=ttl + 10,
                    what="nodes after the agent's return",
                )
                seen_after = time.monotonic() - back
                # and they stay: their TTL checks are passed by heartbeats again
                await asyncio.sleep(max(0.0, back + 2 * ttl - time.monotonic()))
                assert await ids(fresh) == nodes
                assert set(agent.checks("greeter").values()) == {"passing"}
            await asyncio.sleep(0.5)
        assert load.failures == []
        assert during > 100, f"only {during} calls served during the outage"
        assert seen_after <= ttl + 2, f"re-registered {seen_after:.1f} s after the agent returned"
        for proc in procs:  # one line each way per process, whatever the number of heartbeats
            output = proc.output()
            assert output.count("(Consul agent) unreachable") == 1, output
            assert output.count("(Consul agent) reachable again") == 1, output
            assert "Traceback" not in output
    finally:
        for proc in procs:
            proc.stop()


async def test_sigkilled_node_is_critical_and_not_returned_within_ttl_plus_1(
    consul_server: ConsulAgent, tmp_path: Path
) -> None:
    ttl = 2.0
    consul_server.purge()
    proc = start_greeter(tmp_path, consul_server.url, ttl, 0)
    try:
        async with consul(consul_server.url) as registry:
            node, gone_after = await sigkill_seen_by_a_watcher(registry, proc, ttl)
            # critical, not deregistered: Consul removes it only a minute or more later
            assert consul_server.checks("greeter") == {node: "critical"}
            assert [s["ServiceID"] for s in consul_server.api("GET", "/v1/catalog/service/greeter")] == [node]
        assert gone_after <= ttl + 1, f"gone {gone_after:.2f} s after SIGKILL"
    finally:
        proc.stop()
        consul_server.purge()


# -- the heartbeat -------------------------------------------------------------------------------


async def test_heartbeat_is_a_check_pass_and_recreates_what_a_restart_lost(consul_agents: StartAgent) -> None:
    agent = consul_agents()
    async with consul(agent.url) as registry:
        await registry.register(record(), ttl=5)
        modified = agent.api("GET", "/v1/catalog/service/greeter")[0]["ModifyIndex"]
        for _ in range(5):
            await registry.register(record(), ttl=5)  # heartbeats: the registration is untouched
        assert agent.api("GET", "/v1/catalog/service/greeter")[0]["ModifyIndex"] == modified
        assert agent.checks("greeter") == {"n1": "passing"}

        await registry.register(record(color="green"), ttl=5)  # a changed record is written
        [service] = await registry.get_service("greeter")
        assert service.nodes[0].metadata == {"c": "green"}

        await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(agent.start)  # back empty
        assert await ids(registry) == set()
        await registry.register(record(color="green"), ttl=5)  # the next heartbeat
        assert await ids(registry) == {"n1"}
        assert agent.checks("greeter") == {"n1": "passing"}


async def test_a_new_node_is_never_seen_critical(consul_server: ConsulAgent) -> None:
    # go-micro registers a TTL check critical and passes it next; ours starts passing, so a
    # lookup or a watch right after register() already has the node
    consul_server.purge()
    try:
        async with consul(consul_server.url) as registry, await registry.watch("greeter") as watcher:
            await registry.register(record(), ttl=2)
            assert consul_server.checks("greeter") == {"n1": "passing"}
            assert await ids(registry) == {"n1"}
            assert (await next_event(watcher)).action is Action.CREATE
    finally:
        consul_server.purge()


async def test_requests_still_queued_at_close_end_without_leaking_a_session(
    consul_server: ConsulAgent,
) -> None:
    """A gather of registrations that fails leaves the rest running past `async with`'s close;
    those queued for a connection end with a clear error instead of opening a new pool that
    nobody closes (an unclosed aiohttp session once surfaced in a later test)."""
    consul_server.purge()
    try:
        registry = registry_from_url(consul_server.url)
        burst = [asyncio.ensure_future(registry.register(record(f"n{i}"), ttl=30)) for i in range(200)]
        await asyncio.sleep(0)  # every one started: 16 run, the rest wait for a slot
        await registry.aclose()
        outcomes = await asyncio.gather(*burst, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert refused, "the close came after every registration: nothing was queued"
        assert all(
            isinstance(o, RegistryError) and "closed while the request waited" in str(o) for o in refused
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
    finally:
        consul_server.purge()


async def test_watch_all_delivers_no_initial_snapshot(consul_server: ConsulAgent) -> None:
    consul_server.purge()
    try:
        async with consul(consul_server.url) as registry:
            await registry.register(record("before"), ttl=5)
            async with await registry.watch() as watcher:
                await registry.register(record("after"), ttl=5)
                event = await next_event(watcher)
                assert (event.action, [n.id for n in event.service.nodes]) == (Action.CREATE, ["after"])
    finally:
        consul_server.purge()


# -- tokens, and no agent ------------------------------------------------------------------------


async def test_bad_token(consul_agents: StartAgent) -> None:
    agent = consul_agents(acl=True)
    wrong = "0bad0bad-0000-4000-8000-000000000000"
    async with consul(f"{agent.url}?token={wrong}") as registry:
        assert wrong not in repr(registry)
        with capture_logs("DEBUG") as logs:
            for call in (
                registry.register(record(), ttl=2),
                registry.get_service("greeter"),
                registry.watch(),
            ):
                started = time.monotonic()
                with pytest.raises(RegistryError) as caught:
                    await call
                assert time.monotonic() - started < 2  # a refusal is not retried
                text = str(caught.value)
                assert agent.url in text and "check the ACL token" in text and "403" in text
                assert wrong not in text
        assert not [e for e in logs if wrong in str(e)]


async def test_a_good_token_works(consul_agents: StartAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = consul_agents(acl=True)
    async with consul(f"{agent.url}?token={MANAGEMENT_TOKEN}") as registry:
        assert MANAGEMENT_TOKEN not in repr(registry)
        await registry.register(record(), ttl=5)
        await registry.register(record(), ttl=5)  # a heartbeat
        assert await ids(registry) == {"n1"}
        async with await registry.watch() as watcher:
            await registry.deregister(record())
            assert (await next_event(watcher)).action is Action.DELETE
    # go-micro's (and Consul's CLI's) variable, when the URL has none; the URL's wins over it
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", MANAGEMENT_TOKEN)
    async with consul(agent.url) as registry:
        await registry.register(record(), ttl=5)
        assert await ids(registry) == {"n1"}
    async with consul(f"{agent.url}?token=0bad0bad-0000-4000-8000-000000000000") as registry:
        with pytest.raises(RegistryError, match="check the ACL token"):
            await registry.get_service("greeter")


async def test_a_token_revoked_mid_run(consul_agents: StartAgent) -> None:
    agent = consul_agents(acl=True)
    rules = 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }'
    agent.api("PUT", "/v1/acl/policy", {"Name": "services", "Rules": rules})
    secret = "7e57c0de-0000-4000-8000-00000000c0de"

    def grant() -> str:
        token = agent.api("PUT", "/v1/acl/token", {"SecretID": secret, "Policies": [{"Name": "services"}]})
        return str(token["AccessorID"])

    accessor = grant()
    with capture_logs("DEBUG", logger="microweave.registry") as logs:
        async with consul(f"{agent.url}?token={secret}", wait=0.5) as registry:
            await registry.register(record("a"), ttl=30)
            async with await registry.watch("greeter") as watcher:
                agent.api("DELETE", f"/v1/acl/token/{accessor}")
                with pytest.raises(RegistryError, match="check the ACL token"):
                    await registry.register(record("a"), ttl=30)  # a heartbeat: refused at once
                await async_wait_until(
                    lambda: asyncio.sleep(0, any("watch refused" in e["message"] for e in logs)),
                    timeout=WAIT,
                    what="the watch to be refused",
                )
                await asyncio.sleep(2)  # several refused reads
                grant()
                await registry.register(record("b"), ttl=30)
                event = await next_event(watcher)
                assert (event.action, event.service.nodes[0].id) == (Action.CREATE, "b")
    warnings = [e["message"] for e in logs if e["level"] == "WARNING"]
    assert len(warnings) == 2, warnings  # refused, accepted again: one line each
    assert "watch refused" in warnings[0] and "403" in warnings[0] and "accepted again" in warnings[1]
    assert not [e for e in logs if secret in str(e)]


async def test_agent_down_at_start_then_up(tmp_path: Path) -> None:
    agent = ConsulAgent(tmp_path)  # its ports, not yet listening
    with capture_logs("DEBUG", logger="microweave.registry") as logs:
        async with consul(agent.url, timeout=2) as registry:
            for _ in range(5):  # five failed heartbeats
                started = time.monotonic()
                with pytest.raises(RegistryError) as caught:
                    await registry.register(record(), ttl=2)
                assert time.monotonic() - started < 3  # three quick attempts, not a hang
                assert agent.url in str(caught.value)
                assert "is `consul agent` running at that address" in str(caught.value)
                assert "after 3 attempt(s)" in str(caught.value)
            with pytest.raises(RegistryError, match="is `consul agent` running"):
                await registry.watch()
            with pytest.raises(RegistryError, match="is `consul agent` running"):
                await registry.get_service("greeter")
            await asyncio.to_thread(agent.start)
            try:
                await registry.register(record(), ttl=2)
                assert await ids(registry) == {"n1"}
            finally:
                await asyncio.to_thread(agent.stop)
    warnings = [e for e in logs if e["level"] == "WARNING"]
    assert len(warnings) == 2, warnings  # unreachable, reachable again: one line per change
    assert "unreachable" in warnings[0]["message"] and "reachable again" in warnings[1]["message"]
    assert not [e for e in logs if "exception" in e]


async def test_a_service_with_a_bad_token_exits_at_once_with_one_line(
    consul_agents: StartAgent, tmp_path: Path
) -> None:
    agent = consul_agents(acl=True)
    secret = "5ec2e7-token-not-to-print"
    proc = start_greeter(tmp_path, f"{agent.url}?token={secret}", 2, 0)
    try:
        code = await asyncio.to_thread(proc.wait, 20)  # refused: not worth retrying at start
        output = proc.output()
    finally:
        proc.stop()
    assert code == 2, output
    assert "Traceback" not in output
    assert agent.url in output and "check the ACL token" in output
    assert secret not in output
    assert len([line for line in output.splitlines() if "ERROR" in line]) == 1, output


@pytest.mark.parametrize("watched", ["greeter", None], ids=["one-service", "all"])
async def test_watch_after_an_agent_restart_reports_only_nodes_that_do_not_come_back(
    consul_agents: StartAgent, watched: str | None
) -> None:
    agent = consul_agents()
    async with consul(agent.url, restart_grace=3) as registry:
        await registry.register(record("back"), ttl=30)
        await registry.register(record("lost"), ttl=30)
        async with await registry.watch(watched) as watcher:
            await asyncio.to_thread(agent.stop)
            await asyncio.sleep(1)  # a few failed reads
            await asyncio.to_thread(agent.start)  # back empty
            await async_wait_until(lambda: all_there(registry, set()), timeout=WAIT, what="the agent")
            await registry.register(record("back"), ttl=30)  # its heartbeat, within the grace
            await registry.register(record("new"), ttl=30)
            first = await next_event(watcher)
            second = await next_event(watcher)
            # "back" was never reported gone; "lost" is, once the grace is over
            assert [(e.action, e.service.nodes[0].id) for e in (first, second)] == [
                (Action.CREATE, "new"),
                (Action.DELETE, "lost"),
            ]
            assert second.service.nodes[0].address == "127.0.0.1:1"  # as last seen


async def test_without_restart_grace_a_restart_is_reported_at_once(consul_agents: StartAgent) -> None:
    agent = consul_agents()
    async with consul(agent.url, restart_grace=0) as registry:
        await registry.register(record("a"), ttl=30)
        async with await registry.watch("greeter") as watcher:
            await asyncio.to_thread(agent.stop)
            await asyncio.to_thread(agent.start)
            event = await next_event(watcher)
            assert (event.action, event.service.nodes[0].id) == (Action.DELETE, "a")
            await registry.register(record("a"), ttl=30)
            event = await next_event(watcher)
            assert (event.action, event.service.nodes[0].id) == (Action.CREATE, "a")


# -- bounds -------------------------------------------------------------------------------------


async def test_an_answer_over_max_response_is_refused(consul_server: ConsulAgent) -> None:
    consul_server.purge()
    try:
        async with consul(consul_server.url, max_response=4096) as registry:
            for i in range(10):  # each instance is ~1.5 kB of health answer
                await registry.register(record(f"n{i}"))
            with pytest.raises(RegistryError, match="larger than max_response=4096") as caught:
                await registry.get_service("greeter")
            assert consul_server.url in str(caught.value)
    finally:
        consul_server.purge()


async def test_watch_all_reads_at_most_max_queries_at_once(consul_server: ConsulAgent) -> None:
    consul_server.purge()
    try:
        async with consul(consul_server.url, max_queries=2) as registry:
            for i in range(12):
                await registry.register(record(f"a{i}", name=f"svc-{i}"))
            running = peak = reads = 0
            call = registry._agent.call

            async def counting(method: str, api: str, **kwargs: Any) -> Any:
                nonlocal running, peak, reads
                if not api.startswith("/v1/health/service/"):
                    return await call(method, api, **kwargs)
                running += 1
                reads += 1
                peak = max(peak, running)
                try:
                    await asyncio.sleep(0.01)  # let the others pile up, if they would
                    return await call(method, api, **kwargs)
                finally:
                    running -= 1

            registry._agent.call = counting  # type: ignore[method-assign]
            async with await registry.watch() as watcher:
                assert (reads, peak) == (12, 2)  # the first snapshot
                # a node with the same tags as its sibling and no check: every service is re-read
                await registry.register(record("b", name="svc-3"))
                event = await next_event(watcher)
                assert (event.action, event.service.name, event.service.nodes[0].id) == (
                    Action.CREATE,
                    "svc-3",
                    "b",
                )
                await async_wait_until(
                    lambda: asyncio.sleep(0, reads >= 24), timeout=WAIT, what="the re-reads"
                )
                assert peak == 2
    finally:
        consul_server.purge()


# -- go-micro's encoding ---------------------------------------------------------------------------


def packed(data: bytes) -> str:
    return zlib.compress(data).hex()


def unpacked(tag: str) -> Any:
    return zlib.decompress(bytes.fromhex(tag[2:]))


async def test_the_agent_holds_go_micro_s_encoding(consul_server: ConsulAgent) -> None:
    consul_server.purge()
    service = Service(
        name="greeter",
        version="1.2.3",
        metadata={"owner": "tests"},
        endpoints=[Endpoint(name="Greeter.A", metadata={"stream": "unary"}), Endpoint(name="Greeter.B")],
        nodes=[
            Node(id="greeter-1", address="127.0.0.1:50071", metadata={"protocol": "grpc", "server": "grpc"})
        ],
    )
    try:
        async with consul(consul_server.url) as registry:
            await registry.register(service, ttl=2)
        raw = consul_server.api("GET", "/v1/agent/service/greeter-1")
        assert (raw["ID"], raw["Service"], raw["Address"], raw["Port"]) == (
            "greeter-1",
            "greeter",
            "127.0.0.1",
            50071,
        )
        tags = raw["Tags"]
        pairs = [json.loads(unpacked(t)) for t in tags if t.startswith("t-")]
        assert sorted(pairs, key=json.dumps) == [{"protocol": "grpc"}, {"server": "grpc"}]  # one per pair
        endpoints = [json.loads(unpacked(t))["name"] for t in tags if t.startswith("e-")]
        assert endpoints == ["Greeter.A", "Greeter.B"]  # one tag per endpoint, in order
        assert [unpacked(t) for t in tags if t.startswith("v-")] == [b"1.2.3"]  # raw text, not JSON
        checks = consul_server.api("GET", "/v1/agent/checks").values()
        [check] = [c for c in checks if c["ServiceID"] == "greeter-1"]
        assert (check["CheckID"], check["Type"], check["Status"]) == ("service:greeter-1", "ttl", "passing")
    finally:
        consul_server.purge()


async def test_records_go_micro_wrote_are_read(consul_server: ConsulAgent) -> None:
    consul_server.purge()
    endpoint = {"name": "Greeter.Hello", "request": None, "response": None, "metadata": {}}
    go = [  # as go-micro registers them: current hex(zlib) tags, and the legacy plain ones
        {
            "ID": "go-1",
            "Name": "greeter",
            "Address": "10.0.0.1",
            "Port": 8080,
            "Tags": [
                "t-" + packed(b'{"protocol":"grpc"}'),
                "t-" + packed(b'{"broker":"http"}'),
                "e-" + packed(json.dumps(endpoint).encode()),
                "v-" + packed(b"latest"),
            ],
        },
        {
            "ID": "go-old",
            "Name": "greeter",
            "Address": "10.0.0.2",
            "Port": 8081,
            "Tags": ['t={"protocol":"mucp"}', "e=" + json.dumps(endpoint), "v=old"],
        },
        {
            "ID": "go-bad",
            "Name": "greeter",
            "Address": "10.0.0.3",
            "Port": 1,
            "Tags": ["e-zz", "t-00", "v-zz"],
        },
    ]
    try:
        for body in go:
            consul_server.api("PUT", "/v1/agent/service/register", body)
        async with consul(consul_server.url) as registry:
            by_version = {s.version: s for s in await registry.get_service("greeter")}
            assert set(by_version) == {"latest", "old", ""}
            latest = by_version["latest"]
            assert latest.nodes == [Node("go-1", "10.0.0.1:8080", {"protocol": "grpc", "broker": "http"})]
            assert [e.name for e in latest.endpoints] == ["Greeter.Hello"]
            old = by_version["old"]
            assert old.nodes == [Node("go-old", "10.0.0.2:8081", {"protocol": "mucp"})]
            assert [e.name for e in old.endpoints] == ["Greeter.Hello"]
            garbage = by_version[""]  # tags that do not decode are skipped, the node stays
            assert (garbage.nodes, garbage.endpoints) == ([Node("go-bad", "10.0.0.3:1", {})], [])
            assert {(s.name, s.version) for s in await registry.list_services()} == {
                ("greeter", "latest"),
                ("greeter", "old"),
            }
    finally:
        consul_server.purge()
