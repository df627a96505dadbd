"""Native gRPC server (grpc.aio): every endpoint, typed or grpcio servicer, through the pipeline.

Endpoints are registered as grpc "registered methods" with raw-bytes (de)serializers, so grpc
does no lookup in Python and the pipeline decodes the body once with the endpoint's own codec
(a servicer's own protobuf functions included: its errors, limits and context are the same as
a typed handler's). Any other path reaches a catch-all handler: go-micro's rule first (a path
`/<any package>.<Handler>/<Method>` is endpoint `Handler.Method`), else UNIMPLEMENTED through
the pipeline too.

go-micro's gRPC client names the body's codec in `x-content-type` (`application/grpc+proto`,
`application/json`, ...) and its timeout in the `timeout` header (nanoseconds): both are
honoured here, as go-micro's own server does, and neither is left in the call's metadata
(a handler's outbound calls would otherwise carry them on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ...codec import JSON, PROTO
from ...context import Context
from ...errors import MicroError, Unavailable
from ...server import Kind
from ...server.call import Call, Target
from ...server.pipeline import Pipeline
from .. import ServerTransport, limits

__all__ = ["CONTENT_TYPES", "MAX_MESSAGE", "GrpcServer"]

MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's own default, said out loud
CONTENT_TYPE_KEY = "x-content-type"
#: go-micro's timeout header: the caller's request timeout in nanoseconds
TIMEOUT_KEY = "timeout"
#: go-micro's content types (its server's codec table) -> the codec names endpoints know;
#: any other value goes to the endpoint's codec as it is (msgpack, or a 400 naming it)
CONTENT_TYPES = {
    "application/grpc": PROTO,
    "application/grpc+proto": PROTO,
    "application/proto": PROTO,
    "application/protobuf": PROTO,
    "application/x-protobuf": PROTO,
    "application/octet-stream": PROTO,
    "application/grpc+json": JSON,
    "application/json": JSON,
}
#: the longest x-content-type passed on as it came (the longest known is 24 characters)
MAX_CONTENT_TYPE = 100
#: trailing metadata of a call a draining node refused before running it: the caller may send
#: it elsewhere (grpc-core's own refusal while it shuts down is a bare CANCELLED, which says not)
REFUSED_KEY = "micro-refused"


def _call(pipeline: Pipeline, path: str, body: Any, grpc_context: Any) -> tuple[Call, _Cutoff | None]:
    """The call, and the timer that ends it at go-micro's `timeout` when that is sooner than
    gRPC's own deadline (which grpc enforces itself)."""
    remaining = grpc_context.time_remaining()
    # binary (-bin) values are skipped: metadata is text
    metadata = {k: v for k, v in grpc_context.invocation_metadata() if v.__class__ is str}
    # gRPC owns the content-type header; go-micro names the body's codec in x-content-type;
    # without it, the endpoint's own (JSON, or protobuf for protobuf-typed endpoints)
    content_type = metadata.pop(CONTENT_TYPE_KEY, None)
    if content_type is not None:
        # an unknown one reaches the endpoint's codec, whose 400 names it: cut to a length no
        # codec name has, so a caller's 8 KiB header is not echoed back in every error
        content_type = CONTENT_TYPES.get(content_type, content_type[:MAX_CONTENT_TYPE])
    cutoff = None
    timeout = metadata.pop(TIMEOUT_KEY, None)
    if timeout is not None:
        seconds = _nanoseconds(timeout)
        if seconds is not None and (remaining is None or seconds < remaining):
            remaining, cutoff = seconds, _Cutoff(seconds)
    call = pipeline.call(
        path,
        body,
        transport="grpc",
        content_type=content_type,
        deadline=None if remaining is None else time.monotonic() + remaining,
        metadata=metadata,
        peer=grpc_context.peer(),  # ipv4:127.0.0.1:5000
    )
    return call, cutoff


def _nanoseconds(timeout: str) -> float | None:
    """go-micro's `timeout` header in seconds; None for a value that is no count of
    nanoseconds, which go-micro's server ignores too ("0" is already expired, there and here)."""
    if not (timeout.isascii() and timeout.isdigit() and len(timeout) <= 20):
        return None
    return int(timeout) / 1e9


class _Cutoff:
    """Cancels the running call at a deadline grpc does not know of (go-micro's `timeout`
    header); the pipeline answers 408 for a call cancelled past its deadline."""

    __slots__ = ("fired", "handle", "task")

    def __init__(self, seconds: float) -> None:
        self.task = asyncio.current_task()
        self.fired = False
        self.handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        if self.task is not None:
            self.fired = True
            self.task.cancel()

    def done(self) -> None:
        self.handle.cancel()
        if self.fired and self.task is not None:
            self.task.uncancel()  # ours, answered as 408: not a cancellation of grpc's task


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
        self,
        *,
        max_message: int = MAX_MESSAGE,
        max_concurrent_streams: int | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            # grpc's own default is no limit: the same bound as tcp (transport/limits.py)
            ("grpc.max_concurrent_streams", max_concurrent_streams or limits.MAX_CONCURRENT_STREAMS),
            ("grpc.so_reuseport", 0),
            *(options or []),
        ]
        self._server: Any = None
        self.health: Any = None
        #: what grpc.health.v1 reports for "" and each service: its node's readiness, when the
        #: node tells (`set_serving`); a server on its own serves as soon as it listens
        self.serving = True
        self._health_names: list[str] = []
        #: stopping: new calls are answered UNAVAILABLE with `REFUSED_KEY`, never run
        self.draining = False
        self._pipeline: Pipeline | None = None

    async def start(self, pipeline: Pipeline, *, host: str, port: int) -> str:
        router = pipeline.router
        server = grpc.aio.server(options=self._options)
        self.draining = False
        by_service: dict[str, dict[str, Any]] = {}
        for target in router.targets.values():
            service, _, name = target.path[1:].partition("/")
            by_service.setdefault(service, {})[name] = _method_handler(
                target.path, target.kind, pipeline, self
            )
        for service, handlers in by_service.items():
            server.add_registered_method_handlers(service, handlers)

        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, _GenericOnly(server))
        self._health_names = ["", *by_service]
        await self._report_serving()
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [*router.servicer_names(), health.SERVICE_NAME, reflection.SERVICE_NAME]
            ),
            _GenericOnly(server),
        )
        server.add_generic_rpc_handlers((_Unknown(pipeline, self, _go_micro_names(router.targets)),))

        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # newer grpcio raises where older returned 0
            bound = 0
        if bound == 0:
            raise OSError(f"gRPC could not listen on {host}:{port}")
        await server.start()
        self._server = server
        self._pipeline = pipeline
        return f"{host}:{bound}"

    def set_serving(self, serving: bool) -> Awaitable[None] | None:
        """The node's readiness changed: report it in grpc.health.v1 (a readiness watcher)."""
        self.serving = serving
        return self._report_serving() if self.health is not None else None

    async def _report_serving(self) -> None:
        # reads `serving` when it runs: reports applied out of order still end on the latest
        status = self.serving and not self.draining
        value = (
            health_pb2.HealthCheckResponse.SERVING if status else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._health_names:
            await self.health.set(name, value)

    async def stop(self, grace: float) -> None:
        """Refuse new calls as not delivered (callers retry them on another node) while the
        calls in flight finish, for up to `grace` seconds; then stop grpc's server. Stopping it
        at once would cancel, with a bare CANCELLED, calls that arrive as it begins: their
        callers could not tell that those never ran."""
        if self._server is None:
            return
        self.draining = True
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace
        if self._pipeline is not None:  # the node's calls on every transport: done, or cancelled
            await self._pipeline.drain(grace)
        await self._server.stop(max(0.0, deadline - time.monotonic()))
        self._server = None


async def _refuse(pipeline: Pipeline, grpc_context: Any) -> None:
    err = Unavailable("the node is draining; the call was not run", id=pipeline.service)
    grpc_context.set_trailing_metadata(((REFUSED_KEY, "draining"),))
    await grpc_context.abort(err.grpc_code, err.to_json())


def _method_handler(path: str, kind: Kind, pipeline: Pipeline, server: GrpcServer) -> Any:
    """A raw-bytes grpc handler that hands the call to the pipeline."""

    async def fail(err: MicroError, call: Call, grpc_context: Any) -> None:
        _trailers(call.ctx, grpc_context)
        await grpc_context.abort(err.grpc_code, err.to_json())

    if not kind.response_streaming:

        async def unary(request: Any, grpc_context: Any) -> bytes:
            if server.draining:
                await _refuse(pipeline, grpc_context)
            call, cutoff = _call(pipeline, path, request, grpc_context)
            try:
                reply = await pipeline.unary(call)
            except MicroError as err:
                await fail(err, call, grpc_context)
                raise  # abort raised already; keeps type checkers sure we never fall through
            finally:
                if cutoff is not None:
                    cutoff.done()
            _trailers(call.ctx, grpc_context)
            return reply

        factory = (
            grpc.stream_unary_rpc_method_handler
            if kind.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory(unary)

    async def streaming(request: Any, grpc_context: Any) -> AsyncIterator[bytes]:
        if server.draining:
            await _refuse(pipeline, grpc_context)
        call, cutoff = _call(pipeline, path, request, grpc_context)
        try:
            async for reply in pipeline.stream(call):
                yield reply
        except MicroError as err:
            await fail(err, call, grpc_context)
            raise
        finally:
            if cutoff is not None:
                cutoff.done()
        _trailers(call.ctx, grpc_context)

    stream_factory: Callable[..., Any] = (
        grpc.stream_stream_rpc_method_handler
        if kind.request_streaming
        else grpc.unary_stream_rpc_method_handler
    )
    return stream_factory(streaming)


def _go_micro_name(path: str) -> str:
    """`/any.pkg.Greeter/Hello` -> `Greeter.Hello`: go-micro's server keeps only the last `.`
    segment of the service part, so its clients may call with any package prefix."""
    service, _, method = path[1:].partition("/")
    return f"{service.rpartition('.')[2]}.{method}"


def _go_micro_names(targets: Mapping[str, Target]) -> dict[str, Target]:
    """Every endpoint by go-micro's name for it; a name two endpoints share (a servicer's
    `/a.Greeter/Hello` beside a typed `Greeter.Hello`) routes nowhere rather than by chance."""
    names: dict[str, Target | None] = {}
    for path, target in targets.items():
        name = _go_micro_name(path)
        names[name] = None if name in names else target
    return {name: target for name, target in names.items() if target is not None}


class _Unknown(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Any path no endpoint claims: the endpoint go-micro's rule names, if any; else
    UNIMPLEMENTED from the pipeline, naming the known endpoints."""

    def __init__(self, pipeline: Pipeline, server: GrpcServer, names: Mapping[str, Target]) -> None:
        self._pipeline = pipeline
        self._server = server
        # one handler per endpoint, made once: the paths callers send are theirs, unbounded
        self._handlers = {
            name: _method_handler(t.path, t.kind, pipeline, server) for name, t in names.items()
        }

    def service(self, handler_call_details: Any) -> Any:
        path = handler_call_details.method
        if not isinstance(path, str):
            path = bytes(path).decode(errors="replace")
        handler = self._handlers.get(_go_micro_name(path))
        if handler is not None:
            return handler
        return _method_handler(path, Kind.UNARY, self._pipeline, self._server)
