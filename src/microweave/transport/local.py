"""In-process fast path: a call to a node served by this same process skips the network.

Bodies are still encoded and decoded (caller and handler never share mutable objects, and the
behaviour is the one a remote caller gets: the same pipeline, limits and errors), but no socket,
frame or syscall is involved. The call runs in its own task, so the handler's `Context` never
leaks into the caller's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Any

from ..codec import JSON
from ..errors import MicroError, NotDelivered
from ..registry import Node
from ..server import Kind
from ..server.pipeline import Pipeline
from . import ClientTransport, StreamBody

__all__ = ["LocalClient", "serve", "serving", "unserve"]

# node id -> the pipeline of a service running in this process, and the loop it runs on
_SERVING: dict[str, tuple[Pipeline, asyncio.AbstractEventLoop]] = {}
_STREAM_BUFFER = 16  # replies a local stream may run ahead of its reader
_END = object()


def serve(node_id: str, pipeline: Pipeline) -> None:
    """Called from the loop that serves the node: only callers on that loop take the fast path."""
    _SERVING[node_id] = (pipeline, asyncio.get_running_loop())


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


def _pipeline(node_id: str) -> Pipeline:
    entry = _SERVING.get(node_id)
    if entry is None:
        raise NotDelivered(f"node {node_id} stopped serving in this process", id="microweave.client")
    return entry[0]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


async def _remote(call: Awaitable[Any]) -> Any:
    """Errors from the pipeline are the node's answer, as over a wire."""
    try:
        return await call
    except MicroError as exc:
        exc.remote = True
        raise


def _drop(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: nobody is left to hear it


class LocalClient(ClientTransport):
    """`address` is the node id."""

    name = "local"

    def address_of(self, node: Node) -> str | None:
        return node.id if serving(node.id) else None

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
        pipeline = _pipeline(address)
        call = pipeline.call(
            path, body, transport=self.name, kind=Kind.UNARY, content_type=content_type,
            deadline=_deadline(timeout), metadata=dict(metadata), peer="in-process",
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(_remote(self._run(pipeline.unary(call), timeout)))
        try:
            reply: bytes = await task
            return reply
        finally:
            if not task.done():  # the caller gave up: the handler is cancelled, its answer dropped
                task.cancel()
                task.add_done_callback(_drop)
            if response_metadata is not None:
                response_metadata.update(call.ctx.response_metadata)

    @staticmethod
    async def _run(call: Awaitable[Any], timeout: float | None) -> Any:
        """The deadline cancels the handler; the pipeline's boundary answers 408 for it."""
        if timeout is None:
            return await call
        async with asyncio.timeout(timeout):
            return await call

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
        pipeline = _pipeline(address)
        call = pipeline.call(
            path, body, transport=self.name, kind=kind, content_type=content_type,
            deadline=_deadline(timeout), metadata=dict(metadata), peer="in-process",
        )  # fmt: skip
        queue: asyncio.Queue[Any] = asyncio.Queue(_STREAM_BUFFER)

        async def pump() -> None:
            if kind.response_streaming:
                async for item in pipeline.stream(call):
                    await queue.put(item)
            else:
                await queue.put(await pipeline.unary(call))
            await queue.put(_END)

        task = asyncio.get_running_loop().create_task(_remote(self._run(pump(), timeout)))
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
