"""The stacks `rpc.py` compares, each a server half and a client half.

A stack serves a unary echo (and, if `streams`, a server-streaming endpoint that sends `count`
copies of a 64-byte message) on a loopback port, and its client calls them. Bodies are 64 bytes
on the wire in every stack: raw bytes for the raw stacks, a JSON `EchoRequest` whose encoding is
exactly 64 bytes for microweave.

To add a stack: subclass `Stack`, implement `serve()` and `client()` (and `unavailable()` when
it depends on something that may be missing), and add an instance to `STACKS`. `rpc.py` starts
the server half in one process and the client half in another, so nothing else changes.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

__all__ = ["PAYLOAD", "STACKS", "Server", "Stack", "StackClient"]

BODY_SIZE = 64
PAYLOAD = b"x" * BODY_SIZE
#: the string field that makes `{"data":"..."}` exactly BODY_SIZE bytes of JSON
JSON_DATA = "x" * (BODY_SIZE - len(b'{"data":""}'))


class Server(abc.ABC):
    """A running server half: where to reach it, and how to stop it."""

    address: str

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class StackClient(abc.ABC):
    """A connected client half, shared by every concurrent worker of one load process."""

    @abc.abstractmethod
    async def worker(self) -> Callable[[], Awaitable[Any]]:
        """A callable making one unary echo call; called once per concurrent worker."""

    def stream(self, count: int) -> AsyncIterator[Any]:
        """One server-streaming call yielding `count` 64-byte messages."""
        raise NotImplementedError

    @abc.abstractmethod
    async def check(self) -> None:
        """One call whose reply is compared with what was sent (raises if it differs)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class Stack(abc.ABC):
    name: str = ""
    #: serves the server-streaming measurement
    streams: bool = False
    #: what `rpc.py --list` and the README say about it
    description: str = ""

    def unavailable(self) -> str | None:
        """Why this stack cannot run here, or None when it can."""
        return None

    @abc.abstractmethod
    async def serve(self, host: str) -> Server: ...

    @abc.abstractmethod
    async def client(self, address: str) -> StackClient: ...


def _expect(got: Any, want: Any, stack: str) -> None:
    if got != want:
        raise RuntimeError(f"{stack}: echo returned {got!r}, expected {want!r}")


# -- microweave over gRPC -------------------------------------------------------------------


class EchoRequest(msgspec.Struct):
    data: str


class EchoReply(msgspec.Struct):
    data: str


class StreamRequest(msgspec.Struct):
    data: str
    count: int


class Echo:
    """The microweave handler: `Echo.Echo` (unary) and `Echo.Stream` (server-streaming)."""

    async def echo(self, req: EchoRequest) -> EchoReply:
        return EchoReply(data=req.data)

    async def stream(self, req: StreamRequest) -> AsyncIterator[EchoReply]:
        reply = EchoReply(data=req.data)
        for _ in range(req.count):
            yield reply


class _ServiceServer(Server):
    def __init__(self, service: Any, address: str) -> None:
        self.service = service
        self.address = address

    async def aclose(self) -> None:
        await self.service.stop()


class _MicroweaveClient(StackClient):
    def __init__(self, client: Any) -> None:
        self.client = client
        self.request = EchoRequest(data=JSON_DATA)

    async def worker(self) -> Callable[[], Awaitable[Any]]:
        call, request = self.client.call, self.request

        def one() -> Awaitable[Any]:
            return call("echo", "Echo.Echo", request, response=EchoReply)

        return one

    async def stream(self, count: int) -> AsyncIterator[Any]:
        request = StreamRequest(data=JSON_DATA, count=count)
        replies = self.client.stream("echo", "Echo.Stream", request, response=EchoReply)
        async with contextlib.aclosing(replies):  # a consumer that stops early cancels the call
            async for reply in replies:
                yield reply

    async def check(self) -> None:
        # a second `echo` node in the registry would take half the calls to another process
        nodes = [n for s in await self.client.registry.get_service("echo") for n in s.nodes]
        if len(nodes) != 1:
            raise RuntimeError(f"expected one echo node in {self.client.registry!r}, found {len(nodes)}")
        reply = await (await self.worker())()
        _expect(reply, EchoReply(data=JSON_DATA), "microweave")
        got = [r async for r in self.stream(3)]
        _expect(got, [EchoReply(data=JSON_DATA)] * 3, "microweave stream")

    async def aclose(self) -> None:
        await self.client.aclose()


class MicroweaveGrpc(Stack):
    """A `microweave.Service` found through the registry named by MICRO_REGISTRY(_ADDRESS)."""

    name = "microweave-grpc"
    streams = True
    description = "microweave.Service + microweave.Client, gRPC transport, full client path"
    #: the client transports allowed: pinning one keeps this stack on its wire once the
    #: service serves several (the client would otherwise prefer the fastest)
    transports: tuple[str, ...] = ("grpc",)

    def unavailable(self) -> str | None:
        from microweave import Client

        try:
            Client(registry="memory://", transports=self.transports)
        except ValueError as exc:
            return f"microweave.Client does not take transports={self.transports}: {exc}"
        return None

    async def serve(self, host: str) -> Server:
        from microweave import Service

        service = Service("echo", address=f"{host}:0", grace=1.0, drain_delay=0.0)
        service.handler(Echo)
        await service.start()
        return _ServiceServer(service, service.addresses["grpc"])

    async def client(self, address: str) -> StackClient:
        from microweave import Client

        # `address` is unused on purpose: the client finds the node through the registry
        return _MicroweaveClient(Client(name="bench", transports=self.transports))


class MicroweaveTcp(MicroweaveGrpc):
    """microweave's framed TCP transport: the same service, the client pinned to `tcp`.

    Skipped (as unavailable) until microweave's client accepts `transports=("tcp",)`.
    """

    name = "microweave-tcp"
    description = "microweave.Service + microweave.Client, microweave's own framed TCP transport"
    transports = ("tcp",)


# -- raw grpc.aio ---------------------------------------------------------------------------

GRPC_SERVICE = "bench.Echo"
GRPC_ECHO = f"/{GRPC_SERVICE}/Echo"
GRPC_STREAM = f"/{GRPC_SERVICE}/Stream"


class _GrpcServer(Server):
    def __init__(self, server: Any, address: str) -> None:
        self.server = server
        self.address = address

    async def aclose(self) -> None:
        await self.server.stop(1.0)


class _GrpcClient(StackClient):
    def __init__(self, address: str) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(address)
        # no serializers: bytes in, bytes out
        self.echo = self.channel.unary_unary(GRPC_ECHO)
        self.streamer = self.channel.unary_stream(GRPC_STREAM)

    async def worker(self) -> Callable[[], Awaitable[Any]]:
        echo = self.echo

        def one() -> Awaitable[Any]:
            return echo(PAYLOAD)  # type: ignore[no-any-return]

        return one

    async def stream(self, count: int) -> AsyncIterator[Any]:
        call = self.streamer(struct.pack(">Q", count))
        try:
            async for message in call:
                yield message
        finally:
            if not call.done():
                call.cancel()

    async def check(self) -> None:
        _expect(await (await self.worker())(), PAYLOAD, "grpc-aio")
        _expect([m async for m in self.stream(3)], [PAYLOAD] * 3, "grpc-aio stream")

    async def aclose(self) -> None:
        await self.channel.close()


class GrpcAio(Stack):
    name = "grpc-aio"
    streams = True
    description = "raw grpc.aio server (registered bytes handlers) and bytes multicallables"

    async def serve(self, host: str) -> Server:
        import grpc

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            (count,) = struct.unpack(">Q", request)
            for _ in range(count):
                yield PAYLOAD

        server = grpc.aio.server()
        server.add_registered_method_handlers(
            GRPC_SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(echo),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
            },
        )
        port = server.add_insecure_port(f"{host}:0")
        if not port:
            raise OSError(f"grpc could not listen on {host}")
        await server.start()
        return _GrpcServer(server, f"{host}:{port}")

    async def client(self, address: str) -> StackClient:
        return _GrpcClient(address)


# -- raw asyncio TCP, 4-byte big-endian length prefix ---------------------------------------


def _frames(buffer: bytearray) -> list[bytes]:
    """Complete frames (prefix included) cut off the front of `buffer`."""
    frames = []
    start = 0
    end = len(buffer)
    while end - start >= 4:
        size = int.from_bytes(buffer[start : start + 4], "big")
        stop = start + 4 + size
        if stop > end:
            break
        frames.append(bytes(buffer[start:stop]))
        start = stop
    if start:
        del buffer[:start]
    return frames


class _EchoServerProtocol(asyncio.Protocol):
    """Echoes each complete frame back as it is (prefix and body), batching one write per read."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        frames = _frames(self.buffer)
        if frames:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class _EchoClientProtocol(asyncio.Protocol):
    """One connection; replies resolve waiting calls in order (so it may be pipelined)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buffer = bytearray()
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for frame in _frames(self.buffer):
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(frame[4:])

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {exc}"))

    def call(self, frame: bytes) -> asyncio.Future[bytes]:
        future = self.loop.create_future()
        self.waiting.append(future)
        self.transport.write(frame)
        return future


class _RawServer(Server):
    def __init__(self, server: asyncio.Server, address: str) -> None:
        self.server = server
        self.address = address

    async def aclose(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class _RawClient(StackClient):
    """One connection per concurrent worker, one call in flight on each (closed loop)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.protocols: list[_EchoClientProtocol] = []

    async def worker(self) -> Callable[[], Awaitable[Any]]:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: _EchoClientProtocol(loop), self.host, self.port)
        self.protocols.append(protocol)
        frame = len(PAYLOAD).to_bytes(4, "big") + PAYLOAD
        call = protocol.call

        def one() -> Awaitable[Any]:
            return call(frame)

        return one

    async def check(self) -> None:
        _expect(await (await self.worker())(), PAYLOAD, "raw-tcp")

    async def aclose(self) -> None:
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()


class RawTcp(Stack):
    name = "raw-tcp"
    description = "raw asyncio Protocol echo, 4-byte length prefix, one connection per worker"

    async def serve(self, host: str) -> Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_EchoServerProtocol, host, 0)
        port = server.sockets[0].getsockname()[1]
        return _RawServer(server, f"{host}:{port}")

    async def client(self, address: str) -> StackClient:
        return _RawClient(address)


STACKS: dict[str, Stack] = {
    stack.name: stack for stack in (MicroweaveGrpc(), MicroweaveTcp(), GrpcAio(), RawTcp())
}
