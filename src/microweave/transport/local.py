"""In-process fast path: a call to a node served by this same process skips the network.

Bodies are still encoded and decoded (caller and handler never share mutable objects, and the
behaviour is the one a remote caller gets), but no socket, frame or syscall is involved. The
call runs in its own task, so the handler's `Context` never leaks into the caller's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from ..codec import JSON
from ..context import Context
from ..errors import Timeout, Unavailable
from ..server import Kind
from ..server.invoke import Invoker
from . import ClientTransport, StreamBody

__all__ = ["LocalClient", "serve", "serving", "unserve"]

# node id -> the invoker of a service running in this process, and the loop it runs on
_SERVING: dict[str, tuple[Invoker, asyncio.AbstractEventLoop]] = {}
_STREAM_BUFFER = 16  # replies a local stream may run ahead of its reader
_END = object()


def serve(node_id: str, invoker: Invoker) -> None:
    """Called from the loop that serves the node: only callers on that loop take the fast path."""
    _SERVING[node_id] = (invoker, asyncio.get_running_loop())


def unserve(node_id: str) -> None:
    _SERVING.pop(node_id, None)


def serving(node_id: str) -> bool:
    """Whether the node can be called in-process from the running loop. A caller on another
    loop (a BlockingClient's thread, say) must not run the handler on its own loop."""
    entry = _SERVING.get(node_id)
    if entry is None:
        return False
    try:
        return entry[1] is asyncio.get_running_loop()
    except RuntimeError:
        return False


def _invoker(node_id: str) -> Invoker:
    entry = _SERVING.get(node_id)
    if entry is None:
        raise Unavailable(f"node {node_id} stopped serving in this process", id="microweave.client")
    return entry[0]


def _context(timeout: float | None, metadata: Mapping[str, str]) -> Context:
    deadline = None if timeout is None else time.monotonic() + timeout
    return Context(deadline=deadline, metadata=metadata)


class LocalClient(ClientTransport):
    """`address` is the node id."""

    name = "local"

    async def unary(
        self,
        address: str,
        path: str,
        body: bytes,
        *,
        timeout: float | None,
        metadata: Mapping[str, str],
        content_type: str = JSON,
        response_metadata: dict[str, str] | None = None,
    ) -> bytes:
        invoker = _invoker(address)
        ctx = _context(timeout, metadata)
        task = asyncio.get_running_loop().create_task(
            self._run(invoker, invoker.unary_path(path, body, ctx, content_type), ctx, timeout)
        )
        try:
            return await task
        finally:
            if response_metadata is not None:
                response_metadata.update(ctx.response_metadata)

    @staticmethod
    async def _run(invoker: Invoker, call: Any, ctx: Context, timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                reply: bytes = await call
                return reply
        except TimeoutError:
            if ctx.expired:
                raise Timeout(f"deadline exceeded calling {ctx.endpoint}", id=invoker.service) from None
            raise invoker.error(TimeoutError(), ctx) from None
        except Exception as exc:
            raise invoker.error(exc, ctx) from None

    async def stream(
        self,
        address: str,
        path: str,
        kind: Kind,
        body: StreamBody,
        *,
        timeout: float | None,
        metadata: Mapping[str, str],
        content_type: str = JSON,
    ) -> AsyncGenerator[bytes, None]:
        invoker = _invoker(address)
        ctx = _context(timeout, metadata)
        queue: asyncio.Queue[Any] = asyncio.Queue(_STREAM_BUFFER)

        async def pump() -> None:
            if kind.response_streaming:
                async for item in invoker.stream_path(path, body, ctx, content_type):
                    await queue.put(item)
            else:
                await queue.put(await invoker.unary_path(path, body, ctx, content_type))
            await queue.put(_END)

        task = asyncio.get_running_loop().create_task(self._run(invoker, pump(), ctx, timeout))
        try:
            while True:
                if task.done() and queue.empty():
                    task.result()  # raises the handler's error, if that is why it ended
                    break
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait((getter, task), return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()  # a cancelled get takes no item
                    continue
                item = getter.result()
                if item is _END:
                    break
                yield item
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        """Nothing pooled: in-process calls hold no connections."""
