"""A service's subscriber: a typed function run through the server pipeline for each event.

    @service.subscriber("user.created", queue="mailer")
    async def welcome(event: UserCreated, ctx: MessageContext) -> None: ...

The first parameter's annotation is the payload type (msgspec Struct, pydantic model,
dataclass, protobuf message, `dict`, `bytes`, or `Event` for the raw event); the optional second
one receives the `MessageContext`. The subscriber becomes a `Target` like any endpoint, so an
event meets the same middleware, error boundary and limits as a call; its reply is ignored.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..codec import JSON, PROTO, is_proto_message, type_codec
from ..context import Context, MessageContext
from ..errors import BadRequest
from ..server import Kind, grpc_path
from ..server.call import Target
from ..server.handlers import camel
from . import Event

if TYPE_CHECKING:
    from ..server.threads import WorkerThreads
    from . import AckMode
    from .direct.inbound import Inbound

__all__ = ["Subscriber", "describe_subscriber"]

#: the handler-class part of a subscriber's gRPC path, as `Greeter` is for handlers
SUBSCRIBER_HANDLER = "Subscriber"


@dataclass(slots=True)
class Subscriber:
    topic: str
    queue: str | None
    ack: AckMode
    max_in_flight: int
    payload_type: Any
    target: Target
    #: while a `direct://` subscription takes this subscriber's events as calls to its path, what
    #: runs them (bounded by `max_in_flight`); None: such a call is refused unrun (501)
    inbound: Inbound | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def metadata(self) -> dict[str, str]:
        """go-micro's subscriber endpoint metadata, plus the queue group (direct:// reads it)."""
        return {"topic": self.topic, "subscriber": "true", **({"queue": self.queue} if self.queue else {})}


def _raw(body: bytes, content_type: str) -> bytes:
    return bytes(body)


def _nothing(result: Any, content_type: str) -> bytes:
    return b""


def describe_subscriber(
    fn: Callable[..., Any],
    *,
    package: str,
    topic: str,
    queue: str | None,
    ack: AckMode,
    max_in_flight: int,
    name: str | None = None,
) -> Subscriber:
    where = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise TypeError(f"subscriber {where}: cannot resolve type annotations: {exc}") from None
    params = list(inspect.signature(fn).parameters.values())
    if not 1 <= len(params) <= 2:
        raise TypeError(f"subscriber {where} must take (payload) or (payload, ctx: MessageContext)")
    payload_type = hints.get(params[0].name)
    if payload_type is None:
        raise TypeError(
            f"subscriber {where}: annotate {params[0].name!r} with the payload type (or Event, bytes)"
        )
    takes_context = len(params) == 2
    if takes_context and hints.get(params[1].name, MessageContext) not in (MessageContext, Context):
        raise TypeError(f"subscriber {where}: the second parameter must be annotated `MessageContext`")
    is_async = inspect.iscoroutinefunction(fn)
    if inspect.isasyncgenfunction(fn):
        raise TypeError(f"subscriber {where} must return, not yield")
    wants_event = payload_type is Event

    def run(arg: Any, ctx: Context, threads: WorkerThreads) -> Any:
        if wants_event:
            arg = ctx.event if isinstance(ctx, MessageContext) else arg
        args = (arg, ctx) if takes_context else (arg,)
        return fn(*args) if is_async else threads.run(fn, *args)

    if wants_event or payload_type is bytes:
        decode: Callable[[bytes, str], Any] = _raw
    else:
        decode = _decoder(payload_type)
    endpoint = f"{SUBSCRIBER_HANDLER}.{camel(name or str(getattr(fn, '__name__', 'handler')))}"
    target = Target(
        name=endpoint,
        path=grpc_path(package, endpoint),
        kind=Kind.UNARY,
        content_type=PROTO if is_proto_message(payload_type) else JSON,
        decode=decode,
        encode=_nothing,
        run=run,
    )
    return Subscriber(topic, queue, ack, max_in_flight, payload_type, target)


def _decoder(tp: Any) -> Callable[[bytes, str], Any]:
    codec = type_codec(tp)

    def decode(body: bytes, content_type: str) -> Any:
        try:
            return codec.decode(body, content_type)
        except BadRequest as exc:
            shown = getattr(tp, "__name__", tp)
            why = exc.detail.removeprefix("invalid request body: ")
            raise BadRequest(f"event payload does not decode as {shown}: {why}") from None

    return decode
