"""The stacks `rpc.py` compares, each a server half and a client half.

A stack serves a unary echo (and, if `streams`, a server-streaming endpoint that sends `count`
copies of a 64-byte message) on a loopback port, and its client calls them. Bodies are 64 bytes
on the wire in every stack: raw bytes for the raw stacks, a JSON `EchoRequest` whose encoding is
exactly 64 bytes for microweave (and faststream). The NATS stacks are in `rpc_nats.py`, the
base classes in `rpc_base.py`.

To add a stack: subclass `Stack`, implement `serve()` and `client()` (and `unavailable()` when
it depends on something that may be missing), and add an instance to `STACKS`. `rpc.py` starts
the server half in one process and the client half in another, so nothing else changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from rpc_base import JSON_DATA, PAYLOAD, Server, Stack, StackClient, expect
from rpc_nats import NATS_STACKS

__all__ = ["PAYLOAD", "STACKS", "Server", "Stack", "StackClient"]

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
            return call("echo", "Echo.Echo", request, response=EchoReply)  # type: ignore[no-any-return]

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
        expect(reply, EchoReply(data=JSON_DATA), "microweave")
        got = [r async for r in self.stream(3)]
        expect(got, [EchoReply(data=JSON_DATA)] * 3, "microweave stream")

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
            Client(registry="memory://", transports=self.transports, **self.client_options())
        except ValueError as exc:
            return f"microweave.Client does not take transports={self.transports}: {exc}"
        return None

    def service_options(self) -> dict[str, Any]:
        """Extra keyword arguments for `Service(...)` (subclasses add middleware)."""
        return {}

    def client_options(self) -> dict[str, Any]:
        """Extra keyword arguments for `Client(...)`."""
        return {}

    async def serve(self, host: str) -> Server:
        from microweave import Service

        service = Service("echo", address=f"{host}:0", grace=1.0, drain_delay=0.0, **self.service_options())
        service.handler(Echo)
        await service.start()
        return _ServiceServer(service, service.addresses["grpc"])

    async def client(self, address: str) -> StackClient:
        from microweave import Client

        # `address` is unused on purpose: the client finds the node through the registry
        client = Client(name="bench", transports=self.transports, **self.client_options())
        return _MicroweaveClient(client)


class MicroweaveTcp(MicroweaveGrpc):
    """microweave's framed TCP transport: the same service, the client pinned to `tcp`.

    Skipped (as unavailable) until microweave's client accepts `transports=("tcp",)`.
    """

    name = "microweave-tcp"
    description = "microweave.Service + microweave.Client, microweave's own framed TCP transport"
    transports = ("tcp",)


class MicroweaveTcpNoMetrics(MicroweaveTcp):
    """microweave-tcp with Prometheus metrics off on both sides: what metrics cost (issue 11)."""

    name = "microweave-tcp-nometrics"
    description = "microweave-tcp with Service(metrics=False) and Client(metrics=False)"

    def service_options(self) -> dict[str, Any]:
        return {"metrics": False}

    def client_options(self) -> dict[str, Any]:
        return {"metrics": False}


def _otel_to_nowhere() -> None:
    """An OpenTelemetry SDK tracing every call (100% sampling), its spans batched to an exporter
    that drops them: the cost of tracing without an exporter's I/O. Set globally before the
    service or client is built (microweave traces only when an SDK provider is set)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


class MicroweaveTcpOtel(MicroweaveTcp):
    """microweave-tcp (metrics on) with the OpenTelemetry SDK tracing every call on both sides."""

    name = "microweave-tcp-otel"
    description = "microweave-tcp, OTel SDK at 100% sampling, BatchSpanProcessor to a dropping exporter"

    def unavailable(self) -> str | None:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError:
            return 'the OpenTelemetry SDK is not installed (pip install "microweave[otel]")'
        return super().unavailable()

    async def serve(self, host: str) -> Server:
        _otel_to_nowhere()
        return await super().serve(host)

    async def client(self, address: str) -> StackClient:
        _otel_to_nowhere()
        return await super().client(address)


MIDDLEWARES = 3


def _noop_middlewares() -> tuple[type[Any], type[Any]]:
    """A server and a client middleware that only pass each call on (built lazily: the API is new).

    Both methods are overridden: the chain skips a method a middleware leaves as it is, and the
    point is to measure three middlewares that are really in the path of every call.
    """
    from microweave.middleware import ClientMiddleware, ServerMiddleware

    class NoopServer(ServerMiddleware):
        async def unary(self, call: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
            return await call_next(call)

        def stream(self, call: Any, call_next: Callable[[Any], AsyncIterator[Any]]) -> AsyncIterator[Any]:
            return call_next(call)

    class NoopClient(ClientMiddleware):
        async def unary(self, call: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
            return await call_next(call)

        def stream(self, call: Any, call_next: Callable[[Any], AsyncIterator[Any]]) -> AsyncIterator[Any]:
            return call_next(call)

    return NoopServer, NoopClient


class MicroweaveTcpMiddleware(MicroweaveTcp):
    """microweave-tcp with three no-op middlewares on each side: the cost of the middleware chain."""

    name = "microweave-tcp-mw3"
    description = f"microweave-tcp with {MIDDLEWARES} no-op middlewares in Service and in Client"

    def unavailable(self) -> str | None:
        try:
            _noop_middlewares()
        except ImportError as exc:
            return f"this microweave has no middleware API yet (import microweave.middleware: {exc})"
        try:
            from microweave import Service

            Service("echo", registry="memory://", tcp_address=False, **self.service_options())
        except TypeError as exc:
            return f"microweave.Service does not take middleware=[...] yet: {exc}"
        except Exception as exc:  # an API still being built: say so rather than stop the bench
            return f"microweave.Service(middleware=[...]) fails: {exc!r}"
        try:
            return super().unavailable()
        except TypeError as exc:
            return f"microweave.Client does not take middleware=[...] yet: {exc}"

    def service_options(self) -> dict[str, Any]:
        server, _ = _noop_middlewares()
        return {"middleware": [server() for _ in range(MIDDLEWARES)]}

    def client_options(self) -> dict[str, Any]:
        _, client = _noop_middlewares()
        return {"middleware": [client() for _ in range(MIDDLEWARES)]}


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
        expect(await (await self.worker())(), PAYLOAD, "grpc-aio")
        expect([m async for m in self.stream(3)], [PAYLOAD] * 3, "grpc-aio stream")

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
        expect(await (await self.worker())(), PAYLOAD, "raw-tcp")

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
    stack.name: stack
    for stack in (
        MicroweaveGrpc(),
        MicroweaveTcp(),
        MicroweaveTcpMiddleware(),
        MicroweaveTcpNoMetrics(),
        MicroweaveTcpOtel(),
        GrpcAio(),
        RawTcp(),
        *NATS_STACKS,
    )
}
