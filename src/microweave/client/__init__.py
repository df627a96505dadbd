"""Client: find a node of a service, call it, retry elsewhere when a node is unreachable.

    reply = await client.call("greeter", "Greeter.SayHello", HelloRequest(name="x"),
                              response=HelloReply)

A call made inside a handler inherits what is left of the caller's deadline and its metadata.
Every call runs the client pipeline (`client.pipeline`): retry -> your middleware -> deadline ->
metadata -> select -> transport. Only calls that never reached a handler are retried, on
another node, unless the endpoint is idempotent: a retry never runs a handler twice otherwise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgspec

from ..codec import JSON, PROTO, is_proto_message, type_codec
from ..context import current_context
from ..errors import InternalServerError, MicroError
from ..registry import Registry
from ..registry.cache import RegistryCache
from ..selector import Filter, Selector
from ..server import Kind
from ..transport import ClientTransport, local
from .call import UNSET, ClientCall, Unset, check_timeout
from .routing import Routing

if TYPE_CHECKING:
    from ..broker import Broker
    from ..middleware import ClientMiddleware
    from .channel import Channel

__all__ = ["DEFAULT_TIMEOUT", "UNSET", "Client", "ClientCall", "Retry", "Unset"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0  # seconds, go-micro's default request timeout


@dataclass(frozen=True, slots=True)
class Retry:
    """Send a call again on another node, up to `attempts` in all: when it never reached a
    handler, or (idempotent endpoints only) when it may have run but failed transiently."""

    attempts: int = 3


def _transport(name: str | ClientTransport, max_message: int) -> ClientTransport:
    if isinstance(name, ClientTransport):
        return name
    if name == "local":
        return local.LocalClient()
    if name == "tcp":
        from ..transport.tcp import TcpClient

        return TcpClient(max_frame_size=max_message)
    if name == "grpc":
        from ..transport.grpc import GrpcClient

        return GrpcClient(max_message=max_message)
    raise ValueError(f"unknown transport {name!r}; choose from local, tcp, grpc, or pass a ClientTransport")


class Client:
    def __init__(
        self,
        *,
        registry: Registry | str | None = None,
        selector: Selector | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: Retry = Retry(),
        middleware: Sequence[ClientMiddleware] = (),
        name: str = "",
        node_id: str = "",
        cache_ttl: float = 60.0,
        transports: Sequence[str | ClientTransport] = ("local", "tcp", "grpc"),
        max_message: int = 4 * 1024 * 1024,
        broker: Broker | str | None = None,
        metrics: bool = True,
    ) -> None:
        """`timeout` is the default for calls (None: no deadline); `transports` in order of
        preference, by name or as instances (a node is reached by the first one it offers).
        `broker` is where `publish` sends events (a URL, else MICRO_BROKER, else `direct://`),
        built on first publish."""
        self._broker_arg = broker
        self._broker: Broker | None = None if broker is None or isinstance(broker, str) else broker
        self._broker_given = self._broker is not None
        self._owns_registry = registry is None or isinstance(registry, str)
        if registry is None or isinstance(registry, str):
            from .._backends import load_registry

            registry = load_registry(registry)
        self.registry = registry
        self.cache = RegistryCache(registry, ttl=cache_ttl)
        self.selector = selector or Selector()
        self.timeout = check_timeout(timeout)
        self.retry = retry
        self.name = name  # the calling service, sent as micro-from-service
        self.node_id = node_id
        self.max_message = max_message
        if not transports:
            raise ValueError("a client needs at least one transport: local, tcp or grpc")
        #: in order of preference
        self.transports = tuple(_transport(t, max_message) for t in transports)
        self.routing = Routing(self.cache, self.selector, self.transports, repr(registry))
        from ..middleware.defaults import client_middleware
        from .pipeline import ClientPipeline

        self.metrics = metrics
        self.pipeline = ClientPipeline(self, [*client_middleware(name, metrics=metrics), *middleware])

    def _deadline(self, timeout: float | Unset | None) -> float | None:
        """When this call must end: its own timeout, or the client's, shrunk to what the
        calling handler has left (deadlines shrink hop by hop)."""
        seconds = self.timeout if timeout is UNSET else check_timeout(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        ctx = current_context()
        if ctx is not None and ctx.deadline is not None:
            deadline = ctx.deadline if deadline is None else min(deadline, ctx.deadline)
        return deadline

    def _call(
        self,
        service: str,
        endpoint: str,
        kind: Kind,
        body: bytes | AsyncIterator[bytes],
        *,
        timeout: float | Unset | None,
        metadata: Mapping[str, str] | None,
        filters: Sequence[Filter],
        content_type: str,
        idempotent: bool | None,
        response_metadata: dict[str, str] | None = None,
    ) -> ClientCall:
        # positional: a dataclass built from keywords costs three times as much, on every call
        return ClientCall(
            service, endpoint, self.routing.path(service, endpoint), kind, body, content_type,
            {k.lower(): v for k, v in metadata.items()} if metadata else {},
            self._deadline(timeout), filters, idempotent, response_metadata,
        )  # fmt: skip

    @staticmethod
    def _encode(request: Any, content_type: str) -> bytes:
        if isinstance(request, bytes | bytearray | memoryview):
            return bytes(request)
        return type_codec(type(request)).encode(request, content_type)

    @staticmethod
    def _decode(body: bytes, response: Any, content_type: str, service: str, endpoint: str) -> Any:
        """The reply as the caller asked for it; a reply that does not decode is the node's
        fault, said as a `MicroError` (never a codec's own exception, nor a 400 that would
        blame the caller's request)."""
        try:
            if response is bytes:
                return body
            if response is None:
                return msgspec.json.decode(body) if content_type == JSON else msgspec.msgpack.decode(body)
            return type_codec(response).decode(body, content_type)
        except Exception as exc:
            why = exc.detail if isinstance(exc, MicroError) else str(exc)
            err = InternalServerError(
                f"the reply of {service} {endpoint} does not decode as "
                f"{getattr(response, '__name__', 'JSON')}: {why}",
                id="microweave.client",
            )
            err.callee = service
            raise err from None

    # -- unary -------------------------------------------------------------------------

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: type[T],
        timeout: float | Unset | None = ...,
        metadata: Mapping[str, str] | None = ...,
        response_metadata: dict[str, str] | None = ...,
        filters: Sequence[Filter] = ...,
        content_type: str | None = ...,
        idempotent: bool | None = ...,
    ) -> T: ...

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: None = ...,
        timeout: float | Unset | None = ...,
        metadata: Mapping[str, str] | None = ...,
        response_metadata: dict[str, str] | None = ...,
        filters: Sequence[Filter] = ...,
        content_type: str | None = ...,
        idempotent: bool | None = ...,
    ) -> Any: ...

    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: Any = None,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        response_metadata: dict[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Call `endpoint` (`Handler.Method`) of `service`; `response` is the reply type.

        Without `response` the reply is decoded to plain Python (dicts, lists, str, ...);
        with `response=bytes` it is returned undecoded. `request` may be bytes already encoded.
        `timeout`: seconds, None for no deadline, UNSET for the client's default.
        `idempotent`: whether the endpoint may run twice (None: as its registry record says).
        `content_type`: the body's encoding; by default protobuf when the request or response
        is a protobuf message (the only one go-micro's gRPC server takes from grpcio), else JSON.
        """
        content_type = content_type or _content_type(request, response)
        body = self._encode(request, content_type)
        reply = await self.call_raw(
            service, endpoint, body, timeout=timeout, metadata=metadata, response_metadata=response_metadata,
            filters=filters, content_type=content_type, idempotent=idempotent,
        )  # fmt: skip
        return self._decode(reply, response, content_type, service, endpoint)

    def call_raw(
        self,
        service: str,
        endpoint: str,
        body: bytes,
        *,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        response_metadata: dict[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str = JSON,
        idempotent: bool | None = None,
    ) -> Coroutine[Any, Any, bytes]:
        """A unary call with encoded bodies, by endpoint name or gRPC path (proxies, channels):
        `await client.call_raw(...)`. (A plain function returning the pipeline's coroutine, so
        the call costs one coroutine less; arguments are checked at once.)"""
        call = self._call(
            service, endpoint, Kind.UNARY, body, timeout=timeout, metadata=metadata, filters=filters,
            content_type=content_type, idempotent=idempotent, response_metadata=response_metadata,
        )  # fmt: skip
        return self.pipeline.unary(call)

    # -- streams -----------------------------------------------------------------------

    async def stream(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: Any = None,
        kind: Kind | None = None,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str | None = None,
        idempotent: bool | None = None,
    ) -> AsyncIterator[Any]:
        """A streaming call: `request` is one message (server-streaming) or an async iterator
        of messages (bidi); yields the replies decoded as `response`. A long-lived stream
        usually wants `timeout=None` (no deadline)."""
        if kind is None:
            kind = Kind.BIDI if hasattr(request, "__aiter__") else Kind.SERVER_STREAM
        content_type = content_type or _content_type(None if kind.request_streaming else request, response)
        body: Any
        if kind.request_streaming:
            body = self._encode_stream(request, content_type)
        else:
            body = self._encode(request, content_type)
        replies = self.stream_raw(
            service, endpoint, kind, body, timeout=timeout,
            metadata=metadata, filters=filters, content_type=content_type, idempotent=idempotent,
        )  # fmt: skip
        async with contextlib.aclosing(replies):  # stopping early cancels the call at once
            async for reply in replies:
                yield self._decode(reply, response, content_type, service, endpoint)

    async def stream_raw(
        self,
        service: str,
        endpoint: str,
        kind: Kind,
        body: bytes | AsyncIterator[bytes],
        *,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str = JSON,
        idempotent: bool | None = None,
    ) -> AsyncGenerator[bytes, None]:
        call = self._call(
            service, endpoint, kind, body, timeout=timeout, metadata=metadata, filters=filters,
            content_type=content_type, idempotent=idempotent,
        )  # fmt: skip
        replies = self.pipeline.stream(call)
        try:
            async for reply in replies:
                yield reply
        finally:
            await replies.aclose()

    async def _encode_stream(self, requests: AsyncIterator[Any], content_type: str) -> AsyncIterator[bytes]:
        async for item in requests:
            yield self._encode(item, content_type)

    # -- typed views ---------------------------------------------------------------------

    def proxy(
        self,
        handler: type[T],
        *,
        service: str,
        name: str | None = None,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
    ) -> T:
        """A typed stand-in for a remote handler class: `await proxy.say_hello(req)`; the call
        options given here apply to every call made through it."""
        from .proxy import make_proxy

        return make_proxy(
            self, handler, service=service, name=name, timeout=timeout, metadata=metadata, filters=filters
        )

    def channel(self, service: str) -> Channel:
        """A grpc.aio-style channel over discovery: `GreeterStub(client.channel("greeter"))`."""
        from .channel import Channel

        return Channel(self, service)

    # -- events ----------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """Where `publish` sends events; a `direct://` broker calls subscribers through this client."""
        if self._broker is None:
            from .._backends import load_broker

            arg = self._broker_arg
            self._broker = load_broker(arg if isinstance(arg, str) else None, name=self.name)
        self._broker.bind(self)
        return self._broker

    async def publish(self, topic: str, message: Any, *, headers: Mapping[str, str] | None = None) -> str:
        """Publish an event (bytes, or an object its codec encodes); returns its `Micro-Id`.
        Inside a handler, the call's trace context goes along in the headers."""
        ctx = current_context()
        if ctx is not None:
            headers = {**ctx.propagated_metadata(), **(headers or {})}
        return await self.broker.publish(topic, message, headers=headers)

    async def aclose(self) -> None:
        """Close the connections and the registry cache, and the registry if this client
        built it from a URL (whoever builds a resource closes it)."""
        if self._broker is not None and not self._broker_given:
            await self._broker.aclose()
        await self.cache.aclose()
        for transport in self.transports:
            await transport.aclose()
        if self._owns_registry:
            await self.registry.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _content_type(request: Any, response: Any) -> str:
    """PROTO when either side of the call is a protobuf message, else JSON."""
    if _is_proto(type(request)) or (response is not None and _is_proto(response)):
        return PROTO
    return JSON


_proto_types: dict[Any, bool] = {}  # per type, as the codecs are: the check costs on every call


def _is_proto(tp: Any) -> bool:
    known = _proto_types.get(tp)
    if known is None:
        known = _proto_types[tp] = is_proto_message(tp)
    return known
