"""One `tcp` server connection: its streams, each call handed to the pipeline, the answers.

A unary call arrives as one HEADERS frame and leaves as one TRAILERS frame; the replies to all
the calls one read brought in leave in one send.

Request bytes a connection's calls make us hold count against a per-connection budget: a unary
or server-streaming request body from its arrival until its call ends, a streaming request's
messages from their arrival until the handler asks for the next one. Over it, the connection is
not read until the handlers catch up (`Connection.hold`, `release`; flow control alone would let
one connection hold 256 streams x 16 messages x 4 MiB).
"""

from __future__ import annotations

import asyncio
import functools
import math
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from ...context import Context
from ...errors import InternalServerError, MicroError, Timeout, TooManyRequests
from ...server import Kind
from ...server.call import Call
from . import frames as f
from .connection import CALL_KINDS, Connection, warn
from .flow import Credit, Inbox

if TYPE_CHECKING:
    from .server import TcpServer

__all__ = ["ServerConnection"]

#: the wire's call kinds as ours
_KINDS = {wire: kind for kind, wire in CALL_KINDS.items()}
_KIND_STREAMS_REQUEST = (f.CallKind.CLIENT_STREAM, f.CallKind.BIDI)


def _task_factory() -> Any:
    """Python 3.12+ starts a call's task eagerly: a handler that never waits finishes inside
    the read callback, with no trip through the loop. 3.11 schedules it like any task."""
    if sys.version_info >= (3, 12):
        return functools.partial(asyncio.Task, eager_start=True)
    return None


_EAGER = _task_factory()


class _Stream:
    __slots__ = ("body_by", "call", "ctx", "ended", "headers", "held", "inbox", "send_credit", "task")

    def __init__(self, headers: f.Headers, call: Call) -> None:
        self.headers = headers
        self.call = call
        self.ctx: Context = call.ctx
        self.task: asyncio.Task[Any] | None = None
        self.inbox: Inbox | None = None
        self.send_credit: Credit | None = None
        #: the client half-closed (END_STREAM): a request is taken once, DATA after it is refused
        self.ended = bool(headers.flags & f.END_STREAM)
        #: when a unary or server-streaming request still waiting for its body is given up
        self.body_by = math.inf
        #: bytes of the request body (unary, server-streaming) counted in the connection's
        #: budget until the call ends: the call holds it that long
        self.held = 0


class ServerConnection(Connection):
    is_server = True
    pause_when_backed_up = True

    def __init__(self, owner: TcpServer) -> None:
        super().__init__(
            max_frame_size=owner.max_frame_size, window=owner.window,
            handshake_timeout=owner.handshake_timeout, frame_timeout=owner.frame_timeout,
            ping_budget=owner.ping_budget, ping_window=owner.ping_window,
            frames_per_turn=owner.frames_per_turn,
        )  # fmt: skip
        self.max_buffered = owner.max_buffered_bytes
        self.settings = msgspec.structs.replace(
            self.settings, max_concurrent_streams=owner.max_concurrent_streams
        )
        self.owner = owner
        self.pipeline = owner.pipeline
        self.streams: dict[int, _Stream] = {}
        self.last_opened = 0

    def connection_made(self, transport: Any) -> None:
        if len(self.owner.connections) >= self.owner.max_connections:
            # Over the cap: say so and hang up at once. asyncio cannot pause accepting, so a
            # connection over the cap costs a descriptor for one loop iteration, not longer.
            self.transport, self.closed = transport, True
            goaway = f.encode_goaway(0, f.ErrorCode.NO_ERROR, "connection limit reached")
            transport.write(f.PREFACE + f.encode_settings(self.settings) + goaway)
            transport.close()
            warn("limit", "refusing a connection from %s: %d connections open (the limit)",
                 self.peer_name, self.owner.max_connections)  # fmt: skip
            return
        super().connection_made(transport)
        self.owner.connections.add(self)
        if self.owner.draining:
            self.close(f.ErrorCode.NO_ERROR, "server is draining")

    def connection_lost(self, exc: Exception | None) -> None:
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
            if sid > self.last_opened:
                name = type(frame).__name__
                raise f.ProtocolError(f.ErrorCode.PROTOCOL_ERROR, f"{name} on stream {sid}, never opened")
            return  # a stream we already finished or reset: late frames are dropped
        if type(frame) is f.Data:
            if stream.ended:  # the request was complete: one request, one execution
                self.reset(stream, f.ErrorCode.STREAM_CLOSED)
                return
            stream.ended = bool(frame.flags & f.END_STREAM)
            if stream.inbox is None:  # unary or server-streaming: the request body came late
                if frame.body is not None:
                    if stream.headers.body is not None:  # a second message: not this call kind
                        self.reset(stream, f.ErrorCode.PROTOCOL_ERROR)
                        return
                    stream.headers = msgspec.structs.replace(stream.headers, body=frame.body)
                    stream.held = len(frame.body)
                    self.hold(stream.held)
                if stream.ended:
                    stream.body_by = math.inf
                    self.start(stream)
                return
            if frame.body is not None and not stream.inbox.put(frame.body):
                self.reset(stream, f.ErrorCode.FLOW_CONTROL_ERROR)
                return
            if stream.ended:
                stream.inbox.end()
        elif type(frame) is f.RstStream:
            self.reset(stream, None)
        elif type(frame) is f.WindowUpdate and stream.send_credit is not None:
            stream.send_credit.grant(frame.increment)

    def finish(self, sid: int) -> bool:
        """Forget a stream (False if it was already gone); tell a draining server when the
        last one of this connection ends."""
        stream = self.streams.pop(sid, None)
        if stream is None:
            return False
        if stream.held:  # the request body: its call is over
            self.buffered -= stream.held
            if self.over_budget and self.buffered <= self.max_buffered >> 1:
                self.budget_freed()
        if stream.inbox is not None:  # messages the handler did not read
            stream.inbox.drop()
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
        if self.owner.draining or self.goaway_sent or len(self.streams) >= self.owner.max_concurrent_streams:
            self.write(f.encode_rst_stream(h.stream_id, f.ErrorCode.REFUSED_STREAM))
            return
        # the deadline runs from the HEADERS, whether or not the request is complete yet
        deadline = time.monotonic() + h.timeout_us / 1e6 if h.timeout_us else None
        call = self.pipeline.call(
            h.path, b"", transport="tcp", kind=_KINDS.get(h.kind, Kind.UNARY),
            content_type=h.content_type, deadline=deadline, metadata=h.metadata, peer=self.peer_name,
        )  # fmt: skip
        stream = _Stream(h, call)
        self.streams[h.stream_id] = stream
        if h.kind in _KIND_STREAMS_REQUEST:
            stream.inbox = Inbox(self, h.stream_id, self.settings.initial_window)
            if h.body is not None:
                stream.inbox.put(h.body)
            if h.flags & f.END_STREAM:
                stream.inbox.end()
            self.start(stream)
            return
        if h.body is not None:  # counted until the call ends (inlined `hold`: the hot path)
            size = stream.held = len(h.body)
            self.buffered += size
            if self.buffered > self.max_buffered:
                self.budget_exceeded()
        if stream.ended:
            self.start(stream)
        else:  # a unary or server-streaming request whose body follows in DATA: not for ever
            body_by = time.monotonic() + self.owner.body_timeout
            stream.body_by = body_by if deadline is None else min(body_by, deadline)
            if stream.body_by < self._sweep_at:
                self.sweep_at(stream.body_by)

    def start(self, stream: _Stream) -> None:
        """The request is complete (or, for streaming requests, open): hand it to the pipeline,
        which checks the call kind, limits and deadline like on every other transport."""
        h, call = stream.headers, stream.call
        if stream.inbox is not None:
            call.body = _bodies(stream.inbox)
        elif h.body is not None:
            call.body = h.body
        if call.kind.response_streaming:
            stream.send_credit = Credit(self.peer.initial_window)
            self.run_task(stream, self.stream_replies(stream))
        else:
            self.run_task(stream, self.pipeline.unary(call), unary=True)

    # -- deadlines: one timer per connection, at the earliest deadline, instead of one per call --

    def expire(self, now: float) -> float:
        """Cancel the calls whose deadline has passed, give up on requests whose body never
        came; return the next deadline."""
        upcoming = math.inf
        for stream in list(self.streams.values()):
            if stream.body_by < math.inf:  # not started: still waiting for its request body
                if stream.body_by > now:
                    upcoming = min(upcoming, stream.body_by)
                elif stream.ctx.expired:
                    self.fail(stream, asyncio.CancelledError())  # answered DEADLINE_EXCEEDED
                else:
                    took, service = self.owner.body_timeout, self.pipeline.service
                    self.fail(stream, Timeout(f"no request body within {took:g}s", id=service))
                continue
            deadline = stream.ctx.deadline
            if deadline is None or stream.task is None:
                continue
            if deadline <= now:
                stream.task.cancel()  # its done-callback answers DEADLINE_EXCEEDED
            else:
                upcoming = min(upcoming, deadline)
        return upcoming

    # -- running calls ----------------------------------------------------------------------

    def run_task(self, stream: _Stream, call: Coroutine[Any, Any, Any], *, unary: bool = False) -> None:
        """Run one call in its own task (so handlers may use anything asyncio offers, such as
        `asyncio.timeout`), cancelled at the caller's deadline; answer when it ends."""
        task = stream.task = _EAGER(call, loop=self.loop) if _EAGER else self.loop.create_task(call)
        deadline = stream.ctx.deadline
        if deadline is not None and deadline < self._sweep_at and not task.done():
            self.sweep_at(deadline)

        def finished(task: asyncio.Task[Any]) -> None:
            if self.streams.get(stream.headers.stream_id) is not stream:
                if not task.cancelled():
                    task.exception()  # retrieved: nobody is left to hear it
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
        credit, sid = stream.send_credit, stream.headers.stream_id
        assert credit is not None
        async for body in self.pipeline.stream(stream.call):
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
        md = stream.ctx.response_metadata or None
        if md is not None and not self.fits(md):
            self.fail(stream, self.metadata_too_large(stream, md))
            return
        frame = f.encode_trailers(sid, metadata=md, body=body)
        if len(frame) - f.HEADER_SIZE > self.peer.max_frame_size:
            self.fail(stream, self.too_large(len(frame) - f.HEADER_SIZE))
            return
        if self.finish(sid):
            self.write(frame)

    def too_large(self, size: int) -> TooManyRequests:
        limit = self.peer.max_frame_size
        return TooManyRequests(
            f"reply of {size} bytes is over the caller's limit of {limit}", id=self.pipeline.service
        )

    def fits(self, md: dict[str, str]) -> bool:
        """Whether response metadata is within the caller's header limits: sent anyway, the
        caller would have to close the connection, and every call on it."""
        peer = self.peer
        if len(md) > peer.max_metadata:
            return False
        size = sum(len(k) + len(v) for k, v in md.items()) + 16 * len(md)  # generous framing
        if size <= peer.max_header_block // 2:
            return True  # the common case, without encoding
        block = len(f.encode_trailers(0, metadata=md)) - f.HEADER_SIZE - 4
        return block + 256 <= peer.max_header_block  # 256: room for the status and an error

    def metadata_too_large(self, stream: _Stream, md: dict[str, str]) -> InternalServerError:
        """The call fails instead (500, said in the log); its metadata is not sent."""
        peer, endpoint = self.peer, stream.ctx.endpoint
        warn(
            "response metadata",
            "%s set %d response metadata entries, over the caller's limits (%d entries, %d bytes): "
            "the call fails instead",
            endpoint, len(md), peer.max_metadata, peer.max_header_block,
        )  # fmt: skip
        return InternalServerError(
            f"{endpoint} set more response metadata than the caller takes", id=self.pipeline.service
        )

    def end(self, stream: _Stream) -> None:
        sid = stream.headers.stream_id
        md = stream.ctx.response_metadata or None
        if md is not None and not self.fits(md):
            self.fail(stream, self.metadata_too_large(stream, md))
            return
        if self.finish(sid):
            self.write(f.encode_trailers(sid, metadata=md))

    def fail(self, stream: _Stream, exc: BaseException) -> None:
        sid = stream.headers.stream_id
        if not self.finish(sid):
            return
        err = exc if isinstance(exc, MicroError) else self.pipeline.error(exc, stream.call)
        wire = f.WireError(id=err.id, code=err.code, detail=err.detail, status=err.status)
        status = err.grpc_code.value[0]
        md = stream.ctx.response_metadata or None
        if md is not None and not self.fits(md):
            md = None  # the error goes out without it
        self.write(f.encode_trailers(sid, status=status, error=wire, metadata=md))


def _bodies(inbox: Inbox | None) -> AsyncIterator[bytes]:
    assert inbox is not None
    return _Bodies(inbox)


class _Bodies:
    """A streaming request's messages for the pipeline. Not an async generator: its frame
    would keep the last message alive while waiting for the next, a message the budget no
    longer counts (it is released when the reader asks for the next one)."""

    __slots__ = ("_get",)

    def __init__(self, inbox: Inbox) -> None:
        self._get = inbox.get

    def __aiter__(self) -> _Bodies:
        return self

    async def __anext__(self) -> bytes:
        body = await self._get()
        if body is None:
            raise StopAsyncIteration
        return body
