"""Per-endpoint call counts of the nodes this process serves: what `$SRV.STATS` reports.

The NATS micro services protocol asks each node for requests, errors, the last error and time
spent per endpoint. Only the node's server pipeline sees calls, and only a registry answers
`$SRV.STATS`, so the two meet here: a service whose registry sets `counts_calls` (the NATS one)
puts `Counting` first in its pipeline's middleware, filed under its node id, and the registry
reads `counts(node_id)`. Other services pay nothing. Entries go when the pipeline does (weak
references), and each holds one counter per served endpoint, so the table is bounded.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator

from ..errors import MicroError
from ..middleware import ServerMiddleware, StreamNext, UnaryNext
from .call import Call

__all__ = ["Counting", "counts", "track"]

#: (requests, errors, last error, processing nanoseconds) per endpoint name
Counts = dict[str, tuple[int, int, str, int]]

_nodes: weakref.WeakValueDictionary[str, Counting] = weakref.WeakValueDictionary()


class _Endpoint:
    __slots__ = ("errors", "last_error", "nanos", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.last_error = ""
        self.nanos = 0


class Counting(ServerMiddleware):
    """Counts the calls of one node per endpoint; calls to unknown paths are not counted (the
    table stays one entry per served endpoint whatever callers send)."""

    def __init__(self) -> None:
        self.endpoints: dict[str, _Endpoint] = {}

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        if call.target is None:
            return await call_next(call)
        started = time.perf_counter_ns()
        try:
            reply = await call_next(call)
        except BaseException as exc:
            self._done(call.target.name, started, exc)
            raise
        self._done(call.target.name, started, None)
        return reply

    async def stream(self, call: Call, call_next: StreamNext[Call]) -> AsyncIterator[bytes]:
        if call.target is None:
            async for reply in call_next(call):
                yield reply
            return
        started, failed = time.perf_counter_ns(), None
        try:
            async for reply in call_next(call):
                yield reply
        except GeneratorExit:  # the transport stopped reading: the call ended, not an error
            raise
        except BaseException as exc:
            failed = exc
            raise
        finally:
            self._done(call.target.name, started, failed)

    def _done(self, endpoint: str, started: int, exc: BaseException | None) -> None:
        counter = self.endpoints.get(endpoint)
        if counter is None:
            counter = self.endpoints[endpoint] = _Endpoint()
        counter.requests += 1
        counter.nanos += time.perf_counter_ns() - started
        if exc is not None:
            counter.errors += 1
            # what the caller is told, never exception text (anyone on NATS can read STATS)
            if isinstance(exc, MicroError):
                counter.last_error = f"{exc.code}:{exc.detail[:200]}"
            elif isinstance(exc, asyncio.CancelledError):
                counter.last_error = "499:cancelled"
            else:
                counter.last_error = f"500:{type(exc).__name__}"


def track(node_id: str) -> Counting:
    """The counting middleware of a node, filed under its id for `counts`."""
    counting = _nodes[node_id] = Counting()
    return counting


def counts(node_id: str) -> Counts | None:
    """(requests, errors, last error, processing ns) per endpoint; None if the node is not counted."""
    counting = _nodes.get(node_id)
    if counting is None:
        return None
    return {name: (c.requests, c.errors, c.last_error, c.nanos) for name, c in counting.endpoints.items()}
