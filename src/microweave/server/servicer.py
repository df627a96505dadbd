"""Running grpcio-generated servicer methods off the gRPC server (tcp, in-process).

A servicer method expects `(request, context)` with a grpc `ServicerContext`. `ServicerContext`
below is the part of that API servicers actually use (abort, metadata, deadline, codes), backed
by our `Context`, so the same servicer object serves gRPC, tcp and in-process callers alike.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc

from ..context import Context, _current
from ..errors import MicroError, error_for_code, grpc_to_code

__all__ = ["ServicerContext", "run_servicer"]


class ServicerContext:
    """The grpc.ServicerContext methods servicers call, over a microweave `Context`."""

    def __init__(self, ctx: Context, peer: str = "") -> None:
        self.ctx = ctx
        self._peer = peer
        self._code: Any = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.ctx.metadata.items())

    def time_remaining(self) -> float | None:
        return self.ctx.time_remaining()

    def peer(self) -> str:
        return self._peer

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in metadata:
            self.ctx.set_response_metadata(key, value)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.set_trailing_metadata(metadata)

    def set_code(self, code: Any) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def cancelled(self) -> bool:
        return self.ctx.expired

    def is_active(self) -> bool:
        return not self.ctx.expired

    def abort(self, code: Any, details: str = "") -> NoReturn:
        # grpc.aio's abort is a coroutine and the sync one is not; raising works for both uses,
        # since `await context.abort(...)` raises before the await happens.
        raise _as_error(code, details)

    async def abort_with_status(self, status: Any) -> NoReturn:
        raise _as_error(status.code, status.details)

    def failed(self) -> MicroError | None:
        """What set_code/set_details said, when the method returned without aborting."""
        if self._code is None or self._code == grpc.StatusCode.OK:
            return None
        return _as_error(self._code, self._details)


def _as_error(code: Any, details: str) -> MicroError:
    return error_for_code(grpc_to_code(code), details or str(code))


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def run_servicer(handler: Any, arg: Any, ctx: Context) -> Any:
    """Call a servicer's unary-response behaviour; raise MicroError as it told the client."""
    _current.set(ctx)
    context = ServicerContext(ctx)
    behaviour = handler.unary_unary or handler.stream_unary
    if inspect.iscoroutinefunction(behaviour) or handler.request_streaming:
        result = await _maybe_await(behaviour(arg, context))
    else:
        result = await asyncio.to_thread(behaviour, arg, context)
    failure = context.failed()
    if failure is not None:
        raise failure
    return result


async def stream_servicer(handler: Any, arg: Any, ctx: Context) -> AsyncIterator[Any]:
    """Call a servicer's streaming-response behaviour (async or sync generator)."""
    _current.set(ctx)
    context = ServicerContext(ctx)
    behaviour = handler.unary_stream or handler.stream_stream
    produced = behaviour(arg, context)
    if hasattr(produced, "__aiter__"):
        async for item in produced:
            yield item
    else:
        for item in await _maybe_await(produced):
            yield item
    failure = context.failed()
    if failure is not None:
        raise failure
