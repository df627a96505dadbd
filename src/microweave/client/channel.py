"""A channel that grpcio-generated stubs accept, with discovery and balancing behind it.

`GreeterStub(client.channel("greeter"))` gives a stub whose calls are awaitables (as with a
grpc.aio channel); each call picks a node through the client's selector, so plain grpcio code
gets service discovery, load balancing and retries without a line of microweave in the stub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..codec import PROTO
from ..server import Kind
from .call import UNSET, Unset

if TYPE_CHECKING:
    from . import Client

__all__ = ["Channel"]

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


def _metadata(metadata: Sequence[tuple[str, str]] | None) -> dict[str, str] | None:
    return dict(metadata) if metadata else None


def _timeout(timeout: float | None) -> float | Unset:
    """A stub passes timeout=None when its caller gave none: the client's default applies."""
    return UNSET if timeout is None else timeout


class _MultiCallable:
    def __init__(
        self,
        client: Client,
        service: str,
        path: str,
        kind: Kind,
        serialize: Serializer,
        deserialize: Deserializer,
    ) -> None:
        self._client = client
        self._service = service
        self._path = path
        self._kind = kind
        self._serialize = serialize or (lambda m: bytes(m))
        self._deserialize = deserialize or (lambda b: b)

    async def _unary(self, request: Any, timeout: float | None, metadata: Any) -> Any:
        body = await self._client.call_raw(
            self._service,
            self._path,
            self._serialize(request),
            timeout=_timeout(timeout),
            metadata=_metadata(metadata),
            content_type=PROTO,
        )
        return self._deserialize(body)

    async def _requests(self, requests: Any) -> AsyncIterator[bytes]:
        if hasattr(requests, "__aiter__"):
            async for item in requests:
                yield self._serialize(item)
        else:
            for item in requests:
                yield self._serialize(item)

    def _stream(self, request: Any, timeout: float | None, metadata: Any) -> AsyncIterator[bytes]:
        body = self._requests(request) if self._kind.request_streaming else self._serialize(request)
        return self._client.stream_raw(
            self._service,
            self._path,
            self._kind,
            body,
            timeout=_timeout(timeout),
            metadata=_metadata(metadata),
            content_type=PROTO,
        )

    async def _responses(self, request: Any, timeout: float | None, metadata: Any) -> AsyncIterator[Any]:
        async for body in self._stream(request, timeout, metadata):
            yield self._deserialize(body)

    async def _stream_unary(self, requests: Any, timeout: float | None, metadata: Any) -> Any:
        async for body in self._stream(requests, timeout, metadata):
            return self._deserialize(body)
        raise RuntimeError("the server closed the call without a reply")

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        **_: Any,
    ) -> Any:
        if self._kind is Kind.UNARY:
            return self._unary(request, timeout, metadata)
        if self._kind is Kind.CLIENT_STREAM:
            return self._stream_unary(request, timeout, metadata)
        return self._responses(request, timeout, metadata)


class Channel:
    """Quacks like `grpc.aio.Channel` for generated stubs."""

    def __init__(self, client: Client, service: str) -> None:
        self._client = client
        self.service = service

    def _make(
        self,
        kind: Kind,
        path: str,
        request_serializer: Serializer,
        response_deserializer: Deserializer,
    ) -> _MultiCallable:
        return _MultiCallable(
            self._client, self.service, path, kind, request_serializer, response_deserializer
        )

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        **_: Any,
    ) -> _MultiCallable:
        return self._make(Kind.UNARY, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        **_: Any,
    ) -> _MultiCallable:
        return self._make(Kind.SERVER_STREAM, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        **_: Any,
    ) -> _MultiCallable:
        return self._make(Kind.CLIENT_STREAM, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        **_: Any,
    ) -> _MultiCallable:
        return self._make(Kind.BIDI, method, request_serializer, response_deserializer)

    async def close(self, grace: float | None = None) -> None:
        """The client owns the connections; closing the channel view is a no-op."""

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
