"""Client: find a node of a service, call it, retry elsewhere when a node is unreachable.

    reply = await client.call("greeter", "Greeter.SayHello", HelloRequest(name="x"),
                              response=HelloReply)

A call made inside a handler inherits what is left of the caller's deadline and its metadata.
Only calls that never reached a handler (the node was unreachable or draining) are retried, on
another node, so a retry never runs a handler twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgspec

from ..codec import JSON, type_codec
from ..context import FROM_NODE, FROM_SERVICE, current_context
from ..errors import ServiceNotFound, Timeout, Unavailable
from ..registry import Node, Registry
from ..registry.cache import RegistryCache
from ..selector import Filter, Selector
from ..server import Kind, grpc_path
from ..transport import ClientTransport, local

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["DEFAULT_TIMEOUT", "Client", "Retry"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0  # seconds, go-micro's default request timeout


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry calls that never reached a handler, on another node, up to `attempts` in all."""

    attempts: int = 3


class Client:
    def __init__(
        self,
        *,
        registry: Registry | str | None = None,
        selector: Selector | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry = Retry(),
        name: str = "",
        node_id: str = "",
        cache_ttl: float = 60.0,
        transports: Sequence[str] = ("local", "tcp", "grpc"),
        max_message: int = 4 * 1024 * 1024,
    ) -> None:
        if registry is None or isinstance(registry, str):
            from .._backends import load_registry

            registry = load_registry(registry)
        self.registry = registry
        self.cache = RegistryCache(registry, ttl=cache_ttl)
        self.selector = selector or Selector()
        self.timeout = timeout
        self.retry = retry
        self.name = name  # the calling service, sent as micro-from-service
        self.node_id = node_id
        self._grpc: ClientTransport | None = None
        self._tcp: ClientTransport | None = None
        self._paths: dict[tuple[str, str], str] = {}
        self.max_message = max_message
        self._local = local.LocalClient()
        unknown = set(transports) - {"local", "tcp", "grpc"}
        if unknown or not transports:
            raise ValueError(f"unknown transports {sorted(unknown)}; choose from local, tcp, grpc")
        #: in order of preference; a node is reached by the first one it offers
        self.transports = tuple(transports)

    # -- the transports ---------------------------------------------------------------

    def _route(self, node: Node) -> tuple[ClientTransport, str]:
        """Which transport and address reach this node, in order of `self.transports`."""
        for name in self.transports:
            if name == "local" and local.serving(node.id):
                return self._local, node.id
            if name == "tcp" and (address := node.metadata.get("tcp_address")):
                if self._tcp is None:
                    from ..transport.tcp import TcpClient

                    self._tcp = TcpClient(max_frame_size=self.max_message)
                return self._tcp, address
            if name == "grpc" and node.address:
                if self._grpc is None:
                    from ..transport.grpc import GrpcClient

                    self._grpc = GrpcClient(max_message=self.max_message)
                return self._grpc, node.address
        raise Unavailable(
            f"node {node.id} offers none of the transports {', '.join(self.transports)}",
            id="microweave.client",
        )

    # -- helpers shared by every call kind --------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        """Seconds this call may take: its own timeout, shrunk to what the caller has left."""
        budget = self.timeout if timeout is None else timeout
        ctx = current_context()
        if ctx is not None and ctx.deadline is not None:
            budget = min(budget, ctx.deadline - time.monotonic())
        return budget

    def _metadata(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        ctx = current_context()
        md = ctx.propagated_metadata() if ctx is not None else {}
        if self.name:
            md[FROM_SERVICE] = self.name
        if self.node_id:
            md[FROM_NODE] = self.node_id
        if extra:
            md.update((k.lower(), v) for k, v in extra.items())
        return md

    async def _select(self, service: str, filters: Sequence[Filter], exclude: Sequence[str]) -> Node:
        services = self.cache.fresh(service)
        if services is None:  # not cached, or stale: ask the registry
            services = await self.cache.get_service(service)
        if not services:
            raise ServiceNotFound(
                f"service {service} not found in {self.registry!r}; is it running, and on the same registry?",
                id="microweave.client",
            )
        return self.selector.select(service, services, filters, exclude)

    def _path(self, service: str, endpoint: str) -> str:
        key = (service, endpoint)
        path = self._paths.get(key)
        if path is None:
            path = endpoint if endpoint.startswith("/") else grpc_path(service, endpoint)
            if len(self._paths) < 4096:  # endpoints are few; a bound keeps odd callers in check
                self._paths[key] = path
        return path

    @staticmethod
    def _encode(request: Any, content_type: str) -> bytes:
        if isinstance(request, bytes | bytearray | memoryview):
            return bytes(request)
        return type_codec(type(request)).encode(request, content_type)

    @staticmethod
    def _decode(body: bytes, response: Any, content_type: str) -> Any:
        if response is bytes:
            return body
        if response is None:
            return msgspec.json.decode(body) if content_type == JSON else msgspec.msgpack.decode(body)
        return type_codec(response).decode(body, content_type)

    # -- unary -------------------------------------------------------------------------

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: type[T],
        timeout: float | None = ...,
        metadata: Mapping[str, str] | None = ...,
        response_metadata: dict[str, str] | None = ...,
        filters: Sequence[Filter] = ...,
        content_type: str = ...,
    ) -> T: ...

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: None = ...,
        timeout: float | None = ...,
        metadata: Mapping[str, str] | None = ...,
        response_metadata: dict[str, str] | None = ...,
        filters: Sequence[Filter] = ...,
        content_type: str = ...,
    ) -> Any: ...

    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: Any = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        response_metadata: dict[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str = JSON,
    ) -> Any:
        """Call `endpoint` (`Handler.Method`) of `service`; `response` is the reply type.

        Without `response` the reply is decoded to plain Python (dicts, lists, str, ...);
        with `response=bytes` it is returned undecoded. `request` may be bytes already encoded.
        """
        body = self._encode(request, content_type)
        reply = await self.call_raw(
            service,
            self._path(service, endpoint),
            body,
            timeout=timeout,
            metadata=metadata,
            response_metadata=response_metadata,
            filters=filters,
            content_type=content_type,
        )
        return self._decode(reply, response, content_type)

    async def call_raw(
        self,
        service: str,
        path: str,
        body: bytes,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        response_metadata: dict[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str = JSON,
    ) -> bytes:
        """A unary call with encoded bodies, at a gRPC path: what proxies and channels use."""
        deadline = time.monotonic() + self._deadline(timeout)
        md = self._metadata(metadata)
        tried: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"deadline exceeded before calling {service} {path}", id="microweave.client")
            node = await self._select(service, filters, tried)
            transport, address = self._route(node)
            self.selector.started(node)
            failed = False
            try:
                return await transport.unary(
                    address,
                    path,
                    body,
                    timeout=left,
                    metadata=md,
                    content_type=content_type,
                    response_metadata=response_metadata,
                )
            except Unavailable:
                failed = True
                tried.append(node.id)
                if len(tried) >= self.retry.attempts:
                    raise
            finally:
                self.selector.finished(node, failed=failed)

    # -- streams -----------------------------------------------------------------------

    async def stream(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: Any = None,
        kind: Kind | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str = JSON,
    ) -> AsyncIterator[Any]:
        """A streaming call: `request` is one message (server-streaming) or an async iterator
        of messages (bidi); yields the replies decoded as `response`."""
        if kind is None:
            kind = Kind.BIDI if hasattr(request, "__aiter__") else Kind.SERVER_STREAM
        body: Any
        if kind.request_streaming:
            body = self._encode_stream(request, content_type)
        else:
            body = self._encode(request, content_type)
        replies = self.stream_raw(
            service, self._path(service, endpoint), kind, body, timeout=timeout,
            metadata=metadata, filters=filters, content_type=content_type,
        )  # fmt: skip
        async with contextlib.aclosing(replies):  # stopping early cancels the call at once
            async for reply in replies:
                yield self._decode(reply, response, content_type)

    async def stream_raw(
        self,
        service: str,
        path: str,
        kind: Kind,
        body: bytes | AsyncIterator[bytes],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
        content_type: str = JSON,
    ) -> AsyncGenerator[bytes, None]:
        left = self._deadline(timeout)
        if left <= 0:
            raise Timeout(f"deadline exceeded before calling {service} {path}", id="microweave.client")
        node = await self._select(service, filters, ())
        transport, address = self._route(node)
        self.selector.started(node)
        failed = False
        replies = transport.stream(
            address, path, kind, body, timeout=left, metadata=self._metadata(metadata),
            content_type=content_type,
        )  # fmt: skip
        try:
            # a caller that stops early cancels the call now, not when the generator is collected
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply
        except Unavailable:
            failed = True
            raise
        finally:
            self.selector.finished(node, failed=failed)

    async def _encode_stream(self, requests: AsyncIterator[Any], content_type: str) -> AsyncIterator[bytes]:
        async for item in requests:
            yield self._encode(item, content_type)

    # -- typed views ---------------------------------------------------------------------

    def proxy(self, handler: type[T], *, service: str, name: str | None = None) -> T:
        """A typed stand-in for a remote handler class: `await proxy.say_hello(req)`."""
        from .proxy import make_proxy

        return make_proxy(self, handler, service=service, name=name)

    def channel(self, service: str) -> Channel:
        """A grpc.aio-style channel over discovery: `GreeterStub(client.channel("greeter"))`."""
        from .channel import Channel

        return Channel(self, service)

    async def aclose(self) -> None:
        await self.cache.aclose()
        for transport in (self._grpc, self._tcp):
            if transport is not None:
                await transport.aclose()
        self._grpc = self._tcp = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
