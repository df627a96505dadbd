"""Running grpcio-generated servicer methods off the gRPC server (tcp, in-process).

A servicer method expects `(request, context)` with a grpc `ServicerContext`. `ServicerContext`
below is the part of that API servicers actually use (abort, metadata, deadline, codes), backed
by our `Context`, so the same servicer object serves gRPC, tcp and in-process callers alike.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from ..context import Context
from ..errors import MicroError, error_for_code, grpc_to_code

if TYPE_CHECKING:
    from .threads import WorkerThreads

__all__ = ["ServicerContext", "run_servicer", "stream_servicer"]


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


async def run_servicer(handler: Any, arg: Any, ctx: Context, threads: WorkerThreads) -> Any:
    """Call a servicer's unary-response behaviour; raise MicroError as it told the client.

    A sync method runs on the service's worker threads, never on the event loop."""
    context = ServicerContext(ctx)
    behaviour = handler.unary_unary or handler.stream_unary
    if inspect.iscoroutinefunction(behaviour):
        result = await behaviour(arg, context)
    elif handler.request_streaming:  # a sync method would have to block on an async iterator
        result = behaviour(arg, context)
        if inspect.isawaitable(result):
            result = await result
    else:
        result = await threads.run(behaviour, arg, context)
    failure = context.failed()
    if failure is not None:
        raise failure
    return result


_DONE = object()


async def stream_servicer(handler: Any, arg: Any, ctx: Context, threads: WorkerThreads) -> AsyncIterator[Any]:
    """Call a servicer's streaming-response behaviour; a sync generator is stepped on the
    worker threads, so a blocking `yield` never stalls the event loop."""
    context = ServicerContext(ctx)
    behaviour = handler.unary_stream or handler.stream_stream
    if inspect.isasyncgenfunction(behaviour) or inspect.iscoroutinefunction(behaviour):
        produced = behaviour(arg, context)
        if inspect.isawaitable(produced):
            produced = await produced
        async for item in produced:
            yield item
    else:
        items = await threads.run(lambda: iter(behaviour(arg, context)))
        try:
            while (item := await threads.run(next, items, _DONE)) is not _DONE:
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                with contextlib.suppress(ValueError):  # still running in its thread: it ends there
                    close()
    failure = context.failed()
    if failure is not None:
        raise failure
