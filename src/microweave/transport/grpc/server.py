"""Native gRPC server (grpc.aio): typed endpoints with JSON bodies, grpcio servicers as they are.

Typed endpoints are registered as grpc "registered methods" with raw-bytes (de)serializers, so
grpc does no lookup in Python and we decode the body once with the endpoint's own codec. Any
other path reaches a catch-all handler that answers UNIMPLEMENTED naming the known endpoints.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ...codec import JSON
from ...context import Context
from ...server import Kind, Method, Router
from ...server.invoke import Invoker
from .. import ServerTransport

__all__ = ["MAX_MESSAGE", "GrpcServer"]

MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's own default, said out loud
CONTENT_TYPE_KEY = "x-content-type"


def _context(method_name: str, grpc_context: Any) -> Context:
    remaining = grpc_context.time_remaining()
    ctx = Context(endpoint=method_name, deadline=None if remaining is None else time.monotonic() + remaining)
    # built once and handed over: Context(metadata=...) would copy it (binary values are skipped)
    ctx.metadata = {k: v for k, v in grpc_context.invocation_metadata() if v.__class__ is str}
    return ctx


def _content_type(ctx: Context) -> str:
    # gRPC owns the content-type header; go-micro names the body's codec in x-content-type
    return ctx.metadata.get(CONTENT_TYPE_KEY, JSON)


def _trailers(ctx: Context, grpc_context: Any) -> None:
    if ctx.response_metadata:
        grpc_context.set_trailing_metadata(tuple(ctx.response_metadata.items()))


class _GenericOnly:
    """Stands in for the server while health and reflection add themselves.

    grpc.aio's server loop keeps one pending future per *registered* method and waits on all of
    them for every call it accepts, so each registered method costs every call (~1.5 us, measured
    with bench/rpc.py). These rarely called services go through generic handlers instead.
    """

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass  # the generic handler added just before serves the same methods


class GrpcServer(ServerTransport):
    name = "grpc"

    def __init__(
        self, *, max_message: int = MAX_MESSAGE, options: list[tuple[str, Any]] | None = None
    ) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
            *(options or []),
        ]
        self._server: Any = None
        self.health: Any = None

    async def start(self, router: Router, invoker: Invoker, *, host: str, port: int) -> str:
        server = grpc.aio.server(options=self._options)
        by_service: dict[str, dict[str, Any]] = {}
        for method in router.methods.values():
            service, _, name = method.path[1:].partition("/")
            by_service.setdefault(service, {})[name] = _method_handler(method, invoker)
        for service, handlers in by_service.items():
            server.add_registered_method_handlers(service, handlers)
        for entry in router.servicers:
            entry.add_to_server(entry.servicer, server)

        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, _GenericOnly(server))
        names = [*by_service, *router.servicer_names()]
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [*router.servicer_names(), health.SERVICE_NAME, reflection.SERVICE_NAME]
            ),
            _GenericOnly(server),
        )
        server.add_generic_rpc_handlers((_Unknown(invoker),))

        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # newer grpcio raises where older returned 0
            bound = 0
        if bound == 0:
            raise OSError(f"gRPC could not listen on {host}:{port}")
        await server.start()
        self._server = server
        return f"{host}:{bound}"

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None


def _method_handler(method: Method, invoker: Invoker) -> Any:
    name = method.name

    async def fail(exc: BaseException, ctx: Context, grpc_context: Any) -> None:
        err = invoker.error(exc, ctx)
        _trailers(ctx, grpc_context)
        await grpc_context.abort(err.grpc_code, err.to_json())

    if method.kind is Kind.UNARY:

        async def unary(request: bytes, grpc_context: Any) -> bytes:
            ctx = _context(name, grpc_context)
            try:
                reply = await invoker.unary(method, request, ctx, _content_type(ctx))
            except Exception as exc:
                await fail(exc, ctx, grpc_context)
                raise  # abort raised already; keeps type checkers sure we never fall through
            _trailers(ctx, grpc_context)
            return reply

        return grpc.unary_unary_rpc_method_handler(unary)

    if method.kind is Kind.CLIENT_STREAM:

        async def client_stream(requests: AsyncIterator[bytes], grpc_context: Any) -> bytes:
            ctx = _context(name, grpc_context)
            try:
                reply = await invoker.client_stream(method, requests, ctx, _content_type(ctx))
            except Exception as exc:
                await fail(exc, ctx, grpc_context)
                raise
            _trailers(ctx, grpc_context)
            return reply

        return grpc.stream_unary_rpc_method_handler(client_stream)

    async def streaming(arg: Any, grpc_context: Any) -> AsyncIterator[bytes]:
        ctx = _context(name, grpc_context)
        try:
            async for out in invoker.stream(method, arg, ctx, _content_type(ctx)):
                yield out
        except Exception as exc:
            await fail(exc, ctx, grpc_context)
            raise
        _trailers(ctx, grpc_context)

    factory: Callable[..., Any] = (
        grpc.unary_stream_rpc_method_handler
        if method.kind is Kind.SERVER_STREAM
        else grpc.stream_stream_rpc_method_handler
    )
    return factory(streaming)


class _Unknown(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Any path no endpoint claims: UNIMPLEMENTED, with the names a caller could have meant."""

    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker

    def service(self, handler_call_details: Any) -> Any:
        err = self._invoker.unknown(handler_call_details.method)

        async def unimplemented(request: Any, grpc_context: Any) -> bytes:
            await grpc_context.abort(err.grpc_code, err.to_json())
            raise AssertionError("unreachable")

        return grpc.unary_unary_rpc_method_handler(unimplemented)
