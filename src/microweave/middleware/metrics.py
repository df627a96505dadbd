"""Prometheus metrics of every call, on both sides: `ServerMetrics` and `ClientMetrics`.

Both are in the framework's default middleware (`defaults.py`; `Service(metrics=False)` and
`Client(metrics=False)` leave them out). They count into `microweave.metrics` (plain ints and a
bisected bucket list per series, exported by one collector at scrape time): a call costs a dict
lookup, two clock reads and two increments. Failures are rare, so their series are looked up
only when one happens.

Server: micro_request_total / micro_request_duration_seconds by the endpoint served (a path no
endpoint serves is endpoint="unknown", whatever the path); the in-flight gauge is the pipeline's
own count of running calls, read at scrape time. Client: micro_client_* by the callee's service
and endpoint, once per attempt, with an in-flight gauge by callee. Streaming calls also count
each message sent and received (micro_stream_messages_total), as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import AsyncIterator

from ..client.call import ClientCall
from ..errors import code_of
from ..metrics import BUCKETS, CLIENT, SERVER, CallSeries, install
from ..server import Kind
from ..server.call import Call
from . import ClientMiddleware, ServerMiddleware, StreamNext, UnaryNext

__all__ = ["ClientMetrics", "ServerMetrics"]

_UNARY = Kind.UNARY
_clock = time.perf_counter
_FIRST = BUCKETS[0]  # most calls on a fast transport end under it: no bisect for them


def _code(exc: BaseException, call: Call) -> int:
    """As the error boundary answers: a call cancelled at its deadline is a 408."""
    if isinstance(exc, asyncio.CancelledError) and call.ctx.expired:
        return 408
    return code_of(exc)


class ServerMetrics(ServerMiddleware):
    """Counts and times the calls a node of `service` serves (every transport, events too)."""

    def __init__(self, service: str) -> None:
        install()
        self.service = service
        #: path -> series, per transport; only paths an endpoint serves are cached (bounded)
        self._by_transport: dict[str, dict[str, CallSeries]] = {}

    def series(self, call: Call) -> CallSeries:
        """The series of `call` (the slow path: its first call, or a path nobody serves)."""
        target = call.target
        if target is None:
            return SERVER.get(self.service, "unknown", call.transport)
        series = SERVER.get(self.service, target.name, call.transport)
        self._by_transport.setdefault(call.transport, {})[call.path] = series
        return series

    def _failed(self, call: Call, exc: BaseException, seconds: float) -> None:
        by_path = self._by_transport.get(call.transport)
        series = by_path.get(call.path) if by_path is not None and call.target is not None else None
        (series or self.series(call)).failed(_code(exc, call), seconds)

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        if call.kind is not _UNARY:
            return await self._client_streaming(call, call_next)
        started = _clock()
        try:
            reply = await call_next(call)
        except BaseException as exc:
            self._failed(call, exc, _clock() - started)
            raise
        elapsed = _clock() - started
        by_path = self._by_transport.get(call.transport)
        series = (by_path.get(call.path) if by_path is not None else None) or self.series(call)
        series.ok[0 if elapsed <= _FIRST else bisect_left(BUCKETS, elapsed)] += 1
        series.ok_sum += elapsed
        return reply

    async def _client_streaming(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        series = self.series(call)
        if call.target is not None and not isinstance(call.body, bytes | bytearray | memoryview):
            series.streamed = True
            call.body = _count_received(call.body, series)
        started = _clock()
        try:
            reply = await call_next(call)
        except BaseException as exc:
            series.failed(_code(exc, call), _clock() - started)
            raise
        elapsed = _clock() - started
        series.sent += 1
        series.ok[0 if elapsed <= _FIRST else bisect_left(BUCKETS, elapsed)] += 1
        series.ok_sum += elapsed
        return reply

    async def stream(self, call: Call, call_next: StreamNext[Call]) -> AsyncIterator[bytes]:
        series = self.series(call)
        counted = call.target is not None  # no messages of a path nobody serves
        if counted:
            series.streamed = True
            if isinstance(call.body, bytes | bytearray | memoryview):
                series.received += 1
            else:
                call.body = _count_received(call.body, series)
        started = _clock()
        try:
            async with contextlib.aclosing(call_next(call)) as replies:  # type: ignore[type-var]
                async for reply in replies:
                    if counted:
                        series.sent += 1
                    yield reply
        except GeneratorExit:  # the transport stopped reading: the caller went away
            series.failed(499, _clock() - started)
            raise
        except BaseException as exc:
            series.failed(_code(exc, call), _clock() - started)
            raise
        elapsed = _clock() - started
        series.ok[0 if elapsed <= _FIRST else bisect_left(BUCKETS, elapsed)] += 1
        series.ok_sum += elapsed


async def _count_received(bodies: AsyncIterator[bytes], series: CallSeries) -> AsyncIterator[bytes]:
    async for body in bodies:
        series.received += 1
        yield body


class ClientMetrics(ClientMiddleware):
    """Counts and times the calls a client makes, once per attempt, by callee."""

    def __init__(self) -> None:
        install()

    async def unary(self, call: ClientCall, call_next: UnaryNext[ClientCall]) -> bytes:
        streaming = call.kind is not _UNARY  # client-streaming: its messages are counted too
        if streaming and not isinstance(call.body, bytes):
            call.body = _count_sent(call.body, call)
        gauge = CLIENT.in_flight.get(call.service) or CLIENT.gauge(call.service)
        gauge.value += 1
        started = _clock()
        try:
            reply = await call_next(call)
        except BaseException as exc:
            gauge.value -= 1
            _client_series(call).failed(code_of(exc), _clock() - started)
            raise
        elapsed = _clock() - started
        gauge.value -= 1
        series = CLIENT.series.get((call.service, call.endpoint, call.transport)) or _client_series(call)
        if streaming:
            series.streamed = True
            series.received += 1
        series.ok[0 if elapsed <= _FIRST else bisect_left(BUCKETS, elapsed)] += 1
        series.ok_sum += elapsed
        return reply

    async def stream(self, call: ClientCall, call_next: StreamNext[ClientCall]) -> AsyncIterator[bytes]:
        gauge = CLIENT.gauge(call.service)
        one_request = isinstance(call.body, bytes)
        if not one_request:
            call.body = _count_sent(call.body, call)  # type: ignore[arg-type]
        series: CallSeries | None = None  # known once a node is chosen (call.transport)
        gauge.value += 1
        started = _clock()
        try:
            async with contextlib.aclosing(call_next(call)) as replies:  # type: ignore[type-var]
                async for reply in replies:
                    if series is None:
                        series = _client_series(call)
                        series.streamed = True
                        series.sent += one_request
                    series.received += 1
                    yield reply
        except GeneratorExit:  # the caller stopped reading: cancelled, as the server counts it
            gauge.value -= 1
            _client_done(call, series, one_request, asyncio.CancelledError(), _clock() - started)
            raise
        except BaseException as exc:
            gauge.value -= 1
            _client_done(call, series, one_request, exc, _clock() - started)
            raise
        gauge.value -= 1
        _client_done(call, series, one_request, None, _clock() - started)


def _client_series(call: ClientCall) -> CallSeries:
    return CLIENT.get(call.service, call.endpoint, call.transport or "none")


def _client_done(
    call: ClientCall, series: CallSeries | None, one_request: bool, exc: BaseException | None, seconds: float
) -> None:
    if series is None:  # no reply came: the request still counts as sent
        series = _client_series(call)
        series.streamed = True
        series.sent += one_request
    if exc is not None:
        series.failed(code_of(exc), seconds)
        return
    series.ok[0 if seconds <= _FIRST else bisect_left(BUCKETS, seconds)] += 1
    series.ok_sum += seconds


async def _count_sent(bodies: AsyncIterator[bytes], call: ClientCall) -> AsyncIterator[bytes]:
    series: CallSeries | None = None
    async for body in bodies:
        if series is None:
            series = _client_series(call)  # the transport iterates once a node is chosen
            series.streamed = True
        series.sent += 1
        yield body
