"""The `tcp` server: one asyncio Protocol per connection, many calls multiplexed on it.

A unary call arrives as one HEADERS frame and leaves as one TRAILERS frame; the replies to all
the calls one read brought in leave in one send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import msgspec

from ...context import Context, _current
from ...errors import MicroError, NotImplementedError_, TooManyRequests
from ...server import Kind, Router
from ...server.invoke import Invoker
from .. import ServerTransport
from . import frames as f
from .connection import CALL_KINDS, Connection, Credit, Inbox

__all__ = ["TcpServer"]

_KIND_NAMES = {
    f.CallKind.UNARY: "unary",
    f.CallKind.SERVER_STREAM: "server-streaming",
    f.CallKind.CLIENT_STREAM: "client-streaming",
    f.CallKind.BIDI: "bidirectional-streaming",
}
_KIND_STREAMS_REQUEST = (f.CallKind.CLIENT_STREAM, f.CallKind.BIDI)


def _task_factory() -> Any:
    """Python 3.12+ starts a call's task eagerly: a handler that never waits finishes inside
    the read callback, with no trip through the loop. 3.11 schedules it like any task."""
    if sys.version_info >= (3, 12):
        return functools.partial(asyncio.Task, eager_start=True)
    return None


_EAGER = _task_factory()


class _Stream:
    __slots__ = ("ctx", "headers", "inbox", "send_credit", "task")

    def __init__(self, headers: f.Headers, ctx: Context) -> None:
        self.headers = headers
        self.ctx = ctx
        self.task: asyncio.Task[Any] | None = None
        self.inbox: Inbox | None = None
        self.send_credit: Credit | None = None


class _ServerConnection(Connection):
    is_server = True

    def __init__(self, owner: TcpServer) -> None:
        super().__init__(max_frame_size=owner.max_frame_size, window=owner.window)
        self.owner = owner
        self.invoker = owner.invoker
        self.streams: dict[int, _Stream] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self.last_opened = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.owner.connections.add(self)
        if self.owner.draining:
            self.close(f.ErrorCode.NO_ERROR, "server is draining")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        super().connection_lost(exc)
        self.owner.connections.discard(self)
        self.owner.drained.set()

    def last_stream_id(self) -> int:
        return self.last_opened

    def active(self) -> int:
        return len(self.streams)

    def streams_lost(self, exc: Exception | None) -> None:
        for stream in list(self.streams.values()):
            self.reset(stream, None)

    # -- frames ---------------------------------------------------------------------------------

    def stream_frame(self, frame: f.Frame) -> None:
        if type(frame) is f.Headers:
            self.open(frame)
            return
        sid = getattr(frame, "stream_id", 0)
        stream = self.streams.get(sid)
        if stream is None:
            return  # a stream we already finished or reset: late frames are dropped
        if type(frame) is f.Data:
            if stream.inbox is None:  # unary or server-streaming: the request body came late
                if frame.body is not None and stream.headers.body is None:
                    stream.headers = msgspec.structs.replace(stream.headers, body=frame.body)
                if frame.flags & f.END_STREAM:
                    self.start(stream)
                return
            if frame.body is not None and not stream.inbox.put(frame.body):
                self.reset(stream, f.ErrorCode.FLOW_CONTROL_ERROR)
                return
            if frame.flags & f.END_STREAM:
                stream.inbox.end()
        elif type(frame) is f.RstStream:
            self.reset(stream, None)
        elif type(frame) is f.WindowUpdate and stream.send_credit is not None:
            stream.send_credit.grant(frame.increment)

    def finish(self, sid: int) -> bool:
        """Forget a stream (False if it was already gone); tell a draining server when the
        last one of this connection ends."""
        if self.streams.pop(sid, None) is None:
            return False
        if not self.streams and self.owner.draining:
            self.owner.drained.set()
        return True

    def reset(self, stream: _Stream, code: int | None) -> None:
        """End a stream without TRAILERS: the client reset it (`code` None), or we do."""
        self.finish(stream.headers.stream_id)
        if stream.task is not None:
            stream.task.cancel()
        if stream.inbox is not None:
            stream.inbox.end(asyncio.CancelledError())
        if code is not None:
            self.write(f.encode_rst_stream(stream.headers.stream_id, code))

    def open(self, h: f.Headers) -> None:
        self.last_opened = h.stream_id
        if self.owner.draining or self.goaway_sent:
            self.write(f.encode_rst_stream(h.stream_id, f.ErrorCode.REFUSED_STREAM))
            return
        deadline = time.monotonic() + h.timeout_us / 1e6 if h.timeout_us else None
        ctx = Context(endpoint=h.path, deadline=deadline, metadata=h.metadata)
        stream = _Stream(h, ctx)
        self.streams[h.stream_id] = stream
        if h.kind in _KIND_STREAMS_REQUEST:
            stream.inbox = Inbox(self, h.stream_id, self.settings.initial_window)
            if h.body is not None:
                stream.inbox.put(h.body)
            if h.flags & f.END_STREAM:
                stream.inbox.end()
            self.start(stream)
        elif h.flags & f.END_STREAM:
            self.start(stream)
        # else: a unary or server-streaming request whose body follows in DATA

    def start(self, stream: _Stream) -> None:
        h = stream.headers
        kind = self.endpoint_kind(h.path)
        if kind is not None and kind != h.kind:
            called = f.CallKind(h.kind).name.lower().replace("_", "-")
            self.fail(stream, NotImplementedError_(
                f"{h.path} is {_KIND_NAMES[kind]}; called as {called}", id=self.invoker.service
            ))  # fmt: skip
            return
        if h.kind == f.CallKind.UNARY:
            body = h.body if h.body is not None else b""
            self.run_task(
                stream, self.invoker.unary_path(h.path, body, stream.ctx, h.content_type), unary=True
            )
        elif h.kind == f.CallKind.CLIENT_STREAM:
            assert stream.inbox is not None
            call = self.invoker.unary_path(h.path, _bodies(stream.inbox), stream.ctx, h.content_type)
            self.run_task(stream, call, unary=True)
        else:
            stream.send_credit = Credit(self.peer.initial_window)
            self.run_task(stream, self.stream_replies(stream))

    def endpoint_kind(self, path: str) -> f.CallKind | None:
        """The call kind the endpoint at `path` serves, None when no endpoint is there."""
        method = self.invoker.router.methods.get(path)
        if method is not None:
            return CALL_KINDS[method.kind]
        handler = self.invoker.router.servicer_handlers.get(path)
        if handler is None:
            return None
        return CALL_KINDS[Kind.of(handler.request_streaming, handler.response_streaming)]

    # -- deadlines: one timer per connection, at the earliest deadline, instead of one per call --

    def sweep_at(self, deadline: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at = deadline
        self._sweep = self.loop.call_at(_loop_time(self.loop, deadline), self.sweep)

    def sweep(self) -> None:
        """Cancel the calls whose deadline has passed; wake again at the next deadline."""
        self._sweep, self._sweep_at = None, math.inf
        now, upcoming = time.monotonic(), math.inf
        for stream in list(self.streams.values()):
            deadline = stream.ctx.deadline
            if deadline is None or stream.task is None:
                continue
            if deadline <= now:
                stream.task.cancel()  # its done-callback answers DEADLINE_EXCEEDED
            else:
                upcoming = min(upcoming, deadline)
        if upcoming < math.inf:
            self.sweep_at(upcoming)

    # -- running calls ----------------------------------------------------------------------

    def run_task(self, stream: _Stream, call: Coroutine[Any, Any, Any], *, unary: bool = False) -> None:
        """Run one call in its own task (so handlers may use anything asyncio offers, such as
        `asyncio.timeout`), cancelled at the caller's deadline; answer when it ends."""
        token = _current.set(stream.ctx)  # the task copies the context as it is created
        try:
            task = stream.task = _EAGER(call, loop=self.loop) if _EAGER else self.loop.create_task(call)
        finally:
            _current.reset(token)
        deadline = stream.ctx.deadline
        if deadline is not None and deadline < self._sweep_at and not task.done():
            self.sweep_at(deadline)

        def finished(task: asyncio.Task[Any]) -> None:
            if self.streams.get(stream.headers.stream_id) is not stream:
                return  # reset by the client, or the connection is gone: nobody to answer
            if task.cancelled():
                self.fail(stream, asyncio.CancelledError())
            elif (exc := task.exception()) is not None:
                self.fail(stream, exc)
            elif unary:
                self.reply(stream, task.result())
            else:
                self.end(stream)

        task.add_done_callback(finished)

    async def stream_replies(self, stream: _Stream) -> None:
        h = stream.headers
        assert stream.send_credit is not None
        arg: bytes | AsyncIterator[bytes]
        arg = _bodies(stream.inbox) if stream.inbox is not None else (h.body or b"")
        credit, sid = stream.send_credit, h.stream_id
        async for body in self.invoker.stream_path(h.path, arg, stream.ctx, h.content_type):
            frame = f.encode_data(sid, body)
            if len(frame) - f.HEADER_SIZE > self.peer.max_frame_size:
                raise self.too_large(len(body))
            await credit.take()
            await self.drain()
            if self.closed:
                raise ConnectionResetError("connection lost")
            self.write(frame)

    def reply(self, stream: _Stream, body: bytes) -> None:
        sid = stream.headers.stream_id
        frame = f.encode_trailers(sid, metadata=stream.ctx.response_metadata or None, body=body)
        if len(frame) - f.HEADER_SIZE > self.peer.max_frame_size:
            self.fail(stream, self.too_large(len(frame) - f.HEADER_SIZE))
            return
        if self.finish(sid):
            self.write(frame)

    def too_large(self, size: int) -> TooManyRequests:
        limit = self.peer.max_frame_size
        return TooManyRequests(
            f"reply of {size} bytes is over the caller's limit of {limit}", id=self.invoker.service
        )

    def end(self, stream: _Stream) -> None:
        sid = stream.headers.stream_id
        if self.finish(sid):
            self.write(f.encode_trailers(sid, metadata=stream.ctx.response_metadata or None))

    def fail(self, stream: _Stream, exc: BaseException) -> None:
        sid = stream.headers.stream_id
        if not self.finish(sid):
            return
        err: MicroError = self.invoker.error(exc, stream.ctx)
        wire = f.WireError(id=err.id, code=err.code, detail=err.detail, status=err.status)
        status = err.grpc_code.value[0]
        self.write(
            f.encode_trailers(sid, status=status, error=wire, metadata=stream.ctx.response_metadata or None)
        )


def _loop_time(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    return loop.time() + (deadline - time.monotonic())


async def _bodies(inbox: Inbox | None) -> AsyncIterator[bytes]:
    assert inbox is not None
    while (body := await inbox.get()) is not None:
        yield body


class TcpServer(ServerTransport):
    name = "tcp"

    def __init__(
        self, *, max_frame_size: int = f.DEFAULT_MAX_FRAME_SIZE, window: int = f.DEFAULT_INITIAL_WINDOW
    ) -> None:
        self.max_frame_size = max_frame_size
        self.window = window
        self.connections: set[_ServerConnection] = set()
        self.draining = False
        self.drained = asyncio.Event()  # set when a connection goes quiet while draining
        self._server: asyncio.Server | None = None
        self.invoker: Invoker

    async def start(self, router: Router, invoker: Invoker, *, host: str, port: int) -> str:
        self.invoker = invoker
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), host, port)
        bound = self._server.sockets[0].getsockname()
        return f"{host}:{bound[1]}"

    async def stop(self, grace: float) -> None:
        """GOAWAY to every connection, finish in-flight calls for up to `grace`, then close."""
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        for conn in list(self.connections):
            conn.goaway_sent = True
            conn.write(f.encode_goaway(conn.last_opened, f.ErrorCode.NO_ERROR, "draining"))
        deadline = time.monotonic() + grace
        while any(c.active() for c in self.connections) and (left := deadline - time.monotonic()) > 0:
            self.drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), left)
        for conn in list(self.connections):
            conn.close(f.ErrorCode.NO_ERROR, "server stopped")
        await self._server.wait_closed()
        self._server = None
