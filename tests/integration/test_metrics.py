"""Prometheus metrics of real services: calls on every transport, streams, failures, unknown
paths, events, retries, the registry and the transports, read back the way Prometheus reads
them (prometheus_client's text parser, over the admin endpoint's /metrics too).

The metrics are the process's, shared by every test that runs in it: each test names its
services uniquely and compares counters it cannot own (per registry, per transport) before and
after."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from helpers import async_wait_until, free_port
from metrics_samples import Samples, samples, series, value
from registry_kit import Breakable

from microweave import BadRequest, Client, MicroError, Service
from microweave.errors import RegistryError
from microweave.registry import Node
from microweave.registry import Service as ServiceRecord
from microweave.registry import from_url as registry_from_url
from microweave.registry.local import LocalRegistry
from microweave.server import Kind

TRANSPORTS = ["local", "tcp", "grpc"]


class Hello(msgspec.Struct):
    name: str


class Greeter:
    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def say_hello(self, req: Hello) -> Hello:
        return Hello(name=f"hi {req.name}")

    async def boom(self, req: Hello) -> Hello:
        raise RuntimeError("a bug")

    async def refuse(self, req: Hello) -> Hello:
        raise BadRequest("no")

    async def count(self, req: Hello) -> AsyncIterator[Hello]:
        for i in range(4):
            yield Hello(name=str(i))

    async def join(self, reqs: AsyncIterator[Hello]) -> Hello:
        return Hello(name="+".join([r.name async for r in reqs]))

    async def wait(self, req: Hello) -> Hello:
        await self.gate.wait()
        return req

    async def many(self, req: Hello) -> AsyncIterator[Hello]:
        for i in range(100):
            yield Hello(name=str(i))
            await asyncio.sleep(0.01)


def unique(prefix: str = "metrics") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def node(name: str, **options: object) -> tuple[Service, Greeter]:
    greeter = Greeter()
    service = Service(name, drain_delay=0, grace=2, admin_address=False, **options)  # type: ignore[arg-type]
    service.handler(greeter)
    return service, greeter


async def call_each_kind(client: Client, name: str) -> None:
    for _ in range(3):
        assert await client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello) == Hello("hi x")
    with pytest.raises(MicroError) as boom:
        await client.call(name, "Greeter.Boom", Hello(name="x"), response=Hello)
    assert boom.value.code == 500
    with pytest.raises(BadRequest):
        await client.call(name, "Greeter.Refuse", Hello(name="x"), response=Hello)
    with pytest.raises(MicroError) as unknown:
        await client.call(name, "Greeter.NotThere", Hello(name="x"), response=Hello)
    assert unknown.value.code == 501
    replies = [r async for r in client.stream(name, "Greeter.Count", Hello(name="x"), response=Hello)]
    assert len(replies) == 4

    async def three() -> AsyncIterator[Hello]:
        for n in "abc":
            yield Hello(name=n)

    joined = [
        r async for r in client.stream(name, "Greeter.Join", three(), response=Hello, kind=Kind.CLIENT_STREAM)
    ]
    assert joined == [Hello("a+b+c")]


def requests_of(got: Samples, metric: str, service: str) -> dict[tuple[str, str, str, str], float]:
    """(endpoint, status, code, transport) -> count, for one service."""
    out = {}
    for labels, count in series(got, metric, service=service).items():
        d = dict(labels)
        out[(d["endpoint"], d["status"], d["code"], d["transport"])] = count
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_call_is_counted_on_both_sides(registry_dir: Path, transport: str) -> None:
    name = unique()
    service, _ = node(name)
    async with service, Client(transports=(transport,), timeout=20) as client:
        await call_each_kind(client, name)
        got = samples()
    t = transport
    expected = {
        ("Greeter.SayHello", "success", "200", t): 3,
        ("Greeter.Boom", "fail", "500", t): 1,
        ("Greeter.Refuse", "fail", "400", t): 1,
        ("Greeter.Count", "success", "200", t): 1,
        ("Greeter.Join", "success", "200", t): 1,
    }
    # the server names a path it does not serve "unknown"; the client, as it was called
    assert requests_of(got, "micro_request_total", name) == {**expected, ("unknown", "fail", "501", t): 1}
    assert requests_of(got, "micro_client_request_total", name) == {
        **expected, ("Greeter.NotThere", "fail", "501", t): 1
    }  # fmt: skip
    for metric in ("micro_request_duration_seconds", "micro_client_request_duration_seconds"):
        hello = {"service": name, "endpoint": "Greeter.SayHello", "transport": t}
        assert value(got, f"{metric}_count", **hello, status="success") == 3
        assert value(got, f"{metric}_bucket", **hello, status="success", le="+Inf") == 3
        assert (value(got, f"{metric}_sum", **hello, status="success") or 0) > 0
        assert value(got, f"{metric}_count", **{**hello, "endpoint": "Greeter.Boom"}, status="fail") == 1
    messages = {
        (d["endpoint"], d["side"], d["direction"]): v
        for d, v in (
            (dict(ls), v) for ls, v in series(got, "micro_stream_messages_total", service=name).items()
        )
    }
    assert messages == {
        ("Greeter.Count", "server", "received"): 1, ("Greeter.Count", "server", "sent"): 4,
        ("Greeter.Count", "client", "sent"): 1, ("Greeter.Count", "client", "received"): 4,
        ("Greeter.Join", "server", "received"): 3, ("Greeter.Join", "server", "sent"): 1,
        ("Greeter.Join", "client", "sent"): 3, ("Greeter.Join", "client", "received"): 1,
    }  # fmt: skip
    assert value(got, "micro_server_in_flight", service=name) == 0
    assert value(got, "micro_client_in_flight", service=name) == 0


async def test_a_deadline_is_408_and_a_stream_the_caller_left_is_499_on_both_sides(
    registry_dir: Path,
) -> None:
    name = unique()
    service, _ = node(name)
    async with service:
        for transport in TRANSPORTS:
            async with Client(transports=(transport,), timeout=20) as client:
                with pytest.raises(MicroError) as late:
                    await client.call(name, "Greeter.Wait", Hello(name="x"), response=Hello, timeout=0.2)
                assert late.value.code == 408
                read = 0
                async for _ in client.stream(name, "Greeter.Many", Hello(name="x"), response=Hello):
                    read += 1
                    if read == 2:
                        break  # the caller stops reading: the call is cancelled

        def outcomes(metric: str) -> dict[tuple[str, str, str, str], float]:
            return requests_of(samples(), metric, name)

        expected = {
            **{("Greeter.Wait", "fail", "408", t): 1 for t in TRANSPORTS},
            **{("Greeter.Many", "fail", "499", t): 1 for t in TRANSPORTS},
        }
        assert outcomes("micro_client_request_total") == expected

        async def served() -> bool:  # the node learns of the cancellation a moment later
            return outcomes("micro_request_total") == expected

        await async_wait_until(served, timeout=15, what="the node to count both ends")
        got = samples()
    at = {"service": name, "endpoint": "Greeter.Many"}
    assert value(got, "micro_stream_messages_total", **at, side="client", direction="received") == 6
    assert (value(got, "micro_stream_messages_total", **at, side="server", direction="sent") or 0) >= 6
    assert value(got, "micro_server_in_flight", service=name) == 0
    assert value(got, "micro_client_in_flight", service=name) == 0


async def test_an_unknown_path_is_one_series_whatever_is_sent(registry_dir: Path) -> None:
    name = unique()
    service, _ = node(name)
    async with service, Client(transports=("tcp",), timeout=20) as client:
        for _ in range(100):
            endpoint = f"R{uuid.uuid4().hex[:6]}.M{uuid.uuid4().hex[:6]}"
            with pytest.raises(MicroError):
                await client.call(name, endpoint, Hello(name="x"), response=Hello)
        await client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)
    assert requests_of(samples(), "micro_request_total", name) == {
        ("unknown", "fail", "501", "tcp"): 100,
        ("Greeter.SayHello", "success", "200", "tcp"): 1,
    }


async def test_in_flight_gauges_count_the_calls_running_now(registry_dir: Path) -> None:
    name = unique()
    service, greeter = node(name)
    async with service, Client(transports=("tcp",), timeout=20) as client:
        calls = [
            asyncio.create_task(client.call(name, "Greeter.Wait", Hello(name=str(i)), response=Hello))
            for i in range(3)
        ]

        async def three_running() -> bool:
            got = samples()
            return value(got, "micro_server_in_flight", service=name) == 3 and (
                value(got, "micro_client_in_flight", service=name) == 3
            )

        await async_wait_until(three_running, timeout=15, what="3 calls in flight on both sides")
        greeter.gate.set()
        await asyncio.gather(*calls)
        got = samples()
    assert value(got, "micro_server_in_flight", service=name) == 0
    assert value(got, "micro_client_in_flight", service=name) == 0


async def test_an_event_is_a_call_of_its_subscriber_over_the_broker(registry_dir: Path) -> None:
    name = unique()
    service = Service(
        name, drain_delay=0, grace=2, admin_address=False, broker=f"memory://{uuid.uuid4().hex}"
    )
    seen: list[Hello] = []

    @service.subscriber("user.created")
    async def on_user(event: Hello) -> None:
        seen.append(event)

    async with service:
        for i in range(2):
            await service.client.publish("user.created", Hello(name=str(i)))
        (subscriber,) = service.router.subscribers.values()

        async def counted() -> bool:
            return value(samples(), "micro_request_total", service=name, endpoint=subscriber.target.name,
                         status="success", code="200", transport="memory") == 2  # fmt: skip

        await async_wait_until(counted, timeout=15, what="both events counted")
    assert len(seen) == 2


async def test_retries_are_counted_once_per_attempt_sent_again(registry_dir: Path) -> None:
    """A node that cannot be reached (nothing listens at its address) is registered next to a
    live one: a call that picks it first is sent again to the live one."""
    name = unique()
    service, _ = node(name, version="1.0.0")
    async with service:
        dead = Node(
            id=f"{name}-dead", address="127.0.0.1:1", metadata={"tcp_address": f"127.0.0.1:{free_port()}"}
        )
        await service.registry.register(ServiceRecord(name=name, version="1.0.0", nodes=[dead]), ttl=60)
        for _ in range(60):  # p2c picks the dead node first about half the time; a new client forgets it
            async with Client(transports=("tcp",), timeout=20) as client:
                assert await client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello) == Hello(
                    "hi x"
                )
            got = samples()
            retries = value(got, "micro_client_retries_total", service=name, endpoint="Greeter.SayHello")
            if retries:
                break
        assert retries and retries >= 1
        client_side = requests_of(got, "micro_client_request_total", name)
        failed = sum(v for (endpoint, status, _, _), v in client_side.items() if status == "fail")
        assert failed == retries  # each attempt that could not be delivered, and only those
        assert all(code == "503" for (_, status, code, _) in client_side if status == "fail"), client_side
        await service.registry.deregister(ServiceRecord(name=name, version="1.0.0", nodes=[dead]))


async def test_registry_lookups_and_cache_hits(registry_dir: Path) -> None:
    name = unique()
    service, _ = node(name)
    async with service, Client(transports=("tcp",), timeout=20) as client:
        assert isinstance(client.registry, LocalRegistry)
        before = samples()
        for _ in range(6):
            await client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)
        after = samples()

    def delta(metric: str) -> float:
        return (value(after, metric, registry="local") or 0) - (value(before, metric, registry="local") or 0)

    assert delta("micro_registry_lookups_total") == 1  # the first call's; the next five are served
    assert delta("micro_registry_cache_hits_total") == 5  # from the cache


async def test_registry_errors_and_registration_health() -> None:
    async with registry_from_url(f"memory://{uuid.uuid4().hex}") as inner:
        registry = Breakable(inner)
        name = unique()
        service, _ = node(name, registry=registry, ttl=0.6)

        def errors(operation: str) -> float:
            return (
                value(samples(), "micro_registry_errors_total", registry="memory", operation=operation) or 0
            )

        async with service:
            assert value(samples(), "micro_registration_up", service=name) == 1
            before = errors("register")
            registry.register_broken = RegistryError("registry down")

            async def down() -> bool:
                return value(samples(), "micro_registration_up", service=name) == 0

            await async_wait_until(down, timeout=15, what="registration_up to go to 0")
            assert errors("register") > before
            registry.register_broken = None

            async def up() -> bool:
                return value(samples(), "micro_registration_up", service=name) == 1

            await async_wait_until(up, timeout=15, what="registration_up back to 1")

            lookups_before = errors("lookup")
            registry.broken = RegistryError("registry down")
            async with Client(registry=registry, transports=("tcp",), timeout=5) as client:
                with pytest.raises(MicroError):
                    await client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)
            assert errors("lookup") == lookups_before + 1
        # a node that left the registry is no longer reported
        assert value(samples(), "micro_registration_up", service=name) is None


async def test_transport_connections_open_and_opened(registry_dir: Path) -> None:
    def connections(got: Samples, transport: str, side: str) -> tuple[float, float]:
        at = {"transport": transport, "side": side}
        return (
            value(got, "micro_transport_connections", **at) or 0,
            value(got, "micro_transport_connections_opened_total", **at) or 0,
        )

    name = unique()
    service, _ = node(name)
    async with service:
        before = samples()
        async with (
            Client(transports=("tcp",), timeout=20) as tcp,
            Client(transports=("grpc",), timeout=20) as grpc,
        ):
            await tcp.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)
            await grpc.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)
            during = samples()
        for transport, side in (("tcp", "client"), ("tcp", "server"), ("grpc", "client")):
            (open_before, opened_before), (open_now, opened_now) = (
                connections(before, transport, side), connections(during, transport, side)
            )  # fmt: skip
            assert (open_now - open_before, opened_now - opened_before) == (1, 1), (transport, side)

        async def all_closed() -> bool:
            got = samples()
            return all(
                connections(got, t, side)[0] == connections(before, t, side)[0]
                for t, side in (("tcp", "client"), ("tcp", "server"), ("grpc", "client"))
            )

        await async_wait_until(all_closed, timeout=15, what="the connections to close")


async def test_metrics_off_records_no_call(registry_dir: Path) -> None:
    name = unique()
    service, _ = node(name, metrics=False)
    async with service, Client(transports=("tcp",), timeout=20, metrics=False) as client:
        await call_each_kind(client, name)
        await service.client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)  # its own client
        got = samples()
    # nothing of its calls; the registration's health is not a call metric and stays
    assert {metric for (metric, labels) in got if ("service", name) in labels} == {"micro_registration_up"}


def test_client_pairs_are_capped(tmp_path: Path) -> None:
    """A process that calls more (service, endpoint) pairs than the cap: the pairs past it are
    counted as endpoint="other". In a process of its own: the cap is the process's."""
    script = tmp_path / "cap.py"
    script.write_text(CAP_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120, check=True)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result == {"pairs": 1001, "other": 100, "total": 1100, "cap": 1000}


CAP_SCRIPT = """
import asyncio, json, msgspec, uuid
from microweave import Client, MicroError, Service
from microweave.metrics import CLIENT_PAIRS
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

class Hello(msgspec.Struct):
    name: str

class Greeter:
    async def say_hello(self, req: Hello) -> Hello:
        return req

async def main() -> None:
    registry = f"memory://{uuid.uuid4().hex}"
    service = Service("capped", registry=registry, drain_delay=0, admin_address=False)
    service.handler(Greeter)
    async with service, Client(registry=registry, transports=("local",)) as client:
        for i in range(CLIENT_PAIRS + 100):
            try:
                await client.call("capped", f"E{i}.Call", Hello(name="x"))
            except MicroError:
                pass
    pairs, other, total = set(), 0, 0
    for family in text_string_to_metric_families(generate_latest().decode()):
        for s in family.samples:
            if s.name == "micro_client_request_total" and s.labels["service"] == "capped":
                pairs.add(s.labels["endpoint"])
                total += s.value
                if s.labels["endpoint"] == "other":
                    other += s.value
    print(json.dumps({"pairs": len(pairs), "other": other, "total": total, "cap": CLIENT_PAIRS}))

asyncio.run(main())
"""


async def test_metrics_over_the_admin_endpoint(registry_dir: Path) -> None:
    name = unique()
    greeter = Greeter()
    service = Service(name, drain_delay=0, grace=2, admin_address="127.0.0.1:0")
    service.handler(greeter)
    async with service, Client(transports=("tcp",), timeout=20) as client:
        for _ in range(2):
            await client.call(name, "Greeter.SayHello", Hello(name="x"), response=Hello)
        assert service.admin_address
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"http://{service.admin_address}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
    got = samples(text)
    assert value(got, "micro_request_total", service=name, endpoint="Greeter.SayHello", status="success",
                 code="200", transport="tcp") == 2  # fmt: skip
    assert value(got, "micro_registration_up", service=name) == 1
