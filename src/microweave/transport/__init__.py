"""Transports: how a call's bytes travel between a client and a node.

A server transport serves a `Router` on an address; a client transport carries encoded bodies to
an address and back, pooling its connections. Bodies are already encoded (the codec belongs to
the endpoint, not the wire), so every transport carries JSON, msgpack and protobuf alike.
Errors come back as `MicroError`s; a node that cannot be reached is `Unavailable`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING

from ..codec import JSON

if TYPE_CHECKING:
    from ..server import Kind, Router
    from ..server.invoke import Invoker

__all__ = ["ClientTransport", "ServerTransport", "StreamBody"]

#: one body (unary and server-streaming calls) or an async iterator of bodies (client/bidi)
StreamBody = bytes | AsyncIterator[bytes]


class ServerTransport(abc.ABC):
    """Serves a router on one listening address."""

    #: registry metadata key naming this transport (`grpc`, `tcp`)
    name: str = ""

    @abc.abstractmethod
    async def start(self, router: Router, invoker: Invoker, *, host: str, port: int) -> str:
        """Listen (port 0 picks a free one) and return the address callers should use."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to `grace` seconds, then close."""


class ClientTransport(abc.ABC):
    """Carries calls to nodes by address, reusing connections."""

    name: str = ""

    @abc.abstractmethod
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
        """One request, one reply. Fills `response_metadata` when given."""

    @abc.abstractmethod
    def stream(
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
        """Server-, client- or bidi-streaming: yields the reply bodies."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every pooled connection."""
