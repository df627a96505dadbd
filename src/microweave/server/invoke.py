"""Running one call against a typed endpoint: decode, call the handler, encode, map errors.

Every transport calls these, so a handler behaves the same whichever wire reached it. A handler
that raises something other than a `MicroError` gives the caller INTERNAL with a correlation id;
the traceback goes to the server log under that id and never to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..codec import JSON
from ..context import Context, _current
from ..errors import BadRequest, Cancelled, InternalServerError, MicroError, NotImplementedError_, Timeout
from . import Method, Router
from .servicer import run_servicer, stream_servicer

__all__ = ["Invoker"]

log = logging.getLogger("microweave.server")


class Invoker:
    """Runs calls for one service's router; the service's name is the `id` of its errors."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.service = router.package

    def unknown(self, path: str) -> NotImplementedError_:
        known = ", ".join(sorted(self.router.by_name)) or "none"
        return NotImplementedError_(
            f"unknown endpoint {path} on service {self.service}; known endpoints: {known}",
            id=self.service,
        )

    # -- by path: for transports that do not dispatch themselves (tcp, in-process) ---------

    async def unary_path(
        self, path: str, body: bytes | AsyncIterator[bytes], ctx: Context, content_type: str = JSON
    ) -> bytes:
        """A unary (or client-streaming, when `body` is an iterator) call to any endpoint."""
        method = self.router.methods.get(path)
        if method is not None:
            ctx.endpoint = method.name
            if isinstance(body, bytes | bytearray | memoryview):
                return await self.unary(method, body, ctx, content_type)
            return await self.client_stream(method, body, ctx, content_type)
        handler = self.router.servicer_handlers.get(path)
        if handler is None or handler.response_streaming:
            raise self.unknown(path)
        ctx.endpoint = path
        if isinstance(body, bytes | bytearray | memoryview):
            arg: Any = _deserialize(handler.request_deserializer, body)
        else:
            arg = _map(handler.request_deserializer, body)
        result = await run_servicer(handler, arg, ctx)
        out: bytes = handler.response_serializer(result)
        return out

    def stream_path(
        self, path: str, arg: bytes | AsyncIterator[bytes], ctx: Context, content_type: str = JSON
    ) -> AsyncIterator[bytes]:
        """A server-streaming or bidi call to any endpoint."""
        method = self.router.methods.get(path)
        if method is not None:
            ctx.endpoint = method.name
            return self.stream(method, arg, ctx, content_type)
        handler = self.router.servicer_handlers.get(path)
        if handler is None or not handler.response_streaming:
            raise self.unknown(path)
        ctx.endpoint = path
        if isinstance(arg, bytes | bytearray | memoryview):
            request: Any = _deserialize(handler.request_deserializer, arg)
        else:
            request = _map(handler.request_deserializer, arg)
        return _serialize_each(handler.response_serializer, stream_servicer(handler, request, ctx))

    def error(self, exc: BaseException, ctx: Context) -> MicroError:
        """What the caller is told about an exception raised while serving `ctx`."""
        if isinstance(exc, MicroError):
            if not exc.id:
                exc.id = self.service
            return exc
        if isinstance(exc, asyncio.CancelledError):
            if ctx.expired:
                return Timeout(f"deadline exceeded serving {ctx.endpoint}", id=self.service)
            return Cancelled(f"call to {ctx.endpoint} was cancelled", id=self.service)
        correlation = uuid.uuid4().hex[:16]
        log.error(
            "handler %s raised (correlation id %s)",
            ctx.endpoint,
            correlation,
            exc_info=exc,
            extra={
                "service": self.service,
                "endpoint": ctx.endpoint,
                "correlation_id": correlation,
            },
        )
        return InternalServerError(
            f"internal error in {ctx.endpoint}; correlation id {correlation}", id=self.service
        )

    async def _call(self, method: Method, arg: Any, ctx: Context) -> Any:
        _current.set(ctx)  # each call runs in its own task: no reset needed
        if not method.is_async:
            # to_thread copies the contextvars, so the handler still sees `ctx`
            if method.takes_context:
                return await asyncio.to_thread(method.fn, arg, ctx)
            return await asyncio.to_thread(method.fn, arg)
        if method.takes_context:
            return await method.fn(arg, ctx)
        return await method.fn(arg)

    async def unary(self, method: Method, body: bytes, ctx: Context, content_type: str = JSON) -> bytes:
        request = method.request_codec.decode(body, content_type)
        if method.is_async:  # the common case, without the extra coroutine of `_call`
            _current.set(ctx)
            result = await (method.fn(request, ctx) if method.takes_context else method.fn(request))
        else:
            result = await self._call(method, request, ctx)
        return method.response_codec.encode(result, content_type)

    async def client_stream(
        self, method: Method, bodies: AsyncIterator[bytes], ctx: Context, content_type: str = JSON
    ) -> bytes:
        result = await self._call(method, self._decode_stream(method, bodies, content_type), ctx)
        return method.response_codec.encode(result, content_type)

    async def stream(
        self,
        method: Method,
        arg: bytes | AsyncIterator[bytes],
        ctx: Context,
        content_type: str = JSON,
    ) -> AsyncIterator[bytes]:
        """Server-streaming (`arg` is one body) or bidi (`arg` is an iterator of bodies)."""
        _current.set(ctx)
        if isinstance(arg, bytes | bytearray | memoryview):
            request: Any = method.request_codec.decode(bytes(arg), content_type)
        else:
            request = self._decode_stream(method, arg, content_type)
        gen = method.fn(request, ctx) if method.takes_context else method.fn(request)
        encode = method.response_codec.encode
        try:
            async for item in gen:
                yield encode(item, content_type)
        finally:
            await gen.aclose()

    @staticmethod
    async def _decode_stream(
        method: Method, bodies: AsyncIterator[bytes], content_type: str
    ) -> AsyncIterator[Any]:
        decode = method.request_codec.decode
        async for body in bodies:
            yield decode(body, content_type)


def _deserialize(deserializer: Any, body: bytes | bytearray | memoryview) -> Any:
    try:
        return deserializer(bytes(body)) if deserializer else body
    except Exception as exc:  # protobuf's DecodeError, or whatever a custom deserializer raises
        raise BadRequest(f"invalid request body: {exc}") from None


async def _map(deserializer: Any, bodies: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for body in bodies:
        yield _deserialize(deserializer, body)


async def _serialize_each(serializer: Any, items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for item in items:
        yield serializer(item) if serializer else item
