"""Native gRPC client: one grpc.aio channel per node reached, raw-bytes multicallables cached.

Channels live in `channels.Channels`, shared with `NamedGrpcClient`: one to a node the client
could not connect to is closed and dropped, so a churning fleet does not grow the table."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import grpc

from ...codec import JSON
from ...errors import BadRequest, ConnectionLost, MicroError, NotDelivered, from_grpc
from ...registry import Node
from ...server import Kind
from .. import ClientTransport, StreamBody
from .channels import Channels
from .server import CONTENT_TYPE_KEY, MAX_MESSAGE, REFUSED_KEY

__all__ = ["GrpcClient"]

_FACTORIES = {
    Kind.UNARY: "unary_unary",
    Kind.SERVER_STREAM: "unary_stream",
    Kind.CLIENT_STREAM: "stream_unary",
    Kind.BIDI: "stream_stream",
}


_JSON_ONLY = ((CONTENT_TYPE_KEY, JSON),)


def _grpc_metadata(metadata: Mapping[str, str], content_type: str) -> tuple[tuple[str, str], ...]:
    """The call's metadata and, always, its content type: a server takes a call that names none
    as a plain grpcio client's, in the endpoint's own codec (protobuf for protobuf-typed ones)."""
    if not metadata and content_type == JSON:
        return _JSON_ONLY
    for key, value in metadata.items():
        if not (value.isascii() and value.isprintable()) or _KEY.fullmatch(key) is None:
            raise _unsendable(key, value)
    return (*metadata.items(), (CONTENT_TYPE_KEY, content_type))


#: a text metadata key gRPC takes (`-bin` keys carry bytes, which call metadata never holds)
_KEY = re.compile(r"(?![0-9a-z_.-]*-bin$)[0-9a-z_.-]+")


def _unsendable(key: str, value: str) -> BadRequest:
    """Metadata grpc-core would refuse (with an exception of its own and lines on stderr): tcp
    carries any text, so a value a peer sent over tcp may be propagated into a gRPC call."""
    from ...logs import printable

    return BadRequest(
        f"metadata {printable(key, 60)}={printable(value, 60)} cannot go over gRPC: keys are "
        "lowercase letters, digits, '-', '_' and '.' (not ending in -bin), values printable ASCII",
        id="microweave.client",
    )


# what grpc-core says when no connection could be made: the request never left
_NOT_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed", "connect failed")


def _refused(exc: grpc.aio.AioRpcError) -> bool:
    """A draining microweave node says so in the trailers: alive, but the call never ran."""
    return exc.code() is grpc.StatusCode.UNAVAILABLE and any(
        k == REFUSED_KEY for k, _ in exc.trailing_metadata() or ()
    )


def _not_connected(exc: grpc.aio.AioRpcError) -> bool:
    """grpc-core could not make a connection: the request never left."""
    said = (exc.details() or "").lower()
    return (
        exc.code() is grpc.StatusCode.UNAVAILABLE
        and not _refused(exc)
        and any(words in said for words in _NOT_CONNECTED)
    )


def _error(exc: grpc.aio.AioRpcError, address: str) -> MicroError:
    """Where the error came from: a microweave or go-micro node answers with its error JSON in
    the status message (`remote`); grpc-core's own UNAVAILABLE is a transport failure."""
    code, details = exc.code(), exc.details() or ""
    if _refused(exc):
        return NotDelivered(f"node {address} is draining: it refused the call", id="microweave.client")
    err = from_grpc(code, details)
    if err.id or details.startswith("{"):
        err.remote = True
        return err
    if code is grpc.StatusCode.UNAVAILABLE:
        if _not_connected(exc):
            return NotDelivered(f"node {address} unreachable: {details}", id="microweave.client")
        return ConnectionLost(f"connection to node {address} lost: {details}", id="microweave.client")
    if code is grpc.StatusCode.CANCELLED:
        # Not our cancel (that raises CancelledError here): grpc-core on the node cancelled the
        # call without a word from microweave, as it does to calls arriving while it stops.
        return ConnectionLost(
            f"node {address} cancelled the call without answering (stopping?); it may have run",
            id="microweave.client",
        )
    local = code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED) or details.startswith(
        "Sent"
    )
    err.remote = not local  # else a plain gRPC server answered with a status of its own
    return err


class _Node:
    """One node's channel and the multicallables made on it (dropped with it)."""

    __slots__ = ("callables", "channel")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.callables: dict[tuple[str, Kind], Any] = {}


async def _close(node: _Node) -> None:
    node.callables.clear()
    await node.channel.close()


class GrpcClient(ClientTransport):
    name = "grpc"
    #: gRPC's wire does not say whether a call is unary or streaming: the client checks the
    #: kind against the registry record before sending (`client.routing.Routing`)
    call_kind_on_wire = False

    def address_of(self, node: Node) -> str | None:
        return node.address or None  # go-micro's field: the gRPC address

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ]
        self._channels: Channels[str, _Node] = Channels(self._open, _close)

    def _open(self, address: str) -> _Node:
        return _Node(grpc.aio.insecure_channel(address, options=self._options))

    def channel(self, address: str) -> Any:
        return self._channels.channel(address).channel

    def _callable(self, address: str, path: str, kind: Kind) -> Any:
        node = self._channels.channel(address)
        multicallable = node.callables.get((path, kind))
        if multicallable is None:
            factory = getattr(node.channel, _FACTORIES[kind])
            multicallable = node.callables[(path, kind)] = factory(path)
        return multicallable

    async def _failed(self, exc: grpc.aio.AioRpcError, address: str) -> MicroError:
        """The error to raise; a node the call could not connect to loses its channel."""
        if _not_connected(exc):
            await self._channels.forget(address)
        return _error(exc, address)

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
        call = self._callable(address, path, Kind.UNARY)(
            body, timeout=timeout, metadata=_grpc_metadata(metadata, content_type)
        )
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as exc:
            raise await self._failed(exc, address) from None
        if response_metadata is not None:
            trailing = await call.trailing_metadata()
            response_metadata.update((k, v) for k, v in (trailing or ()) if isinstance(v, str))
        return reply

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
        call = self._callable(address, path, kind)(
            body, timeout=timeout, metadata=_grpc_metadata(metadata, content_type)
        )
        try:
            if kind.response_streaming:
                async for item in call:
                    yield item
            else:
                yield await call
        except grpc.aio.AioRpcError as exc:
            raise await self._failed(exc, address) from None
        finally:
            if not call.done():
                call.cancel()

    async def aclose(self) -> None:
        await self._channels.aclose()
