"""The framework's own stages, written as middlewares (see the order in `microweave.middleware`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from ..client.call import ClientCall
from ..context import FROM_NODE, FROM_SERVICE, current_context
from ..errors import NotImplementedError_, Timeout, TooManyRequests, code_of
from ..logs import printable, trace_ids
from ..server import Router
from ..server.call import Call
from . import Before, ClientMiddleware, ServerMiddleware, StreamNext, UnaryNext

__all__ = ["AccessLog", "CallChecks", "ClientDeadline", "Deadline", "PropagateMetadata"]

_KIND_NAMES = {
    "unary": "unary",
    "server_stream": "server-streaming",
    "client_stream": "client-streaming",
    "bidi": "bidirectional-streaming",
}


class CallChecks(Before[Call], ServerMiddleware):
    """Refuse, before decoding: an unknown endpoint (501), a call of the wrong kind (501, on
    every transport: a unary call to a streaming endpoint never hangs), a request over the size
    limit (429, as gRPC's RESOURCE_EXHAUSTED)."""

    def __init__(self, router: Router, max_message: int) -> None:
        self.router = router
        self.max_message = max_message

    def before(self, call: Call) -> None:
        target = call.target
        if target is None:
            raise self.router.unknown(call.path)
        if call.kind is not target.kind:
            raise NotImplementedError_(
                f"{target.name} is {_KIND_NAMES[target.kind.value]}; called as {_KIND_NAMES[call.kind.value]}"
            )
        body = call.body
        if isinstance(body, bytes | bytearray | memoryview) and len(body) > self.max_message:
            raise TooManyRequests(f"request of {len(body)} bytes is over the limit of {self.max_message}")


class Deadline(Before[Call], ServerMiddleware):
    """A call whose deadline passed on the way in is answered 408 without running. The transport
    cancels a running call at its deadline; the error boundary says 408 for it too."""

    def before(self, call: Call) -> None:
        if call.ctx.expired:
            raise Timeout(f"deadline exceeded before serving {call.endpoint}")


class ClientDeadline(Before[ClientCall], ClientMiddleware):
    """What this attempt may take: the call's deadline, which already holds what the calling
    handler had left (deadlines shrink hop by hop)."""

    def before(self, call: ClientCall) -> None:
        if call.deadline is None:
            call.timeout = None
            return
        left = call.deadline - time.monotonic()
        if left <= 0:
            raise Timeout(f"deadline exceeded before calling {call.service} {call.endpoint}")
        call.timeout = left


class PropagateMetadata(Before[ClientCall], ClientMiddleware):
    """Carry the serving handler's metadata (tracing, user keys) into calls it makes, and say
    who is calling (`micro-from-service`, `micro-from-id`)."""

    def __init__(self, name: str = "", node_id: str = "") -> None:
        self.identity = {k: v for k, v in ((FROM_SERVICE, name), (FROM_NODE, node_id)) if v}

    def before(self, call: ClientCall) -> None:
        if call.attempt > 1:
            return  # done on the first attempt
        ctx = current_context()
        inherited = ctx.propagated_metadata() if ctx is not None else None
        if inherited or self.identity:
            call.metadata = {**(inherited or {}), **self.identity, **call.metadata}


class AccessLog(ServerMiddleware):
    """One log line per call on logger "microweave.access": service, endpoint, transport,
    caller, code, duration and trace id, each also a field of the record (JSON logs carry them as
    keys). Answers are logged at `level` (INFO) whatever their code, a caller's mistake is not
    the server's problem; 5xx at `failed` (WARNING). On with MICRO_ACCESS_LOG=1, or in
    `Service(middleware=[AccessLog()])`."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        *,
        failed: int = logging.WARNING,
    ) -> None:
        self.log = logger or logging.getLogger("microweave.access")
        self.level = level
        self.failed = failed

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await call_next(call)
        except BaseException as exc:  # inside the error boundary: raw exceptions too
            error = exc
            raise
        finally:
            self.write(call, code_of(error), started)

    async def stream(self, call: Call, call_next: StreamNext[Call]) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        error: BaseException | None = None
        sent = 0
        try:
            async for reply in call_next(call):
                sent += 1
                yield reply
        except GeneratorExit:  # the caller stopped reading: it went away
            error = asyncio.CancelledError()
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.write(call, code_of(error), started, replies=sent)

    def write(self, call: Call, code: int, started: float, *, replies: int | None = None) -> None:
        level = self.failed if code >= 500 else self.level
        if not self.log.isEnabledFor(level):
            return
        elapsed = round((time.perf_counter() - started) * 1e3, 3)
        ctx = call.ctx
        # the caller's name and an unknown endpoint's path are the peer's to choose
        caller = printable(ctx.caller or call.peer or "-")
        endpoint = call.endpoint if call.target is not None else printable(call.endpoint)
        fields: dict[str, object] = {
            "service": call.service,
            "endpoint": endpoint,
            "transport": call.transport,
            "caller": caller,
            "code": code,
            "duration_ms": elapsed,
        }
        ids = trace_ids(ctx.metadata)
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
        if replies is not None:
            fields["replies"] = replies
        self.log.log(
            level,
            "%s %s via %s from %s: %d in %.1f ms%s",
            call.service, endpoint, call.transport, caller, code, elapsed,
            "" if replies is None else f" ({replies} replies)",
            extra=fields,
        )  # fmt: skip
