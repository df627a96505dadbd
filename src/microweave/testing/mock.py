"""`MockTransport`: a client transport that answers every call itself, as httpx's does.

    async def answer(request: MockRequest) -> Any:
        assert request.path == "/greeter.Greeter/SayHello"
        return {"message": "Hello from the mock"}

    client = Client(registry="memory://", transports=[MockTransport(answer)])

The client runs its whole pipeline (your middleware, deadlines, metadata, retries) but selects
no node: the mock is the node and the wire. Return bytes (sent as they are) or anything the
JSON codec encodes; raise a `MicroError` to answer with an error.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ..codec import JSON
from ..errors import MicroError
from ..server import Kind
from ..transport import ClientTransport, StreamBody

__all__ = ["MockRequest", "MockTransport"]


@dataclass(frozen=True, slots=True)
class MockRequest:
    """One call as it would have left on the wire."""

    path: str  # /greeter.Greeter/SayHello
    kind: Kind
    body: bytes | None  # None for client- and bidi-streaming calls: see `bodies`
    bodies: AsyncIterator[bytes] | None
    metadata: Mapping[str, str]
    content_type: str
    timeout: float | None

    def json(self) -> Any:
        """The request body decoded as JSON."""
        return msgspec.json.decode(self.body or b"null")


Handler = Callable[[MockRequest], Awaitable[Any]]


def _encode(reply: Any) -> bytes:
    return reply if isinstance(reply, bytes) else msgspec.json.encode(reply)


class MockTransport(ClientTransport):
    """Answers every call with `handler(request)`; for a streaming call the handler returns an
    async iterator (or a list) of replies."""

    name = "mock"
    discovers = False

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []  # every call it answered, in order

    async def _answer(self, request: MockRequest) -> Any:
        self.requests.append(request)
        try:
            return await self.handler(request)
        except MicroError as exc:
            exc.remote = True  # as a node's answer would be
            raise

    async def unary(
        self,
        address: str,
        path: str,
        body: bytes,
        *,
        timeout: float | None,
        metadata: Mapping[str, str],
        content_type: str = JSON,
        response_metadata: dict[str, str] | None = None,
    ) -> bytes:
        request = MockRequest(path, Kind.UNARY, body, None, dict(metadata), content_type, timeout)
        return _encode(await self._answer(request))

    async def stream(
        self,
        address: str,
        path: str,
        kind: Kind,
        body: StreamBody,
        *,
        timeout: float | None,
        metadata: Mapping[str, str],
        content_type: str = JSON,
    ) -> AsyncGenerator[bytes, None]:
        one = isinstance(body, bytes)
        request = MockRequest(
            path, kind, body if one else None, None if one else body,  # type: ignore[arg-type]
            dict(metadata), content_type, timeout,
        )  # fmt: skip
        replies = await self._answer(request)
        if not kind.response_streaming:
            yield _encode(replies)
        elif hasattr(replies, "__aiter__"):
            async for reply in replies:
                yield _encode(reply)
        else:
            for reply in replies:
                yield _encode(reply)

    async def aclose(self) -> None:
        """Nothing to close."""
