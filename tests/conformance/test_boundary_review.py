"""What an adversarial review found in the first pipeline, each on every transport."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import msgspec
import pytest
from pipeline_kit import PROTO, Book, Msg, compile_proto, make_service

from microweave import (
    Call,
    Client,
    Context,
    InternalServerError,
    MicroError,
    ServerMiddleware,
    Service,
)
from microweave.middleware import StreamNext, UnaryNext
from microweave.testing import MockRequest, MockTransport, capture_logs

TRANSPORTS = ["grpc", "tcp", "local"]
WRONG = {"x-wrong": "1"}


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return compile_proto(tmp_path_factory.mktemp("review"))


class WrongType(ServerMiddleware):
    """A middleware that returns what is not bytes: the boundary must still hold."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        reply = await call_next(call)
        return self.value if "x-wrong" in call.ctx.metadata else reply  # type: ignore[no-any-return]

    async def stream(self, call: Call, call_next: StreamNext[Call]) -> AsyncIterator[bytes]:
        async for reply in call_next(call):
            yield self.value if "x-wrong" in call.ctx.metadata else reply


class Own:
    async def echo(self, req: Msg) -> Msg:
        return req

    async def count(self, req: Msg) -> AsyncIterator[Msg]:
        for i in range(req.n):
            yield Msg(text=req.text, n=i)

    async def own_cancel(self, req: Msg) -> Msg:
        """Cancels a task of its own and lets the CancelledError out: nobody cancelled the call."""
        task = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_later(0.05, task.cancel)
        await task
        return req


def _service(registry: str, **options: Any) -> Service:
    service = Service("review", registry=registry, drain_delay=0, **options)
    service.handler(Own())
    return service


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("value", ["text", {"a": 1}, None])
async def test_a_middleware_returning_the_wrong_type_is_a_500_with_a_correlation_id(
    transport: str, value: Any
) -> None:
    registry = f"memory://{uuid.uuid4().hex}"
    async with (
        _service(registry, middleware=[WrongType(value)]),
        Client(registry=registry, transports=(transport,), timeout=10) as client,
    ):
        with capture_logs() as logs, pytest.raises(InternalServerError) as info:
            await client.call("review", "Own.Echo", Msg(text="x"), metadata=WRONG)
        assert "correlation id" in info.value.detail and "TypeError" not in info.value.detail
        with pytest.raises(InternalServerError):
            async for _ in client.stream("review", "Own.Count", Msg(text="x", n=2), metadata=WRONG):
                pass
        # the node still serves: no stream slot was left behind
        assert await client.call("review", "Own.Echo", Msg(text="y"), response=Msg, timeout=10) == Msg("y")
    logged = [e for e in logs if e.get("correlation_id")]
    assert logged and "not bytes" in str(logged[0].get("exception", ""))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_handler_letting_its_own_cancelled_error_out_is_a_500_not_a_hang(transport: str) -> None:
    registry = f"memory://{uuid.uuid4().hex}"
    async with _service(registry), Client(registry=registry, transports=(transport,)) as client:
        with capture_logs() as logs, pytest.raises(InternalServerError) as info:
            # no deadline: before the fix, gRPC callers waited for ever
            await asyncio.wait_for(client.call("review", "Own.OwnCancel", Msg(text="x"), timeout=None), 30)
        assert "correlation id" in info.value.detail
    assert any(e.get("correlation_id") and "OwnCancel" in e["message"] for e in logs)


@pytest.mark.parametrize(
    ("reply", "responses"),
    [(b"not json", (None, Msg)), (b'{"text": 5}', (Msg,))],
    ids=["bad-json", "bad-type"],
)
async def test_a_reply_that_does_not_decode_is_a_micro_error(
    reply: bytes, responses: tuple[Any, ...]
) -> None:
    async def answer(request: MockRequest) -> bytes:
        return reply

    async with Client(registry="memory://", transports=[MockTransport(answer)]) as client:
        for response in responses:
            with pytest.raises(InternalServerError, match="does not decode") as info:
                await client.call("review", "Own.Echo", Msg(text="x"), response=response)
            assert isinstance(info.value, MicroError) and info.value.callee == "review"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_servicer_is_called_by_the_name_its_registry_record_gives(
    transport: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry = f"memory://{uuid.uuid4().hex}"
    service = make_service("servicer", pb, Book(), registry)  # service psvc, package mwpipe
    async with service, Client(registry=registry, transports=(transport,), timeout=10) as client:
        body = pb[0].Msg(text="hello").SerializeToString()
        reply = await client.call("psvc", "Pipe.Echo", body, response=bytes, content_type=PROTO)
        assert pb[0].Msg.FromString(reply).text == "hello"


async def test_unknown_endpoint_lists_servicers_and_cuts_the_echoed_path(
    pb: tuple[ModuleType, ModuleType],
) -> None:
    registry = f"memory://{uuid.uuid4().hex}"
    service = make_service("servicer", pb, Book(), registry)
    async with service, Client(registry=registry, transports=("grpc",), timeout=10) as client:
        with pytest.raises(MicroError) as info:
            await client.call("psvc", "/" + "x" * 5000, msgspec.json.encode({}))
    assert info.value.code == 501
    assert "/mwpipe.Pipe/Echo" in info.value.detail and len(info.value.detail) < 2000


class Chatty:
    async def echo(self, req: Msg, ctx: Context) -> Msg:
        if req.text == "big":
            ctx.set_response_metadata("x-big", "A" * 70_000)  # over the caller's header block
        else:
            await asyncio.sleep(0.3)
        return req

    async def count(self, req: Msg, ctx: Context) -> AsyncIterator[Msg]:
        ctx.set_response_metadata("x-big", "A" * 70_000)
        yield req


async def test_tcp_response_metadata_over_the_callers_limit_fails_that_call_only() -> None:
    registry = f"memory://{uuid.uuid4().hex}"
    service = Service("chatty", registry=registry, drain_delay=0)
    service.handler(Chatty())
    async with service, Client(registry=registry, transports=("tcp",), timeout=10) as client:
        others = [
            asyncio.ensure_future(client.call("chatty", "Chatty.Echo", Msg("ok"), response=Msg))
            for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        with pytest.raises(InternalServerError, match="more response metadata than the caller takes"):
            await client.call("chatty", "Chatty.Echo", Msg("big"))
        with pytest.raises(InternalServerError, match="more response metadata"):
            async for _ in client.stream("chatty", "Chatty.Count", Msg("x")):
                pass
        assert [r.text for r in await asyncio.gather(*others)] == ["ok"] * 3  # the connection lived


class PeerSeen(ServerMiddleware):
    def __init__(self) -> None:
        self.peers: list[str] = []

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        self.peers.append(call.peer)
        return await call_next(call)


@pytest.mark.parametrize(
    ("transport", "expected"), [("grpc", "127.0.0.1:"), ("tcp", "127.0.0.1:"), ("local", "in-process")]
)
async def test_middleware_sees_who_called(transport: str, expected: str) -> None:
    registry, seen = f"memory://{uuid.uuid4().hex}", PeerSeen()
    async with (
        _service(registry, middleware=[seen]),
        Client(registry=registry, transports=(transport,)) as client,
    ):
        await client.call("review", "Own.Echo", Msg(text="x"), timeout=10)
    assert len(seen.peers) == 1 and expected in seen.peers[0], seen.peers
