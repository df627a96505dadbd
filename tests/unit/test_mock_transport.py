"""MockTransport: a client's whole pipeline against an answer the test writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from microweave import BadRequest, Client, ClientCall, ClientMiddleware, Unavailable
from microweave.middleware import UnaryNext
from microweave.registry.memory import MemoryRegistry
from microweave.testing import MockRequest, MockTransport


class Reply(msgspec.Struct):
    message: str


def client_for(transport: MockTransport, **options: Any) -> Client:
    return Client(registry=MemoryRegistry(), transports=[transport], **options)


async def test_a_call_is_answered_without_any_node() -> None:
    async def answer(request: MockRequest) -> Any:
        return {"message": f"Hello {request.json()['name']} at {request.path}"}

    mock = MockTransport(answer)
    async with client_for(mock) as client:
        reply = await client.call("greeter", "Greeter.SayHello", {"name": "Ada"}, response=Reply)
    assert reply == Reply("Hello Ada at /greeter.Greeter/SayHello")
    assert [r.path for r in mock.requests] == ["/greeter.Greeter/SayHello"]


async def test_errors_reach_the_caller_as_a_node_answer_and_are_not_retried() -> None:
    async def answer(request: MockRequest) -> Any:
        raise Unavailable("down for maintenance", id="greeter")

    mock = MockTransport(answer)
    async with client_for(mock) as client:
        with pytest.raises(Unavailable) as info:
            await client.call("greeter", "Greeter.SayHello", {"name": "Ada"})
    assert info.value.remote and info.value.detail == "down for maintenance"
    assert len(mock.requests) == 1  # a remote error is not retried unless the endpoint is idempotent


async def test_idempotent_calls_are_retried_after_a_transient_remote_error() -> None:
    answers = iter([Unavailable("blip"), {"message": "ok"}])

    async def answer(request: MockRequest) -> Any:
        reply = next(answers)
        if isinstance(reply, Exception):
            raise reply
        return reply

    mock = MockTransport(answer)
    async with client_for(mock) as client:
        reply = await client.call("greeter", "Greeter.SayHello", {}, response=Reply, idempotent=True)
    assert reply.message == "ok" and len(mock.requests) == 2


async def test_middleware_metadata_and_timeout_reach_the_wire() -> None:
    class Stamp(ClientMiddleware):
        async def unary(self, call: ClientCall, call_next: UnaryNext[ClientCall]) -> bytes:
            call.metadata["x-stamp"] = call.endpoint
            return await call_next(call)

    async def answer(request: MockRequest) -> Any:
        return {"message": request.metadata["x-stamp"]}

    mock = MockTransport(answer)
    async with client_for(mock, middleware=[Stamp()], name="caller", timeout=7) as client:
        reply = await client.call("greeter", "Greeter.SayHello", {}, response=Reply)
    sent = mock.requests[0]
    assert reply.message == "Greeter.SayHello"
    assert sent.metadata["micro-from-service"] == "caller"
    assert sent.timeout is not None and 0 < sent.timeout <= 7


async def test_streams() -> None:
    async def answer(request: MockRequest) -> AsyncIterator[dict[str, str]]:
        async def replies() -> AsyncIterator[dict[str, str]]:
            for letter in request.json()["name"]:
                yield {"message": letter}

        return replies()

    async with client_for(MockTransport(answer)) as client:
        got = [r.message async for r in client.stream("g", "G.Letters", {"name": "abc"}, response=Reply)]
    assert got == ["a", "b", "c"]


async def test_a_bad_request_keeps_its_code() -> None:
    async def answer(request: MockRequest) -> Any:
        raise BadRequest("name is required", id="greeter")

    async with client_for(MockTransport(answer)) as client:
        with pytest.raises(BadRequest, match="name is required"):
            await client.call("greeter", "Greeter.SayHello", {})
