"""The per-node admin HTTP endpoint (/metrics, /health, /health/live, /health/ready) and the
readiness it and gRPC health report: over real sockets, a real etcd for registry outages."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import msgspec
import pytest
from engines import free_port
from engines.etcd import EtcdServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import async_wait_until
from prometheus_client import REGISTRY, Counter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from registry_kit import Breakable

import microweave.admin.http as admin_http
from microweave import Client, Service
from microweave.admin import AdminServer, Readiness
from microweave.registry import Registry
from microweave.registry import Service as ServiceRecord
from microweave.registry import from_url as registry_from_url

WAIT = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Hello(msgspec.Struct):
    name: str


class Greeter:
    #: set by a test to hold SayHello until it says so (`entered` is set once it waits)
    release: asyncio.Event | None = None
    entered = asyncio.Event()

    async def say_hello(self, req: Hello) -> Hello:
        if Greeter.release is not None:
            Greeter.entered.set()
            await Greeter.release.wait()
        return Hello(name=f"hello {req.name}")


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with registry_from_url(f"memory://admin-{uuid.uuid4().hex}") as registry:
        yield registry


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def greeter(registry: Registry | str, **options: Any) -> Service:
    service = Service("greeter", registry=registry, drain_delay=0, grace=5, **options)
    service.handler(Greeter)
    return service


async def get(http: aiohttp.ClientSession, address: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(f"http://{address}{path}", **kw) as reply:
        body = await reply.read()
        if reply.content_type == "application/json":
            return reply.status, json.loads(body)
        return reply.status, body.decode()


async def grpc_statuses(service: Service) -> set[int]:
    """grpc.health.v1's status for the whole server ("") and each of its services."""
    async with grpc.aio.insecure_channel(service.addresses["grpc"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
            for name in ("", "greeter.Greeter")
        }


async def node_metadata(registry: Registry, name: str = "greeter") -> list[dict[str, str]]:
    return [n.metadata for s in await registry.get_service(name) for n in s.nodes]


# -- what it serves ---------------------------------------------------------------------------


async def test_metrics_is_prometheus_text_and_openmetrics_on_request(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    name = f"admin_test_{uuid.uuid4().hex[:8]}"
    counter = Counter(name, "a user's own metric, on the default registry")
    try:
        counter.inc(3)
        async with greeter(registry) as service:
            assert service.admin_address is not None
            async with http.get(f"http://{service.admin_address}/metrics") as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain")
                text = await reply.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert families[name].samples[0].value == 3.0
            assert "process_cpu_seconds" in families or "python_gc_objects_collected" in families

            accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with http.get(f"http://{service.admin_address}/metrics", headers=accept) as reply:
                assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
                text = await reply.text()
            assert text.endswith("# EOF\n")
            assert any(f.name == name for f in parse_openmetrics(text))

            # an Accept header prometheus_client cannot read: the classic text format, not a 500
            odd = {"Accept": "application/openmetrics-text; version=abc"}
            async with http.get(f"http://{service.admin_address}/metrics", headers=odd) as reply:
                assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    finally:
        REGISTRY.unregister(counter)


async def test_health_bodies_and_codes_of_a_serving_node(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    async with greeter(registry, version="1.2.3") as service:
        address = service.admin_address
        assert address is not None
        status, body = await get(http, address, "/health")
        assert status == 200
        assert body["status"] == "up"
        assert body["checks"] == [
            {"name": "lifecycle", "status": "up"},
            {"name": "registration", "status": "up"},
        ]
        info = body["info"]
        assert (info["service"], info["version"], info["node"], info["phase"]) == (
            "greeter", "1.2.3", service.node_id, "serving",
        )  # fmt: skip
        assert await get(http, address, "/health/live") == (200, {"status": "up"})
        assert await get(http, address, "/health/ready") == (200, {"status": "up"})
        async with http.head(f"http://{address}/health/ready") as reply:
            assert reply.status == 200 and await reply.read() == b""
        assert await grpc_statuses(service) == {SERVING}


async def test_the_node_advertises_its_admin_address_and_it_answers(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    async with greeter(registry) as service:
        [metadata] = await node_metadata(registry)
        assert metadata["admin_address"] == service.admin_address
        # its own port, beside the transports'
        assert metadata["admin_address"] not in (service.addresses["grpc"], service.addresses["tcp"])
        assert await get(http, metadata["admin_address"], "/health/live") == (200, {"status": "up"})
    assert service.admin_address is None


async def test_unknown_paths_other_methods_and_bodies_are_refused(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    async with greeter(registry) as service:
        base = f"http://{service.admin_address}"
        status, body = await get(http, str(service.admin_address), "/nope")
        assert status == 404 and body["error"] == "not found" and "/health/ready" in body["paths"]
        for method in ("POST", "PUT", "DELETE"):
            async with http.request(method, f"{base}/health") as reply:
                assert reply.status == 405, method
                assert reply.headers["Allow"] == "GET, HEAD"
        # a request with a body: refused before it is read, the connection closed
        async with http.get(f"{base}/health", data=b"x" * 4096) as reply:
            assert reply.status == 413
        # headers beyond the bound: refused by the parser
        async with http.get(f"{base}/health", headers={"X-Big": "a" * 16_000}) as reply:
            assert reply.status in (400, 431)
        assert await get(http, str(service.admin_address), "/health/live") == (200, {"status": "up"})


def _raw_request(address: str, head: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_a_huge_declared_body_is_refused_without_being_read(registry: Registry) -> None:
    async with greeter(registry) as service:
        address = str(service.admin_address)
        # announces 1 GiB and sends none of it: answered at once and closed
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
        reply = await asyncio.to_thread(_raw_request, address, head)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:100]


async def test_connections_beyond_the_cap_are_closed_and_silent_ones_time_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_http, "KEEPALIVE_TIMEOUT", 0.5)
    readiness = Readiness("capped")
    await readiness.start()
    server = AdminServer(readiness, "127.0.0.1:0", max_connections=2)
    await server.start()
    try:
        host, port = str(server.address).rsplit(":", 1)
        opened = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
        # the third is closed by the server as it is accepted; the first two stay open
        assert await asyncio.wait_for(opened[2][0].read(), WAIT) == b""
        opened[0][1].write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(opened[0][0].readline(), WAIT)).startswith(b"HTTP/1.1 200")
        # a connection that sends nothing is closed after the keep-alive timeout
        assert await asyncio.wait_for(opened[1][0].read(), WAIT) == b""
        for _, writer in opened:
            writer.close()
    finally:
        await server.stop()
        await readiness.stop()


async def test_admin_address_false_or_off_opens_no_port(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with greeter(registry, admin_address=False) as service:
        assert service.admin_address is None
        [metadata] = await node_metadata(registry)
        assert "admin_address" not in metadata
    monkeypatch.setenv("MICRO_ADMIN_ADDRESS", "off")
    async with greeter(registry) as service:
        assert service.admin_address is None
        [metadata] = await node_metadata(registry)
        assert "admin_address" not in metadata


async def test_micro_admin_address_is_honoured(
    registry: Registry, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("MICRO_ADMIN_ADDRESS", f"127.0.0.1:{port}")
    async with greeter(registry) as service:
        assert service.admin_address == f"127.0.0.1:{port}"
        assert await get(http, f"127.0.0.1:{port}", "/health/ready") == (200, {"status": "up"})
        # the argument wins over the environment
        async with greeter(registry, admin_address="127.0.0.1:0") as other:
            assert other.admin_address not in (None, f"127.0.0.1:{port}")


# -- readiness through a node's life ----------------------------------------------------------


async def test_a_restarted_node_is_ready_again_on_its_own_transports(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    from microweave.transport.grpc import GrpcServer
    from microweave.transport.tcp import TcpServer

    service = greeter(registry, transports=[GrpcServer(), TcpServer()])
    for _ in range(2):  # the same transports, stopped (draining) and started again
        async with service:
            assert await get(http, str(service.admin_address), "/health/ready") == (200, {"status": "up"})
            assert await grpc_statuses(service) == {SERVING}
        assert service.health.phase == "stopped" and not service.health.live


async def test_not_ready_while_starting_then_ready(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    """The registry is down when the node starts: it listens (live, gRPC answers) but is not
    ready until it could register."""
    etcd = EtcdServer(tmp_path)  # ports chosen, not started yet
    try:
        service = greeter(etcd.url("/starting"), ttl=3)
        starting = asyncio.ensure_future(service.start())
        try:

            async def admin_up() -> bool:
                return service.admin_address is not None and bool(service.addresses.get("grpc"))

            await async_wait_until(admin_up, timeout=WAIT, what="the admin endpoint and gRPC to listen")
            address = str(service.admin_address)
            status, body = await get(http, address, "/health/ready")
            assert status == 503 and body["status"] == "down"
            assert {"name": "lifecycle", "status": "down", "error": "starting"} in body["checks"]
            assert await get(http, address, "/health/live") == (200, {"status": "up"})
            assert await grpc_statuses(service) == {NOT_SERVING}
            assert not starting.done()

            await asyncio.to_thread(etcd.start)
            await asyncio.wait_for(starting, WAIT)
            assert await get(http, address, "/health/ready") == (200, {"status": "up"})
            assert await grpc_statuses(service) == {SERVING}
        finally:
            if not starting.done():
                starting.cancel()
            await service.stop()
    finally:
        etcd.stop()


class GatedDeregister(Breakable):
    """The real registry, whose deregister() waits until the test opens the gate."""

    def __init__(self, inner: Registry) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.deregistering = asyncio.Event()

    async def deregister(self, service: ServiceRecord) -> None:
        self.deregistering.set()
        await self.gate.wait()
        await self.inner.deregister(service)


async def test_ready_goes_down_at_the_start_of_a_drain_before_deregistration_live_stays_up(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    gated = GatedDeregister(registry)
    service = Service("greeter", registry=gated, drain_delay=1.0, grace=10)
    service.handler(Greeter)
    Greeter.release, Greeter.entered = asyncio.Event(), asyncio.Event()
    try:
        await service.start()
        address = str(service.admin_address)
        async with Client(registry=registry, transports=("tcp",), timeout=WAIT) as client:
            in_flight = asyncio.ensure_future(
                client.call("greeter", "Greeter.SayHello", Hello("slow"), response=Hello)
            )
            await asyncio.wait_for(Greeter.entered.wait(), WAIT)
            assert await get(http, address, "/health/ready") == (200, {"status": "up"})

            stopping = asyncio.ensure_future(service.stop())

            async def not_ready() -> bool:
                return (await get(http, address, "/health/ready"))[0] == 503

            await async_wait_until(not_ready, timeout=WAIT, what="/health/ready to go down")
            # not ready, yet still in the registry: deregistration has not completed
            assert [n.id for s in await registry.get_service("greeter") for n in s.nodes] == [service.node_id]
            status, body = await get(http, address, "/health/ready")
            assert status == 503 and body["checks"] == [
                {"name": "lifecycle", "status": "down", "error": "draining"}
            ]
            assert await get(http, address, "/health/live") == (200, {"status": "up"})
            assert await grpc_statuses(service) == {NOT_SERVING}

            gated.gate.set()  # deregistration completes; the node drains for drain_delay

            async def gone() -> bool:
                return not await registry.get_service("greeter")

            await async_wait_until(gone, timeout=WAIT, what="the node to leave the registry")
            assert await get(http, address, "/health/live") == (200, {"status": "up"})
            assert (await get(http, address, "/health/ready"))[0] == 503
            assert not stopping.done()

            Greeter.release.set()  # the in-flight call finishes within the grace
            assert await asyncio.wait_for(in_flight, WAIT) == Hello("hello slow")
            await asyncio.wait_for(stopping, WAIT)
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(http, address, "/health/live")  # the admin port closed last
    finally:
        Greeter.release = None
        gated.gate.set()
        await service.stop()


async def test_ready_is_down_while_registration_fails_and_back_after(
    etcd_own: EtcdServer, http: aiohttp.ClientSession
) -> None:
    async with greeter(etcd_own.url("/outage"), ttl=2) as service:
        address = str(service.admin_address)
        assert await get(http, address, "/health/ready") == (200, {"status": "up"})
        assert await grpc_statuses(service) == {SERVING}

        await asyncio.to_thread(etcd_own.stop)

        async def not_ready() -> bool:
            return (await get(http, address, "/health/ready"))[0] == 503

        await async_wait_until(not_ready, timeout=WAIT, what="/health/ready to go down with etcd")
        status, body = await get(http, address, "/health")
        assert status == 503
        [registration] = [c for c in body["checks"] if c["name"] == "registration"]
        assert registration["status"] == "down" and "etcd" in registration["error"]
        assert etcd_own.address not in json.dumps(body)  # the scheme only, never the address
        assert await get(http, address, "/health/live") == (200, {"status": "up"})
        assert await grpc_statuses(service) == {NOT_SERVING}

        await asyncio.to_thread(etcd_own.start)

        async def ready() -> bool:
            return (await get(http, address, "/health/ready"))[0] == 200

        await async_wait_until(ready, timeout=WAIT, what="/health/ready to come back with etcd")
        assert await grpc_statuses(service) == {SERVING}


async def test_user_checks_critical_and_not_sync_and_async(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    database_up = True
    service = greeter(registry)

    @service.health_check("database", interval=0.05)
    async def database() -> None:
        if not database_up:
            raise ConnectionError("database at db:5432 refused")

    def cache() -> bool:  # sync: runs in a thread; returning False is failing
        return False

    service.add_health_check("cache", cache, critical=False, interval=0.05)

    async with service:
        address = str(service.admin_address)

        async def ready_is(code: int) -> bool:
            return (await get(http, address, "/health/ready"))[0] == code

        await async_wait_until(
            lambda: ready_is(200), timeout=WAIT, what="ready with a failing non-critical check"
        )
        status, body = await get(http, address, "/health")
        assert status == 200
        assert {"name": "cache", "status": "down", "error": "returned False", "critical": False} in body[
            "checks"
        ]
        assert {"name": "database", "status": "up"} in body["checks"]

        database_up = False
        await async_wait_until(
            lambda: ready_is(503), timeout=WAIT, what="not ready with a failing critical check"
        )
        status, body = await get(http, address, "/health/ready")
        assert body["checks"] == [
            {"name": "database", "status": "down", "error": "ConnectionError: database at db:5432 refused"},
            {"name": "cache", "status": "down", "error": "returned False", "critical": False},
        ]
        assert await grpc_statuses(service) == {NOT_SERVING}

        database_up = True
        await async_wait_until(lambda: ready_is(200), timeout=WAIT, what="ready again")
        assert await grpc_statuses(service) == {SERVING}


async def test_a_check_that_hangs_is_cut_off_and_runs_once_at_a_time(
    registry: Registry, http: aiohttp.ClientSession
) -> None:
    started = 0
    hang = asyncio.Event()

    def sync_hang() -> None:
        nonlocal started
        started += 1
        import time

        time.sleep(0.5)

    async def async_hang() -> None:
        await hang.wait()

    service = greeter(registry)
    service.add_health_check("slow-sync", sync_hang, timeout=0.1, interval=0.01)
    service.add_health_check("stuck", async_hang, timeout=0.1, interval=0.01, critical=False)
    async with service:
        address = str(service.admin_address)

        async def cut_off() -> bool:
            status, body = await get(http, address, "/health")
            return (
                status == 503
                and {"name": "slow-sync", "status": "down", "error": "timed out after 0.1 s"}
                in (body["checks"])
            )

        await async_wait_until(cut_off, timeout=WAIT, what="the hanging check to be reported")
        await asyncio.sleep(1.2)
        # each run waits for the previous thread: about one run per 0.5 s, not one per 0.01 s
        assert started <= 5, started
        _, body = await get(http, address, "/health")
        assert {"name": "stuck", "status": "down", "error": "timed out after 0.1 s", "critical": False} in (
            body["checks"]
        )
