"""NamedGrpcClient (grpclib, content type named on the wire) against a microweave node: the
rules every client transport keeps (errors, deadlines, limits, every call kind). Against
go-micro's plain-struct handlers, its reason to exist: tests/interop/test_gomicro.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import ModuleType

import msgspec
import pytest
from engines import free_port

from microweave import Client, Context, Service
from microweave.codec import JSON, PROTO
from microweave.errors import BadRequest, NotDelivered, Timeout, TooManyRequests
from microweave.registry import Node
from microweave.registry import Service as Record
from microweave.registry.memory import MemoryRegistry
from microweave.server import Kind
from microweave.testing import serve
from microweave.transport.grpc import GrpcServer
from microweave.transport.grpc.named import NamedGrpcClient


class Num(msgspec.Struct):
    n: int


class Counter:
    async def double(self, req: Num, ctx: Context) -> Num:
        ctx.set_response_metadata("doubled-by", "counter")
        return Num(req.n * 2)

    async def up_to(self, req: Num) -> AsyncIterator[Num]:
        for i in range(req.n):
            yield Num(i)

    async def total(self, reqs: AsyncIterator[Num]) -> Num:
        return Num(sum([r.n async for r in reqs]))

    async def echo(self, reqs: AsyncIterator[Num]) -> AsyncIterator[Num]:
        async for r in reqs:
            yield Num(-r.n)

    async def nap(self, req: Num) -> Num:
        await asyncio.sleep(req.n)
        return req

    async def big(self, req: Num) -> str:
        return "x" * req.n


@pytest.fixture
async def counter() -> AsyncIterator[tuple[Service, Client]]:
    service = Service("counter", tcp_address=False)
    service.handler(Counter)
    transport = NamedGrpcClient(max_message=64 * 1024)
    async with (
        serve(service, transport="grpc"),
        Client(registry=service.registry, transports=[transport]) as client,
    ):
        yield service, client


async def test_unary_json_with_response_metadata(counter: tuple[Service, Client]) -> None:
    _, client = counter
    trailers: dict[str, str] = {}
    assert await client.call(
        "counter", "Counter.Double", Num(21), response=Num, response_metadata=trailers
    ) == Num(42)
    assert trailers["doubled-by"] == "counter"
    assert client.transports[0].name == "grpc"


async def test_every_stream_kind(counter: tuple[Service, Client]) -> None:
    _, client = counter
    assert [r async for r in client.stream("counter", "Counter.UpTo", Num(3), response=Num)] == [
        Num(0),
        Num(1),
        Num(2),
    ]

    async def nums() -> AsyncIterator[Num]:
        for i in (1, 2, 3):
            yield Num(i)

    assert [
        r
        async for r in client.stream(
            "counter", "Counter.Total", nums(), response=Num, kind=Kind.CLIENT_STREAM
        )
    ] == [Num(6)]
    assert [r async for r in client.stream("counter", "Counter.Echo", nums(), response=Num)] == [
        Num(-1),
        Num(-2),
        Num(-3),
    ]


async def test_errors_deadlines_and_limits(counter: tuple[Service, Client]) -> None:
    _, client = counter
    with pytest.raises(BadRequest) as bad:
        await client.call("counter", "Counter.Double", {"n": "x"})
    assert bad.value.remote and bad.value.id == "counter"
    with pytest.raises(Timeout):
        await client.call("counter", "Counter.Nap", Num(30), timeout=0.3)
    # a reply over the client's limit is refused from its declared length
    with pytest.raises(TooManyRequests) as big:
        await client.call("counter", "Counter.Big", Num(100_000))
    assert "over the limit of 65536" in big.value.detail
    assert await client.call("counter", "Counter.Big", Num(3)) == "xxx"  # the channel still serves


async def test_protobuf_body_to_a_protobuf_handler(greeter_pb2: ModuleType) -> None:
    from gomicro_service import build

    service = build("mwnamed", greeter_pb2, tcp_address=False)
    pb2 = greeter_pb2
    async with (
        serve(service, transport="grpc"),
        Client(registry=service.registry, transports=[NamedGrpcClient()]) as client,
    ):
        request = pb2.HelloRequest(name="pb")
        reply = await client.call(
            "mwnamed", "Greeter.Hello", request, response=pb2.HelloReply, content_type=PROTO
        )
        assert reply == pb2.HelloReply(message="Hello pb", by="microweave")


async def test_a_draining_node_and_an_unreachable_one_are_not_delivered(
    counter: tuple[Service, Client],
) -> None:
    service, client = counter
    (grpc_server,) = [t for t in service.transports if isinstance(t, GrpcServer)]
    grpc_server.draining = True
    try:
        with pytest.raises(NotDelivered) as refused:
            await client.call("counter", "Counter.Double", Num(1))
        assert "draining" in refused.value.detail
    finally:
        grpc_server.draining = False

    registry = MemoryRegistry()
    await registry.register(
        Record(name="gone", nodes=[Node(id="gone-1", address=f"127.0.0.1:{free_port()}")])
    )
    async with Client(registry=registry, transports=[NamedGrpcClient()]) as lonely:
        with pytest.raises(NotDelivered) as unreachable:
            await lonely.call("gone", "X.Y", {}, timeout=5)
        assert "unreachable" in unreachable.value.detail


async def test_channels_to_unreachable_or_malformed_addresses_are_not_kept() -> None:
    """Nodes come and go (a new address per deploy): a channel that could not deliver is
    closed and forgotten, so the table holds live nodes only, however many were announced."""
    transport = NamedGrpcClient()
    dead = [f"127.0.0.1:{free_port()}" for _ in range(20)]
    try:
        for address in [*dead, "127.0.0.1:notaport", "no-port", "127.0.0.1:99999"]:
            with pytest.raises(NotDelivered) as caught:
                await transport.unary(address, "/X/Y", b"{}", timeout=5, metadata={})
            assert address in caught.value.detail
        assert transport._channels == {}
    finally:
        await transport.aclose()


async def test_aclose_closes_every_connection() -> None:
    import os

    def held() -> tuple[int, int]:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return len(os.listdir("/proc/self/fd")), len(others)

    service = Service("counter", tcp_address=False)
    service.handler(Counter)
    async with serve(service, transport="grpc"):
        address = service.addresses["grpc"]
        before = held()
        transport = NamedGrpcClient()
        for content_type in (JSON, PROTO):  # one channel each: the codec is the channel's
            body = b'{"n": 2}' if content_type == JSON else b""
            # protobuf to a JSON handler is a 400: answered, so the connection was made
            with contextlib.suppress(BadRequest):
                await transport.unary(address, "/Counter/Double", body, timeout=5, metadata={},
                                      content_type=content_type)  # fmt: skip
        assert len(transport._channels) == 2 and held() != before
        await transport.aclose()
        await asyncio.sleep(0.2)
        assert held() == before
