"""The server pipeline: every call into a node, whatever carried it, runs through here.

    error boundary -> user middleware -> CallChecks -> Deadline -> decode -> handler -> encode

Transports only move bytes: they build a `Call` with `Pipeline.call` and await
`Pipeline.unary` (one reply) or iterate `Pipeline.stream` (many replies). Both raise nothing but
`MicroError`: the boundary turns anything else into an error with a correlation id, logging the
traceback under the same id, so no exception text, path or traceback reaches a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..codec import JSON
from ..context import Context, MessageContext, _current
from ..errors import (
    Cancelled,
    InternalServerError,
    MicroError,
    Timeout,
    TooManyRequests,
    Unavailable,
    error_for_code,
)
from ..logs import printable
from ..middleware import ServerMiddleware, chain
from ..middleware.builtin import CallChecks, Deadline
from . import Kind, Router
from .call import Body, Call, Target
from .threads import WorkerThreads

if TYPE_CHECKING:
    from ..broker import Event
    from ..broker.subscriber import Subscriber
    from ..config import Config

__all__ = ["Pipeline"]

log = logging.getLogger("microweave.server")


def _correlation_id() -> str:
    return uuid.uuid4().hex[:16]


def _as_bytes(reply: object) -> bytes:
    """A reply that came back from the chain as something else than bytes: a middleware (or a
    custom serializer) returned the wrong type. The boundary answers 500 rather than let the
    transport choke on it."""
    if isinstance(reply, bytearray | memoryview):
        return bytes(reply)
    raise TypeError(
        f"the call chain returned {type(reply).__name__}, not bytes (a middleware's return value?)"
    )


class Pipeline:
    """Runs calls for one service's router; the service's name is the `id` of its errors."""

    def __init__(
        self,
        router: Router,
        *,
        middleware: Sequence[ServerMiddleware] = (),
        max_message: int = 4 * 1024 * 1024,
        threads: WorkerThreads | None = None,
        config: Config | None = None,
    ) -> None:
        self.router = router
        self.config = config  # what handlers see as ctx.config
        self.service = router.package
        self.max_message = max_message
        self.threads = threads or WorkerThreads(name=f"{self.service}-worker")
        self._unary, self._stream = chain(
            [*middleware, CallChecks(router, max_message), Deadline()], self._run_unary, self._run_stream
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inflight: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None  # set when the last call ends, while stopping
        #: why in-flight calls are being cancelled (the node stopped after its grace), if they are
        self.aborting = ""

    # -- the one place a Context is built --------------------------------------------------------

    def call(
        self,
        path: str,
        body: Body,
        *,
        transport: str,
        kind: Kind | None = None,
        content_type: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, str] | None = None,
        peer: str = "",
    ) -> Call:
        """Describe one inbound call. `kind` is how the caller called (None: as the endpoint
        is, for transports whose wire does not say); `content_type` None: the endpoint's own."""
        target = self.router.targets.get(path)
        if target is not None and path in self.router.subscribers:
            subscriber = self.router.subscribers[path]
            return self._event_call(subscriber, path, body, transport, metadata, peer, deadline)
        ctx = Context(
            service=self.service,
            endpoint=target.name if target else path,
            deadline=deadline,
            config=self.config,
        )
        if metadata:
            ctx.metadata = metadata if type(metadata) is dict else dict(metadata)
        # positional: a dataclass built from keywords costs three times as much, on every call
        return Call(
            self.service, path, kind if kind is not None else (target.kind if target else Kind.UNARY),
            transport, content_type or (target.content_type if target else JSON), ctx, body, target, peer,
        )  # fmt: skip

    def _event_call(
        self,
        subscriber: Subscriber,
        path: str,
        body: Body,
        transport: str,
        metadata: Mapping[str, str] | None,
        peer: str,
        deadline: float | None = None,
    ) -> Call:
        """An event delivered as a call (direct://), its headers in the call's metadata. It runs
        in the subscriber's direct subscription (at most `max_in_flight` at once; the reply goes
        once the event is settled); a subscriber that takes no such calls (its broker is not
        direct://, or it is stopping) refuses it unrun (501). `transport` is "direct", as it is
        the broker's scheme for events that other brokers carry. `deadline` is how long the
        publisher waits for the reply, not the handler's: it is not the event context's."""
        from ..broker.direct.inbound import InboundEvent, accept

        # a transport may hand the body over as a view of its buffer: the event keeps a copy
        raw = bytes(body) if isinstance(body, bytes | bytearray | memoryview) else b""
        event, target = accept(subscriber, raw, metadata or {}, deadline)
        call = self.event_call(subscriber, event, transport="direct", peer=peer)
        call.target = target
        if isinstance(event, InboundEvent):
            event.call = call
        return call

    def event_call(self, subscriber: Subscriber, event: Event, *, transport: str, peer: str = "") -> Call:
        """Describe one event delivered to `subscriber` (its reply is the acknowledgement)."""
        target = subscriber.target
        ctx = MessageContext(event, service=self.service, endpoint=target.name, config=self.config)
        return Call(
            self.service, target.path, Kind.UNARY, transport,
            event.content_type, ctx, event.body, target, peer,
        )  # fmt: skip

    async def deliver(self, subscriber: Subscriber, event: Event, *, transport: str = "broker") -> None:
        """Run `subscriber` for one event through the whole pipeline; raises only `MicroError`."""
        await self.unary(self.event_call(subscriber, event, transport=transport))

    # -- the error boundary: outermost, owned by the framework --------------------------------

    async def unary(self, call: Call) -> bytes:
        """Run a call with one reply; raises only `MicroError`."""
        loop = self._loop or self._bind_loop()
        task = asyncio.current_task(loop)
        if task is not None:
            self.inflight.add(task)
        _current.set(call.ctx)  # each call runs in a task of its own: no reset needed
        try:
            reply = await self._unary(call)
            if reply.__class__ is not bytes:
                reply = _as_bytes(reply)
            return reply
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a handler too
            err = self._boundary(exc, call, task)
            if err is None:
                raise  # the caller went away: nobody to answer, and cancellation must propagate
            raise err from None
        finally:
            self._done(task)

    async def stream(self, call: Call) -> AsyncIterator[bytes]:
        """Run a call with a stream of replies; raises only `MicroError`."""
        loop = self._loop or self._bind_loop()
        task = asyncio.current_task(loop)
        if task is not None:
            self.inflight.add(task)
        _current.set(call.ctx)
        replies: AsyncIterator[bytes] | None = None
        try:
            replies = self._stream(call)
            async for reply in replies:
                yield reply if reply.__class__ is bytes else _as_bytes(reply)
        except GeneratorExit:  # the transport stopped reading: not an error to report
            raise
        except BaseException as exc:
            err = self._boundary(exc, call, task)
            if err is None:
                raise
            raise err from None
        finally:
            self._done(task)
            close = getattr(replies, "aclose", None)
            if close is not None:
                with contextlib.suppress(BaseException):
                    await close()

    def _boundary(self, exc: BaseException, call: Call, task: asyncio.Task[Any] | None) -> MicroError | None:
        """The error to answer with, or None when a cancelled call must stay cancelled."""
        if isinstance(exc, asyncio.CancelledError):
            if task is not None and not task.cancelling():
                # nobody cancelled this call: the handler let its own CancelledError out
                return self._internal(exc, call)
            if not (self.aborting or call.ctx.expired):
                return None  # its caller is gone; only a deadline or the grace's end is answered
        return self.error(exc, call)

    def _done(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self.inflight.discard(task)
            if self._idle is not None and not self.inflight:
                self._idle.set()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def error(self, exc: BaseException, call: Call) -> MicroError:
        """What the caller is told about an exception raised while serving `call`."""
        ctx, endpoint = call.ctx, call.ctx.endpoint
        if isinstance(exc, MicroError):
            # `callee` is set on every error a client call returned, answered or not: one the
            # handler let out is a dependency's, even with no id (a node that was unreachable)
            if exc.remote or exc.callee or exc.id not in ("", self.service):
                return self._dependency_error(exc, call)
            exc.id = self.service
            return exc
        if isinstance(exc, asyncio.CancelledError):
            if self.aborting and not ctx.expired:
                log.warning(
                    "cancelled %s from %s: %s; the caller is told it may have run",
                    endpoint, printable(ctx.caller or call.peer or "?"), self.aborting,
                    extra={"service": self.service, "endpoint": endpoint},
                )  # fmt: skip
                return Unavailable(
                    f"{endpoint} was cancelled: {self.aborting}; the call may have run", id=self.service
                )
            if ctx.expired:
                return Timeout(f"deadline exceeded serving {endpoint}", id=self.service)
            return Cancelled(f"call to {endpoint} was cancelled", id=self.service)
        return self._internal(exc, call)

    def _internal(self, exc: BaseException, call: Call) -> InternalServerError:
        """An exception nobody meant for the caller: 500 with a correlation id, the traceback
        in the log under the same id."""
        endpoint = call.ctx.endpoint
        correlation = _correlation_id()
        log.error(
            "%s raised %s (correlation id %s)",
            endpoint, type(exc).__name__, correlation, exc_info=exc,
            extra={"service": self.service, "endpoint": endpoint, "correlation_id": correlation},
        )  # fmt: skip
        return InternalServerError(
            f"internal error in {endpoint}; correlation id {correlation}", id=self.service
        )

    def _dependency_error(self, exc: MicroError, call: Call) -> MicroError:
        """A call this handler made failed and it let the error out: the caller hears it from
        this service, with the same code, without the dependency's node addresses."""
        correlation = _correlation_id()
        log.warning(
            "%s: a call it made failed: %s (correlation id %s)",
            call.endpoint, printable(str(exc), 1000), correlation,  # the callee's words: escaped
            extra={"service": self.service, "endpoint": call.endpoint, "correlation_id": correlation},
        )  # fmt: skip
        dependency = exc.callee or exc.id or "a dependency"
        said = (
            f"{dependency} answered: {exc.detail}"
            if exc.remote
            else f"calling {dependency} failed ({exc.status})"
        )
        # the class its code names, never NotDelivered or ConnectionLost: this node *did* run
        # the call, so a caller must not take it for one that never reached a handler
        return error_for_code(
            exc.code, f"{call.endpoint}: {said}; correlation id {correlation}", id=self.service
        )

    # -- the core: decode, run the handler, encode ---------------------------------------------

    async def _run_unary(self, call: Call) -> bytes:
        target = call.target
        assert target is not None  # CallChecks refused the call otherwise
        content_type, body = call.content_type, call.body
        arg = (
            target.decode(body, content_type)
            if body.__class__ is bytes
            else self._decode(target, body, content_type)
        )
        result = await target.run(arg, call.ctx, self.threads)
        return self._checked(target.encode(result, content_type))

    async def _run_stream(self, call: Call) -> AsyncIterator[bytes]:
        target = call.target
        assert target is not None
        content_type = call.content_type
        items = target.run(self._decode(target, call.body, content_type), call.ctx, self.threads)
        encode = target.encode
        try:
            async for item in items:
                yield self._checked(encode(item, content_type))
        finally:
            await items.aclose()

    def _decode(self, target: Target, body: Body, content_type: str) -> Any:
        if isinstance(body, bytes | bytearray | memoryview):
            return target.decode(body, content_type)
        return self._decode_each(target, body, content_type)

    async def _decode_each(
        self, target: Target, bodies: AsyncIterator[bytes], content_type: str
    ) -> AsyncIterator[Any]:
        decode, limit = target.decode, self.max_message
        async for body in bodies:
            if len(body) > limit:
                raise TooManyRequests(f"request message of {len(body)} bytes is over the limit of {limit}")
            item = decode(body, content_type)
            del body  # not held while the handler works and the next message is awaited
            yield item
            del item

    def _checked(self, reply: bytes) -> bytes:
        if len(reply) > self.max_message:
            raise TooManyRequests(f"reply of {len(reply)} bytes is over the limit of {self.max_message}")
        return reply

    # -- shutdown --------------------------------------------------------------------------------

    def abort(self, reason: str) -> int:
        """Cancel every call still running (the node's grace is over); each caller is told so.
        Returns how many were cancelled."""
        self.aborting = reason
        tasks = list(self.inflight)
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def drain(self, timeout: float) -> bool:
        """Wait until no call is in flight, for up to `timeout` seconds; True when idle. Calls
        on every transport count, in-process ones included."""
        if not self.inflight:
            return True
        if self._idle is None or self._idle.is_set():  # waiters at once share one event
            self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return not self.inflight
