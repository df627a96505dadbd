"""The subscriber's side of `direct://`: an event that arrives as a call to a subscriber's path.

The call is built by `Pipeline._event_call` and runs through the node's whole server pipeline
(error boundary, middleware, size checks) like any call. Its target hands the event to the
subscriber's broker `Subscription`, which bounds the handlers running at once by
`max_in_flight` (a call waits for a free slot: backpressure on the publisher, nothing dropped),
and the call returns once the event is settled: its reply is the acknowledgement.

The event's headers travel as one call metadata entry (`micro-event-headers`, JSON), so every
header arrives exactly as published: its name's case, and names a transport keeps for itself
(`content-type` on gRPC, `timeout`) included.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ...codec import JSON
from ...context import Context, MessageContext
from ...errors import BadRequest, InternalServerError, NotImplementedError_, Timeout
from ...server import Kind
from ...server.call import Target
from .. import TOPIC, Event, Subscription, header
from ..envelope import MAX_HEADERS

if TYPE_CHECKING:
    from ...server.call import Call
    from ...server.pipeline import Pipeline
    from ...server.threads import WorkerThreads
    from ..subscriber import Subscriber

__all__ = ["HEADERS_KEY", "Inbound", "InboundEvent", "ServedByNode", "accept", "encode_headers"]

#: the call metadata entry that carries an event's headers (JSON object of strings)
HEADERS_KEY: Final = "micro-event-headers"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, str])


def encode_headers(headers: Mapping[str, str]) -> str:
    """ASCII JSON: a gRPC metadata value must be printable ASCII (msgspec writes UTF-8, and is
    the faster for the usual all-ASCII headers)."""
    encoded = _encoder.encode(headers)
    if encoded.isascii():
        return encoded.decode("ascii")
    return json.dumps(headers, ensure_ascii=True, separators=(",", ":"))


def _decode_headers(metadata: Mapping[str, str]) -> dict[str, str] | None:
    """The event's headers, or None when the entry is not a JSON object of strings. A call made
    without the entry (`microweave call`, say) has its metadata taken as the headers."""
    raw = metadata.get(HEADERS_KEY)
    if raw is None:
        return dict(metadata)
    try:
        value = _decoder.decode(raw)
    except msgspec.DecodeError:  # not JSON, or not an object of strings
        return None
    return value if len(value) <= MAX_HEADERS else None


class InboundEvent(Event):
    """An event that came as a call: settling it (ack or nack) answers the call."""

    __slots__ = ("call", "deadline", "error", "finished")

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        queue: str | None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(topic, body, headers, queue=queue, settle=_settled)
        #: the call it came in (set by the pipeline once built)
        self.call: Call | None = None
        #: `time.monotonic()` until which the publisher waits for the reply
        self.deadline = deadline
        #: what the caller is told when the handler failed (a Service's subscriber sets it)
        self.error: Exception | None = None
        self.finished = asyncio.Event()


async def _settled(event: Event, ack: bool, requeue: bool, delay: float) -> None:
    # at most once: nothing to tell a broker; the waiting call may answer now
    if isinstance(event, InboundEvent):
        event.finished.set()


def _raw(body: bytes, content_type: str) -> bytes:
    return bytes(body)


def _nothing(result: Any, content_type: str) -> bytes:
    return b""


def _not_taken(name: str) -> NotImplementedError_:
    # the publisher reads 501 from a subscriber's path as "not delivered here": it tries another
    # member of the queue group
    return NotImplementedError_(
        f"{name} takes no direct:// events on this node now (not subscribed there, or stopping)"
    )


class Inbound:
    """Runs the events that arrive as calls at one subscriber's path, in its `Subscription`."""

    def __init__(self, subscription: Subscription, *, name: str, path: str) -> None:
        self.subscription = subscription
        self.name = name
        self.target = Target(
            name=name, path=path, kind=Kind.UNARY, content_type=JSON,
            decode=_raw, encode=_nothing, run=self._run,
        )  # fmt: skip

    def _run(self, body: bytes, ctx: Context, threads: WorkerThreads) -> Awaitable[None]:
        return self._deliver(body, ctx)

    async def _deliver(self, body: bytes, ctx: Context) -> None:
        event = ctx.event if isinstance(ctx, MessageContext) else None
        if not isinstance(event, InboundEvent):
            raise InternalServerError(f"{self.name} was called without an event")
        # the body as the pipeline decoded it: a transport may have set it after building the
        # call (tcp reads DATA frames once the call exists)
        event.body = body
        sub = self.subscription
        if not sub.active:
            raise _not_taken(self.name)
        dispatched = False
        try:
            async with asyncio.timeout(_left(event.deadline)):
                await sub.dispatch(event)  # waits while max_in_flight handlers run
                dispatched = True
                await event.finished.wait()  # the caller going away stops the wait, not the handler
        except (TimeoutError, asyncio.CancelledError):
            if event.deadline is None or time.monotonic() < event.deadline:
                raise  # cancelled before the deadline: the caller went away, or the node stops
            # the transport may cancel at the same deadline: answer 408 rather than nothing
            raise Timeout(
                f"event {event.id}: the publisher's deadline passed "
                + ("while its handler ran (it runs on)" if dispatched else "waiting for a free handler slot")
            ) from None
        if event.settled == "ack":
            return
        if event.error is not None:
            raise event.error
        raise InternalServerError(
            f"event {event.id} was not processed by {self.name} (nacked): dropped, "
            "direct:// delivers at most once"
        )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def accept(
    subscriber: Subscriber, body: bytes, metadata: Mapping[str, str], deadline: float | None = None
) -> tuple[Event, Target]:
    """The event a call to `subscriber`'s path carries, and the target that runs it: its direct
    subscription's, or one that refuses the call unrun. `deadline`: the publisher's, answered
    with 408 when it passes first (whatever the transport does then)."""
    headers = _decode_headers(metadata)
    inbound = subscriber.inbound
    if headers is None:
        return Event(subscriber.topic, body, {}, queue=subscriber.queue), _refusing(
            subscriber, BadRequest(f"the {HEADERS_KEY} metadata is not a JSON object of strings")
        )
    topic = header(headers, TOPIC) or subscriber.topic
    if inbound is None:
        return Event(topic, body, headers, queue=subscriber.queue), _refusing(
            subscriber, _not_taken(subscriber.name)
        )
    return InboundEvent(topic, body, headers, queue=subscriber.queue, deadline=deadline), inbound.target


def _refusing(subscriber: Subscriber, error: Exception) -> Target:
    def refuse(arg: Any, ctx: Context, threads: WorkerThreads) -> Any:
        raise error

    target = subscriber.target
    return Target(
        name=target.name, path=target.path, kind=Kind.UNARY, content_type=target.content_type,
        decode=_raw, encode=_nothing, run=refuse,
    )  # fmt: skip


class ServedByNode:
    """The handler of a Service's subscription on `direct://`: its events arrive over the
    service's own listeners (no node of the broker's own), and the pipeline has already run its
    middleware for the call; this decodes the payload and runs the subscriber for it.

    An exception becomes the error its caller is told, through the pipeline's own rules (a
    handler's traceback logged under a correlation id), before the subscription logs the event
    id it failed for."""

    def __init__(self, subscriber: Subscriber, pipeline: Pipeline) -> None:
        self.subscriber = subscriber
        self.pipeline = pipeline

    async def __call__(self, event: Event) -> None:
        call = event.call if isinstance(event, InboundEvent) else None
        if call is None or not isinstance(event, InboundEvent):
            raise InternalServerError(f"{self.subscriber.name} got an event that did not come as a call")
        target = self.subscriber.target
        try:
            arg = target.decode(event.body, call.content_type)
            await target.run(arg, call.ctx, self.pipeline.threads)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # SystemExit from a handler too, as the boundary does
            event.error = self.pipeline.error(exc, call)
            raise event.error from None

    def __repr__(self) -> str:
        return f"ServedByNode({self.subscriber.name})"
