"""Worker threads for blocking handlers: sized per service, bounded, never holding up exit.

asyncio's default executor is shared by everything in the process and its threads are joined
at interpreter exit, so a handful of calls stuck in a slow sync handler starved every other sync
endpoint and held SIGTERM past the grace. These threads are the service's own, are daemons
(a process that stops does not wait for a thread no deadline can stop), and a call still queued
when its caller gives up never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..errors import TooManyRequests

__all__ = ["DEFAULT_THREADS", "WorkerThreads"]

DEFAULT_THREADS = 16
_STOP = None


class WorkerThreads:
    """`await threads.run(fn, *args)`: run a blocking function on one of `size` threads."""

    def __init__(
        self, size: int = DEFAULT_THREADS, *, name: str = "microweave", max_queued: int | None = None
    ):
        if size < 1:
            raise ValueError(f"threads must be at least 1, not {size}")
        self.size = size
        #: calls waiting for a thread beyond this are refused with 429, not queued without bound
        self.max_queued = max_queued if max_queued is not None else 4 * size
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.busy = 0  # threads running a call now
        self.queued = 0  # calls waiting for a thread

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.queued >= self.max_queued:
            raise TooManyRequests(
                f"all {self.size} worker threads are busy and {self.queued} calls are waiting; try later"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # the handler sees the caller's contextvars (its Context) as with asyncio.to_thread
        self._queue.put((future, loop, contextvars.copy_context(), fn, args))
        with self._lock:
            self.queued += 1
            if len(self._threads) < self.size and self.busy + self.queued > len(self._threads):
                self._spawn()
        return await future  # cancelling it makes a queued call skip; a running one runs on

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            future, loop, context, fn, args = item
            with self._lock:
                self.queued -= 1
                if future.cancelled():  # the caller is gone: do not start its work
                    continue
                self.busy += 1
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # SystemExit too: it is the call's error, not ours
                _deliver(loop, future, None, exc)
            else:
                _deliver(loop, future, result, None)
            finally:
                with self._lock:
                    self.busy -= 1

    def shutdown(self) -> None:
        """Let idle threads end; busy ones end when their call returns (they are daemons)."""
        for _ in self._threads:
            self._queue.put(_STOP)
        self._threads = []


def _deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: Any) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop closed while the call ran: nobody waits
        loop.call_soon_threadsafe(settle)
