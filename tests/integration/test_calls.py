"""Calls end to end, in one process: real services on loopback, a private local:// registry.

Every test runs over each transport a client can pick (in-process, tcp, gRPC), so what a
caller sees never depends on the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import msgspec
import pydantic
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from microweave import (
    BadRequest,
    BlockingClient,
    Client,
    Context,
    InternalServerError,
    MicroError,
    NotImplementedError_,
    Service,
    ServiceNotFound,
    Timeout,
    current_context,
)
from microweave.registry.local import LocalRegistry
from microweave.server import Kind

TRANSPORTS = ["local", "tcp", "grpc"]


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str


class Seen(msgspec.Struct):
    """What a handler saw of the call that reached it."""

    caller: str = ""
    metadata: dict[str, str] = {}
    deadline: float | None = None
    thread: int = 0
    endpoint: str = ""


class Hop(msgspec.Struct):
    outer: Seen
    inner: Seen


class PydanticUser(pydantic.BaseModel):
    name: str
    age: int


@dataclasses.dataclass
class DataUser:
    name: str
    age: int


def seen(ctx: Context) -> Seen:
    return Seen(
        caller=ctx.caller,
        metadata=dict(ctx.metadata),
        deadline=ctx.deadline,
        thread=threading.get_ident(),
        endpoint=ctx.endpoint,
    )


class Greeter:
    async def say_hello(self, req: HelloRequest, ctx: Context) -> HelloReply:
        ctx.set_response_metadata("X-Served-By", "greeter")
        return HelloReply(message=f"Hello {req.name}")

    async def count(self, req: HelloRequest) -> AsyncIterator[HelloReply]:
        for letter in req.name:
            yield HelloReply(message=letter)

    async def join(self, reqs: AsyncIterator[HelloRequest]) -> HelloReply:
        return HelloReply(message="+".join([r.name async for r in reqs]))

    async def chat(self, reqs: AsyncIterator[HelloRequest]) -> AsyncIterator[HelloReply]:
        async for r in reqs:
            yield HelloReply(message=r.name.upper())

    async def whoami(self, req: HelloRequest, ctx: Context) -> Seen:
        return seen(ctx)

    def blocking(self, req: HelloRequest, ctx: Context) -> Seen:
        time.sleep(0.01)  # a blocking call must not stall the event loop
        assert current_context() is ctx  # the worker thread still sees the call's context
        return seen(ctx)

    async def in_task(self, req: HelloRequest) -> HelloReply:
        """Ordinary asyncio code in a handler: it needs to run inside a task."""
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return HelloReply(message=str(asyncio.current_task() is not None))

    async def slow(self, req: HelloRequest) -> HelloReply:
        await asyncio.sleep(30)
        return HelloReply(message="too late")

    async def boom(self, req: HelloRequest) -> HelloReply:
        raise ValueError("secret at /srv/app/handlers.py line 3")

    async def user(self, req: PydanticUser) -> PydanticUser:
        return PydanticUser(name=req.name.title(), age=req.age + 1)

    async def data_user(self, req: DataUser) -> DataUser:
        return DataUser(name=req.name.title(), age=req.age + 1)


class Relay:
    """Served by `alpha`: calls the greeter from inside a handler, as alpha."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def hop(self, req: HelloRequest, ctx: Context) -> Hop:
        # asks for far more time than the caller gave: the caller's deadline must win
        inner = await self.service.client.call("greeter", "Greeter.Whoami", req, response=Seen, timeout=60)
        return Hop(outer=seen(ctx), inner=inner)


# -- a grpcio-generated servicer, built from a .proto at test time -----------------------------

PROTO = """
syntax = "proto3";
package mwtest;
message EchoRequest { string text = 1; }
message EchoReply { string text = 1; }
service Echo { rpc Say (EchoRequest) returns (EchoReply); }
"""


@pytest.fixture(scope="session")
def echo_proto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    out = tmp_path_factory.mktemp("proto")
    (out / "mwtest_echo.proto").write_text(PROTO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(out / "mwtest_echo.proto"),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("mwtest_echo_pb2"), importlib.import_module("mwtest_echo_pb2_grpc")
    finally:
        sys.path.remove(str(out))


# -- the services under test -------------------------------------------------------------------


@dataclasses.dataclass
class World:
    client: Client
    greeter: Service
    alpha: Service
    transport: str
    pb2: ModuleType
    pb2_grpc: ModuleType


@pytest.fixture(params=TRANSPORTS)
async def world(
    request: pytest.FixtureRequest, registry_dir: Path, echo_proto: tuple[ModuleType, ModuleType]
) -> AsyncIterator[World]:
    pb2, pb2_grpc = echo_proto

    class EchoServicer(pb2_grpc.EchoServicer):  # type: ignore[name-defined,misc]
        async def Say(self, request: Any, context: Any) -> Any:
            return pb2.EchoReply(text=request.text[::-1])

    # no registry given: MICRO_REGISTRY=local and the private directory come from the environment
    greeter = Service("greeter", version="1.0.0", drain_delay=0, grace=2)
    greeter.handler(Greeter)
    greeter.add_servicer(EchoServicer(), pb2_grpc.add_EchoServicer_to_server)
    alpha = Service("alpha", drain_delay=0, grace=2)
    alpha.handler(Relay(alpha))
    async with (
        greeter,
        alpha,
        Client(transports=(request.param,), timeout=20) as client,
    ):
        assert isinstance(greeter.registry, LocalRegistry) and greeter.registry.root == registry_dir
        yield World(client, greeter, alpha, request.param, pb2, pb2_grpc)


async def say_hello_works(client: Client) -> None:
    """The server is still serving: a good call succeeds."""
    reply = await client.call("greeter", "Greeter.SayHello", HelloRequest(name="again"), response=HelloReply)
    assert reply == HelloReply(message="Hello again")


# -- the four call kinds -----------------------------------------------------------------------


async def test_unary(world: World) -> None:
    reply = await world.client.call(
        "greeter", "Greeter.SayHello", HelloRequest(name="x"), response=HelloReply
    )
    assert reply == HelloReply(message="Hello x")
    # without a response type the reply is plain JSON data, and a dict is a fine request
    assert await world.client.call("greeter", "Greeter.SayHello", {"name": "y"}) == {"message": "Hello y"}


async def test_server_stream(world: World) -> None:
    replies = [
        r
        async for r in world.client.stream(
            "greeter", "Greeter.Count", HelloRequest(name="abc"), response=HelloReply
        )
    ]
    assert replies == [HelloReply("a"), HelloReply("b"), HelloReply("c")]


async def test_client_stream(world: World) -> None:
    async def names() -> AsyncIterator[HelloRequest]:
        for name in ("a", "b", "c"):
            yield HelloRequest(name=name)

    replies = [
        r
        async for r in world.client.stream(
            "greeter", "Greeter.Join", names(), response=HelloReply, kind=Kind.CLIENT_STREAM
        )
    ]
    assert replies == [HelloReply("a+b+c")]


async def test_bidi(world: World) -> None:
    async def names() -> AsyncIterator[HelloRequest]:
        for name in ("x", "y"):
            yield HelloRequest(name=name)

    replies = [r async for r in world.client.stream("greeter", "Greeter.Chat", names(), response=HelloReply)]
    assert replies == [HelloReply("X"), HelloReply("Y")]


async def test_typed_proxy(world: World) -> None:
    greeter = world.client.proxy(Greeter, service="greeter")
    assert await greeter.say_hello(HelloRequest(name="p")) == HelloReply("Hello p")
    assert [r async for r in greeter.count(HelloRequest(name="pq"))] == [HelloReply("p"), HelloReply("q")]

    async def names() -> AsyncIterator[HelloRequest]:
        yield HelloRequest(name="m")
        yield HelloRequest(name="n")

    assert await greeter.join(names()) == HelloReply("m+n")
    assert [r async for r in greeter.chat(names())] == [HelloReply("M"), HelloReply("N")]
    assert await greeter.user(PydanticUser(name="ada", age=1)) == PydanticUser(name="Ada", age=2)


async def test_blocking_client(world: World) -> None:
    """BlockingClient from plain (non-async) code: here a worker thread, with its own loop,
    while the services run on this test's loop."""
    loop_thread = threading.get_ident()

    def script() -> tuple[Any, list[Any], list[str], Seen, Hop]:
        with BlockingClient(timeout=20) as client:
            reply = client.call("greeter", "Greeter.SayHello", HelloRequest(name="b"), response=HelloReply)
            letters = client.stream("greeter", "Greeter.Count", HelloRequest(name="bc"), response=HelloReply)
            names = [s.name for s in client.list_services()]
            who = client.call("greeter", "Greeter.Whoami", HelloRequest(name=""), response=Seen)
            hop = client.call("alpha", "Relay.Hop", HelloRequest(name=""), response=Hop)
            return reply, letters, names, who, hop

    reply, letters, names, who, hop = await asyncio.to_thread(script)
    assert reply == HelloReply("Hello b")
    assert letters == [HelloReply("b"), HelloReply("c")]
    assert {"greeter", "alpha"} <= set(names)
    # handlers run on the loop that serves them, never on the calling client's loop
    assert who.thread == loop_thread
    assert (hop.outer.thread, hop.inner.thread) == (loop_thread, loop_thread)


def test_blocking_client_raises_errors_as_is(registry_dir: Path) -> None:
    with BlockingClient(timeout=5) as client, pytest.raises(ServiceNotFound):
        client.call("nobody", "Nobody.Here", {})


# -- codecs by handler type --------------------------------------------------------------------


async def test_pydantic_handler(world: World) -> None:
    reply = await world.client.call(
        "greeter", "Greeter.User", PydanticUser(name="ada", age=36), response=PydanticUser
    )
    assert reply == PydanticUser(name="Ada", age=37)
    with pytest.raises(BadRequest) as info:
        await world.client.call("greeter", "Greeter.User", {"name": "ada", "age": "old"})
    assert "age" in info.value.detail


async def test_dataclass_handler(world: World) -> None:
    reply = await world.client.call(
        "greeter", "Greeter.DataUser", DataUser(name="bob", age=1), response=DataUser
    )
    assert reply == DataUser(name="Bob", age=2)


async def test_msgpack_bodies(world: World) -> None:
    for request, endpoint, response in [
        (HelloRequest(name="mp"), "Greeter.SayHello", HelloReply),
        (PydanticUser(name="mp", age=1), "Greeter.User", PydanticUser),
        (DataUser(name="mp", age=1), "Greeter.DataUser", DataUser),
    ]:
        reply = await world.client.call(
            "greeter", endpoint, request, response=response, content_type="application/msgpack"
        )
        assert reply is not None and type(reply) is response


async def test_sync_handler_runs_in_a_worker_thread(world: World) -> None:
    loop_thread = threading.get_ident()
    seen_by = await world.client.call("greeter", "Greeter.Blocking", HelloRequest(name=""), response=Seen)
    assert seen_by.thread != loop_thread
    assert seen_by.endpoint == "Greeter.Blocking"


async def test_handler_runs_inside_a_task(world: World) -> None:
    reply = await world.client.call("greeter", "Greeter.InTask", HelloRequest(name=""), response=HelloReply)
    assert reply == HelloReply("True")


# -- deadlines ---------------------------------------------------------------------------------


async def test_deadline_shrinks_hop_by_hop(world: World) -> None:
    hop = await world.client.call("alpha", "Relay.Hop", HelloRequest(name="d"), response=Hop, timeout=5)
    outer, inner = hop.outer.deadline, hop.inner.deadline
    assert outer is not None and inner is not None
    # B asked for 60 s but may only have what A had left; 0.1 s covers gRPC rounding its
    # grpc-timeout header up to the unit it encodes (both values are this process's clock)
    assert inner <= outer + 0.1
    assert outer - time.monotonic() < 5.1


async def test_short_timeout_on_a_slow_handler_is_timeout_408(world: World) -> None:
    with pytest.raises(Timeout) as info:
        await world.client.call("greeter", "Greeter.Slow", HelloRequest(name=""), timeout=0.2)
    assert info.value.code == 408
    await say_hello_works(world.client)


# -- metadata and caller identity --------------------------------------------------------------


async def test_metadata_in_lowercase(world: World) -> None:
    got = await world.client.call(
        "greeter",
        "Greeter.Whoami",
        HelloRequest(name=""),
        response=Seen,
        metadata={"X-User": "ada", "Traceparent": "00-1-2-01"},
    )
    assert got.metadata["x-user"] == "ada"
    assert got.metadata["traceparent"] == "00-1-2-01"
    assert not any(k != k.lower() for k in got.metadata)


async def test_response_metadata(world: World) -> None:
    out: dict[str, str] = {}
    await world.client.call("greeter", "Greeter.SayHello", HelloRequest(name="m"), response_metadata=out)
    assert out.get("x-served-by") == "greeter"


async def test_caller_identity(world: World) -> None:
    anonymous = await world.client.call("greeter", "Greeter.Whoami", HelloRequest(name=""), response=Seen)
    assert anonymous.caller == ""
    # a service's own client names it as the caller
    as_alpha = await world.alpha.client.call(
        "greeter", "Greeter.Whoami", HelloRequest(name=""), response=Seen
    )
    assert as_alpha.caller == "alpha"
    # and so does a call made from inside alpha's handler
    hop = await world.client.call("alpha", "Relay.Hop", HelloRequest(name=""), response=Hop)
    assert (hop.outer.caller, hop.inner.caller) == ("", "alpha")


async def test_metadata_propagates_through_a_hop(world: World) -> None:
    hop = await world.client.call(
        "alpha", "Relay.Hop", HelloRequest(name=""), response=Hop, metadata={"x-request-id": "r-42"}
    )
    assert hop.inner.metadata.get("x-request-id") == "r-42"


# -- what a bad call gets, and the server serving on ---------------------------------------------


async def test_handler_error_is_500_with_correlation_id_only(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="microweave.server"),
        pytest.raises(InternalServerError) as info,
    ):
        await world.client.call("greeter", "Greeter.Boom", HelloRequest(name=""))
    err = info.value
    assert err.code == 500 and err.id == "greeter"
    assert "correlation id" in err.detail
    correlation = err.detail.rsplit(" ", 1)[-1]
    assert len(correlation) >= 8
    for leak in ("Traceback", ".py", "/", "secret", "ValueError"):
        assert leak not in err.detail, leak
    # the server log has the traceback, under the same correlation id
    [record] = [r for r in caplog.records if correlation in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    await say_hello_works(world.client)


async def test_unknown_endpoint_is_501(world: World) -> None:
    with pytest.raises(NotImplementedError_) as info:
        await world.client.call("greeter", "Greeter.Nope", HelloRequest(name=""))
    assert info.value.code == 501
    assert info.value.grpc_code is grpc.StatusCode.UNIMPLEMENTED
    assert "Greeter.SayHello" in info.value.detail
    await say_hello_works(world.client)


async def test_unknown_service_is_service_not_found(world: World) -> None:
    with pytest.raises(ServiceNotFound) as info:
        await world.client.call("nobody", "Nobody.Here", HelloRequest(name=""))
    assert info.value.code == 404
    assert "nobody" in info.value.detail
    await say_hello_works(world.client)


async def test_body_that_does_not_decode_is_400_naming_the_field(world: World) -> None:
    with pytest.raises(BadRequest) as info:
        await world.client.call("greeter", "Greeter.SayHello", {"name": 42})
    assert info.value.code == 400
    assert "$.name" in info.value.detail
    await say_hello_works(world.client)
    with pytest.raises(BadRequest) as info:
        await world.client.call("greeter", "Greeter.SayHello", {})
    assert "name" in info.value.detail
    await say_hello_works(world.client)


async def test_malformed_json_is_400(world: World) -> None:
    with pytest.raises(BadRequest) as info:
        await world.client.call("greeter", "Greeter.SayHello", b'{"name": ')
    assert info.value.code == 400
    await say_hello_works(world.client)


async def test_errors_are_micro_errors_with_the_server_id(world: World) -> None:
    with pytest.raises(MicroError) as info:
        await world.client.call("greeter", "Greeter.SayHello", b"[]")
    assert info.value.id == "greeter"


# -- grpcio servicers, health and reflection ---------------------------------------------------


async def test_grpcio_stub_over_the_discovery_channel(world: World) -> None:
    stub = world.pb2_grpc.EchoStub(world.client.channel("greeter"))
    reply = await stub.Say(world.pb2.EchoRequest(text="abc"))
    assert reply.text == "cba"


async def test_health_check_serving(world: World) -> None:
    async with grpc.aio.insecure_channel(world.greeter.addresses["grpc"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "greeter.Greeter", "mwtest.Echo"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_reflection_lists_servicer_services(world: World) -> None:
    async with grpc.aio.insecure_channel(world.greeter.addresses["grpc"]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"mwtest.Echo", "grpc.health.v1.Health"} <= names


async def test_service_record_describes_the_endpoints(world: World) -> None:
    [service] = await world.greeter.registry.get_service("greeter")
    endpoints = {e.name: e for e in service.endpoints}
    assert {"Greeter.SayHello", "Greeter.Count", "Greeter.Chat", "Echo.Say"} <= set(endpoints)
    hello = endpoints["Greeter.SayHello"]
    assert hello.request is not None and hello.request.name == "HelloRequest"
    assert endpoints["Greeter.Count"].metadata == {"stream": "server_stream"}
    [node] = service.nodes
    assert node.address == world.greeter.addresses["grpc"]
    assert node.metadata["protocol"] == "grpc"
