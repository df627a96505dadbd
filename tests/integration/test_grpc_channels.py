"""Both gRPC client transports hold channels to nodes they reached, not to every node ever tried.

A fleet that churns (a new address per deploy) must not grow a client's channel table without
bound: a channel that could not connect is closed and dropped; a live node keeps its channel,
and so does a draining one (it refused the call, but it is alive). The rule lives in one place,
`transport/grpc/channels.py`; these tests hold both transports to it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from engines import free_port

from microweave import Service
from microweave.errors import NotDelivered
from microweave.testing import serve
from microweave.transport import ClientTransport
from microweave.transport.grpc import GrpcServer
from microweave.transport.grpc.client import GrpcClient
from microweave.transport.grpc.named import NamedGrpcClient

TRANSPORTS = [GrpcClient, NamedGrpcClient]
DEAD = 500
AT_ONCE = 25
PATH = "/Counter/Double"


class Num(msgspec.Struct):
    n: int


class Counter:
    async def double(self, req: Num) -> Num:
        return Num(req.n * 2)


def _held(transport: ClientTransport) -> int:
    return len(transport._channels)  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", TRANSPORTS, ids=lambda t: t.__name__)
async def test_calls_to_many_unreachable_nodes_leave_no_channels(make: type[ClientTransport]) -> None:
    transport = make()
    gate = asyncio.Semaphore(AT_ONCE)
    most = 0

    async def call(address: str) -> None:
        nonlocal most
        async with gate:
            with pytest.raises(NotDelivered) as caught:
                await transport.unary(address, "/Counter/Double", b'{"n": 1}', timeout=10, metadata={})
            assert "unreachable" in caught.value.detail and address in caught.value.detail
            most = max(most, _held(transport))

    try:
        addresses = {f"127.0.0.1:{free_port()}" for _ in range(DEAD)}
        await asyncio.gather(*(call(address) for address in addresses))
        assert _held(transport) == 0
        assert most <= AT_ONCE  # only the calls in flight ever hold one
    finally:
        await transport.aclose()


@pytest.mark.parametrize("make", TRANSPORTS, ids=lambda t: t.__name__)
async def test_a_live_node_and_a_draining_one_keep_their_channel(make: type[ClientTransport]) -> None:
    service = Service("counter", tcp_address=False)
    service.handler(Counter)
    transport = make()
    try:
        async with serve(service, transport="grpc"):
            address = service.addresses["grpc"]
            body = b'{"n": 2}'
            assert await transport.unary(address, PATH, body, timeout=10, metadata={}) == b'{"n":4}'
            assert _held(transport) == 1
            channel = next(iter(transport._channels.values()))  # type: ignore[attr-defined]

            (grpc_server,) = [t for t in service.transports if isinstance(t, GrpcServer)]
            grpc_server.draining = True
            with pytest.raises(NotDelivered) as refused:
                await transport.unary(address, PATH, body, timeout=10, metadata={})
            assert "draining" in refused.value.detail
            assert _held(transport) == 1
            assert next(iter(transport._channels.values())) is channel  # type: ignore[attr-defined]
            grpc_server.draining = False
            assert await transport.unary(address, PATH, body, timeout=10, metadata={}) == b'{"n":4}'
    finally:
        await transport.aclose()
