"""The etcd registry against a real etcd and real service processes: outages, crashes, leases,
watch resumption and compaction, authentication and TLS.

Outages come two ways: stopping etcd (its leases and history survive a restart), or cutting
the link between one registry and etcd with a TCP proxy while etcd keeps running (so changes,
compactions and lease expiries can happen while the registry cannot see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from engines import free_port
from engines.etcd import ROOT_PASSWORD, EtcdServer
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
from microweave.errors import ConfigurationError, RegistryError
from microweave.registry import Action, Node, Service, Watcher
from microweave.registry import from_url as registry_from_url
from microweave.registry.etcd import EtcdRegistry
from microweave.testing import capture_logs


def record(node: str = "n1", *, name: str = "greeter", color: str = "blue") -> Service:
    return Service(
        name=name, version="1.0.0", nodes=[Node(id=node, address="127.0.0.1:1", metadata={"c": color})]
    )


def etcd(url: str, **options: object) -> EtcdRegistry:
    registry = registry_from_url(url, **options)
    assert isinstance(registry, EtcdRegistry)
    return registry


class Proxy:
    """A TCP proxy on a fixed port in front of etcd; `cut()` drops every connection and
    refuses new ones until `restore()`, while etcd itself keeps running."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: seconds each chunk waits before it is passed on (a slow or far network)
        self.delay = 0.0

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            self._transports.add(w.transport)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(pipe)
            pipe.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._transports.discard(dst.transport)
            dst.transport.abort()


@pytest.fixture
async def proxy(etcd_server: EtcdServer) -> AsyncIterator[Proxy]:
    proxy = Proxy(etcd_server.port)
    await proxy.restore()
    try:
        yield proxy
    finally:
        await proxy.cut()


# -- outages with real service processes --------------------------------------------------------


async def test_etcd_down_10s_under_load(etcd_own: EtcdServer, tmp_path: Path) -> None:
    ttl = 3.0
    url = etcd_own.url("/outage")
    procs = [start_greeter(tmp_path, url, ttl, n) for n in range(2)]
    try:
        async with etcd(url) as lookup:
            nodes = await wait_nodes(lookup, 2, procs)
        async with Client(registry=url, timeout=10) as client, CallLoad(client, nodes) as load:
            with capture_logs("WARNING", logger="microweave.registry") as logs:
                await asyncio.to_thread(etcd_own.stop)
                before = load.total()
                await asyncio.sleep(10)
                during = load.total() - before
                await asyncio.to_thread(etcd_own.start)
                back = time.monotonic()

                async with etcd(url) as fresh:  # a new registry: what a newcomer would see
                    visible = await async_wait_until(
                        lambda: all_there(fresh, nodes),
                        timeout=ttl + 10,
                        what="nodes after etcd's return",
                    )
                    assert visible
                    seen_after = time.monotonic() - back
                    # still there once every lease etcd extended on restart has run out: the
                    # nodes' heartbeats reach etcd again
                    await asyncio.sleep(max(0.0, back + ttl + 2 - time.monotonic()))
                    assert await ids(fresh) == nodes
            await asyncio.sleep(0.5)
        assert load.failures == []
        # the client's watch: one line when etcd went away, one when it came back, no traceback
        watch_lines = [e["message"] for e in logs if " watch " in e["message"]]
        assert len(watch_lines) == 2, watch_lines
        assert "unreachable" in watch_lines[0] and "reachable again" in watch_lines[1]
        assert not [e for e in logs if "exception" in e]
        assert during > 100, f"only {during} calls served during the outage"
        assert seen_after <= ttl + 2, f"re-registered {seen_after:.1f} s after etcd returned"
    finally:
        for proc in procs:
            proc.stop()


async def test_etcd_back_without_its_data(etcd_own: EtcdServer, tmp_path: Path) -> None:
    """etcd returns empty (no volume kept): the nodes' next heartbeats find their lease gone,
    grant a new one and put their keys again; a watcher resyncs instead of waiting for
    revisions the new store has not reached."""
    ttl = 3.0
    url = etcd_own.url("/wiped")
    procs = [start_greeter(tmp_path, url, ttl, n) for n in range(2)]
    try:
        async with etcd(url) as watching:
            nodes = await wait_nodes(watching, 2, procs)
            async with await watching.watch("greeter") as watcher:
                for _ in range(20):  # move the old store's revision well ahead
                    await watching.register(record("filler"))
                    await watching.deregister(record("filler"))
                while (await next_event(watcher)).action is not Action.DELETE:
                    pass
                await asyncio.to_thread(etcd_own.stop)
                etcd_own.wipe()
                await asyncio.to_thread(etcd_own.start)
                back = time.monotonic()
                async with etcd(url) as fresh:
                    await async_wait_until(lambda: all_there(fresh, nodes), timeout=ttl + 10, what="re-put")
                    seen_after = time.monotonic() - back
                actions = []
                while Action.RESYNC not in actions:
                    actions.append((await next_event(watcher)).action)
        assert seen_after <= ttl + 2, f"re-registered {seen_after:.1f} s after etcd returned empty"
    finally:
        for proc in procs:
            proc.stop()


async def test_sigkilled_node_is_gone_within_ttl_plus_1(etcd_registry_url: str, tmp_path: Path) -> None:
    ttl = 2.0
    proc = start_greeter(tmp_path, etcd_registry_url, ttl, 0)
    try:
        async with etcd(etcd_registry_url) as registry:
            _, gone_after = await sigkill_seen_by_a_watcher(registry, proc, ttl)
        assert gone_after <= ttl + 1, f"gone {gone_after:.2f} s after SIGKILL"
    finally:
        proc.stop()


# -- leases and the keep-alive stream ----------------------------------------------------------


async def test_one_lease_and_one_stream_over_many_heartbeats(etcd_own: EtcdServer) -> None:
    started = etcd_own.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")
    async with etcd(etcd_own.url()) as registry:
        await registry.register(record("a"), ttl=1)
        await registry.register(record("b"), ttl=1)
        key = "/micro/registry/greeter/a"
        written = json.loads(etcd_own.ctl("get", key, "-w", "json"))["kvs"][0]["mod_revision"]
        for _ in range(40):  # 40 heartbeats of each node over 4 TTLs
            await asyncio.sleep(0.1)
            await registry.register(record("a"), ttl=1)
            await registry.register(record("b"), ttl=1)
        assert await ids(registry) == {"a", "b"}
        leases = [
            line
            for line in etcd_own.ctl("lease", "list").splitlines()
            if line.strip() and "found" not in line
        ]
        assert len(leases) == 1, leases
        assert (registry.leases_granted, registry.keepalive_streams) == (1, 1)
        assert etcd_own.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive") - started == 1
        # a heartbeat never rewrites the value: the key's last write is still the first one
        assert json.loads(etcd_own.ctl("get", key, "-w", "json"))["kvs"][0]["mod_revision"] == written
        # a changed record is written again, on the same lease
        await registry.register(record("a", color="green"), ttl=1)
        [service] = await registry.get_service("greeter")
        assert {n.id: n.metadata["c"] for n in service.nodes} == {"a": "green", "b": "blue"}
        assert registry.leases_granted == 1


async def test_a_heartbeat_restores_a_key_deleted_or_overwritten_under_it(etcd_server: EtcdServer) -> None:
    """`etcdctl del --prefix /micro/registry` by an operator, or another writer's put on our
    key, while the lease lives: the heartbeat used to see an unchanged record and write
    nothing, so the node stayed gone (or replaced, or without its lease: never expiring)
    until its process restarted."""
    path = f"/restore-{time.monotonic_ns()}"
    async with etcd(etcd_server.url(path)) as registry, etcd(etcd_server.url(path)) as other:
        await registry.register(record("a"), ttl=5)
        key = f"{path}/greeter/a"
        with capture_logs(logging.WARNING, logger="microweave.registry") as logs:
            for damage in (
                lambda: etcd_server.ctl("del", "--prefix", f"{path}/"),
                lambda: etcd_server.ctl("put", key, "not json"),
                lambda: etcd_server.ctl("put", key, record("a").to_json().decode()),  # no lease
                lambda: etcd_server.ctl("put", key, record("a", color="red").to_json().decode()),
            ):
                damage()
                await registry.register(record("a"), ttl=5)  # the heartbeat
                await registry.register(record("a"), ttl=5)  # and the next: nothing to repair
                [service] = await other.get_service("greeter")
                assert service.nodes == record("a").nodes
                stored = json.loads(etcd_server.ctl("get", key, "-w", "json"))["kvs"][0]
                assert stored.get("lease"), "the key is back on a lease: it expires with the node"
        # said once (per key), naming it and the likely cause
        assert [e["message"] for e in logs if "someone else" in e["message"]] == [
            f"{etcd_server.url(path)}: {key} was deleted or changed by someone else; registering"
            " it again (if this repeats, two nodes may share this id)"
        ]


async def test_keepalive_stream_reconnects_after_etcd_restarts(etcd_own: EtcdServer) -> None:
    async with etcd(etcd_own.url()) as registry:
        await registry.register(record(), ttl=2)
        await registry.register(record(), ttl=2)
        await asyncio.to_thread(etcd_own.stop)
        with pytest.raises(RegistryError, match=r"etcd://127\.0\.0\.1:\d+/micro/registry: "):
            await registry.register(record(), ttl=2)
        await asyncio.to_thread(etcd_own.start)
        back = time.monotonic()
        while time.monotonic() - back < 5:  # heartbeats for 2.5 TTLs after the restart
            with contextlib.suppress(RegistryError):  # gRPC may need a moment to reconnect
                await registry.register(record(), ttl=2)
            await asyncio.sleep(0.5)
        assert await ids(registry) == {"n1"}
        assert registry.keepalive_streams == 2  # the first, and one after the restart
        assert etcd_own.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive") == 1
        assert registry.leases_granted == 1  # etcd kept the lease across its restart


async def test_lease_lost_while_unreachable_is_granted_again(etcd_server: EtcdServer, proxy: Proxy) -> None:
    path = f"/lease-{time.monotonic_ns()}"
    async with (
        etcd(f"etcd://127.0.0.1:{proxy.port}{path}") as registry,
        etcd(etcd_server.url(path)) as direct,
    ):
        await registry.register(record(), ttl=1)
        await proxy.cut()
        # etcd expires the lease while the registry cannot reach it: the node is gone
        await async_wait_until(lambda: _gone(direct), timeout=WAIT, what="the lease to expire")
        with pytest.raises(RegistryError):
            await registry.register(record(), ttl=1)
        await proxy.restore()

        async def heartbeat() -> bool:
            with contextlib.suppress(RegistryError):
                await registry.register(record(), ttl=1)
                return True
            return False

        with capture_logs(logging.WARNING, logger="microweave.registry") as logs:
            await async_wait_until(heartbeat, timeout=WAIT, interval=0.2, what="a heartbeat to get through")
        assert await ids(direct) == {"n1"}  # the next heartbeat put the node back
        assert registry.leases_granted == 2
        # an expired lease is no stranger's doing: no warning blaming someone else
        assert not [e for e in logs if "someone else" in e["message"]], logs
        await asyncio.sleep(2)  # and keeps it there on the new lease
        await registry.register(record(), ttl=1)
        assert await ids(direct) == {"n1"}


async def _gone(registry: EtcdRegistry) -> bool:
    return await ids(registry) == set()


# -- watch resumption --------------------------------------------------------------------------


async def test_watch_resumes_from_its_revision_after_a_cut(etcd_server: EtcdServer, proxy: Proxy) -> None:
    path = f"/resume-{time.monotonic_ns()}"
    async with (
        etcd(f"etcd://127.0.0.1:{proxy.port}{path}") as watching,
        etcd(etcd_server.url(path)) as writer,
    ):
        await writer.register(record("a"))
        async with await watching.watch("greeter") as watcher:
            await writer.register(record("b"))
            assert (await next_event(watcher)).action is Action.CREATE
            await proxy.cut()
            # changes the watcher cannot see while they happen
            await writer.register(record("c"))
            await writer.register(record("b", color="green"))
            await writer.deregister(record("a"))
            await asyncio.sleep(0.5)
            await proxy.restore()
            events = [await next_event(watcher) for _ in range(3)]
            assert [(e.action, e.service.nodes[0].id) for e in events] == [
                (Action.CREATE, "c"),
                (Action.UPDATE, "b"),
                (Action.DELETE, "a"),
            ]
            await writer.register(record("d"))
            event = await next_event(watcher)  # nothing repeated, nothing extra
            assert (event.action, event.service.nodes[0].id) == (Action.CREATE, "d")


async def test_watch_resyncs_when_its_revision_was_compacted(etcd_server: EtcdServer, proxy: Proxy) -> None:
    path = f"/compact-{time.monotonic_ns()}"
    async with (
        etcd(f"etcd://127.0.0.1:{proxy.port}{path}") as watching,
        etcd(etcd_server.url(path)) as writer,
        await watching.watch() as watcher,
    ):
        await writer.register(record("a"))
        assert (await next_event(watcher)).action is Action.CREATE
        await proxy.cut()
        await writer.register(record("b"))
        await writer.deregister(record("a"))
        revision = json.loads(etcd_server.ctl("get", "x", "-w", "json"))["header"]["revision"]
        etcd_server.ctl("compact", str(revision))
        with capture_logs("WARNING", logger="microweave.registry") as logs:
            await proxy.restore()
            event = await next_event(watcher)
        assert (event.action, event.service.name, event.service.nodes) == (Action.RESYNC, "", [])
        assert any("compacted" in entry["message"] for entry in logs)
        # what a consumer does on RESYNC: re-read; then it goes on from the present
        assert await ids(watching) == {"b"}
        await writer.register(record("c"))
        event = await next_event(watcher)
        assert (event.action, event.service.nodes[0].id) == (Action.CREATE, "c")


# -- errors: wrong address, server down at start, bad credentials -----------------------------


async def test_server_down_at_start_then_up(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path)  # its ports, not yet listening
    url = server.url()
    with capture_logs("DEBUG", logger="microweave.registry") as logs:
        async with etcd(url, timeout=2) as registry:
            for _ in range(5):  # five failed attempts, as a heartbeat would make them
                started = time.monotonic()
                with pytest.raises(RegistryError) as caught:
                    await registry.register(record(), ttl=2)
                assert time.monotonic() - started < 3  # one attempt, bounded by its timeout
                assert f"etcd://{server.address}/micro/registry" in str(caught.value)
                assert "is etcd running there" in str(caught.value)
            with pytest.raises(RegistryError, match="is etcd running there"):
                await registry.watch()
            await asyncio.to_thread(server.start)
            try:
                await async_wait_until(
                    lambda: _registers(registry), timeout=WAIT, what="etcd to be reachable"
                )
                assert await ids(registry) == {"n1"}
            finally:
                await asyncio.to_thread(server.stop)
    # each failed call raised to its caller, which logs its own state changes (see the service
    # tests below): the registry adds no line of its own, and no traceback
    assert [e for e in logs if e["level"] in ("WARNING", "ERROR")] == []


async def _registers(registry: EtcdRegistry) -> bool:
    with contextlib.suppress(RegistryError):
        await registry.register(record(), ttl=2)
        return True
    return False


async def test_a_service_started_before_etcd_waits_for_it(etcd_own: EtcdServer, tmp_path: Path) -> None:
    await asyncio.to_thread(etcd_own.stop)
    proc = start_greeter(tmp_path, etcd_own.url("/late"), 2, 0)
    try:
        await asyncio.sleep(3)  # the service retries meanwhile
        assert proc.alive(), proc.output()
        await asyncio.to_thread(etcd_own.start)
        async with etcd(etcd_own.url("/late")) as registry:
            await wait_nodes(registry, 1, [proc])
        output = proc.output()
        assert "Traceback" not in output
        unreachable = [line for line in output.splitlines() if "unreachable" in line]
        assert len(unreachable) == 1, output  # one line for the state change, not one per retry
        assert f"etcd://{etcd_own.address}/late" in unreachable[0]
    finally:
        proc.stop()


async def test_a_service_with_bad_credentials_exits_with_one_line(
    etcd_auth: EtcdServer, tmp_path: Path
) -> None:
    secret = "hunter2-not-it"
    proc = start_greeter(tmp_path, etcd_auth.url("/x", username="root", password=secret), 2, 0)
    try:
        code = await asyncio.to_thread(proc.wait, 30)  # at once: waiting does not fix a password
        output = proc.output()
    finally:
        proc.stop()
    assert code == 2, output
    assert "Traceback" not in output and secret not in output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, output
    assert f"etcd://{etcd_auth.address}/x" in errors[0] and "check the username and password" in errors[0]


async def test_bad_credentials(etcd_auth: EtcdServer) -> None:
    wrong = "not-the-password-xyz"
    etcd_auth.ctl("user", "add", "bob:bob-secret-pw", user=f"root:{ROOT_PASSWORD}")  # no roles
    cases = [  # credentials, code, what the error says to do
        ({"username": "root", "password": wrong}, 401, "check the username and password"),
        ({}, 401, "give username and password"),
        ({"username": "bob", "password": "bob-secret-pw"}, 403, "needs read/write permission"),
    ]
    for credentials, code, hint in cases:
        url = etcd_auth.url(**credentials)
        async with etcd(url) as registry:
            assert "root" not in repr(registry) and "bob" not in repr(registry)
            for call in (
                registry.register(record(), ttl=2),
                registry.get_service("greeter"),
                registry.watch(),
            ):
                with pytest.raises(RegistryError) as caught:
                    await call
                text = str(caught.value)
                assert f"etcd://{etcd_auth.address}/micro/registry" in text
                assert hint in text, text
                assert wrong not in text and "secret" not in text
                assert caught.value.code == code  # not 503: waiting does not fix it
    # user:password@ in the URL works as username= and password= do, and is never shown
    async with etcd(f"etcd://root:{wrong}@{etcd_auth.address}") as registry:
        assert repr(registry) == f"<EtcdRegistry etcd://{etcd_auth.address}/micro/registry>"
        with pytest.raises(RegistryError, match="check the username and password") as caught:
            await registry.get_service("greeter")
        assert wrong not in str(caught.value)
    async with etcd(f"etcd://root:{ROOT_PASSWORD.replace('-', '%2D')}@{etcd_auth.address}") as registry:
        assert await registry.get_service("greeter") == []


async def test_auth_works_and_survives_a_restart(etcd_auth: EtcdServer) -> None:
    async with etcd(etcd_auth.url(), username="root", password=ROOT_PASSWORD) as registry:
        assert ROOT_PASSWORD not in repr(registry)
        async with await registry.watch("greeter") as watcher:
            await registry.register(record(), ttl=2)
            assert (await next_event(watcher)).action is Action.CREATE
            # etcd forgets its simple tokens when it restarts: the registry authenticates again
            await asyncio.to_thread(etcd_auth.stop)
            await asyncio.to_thread(etcd_auth.start)
            await async_wait_until(
                lambda: _registers(registry), timeout=WAIT, what="a heartbeat after restart"
            )
            await registry.register(record(color="green"), ttl=2)
            event = await next_event(watcher)  # the watch came back too, and resumed
            assert (event.action, event.service.nodes[0].metadata) == (Action.UPDATE, {"c": "green"})
        assert await ids(registry) == {"n1"}


# -- TLS -------------------------------------------------------------------------------------


async def test_tls_with_client_certificate(etcd_tls: EtcdServer) -> None:
    assert etcd_tls.tls is not None
    certs = etcd_tls.tls
    query = {
        "tls": "true",
        "ca": str(certs / "ca.pem"),
        "cert": str(certs / "client.pem"),
        "key": str(certs / "client.key"),
    }
    async with etcd(etcd_tls.url(**query)) as registry:  # everything in the URL
        async with await registry.watch("greeter") as watcher:
            await registry.register(record(), ttl=2)
            assert (await next_event(watcher)).action is Action.CREATE
        assert await ids(registry) == {"n1"}
    async with etcd(
        etcd_tls.url(), ca=query["ca"], cert=query["cert"], key=query["key"]
    ) as registry:  # kwargs
        assert await ids(registry) == {"n1"}
    # without a client certificate, against the system's CAs only, or without TLS: refused
    no_ca = {"tls": True, "cert": query["cert"], "key": query["key"]}
    for options in ({"ca": query["ca"]}, no_ca, {}):
        async with etcd(etcd_tls.url(), timeout=2, **options) as registry:
            with pytest.raises(RegistryError, match=f"etcd://{etcd_tls.address}/micro/registry: "):
                await registry.get_service("greeter")


# -- URL options and foreign records ---------------------------------------------------------


async def test_url_options(etcd_server: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    path = f"/opts-{time.monotonic_ns()}"
    # several endpoints: the dead first one is skipped; the URL's ttl applies to register()
    async with etcd(f"etcd://{dead},{etcd_server.address}{path}?ttl=1") as registry:
        assert repr(registry) == f"<EtcdRegistry etcd://{dead},{etcd_server.address}{path}>"
        await registry.register(record())
        assert await ids(registry) == {"n1"}
        await async_wait_until(lambda: _gone(registry), timeout=WAIT, what="the URL's TTL to expire")
    for url, complaint in (
        (etcd_server.url(colour="red"), "unknown option"),
        (etcd_server.url(tll="3"), r"unknown option\(s\) tll \(did you mean ttl\?\)"),
        ("etcd://localhost:2379,127.0.0.1:2379", "must be IP addresses"),
        (etcd_server.url(username="root"), "both username and password"),
        (etcd_server.url(cert="/x.pem"), "both cert= and key="),
        (etcd_server.url(ttl="-1"), "not a positive number"),
        ("etcd://127.0.0.1:99999", "port from 1 to 65535"),  # gRPC took it as 34463
        ("etcd://127.0.0.1:abc", "port from 1 to 65535"),
        ("etcd://127.0.0.1:0", "port from 1 to 65535"),
        ("etcd://127.0.0.1:", "port from 1 to 65535"),  # gRPC took it as 443
        ("etcd://:2379", "not host:port"),
        ("etcd://root@127.0.0.1:2379", "both username and password"),
        ("etcd://u:secretpw@127.0.0.1:0", r"^etcd://127\.0\.0\.1:0/micro/registry: "),
    ):
        with pytest.raises(ConfigurationError, match=complaint) as caught:
            registry_from_url(url)
        assert "secretpw" not in str(caught.value)


async def test_records_that_are_not_services_are_skipped(etcd_server: EtcdServer) -> None:
    path = f"/foreign-{time.monotonic_ns()}"
    async with etcd(etcd_server.url(path)) as registry:
        await registry.register(record("good"))
        async with await registry.watch("greeter") as watcher:
            etcd_server.ctl("put", f"{path}/greeter/bad", "not json")
            big = '{"name":"greeter","nodes":[{"id":"big","address":"' + "y" * (1 << 20) + '"}]}'
            etcd_server.ctl("put", f"{path}/greeter/big", stdin=big)
            await registry.register(record("after"))
            event = await next_event(watcher)  # the foreign values made no events
            assert (event.action, event.service.nodes[0].id) == (Action.CREATE, "after")
        assert await ids(registry) == {"good", "after"}
        assert {s.name for s in await registry.list_services()} == {"greeter"}


async def test_an_etcd_far_away_is_reached(etcd_server: EtcdServer, proxy: Proxy) -> None:
    """150 ms each way (a WAN, or TLS to another region): connecting takes several round trips.
    gRPC's connection deadline is its minimum reconnect backoff, which was set to 100 ms for
    quick returns: no connection ever completed, and every call failed as 'unreachable'."""
    proxy.delay = 0.15
    async with etcd(f"etcd://127.0.0.1:{proxy.port}/far-{time.monotonic_ns()}") as registry:
        async with await registry.watch("greeter") as watcher:
            await registry.register(record(), ttl=5)
            assert (await next_event(watcher)).action is Action.CREATE
        assert await ids(registry) == {"n1"}
    # and a first endpoint that accepts but never answers does not hold up the next one
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"etcd://127.0.0.1:{silent.getsockname()[1]},{etcd_server.address}"
        async with etcd(url, timeout=3) as registry:
            await registry.list_services()


def test_cli_on_an_empty_an_unreachable_and_a_misspelt_etcd(etcd_server: EtcdServer, tmp_path: Path) -> None:
    """`microweave --registry etcd://...` as a new user meets it: one line saying what is
    wrong (and what to do), never a traceback; a password given in the URL is never shown."""
    from cli_helpers import assert_clean, cli, registry_env

    env = registry_env(tmp_path)
    empty = etcd_server.url(f"/empty-{time.monotonic_ns()}")
    listed = cli("--registry", empty, "services", env=env)
    assert listed.returncode == 0 and "no services in" in listed.stdout + listed.stderr
    missing = cli("--registry", empty, "describe", "greeter", env=env)
    assert missing.returncode != 0 and "greeter not found" in missing.stderr
    down = f"etcd://u:pw-secret@127.0.0.1:{free_port()}"
    for args in (("services",), ("describe", "greeter"), ("call", "greeter", "G.H", "{}")):
        done = cli("--registry", down, *args, env=env)
        assert done.returncode != 0, done
        assert_clean(done.stdout + done.stderr)
        assert "is etcd running there" in done.stderr and "pw-secret" not in done.stderr, done.stderr
    typo = cli("--registry", etcd_server.url(tll="3"), "services", env=env)
    assert typo.returncode != 0 and "did you mean ttl?" in typo.stderr


# -- what aclose() leaves behind ---------------------------------------------------------------


def _held() -> tuple[int, int, int]:
    """Open file descriptors, threads and asyncio tasks (besides the current one) right now."""
    import os
    import threading

    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return len(os.listdir("/proc/self/fd")), threading.active_count(), len(others)


async def _reconnecting(watchers: list[Watcher]) -> None:
    """Until each watcher has tried at least one new stream since now."""
    opened = [w.streams for w in watchers]  # type: ignore[attr-defined]

    async def tried() -> bool:
        return all(w.streams > n for w, n in zip(watchers, opened, strict=True))  # type: ignore[attr-defined]

    await async_wait_until(tried, timeout=WAIT, what="the watches to be reconnecting")


async def test_aclose_leaves_nothing_behind_even_mid_reconnect(etcd_server: EtcdServer, proxy: Proxy) -> None:
    path = f"/close-{time.monotonic_ns()}"
    async with etcd(etcd_server.url(path)) as warm:  # gRPC's own threads and pollers, once
        await warm.list_services()
    await asyncio.sleep(0.2)
    before = _held()
    for cut in (False, True):
        registry = etcd(f"etcd://127.0.0.1:{proxy.port}{path}")
        await registry.register(record(), ttl=5)
        await registry.register(record(), ttl=5)  # the keep-alive stream
        watchers = [await registry.watch(), await registry.watch("greeter")]
        await registry.get_service("greeter")
        if cut:
            await proxy.cut()
            await _reconnecting(watchers)
        await registry.aclose()
        if cut:
            await proxy.restore()
        await async_wait_until(
            lambda: asyncio.sleep(0, _held() == before), timeout=5, what=f"{before} held again"
        )


async def test_a_closed_registry_says_so_and_opens_nothing(etcd_registry_url: str) -> None:
    """A late call after aclose() (a background task racing shutdown) used to open a new
    channel that nobody would close."""
    registry = etcd(etcd_registry_url)
    await registry.register(record(), ttl=5)
    await registry.aclose()
    before = _held()
    for call in (
        lambda: registry.get_service("greeter"),
        lambda: registry.list_services(),
        lambda: registry.register(record(), ttl=5),
        lambda: registry.deregister(record()),
        lambda: registry.watch(),
    ):
        with pytest.raises(RegistryError, match=r"etcd://.* is closed"):
            await call()
    await registry.aclose()  # twice is fine
    after = _held()  # gRPC may still be releasing the closed channel's poller: fewer is fine
    assert all(now <= then for now, then in zip(after, before, strict=True)), (after, before)
