"""One inbound call as every layer of the server sees it, and the endpoint it is for.

A transport turns its wire form into a `Call` (through `Pipeline.call`, the one place that
builds the `Context`) and hands it to the pipeline. A `Target` hides whether the endpoint is a
typed handler method or a grpcio servicer method: both decode, run and encode the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..codec import JSON, PROTO
from ..codec import is_proto_message as _is_proto
from ..context import Context
from ..errors import BadRequest
from . import Kind, Method

if TYPE_CHECKING:
    from .threads import WorkerThreads

__all__ = ["Body", "Call", "Target"]

#: one encoded body, or (client- and bidi-streaming) an async iterator of them
Body = bytes | AsyncIterator[bytes]


@dataclass(slots=True)
class Target:
    """An endpoint the pipeline can run: how to decode, call and encode for it."""

    name: str  # Greeter.SayHello, or a servicer's /helloworld.Greeter/SayHello
    path: str
    kind: Kind
    #: the content type a caller that names none gets: protobuf for protobuf-typed endpoints
    content_type: str
    decode: Callable[[bytes, str], Any]
    encode: Callable[[Any, str], bytes]
    #: (request or async iterator of requests, ctx, threads) -> awaitable reply / async iterator
    run: Callable[[Any, Context, WorkerThreads], Any]

    @classmethod
    def of_method(cls, method: Method) -> Target:
        fn, takes_context = method.fn, method.takes_context

        def run(arg: Any, ctx: Context, threads: WorkerThreads) -> Any:
            if not method.is_async:
                return threads.run(fn, arg, ctx) if takes_context else threads.run(fn, arg)
            return fn(arg, ctx) if takes_context else fn(arg)

        proto = _is_proto(method.request_type) and _is_proto(method.response_type)
        return cls(
            name=method.name,
            path=method.path,
            kind=method.kind,
            content_type=PROTO if proto else JSON,
            decode=method.request_codec.decode,
            encode=method.response_codec.encode,
            run=run,
        )

    @classmethod
    def of_servicer(cls, path: str, handler: Any) -> Target:
        """A grpcio `RpcMethodHandler`: protobuf bodies through its own (de)serializers."""
        from .servicer import run_servicer, stream_servicer

        deserializer, serializer = handler.request_deserializer, handler.response_serializer
        kind = Kind.of(handler.request_streaming, handler.response_streaming)

        def decode(body: bytes, content_type: str) -> Any:
            try:
                return deserializer(bytes(body)) if deserializer else body
            except Exception as exc:  # protobuf's DecodeError, or a custom deserializer's error
                raise BadRequest(f"invalid request body: {exc}") from None

        def encode(obj: Any, content_type: str) -> bytes:
            out: bytes = serializer(obj) if serializer else obj
            return out

        def run(arg: Any, ctx: Context, threads: WorkerThreads) -> Any:
            if kind.response_streaming:
                return stream_servicer(handler, arg, ctx, threads)
            return run_servicer(handler, arg, ctx, threads)

        return cls(name=path, path=path, kind=kind, content_type=PROTO, decode=decode, encode=encode, run=run)


@dataclass(slots=True)
class Call:
    """One inbound call: what was asked, of which endpoint, over which transport."""

    service: str
    path: str
    #: how the caller called it; a mismatch with `target.kind` is refused before decoding
    kind: Kind
    transport: str  # grpc, tcp, local
    content_type: str
    ctx: Context
    body: Body
    #: None when no endpoint is served at `path`
    target: Target | None
    peer: str = ""

    @property
    def endpoint(self) -> str:
        return self.ctx.endpoint
