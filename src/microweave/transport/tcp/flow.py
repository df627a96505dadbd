"""Per-stream flow control on a `tcp` connection, counted in messages (docs/protocol.md):
`Credit` is the send side, `Inbox` the receive side (with the connection's byte budget)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from . import frames as f

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Credit", "Inbox"]


class Credit:
    """The send side of per-stream flow control, counted in messages (docs/protocol.md)."""

    __slots__ = ("_waiter", "available")

    def __init__(self, initial: int) -> None:
        self.available = initial
        self._waiter: asyncio.Future[None] | None = None

    def grant(self, increment: int) -> None:
        self.available += increment
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> None:
        while self.available <= 0:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        self.available -= 1

    def fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Inbox:
    """The receive side: messages the peer sent and the application has not read yet.

    The peer may send `window` messages ahead; each read gives one credit back, batched into
    one WINDOW_UPDATE per half window so a busy stream costs few extra frames.

    The bytes of the messages held count against the connection's budget (`Connection.buffered`)
    from their arrival until the application asks for the next one (or the stream is dropped):
    the message last handed out is still in use (the handler, and the generators that decoded
    it, hold it) until then, while a reader waiting here holds nothing. One addition when a
    message arrives, one subtraction per read.
    """

    __slots__ = ("_conn", "_ended", "_error", "_items", "_owed", "_sid", "_taken", "_waiter", "_window")

    def __init__(self, conn: Connection, sid: int, window: int) -> None:
        self._conn = conn
        self._sid = sid
        self._window = window
        self._items: deque[bytes] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._owed = 0
        self._taken = 0  # bytes of the message last handed out, still counted

    def __len__(self) -> int:
        return len(self._items)

    def put(self, body: bytes) -> bool:
        """Queue a message; False when the peer sent more than it was granted (the caller then
        resets the stream with FLOW_CONTROL_ERROR: a stream error, the connection carries on)."""
        if len(self._items) >= self._window:
            return False
        self._items.append(body)
        conn = self._conn
        conn.buffered += len(body)
        if conn.buffered > conn.max_buffered:
            conn.budget_exceeded()
        self._wake()
        return True

    def drop(self) -> None:
        """The stream is over: forget the messages nobody will read and give back their bytes,
        and those of the message last read."""
        size, self._taken = self._taken, 0
        if self._items:
            size += sum(map(len, self._items))
            self._items.clear()
        if size:
            self._conn.release(size)

    def end(self, error: BaseException | None = None) -> None:
        self._ended = True
        if error is not None and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> bytes | None:
        """The next message, None at the end; raises what ended the stream abnormally."""
        conn = self._conn
        if self._taken:  # the reader is done with the previous message
            conn.buffered -= self._taken
            self._taken = 0
            if conn.over_budget and conn.buffered <= conn.max_buffered >> 1:
                conn.budget_freed()
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        body = self._items.popleft()
        self._taken = len(body)
        self._owed += 1
        if self._owed * 2 >= self._window and not self._ended:
            conn.write(f.encode_window_update(self._sid, self._owed))
            self._owed = 0
        return body

    async def __aiter__(self) -> Any:
        while (body := await self.get()) is not None:
            yield body
