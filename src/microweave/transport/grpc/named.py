"""gRPC that names the body's codec in HTTP/2's content-type, for go-micro's plain-struct handlers.

go-micro's gRPC server decodes a request with the codec the HTTP/2 `content-type` names
(`application/grpc+json`, `+proto`); `x-content-type` does not change that. grpcio always sends
`application/grpc` (protobuf), so a go-micro handler with plain Go struct types cannot be
reached with it. This client transport, on grpclib (`pip install microweave[gomicro]`), sends
`application/grpc+json` for JSON calls and `application/grpc+proto` for protobuf ones, and
`x-content-type` as well, so microweave nodes read it too. Use it for the gRPC leg of a client
that calls go-micro services:

    Client(transports=("local", "tcp", NamedGrpcClient()))

Replies are bounded like grpcio's (`max_message`): the length a node declares is checked before
any of the body is read (grpclib itself would buffer whatever length the node declares).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, cast

import grpc

from ...codec import JSON
from ...errors import ConnectionLost, MicroError, NotDelivered, TooManyRequests, from_grpc
from ...registry import Node
from ...server import Kind
from .. import ClientTransport, StreamBody
from .channels import Channels
from .server import CONTENT_TYPE_KEY, CONTENT_TYPES, MAX_MESSAGE, REFUSED_KEY

__all__ = ["NamedGrpcClient"]


class _Subtype(str):
    """The content subtype sent (`json`), which also accepts a reply labelled plain
    `application/grpc`: grpcio servers (microweave's) label every reply so, whatever codec the
    caller asked for in `x-content-type` and got. grpclib 0.4 names the request's content type
    from `subtype == "proto"` (str's `__eq__`, kept) and checks a reply's with `reply_subtype !=
    subtype`, where this subclass's reflected `__ne__` is asked first. tests/interop pin both."""

    __slots__ = ()

    def __ne__(self, other: object) -> bool:
        return other not in (str(self), "proto")


class _Raw:
    """grpclib codec that leaves bodies as they are (they are encoded already) and names the
    content subtype go-micro's server picks its codec by."""

    def __init__(self, subtype: str) -> None:
        self.__content_subtype__ = _Subtype(subtype)

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


def _subtype(content_type: str) -> str:
    return "json" if CONTENT_TYPES.get(content_type, content_type) == JSON else "proto"


def _error(exc: BaseException, address: str, stream: Any, sent: bool) -> MicroError:
    """grpclib's errors as the grpcio transport reports them: the node's answer (`remote`),
    a draining node's refusal, or where the transport failed (before the request was sent:
    not delivered; after: lost, it may have run)."""
    from grpclib.exceptions import GRPCError

    if isinstance(exc, TimeoutError):
        return from_grpc(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    if isinstance(exc, GRPCError):
        trailers = getattr(stream, "trailing_metadata", None) or {}
        if REFUSED_KEY in trailers:
            return NotDelivered(f"node {address} is draining: it refused the call", id="microweave.client")
        details = exc.message or ""
        code = grpc.StatusCode[exc.status.name]
        err = from_grpc(code, details)
        err.remote = bool(err.id) or details.startswith("{") or code is not grpc.StatusCode.UNAVAILABLE
        return err
    if not sent:
        return NotDelivered(
            f"node {address} unreachable: {exc or type(exc).__name__}", id="microweave.client"
        )
    return ConnectionLost(
        f"connection to node {address} lost: {exc or type(exc).__name__}", id="microweave.client"
    )


class NamedGrpcClient(ClientTransport):
    """gRPC on grpclib, with the content type named on the wire (see the module's docstring)."""

    name = "grpc"
    call_kind_on_wire = False  # as grpcio's: the client checks the kind against the record

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        try:
            import grpclib.client  # noqa: F401 - an optional dependency: say so at construction
        except ImportError:
            raise ImportError("NamedGrpcClient needs grpclib: pip install 'microweave[gomicro]'") from None
        self.max_message = max_message
        # (address, content subtype): the codec is the channel's; shared rule in channels.py
        self._channels: Channels[tuple[str, str], Any] = Channels(_open, _close)

    def address_of(self, node: Node) -> str | None:
        return node.address or None  # go-micro's field: the gRPC address

    def _open(
        self, address: str, path: str, kind: Kind, timeout: float | None, metadata: Mapping[str, str], ct: str
    ) -> Any:
        from grpclib.const import Cardinality

        cardinality = {
            Kind.UNARY: Cardinality.UNARY_UNARY,
            Kind.SERVER_STREAM: Cardinality.UNARY_STREAM,
            Kind.CLIENT_STREAM: Cardinality.STREAM_UNARY,
            Kind.BIDI: Cardinality.STREAM_STREAM,
        }[kind]
        md = [*((k, v) for k, v in metadata.items() if k != CONTENT_TYPE_KEY), (CONTENT_TYPE_KEY, ct)]
        channel = self._channels.channel((address, _subtype(ct)))
        return channel.request(path, cardinality, bytes, bytes, timeout=timeout, metadata=md)

    async def _reply(self, stream: Any) -> bytes | None:
        """The next reply, its declared length checked before its body is read."""
        raw = stream._stream  # grpclib's HTTP/2 stream: the length prefix, then the body
        prefix = await raw.recv_data(5)
        if not prefix:
            return None
        if prefix[0]:
            raise ConnectionLost("the node sent a compressed reply, which is not supported")
        length = int.from_bytes(prefix[1:5], "big")
        if length > self.max_message:
            raise TooManyRequests(f"reply of {length} bytes is over the limit of {self.max_message}")
        body: bytes = await raw.recv_data(length)
        return body

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
        replies = self.stream(address, path, Kind.UNARY, body, timeout=timeout, metadata=metadata,
                              content_type=content_type, trailers=response_metadata)  # fmt: skip
        try:
            async for reply in replies:
                return reply
        finally:
            await replies.aclose()
        raise ConnectionLost(f"node {address} ended the call without a reply", id="microweave.client")

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
        trailers: dict[str, str] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Every kind of call (unary ones too: one reply). `trailers` is filled with the
        node's trailing metadata when the call ends."""
        sender: asyncio.Task[None] | None = None
        stream: Any = None
        sent = False
        replies: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                async with self._open(address, path, kind, timeout, metadata, content_type) as stream:
                    if isinstance(body, bytes | bytearray | memoryview):
                        await stream.send_message(bytes(body), end=True)
                    else:
                        await stream.send_request()
                        sender = asyncio.create_task(_send_all(stream, body))
                    sent = True
                    await stream.recv_initial_metadata()
                    while (reply := await self._reply(stream)) is not None:
                        if not kind.response_streaming:
                            replies.append(reply)  # answered once the status says OK
                            break
                        yield reply
                    if sender is not None:
                        await sender
                    await stream.recv_trailing_metadata()
        except MicroError:
            raise
        except Exception as exc:  # grpclib's, h2's and the socket's errors, and the deadline
            err = _error(exc, address, stream, sent)
            if not sent and isinstance(err, NotDelivered):  # not a draining node's refusal
                await self._channels.forget((address, _subtype(content_type)))  # keep no channel
            raise err from None
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
        if trailers is not None and stream is not None:
            trailers.update((k, v) for k, v in (stream.trailing_metadata or {}).items() if isinstance(v, str))
        for reply in replies:
            yield reply

    async def aclose(self) -> None:
        await self._channels.aclose()


def _open(key: tuple[str, str]) -> Any:
    from grpclib.client import Channel

    address, subtype = key
    host, _, port = address.rpartition(":")
    return Channel(host.strip("[]"), int(port), codec=cast(Any, _Raw(subtype)))


def _close(channel: Any) -> None:
    channel.close()


async def _send_all(stream: Any, bodies: AsyncIterator[bytes]) -> None:
    async for body in bodies:
        await stream.send_message(body)
    await stream.end()


def _refused(exc: BaseException) -> bool:
    """A microweave node that is draining says so in the trailers: the call never ran."""
    trailers = getattr(exc, "trailing_metadata", None) or {}
    return REFUSED_KEY in trailers if isinstance(trailers, Mapping) else False
