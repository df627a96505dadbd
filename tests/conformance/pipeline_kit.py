"""What the pipeline conformance tests serve and how they call it, on every transport.

One endpoint set, served two ways: as a typed handler (`Pipe`, JSON bodies) and as a
grpcio-generated servicer (`mwpipe.Pipe`, protobuf bodies, compiled from `PROTO` at test time).
`Api` calls either through the same client methods, so a test body never branches on which one
it is talking to. A `Book` counts executions per node, so retries are seen for what they are.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import msgspec

from microweave import Client, Context, Service, Unavailable, current_context
from microweave.codec import JSON, PROTO
from microweave.server import Kind

#: what a failing handler puts in its exception: none of it may reach a caller
SECRET = "hunter2 in /srv/app/settings.py"
#: the services' message limit (both transports, and in-process)
LIMIT = 64 * 1024

PROTO_SOURCE = """
syntax = "proto3";
package mwpipe;
message Msg { string text = 1; int64 n = 2; }
service Pipe {
  rpc Echo (Msg) returns (Msg);
  rpc Count (Msg) returns (stream Msg);
  rpc Join (stream Msg) returns (Msg);
  rpc Chat (stream Msg) returns (stream Msg);
  rpc Big (Msg) returns (Msg);
  rpc Bigs (Msg) returns (stream Msg);
  rpc Slow (Msg) returns (Msg);
  rpc Down (Msg) returns (Msg);
  rpc Fail (Msg) returns (Msg);
  rpc Where (Msg) returns (Msg);
  rpc Block (Msg) returns (Msg);
  rpc Ticks (Msg) returns (stream Msg);
  rpc Seen (Msg) returns (Msg);
}
"""

#: the endpoint of each call kind
OF_KIND = {Kind.UNARY: "Echo", Kind.SERVER_STREAM: "Count", Kind.CLIENT_STREAM: "Join", Kind.BIDI: "Chat"}


def compile_proto(out: Path) -> tuple[ModuleType, ModuleType]:
    """`mwpipe_pb2` and `mwpipe_pb2_grpc`, generated into `out` with grpc_tools and imported."""
    (out / "mwpipe.proto").write_text(PROTO_SOURCE)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
            f"--grpc_python_out={out}", str(out / "mwpipe.proto"),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    return importlib.import_module("mwpipe_pb2"), importlib.import_module("mwpipe_pb2_grpc")


class Msg(msgspec.Struct):
    text: str = ""
    n: int = 0


class Book:
    """What ran where, shared by every node of a test (they all run in this process)."""

    def __init__(self) -> None:
        self.runs: collections.Counter[tuple[str, str]] = collections.Counter()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.blocking = threading.Event()  # set from a worker thread
        self.nodes: list[str] = []  # the node of each call to Slow, in order

    def ran(self, method: str, node: str) -> None:
        self.runs[(method, node)] += 1

    def count(self, method: str) -> int:
        return sum(n for (m, _), n in self.runs.items() if m == method)

    def by_node(self, method: str) -> dict[str, int]:
        return {node: n for (m, node), n in self.runs.items() if m == method}


def failure(mode: str) -> BaseException:
    """The exception a failing handler raises, by name."""
    if mode == "exit":
        return SystemExit(SECRET)
    if mode == "interrupt":
        return KeyboardInterrupt(SECRET)
    if mode == "runtime":
        return RuntimeError(SECRET)
    return ValueError(SECRET)


async def _slow(book: Book, node: str, millis: int) -> None:
    book.ran("Slow", node)
    book.nodes.append(node)
    book.started.set()
    try:
        await asyncio.sleep(millis / 1000)
    except asyncio.CancelledError:
        book.cancelled.set()
        raise


def _blocked(book: Book, node: str, millis: int) -> str:
    book.ran("Block", node)
    book.blocking.set()
    time.sleep(millis / 1000)
    return threading.current_thread().name


class Pipe:
    """The typed handler: every call kind, and every way a call can go wrong."""

    def __init__(self, book: Book, node: str = "a") -> None:
        self.book = book
        self.node = node

    async def echo(self, req: Msg) -> Msg:
        self.book.ran("Echo", self.node)
        return Msg(text=req.text, n=len(req.text))

    async def count(self, req: Msg) -> AsyncIterator[Msg]:
        for i in range(req.n):
            yield Msg(text=req.text, n=i)

    async def join(self, reqs: AsyncIterator[Msg]) -> Msg:
        texts = [r.text async for r in reqs]
        return Msg(text="".join(texts), n=len(texts))

    async def chat(self, reqs: AsyncIterator[Msg]) -> AsyncIterator[Msg]:
        async for r in reqs:
            yield Msg(text=r.text.upper(), n=r.n)

    async def big(self, req: Msg) -> Msg:
        return Msg(text="x" * req.n)

    async def bigs(self, req: Msg) -> AsyncIterator[Msg]:
        yield Msg(text="small")
        yield Msg(text="x" * req.n)

    async def slow(self, req: Msg) -> Msg:
        await _slow(self.book, self.node, req.n)
        return Msg(text=self.node)

    async def down(self, req: Msg) -> Msg:
        self.book.ran("Down", self.node)
        raise Unavailable("down for maintenance")

    async def fail(self, req: Msg) -> Msg:
        raise failure(req.text)

    async def where(self, req: Msg) -> Msg:
        ctx = current_context()
        return Msg(text=ctx.endpoint if ctx else "", n=threading.get_ident())

    def block(self, req: Msg) -> Msg:
        return Msg(text=_blocked(self.book, self.node, req.n))

    async def ticks(self, req: Msg) -> AsyncIterator[Msg]:
        for i in range(req.n):
            self.book.blocking.set()
            await asyncio.sleep(0.1)
            yield Msg(text="tick", n=i)

    async def seen(self, req: Msg, ctx: Context) -> Msg:
        left = ctx.time_remaining()
        said = ",".join(f"{k}={v}" for k, v in sorted(ctx.metadata.items()) if k.startswith(("x-", "micro-")))
        return Msg(text=said, n=-1 if left is None else int(left * 1000))


def servicer(pb2: ModuleType, book: Book, node: str = "a") -> Any:
    """The same endpoints as a grpcio servicer: async methods, sync methods and a sync
    generator (stepped on worker threads), aborting through its context as servicers do."""
    M = pb2.Msg

    class PipeServicer:
        async def Echo(self, request: Any, context: Any) -> Any:
            book.ran("Echo", node)
            return M(text=request.text, n=len(request.text))

        def Count(self, request: Any, context: Any) -> Iterator[Any]:  # a sync generator
            for i in range(request.n):
                yield M(text=request.text, n=i)

        async def Join(self, request_iterator: Any, context: Any) -> Any:
            texts = [r.text async for r in request_iterator]
            return M(text="".join(texts), n=len(texts))

        async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            async for r in request_iterator:
                yield M(text=r.text.upper(), n=r.n)

        def Big(self, request: Any, context: Any) -> Any:  # sync: on a worker thread
            return M(text="x" * request.n)

        def Bigs(self, request: Any, context: Any) -> Iterator[Any]:
            yield M(text="small")
            yield M(text="x" * request.n)

        async def Slow(self, request: Any, context: Any) -> Any:
            await _slow(book, node, request.n)
            return M(text=node)

        async def Down(self, request: Any, context: Any) -> Any:
            book.ran("Down", node)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down for maintenance")

        async def Fail(self, request: Any, context: Any) -> Any:
            if request.text == "abort":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
            raise failure(request.text)

        async def Where(self, request: Any, context: Any) -> Any:
            ctx = current_context()
            return M(text=ctx.endpoint if ctx else "", n=threading.get_ident())

        def Block(self, request: Any, context: Any) -> Any:
            return M(text=_blocked(book, node, request.n))

        def Ticks(self, request: Any, context: Any) -> Iterator[Any]:  # a blocking sync generator
            for i in range(request.n):
                book.blocking.set()
                time.sleep(0.1)
                yield M(text="tick", n=i)

        async def Seen(self, request: Any, context: Any) -> Any:
            left = context.time_remaining()
            pairs = sorted(dict(context.invocation_metadata()).items())
            said = ",".join(f"{k}={v}" for k, v in pairs if k.startswith(("x-", "micro-")))
            return M(text=said, n=-1 if left is None else int(left * 1000))

    return PipeServicer()


FLAVOURS = ("typed", "servicer")


def make_service(
    flavour: str,
    pb: tuple[ModuleType, ModuleType],
    book: Book,
    registry: str,
    *,
    node: str = "a",
    name: str | None = None,
    **options: Any,
) -> Service:
    """A node serving `Pipe` as a typed handler (service `ptyped`) or servicer (`psvc`)."""
    options = {"drain_delay": 0, "grace": 5, "max_message": LIMIT, **options}
    service = Service(name or ("ptyped" if flavour == "typed" else "psvc"), registry=registry, **options)
    if flavour == "typed":
        service.handler(Pipe(book, node))
    else:
        service.add_servicer(servicer(pb[0], book, node), pb[1].add_PipeServicer_to_server)
    return service


@dataclass
class Api:
    """Calls `Pipe` on a service by method name, whichever way it is served."""

    client: Client
    service: str
    flavour: str
    pb2: ModuleType

    @property
    def typed(self) -> bool:
        return self.flavour == "typed"

    @property
    def content_type(self) -> str:
        return JSON if self.typed else PROTO

    def endpoint(self, method: str) -> str:
        return f"Pipe.{method}" if self.typed else f"/mwpipe.Pipe/{method}"

    def encode(self, text: str = "", n: int = 0) -> bytes:
        if self.typed:
            return msgspec.json.encode(Msg(text=text, n=n))
        out: bytes = self.pb2.Msg(text=text, n=n).SerializeToString()
        return out

    def decode(self, body: bytes) -> tuple[str, int]:
        if self.typed:
            msg = msgspec.json.decode(body, type=Msg)
            return msg.text, msg.n
        reply = self.pb2.Msg.FromString(body)
        return reply.text, reply.n

    async def unary(self, method: str, text: str = "", n: int = 0, **options: Any) -> tuple[str, int]:
        body = options.pop("body", None)
        reply = await self.client.call_raw(
            self.service, self.endpoint(method), self.encode(text, n) if body is None else body,
            content_type=self.content_type, **options,
        )  # fmt: skip
        return self.decode(reply)

    async def _bodies(self, requests: Sequence[tuple[str, int]]) -> AsyncIterator[bytes]:
        for text, n in requests:
            yield self.encode(text, n)

    async def stream(
        self,
        method: str,
        kind: Kind,
        text: str = "",
        n: int = 0,
        *,
        requests: Sequence[tuple[str, int]] = (),
        **options: Any,
    ) -> list[tuple[str, int]]:
        body: bytes | AsyncIterator[bytes] = (
            self._bodies(requests) if kind.request_streaming else self.encode(text, n)
        )
        replies = self.client.stream_raw(
            self.service, self.endpoint(method), kind, body, content_type=self.content_type, **options
        )
        return [self.decode(r) async for r in replies]

    async def as_kind(self, kind: Kind, method: str) -> Any:
        """Call `method` as a call of `kind`, whatever kind it is."""
        if kind is Kind.UNARY:
            return await self.unary(method, "ab", 2)
        return await self.stream(method, kind, "ab", 2, requests=[("a", 0), ("b", 1)])
