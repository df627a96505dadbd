"""Concurrent commands share round trips: those that arrive while one is on the wire go
together in the next one.

A lone caller pays nothing (its command goes out at once, from its own task); under load,
callers queue while a round trip is in flight and the next round trip carries up to `limit` of
them. The queue holds only what its callers are awaiting, so it is bounded by them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

A = TypeVar("A")
R = TypeVar("R")

Send = Callable[[list[A]], Awaitable[list[R | BaseException]]]


class Batcher(Generic[A, R]):
    def __init__(self, send: Send[A, R], *, limit: int = 512) -> None:
        self._send = send
        self._limit = limit
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None
        self._closed: Exception | None = None

    async def submit(self, item: A) -> R:
        if self._busy:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, future))
            return await future
        self._busy = True  # this caller sends its own command, without a task hop
        try:
            (result,) = await self._send([item])
        finally:
            self._busy = False
            if self._waiting:
                self._busy = True
                self._drainer = asyncio.get_running_loop().create_task(self._drain())
        if isinstance(result, BaseException):
            raise result
        return result

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._limit]
                del self._waiting[: self._limit]
                batch = [(item, f) for item, f in batch if not f.done()]  # its caller gave up
                if not batch:
                    continue
                try:
                    results = await self._send([item for item, _ in batch])
                except asyncio.CancelledError:
                    self._fail(batch, self._closed or RuntimeError("batch cancelled"))
                    raise
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._busy = False
            self._drainer = None

    def close(self, error: Exception) -> None:
        """Fail every waiting caller with `error` (the connection is going away)."""
        self._closed = error
        if self._drainer is not None:
            self._drainer.cancel()
        waiting, self._waiting = self._waiting, []
        self._fail(waiting, error)

    @staticmethod
    def _fail(batch: list[tuple[A, asyncio.Future[R]]], error: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)
