"""The `tcp` client: one multiplexed connection per node, reconnected with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from ...codec import JSON
from ...errors import (
    BadRequest,
    Cancelled,
    ConnectionLost,
    InternalServerError,
    MicroError,
    NotDelivered,
    Timeout,
    TooManyRequests,
    error_for_code,
)
from ...registry import Node
from ...server import Kind
from .. import ClientTransport, StreamBody
from . import frames as f
from .connection import CALL_KINDS, Connection
from .flow import Credit, Inbox

__all__ = ["TcpClient"]

IDLE_CLOSE = 300.0  # seconds without a call before a pooled connection is closed


def _error(trailers: f.Trailers) -> MicroError:
    e = trailers.error
    assert e is not None
    err = error_for_code(e.code or 500, e.detail, id=e.id)
    err.remote = True  # the node answered with it
    return err


def _timeout_us(timeout: float | None) -> int:
    return max(1, int(timeout * 1_000_000)) if timeout is not None else 0


class _Call:
    """A stream as the client sees it."""

    __slots__ = ("deadline", "future", "inbox", "metadata", "send_credit")

    def __init__(self) -> None:
        self.deadline = math.inf  # time.monotonic() by which a unary reply must have come
        self.future: asyncio.Future[bytes | None] | None = None
        self.inbox: Inbox | None = None
        self.metadata: dict[str, str] = {}
        self.send_credit: Credit | None = None


class _ClientConnection(Connection):
    def __init__(self, address: str, max_frame_size: int) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self.address = address
        self.calls: dict[int, _Call] = {}
        self.next_id = 1
        self.last_used = time.monotonic()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    async def slot(self, timeout: float | None) -> None:
        """Wait until the server's `max_concurrent_streams` allows one more stream: a call over
        it would only be refused (REFUSED_STREAM)."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.calls) >= self.peer.max_concurrent_streams and self.usable:
                    waiter = self.loop.create_future()
                    self._slot_waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise Timeout("deadline exceeded waiting for a stream", id="microweave.client") from None
        if not self.usable:
            raise NotDelivered(f"connection to {self.address} closed while waiting for a stream")

    def _wake_slots(self) -> None:
        free = self.peer.max_concurrent_streams - len(self.calls)
        while self._slot_waiters and (free > 0 or not self.usable):
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    @property
    def usable(self) -> bool:
        return not self.closed and self.goaway_received is None and self.next_id < f.MAX_STREAM_ID

    def active(self) -> int:
        return len(self.calls)

    def idle_expired(self, now: float) -> bool:
        return not self.calls and now - self.last_used > IDLE_CLOSE

    def expire(self, now: float) -> float:
        """Unary calls whose reply is overdue fail with 408 and are reset; the next deadline."""
        upcoming = math.inf
        for sid, call in list(self.calls.items()):
            if call.deadline <= now:
                if call.future is not None:
                    _expire(self, sid, call.future)
            elif call.deadline < upcoming:
                upcoming = call.deadline
        return upcoming

    def new_stream(self) -> tuple[int, _Call]:
        sid = self.next_id
        self.next_id += 2
        call = self.calls[sid] = _Call()
        self.last_used = time.monotonic()
        return sid, call

    def cancel(self, sid: int, code: int = f.ErrorCode.CANCEL) -> None:
        if self.calls.pop(sid, None) is not None:
            self.write(f.encode_rst_stream(sid, code))
            if self._slot_waiters:
                self._wake_slots()

    def check_headers(self, frame: bytes, body_size: int, metadata: Mapping[str, str], path: str) -> None:
        """Never send request HEADERS the server said it will not take (its SETTINGS): it would
        close the connection (HEADERS_TOO_LARGE), failing every call on it, not just this one.
        The header block is what the frame holds besides the body and the block length."""
        peer = self.peer
        block = len(frame) - f.HEADER_SIZE - 4 - body_size
        if block > peer.max_header_block or len(metadata) > peer.max_metadata:
            self._headers_refused(block, len(metadata), path)
        self.check_size(frame, path)

    def _headers_refused(self, block: int, entries: int, path: str) -> None:
        peer = self.peer
        if entries > peer.max_metadata:
            raise BadRequest(
                f"request to {path} has {entries} metadata entries; the server takes at most "
                f"{peer.max_metadata} (its max_metadata)",
                id="microweave.client",
            )
        raise BadRequest(
            f"request to {path} has a header block (path, content type, metadata) of {block} bytes; "
            f"the server takes at most {peer.max_header_block} (its max_header_block)",
            id="microweave.client",
        )

    def check_size(self, frame: bytes, path: str) -> None:
        """Never send a frame the server said it will not take: that would cost the connection."""
        if len(frame) - f.HEADER_SIZE > self.peer.max_frame_size:
            raise TooManyRequests(
                f"request to {path} is {len(frame) - f.HEADER_SIZE} bytes framed; "
                f"the server takes at most {self.peer.max_frame_size}",
                id="microweave.client",
            )

    # -- frames from the server --------------------------------------------------------------

    def stream_frame(self, frame: f.Frame) -> None:
        sid = getattr(frame, "stream_id", 0)
        call = self.calls.get(sid)
        if call is None:
            return  # cancelled or timed out on our side: the late answer is dropped
        if type(frame) is f.Trailers:
            del self.calls[sid]
            call.metadata.update(frame.metadata)
            error = _error(frame) if frame.status else None
            if call.future is not None:
                if not call.future.done():
                    if error is not None:
                        call.future.set_exception(error)
                    else:
                        call.future.set_result(frame.body)
            elif call.inbox is not None:
                if frame.body is not None and error is None:
                    call.inbox.put(frame.body)
                call.inbox.end(error)
            if call.send_credit is not None:
                call.send_credit.fail(Cancelled("the server ended the call"))
        elif type(frame) is f.Data or type(frame) is f.ResponseHeaders:
            if type(frame) is f.ResponseHeaders:
                call.metadata.update(frame.metadata)
            if call.inbox is not None and frame.body is not None and not call.inbox.put(frame.body):
                self._fail(call, InternalServerError(f"node {self.address} overran the stream's window"))
                self.cancel(sid, f.ErrorCode.FLOW_CONTROL_ERROR)
        elif type(frame) is f.RstStream:
            del self.calls[sid]
            if frame.code == f.ErrorCode.REFUSED_STREAM:
                self._fail(call, NotDelivered(f"node {self.address} refused the call"))
            else:
                self._fail(call, Cancelled(f"node {self.address} reset the call ({frame.code})"))
        elif type(frame) is f.WindowUpdate and call.send_credit is not None:
            call.send_credit.grant(frame.increment)
        if self._slot_waiters:
            self._wake_slots()

    @staticmethod
    def _fail(call: _Call, exc: MicroError) -> None:
        if call.future is not None and not call.future.done():
            call.future.set_exception(exc)
        if call.inbox is not None:
            call.inbox.end(exc)
        if call.send_credit is not None:
            call.send_credit.fail(exc)

    def goaway(self, frame: f.GoAway) -> None:
        # Streams the server never saw are safe to retry elsewhere.
        for sid in [s for s in self.calls if s > frame.last_stream_id]:
            self._fail(self.calls.pop(sid), NotDelivered(f"node {self.address} is draining"))
        self._wake_slots()

    def streams_lost(self, exc: Exception | None) -> None:
        calls, self.calls = self.calls, {}
        reason = f": {exc}" if exc else ""
        for call in calls.values():
            self._fail(call, ConnectionLost(f"connection to {self.address} lost{reason}"))
        self._wake_slots()


class TcpClient(ClientTransport):
    name = "tcp"

    def address_of(self, node: Node) -> str | None:
        return node.metadata.get("tcp_address")

    def __init__(
        self, *, max_frame_size: int = f.DEFAULT_MAX_FRAME_SIZE, connect_timeout: float = 5.0
    ) -> None:
        self.max_frame_size = max_frame_size
        self.connect_timeout = connect_timeout
        self._pool: dict[str, _ClientConnection] = {}
        self._connecting: dict[str, asyncio.Future[_ClientConnection]] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # address -> (retry at, last delay)

    async def _connection(self, address: str) -> _ClientConnection:
        conn = self._pool.get(address)
        if conn is not None and conn.usable:
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        retry_at, delay = self._backoff.get(address, (0.0, 0.0))
        if time.monotonic() < retry_at:
            wait = retry_at - time.monotonic()
            raise NotDelivered(f"node {address} unreachable (last connect failed; next try in {wait:.1f}s)")
        future: asyncio.Future[_ClientConnection] = asyncio.get_running_loop().create_future()
        self._connecting[address] = future
        try:
            conn = await self._connect(address)
        except NotDelivered as exc:
            delay = min(max(delay * 2, 0.1), 5.0)  # exponential backoff, 0.1 s to 5 s
            self._backoff[address] = (time.monotonic() + delay, delay)
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._connecting[address]
        self._backoff.pop(address, None)
        self._pool[address] = conn
        future.set_result(conn)
        return conn

    async def _connect(self, address: str) -> _ClientConnection:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _ClientConnection(address, self.max_frame_size), host.strip("[]"), int(port)
                )
            # the protocol: no stream before the server's SETTINGS (its limits) have arrived
            async with asyncio.timeout(self.connect_timeout):
                await conn.ready
        except (OSError, TimeoutError) as exc:
            raise NotDelivered(f"cannot connect to node {address}: {exc}") from None
        return conn

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
        conn = self._pool.get(address)
        if conn is None or not conn.usable:
            conn = await self._connection(address)
        if len(conn.calls) >= conn.peer.max_concurrent_streams:
            await conn.slot(timeout)
        sid = conn.next_id
        frame = f.encode_headers(
            sid, path, content_type=content_type, timeout_us=_timeout_us(timeout),
            metadata=metadata, body=body, end_stream=True,
        )  # fmt: skip
        conn.check_headers(frame, len(body), metadata, path)
        sid, call = conn.new_stream()
        future = call.future = conn.loop.create_future()
        conn.write(frame)
        if timeout is not None:  # the connection's sweep ends it then (no timer per call)
            call.deadline = deadline = time.monotonic() + timeout
            if deadline < conn._sweep_at:
                conn.sweep_at(deadline)
        try:
            reply = await future
        except asyncio.CancelledError:
            conn.cancel(sid)
            raise
        if response_metadata is not None:
            response_metadata.update(call.metadata)
        return reply if reply is not None else b""

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
        conn = await self._connection(address)
        if len(conn.calls) >= conn.peer.max_concurrent_streams:
            await conn.slot(timeout)
        sid, call = conn.new_stream()
        call.inbox = Inbox(conn, sid, conn.settings.initial_window)
        one = isinstance(body, bytes | bytearray | memoryview)
        frame = f.encode_headers(
            sid, path, kind=CALL_KINDS[kind], content_type=content_type,
            timeout_us=_timeout_us(timeout), metadata=metadata,
            body=bytes(body) if one else None, end_stream=one,  # type: ignore[arg-type]
        )  # fmt: skip
        try:
            conn.check_headers(frame, len(body) if one else 0, metadata, path)  # type: ignore[arg-type]
        except (BadRequest, TooManyRequests):
            del conn.calls[sid]
            raise
        conn.write(frame)
        sender = None
        if not one:
            call.send_credit = Credit(conn.peer.initial_window)
            sender = conn.loop.create_task(_send_all(conn, sid, call, body))  # type: ignore[arg-type]
        finished = False
        try:
            async with asyncio.timeout(timeout):
                while (item := await call.inbox.get()) is not None:
                    yield item
            finished = True
        except TimeoutError:
            raise Timeout(f"deadline exceeded streaming {path}", id="microweave.client") from None
        finally:
            if not finished:
                conn.cancel(sid)
                call.inbox.drop()  # replies nobody will read: their bytes leave the count
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender

    async def aclose(self) -> None:
        pool, self._pool = self._pool, {}
        for conn in pool.values():
            conn.close(f.ErrorCode.NO_ERROR, "client closed")
        for conn in pool.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(conn.done), 1.0)


def _expire(conn: _ClientConnection, sid: int, future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(Timeout("deadline exceeded waiting for the reply", id="microweave.client"))
        conn.cancel(sid, f.ErrorCode.DEADLINE_EXCEEDED)


async def _send_all(conn: _ClientConnection, sid: int, call: _Call, bodies: AsyncIterator[bytes]) -> None:
    """Client- and bidi-streaming: send each request as credit allows, then half-close."""
    credit = call.send_credit
    assert credit is not None
    try:
        async for body in bodies:
            frame = f.encode_data(sid, body)
            conn.check_size(frame, f"stream {sid}")
            await credit.take()
            await conn.drain()
            if sid not in conn.calls:
                return
            conn.write(frame)
        if sid in conn.calls:
            conn.write(f.encode_data(sid, None, end_stream=True))
    except Exception as exc:  # a request too large, or the caller's iterator raised: cancel
        if sid in conn.calls:
            error = exc if isinstance(exc, MicroError) else Cancelled(f"request stream failed: {exc}")
            conn._fail(conn.calls[sid], error)
            conn.cancel(sid)
